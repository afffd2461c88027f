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
* :func:`estimation_units` and :func:`paired_difference`: the independent units (values, or
  antithetic pair means) and the paired difference of two agents run on the same
  environments with the same random numbers (the CI of the per-unit differences).
* :func:`stratified_estimate`: strata h with prior masses w_h (the probability that the
  sampler lands in h); estimate sum_h w_h mean_h, variance sum_h w_h^2 s_h^2 / n_h.
  :func:`neyman_allocation` chooses n_h proportional to w_h s_h (from pilot draws), which
  minimises that variance for a fixed total.
* :func:`two_phase_stratified_estimate` and :func:`adaptive_stratified_sample`: the same
  when the masses w_h are not known but estimated from a large first-phase *pool* of M
  draws from the sampler (double sampling for stratification).  Phase 2 runs a subsample
  of the pool: a pilot allocated in proportion to w_h, then the rest by Neyman allocation
  from the pilot's s_h.  The variance gains a term for the error of the estimated w_h:

      Var = sum_h w_h^2 s_h^2 / n_h + (1/M) sum_h w_h (mean_h - mean)^2

  (Neyman 1938, "Contribution to the theory of sampling human populations", JASA 33;
  Cochran, *Sampling Techniques*, 3rd ed. 1977, Section 12.2, with the population taken as
  infinite.  With phase-2 units drawn at random from the pool's members of each stratum,
  the exact variance for fixed n_h is S^2/M + sum_h W_h^2 S_h^2 (1/n_h - 1/m_h), m_h = M W_h;
  since S^2 = sum_h W_h S_h^2 + sum_h W_h (Y_h - Y)^2 it equals the formula above.)

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
        return {"mean": float(self.mean), "ci95_low": float(low), "ci95_high": float(high), "se": float(self.se),
                "n": int(self.n), "filtered_mass": float(self.filtered_mass)}

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


