"""Constitutions for Acrobot-v1 and MountainCar-v0: rules on hand-built states, and what they do to PPO."""

from __future__ import annotations

import aligned_rl.envs.classic_control as cc
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aligned_rl.envs import registry
from aligned_rl.train.config import load_config
from aligned_rl.train.loop import build, initial_state
from tests.conftest import REPO

from aligned_rl.constitution import judge

ACROBOT_CONFIG = str(REPO / "configs" / "acrobot.yaml")
MOUNTAINCAR_CONFIG = str(REPO / "configs" / "mountaincar.yaml")

_judge = jax.jit(judge, static_argnums=(0, 2, 7))


def _verdict(name, cons, **fields):
    env, params = registry.make(name)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    state = state.replace(**{k: jnp.float32(v) for k, v in fields.items()})
    obs = env.get_obs(state)
    j = _judge(cons, cons.params, env, params, jax.random.PRNGKey(0), obs, state, env.num_actions)
    return env, params, state, j


def test_constitutions_are_registered_on_the_gymnax_names():
    assert set(registry.spec("Acrobot-v1").constitutions) == {"joint_speed_limits"}
    assert set(registry.spec("MountainCar-v0").constitutions) == {"left_fence"}
    assert registry.constitution("Acrobot-v1", "joint_speed_limits").state_rules
    assert registry.constitution("MountainCar-v0", "left_fence").action_rules


# --------------------------------------------------------------------------------- Acrobot


def test_acrobot_torque_along_a_fast_joint2_is_forbidden():
    cons = cc.joint_speed_limits()  # joint1_limit 5, joint2_limit 9
    _, _, _, j = _verdict("Acrobot-v1", cons, velocity_1=0.0, velocity_2=10.0)
    assert j.forbidden.tolist() == [False, False, True]  # +1 torque would spin joint 2 faster
    _, _, _, j = _verdict("Acrobot-v1", cons, velocity_1=0.0, velocity_2=-10.0)
    assert j.forbidden.tolist() == [True, False, False]
    _, _, _, j = _verdict("Acrobot-v1", cons, velocity_1=0.0, velocity_2=8.0)  # under the limit
    assert j.forbidden.tolist() == [False, False, False]
    assert not bool(j.in_forbidden_state)


def test_acrobot_fast_joint1_is_a_forbidden_state_and_the_lookahead_is_the_real_step():
    cons = cc.joint_speed_limits()
    _, _, _, j = _verdict("Acrobot-v1", cons, velocity_1=8.0, velocity_2=0.0)
    assert bool(j.in_forbidden_state)
    assert j.forbidden.tolist() == [True, True, True] and bool(j.all_forbidden)  # one step cannot brake 8 -> 5
    assert j.allowed.tolist() == [True, True, True]  # every action equally bad: sigma falls back to all
    # Over random states, the lookahead verdict equals stepping the environment by hand.
    env, params = registry.make("Acrobot-v1")
    n = 256
    k_v1, k_v2, k_ang = jax.random.split(jax.random.PRNGKey(1), 3)
    _, base = env.reset(jax.random.PRNGKey(0), params)
    states = jax.vmap(lambda v1, v2, ang: base.replace(velocity_1=v1, velocity_2=v2, joint_angle1=ang[0],
                                                       joint_angle2=ang[1]))(
        jax.random.uniform(k_v1, (n,), minval=-6.0, maxval=6.0),
        jax.random.uniform(k_v2, (n,), minval=-12.0, maxval=12.0),
        jax.random.uniform(k_ang, (n, 2), minval=-3.0, maxval=3.0),
    )
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    verdicts = jax.vmap(lambda k, s: _judge(cons, cons.params, env, params, k, env.get_obs(s), s, 3))(keys, states)

    def by_hand(key, s):
        nxt = jax.vmap(lambda a: env.step_env(jax.random.split(key)[0], s, a, params)[1])(jnp.arange(3))
        lands = jnp.abs(nxt.velocity_1) > 5.0
        along = (jnp.abs(s.velocity_2) >= 9.0) & (
            jnp.array([s.velocity_2 < 0, False, s.velocity_2 > 0]))
        return lands | along

    np.testing.assert_array_equal(np.asarray(verdicts.forbidden), np.asarray(jax.vmap(by_hand)(keys, states)))
    separated = np.asarray(verdicts.forbidden).any(-1) & ~np.asarray(verdicts.all_forbidden)
    assert separated.sum() > 0  # some states where the torque decides whether joint 1 crosses the limit


# ----------------------------------------------------------------------------- MountainCar


