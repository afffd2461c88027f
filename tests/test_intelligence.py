"""Estimators of Upsilon/Sigma: unbiasedness on environment sets with closed-form values,
and the coverage of their 95% intervals, checked by repetition."""

import numpy as np
import pytest

from aligned_rl.intelligence import (
    Estimate,
    antithetic_estimate,
    discounted_value,
    neyman_allocation,
    simple_estimate,
    stratified_estimate,
)

# A small "universe": 6 environments with description lengths K (bits) of a prefix-free code
# (Kraft sum exactly 1) and the agent's value in each, known in closed form.
K = np.array([1, 2, 4, 4, 4, 4])
PRIOR = 2.0 ** -K
VALUES = np.array([0.8, -0.2, 0.5, 0.1, -0.9, 0.3])
UPSILON = float(np.sum(PRIOR * VALUES))  # the exact sum over the universe
STRATUM = np.array([0, 1, 2, 2, 2, 2])  # AIQ-style strata: here by program length


def test_kraft_and_closed_form():
    assert PRIOR.sum() == pytest.approx(1.0)
    assert UPSILON == pytest.approx(0.4 - 0.05 + 0.0625 * 0.0)


def _draw(rng, n):
    return rng.choice(len(PRIOR), size=n, p=PRIOR)


def test_simple_estimate_is_unbiased_and_covers():
    rng = np.random.default_rng(0)
    estimates, covered = [], 0
    for _ in range(2000):
        idx = _draw(rng, 64)
        e = simple_estimate(VALUES[idx] + rng.normal(0, 0.2, size=64))  # noisy episode values
        estimates.append(e.mean)
        low, high = e.ci95
        covered += low <= UPSILON <= high
    assert np.mean(estimates) == pytest.approx(UPSILON, abs=0.01)
    assert 0.92 <= covered / 2000 <= 0.97


def test_antithetic_pairs_cancel_a_reward_blind_agent_and_stay_unbiased():
    rng = np.random.default_rng(1)
    idx = _draw(rng, 100)
    blind = rng.normal(size=100)  # whatever a reward-blind agent collects...
    zero = antithetic_estimate(blind, -blind)  # ...it collects the negation in the twin
    assert zero.mean == 0.0 and zero.se == 0.0
    # a learning agent: value V in the environment, V' in the negated twin (it learns there too)
    means, covered = [], 0
    for _ in range(1000):
        idx = _draw(rng, 64)
        v = VALUES[idx] + rng.normal(0, 0.2, 64)
        twin = 0.3 + rng.normal(0, 0.2, 64)  # in every twin the agent earns 0.3 on average
        e = antithetic_estimate(v, twin)
        means.append(e.mean)
        low, high = e.ci95
        covered += low <= (UPSILON + 0.3) / 2 <= high
    assert np.mean(means) == pytest.approx((UPSILON + 0.3) / 2, abs=0.01)
    assert 0.92 <= covered / 1000 <= 0.975


def test_stratified_estimate_is_unbiased_covers_and_beats_simple_sampling():
    rng = np.random.default_rng(2)
    mass = np.array([PRIOR[STRATUM == h].sum() for h in range(3)])
    within = [PRIOR[STRATUM == h] / mass[h] for h in range(3)]
    members = [np.flatnonzero(STRATUM == h) for h in range(3)]
    counts = neyman_allocation(mass, [0.2, 0.2, 0.6], total=64)
    strat_means, simple_means, covered = [], [], 0
    for _ in range(1000):
        vals, strata = [], []
        for h in range(3):
            pick = rng.choice(members[h], size=counts[h], p=within[h])
            vals.append(VALUES[pick] + rng.normal(0, 0.2, counts[h]))
            strata.append(np.full(counts[h], h))
        e = stratified_estimate(np.concatenate(vals), np.concatenate(strata), mass)
        strat_means.append(e.mean)
        low, high = e.ci95
        covered += low <= UPSILON <= high
        simple_means.append(simple_estimate(VALUES[_draw(rng, 64)] + rng.normal(0, 0.2, 64)).mean)
    assert np.mean(strat_means) == pytest.approx(UPSILON, abs=0.01)
    assert 0.92 <= covered / 1000 <= 0.975
    assert np.var(strat_means) < 0.5 * np.var(simple_means)


