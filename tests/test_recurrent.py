"""The recurrent (RL^2) agent: memory cleared at episode starts, the loss replays the rollout
exactly, it learns to adapt within an episode where a memoryless policy cannot, and it is
measured (and resumed) like any other run."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import aligned_rl.envs as envs
from aligned_rl.envs.registry import EnvSpec, ParamBatch
from aligned_rl.train.config import ConfigError, load_config
from aligned_rl.train.loop import build, initial_state, load_run, train
from aligned_rl.constitution import Judgement
from aligned_rl.train.agents import load_agent
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import load_measure_config
from aligned_rl.train.measure_report import read_measurement, write_measurement
from aligned_rl.train.policies import RecurrentActorCritic
from tests.conftest import CARTPOLE, TINY, run_cli


@struct.dataclass
class _BanditState(environment.EnvState):
    time: int


@struct.dataclass
class _BanditParams(environment.EnvParams):
    good_arm: int = 0
    max_steps_in_episode: int = 16


class HiddenArmBandit(environment.Environment):
    """Two arms; the arm that pays 1 (the other pays 0) is a parameter the observation never
    shows.  Only an agent that remembers what it was paid can find it and stay on it."""

    @property
    def default_params(self):
        return _BanditParams()

    def step_env(self, key, state, action, params):
        state = _BanditState(time=state.time + 1)
        reward = (action == params.good_arm).astype(jnp.float32)
        return self.get_obs(state), state, reward, jnp.array(False), {}

    def reset_env(self, key, params):
        state = _BanditState(time=0)
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jnp.ones((1,), jnp.float32)

    @property
    def num_actions(self):
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)


def _sample_arms(env, key, n):
    arms = jax.random.bernoulli(key, 0.5, (n,)).astype(jnp.int32)
    params = _BanditParams(good_arm=arms, max_steps_in_episode=jnp.full((n,), 16, jnp.int32))
    return ParamBatch(params, jnp.ones((n,), jnp.float32))


if "HiddenArmBandit-test" not in envs.list_envs():
    envs.register(EnvSpec(name="HiddenArmBandit-test", make=HiddenArmBandit, sample_params=_sample_arms))

RL2 = ["ppo.network=rl2", "ppo.memory_size=16", "ppo.hidden_sizes=[16]"]


def test_memory_and_previous_inputs_are_cleared_where_an_episode_starts():
    net = RecurrentActorCritic(num_actions=3, hidden_sizes=(8,), memory_size=4)
    obs = jnp.arange(6.0).reshape(2, 3)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 4)), obs, jnp.array([-1, -1]), jnp.zeros(2),
                      jnp.ones(2, bool))
    used = (jnp.full((2, 4), 0.7), obs, jnp.array([2, 1]), jnp.array([0.5, -1.0]))
    fresh = (jnp.zeros((2, 4)), obs, jnp.array([-1, -1]), jnp.zeros(2))
    started = net.apply(params, *used, jnp.ones(2, bool))
    for a, b in zip(started, net.apply(params, *fresh, jnp.zeros(2, bool))):
        np.testing.assert_array_equal(a, b)
    carried = net.apply(params, *used, jnp.zeros(2, bool))
    assert not np.allclose(carried[1], started[1])  # memory, previous action and reward all enter


def test_the_loss_replays_the_rollout_exactly():
    """Re-running the network over the stored sequences from the rollout's first memory gives
    the logits the agent acted with, so the PPO ratio starts at 1."""
    setup = build(load_config(None, [*TINY, *RL2, "env.name=HiddenArmBandit-test", "env.num_envs=4",
                                  "env.episode_length=10"]))
    algo = setup.algo
    state = initial_state(setup)
    for _ in range(2):  # a second rollout starts from a carried, non-zero memory
        start = state.rollout.agent_state
        carry, rollout = algo.rollout(state.params).run(setup.env_params, setup.cparams, state.rollout, 16)
        state = state.replace(rollout=carry)
    assert np.abs(np.asarray(start.memory)).max() > 0
    logits, values, _ = algo.policy.replay(state.params, start, rollout.obs, rollout.prev_reward, rollout.first,
                                           rollout.action)
    np.testing.assert_allclose(logits, rollout.logits, rtol=1e-5, atol=1e-6)
    assert bool(rollout.first[1:].any())  # episodes of 10 steps: starts inside the rollout too


def test_antithetic_training_pays_the_twins_the_negated_reward():
    """``env.antithetic``: half the environments are drawn, the other half are their twins,
    whose reward the learner (and the policy's reward input) sees negated."""
    setup = build(load_config(None, [*TINY, *RL2, "env.name=HiddenArmBandit-test", "env.num_envs=8",
                                  "env.episode_length=10", "env.antithetic=true"]))
    arms = np.asarray(setup.env_params.good_arm)
    np.testing.assert_array_equal(arms[:4], arms[4:])
    algo = setup.algo
    state = initial_state(setup)
    _, steps = algo.rollout(state.params).run(setup.env_params, setup.cparams, state.rollout, 12)
    reward, paid = np.asarray(steps.reward), np.asarray(steps.paid)
    np.testing.assert_array_equal(paid[:, :4], reward[:, :4])
    np.testing.assert_array_equal(paid[:, 4:], -reward[:, 4:])
    assert reward[:, 4:].any()  # some twin was paid, so the negation was seen
    np.testing.assert_array_equal(np.asarray(steps.prev_reward)[1:], paid[:-1])  # the policy's reward input
    with pytest.raises(ConfigError, match="cannot tell apart"):
        load_config(None, [*TINY, "env.antithetic=true"])
    with pytest.raises(ConfigError, match="must be even"):
        load_config(None, [*TINY, *RL2, "env.num_envs=5", "ppo.num_minibatches=1", "env.antithetic=true"])


def test_rl2_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="minibatches split the environments"):
        load_config(None, [*TINY, *RL2, "env.num_envs=6", "ppo.num_minibatches=4", "ppo.num_steps=8"])
    with pytest.raises(ConfigError, match="ppo.network"):
        load_config(None, ["ppo.network=lstm"])
    with pytest.raises(ConfigError, match="invariances"):
        build(load_config(None, [*TINY, *RL2, "env.name=FairHiring", "constitution.name=fair_hiring"]))


