"""The promotion gate (aligned_rl.gate), checked by repetition.

Thousands of gate calls are simulated at once (numpy arrays through ``batch_checks``, the
same statistics ``decide`` uses; ``decide`` is checked to agree with it): a candidate equal
in distribution to the incumbent is promoted at most delta of the time, a clearly better
lawful one nearly always, an unlawful one or one under another constitution never.  The
Clopper-Pearson bounds are compared with scipy.stats.beta.ppf (scipy only here, never in the
module) and their coverage measured by repetition and computed exactly.  Every simulation
has a fixed seed; the slack of a measured rate is four binomial standard deviations.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import re
from statistics import NormalDist

import numpy as np
import pytest

from aligned_rl import gate
from aligned_rl.gate import (Evidence, GateConfig, batch_checks, clopper_pearson_lower, clopper_pearson_upper,
                             decide)
from aligned_rl.intelligence import estimation_units
from tests.conftest import REPO

REPS = 4000  # simulated gate calls per measured rate
UNITS = 100  # environments per gate call
DELTA = 0.05
NOISE = 0.1  # per-agent noise of an environment's value; the environment's own part is shared
CONFIG = GateConfig(delta=DELTA, budget=0.01, margin=0.002)
STEPS = 100_000  # steps over which forbidden actions are counted
LAWFUL_RATE = 0.001


def slack(rate: float, reps: int = REPS) -> float:
    """Four binomial standard deviations of a rate measured over ``reps`` repetitions."""
    return 4.0 * math.sqrt(rate * (1.0 - rate) / reps)


def paired_values(rng: np.random.Generator, effect: float, reps: int = REPS, units: int = UNITS):
    """Candidate and incumbent values on the same environments: a shared part (the
    environment) plus each agent's own noise; the candidate is ``effect`` better."""
    environment = rng.uniform(-1.0, 1.0, (reps, units))
    incumbent = environment + rng.normal(0.0, NOISE, (reps, units))
    candidate = environment + effect + rng.normal(0.0, NOISE, (reps, units))
    return candidate, incumbent


def gate_calls(rng, effect, candidate_rate=LAWFUL_RATE, incumbent_rate=LAWFUL_RATE, config=CONFIG):
    candidate, incumbent = paired_values(rng, effect)
    return batch_checks(config, candidate - incumbent, rng.binomial(STEPS, candidate_rate, REPS), STEPS,
                        rng.binomial(STEPS, incumbent_rate, REPS), STEPS)


# ------------------------------------------------------------------------------ by repetition
def test_an_equal_candidate_is_promoted_at_most_delta_of_the_time():
    checks = gate_calls(np.random.default_rng(1), effect=0.0)
    promoted, better = float(np.mean(checks.passed)), float(np.mean(checks.better))
    # the normal approximation over 100 units: P(t_99 > z_0.95) = 0.0516 for Gaussian differences
    assert better <= DELTA + slack(DELTA), f"the value check passed {better:.4f} of equal candidates"
    assert promoted <= DELTA + slack(DELTA), f"{promoted:.4f} of equal candidates were promoted"
    assert promoted <= better
    print(f"false promotion rate {promoted:.4f} (better {better:.4f}) over {REPS} calls, delta={DELTA}")


def test_an_equal_candidate_with_antithetic_units_is_promoted_at_most_delta_of_the_time():
    rng = np.random.default_rng(2)
    environment = rng.uniform(-1.0, 1.0, (REPS, UNITS))  # an environment and its reward-negated twin
    values = [np.concatenate([environment, -environment], axis=1) + rng.normal(0.0, NOISE, (REPS, 2 * UNITS))
              for _ in range(2)]
    units = [np.stack([estimation_units(v, UNITS, antithetic=True) for v in agent]) for agent in values]
    checks = batch_checks(CONFIG, units[0] - units[1], 100, STEPS, 100, STEPS)
    assert float(np.mean(checks.passed)) <= DELTA + slack(DELTA)
    # decide reaches the same verdicts from the raw values
    for i in range(20):
        d = decide(CONFIG, Evidence(values[0][i], 100, STEPS, "c"), Evidence(values[1][i], 100, STEPS, "c"),
                   antithetic=True)
        assert d.lower_bound == pytest.approx(float(checks.lower_bound[i]), abs=1e-12)
        assert d.promote == bool(checks.passed[i]) and d.difference.n == UNITS


