"""HDR latency histograms: one shape for every generator process, merged exactly via encode/decode.

Values are integer microseconds from 1 us to 1 h at 3 significant digits, so a merge of the
per-process histograms equals the histogram of all samples recorded in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

__all__ = ["LatencySummary", "decode", "encode", "merge_encoded", "new_histogram", "record_us", "summarize"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    """An empty histogram of the one shape every process uses (microseconds)."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_us(histogram: HdrHistogram, seconds: float) -> None:
    """Record a duration given in seconds, clamped into the trackable range."""
    value = int(seconds * 1e6 + 0.5)
    histogram.record_value(min(max(value, LOWEST_US), HIGHEST_US))


def encode(histogram: HdrHistogram) -> bytes:
    """Compressed, base64 HdrHistogram V2 encoding: small enough for a process queue."""
    return bytes(histogram.encode())


def decode(payload: bytes) -> HdrHistogram:
    return HdrHistogram.decode(payload)


def merge_encoded(payloads: Iterable[bytes]) -> HdrHistogram:
    """Bucket-by-bucket sum of the encoded histograms: exact, not an approximation."""
    merged = new_histogram()
    for payload in payloads:
        merged.add(decode(payload))
    return merged


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of one histogram, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def summarize(histogram: HdrHistogram) -> LatencySummary:
    """Percentiles in ms; all zero for an empty histogram."""
    count = int(histogram.get_total_count())
    if count == 0:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def at(percentile: float) -> float:
        return float(histogram.get_value_at_percentile(percentile)) / 1000.0

    return LatencySummary(
        count=count,
        mean_ms=float(histogram.get_mean_value()) / 1000.0,
        p50_ms=at(50.0),
        p90_ms=at(90.0),
        p95_ms=at(95.0),
        p99_ms=at(99.0),
        p999_ms=at(99.9),
        max_ms=float(histogram.get_max_value()) / 1000.0,
    )
