"""One replica's step evidence as plain JSON, and the fleet's evidence merged from every replica's.

A replica publishes its cumulative counts for the step it is in, and its latencies as counts over fixed
logarithmic buckets (10 us .. 100 s, 10% apart), so snapshots from any number of replicas add up; the
merged arm's latencies are the merged histogram's quantiles, read where `ArmEvidence.p99_s` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .evidence import RING, ArmEvidence, ComparisonEvidence, StepEvidence
from .state import RolloutState

__all__ = ["LATENCY_EDGES_S", "merge_snapshots", "snapshot", "step_key"]

LATENCY_EDGES_S = np.geomspace(1e-5, 100.0, 170)
"""Upper edges of the latency buckets, seconds (about 10% apart); slower requests count in the last."""


def step_key(state: RolloutState) -> str:
    """Names one step of one rollout the same way on every replica (and again after a Redis restart)."""
    return (f"{state.candidate_version}:{state.phase.value}:{state.step}:{state.failed_checks}:"
            f"{state.step_started_at:.3f}")


def _arm(arm: ArmEvidence) -> dict[str, Any]:
    samples = arm.latency_samples()
    buckets = np.minimum(np.searchsorted(LATENCY_EDGES_S, samples), len(LATENCY_EDGES_S) - 1)
    index, counts = np.unique(buckets, return_counts=True)
    return {"requests": arm.requests, "errors": arm.errors,
            "latency": {str(int(i)): int(c) for i, c in zip(index, counts, strict=True)}}


def snapshot(evidence: StepEvidence) -> dict[str, Any]:
    """This replica's evidence for the step, as JSON-ready counts."""
    shadow = evidence.shadow
    return {
        "stable": _arm(evidence.stable), "candidate": _arm(evidence.candidate),
        "shadow": {"pairs": shadow.pairs, "agreeing": shadow.agreeing, "candidate_errors": shadow.candidate_errors,
                   "dropped": shadow.dropped, "max_abs_diff": shadow.max_abs_diff,
                   "max_rel_diff": shadow.max_rel_diff, "candidate": _arm(shadow.candidate)},
    }


def _merge_arms(arms: list[dict[str, Any]]) -> ArmEvidence:
    requests = sum(int(a["requests"]) for a in arms)
    errors = sum(int(a["errors"]) for a in arms)
    counts = np.zeros(len(LATENCY_EDGES_S), dtype=np.int64)
    for arm in arms:
        for index, count in arm["latency"].items():
            counts[int(index)] += int(count)
    total = int(counts.sum())
    n = min(requests, RING, total)
    if n == 0:
        return ArmEvidence.from_samples(requests, errors, np.zeros(0))
    # n evenly spaced quantiles of the merged histogram, each at its bucket's upper edge (conservative).
    ranks = (np.arange(n) + 0.5) * total / n
    samples = LATENCY_EDGES_S[np.searchsorted(np.cumsum(counts), ranks)]
    return ArmEvidence.from_samples(requests, errors, samples.astype(np.float64))


def merge_snapshots(snapshots: list[dict[str, Any]]) -> StepEvidence:
    """The fleet's evidence for a step: counts added, extremes taken, latencies merged."""
    shadows = [s["shadow"] for s in snapshots]
    shadow = ComparisonEvidence(
        pairs=sum(int(s["pairs"]) for s in shadows), agreeing=sum(int(s["agreeing"]) for s in shadows),
        candidate_errors=sum(int(s["candidate_errors"]) for s in shadows),
        dropped=sum(int(s["dropped"]) for s in shadows),
        max_abs_diff=max((float(s["max_abs_diff"]) for s in shadows), default=0.0),
        max_rel_diff=max((float(s["max_rel_diff"]) for s in shadows), default=0.0),
        candidate=_merge_arms([s["candidate"] for s in shadows]),
    )
    return StepEvidence(stable=_merge_arms([s["stable"] for s in snapshots]),
                        candidate=_merge_arms([s["candidate"] for s in snapshots]), shadow=shadow)
