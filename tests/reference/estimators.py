"""Textbook estimators in plain Python: the normal 95% interval of a mean, antithetic pair
means, and two-phase (double) sampling for stratification.

Written out from the formulas with Python floats, never with the library's helpers, so that
a test can recompute a report's estimate from the per-environment values it was made of.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def mean_ci95(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its normal 95% interval, mean -+ Z95 * s / sqrt(n),
    with s the sample standard deviation (n - 1 in the denominator)."""
    x = [float(v) for v in values]
    n = len(x)
    mean = sum(x) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def pair_means(values: Sequence[float], n: int) -> list[float]:
    """The n antithetic pair means (v_i + v_{n+i}) / 2 of 2n values: environment i in row i, its
    reward-negated twin in row n + i."""
    if len(values) != 2 * n:
        raise ValueError(f"expected {2 * n} values, got {len(values)}")
    return [(float(values[i]) + float(values[n + i])) / 2 for i in range(n)]


def two_phase_stratified(values: Sequence[float], strata: Sequence[int],
                         pool_counts: Sequence[int]) -> tuple[float, float]:
    """(mean, standard error) of double sampling for stratification (Cochran 1977, 12.2).

    A phase-1 pool of M = sum(pool_counts) units falls into strata h with m_h units each,
    w_h = m_h / M; ``values`` are the phase-2 draws, ``strata`` the stratum of each.
    mean = sum w_h ybar_h,
    var = sum w_h^2 s_h^2 / n_h + (1 / M) sum w_h (ybar_h - mean)^2.
    """
    M = sum(pool_counts)
    mean, within, ybars = 0.0, 0.0, []
    for h, m in enumerate(pool_counts):
        y = [float(v) for v, s in zip(values, strata) if s == h]
        ybar = sum(y) / len(y)
        s2 = sum((v - ybar) ** 2 for v in y) / (len(y) - 1)
        mean += m / M * ybar
        within += (m / M) ** 2 * s2 / len(y)
        ybars.append(ybar)
    between = sum(m / M * (yb - mean) ** 2 for m, yb in zip(pool_counts, ybars)) / M
    return mean, (within + between) ** 0.5
