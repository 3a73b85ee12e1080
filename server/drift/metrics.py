"""Drift metrics, defined once on the registry the caller passes (the server's, or the service's).

`TapMetrics` belong to the serving process (hot-path drops, publishing); `MonitorMetrics` to
whatever evaluates drift (the drift service, or the embedded monitor of `tessera serve`).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..metrics import add_new_counts, flush_before_collection

__all__ = ["STATE_VALUES", "MonitorMetrics", "TapMetrics"]

STATE_VALUES = {"ok": 0, "warn": 1, "alert": 2}
"""Gauge values of the alert states; `insufficient_data` and `no_reference` export as -1."""


class TapMetrics:
    """Statistics side path of a server process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.dropped_counts: dict[str, int] = {}
        """Observations dropped, per model: the tap adds here, on the event loop (under load most requests
        are dropped, and a Counter's inc takes a lock); `dropped` gets them at each collection."""
        self._dropped_reported: dict[str, int] = {}
        self._flushing = threading.Lock()
        flush_before_collection(r, self._flush_dropped)
        self.dropped = Counter("tessera_drift_dropped", "Inference observations dropped because the drift "
                               "queue was full.", ("model",), registry=r)
        self.skipped_inputs = Counter("tessera_drift_skipped_inputs", "Input tensors not summarised because "
                                      "they have more columns than the drift feature limit.", ("model",),
                                      registry=r)
        # What drift statistics cost the server, in the unit the CPU budget is set in.
        self.loop_cpu = Counter("tessera_drift_loop_cpu_seconds", "CPU time the serving event loop spent on "
                                "drift statistics (folding observations, encoding windows).", registry=r)
        self.windows_closed = Counter("tessera_drift_windows_closed", "Statistics windows closed.",
                                      ("model",), registry=r)
        self.windows_published = Counter("tessera_drift_windows_published", "Windows written to the "
                                         "drift stream (or the embedded monitor).", ("model",), registry=r)
        self.windows_dropped = Counter("tessera_drift_windows_dropped", "Windows dropped because the "
                                       "publisher's buffer was full or Redis refused them.", ("model",),
                                       registry=r)
        self.buffered = Gauge("tessera_drift_publisher_buffered_windows", "Windows waiting to be "
                              "published.", registry=r, multiprocess_mode="livesum")
        self.connected = Gauge("tessera_drift_publisher_connected", "1 while the drift publisher reaches "
                               "Redis.", registry=r, multiprocess_mode="livemin")
        self.publish_errors = Counter("tessera_drift_publish_errors", "Failed attempts to write windows "
                                      "to Redis.", registry=r)
        self.reconnects = Counter("tessera_drift_publisher_reconnects", "Times the drift publisher "
                                  "reached Redis again after losing it.", registry=r)

    def _flush_dropped(self) -> None:
        with self._flushing:
            add_new_counts(self.dropped, self.dropped_counts, self._dropped_reported)


class MonitorMetrics:
    """Drift evaluation: scores and alert states per model, feature and measure."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.score = Gauge("tessera_drift_score", "Latest drift measure of a feature against its "
                           "reference.", ("model", "feature", "measure"), registry=r)
        self.measure_state = Gauge("tessera_drift_alert_state", "Alert state per measure: 0 ok, 1 warn, "
                                   "2 alert.", ("model", "feature", "measure"), registry=r)
        self.feature_state = Gauge("tessera_drift_feature_state", "Worst alert state of a feature: 0 ok, "
                                   "1 warn, 2 alert, -1 not evaluated.", ("model", "feature"), registry=r)
        self.model_state = Gauge("tessera_drift_model_state", "Worst alert state of a model's features.",
                                 ("model",), registry=r)
        self.window_rows = Gauge("tessera_drift_window_rows", "Rows in the sliding window evaluated last.",
                                 ("model",), registry=r)
        self.evaluations = Counter("tessera_drift_evaluations", "Drift evaluations run.", ("model",),
                                   registry=r)
        self.windows_folded = Counter("tessera_drift_windows_folded", "Windows merged into the drift "
                                      "state.", ("model",), registry=r)
        self.windows_duplicate = Counter("tessera_drift_windows_duplicate", "Windows seen again and "
                                         "ignored (redelivery or publisher retry).", ("model",), registry=r)
        self.windows_stale = Counter("tessera_drift_windows_stale", "Windows older than the retained "
                                     "state, acknowledged and ignored.", ("model",), registry=r)
        self.windows_invalid = Counter("tessera_drift_windows_invalid", "Stream messages that could not "
                                       "be decoded.", registry=r)
        self.webhook_failures = Counter("tessera_drift_webhook_failures", "Alert webhook POSTs that "
                                        "failed.", registry=r)

    def state_value(self, state: str) -> int:
        return STATE_VALUES.get(state, -1)