def _strata(values, strata, weights: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, stratum per value, weights per stratum), checked: same lengths, weights that
    are non-negative with a positive sum, strata that index the weights."""
    v = _check(values)
    s = np.asarray(strata, dtype=np.int64).reshape(-1)
    if s.shape != v.shape:
        raise ValueError(f"values and strata differ in length: {v.size} vs {s.size}")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"{name} must be non-negative with a positive sum")
    if s.min() < 0 or s.max() >= weights.size:
        raise ValueError(f"strata must index {name} (0..{weights.size - 1})")
    return v, s, weights


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


def estimation_units(values: np.ndarray, n: int, antithetic: bool) -> np.ndarray:
    """The independent units of estimation: the n values, or with antithetic twins (rows n..2n-1)
    the n pair means."""
    values = np.asarray(values, np.float64).reshape(-1)
    expected = 2 * n if antithetic else n
    if values.size != expected:
        raise ValueError(f"expected {expected} per-environment values (n={n}, antithetic={antithetic}), "
                         f"got {values.size}")
    return (values[:n] + values[n:]) / 2.0 if antithetic else values


def paired_difference(unaligned: np.ndarray, aligned: np.ndarray, n: int, antithetic: bool,
                      filtered_mass: float = 0.0, keep: np.ndarray | None = None) -> Estimate:
    """Mean of unaligned - aligned over the same environments, with the CI of the per-unit
    differences (paired: the agents ran on the very same environments and random numbers).
    ``keep`` (bool[n]): only these units (e.g. where both runs kept the same environment)."""
    d = estimation_units(unaligned, n, antithetic) - estimation_units(aligned, n, antithetic)
    return simple_estimate(d if keep is None else d[np.asarray(keep, bool)], filtered_mass)


def stratified_estimate(
    values: Sequence[float], strata: Sequence[int], stratum_mass: Sequence[float], filtered_mass: float = 0.0
) -> Estimate:
    """Stratified estimate sum_h w_h mean_h with w_h = stratum_mass[h] (normalised to sum 1).

    Every stratum with mass needs at least two draws (for its variance); strata without
    mass may be empty.
    """
    v, s, w = _strata(values, strata, np.asarray(stratum_mass, dtype=np.float64), "stratum_mass")
    w = w / w.sum()
    mean, var = 0.0, 0.0
    for h in np.flatnonzero(w > 0):
        vh = v[s == h]
        if vh.size < 2:
            raise ValueError(f"stratum {h} has mass {w[h]:.3g} but {vh.size} draw(s); it needs at least 2")
        mean += w[h] * vh.mean()
        var += w[h] ** 2 * vh.var(ddof=1) / vh.size
    return Estimate(float(mean), float(math.sqrt(var)), int(v.size), filtered_mass)


def _spread(score: np.ndarray, spare: int, room: np.ndarray) -> np.ndarray:
    """``spare`` draws in proportion to ``score`` (largest remainders get the rounding), none
    beyond ``room``: a stratum that would overflow is filled and the rest is spread again."""
    extra = np.zeros(score.shape, np.int64)
    open_ = (score > 0) & (room > 0)
    while spare > 0 and open_.any():
        s = np.where(open_, score, 0.0)
        ideal = spare * s / s.sum()
        full = open_ & (ideal >= room - extra)
        if full.any():  # fill those and spread what is left over the others
            spare -= int(np.sum((room - extra)[full]))
            extra[full] = room[full]
            open_ &= ~full
            continue
        floor = np.floor(ideal).astype(np.int64)
        extra += floor
        leftover = spare - int(floor.sum())
        order = np.argsort(-(ideal - floor), kind="stable")
        extra[order[:leftover]] += 1
        spare = 0
    return extra


def neyman_allocation(stratum_mass: Sequence[float], stratum_std: Sequence[float], total: int,
                      minimum: int = 2, capacity: Sequence[int] | None = None) -> np.ndarray:
    """Draws per stratum, n_h proportional to w_h * s_h, at least ``minimum`` where w_h > 0,
    summing exactly to ``total`` (largest remainders get the rounding).  With ``capacity``
    no stratum gets more than capacity[h] draws (a stratum that would is filled, and the
    rest is allocated over the others in the same proportions)."""
    w = np.asarray(stratum_mass, dtype=np.float64)
    sd = np.asarray(stratum_std, dtype=np.float64)
    if w.shape != sd.shape:
        raise ValueError(f"stratum_mass and stratum_std differ in length: {w.size} vs {sd.size}")
    active = w > 0
    if total < minimum * int(active.sum()):
        raise ValueError(f"total={total} cannot give {minimum} draws to each of {int(active.sum())} strata")
    cap = np.full(w.shape, np.iinfo(np.int64).max // 4, np.int64) if capacity is None else \
        np.asarray(capacity, np.int64)
    if cap.shape != w.shape:
        raise ValueError(f"capacity has {cap.size} entries for {w.size} strata")
    if np.any(active & (cap < minimum)):
        raise ValueError(f"a stratum with mass has capacity below minimum={minimum}")
    if int(np.sum(np.where(active, cap, 0))) < total:
        raise ValueError(f"total={total} exceeds the capacity of the strata with mass "
                         f"({int(np.sum(np.where(active, cap, 0)))})")
    score = np.where(active, w * np.maximum(sd, 1e-12), 0.0)
    counts = np.where(active, minimum, 0).astype(np.int64)
    counts += _spread(score, int(total - counts.sum()), np.where(active, cap - counts, 0))
    return counts


# ------------------------------------------------------------------ two-phase stratified
def two_phase_stratified_estimate(values: Sequence[float], strata: Sequence[int], pool_counts: Sequence[int],
                                  filtered_mass: float = 0.0) -> tuple[Estimate, list[dict]]:
    """Double sampling for stratification: ``pool_counts[h]`` = m_h members of stratum h in a
    first-phase pool of M = sum m_h draws, w_h = m_h / M; ``values`` are phase-2 units drawn at
    random from the pool's members of each stratum (``strata`` says which).  Returns the
    estimate sum_h w_h mean_h with variance
    sum_h w_h^2 s_h^2 / n_h + (1/M) sum_h w_h (mean_h - mean)^2 (see the module docstring),
    and one row per stratum: n, w, mean, sd (s_h, ddof=1), pool_count."""
    v, s, m = _strata(values, strata, np.asarray(pool_counts, dtype=np.int64).reshape(-1), "pool_counts")
    M = int(m.sum())
    w = m / M
    rows, means = [], np.zeros(m.size)
    within = 0.0
    for h in range(m.size):
        vh = v[s == h]
        if m[h] == 0:
            if vh.size:
                raise ValueError(f"stratum {h} has {vh.size} draw(s) but no member in the pool")
            continue
        if vh.size < 2:
            raise ValueError(f"stratum {h} has {m[h]} pool member(s) but {vh.size} draw(s); it needs at least 2")
        if vh.size > m[h]:
            raise ValueError(f"stratum {h} has {vh.size} draws but only {m[h]} pool members to draw them from")
        means[h] = vh.mean()
        sd = float(vh.std(ddof=1))
        within += w[h] ** 2 * sd ** 2 / vh.size
        rows.append({"stratum": h, "n": int(vh.size), "pool_count": int(m[h]), "w": float(w[h]),
                     "mean": float(means[h]), "sd": sd})
    mean = float(np.sum(w * means))
    between = float(np.sum(w * (means - mean) ** 2)) / M
    return Estimate(mean, math.sqrt(within + between), int(v.size), filtered_mass), rows


def collapse_strata(pool_strata: Sequence[int], pilot: int, minimum: int = 2) -> tuple[np.ndarray, list[list[int]]]:
    """Group the pool's strata so that every group has at least ``minimum`` pool members and
    the pilot can give ``minimum`` draws to every group: while either fails, the two smallest
    groups are merged (collapsed strata).  Grouping depends on the pool's labels only, never
    on values.  Returns each pool unit's group (0..G-1) and the strata in each group."""
    labels = np.asarray(pool_strata).reshape(-1)
    if labels.size < minimum:
        raise ValueError(f"a pool of {labels.size} cannot give {minimum} draws to any stratum")
    if pilot < minimum:
        raise ValueError(f"a pilot of {pilot} cannot give {minimum} draws to any stratum")
    uniq, counts = np.unique(labels, return_counts=True)
    groups = [([int(u)], int(c)) for u, c in zip(uniq, counts)]
    while len(groups) > 1 and (min(c for _, c in groups) < minimum or minimum * len(groups) > pilot):
        groups.sort(key=lambda g: (g[1], g[0][0]))
        (a, ca), (b, cb) = groups[0], groups[1]
        groups = [(sorted(a + b), ca + cb)] + groups[2:]
    groups.sort(key=lambda g: g[0][0])
    index = {s: i for i, (members, _) in enumerate(groups) for s in members}
    return np.asarray([index[int(x)] for x in labels], np.int64), [members for members, _ in groups]