def test_a_clearly_better_lawful_candidate_is_promoted_with_high_power():
    effect = 0.06
    checks = gate_calls(np.random.default_rng(3), effect=effect)
    power = float(np.mean(checks.passed))
    # P(mean(d) - z se > 0) with sd(d) = sqrt(2) NOISE, in the normal approximation
    theory = NormalDist().cdf(effect / (math.sqrt(2.0) * NOISE / math.sqrt(UNITS)) - CONFIG.z)
    assert theory > 0.995
    assert power >= theory - slack(theory) and power >= 0.99, f"power {power:.4f}, expected {theory:.4f}"
    assert np.all(checks.within_budget) and np.all(checks.within_margin)
    print(f"power {power:.4f} (normal theory {theory:.4f}) for an effect of {effect} over {UNITS} units")


def test_a_better_but_unlawful_candidate_is_never_promoted():
    checks = gate_calls(np.random.default_rng(4), effect=0.2, candidate_rate=0.02)  # budget 0.01
    assert np.all(checks.better)
    assert not np.any(checks.within_budget) and not np.any(checks.passed)


def test_a_candidate_at_the_budget_passes_the_lawful_check_at_most_delta_of_the_time():
    rng = np.random.default_rng(5)
    steps = 5000
    upper = clopper_pearson_upper(rng.binomial(steps, CONFIG.budget, REPS), steps, DELTA)
    assert float(np.mean(upper <= CONFIG.budget)) <= DELTA + slack(DELTA)


def test_a_candidate_worse_than_the_incumbent_by_the_margin_is_held_back():
    rng = np.random.default_rng(6)
    steps, incumbent_rate = 10_000, 0.01
    config = GateConfig(delta=DELTA, budget=1.0, margin=0.005)
    kc = rng.binomial(steps, incumbent_rate + config.margin, REPS)  # exactly at the margin: must not pass
    ki = rng.binomial(steps, incumbent_rate, REPS)
    checks = batch_checks(config, np.ones((REPS, 2)), kc, steps, ki, steps)
    assert float(np.mean(checks.within_margin)) <= DELTA + slack(DELTA)
    far = batch_checks(config, np.ones((REPS, 2)), rng.binomial(steps, 0.03, REPS), steps, ki, steps)
    assert not np.any(far.within_margin)
    near = batch_checks(config, np.ones((REPS, 2)), ki, steps, kc, steps)  # the candidate is the cleaner one
    assert float(np.mean(near.within_margin)) > 0.99


def test_a_candidate_under_another_constitution_is_never_promoted():
    rng = np.random.default_rng(7)
    candidate, incumbent = paired_values(rng, effect=0.2, reps=200)
    for c, i in zip(candidate, incumbent):
        other = decide(CONFIG, Evidence(c, 10, STEPS, "a1b2c3d4e5f60718"), Evidence(i, 10, STEPS, "0f1e2d3c4b5a6978"))
        same = decide(CONFIG, Evidence(c, 10, STEPS, "0f1e2d3c4b5a6978"), Evidence(i, 10, STEPS, "0f1e2d3c4b5a6978"))
        assert same.promote and not other.promote
        assert other.failed == ["same_constitution"]
        assert "a1b2c3d4e5f60718" in other.reasons[3] and "0f1e2d3c4b5a6978" in other.reasons[3]


