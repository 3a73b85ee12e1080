"""Evidence gathered during one rollout step: per-arm requests, errors and latency, and shadow comparisons.

Recorded on the event loop after each request (a few integer updates and one array store);
latency samples live in fixed-size rings, so memory stays bounded however long a step runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tensors import Tensor

__all__ = ["ArmEvidence", "ComparisonEvidence", "StepEvidence", "compare_outputs"]

_RING = 8192


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
        self.pairs += 1
        self.agreeing += int(agree)
        self.max_abs_diff = max(self.max_abs_diff, abs_diff)
        self.max_rel_diff = max(self.max_rel_diff, rel_diff)


@dataclass(slots=True)
class StepEvidence:
    stable: ArmEvidence = field(default_factory=ArmEvidence)
    candidate: ArmEvidence = field(default_factory=ArmEvidence)
    shadow: ComparisonEvidence = field(default_factory=ComparisonEvidence)


def _is_classifier(array: Tensor) -> bool:
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def compare_outputs(stable: dict[str, Tensor], candidate: dict[str, Tensor], max_abs_diff: float
                    ) -> tuple[bool, float, float]:
    """(agree, max |a-b|, max |a-b|/|a|) over every output the two share.

    Classifier-shaped outputs (float [rows, classes]) agree when their argmax agrees; other outputs
    agree when within max_abs_diff. Shape or dtype mismatches disagree.
    """
    agree, worst_abs, worst_rel = True, 0.0, 0.0
    for name, a in stable.items():
        b = candidate.get(name)
        if b is None or b.shape != a.shape:
            return False, float("inf"), float("inf")
        if a.dtype.kind not in "fiub":
            agree &= bool(np.array_equal(a, b))
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        abs_diff = float(diff.max()) if diff.size else 0.0
        rel = diff / np.maximum(np.abs(a.astype(np.float64)), 1e-12)
        worst_abs = max(worst_abs, abs_diff)
        worst_rel = max(worst_rel, float(rel.max()) if rel.size else 0.0)
        if _is_classifier(a):
            agree &= bool(np.array_equal(a.argmax(axis=1), b.argmax(axis=1)))
        else:
            agree &= abs_diff <= max_abs_diff
    return agree, worst_abs, worst_rel