@pytest.mark.slow
def test_rl2_learns_to_adapt_where_a_memoryless_policy_cannot(tmp_path):
    """On the hidden-arm bandit a memoryless policy earns 0.5 per step at best (it cannot tell
    the arms apart); an agent that remembers what it was paid earns close to 1."""
    common = ["env.name=HiddenArmBandit-test", "env.num_envs=64", "ppo.num_steps=16", "ppo.num_minibatches=4",
              "ppo.update_epochs=4", "ppo.total_timesteps=262144", "ppo.lr=3e-3", "ppo.ent_coef=0.0",
              "constitution.name=none", "alignment.divergence=none", "run.updates_per_chunk=32",
              "run.checkpoint_every=128", "run.progress=false", "run.tensorboard=false", "run.plots=false"]
    returns = {}
    for network in ("rl2", "mlp"):
        extra = [*RL2, "ppo.memory_size=32"] if network == "rl2" else ["ppo.hidden_sizes=[16]"]
        summary = train(load_config(None, [*common, *extra, f"run.dir={tmp_path / network}"]))
        returns[network] = summary["final_episode_return"] / 16
    # the run's 64 environments are drawn once: a memoryless policy can at best always pull
    # the arm that is good in most of them
    arms = np.asarray(build(load_config(None, [*common, *RL2])).env_params.good_arm)
    memoryless_best = max(arms.mean(), 1 - arms.mean())
    assert returns["mlp"] < memoryless_best + 0.05, (returns, memoryless_best)
    # the best an agent can do: a coin flip on the first pull, the good arm from then on (0.97)
    assert returns["rl2"] > max(0.9, memoryless_best + 0.2), (returns, memoryless_best)


@pytest.mark.slow
def test_rl2_run_resumes_bit_exact_and_is_measured_as_an_adaptive_agent(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = [*TINY, *RL2, "env.num_envs=8", "ppo.num_minibatches=2", "ppo.total_timesteps=1024"]
    assert run_cli("train", "--config", CARTPOLE, *args, f"run.dir={whole}").returncode == 0
    r = run_cli("train", "--config", CARTPOLE, *args, f"run.dir={split}", "run.stop_at_update=4")
    assert r.returncode == 0, r.stderr
    assert run_cli("train", "--resume", str(split), "run.stop_at_update=0").returncode == 0
    a, b = load_run(whole)[1], load_run(split)[1]
    assert int(a.update) == int(b.update) == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):  # memory and previous inputs included
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # a checkpoint whose state does not match what the config builds is refused with a reason
    mismatched = tmp_path / "mismatched"
    shutil.copytree(whole, mismatched)
    saved = (mismatched / "config.yaml").read_text()
    (mismatched / "config.yaml").write_text(saved.replace("network: rl2", "network: mlp").replace(
        "memory_size: 16", "memory_size: 128"))
    with pytest.raises(ConfigError, match="incompatible version"):
        load_run(mismatched)

    measured = measure(load_measure_config(None, [
        f"agent={whole}", "env=CartPole-v1", "num_envs=8", "chunk_steps=250", "progress=false",
        "constitution=safe_zone", "antithetic=false"]))
    report = measured.report
    write_measurement(measured, tmp_path / "measure")
    saved = read_measurement(tmp_path / "measure")
    assert saved.report["estimates"] == report["estimates"]
    np.testing.assert_array_equal(saved.per_env["forbidden_rate"], measured.per_env["forbidden_rate"])
    # CartPole pays 1 for every step the pole stays up, and an episode returns between 0 and 500:
    # an episode of L steps is worth (2 L - 500) / 500
    per_env = measured.per_env
    np.testing.assert_allclose(per_env["episode_value"], (2 * per_env["episode_length"] - 500) / 500, atol=1e-6)
    e = report["estimates"]["upsilon_episode_value"]
    assert e["n"] == 8 and e["mean"] == pytest.approx(per_env["episode_value"].mean(), abs=1e-12)
    # the forbidden rate is each environment's count of forbidden actions over its episode's steps
    counts = per_env["forbidden_rate"] * per_env["episode_length"]
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)
    assert report["estimates"]["forbidden_rate"]["mean"] == pytest.approx(per_env["forbidden_rate"].mean(), abs=1e-12)

    # measured as an adaptive agent: the agent measure runs acts on the rewards it is paid.  With
    # the same memory, observations and keys, being paid +1 or -1 for its last action changes its policy
    agent = load_agent(whole)
    env, env_params = envs.make("CartPole-v1")
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
    allowed = jnp.ones((4, 2), bool)
    verdict = Judgement(~allowed, allowed, allowed / 2.0, jnp.zeros(4, bool), jnp.zeros(4, bool))
    first, later = jnp.ones(4, bool), jnp.zeros(4, bool)
    state, _, _ = agent.act(agent.init(keys), obs, jnp.zeros(4), first, keys, verdict)  # the episode's first step
    _, _, paid = agent.act(state, obs, jnp.ones(4), later, keys, verdict)
    _, _, negated = agent.act(state, obs, -jnp.ones(4), later, keys, verdict)
    assert agent.adaptive and report["adaptive"]
    assert np.abs(np.asarray(paid) - np.asarray(negated)).min() > 1e-4, (paid, negated)
