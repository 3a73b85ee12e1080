"""Fleet evidence: each replica's snapshot is plain JSON, and merged snapshots judge like pooled evidence."""

from __future__ import annotations

import json

import numpy as np

from server.routing.evidence import StepEvidence
from server.routing.fleet_evidence import merge_snapshots, snapshot


def _replica(latencies_s: list[float], errors: int = 0, pairs: int = 0, agreeing: int = 0) -> StepEvidence:
    evidence = StepEvidence()
    for i, latency in enumerate(latencies_s):
        evidence.stable.record(True, latency)
        evidence.candidate.record(i >= errors, latency * 2)
    evidence.shadow.record_many(pairs, agreeing, 0.5, 0.1)
    return evidence


def test_merged_counts_add_up_and_extremes_are_kept():
    a = _replica([0.001] * 100, errors=3, pairs=10, agreeing=9)
    b = _replica([0.002] * 50, errors=1, pairs=30, agreeing=30)
    merged = merge_snapshots([json.loads(json.dumps(snapshot(e))) for e in (a, b)])  # through JSON, as Redis
    assert (merged.stable.requests, merged.candidate.requests, merged.candidate.errors) == (150, 150, 4)
    assert (merged.shadow.pairs, merged.shadow.agreeing) == (40, 39)
    assert merged.shadow.max_abs_diff == 0.5


def test_merged_p99_follows_the_pooled_latencies_within_a_bucket():
    rng = np.random.default_rng(3)
    fast, slow = rng.lognormal(-7, 0.3, 3000), rng.lognormal(-5, 0.3, 200)
    merged = merge_snapshots([snapshot(_replica(list(fast))), snapshot(_replica(list(slow)))])
    pooled = float(np.percentile(np.concatenate([fast, slow]), 99))
    assert pooled <= merged.stable.p99_s() <= pooled * 1.25  # buckets are ~10% wide, read at the upper edge


def test_a_replica_without_traffic_adds_nothing():
    merged = merge_snapshots([snapshot(StepEvidence()), snapshot(_replica([0.001] * 5))])
    assert merged.stable.requests == 5 and merged.stable.p99_s() > 0
    assert merge_snapshots([]).stable.requests == 0
