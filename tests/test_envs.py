"""The registry and the gymnax adapter."""

import jax
import jax.numpy as jnp
import pytest

import aligned_rl.envs as envs
from aligned_rl import codes
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


def test_indexed_observations_is_declared_not_probed():
    env, params = envs.make("BF-programs")
    assert isinstance(env, envs.IndexedObservations) and env.num_observations == 5
    assert not isinstance(envs.make("CartPole-v1")[0], envs.IndexedObservations)
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    index = jax.jit(env.observation_index)(obs)
    assert index.shape == () and index.dtype == jnp.int32 and int(index) == env.mid
    with pytest.raises(TypeError):
        envs.IndexedObservations()


def test_truncated_gamma_is_the_bounded_gamma_over_a_whole_last_block():
    for k_max in range(1, 5):
        top = (1 << (k_max + 1)) - 1
        bounded = codes.bounded_gamma_bits(1, top)
        for m in range(1, top + 1):
            word = codes.truncated_gamma_word(m, k_max)
            assert codes.truncated_gamma_bits(m, k_max) == len(word) == bounded[m - 1]
            rest = iter(word + "1")
            assert codes.read_truncated_gamma(lambda k: "".join(next(rest) for _ in range(k)), k_max) == m
            assert "".join(rest) == "1"
    assert codes.elias_gamma_bits(5) == codes.truncated_gamma_bits(5, k_max=3) == 5
