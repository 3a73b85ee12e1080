"""Histograms merged from several processes equal the histogram of all samples in one place."""

from __future__ import annotations

import random

from loadtests import histograms


def test_merge_of_encoded_histograms_is_exact() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-6.0, 1.5) for _ in range(30_000)]  # seconds, ~2.5 ms median, long tail
    parts = [histograms.new_histogram() for _ in range(3)]
    whole = histograms.new_histogram()
    for i, seconds in enumerate(values):
        histograms.record_us(parts[i % 3], seconds)
        histograms.record_us(whole, seconds)

    merged = histograms.merge_encoded(histograms.encode(h) for h in parts)

    assert merged.get_total_count() == whole.get_total_count() == len(values)
    assert list(merged.counts) == list(whole.counts)
    assert histograms.summarize(merged) == histograms.summarize(whole)
    assert histograms.encode(merged) == histograms.encode(whole)


def test_out_of_range_values_are_clamped_not_lost() -> None:
    h = histograms.new_histogram()
    histograms.record_us(h, 0.0)
    histograms.record_us(h, 10_000.0)  # beyond the 1 h ceiling
    assert h.get_total_count() == 2
    assert histograms.summarize(h).max_ms >= 3_599_000


def test_empty_histogram_summarizes_to_zeros() -> None:
    assert histograms.summarize(histograms.new_histogram()).count == 0
