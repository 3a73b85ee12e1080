"""End to end: the real Tessera server with the drift side path attached, over gRPC with tritonclient,
through Redis to the drift service. Drift on vs off: the same server answers the same way."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient
from redis.asyncio import Redis

from server.drift.__main__ import main as drift_main
from server.drift.profiles import ProfileStore

from ..polling import async_wait_until
from .pipeline import drain, service

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["age", "income", "tenure", "balance", "products", "score", "active", "region"]


def _repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "tabular", repo / "tabular")
    rng = np.random.default_rng(90)
    train = rng.standard_normal((20_000, 8)).astype(np.float32)
    pq.write_table(pa.table({n: train[:, j] for j, n in enumerate(NAMES)}), tmp_path / "train.parquet")
    assert drift_main(["profile", "--model", "tabular", "--data", str(tmp_path / "train.parquet"),
                       "--model-repository", str(repo)]) == 0
    return repo


def _traffic(url: str, seed: int, requests: int, shift: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    answers = []
    with grpcclient.InferenceServerClient(url) as client:
        for _ in range(requests):
            x = rng.standard_normal((50, 8)).astype(np.float32)
            x[:, 1] += np.float32(shift)
            item = grpcclient.InferInput("features", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            answers.append(client.infer("tabular", [item]).as_numpy("probabilities"))
    return answers


async def _stream_length(redis: Redis, windows: int) -> None:
    async def arrived() -> bool:
        return await redis.exists("tessera:drift:tabular") != 0 and await redis.xlen("tessera:drift:tabular") >= windows

    await async_wait_until(arrived, timeout_s=20, message="windows did not arrive")


async def test_server_traffic_flags_the_shifted_feature_through_redis(
        tmp_path: Path, redis: Redis, redis_url: str, server_factory: Callable[..., Any]) -> None:
    repo = _repository(tmp_path)
    off = server_factory(repo, drift_enabled=False)
    server = server_factory(repo, redis_url=redis_url, drift_window_s=60, drift_window_rows=2000,
                            state_dir=tmp_path / "state")
    registry = server.app.metrics.registry
    plain = await asyncio.to_thread(_traffic, off.grpc_url, 1, 5)
    watched = await asyncio.to_thread(_traffic, server.grpc_url, 1, 5)
    assert all(np.array_equal(a, b) for a, b in zip(plain, watched, strict=True))  # drift on == off

    svc, reports = service(redis, profiles=ProfileStore(repo, redis))
    await asyncio.to_thread(_traffic, server.grpc_url, 2, 75)  # 80 requests, 4000 rows: 2 windows
    await _stream_length(redis, 2)
    await drain(svc)
    report = reports.latest("tabular")
    assert report is not None and report["state"] in ("ok", "warn")
    assert sorted(report["features"]) == sorted(NAMES)

    await asyncio.to_thread(_traffic, server.grpc_url, 3, 80, 1.0)  # 2 windows with income + 1 sd
    await _stream_length(redis, 4)
    await drain(svc)
    report = reports.latest("tabular")
    assert report is not None
    assert [n for n, f in report["features"].items() if f["state"] == "alert"] == ["income"]
    assert registry.get_sample_value("tessera_drift_windows_published_total", {"model": "tabular"}) == 4
    assert registry.get_sample_value("tessera_drift_dropped_total", {"model": "tabular"}) is None


async def test_windows_from_two_servers_merge_like_one_server_seeing_all_the_data(
        tmp_path: Path, redis: Redis, redis_url: str, server_factory: Callable[..., Any]) -> None:
    """Two real servers (each its own App, tap and publisher) split the traffic; their windows,
    read back from the Redis stream and merged, equal the statistics of all the data at once."""
    from server.drift.codec import decode_window
    from server.drift.stats import merge_windows

    from .data import assert_summary_matches

    repo = _repository(tmp_path)
    servers = [server_factory(repo, redis_url=redis_url, drift_window_s=3600, drift_window_rows=1000,
                              state_dir=tmp_path / f"state{i}") for i in range(2)]
    rng = np.random.default_rng(5)
    data = rng.standard_normal((4000, 8)).astype(np.float32)
    for i, server in enumerate(servers):  # 2 windows of 1000 rows from each server
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            for start in range(i * 2000, (i + 1) * 2000, 50):
                item = grpcclient.InferInput("features", [50, 8], "FP32")
                item.set_data_from_numpy(data[start : start + 50])
                client.infer("tabular", [item])
    await _stream_length(redis, 4)
    entries = await redis.xrange("tessera:drift:tabular")
    windows = [decode_window(fields[b"payload"]) for _, fields in entries]
    assert len({w.producer for w in windows}) == 2
    merged = merge_windows("tabular", windows)
    assert merged is not None and merged.rows == 4000
    for column in range(8):
        assert_summary_matches(merged.features[("features", column)], data[:, column])
