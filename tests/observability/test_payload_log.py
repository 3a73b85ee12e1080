"""Payload logging: the sampled share, what is left out, Redis being down, and one run through a real server."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from pytest_redis.executor import RedisExecutor
from redis import Redis

from server.payload_log import ParquetSink, PayloadLog, PayloadPolicy, RedisSink, policy_from_parameters
from tests.observability.clients import HttpClient

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["age", "income", "tenure", "balance", "products", "score", "active", "region"]


class ListSink:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    def write(self, model: str, table: pa.Table) -> None:
        self.tables.append(table)

    def close(self) -> None:
        pass


def _log(sink: Any, policy: PayloadPolicy | None, **kwargs: Any) -> tuple[PayloadLog, CollectorRegistry]:
    registry = CollectorRegistry()
    return PayloadLog(sink, lambda model, version: policy, registry=registry, **kwargs), registry


def _request(rows: int = 1, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    return {"features": x}, {"probabilities": np.full((rows, 3), 1 / 3, np.float32),
                             "label": np.zeros((rows, 1), np.int64)}


@pytest.mark.parametrize("ratio", [pytest.param(0.01, id="1pct"), pytest.param(0.1, id="10pct"),
                                   pytest.param(0.37, id="37pct"), pytest.param(0.5, id="50pct")])
def test_the_sampled_share_is_within_one_point_of_the_ratio_over_10000_requests(ratio: float) -> None:
    sink = ListSink()
    log, registry = _log(sink, PayloadPolicy(ratio), queue_size=20_000)
    inputs, outputs = _request()
    for _ in range(10_000):
        log.observe("tabular", "1", inputs, outputs)
    log.drain()
    written = sum(t.num_rows for t in sink.tables)
    assert abs(written / 10_000 - ratio) <= 0.01
    assert registry.get_sample_value("tessera_payload_log_sampled_total", {"model": "tabular"}) == written


def test_a_model_that_has_not_opted_in_is_never_logged() -> None:
    sink = ListSink()
    log, _ = _log(sink, None)
    log.observe("tabular", "1", *_request())
    log.drain()
    assert sink.tables == []
    assert policy_from_parameters({"feature_names": "a,b"}) is None


def test_redacted_columns_and_dropped_tensors_are_absent_from_what_is_written(tmp_path: Path) -> None:
    policy = policy_from_parameters({"payload_log_sample_ratio": "1", "payload_log_redact": "income, features[7]",
                                     "payload_log_drop": "label"},
                                    {("features", j): n for j, n in enumerate(NAMES)})
    assert policy is not None
    log, _ = _log(ParquetSink(tmp_path), policy)
    for seed in range(3):
        log.observe("tabular", "1", *_request(rows=4, seed=seed))
    log.drain()
    log.stop()
    [path] = (tmp_path / "tabular").glob("payload-*.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 12
    assert "input.income" not in table.column_names and "input.region" not in table.column_names
    assert not any("label" in c for c in table.column_names)
    assert {"input.age", "input.score", "output.probabilities[0]", "request_id", "trace_id", "row"} <= set(
        table.column_names)
    expected = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    assert table.column("input.age").to_numpy()[:4].tolist() == expected[:, 0].tolist()
    assert table.schema.metadata[b"tessera.redacted"] == b"features[7],income"


def test_redis_down_loses_payload_records_counted_and_never_a_request(own_redis: RedisExecutor) -> None:
    url = f"redis://{own_redis.host}:{own_redis.port}/0"
    log, registry = _log(RedisSink(url, timeout_s=0.5), PayloadPolicy(1.0))
    log.observe("tabular", "1", *_request())
    log.drain()
    with Redis.from_url(url) as client:
        assert client.xlen("tessera:payload:tabular") == 1
    own_redis.stop()
    for _ in range(5):
        log.observe("tabular", "1", *_request())  # returns at once: the request is never touched
    log.drain()
    assert registry.get_sample_value("tessera_payload_log_dropped_total",
                                     {"model": "tabular", "reason": "sink"}) == 5
    assert registry.get_sample_value("tessera_payload_log_written_total", {"model": "tabular"}) == 1


def test_a_full_queue_drops_and_counts() -> None:
    log, registry = _log(ListSink(), PayloadPolicy(1.0), queue_size=3)
    for _ in range(5):
        log.observe("tabular", "1", *_request())
    assert registry.get_sample_value("tessera_payload_log_dropped_total",
                                     {"model": "tabular", "reason": "queue"}) == 2


def _opted_in(tmp_path: Path, ratio: str) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "tabular", repo / "tabular")
    config = repo / "tabular" / "config.pbtxt"
    opt_in = (f'parameters {{ key: "payload_log_sample_ratio" value: {{ string_value: "{ratio}" }} }}\n'
              'parameters { key: "payload_log_redact" value: { string_value: "income" } }\n')
    config.write_text(config.read_text() + opt_in)
    return repo


def _infer_both(server: Any, requests: int) -> list[str]:
    ids = []
    h = HttpClient(server.http_url)
    with grpcclient.InferenceServerClient(server.grpc_url) as g:
        for i in range(requests):
            x = np.full((2, 8), i, np.float32)
            if i % 2:
                item = grpcclient.InferInput("features", [2, 8], "FP32")
                item.set_data_from_numpy(x)
                g.infer("tabular", [item], request_id=f"g{i}")
            else:
                item = httpclient.InferInput("features", [2, 8], "FP32")
                item.set_data_from_numpy(x)
                h.infer("tabular", [item], request_id=f"h{i}")
            ids.append(f"g{i}" if i % 2 else f"h{i}")
    h.close()
    return ids


def test_a_real_server_writes_sampled_payloads_to_parquet(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory(_opted_in(tmp_path, "1"), payload_log="parquet", payload_log_dir=tmp_path / "out",
                            drift_enabled=False)
    ids = _infer_both(server, 10)
    payload_log = server.app.observability.payload_log
    payload_log.stop()  # flush and close the file (the server stops it again harmlessly)
    [path] = (tmp_path / "out" / "tabular").glob("payload-*.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 20 and sorted(set(table.column("request_id").to_pylist())) == sorted(ids)
    assert "input.income" not in table.column_names and "input.age" in table.column_names
    assert set(table.column("routing").to_pylist()) == {"pinned"}
    first = table.filter(pa.compute.equal(table.column("request_id"), "h0"))
    assert first.column("input.age").to_pylist() == [0.0, 0.0] and first.column("row").to_pylist() == [0, 1]


def test_a_real_server_with_redis_down_answers_every_request(tmp_path: Path, server_factory: Any,
                                                            own_redis: RedisExecutor) -> None:
    url = f"redis://{own_redis.host}:{own_redis.port}/0"
    server = server_factory(_opted_in(tmp_path, "1"), payload_log="redis", redis_url=url, drift_enabled=False,
                            state_dir=tmp_path / "state")
    _infer_both(server, 2)
    deadline = time.monotonic() + 20
    with Redis.from_url(url) as client:
        while client.xlen("tessera:payload:tabular") < 1:
            assert time.monotonic() < deadline, "the payloads did not arrive"
            time.sleep(0.05)
    own_redis.stop()
    _infer_both(server, 20)  # every request answers (an error would raise)
    registry = server.app.metrics.registry
    deadline = time.monotonic() + 20
    while (registry.get_sample_value("tessera_payload_log_dropped_total", {"model": "tabular", "reason": "sink"})
           or 0) < 20:
        assert time.monotonic() < deadline, "the lost records were not counted"
        time.sleep(0.05)
    assert registry.get_sample_value("tessera_request_success_total", {"model": "tabular", "version": "1"}) == 22
