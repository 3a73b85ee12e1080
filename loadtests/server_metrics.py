"""The server's own view of a load step: Prometheus histograms scraped before and after it.

Reads `tessera_batch_size`, `tessera_queue_duration_seconds`, `tessera_compute_duration_seconds` and
`tessera_request_duration_seconds` for the models under load (summed), takes the difference of two
scrapes, and estimates quantiles the way PromQL's histogram_quantile does (linear inside a bucket).
Also the autoscaling signals: the `tessera_pending_requests` gauge summed over every model of the
pod, and its mean over the window by Little's law (requests/s x mean time in the server).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .spec import Target
from .transports import http_get

__all__ = ["BucketCounts", "ServerView", "scrape", "server_view"]

BATCH = "tessera_batch_size"
QUEUE = "tessera_queue_duration_seconds"
COMPUTE = "tessera_compute_duration_seconds"
REQUEST = "tessera_request_duration_seconds"
PENDING = "tessera_pending_requests"
_WANTED = (BATCH, QUEUE, COMPUTE, REQUEST)


@dataclass(frozen=True, slots=True)
class BucketCounts:
    """A cumulative histogram: upper bounds ascending (the last is +Inf), counts, and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def minus(self, earlier: BucketCounts | None) -> BucketCounts:
        if earlier is None or earlier.bounds != self.bounds:
            return self
        return BucketCounts(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.total - earlier.total,
        )

    def quantile(self, q: float) -> float:
        """histogram_quantile(q): NaN when empty; the last finite bound when it falls in +Inf."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                width = cumulative - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
            lower_bound, lower_count = bound, cumulative
        return lower_bound


@dataclass(frozen=True, slots=True)
class ServerView:
    """Server-side figures over one window; durations in ms, NaN where nothing was observed."""

    batches: float
    batch_mean: float
    batch_p99: float
    queue_p50_ms: float
    queue_p99_ms: float
    compute_p50_ms: float
    compute_p99_ms: float
    request_p99_ms: float
    pending_mean: float = math.nan
    """Requests waiting or executing in the server, mean over the window (Little's law: completions/s
    x mean request duration), for the models under load."""
    pending_gauge: float = math.nan
    """`tessera_pending_requests` summed over every model at the end of the window (one sample)."""


@dataclass(frozen=True, slots=True)
class Scrape:
    histograms: dict[str, BucketCounts]
    pending: float = math.nan
    """The pending gauge summed over all models and versions (NaN when the server has none)."""
    at_s: float = field(default_factory=time.monotonic)


def scrape(url: str, target: Target, models: Collection[str] | None, timeout_s: float = 2.0) -> Scrape | None:
    """`models`' histograms (None: every model's), summed, and the pending gauge summed over every
    model of the pod, from one GET of `url` (the target's TLS and, on its host, its headers); None
    when unreachable."""
    try:
        text = http_get(url, target, timeout_s).decode()
    except (OSError, ValueError):
        return None
    return parse(text, models)


def parse(text: str, models: Collection[str] | None) -> Scrape:
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    pending = math.nan
    for family in text_string_to_metric_families(text):
        if family.name == PENDING:
            pending = sum(sample.value for sample in family.samples)
            continue
        if family.name not in _WANTED:
            continue
        for sample in family.samples:
            if models is not None and sample.labels.get("model") not in models:
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                per = buckets.setdefault(family.name, {})
                per[bound] = per.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                sums[family.name] = sums.get(family.name, 0.0) + sample.value
    histograms = {
        name: BucketCounts(tuple(sorted(per)), tuple(per[b] for b in sorted(per)), sums.get(name, 0.0))
        for name, per in buckets.items()
    }
    return Scrape(histograms, pending)


def server_view(before: Scrape | None, after: Scrape | None) -> ServerView | None:
    """The difference of two scrapes as a ServerView; None when either scrape failed."""
    if before is None or after is None or not after.histograms:
        return None

    def window(name: str) -> BucketCounts | None:
        counts = after.histograms.get(name)
        return counts.minus(before.histograms.get(name)) if counts is not None else None

    def ms(name: str, q: float) -> float:
        counts = window(name)
        return counts.quantile(q) * 1000.0 if counts is not None else math.nan

    batch = window(BATCH)
    batches = batch.count if batch is not None else 0.0
    request = window(REQUEST)
    elapsed = after.at_s - before.at_s
    # Little's law: time-averaged requests in the system = sum of their durations / window length.
    pending_mean = request.total / elapsed if request is not None and request.count and elapsed > 0 else math.nan
    return ServerView(
        batches=batches,
        batch_mean=batch.total / batches if batch is not None and batches else math.nan,
        batch_p99=batch.quantile(0.99) if batch is not None else math.nan,
        queue_p50_ms=ms(QUEUE, 0.5),
        queue_p99_ms=ms(QUEUE, 0.99),
        compute_p50_ms=ms(COMPUTE, 0.5),
        compute_p99_ms=ms(COMPUTE, 0.99),
        request_p99_ms=ms(REQUEST, 0.99),
        pending_mean=pending_mean,
        pending_gauge=after.pending,
    )
