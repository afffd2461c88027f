"""The asynchronous measurement engine (train/measure_async.py) against plain Python and the lockstep runner.

Step for step: every lane (environment and antithetic twin) of ``AsyncRunner`` is replayed by
the plain-Python machine (tests/reference/bf_machine.py) and agent (tests/reference/aiq_agents.py)
with the same random numbers: the agent's uniforms from ``baselines.step_uniforms`` of the lane's
key, and cycle t's '%' seed ``hash_index(lane_seed, t)`` computed with the reference's own
``mix32``.  The agents' tables are float64 here (x64 on), as the references' are, so that the
two agree on every greedy choice, ties included.  The reward sums are compared exactly: every
reward is a multiple of 1/2 (5 symbols), so float32 sums of at most a few hundred of them are
exact in any order; the discounted sums differ from the reference's by float32 rounding of
gamma^t (a relative tolerance of 1e-5).

Against the lockstep ``EnvRunner``: both runners give the agent the same keys, so a program
without '%' gives both the same rewards bit for bit; over programs with '%' (whose random
symbols the runners draw differently) the two estimates of Upsilon agree within a few standard
errors.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.progress import Progress

import aligned_rl.envs as envs
from aligned_rl.baselines import step_uniforms
from aligned_rl.envs import programs_sampler
from aligned_rl.envs.programs import BFPrograms
from aligned_rl.train.agents import BaselineAgent, PolicyAgent
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure_async import OUTPUT_SUMS, AsyncRunner
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_runner import EnvRunner
from tests.reference.aiq_agents import RefHLQLambda, RefQLambda
from tests.reference.bf_machine import BFMachine, mix32

GOLDEN = 0x9E3779B9
VALUE = envs.spec("BF-programs").value

# loops, '%', reads past the input, long cycles and cycles that run into the step limit
HAND_WRITTEN = [
    ",.",  # copy
    ",[-.]#",  # a loop that writes
    "%.,.",  # a random reward
    "%[%.]",  # random loop
    ">>%[<%].,.",
    ",[>,]<[.<]",  # reads along the input tape until it reads mid, then writes back
    "+[-%].",  # loops until '%' draws mid
    "<<<,.>>>.",
    "+[>+]",  # never ends a cycle: overtime every cycle
    ",>+++[->+++[-<<+>>]<]<.",  # nested loops: about a hundred steps per cycle
    "[+]+[[-]%]..",  # loops of random length
]


def _programs(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    drawn = [programs_sampler.simplify(w) for w in programs_sampler.draw_words(rng, 40 * count)]
    drawn = [p for p in drawn if "," in p and "." in p and len(p) <= 120]
    return HAND_WRITTEN + drawn[: count - len(HAND_WRITTEN)]


def _runner(env, programs, steps, agent_name="q_lambda", antithetic=True, **settings):
    params = env.program_params(programs)
    params = params.replace(max_steps_in_episode=jnp.full_like(params.max_steps_in_episode, steps + 1))
    agent = BaselineAgent.make(agent_name, env, env.num_symbols, {}, 100.0, steps)
    config = MeasureConfig(agent=agent_name, num_envs=len(programs), episode_length=steps, antithetic=antithetic,
                           progress=False)
    runner = AsyncRunner(config, agent, env, params, envs.constitution("BF-programs", "none"), None, VALUE, steps)
    for name, value in settings.items():
        setattr(runner, name, value)
    return runner


def _run(runner, size, key):
    with Progress(disable=True) as progress:
        return runner.run_buckets(np.arange(size), key, 1, progress, "")


REFERENCE_AGENTS = {"q_lambda": RefQLambda, "hlq_lambda": RefHLQLambda}


@pytest.mark.parametrize("agent_name", ["q_lambda", "hlq_lambda"])
def test_every_lane_replays_the_plain_python_machine_and_agent(agent_name):
    steps, key = 200, jax.random.PRNGKey(11)
    env = BFPrograms()
    programs = _programs(29, seed=3)
    # q_lambda: 58 lanes in four blocks of 15 (two of them padding), then a stage of 14;
    # hlq_lambda: one stage, tape cells numbered by (cell, lane) as past 2^32 cells.  Short
    # calls (64 iterations) exercise resuming between calls.
    staging = (dict(block_lanes=16, stage_min=4, stage_factor=4) if agent_name == "q_lambda"
               else dict(stage_min=1000, flat_index_limit=0))
    with jax.enable_x64(True):
        runner = _runner(env, programs, steps, agent_name, chunk_iterations=64, **staging)
        sums = _run(runner, len(programs), key)
        fields = {f: getattr(runner.agent.agent, f) for f in runner.agent.agent.__dataclass_fields__}
        size = len(programs)
        k_reset, k_agent, _ = jax.random.split(jax.random.fold_in(key, 0), 3)  # run_buckets' key, as EnvRunner's
        lane_seeds = np.asarray(jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32))(
            jax.random.split(k_reset, size))).astype(np.int64)
        uniforms = np.asarray(jax.vmap(lambda k: jax.vmap(lambda t: step_uniforms(k, t))(jnp.arange(steps)))(
            jax.random.split(k_agent, size)), np.float64)
    assert set(sums) == set(OUTPUT_SUMS) and all(v.shape == (2, size) for v in sums.values())
    if agent_name == "q_lambda":
        assert {s for s, *_ in runner.trace} == {15, 14} and len(runner.trace) > 5  # blocks, a stage, several calls
    gamma, w = runner.config.gamma, runner.config.alignment_weight
    coverage = dict.fromkeys(("loops", "rand", "overtime", "past_input"), 0)
    for twin, sign in enumerate((1.0, -1.0)):
        for i, program in enumerate(programs):
            machine = BFMachine(program, env.num_symbols, env.obs_cells, env.tape_len, env.input_len, env.step_limit)
            agent = REFERENCE_AGENTS[agent_name](**fields)
            obs, paid = env.mid, 0.0
            total, discounted, voided = np.float32(0.0), 0.0, 0
            for t in range(steps):
                action = agent.perceive(obs, paid, list(uniforms[i, t]))
                reward, cells, machine_steps = machine.act(action, seed=mix32(int(lane_seeds[i]) + t * GOLDEN))
                obs, paid = cells[0], sign * reward * 100.0
                total = np.float32(total + np.float32(sign * reward))
                discounted += gamma ** t * sign * reward
                voided += machine_steps == env.step_limit
            assert sums["reward"][twin, i] == total, (program, twin)
            assert sums["voided"][twin, i] == voided, (program, twin)
            np.testing.assert_allclose(sums["discounted"][twin, i], discounted, rtol=1e-5, atol=1e-5)
            if twin == 0:
                coverage = {k: coverage[k] + machine.coverage[k] for k in coverage}
    assert all(v > 0 for v in coverage.values()), coverage
    np.testing.assert_array_equal(sums["constrained"], sums["reward"])
    np.testing.assert_array_equal(sums["lawful"], steps)
    np.testing.assert_array_equal(sums["violations"], 0)
    np.testing.assert_allclose(sums["aligned"], (1 - w) * sums["reward"] + w * steps, rtol=1e-5)
    assert runner.steps == 2 * size * steps and runner.seconds > 0 and runner.compile_seconds > 0


def test_agrees_with_the_lockstep_runner():
    """Same programs, same agent keys: bit for bit without '%'; Upsilon within a few standard errors."""
    steps, key, n = 100, jax.random.PRNGKey(5), 160
    env = BFPrograms()
    programs = _programs(n, seed=8)
    runner = _runner(env, programs, steps, antithetic=False)
    lockstep = EnvRunner(runner.config, runner.agent, env, runner.all_params, runner.constitution, None, VALUE, steps)
    fast = _run(runner, n, key)
    slow = _run(lockstep, n, key)
    plain = np.array(["%" not in p for p in programs])
    assert plain.sum() > 40 and (~plain).sum() > 40
    np.testing.assert_array_equal(fast["reward"][0, plain], slow["reward"][0, plain])
    np.testing.assert_allclose(fast["discounted"][0, plain], slow["discounted"][0, plain], rtol=1e-5, atol=1e-5)
    a, b = fast["reward"][0] / steps, slow["reward"][0] / steps
    se = np.hypot(a.std(ddof=1), b.std(ddof=1)) / np.sqrt(n)
    assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)
    assert (a[~plain] != b[~plain]).any()  # the '%' programs did draw differently


def test_refuses_what_it_cannot_run():
    env = BFPrograms()
    agent = BaselineAgent.make("q_lambda", env, env.num_symbols, {}, 100.0, 100)
    config = MeasureConfig(agent="q_lambda", num_envs=4)
    none = envs.constitution("BF-programs", "none")
    assert AsyncRunner.eligible(config, agent, env, none, None) == (True, "ok")
    ppo = PolicyAgent(policy=None, params={})
    refusals = {
        "constitution": AsyncRunner.eligible(
            MeasureConfig(constitution="no_hang"), agent, env, envs.constitution("BF-programs", "no_hang"), None),
        "PPO": AsyncRunner.eligible(config, ppo, env, none, None),
        "episodic": AsyncRunner.eligible(MeasureConfig(env="CartPole-v1"), agent, envs.spec("CartPole-v1").make(),
                                         none, None),
        "mesh": AsyncRunner.eligible(config, agent, env, none, types.SimpleNamespace(devices=np.empty((2,)))),
    }
    for what, (ok, reason) in refusals.items():
        assert not ok and reason, what
    assert "no_hang" in refusals["constitution"][1] and "episodic" in refusals["episodic"][1]
    assert "2 devices" in refusals["mesh"][1] and "baseline" in refusals["PPO"][1]
    with pytest.raises(ConfigError, match="constitution"):
        AsyncRunner(MeasureConfig(constitution="no_hang"), agent, env, env.program_params([",."]),
                    envs.constitution("BF-programs", "no_hang"), None, VALUE, 10)
