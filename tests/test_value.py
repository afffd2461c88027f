"""The value of an environment, as its family defines it: closed forms on two small families
(an episodic coin bandit, a continuing two-state chain), unbiased estimates whose intervals
cover the truth, and on CartPole a ranking that follows how well agents balance the pole."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import aligned_rl.envs as envs
from aligned_rl.envs import CONTINUING, EnvSpec, ParamBatch, episodic
from aligned_rl.intelligence import paired_difference, simple_estimate
from aligned_rl.train.agents import load_agent
from aligned_rl.train.config import ConfigError, load_config
from aligned_rl.train.loop import train
from aligned_rl.train.measure import draw_environments, measure
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_families import allot, family_code_bits, measure_families
from tests.conftest import CARTPOLE

T = 6  # steps per coin-bandit episode
P0 = (0.2, 0.6)  # the prior draws arm 0's chance to pay from these, each with probability 1/2
P1 = 0.5


@struct.dataclass
class _State(environment.EnvState):
    cell: int = 0


@struct.dataclass
class _Params(environment.EnvParams):
    p0: float = 0.2
    max_steps_in_episode: int = T


class CoinBandit(environment.Environment):
    """Arm a pays 1 with probability p_a (else 0); the episode is truncated after T pulls."""

    @property
    def default_params(self):
        return _Params()

    def step_env(self, key, state, action, params):
        p = jnp.where(action == 0, params.p0, P1)
        reward = jax.random.bernoulli(key, p).astype(jnp.float32)
        state = _State(time=state.time + 1)
        return jnp.zeros((1,), jnp.float32), state, reward, jnp.array(False), {}

    def reset_env(self, key, params):
        return jnp.zeros((1,), jnp.float32), _State(time=0)

    @property
    def num_actions(self):
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)


class TwoStateChain(environment.Environment):
    """Action 0 stays, action 1 moves to the other state; the state reached pays 1 (state 1) or 0."""

    @property
    def default_params(self):
        return _Params(max_steps_in_episode=1_000_000)

    def step_env(self, key, state, action, params):
        cell = jnp.where(action == 1, 1 - state.cell, state.cell)
        state = _State(time=state.time + 1, cell=cell)
        return jnp.zeros((1,), jnp.float32), state, cell.astype(jnp.float32), jnp.array(False), {}

    def reset_env(self, key, params):
        return jnp.zeros((1,), jnp.float32), _State(time=0, cell=jnp.int32(0))

    @property
    def num_actions(self):
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)


def _sample_coins(env, key, n):
    p0 = jnp.asarray(P0)[jax.random.bernoulli(key, 0.5, (n,)).astype(jnp.int32)]
    return ParamBatch(_Params(p0=p0, max_steps_in_episode=jnp.full((n,), T, jnp.int32)), jnp.ones((n,), jnp.float32))


if "CoinBandit-test" not in envs.registered_families():
    envs.register(EnvSpec(name="CoinBandit-test", make=CoinBandit, sample_params=_sample_coins,
                          value=episodic(lambda params: (0.0, params.max_steps_in_episode))))
    envs.register(EnvSpec(name="TwoStateChain-test", make=TwoStateChain, value=CONTINUING))


class ArmZero(struct.PyTreeNode):
    """Always pulls arm 0 (an agent of the protocol that ignores everything)."""

    name: str = struct.field(pytree_node=False, default="arm_zero")
    adaptive: bool = struct.field(pytree_node=False, default=False)
    shields: bool = struct.field(pytree_node=False, default=False)

    def init(self, keys):
        return ()

    def act(self, state, obs, reward, first, keys, verdict):
        return state, jnp.zeros(obs.shape[:1], jnp.int32), None


def _coverage(values: np.ndarray, truth: float, groups: int) -> tuple[int, float]:
    """Split i.i.d. per-environment values into ``groups`` independent estimates: how many of their
    95% intervals cover ``truth``, and the z-score of the pooled mean against it."""
    parts = np.split(values, groups)
    covered = sum(e.ci95[0] <= truth <= e.ci95[1] for e in map(simple_estimate, parts))
    pooled = simple_estimate(values)
    return covered, (pooled.mean - truth) / pooled.se


def test_episode_values_are_unbiased_and_cover_the_closed_form():
    """v = (2 R - T) / T with R the pulls that paid: E[v] = 2 E[p] - 1 over the prior and the arm
    the agent pulls (random: the mean of both arms; arm zero: arm 0's)."""
    truth = {"random": 2 * (np.mean(P0) + P1) / 2 - 1, "arm_zero": 2 * np.mean(P0) - 1}
    config = MeasureConfig(env="CoinBandit-test", num_envs=40 * 64, episodes=2, antithetic=False,
                           progress=False, chunk_steps=2 * T)
    sampled = draw_environments(config)
    for name, agent in (("random", None), ("arm_zero", ArmZero())):
        m = measure(dataclasses.replace(config, agent="random"), agent=agent, sampled=sampled)
        assert m.report["value"]["kind"] == "episodic" and m.report["value"]["steps_per_environment"] == 2 * T
        values = m.per_env["episode_value"]
        assert np.all(m.per_env["episodes"] == 2) and np.all(m.per_env["episode_length"] == T)
        # each episode's value is one of (2k - T) / T, k = 0..T; two episodes average them
        np.testing.assert_allclose(values * T, np.round(values * T), atol=1e-5)
        covered, z = _coverage(values, truth[name], 40)
        assert covered >= 33, (name, covered)  # 38 expected; fewer than 33 of 40 has probability < 0.2%
        assert abs(z) < 4, (name, z)


def test_continuing_value_is_the_average_reward_per_step():
    """From state 0 a random agent is in either state with probability 1/2 after every step, so
    its average reward per step has expectation 1/2 exactly; always staying earns 0."""
    config = MeasureConfig(env="TwoStateChain-test", agent="random", num_envs=40 * 32, episode_length=20,
                           chunk_steps=20, antithetic=False, progress=False)
    m = measure(config)
    assert m.report["value"]["kind"] == "continuing"
    covered, z = _coverage(m.per_env["average_reward"], 0.5, 40)
    assert covered >= 33 and abs(z) < 4, (covered, z)
    stay = measure(config, agent=ArmZero())
    assert stay.estimate().mean == 0.0 and stay.estimate().se == 0.0


def test_keys_of_the_other_kind_of_value_are_refused():
    with pytest.raises(ConfigError, match="episode_length=20 has no effect.*episodic"):
        measure(MeasureConfig(env="CoinBandit-test", agent="random", num_envs=4, episode_length=20, progress=False))
    with pytest.raises(ConfigError, match="episodes=3 has no effect.*continuing"):
        measure(MeasureConfig(env="TwoStateChain-test", agent="random", num_envs=4, episodes=3, progress=False))
    with pytest.raises(ConfigError, match="declares no value"):
        measure(MeasureConfig(env="Pendulum-v1", agent="random", num_envs=4, progress=False))


@pytest.mark.slow
def test_cartpole_values_rank_agents_by_how_long_they_balance(tmp_path):
    """A trained agent scores clearly above the same agent after one update and above the random
    agent: paired differences on the same 64 environments with their 95% intervals."""
    common = ["env.num_envs=8", "ppo.num_steps=128", "ppo.update_epochs=4", "ppo.num_minibatches=4",
              "run.updates_per_chunk=16", "run.checkpoint_every=64", "run.progress=false",
              "run.tensorboard=false", "run.plots=false"]
    runs = {}
    for name, steps in (("one_update", 1024), ("trained", 65536)):
        runs[name] = train(load_config(CARTPOLE, [*common, f"ppo.total_timesteps={steps}",
                                                  f"run.dir={tmp_path / name}"]))["run_dir"]
    config = MeasureConfig(env="CartPole-v1", constitution="safe_zone", num_envs=64, antithetic=False,
                           progress=False, chunk_steps=250)
    sampled = draw_environments(config)
    values = {"random": measure(dataclasses.replace(config, agent="random"), sampled=sampled).per_env["episode_value"]}
    for name, run in runs.items():
        values[name] = measure(config, agent=load_agent(run), sampled=sampled).per_env["episode_value"]
    assert values["random"].mean() < -0.8  # about 22 steps of 500
    for better, worse in (("trained", "one_update"), ("trained", "random")):
        diff = paired_difference(values[better], values[worse], 64, False)
        assert diff.ci95[0] > 0, (better, worse, diff)


# ------------------------------------------------------------------------------ over many families
def test_family_code_and_allotment():
    F = len(envs.registered_families())
    assert {family_code_bits(f) for f in envs.registered_families()} == {max(1, (F - 1).bit_length())}
    counts = allot(np.array([0.5, 0.25, 0.25]), 10)
    assert counts.sum() == 10 and counts.tolist() == [5, 3, 2]  # largest remainders: 2.5 -> the first
    assert allot(np.array([0.9, 0.05, 0.05]), 8).tolist() == [4, 2, 2]  # at least 2 each


def test_a_mixture_of_families_is_the_weighted_sum_of_their_values():
    """Equal weights over an episodic and a continuing family: arm zero is worth 2 E[p0] - 1 in the
    bandit and exactly 0 in the chain (it never moves), so 1/2 (2 E[p0] - 1) over the mixture."""
    truth = 0.5 * (2 * np.mean(P0) - 1)
    config = MeasureConfig(env="CoinBandit-test,TwoStateChain-test", num_envs=2 * 512, episode_length=10,
                           antithetic=False, progress=False)
    m = measure_families(config, agent=ArmZero())
    rows = {f["family"]: f for f in m.report["families"]}
    assert [rows[f]["weight"] for f in rows] == [0.5, 0.5] and m.report["weight_not_measured"] == 0.0
    e = m.estimate("upsilon")
    bandit = m.per_env["CoinBandit-test/episode_value"]
    assert e.mean == pytest.approx(0.5 * bandit.mean(), abs=1e-12)  # the chain's values are all 0
    assert e.se == pytest.approx(0.5 * bandit.std(ddof=1) / np.sqrt(bandit.size), rel=1e-9)
    assert e.ci95[0] <= truth <= e.ci95[1]


def test_a_mixture_names_the_families_an_agent_cannot_act_in(capsys):
    config = MeasureConfig(agent="q_lambda", env="BF-programs,TwoStateChain-test", num_envs=8, episode_length=20,
                           chunk_steps=20, progress=False)
    m = measure_families(config)
    rows = {f["family"]: f for f in m.report["families"]}
    assert rows["BF-programs"]["measured"] and not rows["TwoStateChain-test"]["measured"]
    assert "reads observations as an index" in rows["TwoStateChain-test"]["reason"]
    assert m.report["weight_not_measured"] == 0.5
    assert m.estimate("upsilon").mean == rows["BF-programs"]["estimates"]["upsilon_average_reward"]["mean"]
    with pytest.raises(ConfigError, match="no effect: no listed family is episodic"):
        measure_families(dataclasses.replace(config, episodes=2))
    with pytest.raises(ConfigError, match="not a registered family"):
        measure_families(dataclasses.replace(config, env="BF-programs,Pendulum-v1"))
