"""The learner: GAE semantics, seeds vmap, shield, Lagrange, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aligned_rl.train.config import load_config
from aligned_rl.train.loop import build, initial_state
from tests.conftest import CARTPOLE, TINY


def _setup(*overrides):
    return build(load_config(CARTPOLE, [*TINY, "run.devices=1", *overrides]))


def numpy_gae(rewards, values, next_values, terminated, done, gamma, lam):
    """Reference GAE written from the definition, one environment, plain loops."""
    T = len(rewards)
    adv = np.zeros(T)
    running = 0.0
    for t in reversed(range(T)):
        bootstrap = 0.0 if terminated[t] else next_values[t]
        delta = rewards[t] + gamma * bootstrap - values[t]
        running = delta + gamma * lam * (0.0 if done[t] else 1.0) * running
        adv[t] = running
    return adv


def test_gae_bootstraps_truncation_and_not_termination():
    setup = _setup("ppo.gamma=0.9", "ppo.gae_lambda=0.8")
    T, N = 6, 1
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=T).astype(np.float32)
    values = rng.normal(size=T).astype(np.float32)
    next_values = rng.normal(size=T).astype(np.float32)
    terminated = np.array([0, 0, 1, 0, 0, 0], bool)
    truncated = np.array([0, 0, 0, 0, 1, 0], bool)
    done = terminated | truncated
    col = lambda x: jnp.asarray(x)[:, None]  # noqa: E731
    adv, targets = setup.algo._advantages(col(rewards), col(values), col(next_values), col(terminated), col(done))
    expected = numpy_gae(rewards, values, next_values, terminated, done, 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(adv[:, 0]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets[:, 0]), expected + values, rtol=1e-5, atol=1e-5)
    # at the truncation step the target bootstraps V(final obs); at termination it does not
    assert expected[4] == pytest.approx(rewards[4] + 0.9 * next_values[4] - values[4], abs=1e-5)
    assert expected[2] == pytest.approx(rewards[2] - values[2] + 0.9 * 0.8 * 0 * expected[3], abs=1e-5)


def test_shield_never_takes_a_forbidden_action():
    # margin 3 puts every start state near the zone, so the rule binds on every step
    setup = _setup("alignment.shield=true", "constitution.params.zone_low=0.5", "constitution.params.margin=3.0")
    state = initial_state(setup)
    _, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(state, setup.env_params, setup.cparams, 3)
    assert float(metrics["forbidden_rate"].max()) == 0.0
    unshielded = _setup("constitution.params.zone_low=0.5", "constitution.params.margin=3.0")
    _, metrics = jax.jit(unshielded.algo.run_updates, static_argnums=3)(
        initial_state(unshielded), unshielded.env_params, unshielded.cparams, 3
    )
    assert float(metrics["forbidden_rate"].mean()) > 0.2  # about half the actions push right


def test_lagrange_raises_beta_while_the_budget_is_broken():
    setup = _setup(
        "alignment.lagrange.enabled=true", "alignment.lagrange.budget=0.0", "alignment.lagrange.lr=1.0",
        "alignment.beta=0.0", "constitution.params.zone_low=0.5", "constitution.params.margin=3.0",
    )
    state = initial_state(setup)
    state, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(state, setup.env_params, setup.cparams, 3)
    betas = np.asarray(metrics["beta"])
    assert betas[0] == 0.0 and np.all(np.diff(betas) > 0)
    # the increment is exactly lr * (measured rate - budget)
    assert float(state.beta) == pytest.approx(float(np.sum(metrics["forbidden_rate"])), rel=1e-5)


def test_divergence_in_the_loss_lowers_the_forbidden_rate():
    """Same seed, same data budget: with beta * D_proj in the loss violations fall; without, they do not."""
    base = ["constitution.params.zone_low=0.5", "constitution.params.margin=3.0", "ppo.total_timesteps=4096",
            "ppo.lr=3e-3", "env.num_envs=8"]
    rates = {}
    for name, extra in (("aligned", ["alignment.beta=5.0"]), ("unaligned", ["alignment.divergence=none"])):
        setup = _setup(*base, *extra)
        _, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(
            initial_state(setup), setup.env_params, setup.cparams, setup.config.num_updates
        )
        rates[name] = np.asarray(metrics["forbidden_rate"])
    assert rates["aligned"][-1] < 0.5 * rates["aligned"][0]
    assert rates["aligned"][-1] < 0.5 * rates["unaligned"][-1]


@pytest.mark.slow
def test_cartpole_learns():
    setup = build(load_config(CARTPOLE, ["ppo.total_timesteps=150000", "run.devices=1"]))
    state = initial_state(setup)
    _, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(
        state, setup.env_params, setup.cparams, setup.config.num_updates
    )
    returns = np.asarray(metrics["episode_return_sum"]) / np.maximum(np.asarray(metrics["episodes"]), 1)
    assert returns[-10:].mean() > 3 * returns[:5].mean()
    assert returns[-10:].mean() > 60  # a random policy scores about 22


def test_invariance_penalty_makes_the_policy_ignore_a_feature():
    """An invariance 'the decision must not depend on the sign of the pole angle' (obs[2])
    is measured as D_cf and driven down by the loss."""
    import dataclasses

    from aligned_rl.envs.cartpole import safe_zone

    def flip_angle(obs, params):
        return obs.at[2].multiply(-1.0)

    base = _setup("ppo.total_timesteps=8192", "ppo.lr=3e-3", "env.num_envs=8", "alignment.beta=20.0")
    constitution = dataclasses.replace(safe_zone(), invariances=(flip_angle,))
    from aligned_rl.train.ppo import AlignedPPO

    algo = AlignedPPO(base.config, base.env, base.env.default_params, constitution)
    state = algo.init(jax.random.PRNGKey(0), base.env_params)
    _, metrics = jax.jit(algo.run_updates, static_argnums=3)(
        state, base.env_params, constitution.params, base.config.num_updates
    )
    d_cf = np.asarray(metrics["counterfactual_divergence"])
    assert np.all(np.isfinite(d_cf)) and np.all(d_cf >= 0)
    assert d_cf[-1] < 0.5 * d_cf[: len(d_cf) // 4].max()


def test_environment_metrics_are_logged_beside_the_reward():
    from flax import struct
    from gymnax.environments import environment, spaces

    @struct.dataclass
    class S(environment.EnvState):
        time: int

    class Counting(environment.Environment):
        @property
        def default_params(self):
            return environment.EnvParams(max_steps_in_episode=10)

        def step_env(self, key, state, action, params):
            state = S(time=state.time + 1)
            metrics = {"hidden_score": jnp.float32(2.0) * action}
            return jnp.zeros(2), state, jnp.float32(1.0), jnp.array(False), {"metrics": metrics}

        def reset_env(self, key, params):
            return jnp.zeros(2), S(time=0)

        def action_space(self, params=None):
            return spaces.Discrete(2)

    from aligned_rl.constitution import UNCONSTRAINED
    from aligned_rl.envs.registry import broadcast_params
    from aligned_rl.train.ppo import AlignedPPO

    config = load_config(None, [*TINY, "constitution.name=none"])
    env = Counting()
    params = broadcast_params(env, None, config.env.num_envs).params
    algo = AlignedPPO(config, env, env.default_params, UNCONSTRAINED)
    _, metrics = jax.jit(algo.run_updates, static_argnums=3)(algo.init(jax.random.PRNGKey(0), params), params, {}, 2)
    # actions are near-uniform at initialisation: 2 * P(action 1) is about 1
    assert 0.7 < float(metrics["env/hidden_score"].mean()) < 1.3