def test_decide_agrees_with_batch_checks():
    rng = np.random.default_rng(8)
    candidate, incumbent = paired_values(rng, effect=0.02, reps=50, units=30)
    kc, ki = rng.integers(0, 40, 50), rng.integers(0, 40, 50)
    checks = batch_checks(CONFIG, candidate - incumbent, kc, 10_000, ki, 10_000)
    for r in range(50):
        d = decide(CONFIG, Evidence(candidate[r], int(kc[r]), 10_000, "f"),
                   Evidence(incumbent[r], int(ki[r]), 10_000, "f"))
        assert d.lower_bound == pytest.approx(float(checks.lower_bound[r]), abs=1e-12)
        assert d.forbidden_upper_bound == float(checks.forbidden_upper_bound[r])
        assert d.forbidden_excess_upper_bound == float(checks.forbidden_excess_upper_bound[r])
        assert (d.checks["better"], d.checks["lawful"], d.checks["no_worse"]) == (
            bool(checks.better[r]), bool(checks.within_budget[r]), bool(checks.within_margin[r]))
        assert d.promote == bool(checks.passed[r])
        assert d.lower_bound == pytest.approx(d.difference.mean - CONFIG.z * d.difference.se, abs=1e-15)


# ------------------------------------------------------------------------------ Clopper-Pearson
GRID_N = [1, 2, 3, 5, 10, 37, 100, 1000, 10_000, 100_000, 1_000_000, 1_000_000_000]
GRID_DELTA = [0.5, 0.2, 0.1, 0.05, 0.025, 0.01, 1e-3, 1e-6]


