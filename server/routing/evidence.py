"""Evidence gathered during one rollout step: per-arm requests, errors and latency, and shadow comparisons.

Recorded on the event loop after each request (a few integer updates and one array store);
latency samples live in fixed-size rings, so memory stays bounded however long a step runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tensors import Tensor

__all__ = ["RING", "ArmEvidence", "ComparisonEvidence", "StepEvidence", "compare_outputs", "compare_rows"]

_RING = 8192
RING = _RING


@dataclass(slots=True)
class ArmEvidence:
    """Requests served by one arm (stable or candidate) in the current step."""

    requests: int = 0
    errors: int = 0
    _latency_s: np.ndarray[Any, np.dtype[np.float64]] = field(default_factory=lambda: np.zeros(_RING))

    def record(self, ok: bool, latency_s: float) -> None:
        self._latency_s[self.requests % _RING] = latency_s
        self.requests += 1
        if not ok:
            self.errors += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_samples(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The latencies held (the last RING requests'), seconds, a copy."""
        return self._latency_s[:min(self.requests, _RING)].copy()

    @classmethod
    def from_samples(cls, requests: int, errors: int, latency_s: np.ndarray[Any, np.dtype[np.float64]]
                     ) -> ArmEvidence:
        """An arm standing for merged evidence: its counts, and latencies that represent its distribution
        (at most RING of them, placed where p99_s reads them)."""
        ring = np.zeros(_RING)
        n = min(requests, _RING, len(latency_s))
        ring[:n] = latency_s[:n]
        return cls(requests=requests, errors=errors, _latency_s=ring)

    def p99_s(self) -> float:
        n = min(self.requests, _RING)
        return float(np.percentile(self._latency_s[:n], 99)) if n else 0.0


@dataclass(slots=True)
class ComparisonEvidence:
    """Pairs of (stable answer, candidate answer to the same input) compared off the request path."""

    pairs: int = 0
    agreeing: int = 0
    candidate_errors: int = 0
    dropped: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    candidate: ArmEvidence = field(default_factory=ArmEvidence)

    @property
    def agreement(self) -> float:
        return self.agreeing / self.pairs if self.pairs else 1.0

    def record(self, agree: bool, abs_diff: float, rel_diff: float) -> None:
        self.record_many(1, int(agree), abs_diff, rel_diff)

    def record_many(self, pairs: int, agreeing: int, abs_diff: float, rel_diff: float) -> None:
        """Record `pairs` comparisons at once, `agreeing` of them in agreement."""
        self.pairs += pairs
        self.agreeing += agreeing
        self.max_abs_diff = max(self.max_abs_diff, abs_diff)
        self.max_rel_diff = max(self.max_rel_diff, rel_diff)


@dataclass(slots=True)
class StepEvidence:
    stable: ArmEvidence = field(default_factory=ArmEvidence)
    candidate: ArmEvidence = field(default_factory=ArmEvidence)
    shadow: ComparisonEvidence = field(default_factory=ComparisonEvidence)


def _is_classifier(array: Tensor) -> bool:
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def _by_row(array: Tensor) -> Tensor:
    """[rows, everything else]; a scalar is one row."""
    return array.reshape(array.shape[0] if array.ndim else 1, -1)


def compare_rows(stable: dict[str, Tensor], candidate: dict[str, Tensor], max_abs_diff: float
                 ) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], float, float]:
    """(agreement of each row, max |a-b|, max |a-b|/|a|) over every output the two share.

    A row of classifier-shaped outputs (float [rows, classes]) agrees when its argmax agrees; rows of
    other numeric outputs when within max_abs_diff; other types when equal. Missing outputs and shape
    mismatches disagree everywhere. One pass of array operations however many rows: the shadow
    mirror compares a whole batch of copies at once.
    """
    rows = _by_row(next(iter(stable.values()))).shape[0] if stable else 0
    agree = np.ones(rows, dtype=np.bool_)
    worst_abs, worst_rel = 0.0, 0.0
    for name, a in stable.items():
        b = candidate.get(name)
        if b is None or b.shape != a.shape or _by_row(a).shape[0] != rows:
            return np.zeros(rows, dtype=np.bool_), float("inf"), float("inf")
        if a.dtype.kind not in "fiub":
            agree &= (_by_row(a) == _by_row(b)).all(axis=1)
            continue
        wide = a.astype(np.float64)
        diff = _by_row(np.abs(wide - b.astype(np.float64)))
        if diff.size == 0:
            continue
        row_abs = diff.max(axis=1)
        worst_abs = max(worst_abs, float(row_abs.max()))
        worst_rel = max(worst_rel, float((diff / np.maximum(_by_row(np.abs(wide)), 1e-12)).max()))
        if _is_classifier(a):
            agree &= a.argmax(axis=1) == b.argmax(axis=1)
        else:
            agree &= row_abs <= max_abs_diff
    return agree, worst_abs, worst_rel


def compare_outputs(stable: dict[str, Tensor], candidate: dict[str, Tensor], max_abs_diff: float
                    ) -> tuple[bool, float, float]:
    """(agree, max |a-b|, max |a-b|/|a|) for one request's outputs: every row must agree."""
    agree, worst_abs, worst_rel = compare_rows(stable, candidate, max_abs_diff)
    return bool(agree.all()), worst_abs, worst_rel
