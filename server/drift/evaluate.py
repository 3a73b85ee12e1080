"""Compare a current summary with its reference: measures, thresholds, alert states, the report.

Thresholds default to what the established tools use (PSI 0.1 warn / 0.25 alert; KS and
chi-squared p-value 0.05) and can be overridden per model and per feature from a JSON file.
By default p-values only warn: on windows of thousands of rows evaluated every minute, a 5%
test fires on a stable feature several times an hour, while the effect sizes (PSI, Jensen-Shannon,
Wasserstein, mean shift) are both stable and meaningful; set `"ks_pvalue": {"alert": 0.05}` to
alert on significance as well.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measures import categorical_measures, numeric_measures
from .stats import FeatureKey, FeatureSummary, WindowSummary

__all__ = ["DEFAULT_THRESHOLDS", "DriftReport", "EvaluationConfig", "FeatureReport", "Threshold",
           "Thresholds", "evaluate", "worst"]

_ORDER = ("no_reference", "insufficient_data", "ok", "warn", "alert")


def worst(states: list[str]) -> str:
    """The most severe of some states ("ok" when there are none)."""
    return max(states, key=_ORDER.index) if states else "ok"


@dataclass(frozen=True, slots=True)
class Threshold:
    """Warn and alert levels of one measure (None: never that state). `lower_is_worse` for p-values."""

    warn: float | None
    alert: float | None
    lower_is_worse: bool = False

    def state(self, value: float) -> str:
        if math.isnan(value):
            return "ok"
        for state, level in (("alert", self.alert), ("warn", self.warn)):
            if level is not None and (value < level if self.lower_is_worse else value >= level):
                return state
        return "ok"


DEFAULT_THRESHOLDS: Mapping[str, Threshold] = {
    "psi": Threshold(warn=0.1, alert=0.25),
    "js_distance": Threshold(warn=0.1, alert=0.2),
    "ks_pvalue": Threshold(warn=0.05, alert=None, lower_is_worse=True),
    "chi2_pvalue": Threshold(warn=0.05, alert=None, lower_is_worse=True),
    "wasserstein": Threshold(warn=0.1, alert=0.2),
    "mean_shift": Threshold(warn=0.1, alert=0.25),
}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Defaults, then per-model, then per-feature overrides. A measure set to null is not judged.

    JSON shape: {"measures": {"psi": {"warn": 0.1, "alert": 0.25}},
                 "models": {"m": {"measures": {...}, "features": {"f": {"psi": {...}}}}}}
    """

    measures: Mapping[str, Threshold | None] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def lookup(self, model: str, feature: str, measure: str) -> Threshold | None:
        found = self.measures.get(measure)
        model_cfg = self.models.get(model, {})
        for level in (model_cfg.get("measures", {}), model_cfg.get("features", {}).get(feature, {})):
            if measure in level:
                found = _threshold(level[measure], found or DEFAULT_THRESHOLDS.get(measure))
        return found

    @classmethod
    def from_json(cls, text: str) -> Thresholds:
        raw = json.loads(text)
        measures: dict[str, Threshold | None] = dict(DEFAULT_THRESHOLDS)
        for name, spec in raw.get("measures", {}).items():
            measures[name] = _threshold(spec, DEFAULT_THRESHOLDS.get(name))
        return cls(measures=measures, models=raw.get("models", {}))

    @classmethod
    def from_file(cls, path: Path) -> Thresholds:
        return cls.from_json(path.read_text())


def _threshold(spec: Mapping[str, Any] | None, base: Threshold | None) -> Threshold | None:
    if spec is None:
        return None
    if base is None and not {"warn", "alert"} & spec.keys():
        raise ValueError(f"threshold for a new measure needs warn or alert: {spec}")

    def level(name: str) -> float | None:
        value = spec.get(name, getattr(base, name) if base else None)
        return None if value is None else float(value)

    lower = spec.get("lower_is_worse", base.lower_is_worse if base else False)
    return Threshold(warn=level("warn"), alert=level("alert"), lower_is_worse=bool(lower))


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    """Warn/alert levels per measure, model and feature."""

    psi_bins: int = 10
    """Quantile bins of the reference used by PSI and Jensen-Shannon."""

    min_rows: int = 500
    """Features with fewer finite values in the sliding window are reported as insufficient_data
    (below a few hundred rows, sampling noise alone moves PSI and mean shift past their levels)."""


@dataclass(slots=True)
class FeatureReport:
    name: str
    state: str
    measures: dict[str, float] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class DriftReport:
    """One evaluation of one model's sliding window: JSON-ready via `to_dict`."""

    model: str
    evaluated_at_ms: int
    window_start_ms: int
    window_end_ms: int
    rows: int
    windows: int
    state: str
    features: dict[str, FeatureReport]

    def drifting(self, state: str = "alert") -> list[str]:
        """Names of features at `state` or worse."""
        return [n for n, f in self.features.items() if _ORDER.index(f.state) >= _ORDER.index(state)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "evaluated_at_ms": self.evaluated_at_ms,
            "window": {"start_ms": self.window_start_ms, "end_ms": self.window_end_ms, "rows": self.rows,
                       "windows": self.windows},
            "state": self.state,
            "features": {n: {"state": f.state, "measures": {k: _json_float(v) for k, v in f.measures.items()},
                             "states": f.states, "current": {k: _json_float(v) for k, v in f.current.items()},
                             "reference": {k: _json_float(v) for k, v in f.reference.items()}}
                         for n, f in self.features.items()},
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _describe(s: FeatureSummary) -> dict[str, float]:
    total = s.count + s.missing
    return {"count": float(s.count), "missing_fraction": s.missing / total if total else math.nan,
            "mean": s.mean if s.count else math.nan, "std": s.std,
            "min": s.min if s.count else math.nan, "max": s.max if s.count else math.nan}


def _evaluate_feature(model: str, name: str, reference: FeatureSummary | None, current: FeatureSummary,
                      config: EvaluationConfig) -> FeatureReport:
    report = FeatureReport(name=name, state="no_reference", current=_describe(current))
    if reference is None or reference.count == 0:
        return report
    report.reference = _describe(reference)
    if current.count < config.min_rows:
        report.state = "insufficient_data"
        return report
    if reference.frequencies is not None and current.frequencies is not None:
        report.measures = categorical_measures(reference, current)
    else:
        report.measures = numeric_measures(reference, current, config.psi_bins)
    for measure, value in report.measures.items():
        threshold = config.thresholds.lookup(model, name, measure)
        if threshold is not None:
            report.states[measure] = threshold.state(value)
    report.state = worst(list(report.states.values()))
    return report


def evaluate(current: WindowSummary, reference: WindowSummary | None, config: EvaluationConfig,
             now_ms: int | None = None) -> DriftReport:
    """Compare every feature of `current` with `reference`; features are named by the reference."""
    features: dict[str, FeatureReport] = {}
    keys: set[FeatureKey] = set(current.features)
    for key in sorted(keys):
        name = reference.name_of(key) if reference is not None else current.name_of(key)
        ref = reference.features.get(key) if reference is not None else None
        features[name] = _evaluate_feature(current.model, name, ref, current.features[key], config)
    return DriftReport(
        model=current.model, evaluated_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
        window_start_ms=current.start_ms, window_end_ms=current.end_ms, rows=current.rows,
        windows=current.windows, state=worst([f.state for f in features.values()]), features=features)
