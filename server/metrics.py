"""Every Prometheus metric Tessera exports, defined once on an explicit registry.

Labels are `model` and `version` only (plus `reason` on failures, a small fixed set), so
cardinality stays bounded. Histograms, unlike Triton's counters, aggregate across replicas.

Under `--workers N` the workers share one scrape: prometheus-client's multiprocess mode (each process
writes its values to memory-mapped files in one directory; `render` merges them on every scrape), so
any worker's `/metrics` shows the process group, counters summed, gauges by their `multiprocess_mode`.

The per-request and per-batch families are tallied in plain numbers on the request path and moved into
their Prometheus children by `Metrics.flush` (see `VersionMetrics`).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mypy_extensions import mypyc_attr
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from .errors import TesseraError

__all__ = ["CONTENT_TYPE_LATEST", "Labels", "Metrics", "VersionMetrics", "add_new_counts", "flush_before_collection",
           "flush_tallies", "mark_worker_dead", "prepare_multiprocess_dir"]

Labels = tuple[str, str]

# Seconds, from 100 us to 10 s: covers a tiny MLP on CPU up to a large batch on a slow model.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 rows


# The registry holds its flush collectors; this holds only weak references to them, so a registry (and
# whatever its flushes reach) goes when its owner drops it.
_flushers: weakref.WeakKeyDictionary[CollectorRegistry, list[weakref.ref[_FlushFirst]]] = \
    weakref.WeakKeyDictionary()


def flush_before_collection(registry: CollectorRegistry, flush: Callable[[], None]) -> None:
    """Have `flush` move a part's tallies (plain numbers its hot path adds to) into its metrics at the start
    of every collection of `registry` (a scrape, a test's get_sample_value) and at every `flush_tallies`.
    Call it before registering the metrics it feeds: a registry collects in registration order."""
    collector = _FlushFirst(flush)
    registry.register(collector)
    _flushers.setdefault(registry, []).append(weakref.ref(collector))


def flush_tallies(registry: CollectorRegistry) -> None:
    """Run every flush registered on `registry` (before a multiprocess render, and on a timer)."""
    for ref in _flushers.get(registry, ()):
        collector = ref()
        if collector is not None:
            collector.collect()


def add_new_counts(counter: Counter, counts: Mapping[str, int], reported: dict[str, int]) -> None:
    """Add to each label's child of `counter` what its running count in `counts` (a tally kept in plain ints)
    gained since `reported`, and note the counts now reported."""
    for label, count in dict(counts).items():  # a copy: the tally's owner may add a label meanwhile
        delta = count - reported.get(label, 0)
        if delta > 0:
            counter.labels(label).inc(delta)
            reported[label] = count


class Metrics:
    """The metric families; one instance per App, each test gets a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        self._versions: dict[Labels, VersionMetrics] = {}
        self._flushing = threading.Lock()
        r = self.registry
        flush_before_collection(r, self._flush_versions)
        mv = ("model", "version")
        self.request_success = Counter("tessera_request_success", "Successful inference requests.", mv,
                                       registry=r)
        self.request_failure = Counter("tessera_request_failure", "Failed inference requests by reason.",
                                       (*mv, "reason"), registry=r)
        self.inference_count = Counter("tessera_inference_count", "Rows inferred (a batch of N counts N).",
                                       mv, registry=r)
        self.execution_count = Counter("tessera_execution_count", "Model executions (batches run).", mv,
                                       registry=r)
        # multiprocess_mode says how `--workers N` processes' values combine (ignored in one process).
        self.pending_requests = Gauge("tessera_pending_requests", "Requests queued or executing.", mv,
                                      registry=r, multiprocess_mode="livesum")
        self.request_duration = Histogram("tessera_request_duration_seconds",
                                          "End-to-end inference latency inside the server.", mv,
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram("tessera_queue_duration_seconds",
                                        "Time a request waited in the batcher's queue.", mv,
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_duration = Histogram("tessera_compute_duration_seconds",
                                          "Model execution time per batch.", mv,
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tessera_batch_size", "Rows in each batch executed.", mv,
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.model_state = Gauge("tessera_model_ready", "1 when the model version is READY.", mv,
                                 registry=r, multiprocess_mode="livemin")
        self.warmup_runs = Counter("tessera_model_warmup_runs", "Warmup runs before a version took traffic.",
                                   mv, registry=r)
        self.model_load_failures = Counter("tessera_model_load_failures", "Failed model version loads.",
                                           ("model",), registry=r)

        self.rollout_weight = Gauge("tessera_rollout_weight", "Canary traffic share of a candidate, percent.",
                                    mv, registry=r, multiprocess_mode="livemax")
        self.shadow_agreement = Gauge("tessera_shadow_agreement",
                                      "Share of shadow pairs whose outputs agree, current step.", mv, registry=r,
                                      multiprocess_mode="livemin")
        self.shadow_compared = Counter("tessera_shadow_compared", "Shadow pairs compared.", mv, registry=r)
        self.shadow_dropped = Counter("tessera_shadow_dropped", "Shadow copies dropped: candidate behind.", mv,
                                      registry=r)
        self.rollout_analysis = Counter("tessera_rollout_analysis", "Rollout step analyses by outcome.",
                                        (*mv, "outcome"), registry=r)

        self.grpc_limits_crossed = Counter("tessera_grpc_limits_crossed", "Times a peer crossed a limit of "
                                           "Tessera's gRPC transport (answered with a connection or stream "
                                           "error, or a closed connection), by limit.", ("limit",), registry=r)
        self.grpc_connections = Gauge("tessera_grpc_connections", "Open connections of Tessera's gRPC transport.",
                                      registry=r, multiprocess_mode="livesum")
        self._grpc_reported: dict[str, int] = {}

    def for_version(self, labels: Labels) -> VersionMetrics:
        """The label children of one model version, looked up once (labels() takes a lock each call)."""
        found = self._versions.get(labels)
        if found is None:
            found = self._versions[labels] = VersionMetrics(self, labels)
        return found

    def report_grpc_transport(self, crossed: Mapping[str, int], connections: int) -> None:
        """Export the gRPC transport's own tallies (plain ints on its paths, which must stay cheap
        under attack); called about once a second, so what a scrape shows lags by at most that."""
        add_new_counts(self.grpc_limits_crossed, crossed, self._grpc_reported)
        self.grpc_connections.set(connections)

    def flush(self) -> None:
        """Move what hot paths tallied since the last flush into their Prometheus children: these families'
        and every other part's on this registry (from any thread: the tallies are only read here)."""
        flush_tallies(self.registry)

    def _flush_versions(self) -> None:
        with self._flushing:
            for version in list(self._versions.values()):
                version.flush()

    async def flush_every(self, interval_s: float) -> None:
        """Flush on a timer: under `--workers N` a scrape served by a sibling worker reads this process's
        values from the shared files, so they lag by at most `interval_s`."""
        while True:
            await asyncio.sleep(interval_s)
            self.flush()

    def render(self) -> bytes:
        """The exposition; under `--workers N`, of every worker of the process group (see module doc)."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)  # collecting the registry flushes the tallies first
        self.flush()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def prepare_multiprocess_dir(existing: str | None) -> tuple[Path, bool]:
    """The directory `--workers N` processes share their metric values in: `existing` (the
    PROMETHEUS_MULTIPROC_DIR the operator set), emptied, or a new temporary one. Call before spawning
    the workers, with PROMETHEUS_MULTIPROC_DIR set to the result in their environment.
    Returns (directory, whether it was created here and is to be removed at exit)."""
    if existing:
        directory = Path(existing)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # a previous run's values would add to this one's
            stale.unlink()
        return directory, False
    return Path(tempfile.mkdtemp(prefix="tessera-metrics-")), True


def mark_worker_dead(directory: Path, pid: int) -> None:
    """Drop a finished worker's live gauges (its counters and histograms keep counting in the sum)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


@mypyc_attr(native_class=False)  # the registry's weak references need a plain class
class _FlushFirst:
    """A collector with no metrics of its own: collecting it runs a flush."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> Iterable[Any]:
        return ()  # no names; and registering it runs no flush (the registry would otherwise collect it)

    def collect(self) -> Iterable[Any]:
        self._flush()
        return ()


class _HistogramTally:
    """Observations of one histogram child since start, as plain numbers: bucket counts (not cumulative;
    +Inf last) and their sum. Only the event loop's thread writes them."""

    __slots__ = ("_bounds", "_child", "_flushed", "_flushed_sum", "counts", "sum")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self._bounds)
        self.sum = 0.0
        self._flushed = [0] * len(self._bounds)
        self._flushed_sum = 0.0

    def observe(self, value: float) -> None:
        # The bucket prometheus-client picks: the first upper bound >= value.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def flush(self) -> None:
        counts, total = self.counts[:], self.sum
        # prometheus-client's Histogram child keeps one value per bucket and one for the sum (`_buckets`,
        # `_sum`: in-process or multiprocess values, both with `inc`); `observe` would add one observation
        # at a time. tests/test_metrics.py checks that a flush exposes what direct observations would.
        for index, (count, flushed) in enumerate(zip(counts, self._flushed, strict=True)):
            if count != flushed:
                self._child._buckets[index].inc(count - flushed)
        if total != self._flushed_sum:
            self._child._sum.inc(total - self._flushed_sum)
        self._flushed, self._flushed_sum = counts, total


class VersionMetrics:
    """One model version's per-request and per-batch figures.

    The request path adds to plain numbers here; `flush` moves what was added since the last flush into
    the version's Prometheus children (bound once, so no label lookups). A prometheus-client update takes
    a lock and a few calls each: the five to eleven of one request were 6-7% of a small request's CPU
    (BENCHMARKS.md, issue 13). Flushes run before every collection of the registry, before every render
    and, under `--workers N`, once a second. Failures, rare, go to their child directly.
    """

    def __init__(self, metrics: Metrics, labels: Labels) -> None:
        self._metrics, self._labels = metrics, labels
        self._success_child = metrics.request_success.labels(*labels)
        self._executions_child = metrics.execution_count.labels(*labels)
        self._inferences_child = metrics.inference_count.labels(*labels)
        self._duration = _HistogramTally(metrics.request_duration.labels(*labels), _LATENCY_BUCKETS)
        self._queue = _HistogramTally(metrics.queue_duration.labels(*labels), _LATENCY_BUCKETS)
        self._batch = _HistogramTally(metrics.batch_size.labels(*labels), _BATCH_BUCKETS)
        self._compute = _HistogramTally(metrics.compute_duration.labels(*labels), _LATENCY_BUCKETS)
        self._success = self._executions = self._inferences = 0
        self._flushed = (0, 0, 0)

    def record_success(self, elapsed_ns: int) -> None:
        self._success += 1
        self._duration.observe(elapsed_ns / 1e9)

    def record_failure(self, error: BaseException) -> None:
        reason = error.reason if isinstance(error, TesseraError) else "internal"
        self._metrics.request_failure.labels(*self._labels, reason).inc()

    def record_batch(self, rows: int, compute_ns: int) -> None:
        self._executions += 1
        self._inferences += rows
        self._batch.observe(rows)
        self._compute.observe(compute_ns / 1e9)

    def record_queue(self, queue_ns: int) -> None:
        self._queue.observe(queue_ns / 1e9)

    def flush(self) -> None:
        """(Metrics' flush, under its lock.)"""
        counts = (self._success, self._executions, self._inferences)
        for child, count, flushed in zip((self._success_child, self._executions_child, self._inferences_child),
                                         counts, self._flushed, strict=True):
            if count != flushed:
                child.inc(count - flushed)
        self._flushed = counts
        for tally in (self._duration, self._queue, self._batch, self._compute):
            tally.flush()
