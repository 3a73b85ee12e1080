from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from server.drift.evaluate import EvaluationConfig, evaluate
from server.drift.metrics import MonitorMetrics
from server.drift.report_http import ReportServer
from server.drift.reports import ReportBook
from server.drift.stats import WindowSummary
from server.drift.webhook import WebhookNotifier

from .data import requests


def _report_book(registry: CollectorRegistry) -> ReportBook:
    book = ReportBook(MonitorMetrics(registry), history=2)
    reference = WindowSummary(model="m", window_id="r", producer="t", start_ms=0, end_ms=0)
    for r in requests(seed=1, count=4, rows=500):
        reference.fold_inputs(r, rows=500)
    for seed, shift in ((2, None), (3, {0: 2.0}), (4, None)):
        current = WindowSummary(model="m", window_id="c", producer="t", start_ms=0, end_ms=0)
        for r in requests(seed=seed, count=2, rows=500, shift=shift):
            current.fold_inputs(r, rows=500)
        book.record(evaluate(current, reference, EvaluationConfig()))
    return book


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served() -> Iterator[tuple[ReportServer, CollectorRegistry]]:
    registry = CollectorRegistry()
    server = ReportServer(_report_book(registry), registry, "127.0.0.1", 0)
    server.start()
    yield server, registry
    server.stop()


def test_reports_history_metrics_and_errors_are_served(served: tuple[ReportServer, CollectorRegistry]) -> None:
    port = served[0].port
    status, body = _get(port, "/reports")
    assert status == 200 and list(json.loads(body)) == ["m"]
    status, body = _get(port, "/reports/m/history")
    states = [r["state"] for r in json.loads(body)]
    # Bounded to the last 2: the shifted window, then an unshifted one. The KLL sketches compact at
    # random, so an unshifted window sits at "ok" or, now and then, at "warn" (seen 1 run in 15).
    assert status == 200 and len(states) == 2 and states[0] == "alert" and states[1] in ("ok", "warn")
    assert _get(port, "/reports/nope")[0] == 404
    assert json.loads(_get(port, "/nowhere")[1]) == {"error": "no route /nowhere"}
    assert _get(port, "/healthz") == (200, b"ok")
    status, body = _get(port, "/metrics")
    assert b'tessera_drift_evaluations_total{model="m"} 3.0' in body


def test_transitions_report_entering_and_leaving_alert_only() -> None:
    book = _report_book(CollectorRegistry())
    assert book.latest("m") is not None
    reference = WindowSummary(model="m", window_id="r", producer="t", start_ms=0, end_ms=0)
    for r in requests(seed=1, count=4, rows=500):
        reference.fold_inputs(r, rows=500)
    shifted = WindowSummary(model="m", window_id="c", producer="t", start_ms=0, end_ms=0)
    for r in requests(seed=9, count=2, rows=500, shift={3: 2.0}):
        shifted.fold_inputs(r, rows=500)
    transitions = book.record(evaluate(shifted, reference, EvaluationConfig()))
    assert [(t["feature"], t["previous"], t["state"]) for t in transitions] == [("x[3]", "ok", "alert")]


async def test_a_failing_webhook_is_counted_never_raised() -> None:
    registry = CollectorRegistry()
    notifier = WebhookNotifier("http://127.0.0.1:9/unreachable", MonitorMetrics(registry), timeout_s=1)
    await notifier.notify([{"model": "m", "feature": "f", "state": "alert"}])
    assert registry.get_sample_value("tessera_drift_webhook_failures_total") == 1
