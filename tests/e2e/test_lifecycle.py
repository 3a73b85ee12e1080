"""Model lifecycle end to end with unmodified tritonclient: hot reload under steady load on both
protocols (poll mode), explicit load/unload with inline configs and files, warmup before READY."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from ..polling import wait_until
from ..repository.models import CONFIG, expected, make_model, make_version

POLL_S = 0.2
PROTOCOLS = [pytest.param("grpc", id="grpc"), pytest.param("http", id="http")]
X = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)


class HttpClient(httpclient.InferenceServerClient):  # type: ignore[misc]
    """The sync HTTP client, closed explicitly. The base __del__ joins a gevent pool, which raises
    InvalidThreadUseError when the cyclic GC runs it on a server thread."""

    def __del__(self) -> None:
        pass

    # Admin POSTs must declare JSON (README "Security"); tritonclient sends no Content-Type of its own.
    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, headers={"Content-Type": "application/json"}, **kwargs)

    def unload_model(self, *args: Any, **kwargs: Any) -> None:
        super().unload_model(*args, headers={"Content-Type": "application/json"}, **kwargs)


class Client:
    """One tritonclient (gRPC or HTTP) behind the few calls these tests make."""

    def __init__(self, protocol: str, server: Any) -> None:
        self.protocol = protocol
        self.module: Any = grpcclient if protocol == "grpc" else httpclient
        self.raw: Any = (grpcclient.InferenceServerClient(server.grpc_url) if protocol == "grpc"
                         else HttpClient(server.http_url))

    def infer(self, model: str, x: np.ndarray = X, version: str = "") -> tuple[str, np.ndarray]:
        item = self.module.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        result = self.raw.infer(model, [item], model_version=version)
        response = result.get_response()
        served = response.model_version if self.protocol == "grpc" else response["model_version"]
        return served, result.as_numpy("y")

    def index(self, model: str | None = None) -> dict[tuple[str, str], tuple[str, str]]:
        if self.protocol == "grpc":
            found = [(m.name, m.version, m.state, m.reason) for m in self.raw.get_model_repository_index().models]
        else:
            found = [(e["name"], e.get("version", ""), e.get("state", ""), e.get("reason", ""))
                     for e in self.raw.get_model_repository_index()]
        return {(n, v): (s, r) for n, v, s, r in found if model is None or n == model}

    def config(self, model: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            return self.raw.get_model_config(model, as_json=True)["config"]  # type: ignore[no-any-return]
        return self.raw.get_model_config(model)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.raw.close()


# -- steady load while the repository changes (poll mode) ------------------------------------------
@dataclass
class Answer:
    sent: float
    received: float
    protocol: str
    version: str = ""
    y: np.ndarray | None = None
    error: str = ""


class Traffic:
    """Closed-loop load from threads, each with its own client; every answer is recorded."""

    def __init__(self, server: Any, protocols: list[str]) -> None:
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(server, p), daemon=True) for p in protocols]

    def _run(self, server: Any, protocol: str) -> None:
        if protocol == "http":  # geventhttpclient must be used and freed on one thread: aio instead
            asyncio.run(self._run_http(server))
            return
        client = Client(protocol, server)
        while not self._stop.is_set():
            answer = Answer(time.monotonic(), 0.0, protocol)
            try:
                answer.version, answer.y = client.infer("m")
            except InferenceServerException as exc:
                answer.error = str(exc)
            self._record(answer)
        client.close()

    async def _run_http(self, server: Any) -> None:
        async with httpaio.InferenceServerClient(server.http_url) as client:
            while not self._stop.is_set():
                answer = Answer(time.monotonic(), 0.0, "http")
                item = httpaio.InferInput("x", list(X.shape), "FP32")
                item.set_data_from_numpy(X)
                try:
                    result = await client.infer("m", [item])
                    answer.version, answer.y = result.get_response()["model_version"], result.as_numpy("y")
                except InferenceServerException as exc:
                    answer.error = str(exc)
                self._record(answer)
                await asyncio.sleep(0)

    def _record(self, answer: Answer) -> None:
        answer.received = time.monotonic()
        self.answers.append(answer)
        time.sleep(0.002)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


class IndexLog:
    """Samples the repository index over gRPC, timestamped, to check what was READY when."""

    def __init__(self, server: Any) -> None:
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._client = Client("grpc", server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            index = self._client.index("m")
            self.samples.append((time.monotonic(), {v: s for (_, v), (s, _) in index.items()}))
            time.sleep(0.02)

    def latest(self) -> dict[str, str]:
        return self.samples[-1][1] if self.samples else {}

    def ready_between(self, version: str, start: float, end: float) -> bool:
        return any(start <= t <= end and states.get(version) == "READY" for t, states in self.samples)

    def __enter__(self) -> IndexLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def _metric(server: Any, line_start: str) -> float:
    host, port = server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def test_reloads_under_steady_load_fail_no_valid_request(server_factory: Callable[..., Any], tmp_path: Path) -> None:
    root = tmp_path / "repository"
    make_model(root)
    server = server_factory(root, model_control_mode="poll", repository_poll_secs=POLL_S)
    admin = Client("grpc", server)
    config = root / "m" / "config.pbtxt"
    with IndexLog(server) as index, Traffic(server, ["grpc", "grpc", "http", "http"]) as traffic:
        make_version(root, 2)
        wait_until(lambda: index.latest() == {"1": "UNAVAILABLE", "2": "READY"},
                   timeout_s=20, message="version 2 to take over")
        config.write_text(CONFIG + "version_policy { all { } }\n")
        wait_until(lambda: index.latest() == {"1": "READY", "2": "READY"}, timeout_s=20, message="policy all")
        config.write_text(CONFIG)
        wait_until(lambda: index.latest() == {"1": "UNAVAILABLE", "2": "READY"},
                   timeout_s=20, message="policy back to latest")
        shutil.rmtree(root / "m" / "1")
        wait_until(lambda: index.latest() == {"2": "READY"}, timeout_s=20, message="version 1 removed")
        (root / "m" / "3").mkdir()
        (root / "m" / "3" / "model.onnx").write_bytes(b"\x08\x07 not a model")
        wait_until(lambda: index.latest() == {"2": "READY", "3": "FAILED"},
                   timeout_s=20, message="corrupt version 3 FAILED")
        config.write_text('name: "m"\nmax_batch_size: 8\n'
                          "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 400 }\n")
        wait_until(lambda: admin.config("m").get("dynamic_batching", {}).get("preferred_batch_size") == [2, 4],
                   timeout_s=20, message="new batching settings")
        time.sleep(0.3)
    answers = traffic.answers
    assert [a.error for a in answers if a.error] == []
    assert {a.protocol for a in answers} == {"grpc", "http"} and len(answers) > 100
    for a in answers:
        assert a.version in ("1", "2") and a.y is not None
        np.testing.assert_allclose(a.y, expected(int(a.version), X), rtol=1e-5)  # the version it claims
        assert index.ready_between(a.version, a.sent - 0.3, a.received + 0.3), a
    assert {a.version for a in answers if a.sent > index.samples[-1][0] - 0.3} == {"2"}
    final = admin.index("m")
    assert final.keys() == {("m", "2"), ("m", "3")} and final[("m", "2")] == ("READY", "")
    assert final[("m", "3")][0] == "FAILED" and "not a loadable ONNX model" in final[("m", "3")][1]
    assert _metric(server, 'tessera_model_load_failures_total{model="m"}') >= 1
    admin.close()


# -- explicit mode ---------------------------------------------------------------------------------
@pytest.fixture
def explicit_repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    make_model(root)
    make_version(root, 1, seed=4, name="other")
    (root / "other" / "config.pbtxt").write_text('name: "other"\nmax_batch_size: 8\n')
    return root


@pytest.fixture(params=PROTOCOLS)
def explicit_client(request: pytest.FixtureRequest, server_factory: Callable[..., Any],
                    explicit_repository: Path) -> Iterator[Client]:
    server = server_factory(explicit_repository, model_control_mode="explicit", load_models=("m",))
    client = Client(request.param, server)
    yield client
    client.close()


def test_explicit_mode_loads_only_named_models_then_loads_and_unloads_on_request(explicit_client: Client) -> None:
    c = explicit_client
    assert c.index() == {("m", "1"): ("READY", ""), ("other", ""): ("", "")}
    with pytest.raises(InferenceServerException, match="unknown model: 'other'"):
        c.infer("other")
    c.raw.load_model("other")
    assert c.index("other") == {("other", "1"): ("READY", "")}
    np.testing.assert_allclose(c.infer("other")[1], expected(4, X), rtol=1e-5)
    c.raw.unload_model("other", unload_dependents=True)
    assert c.index("other") == {("other", "1"): ("UNAVAILABLE", "unloaded")}
    assert not c.raw.is_model_ready("other")
    c.raw.load_model("other")
    assert c.raw.is_model_ready("other") and c.infer("other")[0] == "1"


def test_explicit_load_with_an_inline_config_reloads_and_plain_load_restores(explicit_client: Client) -> None:
    c = explicit_client
    c.raw.load_model("m", config=json.dumps({"name": "m", "max_batch_size": 4,
                                             "dynamic_batching": {"preferred_batch_size": [2]}}))
    assert c.config("m")["max_batch_size"] == 4
    with pytest.raises(InferenceServerException, match="exceeds the model's max_batch_size 4"):
        c.infer("m", np.zeros((6, 8), np.float32))
    c.raw.load_model("m")
    assert c.config("m")["max_batch_size"] == 8
    assert c.infer("m", np.zeros((6, 8), np.float32))[0] == "1"


def test_explicit_load_with_files_serves_them_without_touching_the_repository(
        explicit_client: Client, explicit_repository: Path, tmp_path: Path) -> None:
    c = explicit_client
    onnx_bytes = make_version(tmp_path / "upload", 1, seed=9).read_bytes()
    config = json.dumps({"name": "copy", "max_batch_size": 8})
    c.raw.load_model("copy", config=config, files={"file:1/model.onnx": onnx_bytes})
    assert c.index("copy") == {("copy", "1"): ("READY", "")}
    np.testing.assert_allclose(c.infer("copy")[1], expected(9, X), rtol=1e-5)
    assert sorted(p.name for p in explicit_repository.iterdir()) == ["m", "other"]
    c.raw.unload_model("copy")
    assert c.index("copy") == {("copy", "1"): ("UNAVAILABLE", "unloaded")}


def test_a_failed_explicit_reload_reports_why_and_the_model_keeps_serving(explicit_client: Client) -> None:
    c = explicit_client
    bad = json.dumps({"name": "m", "max_batch_size": 8,
                      "input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [8]}]})
    with pytest.raises(InferenceServerException, match="input 'features' of model 'm' is not in the ONNX graph"):
        c.raw.load_model("m", config=bad)
    state, reason = c.index("m")[("m", "1")]
    assert state == "READY" and reason.startswith("reload failed:")
    assert c.infer("m")[0] == "1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_poll_mode_refuses_load_and_unload(server_factory: Callable[..., Any], tmp_path: Path, protocol: str) -> None:
    make_model(tmp_path)
    client = Client(protocol, server_factory(tmp_path, model_control_mode="poll", repository_poll_secs=POLL_S))
    with pytest.raises(InferenceServerException, match="not available in poll mode"):
        client.raw.load_model("m")
    with pytest.raises(InferenceServerException, match="not available in poll mode"):
        client.raw.unload_model("m")
    assert client.infer("m")[0] == "1"
    client.close()


# -- warmup ----------------------------------------------------------------------------------------
def test_warmup_runs_before_ready_so_the_first_request_is_not_the_first_run(
        server_factory: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_model(tmp_path, config='name: "m"\nmax_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 2, 4 ] }\n')
    caplog.set_level(logging.INFO, logger="server.repository")
    server = server_factory(tmp_path, model_control_mode="explicit")
    client = Client("grpc", server)
    client.raw.load_model("m")
    # Visible on /metrics before any request was sent:
    assert server.app.metrics.registry.get_sample_value(
        "tessera_model_warmup_runs_total", {"model": "m", "version": "1"}) == 2
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("server.repository")]
    warmed = next(i for i, m in enumerate(messages) if m.startswith("model m version 1 warmed up: 2 runs"))
    ready = next(i for i, m in enumerate(messages) if m == "model m version 1 READY")
    assert warmed < ready  # one zero batch at each preferred size ran before the version took traffic
    client.infer("m")
    stats = client.raw.get_inference_statistics("m", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) == 1  # warmup runs are not counted as inference, as in Triton
    client.close()
