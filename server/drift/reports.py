"""The latest drift reports per model, a short history, metric export and alert transitions.

Written on the event loop, read from any thread (the drift service's HTTP thread): a lock guards it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from .evaluate import DriftReport
from .metrics import MonitorMetrics

__all__ = ["ReportBook", "Transition"]

Transition = dict[str, Any]


class ReportBook:
    """Keeps each model's latest report and `history` previous ones; exports them as gauges."""

    def __init__(self, metrics: MonitorMetrics, history: int = 50) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._states: dict[tuple[str, str], str] = {}
        self._size = history

    def record(self, report: DriftReport) -> list[Transition]:
        """Store and export a report; return the features that entered or left the alert state."""
        self._export(report)
        body = report.to_dict()
        with self._lock:
            self._latest[report.model] = body
            self._history.setdefault(report.model, deque(maxlen=self._size)).append(body)
        transitions: list[Transition] = []
        for name, feature in report.features.items():
            before = self._states.get((report.model, name), "ok")
            self._states[(report.model, name)] = feature.state
            if _alerting(before) != _alerting(feature.state):
                transitions.append({"model": report.model, "feature": name, "previous": before,
                                    "state": feature.state, "measures": body["features"][name]["measures"],
                                    "states": feature.states, "evaluated_at_ms": report.evaluated_at_ms})
        return transitions

    def latest(self, model: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            if model is None:
                return dict(self._latest)
            return self._latest.get(model)

    def history(self, model: str) -> list[dict[str, Any]] | None:
        with self._lock:
            found = self._history.get(model)
            return None if found is None else list(found)

    def _export(self, report: DriftReport) -> None:
        m = self._metrics
        m.evaluations.labels(report.model).inc()
        m.window_rows.labels(report.model).set(report.rows)
        m.model_state.labels(report.model).set(m.state_value(report.state))
        for name, feature in report.features.items():
            m.feature_state.labels(report.model, name).set(m.state_value(feature.state))
            for measure, value in feature.measures.items():
                m.score.labels(report.model, name, measure).set(value)
            for measure, state in feature.states.items():
                m.measure_state.labels(report.model, name, measure).set(m.state_value(state))


def _alerting(state: str) -> bool:
    return state == "alert"
