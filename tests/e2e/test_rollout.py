"""Rollouts end to end: shadow -> canary -> promoted, automatic rollback, and resume after a restart."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server.routing import Phase

from ..polling import wait_until
from ..sample_models import make_models

FAST = {
    "shadow": {"percent": 100, "duration_seconds": 0.4, "min_requests": 20},
    "canary": {"steps": [20, 50, 100], "step_seconds": 0.4, "min_requests": 8},
    # Latency is not what these tests judge (2 noisy cores): keep that threshold wide.
    "analysis": {"max_p99_ratio": 100, "min_agreement": 0.99, "failure_limit": 1},
}


def _repository(root: Path, candidate_seed: int) -> Path:
    make_models.make_tabular(root, version=1, seed=7)
    make_models.make_tabular(root, version=2, seed=candidate_seed)
    config = root / "tabular" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    return root


class Traffic:
    """Unversioned gRPC requests in a loop; records which version answered, in which phase, and errors."""

    def __init__(self, server) -> None:
        self._client = grpcclient.InferenceServerClient(server.grpc_url)
        self._server = server
        self.answers: list[tuple[str, str]] = []  # (phase for the whole request, version)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            item = grpcclient.InferInput("features", [1, 8], "FP32")
            item.set_data_from_numpy(rng.standard_normal((1, 8)).astype(np.float32))
            before = _phase(self._server)
            try:
                result = self._client.infer("tabular", [item])
                after = _phase(self._server)
                phase = before if before == after else "transition"
                self.answers.append((phase, result.get_response().model_version))
            except Exception as exc:
                self.errors.append(str(exc))


def _phase(server) -> str:
    state = server.app.rollouts.status("tabular")
    return state.phase.value if state else "NONE"


def test_identical_candidate_is_shadowed_canaried_and_promoted(tmp_path, server_factory):
    server = server_factory(_repository(tmp_path / "repo", candidate_seed=7), state_dir=tmp_path / "state",
                            rollout_tick_s=0.05)
    http = httpclient.InferenceServerClient(server.http_url)
    with Traffic(server) as traffic:
        spec = {"candidate_version": 2, **FAST}
        req = urllib.request.Request(f"http://{server.http_url}/v2/models/tabular/rollout",
                                     data=orjson.dumps(spec), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as response:
            assert orjson.loads(response.read())["phase"] == "SHADOW"
        wait_until(lambda: _phase(server) != "SHADOW")
        wait_until(lambda: _phase(server) == "PROMOTED")
        time.sleep(0.3)
    assert traffic.errors == []
    shadow_versions = {v for phase, v in traffic.answers if phase == "SHADOW"}
    assert shadow_versions == {"1"}, "in shadow every caller got the stable answer"
    assert traffic.answers[-1][1] == "2", "after promotion unversioned traffic goes to the candidate"
    events = [e["event"] for e in server.app.audit.read()]
    assert events[0] == "rollout_started" and events[-1] == "promoted"
    assert events.count("step") >= 3
    assert {s["version"] for s in http.get_inference_statistics("tabular")["model_stats"]} == {"1", "2"}
    http.close()


def test_candidate_with_different_outputs_is_rolled_back_and_callers_never_notice(tmp_path, server_factory):
    server = server_factory(_repository(tmp_path / "repo", candidate_seed=99), state_dir=tmp_path / "state",
                            rollout_tick_s=0.05)
    with Traffic(server) as traffic:
        from server.routing.spec import RolloutSpec

        server.call(server.app.rollouts.start_rollout("tabular", RolloutSpec.from_dict({"candidate_version": 2,
                                                                                          **FAST})))
        wait_until(lambda: _phase(server) == "ROLLED_BACK")
        time.sleep(0.3)
    assert traffic.errors == []
    assert {v for _, v in traffic.answers} == {"1"}
    state = server.app.rollouts.status("tabular")
    assert state.weight == 0 and "outputs agree on" in state.reason
    assert state.last_analysis["agreement"] < 0.99


def test_a_restart_in_the_middle_of_a_canary_resumes_it(tmp_path, server_factory):
    repo = _repository(tmp_path / "repo", candidate_seed=7)
    slow = {"candidate_version": 2, "shadow": {"percent": 0},
            "canary": {"steps": [30, 100], "step_seconds": 3600, "min_requests": 1},
            "analysis": {"max_p99_ratio": 100}}
    from server.routing.spec import RolloutSpec

    first = server_factory(repo, state_dir=tmp_path / "state", rollout_tick_s=0.05)
    first.call(first.app.rollouts.start_rollout("tabular", RolloutSpec.from_dict(slow)))
    assert _phase(first) == "CANARY"
    first.call(first.app.stop())

    second = server_factory(repo, state_dir=tmp_path / "state", rollout_tick_s=0.05)
    state = second.app.rollouts.status("tabular")
    assert (state.phase, state.step, state.weight) == (Phase.CANARY, 0, 30.0)
    with grpcclient.InferenceServerClient(second.grpc_url) as client:
        versions = []
        for i in range(300):
            item = grpcclient.InferInput("features", [1, 8], "FP32")
            item.set_data_from_numpy(np.zeros((1, 8), np.float32))
            versions.append(client.infer("tabular", [item], headers={"tessera-routing-key": f"user-{i}"})
                            .get_response().model_version)
    share = versions.count("2") / len(versions)
    assert 0.15 < share < 0.45  # the 30% split is live again after the restart


@pytest.mark.parametrize("label", ["stable", "canary"])
def test_version_labels_reach_stable_and_candidate(tmp_path, server_factory, label):
    server = server_factory(_repository(tmp_path / "repo", candidate_seed=7), state_dir=tmp_path / "state")
    from server.routing.spec import RolloutSpec

    server.call(server.app.rollouts.start_rollout("tabular", RolloutSpec.from_dict(
        {"candidate_version": 2, "canary": {"steps": [50], "step_seconds": 3600}})))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        item = grpcclient.InferInput("features", [1, 8], "FP32")
        item.set_data_from_numpy(np.zeros((1, 8), np.float32))
        answered = client.infer("tabular", [item], model_version=label).get_response().model_version
    assert answered == {"stable": "1", "canary": "2"}[label]