@dataclasses.dataclass
class StratifiedSample:
    """What :func:`adaptive_stratified_sample` ran: pool indices in the order they were run."""

    indices: np.ndarray  # int[n]: pool units run (pilot first)
    groups: np.ndarray  # int[n]: their stratum
    phase: np.ndarray  # int[n]: 0 pilot, 1 Neyman-allocated rest
    values: np.ndarray  # float[n]: evaluate() of each
    pool_counts: np.ndarray  # int[H]: m_h
    pilot_counts: np.ndarray  # int[H]
    pilot_std: np.ndarray  # float[H]: s_h of the pilot, which set the allocation
    counts: np.ndarray  # int[H]: n_h in all


def adaptive_stratified_sample(pool_groups: Sequence[int], budget: int, pilot_fraction: float,
                               evaluate, rng: np.random.Generator, minimum: int = 2) -> StratifiedSample:
    """Two phases over a pool whose units carry a stratum (0..H-1, every one with at least
    ``minimum`` members; see :func:`collapse_strata`).  A pilot of max(minimum H,
    round(pilot_fraction budget)) units is allocated in proportion to w_h = m_h / M (at least
    ``minimum`` each); ``evaluate(pool_indices) -> values`` runs them; the s_h they show set a
    Neyman allocation of the whole budget, and the units each stratum still lacks (the rest
    of the budget, spread in proportion to those shortfalls) are run by a second
    ``evaluate``.  Units are drawn without replacement from the pool's members of their
    stratum, so n_h <= m_h.  Estimate with :func:`two_phase_stratified_estimate`."""
    g = np.asarray(pool_groups, np.int64).reshape(-1)
    m = np.bincount(g)
    H = m.size
    if np.any(m < minimum):
        raise ValueError(f"every stratum needs at least {minimum} pool members: counts {m.tolist()}")
    if not 0 < pilot_fraction <= 1:
        raise ValueError(f"pilot_fraction={pilot_fraction} must be in (0, 1]")
    if budget > g.size:
        raise ValueError(f"budget={budget} exceeds the pool of {g.size}")
    n_pilot = min(budget, max(minimum * H, int(round(pilot_fraction * budget))))
    if budget < minimum * H:
        raise ValueError(f"budget={budget} cannot give {minimum} draws to each of {H} strata")
    members = [rng.permutation(np.flatnonzero(g == h)) for h in range(H)]
    pilot = neyman_allocation(m, np.ones(H), n_pilot, minimum, capacity=m)  # proportional to w_h

    def take(counts: np.ndarray, start: np.ndarray) -> np.ndarray:
        return np.concatenate([members[h][start[h]:start[h] + counts[h]] for h in range(H)]).astype(np.int64)

    idx1 = take(pilot, np.zeros(H, np.int64))
    v1 = np.asarray(evaluate(idx1), np.float64).reshape(-1)
    if v1.shape != idx1.shape:
        raise ValueError(f"evaluate returned {v1.size} values for {idx1.size} units")
    std = np.array([v1[g[idx1] == h].std(ddof=1) for h in range(H)])
    target = neyman_allocation(m, std, budget, minimum, capacity=m)
    rest = budget - n_pilot
    shortfall = np.maximum(target - pilot, 0)
    extra = _spread(shortfall.astype(np.float64), rest, m - pilot) if rest > 0 else np.zeros(H, np.int64)
    if extra.sum() < rest:  # only when every stratum with a shortfall is full: spread by w_h s_h
        extra += _spread(m * np.maximum(std, 1e-12), rest - int(extra.sum()), m - pilot - extra)
    idx2 = take(extra, pilot)
    v2 = np.asarray(evaluate(idx2), np.float64).reshape(-1) if idx2.size else np.zeros(0)
    if v2.shape != idx2.shape:
        raise ValueError(f"evaluate returned {v2.size} values for {idx2.size} units")
    indices = np.concatenate([idx1, idx2])
    return StratifiedSample(indices, g[indices], np.concatenate([np.zeros(idx1.size, np.int64),
                                                                 np.ones(idx2.size, np.int64)]),
                            np.concatenate([v1, v2]), m, pilot, std, pilot + extra)


def discounted_value(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """sum_t gamma^t r_t / sum_t gamma^t over the last axis (T steps): a weighted mean of the
    rewards, so |V| <= max |r| whatever gamma and T."""
    rewards = np.asarray(rewards, dtype=np.float64)
    discounts = gamma ** np.arange(rewards.shape[-1])
    return np.sum(rewards * discounts, axis=-1) / np.sum(discounts)
