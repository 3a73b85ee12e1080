"""Synthetic tabular traffic for the drift tests: seeded, with NaNs and an integer feature."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FEATURES = 4


def requests(seed: int, count: int, rows: int, shift: dict[int, float] | None = None,
             nan_fraction: float = 0.0) -> list[dict[str, npt.NDArray[Any]]]:
    """`count` requests of `rows` rows: x FP32 [rows, 4] ~ N(0, 1) (+ shift per column), c INT64 [rows, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
        for column, delta in (shift or {}).items():
            x[:, column] += np.float32(delta)
        if nan_fraction:
            x[rng.random((rows, FEATURES)) < nan_fraction] = np.nan
        c = rng.choice(np.array([1, 2, 3, 7], dtype=np.int64), size=(rows, 1), p=[0.4, 0.3, 0.2, 0.1])
        out.append({"x": x, "c": c})
    return out


def stacked(reqs: list[dict[str, npt.NDArray[Any]]], name: str) -> npt.NDArray[Any]:
    return np.concatenate([r[name] for r in reqs])


class StepClock:
    """A settable wall clock (Unix seconds) for deterministic windows."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def assert_summary_matches(summary: Any, values: npt.NDArray[Any], nulls: int = 0) -> None:
    """Counts exact, moments to 1e-9 relative, quantiles within the sketch's stated rank error.

    `nulls` counts values missing before `values` (Arrow nulls the summary saw but `values` lacks).
    """
    flat = values.reshape(-1)
    finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    wide = finite.astype(np.float64)
    assert summary.count == finite.size
    assert summary.missing == nulls + flat.size - finite.size
    assert summary.mean == pytest_approx(wide.mean())
    assert summary.variance == pytest_approx(wide.var())
    assert summary.min == wide.min() and summary.max == wide.max()
    ordered = np.sort(finite.astype(np.float32))
    ranks = np.linspace(0.02, 0.98, 49)
    quantiles = np.asarray(summary.sketch.get_quantiles(list(ranks)), dtype=np.float32)
    low = np.searchsorted(ordered, quantiles, "left") / ordered.size
    high = np.searchsorted(ordered, quantiles, "right") / ordered.size
    error = summary.sketch.normalized_rank_error(False)
    assert np.all(ranks >= low - error) and np.all(ranks <= high + error)
    if summary.frequencies is not None:
        keys, counts = np.unique(finite, return_counts=True)
        assert summary.frequencies == dict(zip(keys.tolist(), counts.tolist(), strict=True))


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, rel=1e-9, abs=1e-12)
