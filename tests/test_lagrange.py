"""The Lagrange multiplier: the PID controller against a plain-Python reference, in the learner too."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from aligned_rl.train import lagrange
from aligned_rl.train.config import ConfigError, LagrangeConfig, load_config
from aligned_rl.train.loop import build, initial_state

from tests.conftest import REPO, TINY

ISLAND = str(REPO / "configs" / "gridworld_island.yaml")
PID = LagrangeConfig(enabled=True, budget=0.05, lr=2.0, beta_max=10.0, kp=3.0, kd=5.0)


def reference_pid(measured: list[float], lag: LagrangeConfig, beta: float) -> list[float]:
    """Stooke et al. (2020), Algorithm 2, written out in plain Python: beta before each update."""
    integral, previous, betas = beta / lag.lr, None, [beta]
    for m in measured:
        delta = m - lag.budget
        integral = min(max(integral + delta, 0.0), lag.beta_max / lag.lr)
        rise = 0.0 if previous is None else max(0.0, m - previous)
        betas.append(min(max(lag.kp * delta + lag.lr * integral + lag.kd * rise, 0.0), lag.beta_max))
        previous = m
    return betas


def run_pid(measured: list[float], lag: LagrangeConfig, beta: float) -> list[float]:
    state, betas = lagrange.pid_start(lag, beta), [beta]
    step = jax.jit(lambda s, m: lagrange.pid_step(lag, s, m))
    for m in measured:
        b, state = step(state, np.float32(m))
        betas.append(float(b))
    return betas


def test_the_pid_multiplier_follows_the_reference():
    rng = np.random.default_rng(0)
    # a constraint violated, then met, then a spike: every term and both clips act
    measured = [*rng.uniform(0.1, 0.3, 40), *rng.uniform(0.0, 0.01, 120), 0.9, 0.0, *rng.uniform(0, 0.2, 10)]
    got, want = run_pid(measured, PID, 1.0), reference_pid(measured, PID, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert max(want) == PID.beta_max and min(want) == 0.0  # it hit both bounds
    assert want[161] > want[160] + PID.kd * 0.5  # the spike's rise moved it at once


def test_without_proportional_and_derivative_gains_it_is_the_integral_rule():
    lag = LagrangeConfig(enabled=True, budget=0.05, lr=2.0, beta_max=10.0)
    measured = np.random.default_rng(1).uniform(0, 0.4, 30)
    beta, integral = 0.5, []
    for m in measured:
        beta = float(lagrange.integral_step(lag, np.float32(beta), np.float32(m)))
        integral.append(beta)
    np.testing.assert_allclose(run_pid(list(measured), lag, 0.5)[1:], integral, rtol=1e-5, atol=1e-5)


def test_the_learner_adapts_beta_with_the_pid_rule_from_each_rollouts_forbidden_rate():
    overrides = ["alignment.lagrange.enabled=true", "alignment.lagrange.budget=0.05", "alignment.lagrange.lr=2.0",
                 "alignment.lagrange.beta_max=10.0", "alignment.lagrange.kp=3.0", "alignment.lagrange.kd=5.0"]
    setup = build(load_config(ISLAND, [*TINY, "env.num_envs=8", "run.devices=1", *overrides]))
    state = initial_state(setup)
    assert state.pid.shape == (2,)
    _, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(state, setup.env_params, setup.cparams, 6)
    measured = [float(x) for x in metrics["forbidden_rate"]]
    assert max(measured) > 0  # an untrained policy walks into the water
    want = reference_pid(measured, setup.config.alignment.lagrange, setup.config.alignment.beta)
    np.testing.assert_allclose(np.asarray(metrics["beta"]), want[:6], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides,message", [
    (["alignment.lagrange.kp=1"], "alignment.lagrange.kp=1.0 has no effect: the Lagrange rule is off"),
    (["alignment.lagrange.kd=1"], "alignment.lagrange.kd=1.0 has no effect"),
    (["alignment.lagrange.enabled=true", "alignment.lagrange.kp=-1"], "kp must be a finite number >= 0"),
    (["alignment.lagrange.enabled=true", "alignment.lagrange.kd=nan"], "kd must be a finite number >= 0"),
])
def test_a_pid_gain_that_does_nothing_or_is_out_of_range_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ISLAND, overrides)
