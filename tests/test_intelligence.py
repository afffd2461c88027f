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