def test_mountaincar_fence_rules_on_hand_built_states():
    cons = cc.left_fence()  # fence -1.1, margin 0.2
    _, _, _, j = _verdict("MountainCar-v0", cons, position=-0.5, velocity=0.0)
    assert j.forbidden.tolist() == [False, False, False]
    # within the margin and at rest: the slope pulls right, nothing crosses; pushing left is forbidden
    _, _, _, j = _verdict("MountainCar-v0", cons, position=-1.0, velocity=0.0)
    assert j.forbidden.tolist() == [True, False, False] and j.sigma.tolist() == pytest.approx([0.0, 0.5, 0.5])
    # rolling left fast just before the fence: every action crosses it; the fallback keeps the
    # actions the action rule allows
    _, _, _, j = _verdict("MountainCar-v0", cons, position=-1.09, velocity=-0.03)
    assert j.forbidden.tolist() == [True, True, True] and bool(j.all_forbidden)
    assert j.allowed.tolist() == [False, True, True] and not bool(j.in_forbidden_state)
    # beyond the fence
    _, _, _, j = _verdict("MountainCar-v0", cons, position=-1.15, velocity=0.0)
    assert bool(j.in_forbidden_state)


# --------------------------------------------------------------------------------- training


def _train(config_path, *overrides):
    setup = build(load_config(config_path, ["run.devices=1", *overrides]))
    _, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(
        initial_state(setup), setup.env_params, setup.cparams, setup.config.num_updates)
    return jax.tree.map(np.asarray, metrics)


def _late_return(metrics, last):
    return float(metrics["episode_return_sum"][-last:].sum() / max(metrics["episodes"][-last:].sum(), 1))


def _random_acrobot_return(episodes=64):
    env, params = registry.make("Acrobot-v1")

    def episode(key):
        k_reset, key = jax.random.split(key)
        _, state = env.reset(k_reset, params)

        def body(carry, k):
            state, ret, done = carry
            k_act, k_step = jax.random.split(k)
            action = jax.random.randint(k_act, (), 0, 3)
            _, state, r, te, _ = env.step_env(k_step, state, action, params)
            return (state, ret + jnp.where(done, 0.0, r), done | te), None

        (_, ret, _), _ = jax.lax.scan(body, (state, 0.0, False), jax.random.split(key, 500))
        return ret

    return float(jnp.mean(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(0), episodes))))


ACROBOT_RUN = ["env.num_envs=32", "ppo.num_steps=128", "ppo.total_timesteps=131072"]


@pytest.mark.slow
def test_acrobot_ppo_learns_and_the_constitution_lowers_violations():
    """131k steps: both learners swing up far sooner than a random policy; the aligned one
    takes forbidden actions far less often (default limits of configs/acrobot.yaml)."""
    random_return = _random_acrobot_return()
    aligned = _train(ACROBOT_CONFIG, *ACROBOT_RUN)
    unaligned = _train(ACROBOT_CONFIG, *ACROBOT_RUN, "alignment.divergence=none")
    last = 8
    print("random", random_return, "aligned", _late_return(aligned, last), aligned["forbidden_rate"][-last:].mean(),
          "unaligned", _late_return(unaligned, last), unaligned["forbidden_rate"][-last:].mean())
    assert random_return < -400
    assert _late_return(aligned, last) > random_return + 150
    assert _late_return(unaligned, last) > random_return + 150
    assert aligned["forbidden_rate"][-last:].mean() < 0.5 * unaligned["forbidden_rate"][-last:].mean()


@pytest.mark.slow
def test_mountaincar_alignment_lowers_violations_within_a_few_updates():
    """PPO does not solve MountainCar within a test's budget (the reward is sparse; it stays at
    -200 for millions of steps here), so this test checks the constitution's effect instead of
    the return.  The fence is moved to -0.7 (margin 0.1), where an untrained car reaches it."""
    fence = ["constitution.params.fence=-0.7", "constitution.params.margin=0.1", "env.num_envs=16",
             "ppo.total_timesteps=65536", "ppo.hidden_sizes=[32,32]"]
    aligned = _train(MOUNTAINCAR_CONFIG, *fence)
    first, last = aligned["forbidden_rate"][0], aligned["forbidden_rate"][-8:].mean()
    print("forbidden rate: first update", first, "last 8", last, "out of bounds", aligned["forbidden_state_rate"][-8:])
    assert first > 0.02  # the near-uniform initial policy pushes left by the fence
    assert last < 0.25 * first
    assert aligned["forbidden_state_rate"][-8:].mean() < 0.5 * aligned["forbidden_state_rate"][:2].mean()
