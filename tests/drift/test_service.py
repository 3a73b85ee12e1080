from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from server.drift.__main__ import main as drift_main
from server.drift.metrics import MonitorMetrics
from server.drift.monitor import MonitorConfig
from server.drift.profiles import ProfileStore
from server.drift.report_http import ReportServer
from server.drift.state import RedisDriftState
from server.drift.tap import TapConfig
from server.drift.webhook import WebhookNotifier

from .data import StepClock, requests, stacked
from .pipeline import Producer, drain, service

NAMES = ["age", "income", "tenure", "balance"]


def write_repository(root: Path, reference: list[dict[str, Any]]) -> Path:
    """A model directory with a config naming its features, and training data in Parquet."""
    (root / "tabular").mkdir(parents=True)
    (root / "tabular" / "config.pbtxt").write_text(
        'name: "tabular"\nmax_batch_size: 64\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] },\n'
        '        { name: "c", data_type: TYPE_INT64, dims: [ 1 ] } ]\n'
        f'parameters {{ key: "feature_names" value: {{ string_value: "{",".join(NAMES)}" }} }}\n')
    x, c = stacked(reference, "x"), stacked(reference, "c")
    columns = {name: x[:, j] for j, name in enumerate(NAMES)}
    table = pa.table({**columns, "c": pa.array(c[:, 0]), "label": pa.array(["a"] * len(x))})
    data = root / "train.parquet"
    pq.write_table(table, data, row_group_size=3000)
    return data


class Hook:
    """A webhook receiver (stdlib HTTP server in a thread) that keeps the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body: bytes = response.read()
        return body


async def test_a_shifted_feature_and_only_it_is_flagged_within_two_windows(
        tmp_path: Path, redis: Redis, redis_url: str, hook: Hook) -> None:
    data = write_repository(tmp_path, requests(seed=50, count=40, rows=500))
    assert drift_main(["profile", "--model", "tabular", "--data", str(data), "--model-repository", str(tmp_path),
                       "--exclude", "label", "--batch-rows", "4096"]) == 0
    registry = CollectorRegistry()
    notifier = WebhookNotifier(hook.url, MonitorMetrics(CollectorRegistry()))
    svc, reports = service(redis, sliding_buckets=2, profiles=ProfileStore(tmp_path, redis), registry=registry,
                           notifier=notifier)
    http = ReportServer(reports, registry, "127.0.0.1", 0)
    http.start()
    clock = StepClock()
    flagged: list[list[str]] = []
    async with Producer(redis_url, "replica", clock, TapConfig(window_s=60)) as producer:
        for window in range(5):
            shift = {1: 1.0} if window >= 2 else None
            await producer.send("tabular", requests(seed=60 + window, count=4, rows=500, shift=shift))
            clock.now += 60
            producer.tap.flush()
            await asyncio.sleep(0.05)
            await drain(svc)
            report = reports.latest("tabular")
            assert report is not None
            flagged.append([n for n, f in report["features"].items() if f["state"] == "alert"])
    http_report = json.loads(_get(http.port, "/reports/tabular"))
    metrics = _get(http.port, "/metrics").decode()
    http.stop()
    assert flagged[:2] == [[], []]
    assert flagged[3:] == [["income"], ["income"]]  # at the latest the second shifted window
    assert flagged[2] in ([], ["income"])
    assert http_report["features"]["income"]["state"] == "alert"
    assert http_report["features"]["age"]["state"] in ("ok", "warn")
    assert 'tessera_drift_feature_state{feature="income",model="tabular"} 2.0' in metrics
    assert 'tessera_drift_feature_state{feature="age",model="tabular"} 0.0' in metrics
    assert 'tessera_drift_score{feature="income",measure="psi",model="tabular"}' in metrics
    alerts = [a for body in hook.bodies for a in body["alerts"]]
    assert [(a["feature"], a["state"]) for a in alerts if a["state"] == "alert"] == [("income", "alert")]


async def test_services_sharing_a_group_fold_each_window_exactly_once(redis: Redis, redis_url: str) -> None:
    reqs = requests(seed=70, count=30, rows=200)
    async with Producer(redis_url, "replica", StepClock(), TapConfig(window_s=60, window_rows=400)) as producer:
        await producer.send("m", reqs)
    registries = [CollectorRegistry(), CollectorRegistry()]
    services = [service(redis, consumer=f"svc-{i}", registry=r, batch_messages=2)[0]
                for i, r in enumerate(registries)]
    for _ in range(20):
        await asyncio.gather(*(s.step() for s in services))
    folded = [r.get_sample_value("tessera_drift_windows_folded_total", {"model": "m"}) or 0 for r in registries]
    assert sum(folded) == 15 and all(folded)
    current = await RedisDriftState(redis, MonitorConfig(bucket_s=60, sliding_buckets=1), "tessera-drift").current("m")
    assert current is not None and current.rows == 6000 and current.windows == 15
