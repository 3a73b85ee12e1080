"""Sliding windows over time buckets, and the embedded DriftMonitor of a server without Redis.

Windows fall into the bucket of their period start, so windows of all replicas covering the same
period merge; an evaluation merges the newest `sliding_buckets` buckets and compares them with
the model's reference profile. The drift service keeps the same buckets in Redis instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .evaluate import DriftReport, EvaluationConfig, evaluate
from .outputs import is_output_key, sibling_reference
from .profiles import ProfileStore
from .reports import ReportBook, Transition
from .stats import WindowSummary, merge_windows

__all__ = ["DriftMonitor", "MonitorConfig", "log_transitions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    bucket_s: float = 60.0
    """Seconds per bucket; a window counts in the bucket its period starts in."""

    sliding_buckets: int = 5
    """Buckets (newest first) that one evaluation merges and compares with the reference."""

    retention_buckets: int = 0
    """Buckets of state kept, so late windows still count; 0 means sliding_buckets + 2."""

    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Measures' thresholds and bins."""

    @property
    def bucket_ms(self) -> int:
        return max(1, int(self.bucket_s * 1000))

    def bucket_of(self, window: WindowSummary) -> int:
        """The bucket (its start, epoch ms) a window belongs to."""
        return window.start_ms // self.bucket_ms * self.bucket_ms

    def sliding(self, latest: int) -> list[int]:
        """Buckets of the sliding window ending at bucket `latest`, oldest first."""
        return [latest - i * self.bucket_ms for i in range(self.sliding_buckets - 1, -1, -1)]

    def oldest_kept(self, latest: int) -> int:
        keep = self.retention_buckets or self.sliding_buckets + 2
        return latest - (keep - 1) * self.bucket_ms


def log_transitions(transitions: list[Transition]) -> None:
    for t in transitions:
        level = logging.WARNING if t["state"] == "alert" else logging.INFO
        logger.log(level, "drift %s: model %s feature %s (was %s): %s", t["state"], t["model"], t["feature"],
                   t["previous"], {k: v for k, v in t["states"].items() if v != "ok"})


class DriftMonitor:
    """In-memory buckets for one process: folds windows and evaluates on the event loop."""

    def __init__(self, config: MonitorConfig, profiles: ProfileStore, reports: ReportBook) -> None:
        self.config = config
        self._profiles = profiles
        self.reports = reports
        self._buckets: dict[str, dict[int, WindowSummary]] = {}
        self._seen: dict[str, dict[str, int]] = {}
        self._latest: dict[str, int] = {}

    def submit(self, window: WindowSummary) -> DriftReport | None:
        """Fold a window in (once per window id) and evaluate its model; None if ignored."""
        model = window.model
        bucket = self.config.bucket_of(window)
        seen = self._seen.setdefault(model, {})
        latest = max(self._latest.get(model, bucket), bucket)
        if window.window_id in seen or bucket < self.config.oldest_kept(latest):
            return None
        seen[window.window_id] = bucket
        self._latest[model] = latest
        buckets = self._buckets.setdefault(model, {})
        merged = merge_windows(model, [b for b in (buckets.get(bucket), window) if b is not None],
                               f"bucket:{bucket}")
        assert merged is not None
        buckets[bucket] = merged
        self._expire(model, latest)
        return self.evaluate(model)

    def evaluate(self, model: str) -> DriftReport | None:
        latest = self._latest.get(model)
        if latest is None:
            return None
        current = self._sliding(model, latest)
        if current is None:
            return None
        reference = self._profiles.get_local(model)
        if reference is None and is_output_key(model):  # no output profile: the model's other versions
            reference = sibling_reference(model, {k: self._sliding(k, self._latest[k]) for k in self._latest
                                                  if k != model and is_output_key(k)})
        report = evaluate(current, reference, self.config.evaluation)
        log_transitions(self.reports.record(report))
        return report

    def _sliding(self, model: str, latest: int) -> WindowSummary | None:
        buckets = self._buckets.get(model, {})
        return merge_windows(model, [buckets[b] for b in self.config.sliding(latest) if b in buckets])

    def latest_reports(self) -> dict[str, Any]:
        """Each model's latest report (JSON-ready), for a server route or a test."""
        return self.reports.latest() or {}

    def _expire(self, model: str, latest: int) -> None:
        oldest = self.config.oldest_kept(latest)
        buckets = self._buckets[model]
        for bucket in [b for b in buckets if b < oldest]:
            del buckets[bucket]
        seen = self._seen[model]
        for window_id in [w for w, b in seen.items() if b < oldest]:
            del seen[window_id]