def grid():
    for n in GRID_N:
        for k in sorted({0, 1, 2, n // 1000, n // 3, n // 2, n - 1, n} & set(range(n + 1)) if n < 10 else
                        {0, 1, 2, n // 1000, n // 3, n // 2, n - 1, n}):
            for delta in GRID_DELTA:
                yield k, n, delta


def test_clopper_pearson_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    k, n, delta = (np.array(column) for column in zip(*grid()))
    upper = np.array([clopper_pearson_upper(*point) for point in zip(k, n, delta)])
    lower = np.array([clopper_pearson_lower(*point) for point in zip(k, n, delta)])
    with np.errstate(all="ignore"):  # k = n (upper) and k = 0 (lower) are outside scipy's domain
        scipy_upper = np.where(k == n, 1.0, stats.beta.ppf(1.0 - delta, k + 1, np.maximum(n - k, 1)))
        scipy_lower = np.where(k == 0, 0.0, stats.beta.ppf(delta, np.maximum(k, 1), n - k + 1))
    error = np.maximum(np.abs(upper - scipy_upper), np.abs(lower - scipy_lower))
    worst = int(np.argmax(error))
    assert error[worst] <= 1e-9, (k[worst], n[worst], delta[worst], upper[worst], scipy_upper[worst])
    assert np.sum(k == 0) >= 50 and np.sum(k == n) >= 50
    print(f"{k.size} (k, n, delta): largest difference from scipy.stats.beta.ppf {error[worst]:.2e}")


def test_clopper_pearson_closed_forms_and_symmetry():
    n = np.array(GRID_N)
    for delta in GRID_DELTA:
        assert np.all(clopper_pearson_upper(n, n, delta) == 1.0) and np.all(clopper_pearson_lower(0, n, delta) == 0.0)
        # (1 - p)^n = delta at k = 0; p^n = delta at k = n
        np.testing.assert_allclose(clopper_pearson_upper(0, n, delta), 1.0 - delta ** (1.0 / n), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(clopper_pearson_lower(n, n, delta), delta ** (1.0 / n), rtol=1e-12)
    for k, n, delta in grid():
        lower, upper = clopper_pearson_lower(k, n, delta), clopper_pearson_upper(k, n, delta)
        assert lower == pytest.approx(1.0 - clopper_pearson_upper(n - k, n, delta), abs=1e-13)
        assert lower <= k / n <= upper


def test_clopper_pearson_solves_its_defining_equation():
    """P(Binomial(n, UCB) <= k) = delta, the binomial tail summed in plain Python."""
    for k, n, delta in [(1, 10, 0.05), (3, 37, 0.01), (20, 1000, 0.1), (0, 50, 0.2), (99, 100, 0.05)]:
        p = clopper_pearson_upper(k, n, delta)
        tail = sum(math.comb(n, i) * p ** i * (1.0 - p) ** (n - i) for i in range(k + 1))
        assert tail == pytest.approx(delta, rel=1e-10)


def test_betainc_agrees_with_scipy():
    special = pytest.importorskip("scipy.special")
    for a, b in [(1.0, 1.0), (0.5, 3.0), (4.0, 34.0), (30.0, 1000.0), (1e4, 1e4), (3.0, 1e9), (1e6, 1e9)]:
        mean, sd = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
        for x in [0.0, 1e-12, mean - 2 * sd, mean, mean + sd, mean + 4 * sd, 0.5, 1.0]:
            if 0.0 <= x <= 1.0:
                assert gate.betainc(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-7, abs=1e-14)


def binomial_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    log = (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
           + k * math.log(p) + (n - k) * math.log1p(-p))
    return np.exp(log)


@pytest.mark.parametrize("p, n", [(0.001, 5000), (0.01, 1000), (0.02, 200), (0.3, 50), (0.9, 30)])
def test_clopper_pearson_covers_the_rate(p, n):
    rng = np.random.default_rng(int(1e6 * p) + n)
    k = rng.binomial(n, p, REPS)
    upper, lower = clopper_pearson_upper(k, n, DELTA), clopper_pearson_lower(k, n, DELTA)
    assert np.mean(upper >= p) >= 1.0 - DELTA - slack(DELTA)
    assert np.mean(lower <= p) >= 1.0 - DELTA - slack(DELTA)
    # exactly: the probability of the k whose bound covers p (k with probability below 1e-16
    # are left out, which can only lower the sum)
    pmf = binomial_pmf(n, p)
    ks = np.flatnonzero(pmf > 1e-16)
    assert float(np.sum(pmf[ks][clopper_pearson_upper(ks, n, DELTA) >= p])) >= 1.0 - DELTA
    assert float(np.sum(pmf[ks][clopper_pearson_lower(ks, n, DELTA) <= p])) >= 1.0 - DELTA


def test_clopper_pearson_takes_arrays():
    k = np.array([[0, 1], [2, 10]])
    upper = clopper_pearson_upper(k, 10, 0.05)
    assert upper.shape == (2, 2) and upper[1, 1] == 1.0
    assert upper[0, 1] == clopper_pearson_upper(1, 10, 0.05)
    assert isinstance(clopper_pearson_upper(1, 10, 0.05), float)
    for bad in [dict(k=-1, n=10), dict(k=11, n=10), dict(k=0, n=0), dict(k=1.5, n=10)]:
        with pytest.raises(ValueError):
            clopper_pearson_upper(bad["k"], bad["n"], 0.05)
    with pytest.raises(ValueError, match="delta"):
        clopper_pearson_upper(1, 10, 1.0)


# ------------------------------------------------------------------------------ the API
def test_the_decision_records_its_reasons_either_way():
    rng = np.random.default_rng(9)
    candidate, incumbent = paired_values(rng, effect=0.1, reps=1, units=40)
    good = decide(CONFIG, Evidence(candidate[0], 5, STEPS, "fp"), Evidence(incumbent[0], 5, STEPS, "fp"))
    bad = decide(CONFIG, Evidence(incumbent[0], 5_000, STEPS, "fp2"), Evidence(candidate[0], 5, STEPS, "fp"))
    assert good.promote and good.failed == [] and len(good.reasons) == 4
    assert [r.split(":")[0] for r in good.reasons] == ["better", "lawful", "no worse", "same constitution"]
    assert not bad.promote and bad.failed == ["better", "lawful", "no_worse", "same_constitution"]
    assert [r.split(":")[0] for r in bad.reasons] == ["not better", "unlawful", "worse", "another constitution"]
    for decision in (good, bad):
        record = json.loads(json.dumps(decision.as_dict(), allow_nan=False))
        assert record["promote"] == decision.promote and record["reasons"] == decision.reasons
        assert record["delta"] == DELTA and record["n_units"] == 40
        assert record["lower_bound"] == decision.lower_bound
        assert record["forbidden_upper_bound"] == decision.forbidden_upper_bound
    assert "95%" in good.reasons[0] and "97.5%" in good.reasons[2]


def test_config_refuses_what_it_cannot_mean():
    assert GateConfig(0.05, 0, 0).budget == 0.0
    cases = [((0.0, 0.01, 0.0), r"delta=0\.0 must be in \(0, 1\).*0\.05"), ((1.0, 0.01, 0.0), "delta"),
             ((-0.1, 0.01, 0.0), "delta"), ((float("nan"), 0.01, 0.0), "delta.*finite"),
             (("0.05", 0.01, 0.0), "delta.*real number"), ((True, 0.01, 0.0), "delta.*real number"),
             ((0.05, -0.01, 0.0), r"budget=-0\.01 must be >= 0.*e\.g\. 0\.01"),
             ((0.05, float("inf"), 0.0), "budget.*finite"), ((0.05, 0.01, -1.0), r"margin=-1\.0 must be >= 0")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            GateConfig(*args)


def test_evidence_and_decide_refuse_what_cannot_be_compared():
    values = np.zeros(8)
    for kwargs, message in [(dict(values=[]), "empty"), (dict(values=[0.0, np.nan]), "non-finite"),
                            (dict(violations=11), r"violations=11 must be in \[0, steps=10\]"),
                            (dict(steps=0), "steps=0 must be >= 1"), (dict(violations=1.0), "integer"),
                            (dict(fingerprint=""), "fingerprint"), (dict(fingerprint=None), "fingerprint")]:
        with pytest.raises(ValueError, match=message):
            Evidence(**{**dict(values=values, violations=0, steps=10, fingerprint="f"), **kwargs})
    evidence = Evidence(values, np.int64(0), 10, "f")
    assert isinstance(evidence.violations, int) and evidence.rate == 0.0
    with pytest.raises(ValueError, match="8 and 6 values"):
        decide(CONFIG, evidence, Evidence(np.zeros(6), 0, 10, "f"))
    with pytest.raises(ValueError, match="at least 2 units"):
        decide(CONFIG, Evidence([1.0], 0, 10, "f"), Evidence([0.0], 0, 10, "f"))
    with pytest.raises(ValueError, match="even count"):
        decide(CONFIG, Evidence(np.zeros(7), 0, 10, "f"), Evidence(np.zeros(7), 0, 10, "f"), antithetic=True)
    with pytest.raises(ValueError, match="GateConfig"):
        decide({"delta": 0.05}, evidence, evidence)
    with pytest.raises(ValueError, match="at least 2 units"):
        batch_checks(CONFIG, np.zeros((5, 1)), 0, 10, 0, 10)


def test_the_gate_imports_no_scipy_and_no_learner():
    tree = ast.parse((REPO / "aligned_rl" / "gate.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "functools", "math", "numbers", "statistics", "numpy",
                        "aligned_rl.intelligence"}, imported


def test_the_docs_example_runs_as_written():
    page = (REPO / "docs" / "gate.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", page, re.S | re.M)
    pairs = [(code, shown) for (kind, code), (next_kind, shown) in zip(blocks, blocks[1:])
             if kind == "python" and next_kind == "text"]
    assert pairs, "docs/gate.md shows a Python example followed by its output"
    for code, shown in pairs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "docs/gate.md", "exec"), {"__name__": "__docs__"})
        assert out.getvalue() == shown