def test_neyman_allocation():
    counts = neyman_allocation([0.5, 0.25, 0.25, 0.0], [1.0, 1.0, 3.0, 5.0], total=100, minimum=2)
    assert counts.sum() == 100 and counts[3] == 0 and np.all(counts[:3] >= 2)
    assert counts[2] > counts[0] > counts[1]  # 0.75 > 0.5 > 0.25
    with pytest.raises(ValueError, match="cannot give"):
        neyman_allocation([1, 1, 1], [1, 1, 1], total=5, minimum=2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="empty"):
        simple_estimate([])
    with pytest.raises(ValueError, match="non-finite"):
        simple_estimate([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least 2"):
        stratified_estimate([1.0, 2.0, 3.0], [0, 0, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="differ in length"):
        antithetic_estimate([1.0, 2.0], [1.0])


def test_estimate_reports_interval_and_filtered_mass():
    e = Estimate(mean=0.5, se=0.1, n=10, filtered_mass=0.25)
    d = e.as_dict()
    assert d["ci95_low"] == pytest.approx(0.5 - 0.196, abs=1e-3) and d["filtered_mass"] == 0.25
    assert "0.5000" in str(e)


def test_discounted_value_is_a_weighted_mean_of_rewards():
    r = np.ones((3, 50))
    np.testing.assert_allclose(discounted_value(r, 0.9), 1.0)
    r = np.array([1.0, 0.0, 0.0])
    assert discounted_value(r, 0.5) == pytest.approx(1 / 1.75)


# ------------------------------------------------- two-phase stratified sampling (double sampling)
from aligned_rl.intelligence import (
    adaptive_stratified_sample,
    collapse_strata,
    two_phase_stratified_estimate,
)
from tests.reference.estimators import two_phase_stratified

# a synthetic family: strata with known masses, means and spreads of the per-unit value
W = np.array([0.5, 0.3, 0.15, 0.05])
MU = np.array([0.2, -0.4, 0.8, 0.0])
SD = np.array([0.05, 0.1, 0.6, 1.0])
TRUE = float(np.sum(W * MU))


def test_two_phase_estimate_matches_a_reference():
    rng = np.random.default_rng(5)
    strata = np.repeat([0, 1, 2], [5, 7, 4])
    values = rng.normal(size=strata.size)
    e, rows = two_phase_stratified_estimate(values, strata, [40, 30, 10], filtered_mass=0.1)
    mean, se = two_phase_stratified(values.tolist(), strata.tolist(), [40, 30, 10])
    assert e.mean == pytest.approx(mean, rel=1e-12) and e.se == pytest.approx(se, rel=1e-12)
    assert e.n == 16 and e.filtered_mass == 0.1
    assert [r["n"] for r in rows] == [5, 7, 4] and rows[0]["w"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        two_phase_stratified_estimate([1.0, 2.0, 3.0], [0, 0, 1], [5, 5])
    with pytest.raises(ValueError, match="only 2 pool members"):
        two_phase_stratified_estimate([1.0, 2.0, 3.0], [0, 0, 0], [2, 0])


def _one_design(rng, pool_size=400, budget=80):
    pool = rng.choice(W.size, size=pool_size, p=W)
    pool_values = MU[pool] + SD[pool] * rng.normal(size=pool_size)  # each pool unit's (unseen) value
    groups, members = collapse_strata(pool, pilot=int(0.25 * budget))
    sample = adaptive_stratified_sample(groups, budget, 0.25, lambda idx: pool_values[idx], rng)
    e, _ = two_phase_stratified_estimate(sample.values, sample.groups, sample.pool_counts)
    return e, sample, members


def test_adaptive_two_phase_is_unbiased_its_variance_is_right_and_its_interval_covers():
    rng = np.random.default_rng(7)
    means, ses, covered = [], [], 0
    for _ in range(300):
        e, sample, _ = _one_design(rng)
        assert sample.counts.sum() == 80 and len(set(sample.indices.tolist())) == 80
        means.append(e.mean)
        ses.append(e.se)
        low, high = e.ci95
        covered += low <= TRUE <= high
    means = np.asarray(means)
    assert abs(means.mean() - TRUE) < 3 * means.std() / np.sqrt(means.size)  # unbiased
    # the formula's variance (with its (1/M) phase-1 term) against the spread over repetitions
    assert 0.75 < np.mean(np.square(ses)) / means.var() < 1.33
    assert 0.91 <= covered / 300 <= 0.985
    # the (1/M) term matters here: without it the variance falls short
    between = np.sum(W * (MU - TRUE) ** 2) / 400
    assert between > 0.2 * means.var()


def test_allocation_favours_high_variance_strata():
    rng = np.random.default_rng(3)
    _, sample, members = _one_design(rng, pool_size=2000, budget=400)
    assert members == [[0], [1], [2], [3]]
    share = sample.counts / sample.counts.sum()
    w = sample.pool_counts / sample.pool_counts.sum()
    # stratum 2 (w 0.15, sd 0.6) gets far more than its mass, stratum 0 (w 0.5, sd 0.05) far less
    assert share[2] > 2 * w[2] and share[0] < 0.5 * w[0]
    assert np.all(sample.pilot_counts >= 2) and np.all(sample.counts <= sample.pool_counts)
    assert sample.pilot_std[3] > sample.pilot_std[0]


def test_collapse_strata_and_capped_allocation():
    groups, members = collapse_strata([5, 5, 5, 7, 9, 9, 11], pilot=6)
    assert members == [[5], [7, 11], [9]]  # 7 and 11 have one member each: collapsed
    assert groups.tolist() == [0, 0, 0, 1, 2, 2, 1]
    _, members = collapse_strata([1, 1, 2, 2, 3, 3, 4, 4], pilot=4)
    assert len(members) == 2  # a pilot of 4 gives 2 draws to at most 2 groups
    counts = neyman_allocation([0.5, 0.5], [1.0, 9.0], total=10, minimum=2, capacity=[8, 4])
    assert counts.tolist() == [6, 4]
    with pytest.raises(ValueError, match="exceeds the capacity"):
        neyman_allocation([0.5, 0.5], [1.0, 1.0], total=10, capacity=[3, 3])
    with pytest.raises(ValueError, match="budget=50 exceeds the pool"):
        adaptive_stratified_sample([0, 0, 1, 1], 50, 0.25, lambda i: i, np.random.default_rng(0))
