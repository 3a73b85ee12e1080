"""Prediction drift: output tensors summarised per model version like inputs; the drift service raises an
output alert when the outputs shift (shifted inputs against a scored-table profile, or a candidate
version against the stable one's windows); a rollout's status carries the output comparison."""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from server.drift.__main__ import main as drift_main
from server.drift.metrics import TapMetrics
from server.drift.outputs import output_key, parse_output_key, with_classes
from server.drift.profiles import ProfileStore
from server.drift.publishers import InProcessPublisher
from server.drift.tap import DriftTap, TapConfig

from ..sample_models import make_models
from .pipeline import drain, service

ROOT = Path(__file__).resolve().parents[2]


def _score(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probabilities, label = session.run(None, {"features": x})
    return {"probabilities": probabilities, "label": label}


def _traffic(url: str, seed: int, requests: int, shift: float = 0.0, version: str = "") -> None:
    rng = np.random.default_rng(seed)
    with grpcclient.InferenceServerClient(url) as client:
        for _ in range(requests):
            x = (rng.standard_normal((50, 8)) + shift).astype(np.float32)
            item = grpcclient.InferInput("features", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            client.infer("tabular", [item], model_version=version)


async def _stream_length(redis: Redis, key: str, windows: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await redis.exists(key) == 0 or await redis.xlen(key) < windows:
        assert loop.time() < deadline, f"windows did not arrive on {key}"
        await asyncio.sleep(0.05)


def test_output_keys_cannot_meet_a_model_name() -> None:
    assert parse_output_key(output_key("tabular", "3")) == ("tabular", "3")
    assert parse_output_key("tabular") is None
    classes = with_classes({"p": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), "y": np.array([[1], [0]])})
    assert classes["p.class"].tolist() == [1, 0] and "y.class" not in classes


async def test_the_tap_summarises_each_versions_outputs_with_class_shares() -> None:
    windows = []

    class Keep:
        def submit(self, window: Any) -> None:
            windows.append(window)

    publisher = InProcessPublisher(Keep(), TapMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    tap = DriftTap(publisher, TapMetrics(CollectorRegistry()), TapConfig(window_s=0, window_rows=4))
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]], np.float32)
    tap.observe("m", "2", {"x": np.zeros((4, 3), np.float32)}, {"p": probabilities})
    tap.flush(close_all=True)
    await publisher.stop()
    by_model = {w.model: w for w in windows}
    assert set(by_model) == {"m", "m:outputs:2"}
    outputs = by_model["m:outputs:2"]
    assert outputs.rows == 4
    assert outputs.features[("p.class", -1)].frequencies == {0: 2, 1: 2}  # class shares
    assert outputs.features[("p", 1)].count == 4 and outputs.features[("p", 1)].max == pytest.approx(0.8)
    assert tap.recent_outputs("m", "2") is not None and tap.recent_outputs("m", "2").rows == 4  # type: ignore[union-attr]


async def test_shifted_inputs_raise_an_output_alert_against_a_scored_table_profile(
        tmp_path: Path, redis: Redis, redis_url: str, server_factory: Callable[..., Any]) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "tabular", repo / "tabular")
    x = np.random.default_rng(90).standard_normal((20_000, 8)).astype(np.float32)
    scored = _score(repo / "tabular" / "1" / "model.onnx", x)
    pq.write_table(pa.table({"probabilities": list(scored["probabilities"]), "label": scored["label"][:, 0]}),
                   tmp_path / "scored.parquet")
    assert drift_main(["profile", "--model", "tabular", "--outputs", "--data", str(tmp_path / "scored.parquet"),
                       "--model-repository", str(repo)]) == 0
    assert (repo / "tabular" / "drift_profile.outputs.arrow").exists()
    server = server_factory(repo, redis_url=redis_url, drift_window_s=60, drift_window_rows=2000,
                            state_dir=tmp_path / "state")
    svc, reports = service(redis, profiles=ProfileStore(repo, redis))
    key = "tabular:outputs:1"
    await asyncio.to_thread(_traffic, server.grpc_url, 2, 80)  # 4000 rows: 2 windows
    await _stream_length(redis, f"tessera:drift:{key}", 2)
    await drain(svc)
    report = reports.latest(key)
    assert report is not None and report["state"] in ("ok", "warn"), report
    assert {"probabilities[0]", "probabilities.class", "label[0]"} <= set(report["features"])

    await asyncio.to_thread(_traffic, server.grpc_url, 3, 160, 1.5)  # 8000 rows, every input + 1.5 sd
    await _stream_length(redis, f"tessera:drift:{key}", 6)
    await drain(svc)
    report = reports.latest(key)
    assert report is not None and report["state"] == "alert"
    assert report["features"]["probabilities[0]"]["state"] == "alert"
    assert report["features"]["probabilities.class"]["state"] in ("warn", "alert")  # the class shares moved
    assert reports.latest("tabular") is not None  # inputs are still reported on their own


