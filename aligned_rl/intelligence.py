"""Estimators of universal intelligence Upsilon and aligned intelligence Sigma.

    Upsilon(pi) = sum_mu 2^-K(mu) V_mu^pi          Sigma(pi) = sum_mu 2^-K(mu) V'_mu^pi

K is replaced by a description length under a prefix-free code, and each family's sampler
draws mu with probability 2^-K(mu).  The sum is therefore an expectation under the sampler,
estimated by a Monte Carlo mean over drawn environments; the values V come from vmapped
JAX runs, the statistics here are computed on the host in float64.

Three estimators, each returning an :class:`Estimate` with a 95% confidence interval:

* :func:`simple_estimate`: the plain mean of i.i.d. draws, normal-approximation CI.
* :func:`antithetic_estimate`: AIQ's antithetic pairs.  Each environment is also run with
  its rewards negated; the pair's mean is the unit of estimation.  An agent that ignores
  rewards (the random agent) scores exactly 0 on every pair, and any agent's variance falls
  by the part of V that does not depend on how it learns.
* :func:`stratified_estimate`: strata h with prior masses w_h (the probability that the
  sampler lands in h); estimate sum_h w_h mean_h, variance sum_h w_h^2 s_h^2 / n_h.
  :func:`neyman_allocation` chooses n_h proportional to w_h s_h (from pilot draws), which
  minimises that variance for a fixed total.

Prior mass that a sampler filters out (programs that never respond, or that run over the
step limit) is not part of any estimate: ``filtered_mass`` is reported beside it, so a
reader knows which fraction of the universal prior the number speaks for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its 95% confidence interval."""

    mean: float
    se: float  # standard error
    n: int  # environments (or antithetic pairs) that went into it
    filtered_mass: float = 0.0  # prior mass excluded by the sampler's filters

    @property
    def ci95(self) -> tuple[float, float]:
        return (self.mean - Z95 * self.se, self.mean + Z95 * self.se)

    def as_dict(self) -> dict:
        low, high = self.ci95
        return {"mean": self.mean, "ci95_low": low, "ci95_high": high, "se": self.se, "n": self.n,
                "filtered_mass": self.filtered_mass}

    def __str__(self) -> str:
        low, high = self.ci95
        return f"{self.mean:.4f} [{low:.4f}, {high:.4f}] (n={self.n})"


def _check(values: np.ndarray, name: str = "values") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{name} is empty: nothing to estimate")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(values)))} non-finite entries")
    return values


def simple_estimate(values: Sequence[float], filtered_mass: float = 0.0) -> Estimate:
    """Mean of i.i.d. per-environment values drawn from the prior."""
    v = _check(values)
    se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("inf")
    return Estimate(float(np.mean(v)), se, int(v.size), filtered_mass)


def antithetic_estimate(values: Sequence[float], negated_env_values: Sequence[float],
                        filtered_mass: float = 0.0) -> Estimate:
    """AIQ's antithetic estimator: environment i is run as drawn (value V_i) and as its twin
    whose rewards are negated (value V_i^- in the twin's own rewards); the unit of estimation
    is the pair mean (V_i + V_i^-) / 2.  The twin has the same description length but for
    one bit, so both halves carry the same prior weight.  A reward-blind agent acting on the
    same random numbers gets V_i^- = -V_i exactly, so it scores 0 on every pair.
    """
    v, w = _check(values), _check(negated_env_values, "negated_env_values")
    if v.shape != w.shape:
        raise ValueError(f"values and negated_env_values differ in length: {v.size} vs {w.size}")
    return simple_estimate((v + w) / 2.0, filtered_mass)


def stratified_estimate(
    values: Sequence[float], strata: Sequence[int], stratum_mass: Sequence[float], filtered_mass: float = 0.0
) -> Estimate:
    """Stratified estimate sum_h w_h mean_h with w_h = stratum_mass[h] (normalised to sum 1).

    Every stratum with mass needs at least two draws (for its variance); strata without
    mass may be empty.
    """
    v = _check(values)
    s = np.asarray(strata, dtype=np.int64).reshape(-1)
    w = np.asarray(stratum_mass, dtype=np.float64)
    if s.shape != v.shape:
        raise ValueError(f"values and strata differ in length: {v.size} vs {s.size}")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("stratum_mass must be non-negative with a positive sum")
    if s.min() < 0 or s.max() >= w.size:
        raise ValueError(f"strata must index stratum_mass (0..{w.size - 1})")
    w = w / w.sum()
    mean, var = 0.0, 0.0
    for h in np.flatnonzero(w > 0):
        vh = v[s == h]
        if vh.size < 2:
            raise ValueError(f"stratum {h} has mass {w[h]:.3g} but {vh.size} draw(s); it needs at least 2")
        mean += w[h] * vh.mean()
        var += w[h] ** 2 * vh.var(ddof=1) / vh.size
    return Estimate(float(mean), float(math.sqrt(var)), int(v.size), filtered_mass)


def neyman_allocation(stratum_mass: Sequence[float], stratum_std: Sequence[float], total: int,
                      minimum: int = 2) -> np.ndarray:
    """Draws per stratum, n_h proportional to w_h * s_h, at least ``minimum`` where w_h > 0,
    summing exactly to ``total`` (largest remainders get the rounding)."""
    w = np.asarray(stratum_mass, dtype=np.float64)
    sd = np.asarray(stratum_std, dtype=np.float64)
    active = w > 0
    if total < minimum * int(active.sum()):
        raise ValueError(f"total={total} cannot give {minimum} draws to each of {int(active.sum())} strata")
    score = np.where(active, w * np.maximum(sd, 1e-12), 0.0)
    counts = np.where(active, minimum, 0).astype(np.int64)
    spare = total - counts.sum()
    if spare > 0 and score.sum() > 0:
        ideal = spare * score / score.sum()
        floor = np.floor(ideal).astype(np.int64)
        counts += floor
        leftover = spare - floor.sum()
        order = np.argsort(-(ideal - floor), kind="stable")
        counts[order[:leftover]] += 1
    return counts


def discounted_value(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """sum_t gamma^t r_t / sum_t gamma^t over the last axis (T steps): a weighted mean of the
    rewards, so |V| <= max |r| whatever gamma and T."""
    rewards = np.asarray(rewards, dtype=np.float64)
    discounts = gamma ** np.arange(rewards.shape[-1])
    return np.sum(rewards * discounts, axis=-1) / np.sum(discounts)
