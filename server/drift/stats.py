"""Mergeable per-feature statistics: count, missing, moments, min/max, KLL sketch, frequencies.

A `FeatureSummary` folds 1-D arrays of one feature; a `WindowSummary` holds the summaries of one
model over one window. Both merge (across requests, windows and replicas) without raw data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from datasketches import kll_floats_sketch

__all__ = [
    "DEFAULT_MAX_CATEGORIES",
    "DEFAULT_SKETCH_K",
    "FeatureKey",
    "FeatureSummary",
    "WindowSummary",
    "feature_columns",
    "feature_name",
    "merge_windows",
]

DEFAULT_SKETCH_K = 200
"""KLL accuracy parameter: about 1.3% normalized rank error (single-sided, 99th percentile)."""

DEFAULT_MAX_CATEGORIES = 256
"""Distinct values an integer feature counts one by one; the rest go to `other`."""

FeatureKey = tuple[str, int]
"""(input name, column): column -1 is a whole-tensor summary."""

NUMERIC = "numeric"
CATEGORICAL = "categorical"


def feature_name(key: FeatureKey) -> str:
    """Default display name: `input[j]` for a column of a 2-D input, `input` for a whole tensor."""
    name, column = key
    return name if column < 0 else f"{name}[{column}]"


def _kind_of(dtype: np.dtype[Any]) -> str | None:
    if dtype.kind == "f":
        return NUMERIC
    if dtype.kind in "iub":
        return CATEGORICAL
    return None  # BYTES, complex, objects: not summarized


@dataclass(slots=True)
class FeatureSummary:
    """Statistics of one feature. `count` counts finite values; NaN, inf and nulls are `missing`.

    `m2` is the sum of squared deviations from `mean` (Chan et al.'s mergeable form), so the
    population variance is m2 / count. Categorical (integer, boolean) features also keep
    `frequencies` of up to `max_categories` distinct values, and `other` for the rest.
    """

    kind: str
    count: int = 0
    missing: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    sketch: kll_floats_sketch = field(default_factory=lambda: kll_floats_sketch(DEFAULT_SKETCH_K))
    frequencies: dict[int, int] | None = None
    other: int = 0
    max_categories: int = DEFAULT_MAX_CATEGORIES

    @classmethod
    def empty(cls, kind: str, sketch_k: int = DEFAULT_SKETCH_K,
              max_categories: int = DEFAULT_MAX_CATEGORIES) -> FeatureSummary:
        return cls(kind=kind, sketch=kll_floats_sketch(sketch_k),
                   frequencies={} if kind == CATEGORICAL else None, max_categories=max_categories)

    @property
    def variance(self) -> float:
        """Population variance (m2 / count); NaN when empty."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    def fold(self, values: npt.NDArray[Any], nulls: int = 0) -> None:
        """Fold a 1-D array of this feature's values in; `nulls` counts values already removed."""
        self.missing += nulls
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            good = int(np.count_nonzero(finite))
            if good < values.size:
                self.missing += values.size - good
                values = values[finite]
        if values.size == 0:
            return
        wide = values.astype(np.float64, copy=False)
        mean = float(wide.mean())
        m2 = float(np.square(wide - mean).sum())
        self._merge_moments(int(values.size), mean, m2, float(wide.min()), float(wide.max()))
        single = np.ascontiguousarray(values, dtype=np.float32)
        if not single.flags.writeable:  # the sketch's binding refuses read-only views (wire buffers)
            single = single.copy()
        self.sketch.update(single)
        if self.frequencies is not None:
            keys, counts = np.unique(values, return_counts=True)
            self._add_frequencies(zip(keys.tolist(), counts.tolist(), strict=True))

    def fold_finite(self, n: int, mean: float, m2: float, lo: float, hi: float,
                    values: npt.NDArray[np.float32]) -> None:
        """Fold n finite float values whose moments the caller computed; `values` feed the sketch."""
        self._merge_moments(n, mean, m2, lo, hi)
        self.sketch.update(values)

    def merge(self, other: FeatureSummary) -> None:
        """Merge another summary of the same feature into this one."""
        self.missing += other.missing
        if other.count:
            self._merge_moments(other.count, other.mean, other.m2, other.min, other.max)
            self.sketch.merge(other.sketch)
        if self.frequencies is not None and other.frequencies is not None:
            self._add_frequencies(sorted(other.frequencies.items()))
            self.other += other.other
        elif other.frequencies is None:
            self.frequencies = None  # a numeric view of the feature wins: kinds disagreed
            self.kind = NUMERIC

    def _merge_moments(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def _add_frequencies(self, items: Iterable[tuple[Any, Any]]) -> None:
        freq = self.frequencies
        assert freq is not None
        for key, count in items:
            value = int(key)
            if value in freq:
                freq[value] += int(count)
            elif len(freq) < self.max_categories:
                freq[value] = int(count)
            else:
                self.other += int(count)


def feature_columns(name: str, array: npt.NDArray[Any],
                    first_column: int = 0) -> Iterator[tuple[FeatureKey, npt.NDArray[Any]]]:
    """Split one input tensor into features: the columns of a [batch, F] array, else the whole tensor.

    `first_column` numbers the columns of a 2-D array that is a slice of a wider input's columns.
    """
    if _kind_of(array.dtype) is None:
        return
    if array.ndim == 2:
        # One transposed copy makes every column contiguous for the sketch.
        columns = np.ascontiguousarray(array.T)
        for j in range(columns.shape[0]):
            yield (name, first_column + j), columns[j]
    else:
        yield (name, -1), array.reshape(-1)


@dataclass(slots=True)
class WindowSummary:
    """The feature summaries of one model over one window (or a merge of many windows).

    `start_ms` is the start of the window's period (aligned to the window length, so replicas'
    windows line up), `end_ms` when it closed; both Unix epoch milliseconds. `rows` counts
    inference rows (first dimension), `windows` how many producer windows were merged in.
    `names` optionally maps features to display names (reference profiles carry them).
    """

    model: str
    window_id: str
    producer: str
    start_ms: int
    end_ms: int
    rows: int = 0
    windows: int = 1
    features: dict[FeatureKey, FeatureSummary] = field(default_factory=dict)
    names: dict[FeatureKey, str] = field(default_factory=dict)
    sketch_k: int = DEFAULT_SKETCH_K
    max_categories: int = DEFAULT_MAX_CATEGORIES

    def name_of(self, key: FeatureKey) -> str:
        return self.names.get(key) or feature_name(key)

    def fold_inputs(self, inputs: Mapping[str, npt.NDArray[Any]], rows: int) -> None:
        """Fold one request's (or a concatenation of requests') input tensors."""
        self.rows += rows
        for input_name, array in inputs.items():
            self.fold_array(input_name, array)

    def fold_array(self, input_name: str, array: npt.NDArray[Any], first_column: int = 0) -> None:
        """Fold one input tensor (rows are counted by the caller).

        A 2-D array may be a slice of an input's columns starting at `first_column`.
        """
        if array.ndim == 2 and array.dtype.kind == "f" and array.size:
            reduced = _ColumnReductions.of(array)
            if reduced is not None:
                self._fold_reduced(input_name, reduced, first_column, 0, array.shape[1])
                return
        for key, values in feature_columns(input_name, array, first_column):
            self.fold_feature(key, values)

    def fold_matrix_steps(self, input_name: str, matrix: npt.NDArray[Any], block_columns: int,
                          block_values: int) -> Iterator[None]:
        """fold_array of a 2-D input in steps, for a caller on an event loop; yields between steps.

        A step is either the column reductions (sums, min, max: one numpy pass each) over a group
        of at most `block_values` values, or the per-column work (moments merged, sketch updated)
        of at most `block_columns` columns; the reductions cost the same whether a group is 4 or
        256 columns wide, so a narrow step no longer pays them again.
        """
        rows, width = matrix.shape
        step = max(1, min(block_columns, block_values // max(rows, 1)))
        group = max(step, block_values // max(rows, 1) // step * step)
        for start in range(0, width, group):
            part = matrix[:, start:start + group]
            # NaN/inf (None from `of`) or integer columns take fold_array's per-column path below.
            reduced = _ColumnReductions.of(part) if part.dtype.kind == "f" and part.size else None
            yield
            for first in range(0, part.shape[1], step):
                if reduced is not None:
                    self._fold_reduced(input_name, reduced, start, first, min(first + step, part.shape[1]))
                else:
                    self.fold_array(input_name, part[:, first:first + step], first_column=start + first)
                yield

    def _fold_reduced(self, input_name: str, reduced: _ColumnReductions, offset: int, first: int, end: int) -> None:
        n = reduced.rows
        mean, m2, lo, hi, columns = reduced.mean, reduced.m2, reduced.lo, reduced.hi, reduced.columns
        for j in range(first, end):
            self._summary((input_name, offset + j), NUMERIC).fold_finite(
                n, float(mean[j]), float(m2[j]), float(lo[j]), float(hi[j]), columns[j])

    def fold_feature(self, key: FeatureKey, values: npt.NDArray[Any], nulls: int = 0) -> None:
        self._summary(key, _kind_of(values.dtype) or NUMERIC).fold(values, nulls)

    def _summary(self, key: FeatureKey, kind: str) -> FeatureSummary:
        summary = self.features.get(key)
        if summary is None:
            summary = FeatureSummary.empty(kind, self.sketch_k, self.max_categories)
            self.features[key] = summary
        return summary

    def merge(self, other: WindowSummary) -> None:
        """Merge another window of the same model in; the period widens to cover both."""
        self.rows += other.rows
        self.windows += other.windows
        self.start_ms = min(self.start_ms, other.start_ms)
        self.end_ms = max(self.end_ms, other.end_ms)
        for key, summary in other.features.items():
            mine = self.features.get(key)
            if mine is None:
                mine = FeatureSummary.empty(summary.kind, self.sketch_k, self.max_categories)
                self.features[key] = mine
            mine.merge(summary)
        for key, name in other.names.items():
            self.names.setdefault(key, name)


@dataclass(frozen=True, slots=True)
class _ColumnReductions:
    """Per-column count, mean, m2, min and max of a finite float [n, F] matrix, and its columns as
    contiguous float32 rows (the sketch takes a writable 1-D array)."""

    rows: int
    mean: npt.NDArray[np.float64]
    m2: npt.NDArray[np.float64]
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    columns: npt.NDArray[np.float32]

    @classmethod
    def of(cls, matrix: npt.NDArray[Any]) -> _ColumnReductions | None:
        """None if the matrix has NaN or infinities (those take the per-column path)."""
        if not np.isfinite(matrix).all():
            return None
        wide = matrix.astype(np.float64)
        n = matrix.shape[0]
        mean = wide.sum(axis=0) / n
        return cls(n, mean, np.square(wide - mean).sum(axis=0), wide.min(axis=0), wide.max(axis=0),
                   np.array(matrix.T, dtype=np.float32, order="C"))


def merge_windows(model: str, windows: Iterable[WindowSummary],
                  window_id: str = "merged") -> WindowSummary | None:
    """Merge windows into a new summary (inputs untouched); None when there are none."""
    merged: WindowSummary | None = None
    for window in windows:
        if merged is None:
            merged = WindowSummary(model=model, window_id=window_id, producer="", start_ms=window.start_ms,
                                   end_ms=window.end_ms, rows=0, windows=0,
                                   sketch_k=window.sketch_k, max_categories=window.max_categories)
        merged.merge(window)
    return merged