async def test_a_candidate_with_other_outputs_raises_an_output_alert_against_the_stable_version(
        tmp_path: Path, redis: Redis, redis_url: str, server_factory: Callable[..., Any]) -> None:
    repo = tmp_path / "repo"
    make_models.make_tabular(repo, version=1, seed=7)
    make_models.make_tabular(repo, version=2, seed=99)
    config = repo / "tabular" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    server = server_factory(repo, redis_url=redis_url, drift_window_s=60, drift_window_rows=2000,
                            state_dir=tmp_path / "state")
    await asyncio.to_thread(_traffic, server.grpc_url, 4, 80, 0.0, "1")
    await asyncio.to_thread(_traffic, server.grpc_url, 5, 40, 0.0, "2")
    await _stream_length(redis, "tessera:drift:tabular:outputs:1", 2)
    await _stream_length(redis, "tessera:drift:tabular:outputs:2", 1)
    svc, reports = service(redis, profiles=ProfileStore(repo, redis))  # no output profile anywhere
    await drain(svc)
    report = reports.latest("tabular:outputs:2")
    assert report is not None and report["state"] == "alert", report
    assert any(f["state"] == "alert" for f in report["features"].values())


def _rollout_status(server: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/tabular/rollout", timeout=30) as response:
        return orjson.loads(response.read())  # type: ignore[no-any-return]


def _rollout(tmp_path: Path, server_factory: Callable[..., Any], candidate_seed: int,
             spec: dict[str, Any]) -> Any:
    """A server with tabular versions 1 (seed 7) and 2 (`candidate_seed`), rolling out 2 by `spec`."""
    repo = tmp_path / "repo"
    make_models.make_tabular(repo, version=1, seed=7)
    make_models.make_tabular(repo, version=2, seed=candidate_seed)
    config = repo / "tabular" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    server = server_factory(repo, state_dir=tmp_path / "state", drift_window_s=60, drift_window_rows=500,
                            drift_cpu_budget=0.5)
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/tabular/rollout",
                                     data=orjson.dumps({"candidate_version": 2, **spec}), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
    return server


def _output_figure(server: Any, stable_rows: int, candidate_rows: int) -> tuple[str, dict[str, Any]]:
    """(phase, output comparison) once both arms hold enough rows, or after 20 s: the side path folds
    off the request path, a little later."""
    deadline = time.monotonic() + 20
    while True:
        status = _rollout_status(server)
        figure = status["last_analysis"]["output_distribution"]
        if (figure["stable_rows"] >= stable_rows and figure["candidate_rows"] >= candidate_rows) or (
                time.monotonic() > deadline):
            return status["phase"], figure
        time.sleep(0.1)


CANARY_50 = {"canary": {"steps": [50], "step_seconds": 3600, "min_requests": 1}}


@pytest.mark.parametrize(("candidate_seed", "expected"), [pytest.param(7, {"ok", "warn"}, id="same-model"),
                                                          pytest.param(99, {"alert"}, id="other-model")])
def test_a_rollouts_status_shows_candidate_against_stable_outputs(
        tmp_path: Path, server_factory: Callable[..., Any], candidate_seed: int, expected: set[str]) -> None:
    server = _rollout(tmp_path, server_factory, candidate_seed, {"shadow": {"percent": 0}, **CANARY_50})
    _traffic(server.grpc_url, 6, 60)  # 3000 rows, about half to each arm
    phase, figure = _output_figure(server, 501, 501)
    assert phase == "CANARY" and figure["stable_rows"] > 500 and figure["candidate_rows"] > 500, figure
    assert figure["state"] in expected, figure
    assert "probabilities.class" in figure["features"]


def test_a_rollout_in_shadow_shows_the_candidates_outputs_on_the_copies_against_the_stable_ones(
        tmp_path: Path, server_factory: Callable[..., Any]) -> None:
    server = _rollout(tmp_path, server_factory, 99, {
        "shadow": {"percent": 100, "duration_seconds": 3600, "min_requests": 100000}, **CANARY_50})
    _traffic(server.grpc_url, 6, 30)  # 1500 rows, every one answered by version 1 and copied to version 2
    phase, figure = _output_figure(server, 1500, 501)
    assert phase == "SHADOW" and figure["stable_rows"] >= 1500, (phase, figure)
    assert figure["candidate_rows"] > 500, figure  # the candidate answered nobody: these are its shadow outputs
    assert figure["state"] == "alert", figure  # another model's outputs
    assert "probabilities.class" in figure["features"]
