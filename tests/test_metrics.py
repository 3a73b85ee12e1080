"""The request path's tallies reach Prometheus as direct observations would (server/metrics.py)."""

from __future__ import annotations

import gc
import random
import weakref

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from server.errors import Overloaded
from server.metrics import _BATCH_BUCKETS, _LATENCY_BUCKETS, Metrics, flush_before_collection, flush_tallies

LABELS = {"model": "m", "version": "1"}


def _samples(registry: CollectorRegistry, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() if metric.name == family
            for s in metric.samples if not s.name.endswith("_created")}


def test_tallied_figures_expose_what_direct_observations_would():
    metrics = Metrics()
    reference = CollectorRegistry()
    direct = {
        "tessera_request_duration_seconds": Histogram("tessera_request_duration_seconds", "", ("model", "version"),
                                                      buckets=_LATENCY_BUCKETS, registry=reference),
        "tessera_queue_duration_seconds": Histogram("tessera_queue_duration_seconds", "", ("model", "version"),
                                                    buckets=_LATENCY_BUCKETS, registry=reference),
        "tessera_compute_duration_seconds": Histogram("tessera_compute_duration_seconds", "", ("model", "version"),
                                                      buckets=_LATENCY_BUCKETS, registry=reference),
        "tessera_batch_size": Histogram("tessera_batch_size", "", ("model", "version"), buckets=_BATCH_BUCKETS,
                                        registry=reference),
    }
    counters = {name: Counter(name, "", ("model", "version"), registry=reference)
                for name in ("tessera_request_success", "tessera_execution_count", "tessera_inference_count")}
    version = metrics.for_version(("m", "1"))
    rng = random.Random(7)
    # Values on bucket bounds too: a bound belongs to its own bucket (le), as prometheus-client places it.
    latencies = [*_LATENCY_BUCKETS, 0.0, 20.0, *(rng.random() * 0.02 for _ in range(500))]
    for index, seconds in enumerate(latencies):
        version.record_success(round(seconds * 1e9))
        direct["tessera_request_duration_seconds"].labels("m", "1").observe(round(seconds * 1e9) / 1e9)
        counters["tessera_request_success"].labels("m", "1").inc()
        version.record_queue(round(seconds * 1e9) // 3)
        direct["tessera_queue_duration_seconds"].labels("m", "1").observe(round(seconds * 1e9) // 3 / 1e9)
        if index % 4 == 0:
            rows = rng.choice((1, 2, 3, 64, 1024, 5000))
            version.record_batch(rows, round(seconds * 1e9))
            direct["tessera_batch_size"].labels("m", "1").observe(rows)
            direct["tessera_compute_duration_seconds"].labels("m", "1").observe(round(seconds * 1e9) / 1e9)
            counters["tessera_execution_count"].labels("m", "1").inc()
            counters["tessera_inference_count"].labels("m", "1").inc(rows)
        if index in (10, 300):  # flushes in between move only what is new
            metrics.flush()
    for family in (*direct, *counters):
        got, want = _samples(metrics.registry, family), _samples(reference, family)
        assert want and got.keys() == want.keys(), family
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), (key, got[key], value)


def test_a_scrape_and_a_registry_read_see_every_request_so_far():
    metrics = Metrics()
    version = metrics.for_version(("m", "1"))
    for _ in range(3):
        version.record_success(1_000_000)
    assert metrics.registry.get_sample_value("tessera_request_success_total", LABELS) == 3
    version.record_success(1_000_000)
    assert b'tessera_request_success_total{model="m",version="1"} 4.0' in metrics.render()
    assert metrics.registry.get_sample_value("tessera_request_duration_seconds_count", LABELS) == 4


def test_failures_count_by_reason_at_once():
    metrics = Metrics()
    metrics.for_version(("m", "1")).record_failure(Overloaded("queue full"))
    assert b'reason="overloaded"' in generate_latest(metrics.registry)


def test_a_part_tallies_of_its_own_reach_its_counter_at_collection_and_on_flush():
    registry = CollectorRegistry()
    tally = {"n": 0}
    flushed: list[int] = []

    def flush() -> None:
        if tally["n"] != sum(flushed):
            flushed.append(tally["n"] - sum(flushed))
            counter.inc(flushed[-1])

    flush_before_collection(registry, flush)  # before the counter: collected first
    counter = Counter("part_events", "", registry=registry)
    tally["n"] = 3
    assert registry.get_sample_value("part_events_total") == 3
    tally["n"] = 5
    flush_tallies(registry)  # what a multiprocess render and the timer call
    assert flushed == [3, 2]
    assert registry.get_sample_value("part_events_total") == 5


def test_a_dropped_registry_is_freed_with_what_its_flushes_reach():
    metrics = Metrics()
    gone = weakref.ref(metrics.registry)
    del metrics
    gc.collect()
    assert gone() is None
