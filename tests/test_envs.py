"""The registry and the gymnax adapter."""

import jax
import jax.numpy as jnp
import pytest

import aligned_rl.envs as envs
from aligned_rl.envs.registry import broadcast_params


def test_cartpole_is_registered_with_its_constitution():
    env, params = envs.make("CartPole-v1")
    assert env.num_actions == 2 and params.max_steps_in_episode == 500
    assert envs.constitution("CartPole-v1", "safe_zone").name == "safe_zone"
    assert envs.constitution("CartPole-v1", "none").is_empty
    assert "CartPole-v1" in envs.list_envs()


def test_any_discrete_gymnax_env_can_be_named():
    env, params = envs.make("Acrobot-v1")
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (6,)
    batch = broadcast_params(env, jax.random.PRNGKey(0), 5)
    assert jax.tree.leaves(batch.params)[0].shape[0] == 5
    assert batch.bits.shape == (5,) and float(batch.bits.sum()) == 0.0
    env2, sampled = envs.sample("Acrobot-v1", jax.random.PRNGKey(0), 3)
    assert env2.name == env.name and sampled.bits.shape == (3,)


def test_continuous_and_unknown_envs_are_refused():
    with pytest.raises(ValueError, match="discrete action set"):
        envs.make("Pendulum-v1")
    with pytest.raises(KeyError, match="unknown environment"):
        envs.make("NoSuchEnv-v0")
    with pytest.raises(KeyError, match="ships no constitution"):
        envs.constitution("Acrobot-v1", "safe_zone")


def test_vmapped_step_over_params_equals_a_loop():
    env, params = envs.make("CartPole-v1")
    n = 3
    batch = jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * n), params)
    batch = batch.replace(force_mag=jnp.array([5.0, 10.0, 20.0]))
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    obs, state = jax.vmap(env.reset)(keys, batch)
    actions = jnp.array([1, 1, 1])
    vobs, *_ = jax.vmap(env.step)(keys, state, actions, batch)
    for i in range(n):
        p_i = jax.tree.map(lambda x: x[i], batch)
        s_i = jax.tree.map(lambda x: x[i], state)
        o_i, *_ = env.step(keys[i], s_i, actions[i], p_i)
        assert jnp.allclose(o_i, vobs[i])
    assert not jnp.allclose(vobs[0], vobs[2])  # different params, different dynamics
