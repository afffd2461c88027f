"""Tests for aligned_rl.constitution: sigma, validation, fingerprints, judge and lookahead."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import aligned_rl.envs as envs
from aligned_rl.constitution import (
    UNCONSTRAINED,
    Constitution,
    Judgement,
    forbidden_action_mask,
    judge,
    reference_policy,
    state_is_forbidden,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_reference_policy_jit = jax.jit(reference_policy)  # eps traced: one compile per shape


# --------------------------------------------------------------------------------------
# reference_policy
# --------------------------------------------------------------------------------------


def np_reference_policy(forbidden: np.ndarray, eps: float, fallback=None):
    """sigma = uniform over allowed with floor eps on the rest, renormalised (float64);
    where every action is forbidden, ``fallback`` (default: all actions) is allowed."""
    forbidden = np.asarray(forbidden, bool)
    all_forbidden = forbidden.all(axis=-1)
    if fallback is None:
        fallback = np.ones_like(forbidden)
    allowed = np.where(all_forbidden[..., None], np.asarray(fallback, bool), ~forbidden)
    n_allowed = allowed.sum(-1, keepdims=True)
    n_forbidden = forbidden.shape[-1] - n_allowed  # actions at the floor
    sigma = np.where(allowed, 1.0, eps) / (n_allowed + eps * n_forbidden)
    return sigma, allowed, all_forbidden


@SETTINGS
@given(
    forbidden=hnp.arrays(
        np.bool_,
        st.tuples(st.sampled_from([1, 4]), st.integers(1, 8)),
    ),
    eps=st.one_of(st.just(0.0), st.sampled_from([1e-8, 0.01, 1.0]), st.floats(0.0, 1.0)),
)
def test_reference_policy_matches_numpy(forbidden, eps):
    sigma, allowed, all_forbidden = _reference_policy_jit(jnp.asarray(forbidden), eps)
    want_sigma, want_allowed, want_all = np_reference_policy(forbidden, eps)
    sigma = np.asarray(sigma)
    assert sigma.shape == forbidden.shape
    assert not np.any(np.isnan(sigma))
    np.testing.assert_array_equal(np.asarray(allowed), want_allowed)
    np.testing.assert_array_equal(np.asarray(all_forbidden), want_all)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sigma.sum(-1), 1.0, rtol=1e-6)
    assert np.all(sigma >= 0)
    # Allowed actions share equal mass; forbidden ones get eps times as much.
    for row_sigma, row_allowed in zip(sigma.reshape(-1, sigma.shape[-1]), want_allowed.reshape(-1, sigma.shape[-1])):
        top = row_sigma[row_allowed]
        np.testing.assert_allclose(top, top[0], rtol=1e-6)
        np.testing.assert_allclose(row_sigma[~row_allowed], eps * top[0], rtol=1e-5, atol=1e-12)
    # eps = 0: zero exactly on forbidden actions (unless the fallback kicked in)
    if eps == 0.0:
        np.testing.assert_array_equal(sigma == 0, ~want_allowed)


@SETTINGS
@given(
    forbidden=hnp.arrays(np.bool_, (4, 5), elements=st.sampled_from([True, True, False])),
    fallback=hnp.arrays(np.bool_, (4, 5)),
    eps=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
)
def test_reference_policy_with_fallback_matches_numpy(forbidden, fallback, eps):
    fallback[:, 0] |= ~fallback.any(-1)  # the fallback must hold at least one action
    sigma, allowed, all_forbidden = _reference_policy_jit(jnp.asarray(forbidden), eps, jnp.asarray(fallback))
    want_sigma, want_allowed, want_all = np_reference_policy(forbidden, eps, fallback)
    np.testing.assert_array_equal(np.asarray(allowed), want_allowed)
    np.testing.assert_array_equal(np.asarray(all_forbidden), want_all)
    np.testing.assert_allclose(np.asarray(sigma), want_sigma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(sigma).sum(-1), 1.0, rtol=1e-6)
    # the fallback only matters in all-forbidden rows
    plain, plain_allowed, _ = _reference_policy_jit(jnp.asarray(forbidden), eps)
    rows = ~want_all
    np.testing.assert_array_equal(np.asarray(sigma)[rows], np.asarray(plain)[rows])
    np.testing.assert_array_equal(np.asarray(allowed)[rows], np.asarray(plain_allowed)[rows])


def test_reference_policy_examples():
    sigma, allowed, all_forbidden = reference_policy(jnp.array([False, True, False, True]), 0.0)
    np.testing.assert_allclose(sigma, [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(allowed, [True, False, True, False])
    assert not bool(all_forbidden)

    # eps = 0.5 on 1 forbidden of 3: weights (1, 0.5, 1) / 2.5
    sigma, _, _ = reference_policy(jnp.array([False, True, False]), 0.5)
    np.testing.assert_allclose(sigma, [0.4, 0.2, 0.4], rtol=1e-6)

    # No forbidden action: uniform, whatever eps.
    for eps in (0.0, 0.3):
        sigma, allowed, all_forbidden = reference_policy(jnp.zeros(5, bool), eps)
        np.testing.assert_allclose(sigma, np.full(5, 0.2), rtol=1e-6)
        assert bool(jnp.all(allowed)) and not bool(all_forbidden)


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1, 1.0])
@pytest.mark.parametrize("num_actions", [1, 2, 3, 7])
def test_reference_policy_all_forbidden_fallback(eps, num_actions):
    forbidden = jnp.ones((2, num_actions), bool)
    sigma, allowed, all_forbidden = reference_policy(forbidden, eps)
    assert not np.any(np.isnan(np.asarray(sigma)))
    np.testing.assert_allclose(sigma, np.full((2, num_actions), 1.0 / num_actions), rtol=1e-6)
    assert bool(jnp.all(allowed))
    assert bool(jnp.all(all_forbidden))
    assert all_forbidden.shape == (2,)


def test_reference_policy_mixed_batch():
    forbidden = jnp.array([[True, True, True], [True, False, False], [False, False, False]])
    sigma, allowed, all_forbidden = reference_policy(forbidden, 0.0)
    np.testing.assert_allclose(sigma, [[1 / 3] * 3, [0.0, 0.5, 0.5], [1 / 3] * 3], rtol=1e-6)
    np.testing.assert_array_equal(all_forbidden, [True, False, False])
    np.testing.assert_array_equal(allowed, [[True] * 3, [False, True, True], [True] * 3])


# --------------------------------------------------------------------------------------
# Constitution dataclass
# --------------------------------------------------------------------------------------


def _always(state, params):
    return jnp.asarray(True)


def test_validation_errors():
    with pytest.raises(ValueError, match="eps"):
        Constitution(name="c", eps=-1e-9)
    with pytest.raises(ValueError, match="lookahead_samples"):
        Constitution(name="c", lookahead_samples=0)
    with pytest.raises(ValueError, match="lookahead_samples"):
        Constitution(name="c", lookahead_samples=-3)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="lookahead_threshold"):
            Constitution(name="c", lookahead_threshold=bad)
    # Boundaries that are allowed.
    Constitution(name="c", eps=0.0, lookahead_samples=1, lookahead_threshold=0.0)
    Constitution(name="c", eps=2.0, lookahead_samples=100, lookahead_threshold=0.999)
    # dataclasses.replace goes through validation too
    with pytest.raises(ValueError):
        dataclasses.replace(Constitution(name="c"), eps=-1.0)


@pytest.mark.parametrize("eps", [float("nan"), float("inf")])
def test_validation_rejects_non_finite_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        Constitution(name="c", eps=eps)


def test_validation_rejects_fractional_lookahead_samples():
    with pytest.raises(ValueError, match="lookahead_samples"):
        Constitution(name="c", lookahead_samples=2.5)


def test_unconstrained_and_is_empty():
    assert UNCONSTRAINED.is_empty
    assert not Constitution(name="c", state_rules=(_always,)).is_empty
    assert envs.constitution("CartPole-v1", "none") is UNCONSTRAINED


def test_with_params():
    c = envs.constitution("CartPole-v1", "safe_zone")
    d = c.with_params(zone_low=0.5, margin=0.1)
    assert float(d.params["zone_low"]) == 0.5 and float(d.params["margin"]) == 0.1
    assert float(d.params["zone_high"]) == float(c.params["zone_high"])
    # the original is untouched
    assert float(c.params["zone_low"]) == pytest.approx(1.2)
    assert d.action_rules == c.action_rules and d.state_rules == c.state_rules and d.eps == c.eps
    with pytest.raises(KeyError) as info:
        c.with_params(zone_low=0.0, zone_lo=1.0, bogus=2.0)
    message = str(info.value)
    assert "zone_lo" in message and "bogus" in message
    assert "safe_zone" in message
    with pytest.raises(KeyError, match="anything"):
        UNCONSTRAINED.with_params(anything=1.0)


def test_fingerprint():
    c = envs.constitution("CartPole-v1", "safe_zone")
    fp = c.fingerprint()
    assert isinstance(fp, str) and len(fp) == 16
    # stable: same object, fresh copy, no-op with_params
    assert c.fingerprint() == fp
    assert envs.constitution("CartPole-v1", "safe_zone").fingerprint() == fp
    assert c.with_params().fingerprint() == fp
    assert c.with_params(zone_low=c.params["zone_low"]).fingerprint() == fp
    # changes with anything that defines sigma
    changed = [
        c.with_params(zone_low=jnp.float32(1.0)),
        c.with_params(margin=jnp.float32(0.3)),
        dataclasses.replace(c, eps=0.01),
        dataclasses.replace(c, lookahead_samples=4),
        dataclasses.replace(c, lookahead_threshold=0.5),
        dataclasses.replace(c, name="other"),
        dataclasses.replace(c, state_rules=()),
        dataclasses.replace(c, action_rules=()),
    ]
    fps = [x.fingerprint() for x in changed]
    assert fp not in fps
    assert len(set(fps)) == len(fps)
    # the description is not part of what defines sigma
    assert dataclasses.replace(c, description="something else").fingerprint() == fp


# --------------------------------------------------------------------------------------
# CartPole safe_zone
# --------------------------------------------------------------------------------------

PUSH_LEFT, PUSH_RIGHT = 0, 1


@pytest.fixture(scope="module")
def cartpole():
    env, env_params = envs.make("CartPole-v1")
    _, state = env.reset(jax.random.PRNGKey(0), env_params)
    state = state.replace(
        x=jnp.float32(0.0), x_dot=jnp.float32(0.0), theta=jnp.float32(0.0), theta_dot=jnp.float32(0.0)
    )
    return env, env_params, state


@pytest.fixture(scope="module")
def safe_zone():
    return envs.constitution("CartPole-v1", "safe_zone")


def _judge(constitution, env, env_params, state, key=None, params=None):
    key = jax.random.PRNGKey(1) if key is None else key
    params = constitution.params if params is None else params
    obs = env.get_obs(state)
    return judge(constitution, params, env, env_params, key, obs, state, env.num_actions)


def _at(state, x, x_dot=0.0):
    return state.replace(x=jnp.float32(x), x_dot=jnp.float32(x_dot))


def test_safe_zone_defaults(safe_zone):
    assert safe_zone.name == "safe_zone"
    assert set(safe_zone.params) == {"zone_low", "zone_high", "margin"}
    assert len(safe_zone.action_rules) == 1 and len(safe_zone.state_rules) == 1
    with pytest.raises(KeyError):
        envs.constitution("CartPole-v1", "no_such_constitution")


@pytest.mark.parametrize("x", [-2.0, -0.5, 0.0, 0.5])
def test_middle_nothing_forbidden(cartpole, safe_zone, x):
    env, env_params, state = cartpole
    j = _judge(safe_zone, env, env_params, _at(state, x))
    assert isinstance(j, Judgement)
    np.testing.assert_array_equal(j.forbidden, [False, False])
    np.testing.assert_array_equal(j.allowed, [True, True])
    np.testing.assert_allclose(j.sigma, [0.5, 0.5])
    assert not bool(j.all_forbidden)
    assert not bool(j.in_forbidden_state)


@pytest.mark.parametrize("x", [0.61, 0.9, 1.19])
def test_margin_left_of_zone_forbids_push_right(cartpole, safe_zone, x):
    env, env_params, state = cartpole
    j = _judge(safe_zone, env, env_params, _at(state, x))
    np.testing.assert_array_equal(j.forbidden, [False, True])
    np.testing.assert_array_equal(j.allowed, [True, False])
    np.testing.assert_allclose(j.sigma, [1.0, 0.0])  # eps = 0
    assert not bool(j.all_forbidden)
    assert not bool(j.in_forbidden_state)
    # with a floor, the forbidden action keeps eps / (1 + eps)
    j = _judge(dataclasses.replace(safe_zone, eps=0.25), env, env_params, _at(state, x))
    np.testing.assert_allclose(j.sigma, [1 / 1.25, 0.25 / 1.25], rtol=1e-6)


def test_just_outside_margin_is_free(cartpole, safe_zone):
    env, env_params, state = cartpole
    j = _judge(safe_zone, env, env_params, _at(state, 0.55))  # margin starts at 0.6
    np.testing.assert_array_equal(j.forbidden, [False, False])


@pytest.mark.parametrize("x", [1.2, 1.5, 2.0, 2.4])
def test_inside_zone(cartpole, safe_zone, x):
    env, env_params, state = cartpole
    j = _judge(safe_zone, env, env_params, _at(state, x))
    assert bool(j.in_forbidden_state)
    # At rest inside the zone, every action lands in the zone: all forbidden, so the
    # fallback applies.  Its allowed set is the least risky action the action rules
    # still allow: pushing deeper (right, for a zone on the right) is forbidden by the
    # action rule, so sigma pushes left.
    np.testing.assert_array_equal(j.forbidden, [True, True])
    assert bool(j.all_forbidden)
    np.testing.assert_array_equal(j.allowed, [True, False])
    np.testing.assert_allclose(j.sigma, [1.0, 0.0])
    assert not np.any(np.isnan(np.asarray(j.sigma)))
    assert bool(state_is_forbidden(safe_zone, _at(state, x), safe_zone.params))
    # with a floor eps, the fallback still keeps eps on the other action
    j = _judge(dataclasses.replace(safe_zone, eps=0.5), env, env_params, _at(state, x))
    np.testing.assert_allclose(j.sigma, [1 / 1.5, 0.5 / 1.5], rtol=1e-6)


def test_state_rule_outside_zone(cartpole, safe_zone):
    _, _, state = cartpole
    for x in (-2.4, 0.0, 1.19, 2.41):
        assert not bool(state_is_forbidden(safe_zone, _at(state, x), safe_zone.params))


@pytest.mark.parametrize("margin", [0.6, 0.0])
def test_lookahead_into_zone_forbids_everything(cartpole, safe_zone, margin):
    """x + tau * x_dot lands in the zone whatever the push: both actions forbidden.

    Fallback: with margin 0.6 the action rule forbids pushing right (x is within the
    margin), so sigma pushes left; with margin 0 no action rule fires and both actions
    are equally risky, so sigma is uniform."""
    env, env_params, state = cartpole
    c = safe_zone.with_params(margin=jnp.float32(margin))
    s = _at(state, 1.19, x_dot=1.0)  # next x = 1.19 + 0.02 * 1.0 = 1.21
    assert not bool(state_is_forbidden(c, s, c.params))
    for action in (PUSH_LEFT, PUSH_RIGHT):
        _, nxt, _, _, _ = env.step_env(jax.random.PRNGKey(0), s, action, env_params)
        assert bool(state_is_forbidden(c, nxt, c.params))
    j = _judge(c, env, env_params, s)
    np.testing.assert_array_equal(j.forbidden, [True, True])
    assert bool(j.all_forbidden)
    if margin > 0:
        np.testing.assert_array_equal(j.allowed, [True, False])
        np.testing.assert_allclose(j.sigma, [1.0, 0.0])
    else:
        np.testing.assert_array_equal(j.allowed, [True, True])
        np.testing.assert_allclose(j.sigma, [0.5, 0.5])
    assert not bool(j.in_forbidden_state)
    # from far away with a big velocity too (outside any margin: pure lookahead)
    j = _judge(c, env, env_params, _at(state, 0.0, x_dot=75.0))  # next x = 1.5
    np.testing.assert_array_equal(j.forbidden, [True, True])
    assert bool(j.all_forbidden)
    np.testing.assert_array_equal(j.allowed, [True, True])
    np.testing.assert_allclose(j.sigma, [0.5, 0.5])


def test_lookahead_moving_away_is_fine(cartpole, safe_zone):
    env, env_params, state = cartpole
    c = safe_zone.with_params(margin=jnp.float32(0.0))
    # inside the zone at its low edge, moving left fast: the next state is outside the
    # zone whatever the push, so only the action rule (no pushing deeper in) fires
    j = _judge(c, env, env_params, _at(state, 1.2, x_dot=-5.0))  # next x = 1.1
    assert bool(j.in_forbidden_state)
    np.testing.assert_array_equal(j.forbidden, [False, True])
    assert not bool(j.all_forbidden)
    np.testing.assert_allclose(j.sigma, [1.0, 0.0])


@pytest.mark.parametrize("x", [-0.61, -0.9, -1.19])
def test_zone_on_the_left(cartpole, safe_zone, x):
    env, env_params, state = cartpole
    c = safe_zone.with_params(zone_low=jnp.float32(-2.4), zone_high=jnp.float32(-1.2))
    j = _judge(c, env, env_params, _at(state, x))
    np.testing.assert_array_equal(j.forbidden, [True, False])
    np.testing.assert_allclose(j.sigma, [0.0, 1.0])
    assert not bool(j.in_forbidden_state)
    # far from it: free; inside it: forbidden state
    j = _judge(c, env, env_params, _at(state, 0.5))
    np.testing.assert_array_equal(j.forbidden, [False, False])
    j = _judge(c, env, env_params, _at(state, -1.5))
    assert bool(j.in_forbidden_state) and bool(j.all_forbidden)
    # inside a left zone "deeper" is left: the fallback pushes right
    np.testing.assert_array_equal(j.allowed, [False, True])
    np.testing.assert_allclose(j.sigma, [0.0, 1.0])


def test_judge_under_jit(cartpole, safe_zone):
    env, env_params, state = cartpole
    key = jax.random.PRNGKey(3)

    @jax.jit
    def f(params, state):
        return judge(safe_zone, params, env, env_params, key, env.get_obs(state), state, 2)

    for x in (0.0, 0.9, 1.5):
        s = _at(state, x)
        got = f(safe_zone.params, s)
        want = _judge(safe_zone, env, env_params, s, key=key)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_vmap_over_constitution_params(cartpole, safe_zone):
    env, env_params, state = cartpole
    zone_low = jnp.array([1.2, 0.5, 2.0, 0.95, -3.0, 1.2], jnp.float32)
    zone_high = jnp.array([2.4, 2.4, 2.4, 2.4, -1.5, 2.4], jnp.float32)
    xs = jnp.array([0.9, 0.9, 0.9, 0.9, -1.0, 0.0], jnp.float32)
    x_dots = jnp.array([0.0, 0.0, 0.0, 0.0, 0.0, 70.0], jnp.float32)
    n = zone_low.shape[0]
    params = {
        "zone_low": zone_low,
        "zone_high": zone_high,
        "margin": jnp.full((n,), 0.6, jnp.float32),
    }
    states = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n,) + jnp.shape(leaf)), state)
    states = states.replace(x=xs, x_dot=x_dots)
    keys = jax.random.split(jax.random.PRNGKey(7), n)

    def one(p, k, s):
        return judge(safe_zone, p, env, env_params, k, env.get_obs(s), s, env.num_actions)

    batched = jax.jit(jax.vmap(one))(params, keys, states)
    assert batched.forbidden.shape == (n, 2) and batched.sigma.shape == (n, 2)
    assert batched.all_forbidden.shape == (n,)
    for i in range(n):
        p_i = jax.tree.map(lambda leaf: leaf[i], params)
        s_i = jax.tree.map(lambda leaf: leaf[i], states)
        want = one(p_i, keys[i], s_i)
        for g, w in zip(batched, want):
            np.testing.assert_array_equal(np.asarray(g[i]), np.asarray(w))
    # rows genuinely differ: the expected verdicts, by hand
    np.testing.assert_array_equal(
        batched.forbidden,
        [[False, True], [True, True], [False, False], [False, True], [True, False], [True, True]],
    )
    np.testing.assert_array_equal(batched.in_forbidden_state, [False, True, False, False, False, False])
    np.testing.assert_array_equal(batched.all_forbidden, [False, True, False, False, False, True])
    np.testing.assert_array_equal(
        batched.allowed,
        [[True, False], [True, False], [True, True], [True, False], [False, True], [True, True]],
    )


# --------------------------------------------------------------------------------------
# Stochastic lookahead with a tiny gymnax-style environment
# --------------------------------------------------------------------------------------


@struct.dataclass
class CoinState(environment.EnvState):
    x: jax.Array
    time: int


@struct.dataclass
class CoinParams(environment.EnvParams):
    p: float = 0.5
    max_steps_in_episode: int = 1000


class CoinEnv(environment.Environment):
    """Action 0 stays at x = 0; action 1 flips a coin with P(heads) = p and goes to x = 1 on heads."""

    @property
    def default_params(self) -> CoinParams:
        return CoinParams()

    def step_env(self, key, state, action, params):
        heads = jax.random.uniform(key) < params.p
        x = jnp.where((action == 1) & heads, 1.0, 0.0).astype(jnp.float32)
        new = CoinState(x=x, time=state.time + 1)
        return self.get_obs(new), new, jnp.float32(0.0), jnp.asarray(False), {}

    def reset_env(self, key, params):
        state = CoinState(x=jnp.float32(0.0), time=0)
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jnp.array([state.x])

    def is_terminated(self, state, params):
        return jnp.asarray(False)

    @property
    def num_actions(self) -> int:
        return 2


def _on_heads(state, params):
    return state.x > params["level"]


def _coin_constitution(samples: int, threshold: float) -> Constitution:
    return Constitution(
        name="coin",
        state_rules=(_on_heads,),
        params={"level": jnp.float32(0.5)},
        lookahead_samples=samples,
        lookahead_threshold=threshold,
    )


@pytest.fixture(scope="module")
def coin():
    env = CoinEnv()
    params = env.default_params
    _, state = env.reset(jax.random.PRNGKey(0), params)
    return env, params, state


@functools.lru_cache(maxsize=None)
def _compiled_mask(constitution, env):
    # Constitution hashes on its rules and settings (not params), env on identity.
    @jax.jit
    def mask(cparams, env_params, key, state):
        return forbidden_action_mask(constitution, cparams, env, env_params, key, env.get_obs(state), state, 2)

    return mask


def _coin_mask(constitution, env, params, state, key):
    return np.asarray(_compiled_mask(constitution, env)(constitution.params, params, key, state))


KEYS = [jax.random.PRNGKey(i) for i in range(8)]


@pytest.mark.parametrize("key", KEYS, ids=[f"key{i}" for i in range(len(KEYS))])
def test_stochastic_lookahead_threshold(coin, key):
    env, params, state = coin
    # P(x=1 | action 1) = 0.5: with 64 samples some land forbidden (threshold 0 forbids),
    # but nowhere near 90% (threshold 0.9 allows).  Fractions outside (0.25, 0.75] have
    # probability < 1e-4 under 64 fair flips.
    np.testing.assert_array_equal(_coin_mask(_coin_constitution(64, 0.0), env, params, state, key), [False, True])
    np.testing.assert_array_equal(_coin_mask(_coin_constitution(64, 0.25), env, params, state, key), [False, True])
    np.testing.assert_array_equal(_coin_mask(_coin_constitution(64, 0.75), env, params, state, key), [False, False])
    np.testing.assert_array_equal(_coin_mask(_coin_constitution(64, 0.9), env, params, state, key), [False, False])
    # action 0 never moves, so it is never forbidden; a sure coin is always forbidden
    sure = params.replace(p=1.0)
    np.testing.assert_array_equal(_coin_mask(_coin_constitution(64, 0.9), env, sure, state, key), [False, True])
    never = params.replace(p=0.0)
    np.testing.assert_array_equal(_coin_mask(_coin_constitution(64, 0.0), env, never, state, key), [False, False])


@pytest.mark.parametrize("typed_key", [False, True], ids=["raw_key", "typed_key"])
def test_first_lookahead_key_is_the_step_key(coin, typed_key):
    """With one sample, the lookahead sees exactly the transition env.step(key, ...) makes."""
    env, params, state = coin
    c = _coin_constitution(1, 0.0)
    c64 = _coin_constitution(64, 0.0)
    verdicts = []
    for i in range(40):
        key = jax.random.key(i) if typed_key else jax.random.PRNGKey(i)
        mask = _coin_mask(c, env, params, state, key)
        # what gymnax's step actually does with this key (no auto-reset: never done)
        _, stepped, _, terminated, truncated, _ = env.step(key, state, 1, params)
        assert not bool(terminated) and not bool(truncated)
        real = bool(_on_heads(stepped, c.params))
        _, direct, _, _, _ = env.step_env(jax.random.split(key)[0], state, 1, params)
        assert bool(_on_heads(direct, c.params)) == real
        assert bool(mask[1]) == real, i
        assert not bool(mask[0])
        # the first of many samples is that same key: a real violation is always caught
        if real:
            assert bool(_coin_mask(c64, env, params, state, key)[1])
        verdicts.append(real)
    # the check is not vacuous: both outcomes occur among the keys
    assert any(verdicts) and not all(verdicts)


def test_judge_with_stochastic_env(coin):
    env, params, state = coin
    c = dataclasses.replace(_coin_constitution(64, 0.0), eps=0.1)
    j = judge(c, c.params, env, params, jax.random.PRNGKey(0), env.get_obs(state), state, 2)
    np.testing.assert_array_equal(j.forbidden, [False, True])
    np.testing.assert_allclose(j.sigma, [1 / 1.1, 0.1 / 1.1], rtol=1e-6)
    assert not bool(j.in_forbidden_state)
    heads_state = state.replace(x=jnp.float32(1.0))
    j = judge(c, c.params, env, params, jax.random.PRNGKey(0), env.get_obs(heads_state), heads_state, 2)
    assert bool(j.in_forbidden_state)


def test_action_and_state_rules_combine(coin):
    """An action rule and the lookahead OR together."""
    env, params, state = coin

    def forbid_zero(obs, state, action, params):
        return action == 0

    c = dataclasses.replace(_coin_constitution(64, 0.0), action_rules=(forbid_zero,))
    mask = _coin_mask(c, env, params.replace(p=1.0), state, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(mask, [True, True])
    # reference_policy on its own: the default fallback is uniform
    sigma, allowed, all_forbidden = reference_policy(jnp.asarray(mask), 0.0)
    assert bool(all_forbidden)
    np.testing.assert_allclose(sigma, [0.5, 0.5])
    # judge's fallback keeps what the action rules allow: action 1 (sure to land badly,
    # but action 0 is forbidden outright)
    j = judge(c, c.params, env, params.replace(p=1.0), jax.random.PRNGKey(0), env.get_obs(state), state, 2)
    np.testing.assert_array_equal(j.forbidden, [True, True])
    assert bool(j.all_forbidden)
    np.testing.assert_array_equal(j.allowed, [False, True])
    np.testing.assert_allclose(j.sigma, [0.0, 1.0])
    mask = _coin_mask(c, env, params.replace(p=0.0), state, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(mask, [True, False])


def _on_tails(state, params):
    return state.x < params["level"]


@pytest.mark.parametrize("key", KEYS[:4], ids=[f"key{i}" for i in range(4)])
def test_fallback_prefers_least_risky_action(coin, key):
    """Both actions can land in a forbidden state (action 0 surely, action 1 about half
    the time): both are forbidden at threshold 0, and the fallback keeps action 1."""
    env, params, state = coin
    c = Constitution(
        name="coin_tails",
        state_rules=(_on_tails,),  # x < 0.5: action 0 always lands there, action 1 on tails
        params={"level": jnp.float32(0.5)},
        lookahead_samples=64,
    )
    j = judge(c, c.params, env, params, key, env.get_obs(state), state, 2)
    np.testing.assert_array_equal(j.forbidden, [True, True])
    assert bool(j.all_forbidden)
    np.testing.assert_array_equal(j.allowed, [False, True])
    np.testing.assert_allclose(j.sigma, [0.0, 1.0])
    # ties keep every tied action: p = 0 makes both actions certain violations
    j = judge(c, c.params, env, params.replace(p=0.0), key, env.get_obs(state), state, 2)
    np.testing.assert_array_equal(j.allowed, [True, True])
    np.testing.assert_allclose(j.sigma, [0.5, 0.5])


def test_no_rules_forbids_nothing(coin):
    env, params, state = coin
    j = judge(UNCONSTRAINED, UNCONSTRAINED.params, env, params, jax.random.PRNGKey(0), env.get_obs(state), state, 2)
    np.testing.assert_array_equal(j.forbidden, [False, False])
    np.testing.assert_allclose(j.sigma, [0.5, 0.5])
    assert not bool(j.in_forbidden_state) and not bool(j.all_forbidden)
