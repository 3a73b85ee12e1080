"""Divergence measures between a reference summary and a current one, computed on the sketches.

Numeric: PSI and Jensen-Shannon distance on the reference's quantile bins, Kolmogorov-Smirnov
(statistic shrunk by both sketches' rank error, so sketch noise never reads as drift),
Wasserstein-1 and mean shift in reference standard deviations. Categorical: PSI,
Jensen-Shannon and chi-squared on frequencies. Pure functions; no scipy needed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from .stats import FeatureSummary

__all__ = [
    "categorical_measures",
    "chi2_sf",
    "chi_squared",
    "js_distance",
    "kolmogorov_sf",
    "ks_test",
    "mean_shift",
    "numeric_measures",
    "psi",
    "quantile_bins",
    "wasserstein",
]

Floats = npt.NDArray[np.float64]
_EPS = 1e-4  # floor for empty bins, as PSI implementations usually do
_GRID = 256


def quantile_bins(reference: FeatureSummary, bins: int) -> list[float]:
    """Split points at the reference's 1/bins .. (bins-1)/bins quantiles (ties collapse)."""
    ranks = [i / bins for i in range(1, bins)]
    return sorted(set(reference.sketch.get_quantiles(ranks)))


def _fractions(summary: FeatureSummary, edges: list[float]) -> Floats:
    if not edges:
        return np.ones(1)
    return np.asarray(summary.sketch.get_pmf(edges), dtype=np.float64)


def psi(expected: Floats, actual: Floats) -> float:
    """Population stability index of two distributions over the same bins."""
    e = np.maximum(expected / max(expected.sum(), 1e-300), _EPS)
    a = np.maximum(actual / max(actual.sum(), 1e-300), _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: Floats, q: Floats) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two distributions over the same bins."""
    p = p / max(p.sum(), 1e-300)
    q = q / max(q.sum(), 1e-300)
    m = (p + q) / 2

    def kl(x: Floats) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the asymptotic KS statistic)."""
    if x < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return min(1.0, max(0.0, 2.0 * total))


def _sketch_error(summary: FeatureSummary) -> float:
    return float(summary.sketch.normalized_rank_error(False)) if summary.sketch.is_estimation_mode() else 0.0


def ks_test(reference: FeatureSummary, current: FeatureSummary) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample KS test on the sketches' CDFs.

    The statistic is reduced by both sketches' rank error before the p-value is taken, as
    datasketches' own ks_test does: with large windows, sketch noise alone would otherwise reject.
    """
    ranks = [i / _GRID for i in range(_GRID + 1)]
    grid = sorted(set(reference.sketch.get_quantiles(ranks)) | set(current.sketch.get_quantiles(ranks)))
    cdf_r = np.asarray(reference.sketch.get_cdf(grid, True)[:-1])
    cdf_c = np.asarray(current.sketch.get_cdf(grid, True)[:-1])
    statistic = float(np.max(np.abs(cdf_r - cdf_c)))
    adjusted = max(0.0, statistic - _sketch_error(reference) - _sketch_error(current))
    n1, n2 = reference.count, current.count
    ne = n1 * n2 / (n1 + n2)
    root = math.sqrt(ne)
    return statistic, kolmogorov_sf((root + 0.12 + 0.11 / root) * adjusted)


def wasserstein(reference: FeatureSummary, current: FeatureSummary) -> float:
    """Wasserstein-1 distance in reference standard deviations (raw units when the std is 0)."""
    ranks = [(i + 0.5) / _GRID for i in range(_GRID)]
    qr = np.asarray(reference.sketch.get_quantiles(ranks), dtype=np.float64)
    qc = np.asarray(current.sketch.get_quantiles(ranks), dtype=np.float64)
    distance = float(np.mean(np.abs(qr - qc)))
    std = reference.std
    return distance / std if std > 0 else distance


def mean_shift(reference: FeatureSummary, current: FeatureSummary) -> float:
    """|mean difference| in reference standard deviations (inf if the reference is constant)."""
    diff = abs(current.mean - reference.mean)
    std = reference.std
    if std > 0:
        return diff / std
    return 0.0 if diff == 0 else math.inf


def numeric_measures(reference: FeatureSummary, current: FeatureSummary, bins: int) -> dict[str, float]:
    edges = quantile_bins(reference, bins)
    ref_frac, cur_frac = _fractions(reference, edges), _fractions(current, edges)
    statistic, p_value = ks_test(reference, current)
    return {
        "psi": psi(ref_frac, cur_frac),
        "js_distance": js_distance(ref_frac, cur_frac),
        "ks_statistic": statistic,
        "ks_pvalue": p_value,
        "wasserstein": wasserstein(reference, current),
        "mean_shift": mean_shift(reference, current),
    }


def _category_counts(reference: FeatureSummary, current: FeatureSummary) -> tuple[Floats, Floats]:
    """Counts over the reference's categories, plus one bin for `other` and unseen values."""
    ref_freq = reference.frequencies or {}
    cur_freq = current.frequencies or {}
    cats = sorted(ref_freq)
    ref = [ref_freq[c] for c in cats] + [reference.other]
    cur = [cur_freq.get(c, 0) for c in cats]
    cur.append(current.count - sum(cur))
    return np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for a chi-squared variable: the regularized upper incomplete gamma Q(dof/2, x/2)."""
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q(a, x)
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_squared(expected_counts: Floats, actual_counts: Floats) -> tuple[float, float]:
    """(statistic, p-value) of the goodness-of-fit of actual counts to the expected proportions."""
    n = actual_counts.sum()
    probs = np.maximum(expected_counts / max(expected_counts.sum(), 1e-300), _EPS)
    probs /= probs.sum()
    used = (expected_counts > 0) | (actual_counts > 0)
    if n <= 0 or used.sum() < 2:
        return 0.0, 1.0
    expected = n * probs[used]
    statistic = float(np.sum((actual_counts[used] - expected) ** 2 / expected))
    return statistic, chi2_sf(statistic, int(used.sum()) - 1)


def categorical_measures(reference: FeatureSummary, current: FeatureSummary) -> dict[str, Any]:
    ref, cur = _category_counts(reference, current)
    statistic, p_value = chi_squared(ref, cur)
    return {
        "psi": psi(ref, cur),
        "js_distance": js_distance(ref, cur),
        "chi2_statistic": statistic,
        "chi2_pvalue": p_value,
        "mean_shift": mean_shift(reference, current),
    }
