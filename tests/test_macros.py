"""Tools as macro-actions (envs/macros.py): every primitive step of a macro is judged by the
constitution, so a tool is never a way around a rule; mining tools (improve/tools.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.cli import main
from aligned_rl.constitution import judge, shield, violates
from aligned_rl.envs.gridworld_core import DOWN, LEFT, RIGHT, UP, parse_layout
from aligned_rl.envs.gridworlds import GridWorld
from aligned_rl.envs.macros import MacroEnv, check_macros, macro_constitution, with_macros
from aligned_rl.improve.tools import episode_success, mine_macros, trajectories
from aligned_rl.train.agents import load_agent
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import MeasureConfig
from tests.conftest import REPO, TINY

ISLAND = "Gridworld-IslandNavigation"
ISLAND_YAML = str(REPO / "configs" / "gridworld_island.yaml")
A = 4  # the gridworld moves
KEY = jax.random.PRNGKey(0)


def _island(macros, rows, **fields):
    inner = GridWorld("island")
    cons = envs.constitution(ISLAND, "no_water")
    env, wrapped = with_macros(inner, cons, macros)
    return inner, cons, env, wrapped, parse_layout(rows, **fields)


def _wrapped_verdict(env, wrapped, params, obs, state):
    return judge(wrapped, wrapped.params, env, params, KEY, obs, state, env.num_actions)


def test_a_macro_stops_before_the_step_the_constitution_forbids():
    # right, right, right from (1, 1) would enter the water at (1, 4) on the third step
    inner, cons, env, wrapped, params = _island([[RIGHT, RIGHT, RIGHT], [RIGHT, DOWN]],
                                                ["#######", "#A  ~ #", "#     #", "#  G  #", "#######"])
    obs, state = env.reset(KEY, params)
    verdict = _wrapped_verdict(env, wrapped, params, obs, state)
    assert not verdict.forbidden[A + 0]  # its first primitive is allowed, so the macro is
    assert not violates(verdict, jnp.asarray(A + 0))  # and choosing it counts no violation
    obs, state, reward, terminated, truncated, info = env.step(KEY, state, A + 0, params)
    m = info["metrics"]
    assert tuple(np.asarray(state.inner.agent)) == (1, 3)  # stopped next to the water, never in it
    assert float(m["macro_stopped"]) == 1.0 and float(m["primitive_steps"]) == 2.0
    assert float(m["in_water"]) == 0.0 and not bool(terminated) and not bool(truncated)
    assert np.isclose(float(reward), 2 * -1 / 50)
    # the cached verdict now forbids the step into the water, and with it the macro that starts with it
    assert bool(state.forbidden[RIGHT]) and not bool(state.forbidden[DOWN])
    verdict = _wrapped_verdict(env, wrapped, params, obs, state)
    assert np.asarray(verdict.forbidden).tolist() == [False, False, False, True, True, True]


def test_the_agents_own_forbidden_choice_is_taken_and_counted_as_a_violation():
    inner, cons, env, wrapped, params = _island([[RIGHT, DOWN]], ["#####", "#A~ #", "#   #", "# G #", "#####"])
    obs, state = env.reset(KEY, params)
    verdict = _wrapped_verdict(env, wrapped, params, obs, state)
    assert bool(violates(verdict, jnp.asarray(A)))
    _, state, _, terminated, _, info = env.step(KEY, state, A, params)
    assert bool(terminated) and float(info["metrics"]["in_water"]) == 1.0  # the first primitive is the agent's act
    assert float(info["metrics"]["primitive_steps"]) == 1.0  # and the episode ended with it


def test_an_allowed_macro_equals_its_primitives_one_by_one():
    rows = ["########", "#A     #", "#      #", "#      #", "#    G #", "########"]
    macro = [DOWN, RIGHT, RIGHT, DOWN]
    inner, cons, env, wrapped, params = _island([macro], rows)
    obs, state = env.reset(KEY, params)
    _, after, reward, terminated, _, info = env.step(KEY, state, A, params)
    _, s = inner.reset(KEY, params)
    total, hidden = 0.0, 0.0
    for a in macro:
        _, s, r, _, i = inner.step_env(KEY, s, a, params)
        total, hidden = total + float(r), hidden + float(i["metrics"]["hidden_performance"])
    for got, want in zip(jax.tree.leaves(after.inner), jax.tree.leaves(s)):
        np.testing.assert_array_equal(got, want)
    assert np.isclose(float(reward), total) and np.isclose(float(info["metrics"]["hidden_performance"]), hidden)
    assert float(info["metrics"]["primitive_steps"]) == 4.0 and float(info["metrics"]["macro_stopped"]) == 0.0
    # a primitive action is exactly the inner step
    _, one, r1, _, _, _ = env.step(KEY, state, RIGHT, params)
    _, s1, r_inner, _, _ = inner.step_env(jax.random.split(KEY)[0], inner.reset(KEY, params)[1], RIGHT, params)
    np.testing.assert_array_equal(one.inner.agent, s1.agent)
    assert float(r1) == float(r_inner)


def test_wrapped_verdict_sigma_and_shield():
    # water right of the start: RIGHT is forbidden, and so is every macro that starts with it
    inner, cons, env, wrapped, params = _island([[RIGHT, DOWN], [DOWN, RIGHT], [LEFT, UP]],
                                                ["#####", "#A~ #", "#   #", "# G #", "#####"])
    obs, state = env.reset(KEY, params)
    inner_forbidden = np.asarray(judge(cons, cons.params, inner, params, KEY, obs, state.inner, A).forbidden)
    verdict = _wrapped_verdict(env, wrapped, params, obs, state)
    firsts = [UP, DOWN, LEFT, RIGHT, RIGHT, DOWN, LEFT]
    assert np.asarray(verdict.forbidden).tolist() == [bool(inner_forbidden[a]) for a in firsts]
    assert np.asarray(verdict.forbidden).tolist() == [False, False, False, True, True, False, False]
    assert np.isclose(float(verdict.sigma.sum()), 1.0) and verdict.sigma.shape == (A + 3,)
    eps_version = macro_constitution(dataclasses.replace(cons, eps=0.1), A, env.macros)
    sigma = _wrapped_verdict(env, eps_version, params, obs, state).sigma
    assert np.isclose(float(sigma.sum()), 1.0) and float(sigma[A]) < float(sigma[A + 1])
    logits = jnp.zeros((A + 3,)).at[A].set(10.0)  # a policy that prefers the forbidden macro
    picks = jax.vmap(lambda k: jax.random.categorical(k, shield(logits, verdict.allowed)))(jax.random.split(KEY, 512))
    assert not np.isin(np.asarray(picks), [RIGHT, A]).any()
    assert wrapped.fingerprint() == cons.fingerprint()  # the agent is held to the inner constitution


def test_the_episode_ends_inside_a_macro_and_resets_once():
    inner, cons, env, wrapped, params = _island([[RIGHT, RIGHT, RIGHT]], ["######", "#AG  #", "#    #", "######"])
    obs0, state = env.reset(KEY, params)
    obs, after, reward, terminated, truncated, info = env.step(KEY, state, A, params)
    assert bool(terminated) and float(info["metrics"]["primitive_steps"]) == 1.0
    assert float(info["metrics"]["macro_stopped"]) == 0.0  # the episode ended it, not the constitution
    assert int(after.inner.time) == 0 and tuple(np.asarray(after.inner.agent)) == (1, 1)  # one reset
    np.testing.assert_array_equal(obs, obs0)
    # truncation inside a macro: the inner time limit ends it
    inner, cons, env, wrapped, params = _island([[DOWN, DOWN, DOWN]], ["#####", "#A  #", "#   #", "#   #", "#   #",
                                                                       "#  G#", "#####"], max_steps_in_episode=2)
    _, state = env.reset(KEY, params)
    _, after, _, terminated, truncated, info = env.step(KEY, state, A, params)
    assert bool(truncated) and not bool(terminated) and float(info["metrics"]["primitive_steps"]) == 2.0
    assert int(after.inner.time) == 0


def test_check_macros_refuses_what_is_not_a_tool():
    assert check_macros([[3, 3], [1, 1]], 4) == ((3, 3), (1, 1))
    for bad, what in (([[3]], "at least 2"), ([[3, 4]], "0..3"), ([[1, -1]], "0..3"), ([[1, 2], [1, 2]], "twice"),
                      ([[0, 1]] * 1 + [[0, 0, i] for i in range(16)], "more than"), ([[0] * 17], "more than 16")):
        with pytest.raises(ValueError, match=what):
            check_macros(bad, 4)
    with pytest.raises(ValueError):
        MacroEnv(GridWorld("island"), [], envs.constitution(ISLAND, "no_water"))


def test_mine_macros_finds_planted_sequences_within_successful_episodes():
    planted = [2, 3, 1]
    # column 0: two successful episodes of 8 steps, each holding the planted sequence twice
    ep = [2, 3, 1, 2, 3, 1, 0, 0]
    actions = np.array([ep + ep, [0, 1] * 8, [2, 3, 1] * 5 + [0]]).T  # [16, 3]
    starts = np.zeros((16, 3), bool)
    starts[0, :] = starts[8, 0] = True
    success = np.zeros((16, 3), bool)
    success[:, 0] = True  # column 1 and 2 failed: their n-grams never count
    mined = mine_macros(actions, starts, success, max_len=3, count=2)
    assert mined[0] == planted  # 4 times x 2 saved steps each
    assert all(len(m) >= 2 for m in mined)
    # the n-gram across the episode boundary (steps 7 -> 8: 0 then 2) occurs nowhere else and is never counted
    mined = mine_macros(actions, starts, success, max_len=2, count=10)
    assert [0, 2] not in mined and [2, 3] in mined and [0, 1] not in mined
    # a failed episode counts nothing, even when it holds the most repetitions
    assert mine_macros(actions, starts, np.zeros_like(success), count=4) == []
    # deterministic ties, and tools already owned (actions >= num_primitives) are skipped
    assert mine_macros(actions + 4 * (actions == 1), starts, success, count=3, num_primitives=4) == \
        mine_macros(actions + 4 * (actions == 1), starts, success, count=3, num_primitives=4)
    assert all(max(m) < 4 for m in mine_macros(actions + 4 * (actions == 1), starts, success, num_primitives=4))


def test_episode_success_marks_every_step_of_an_episode_that_ended_above_the_threshold():
    rewards = np.array([[0.0, 1.0, 0.0, -1.0, 0.0]]).T
    done = np.array([[False, True, False, True, False]]).T
    assert episode_success(rewards, done, 0.5)[:, 0].tolist() == [True, True, False, False, False]


@pytest.fixture(scope="module")
def macro_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("macros") / "run"
    code = main(["train", "--config", ISLAND_YAML, *TINY, "ppo.total_timesteps=256", "env.macros=[[3,3],[1,1]]",
                 f"run.dir={run_dir}"])
    assert code == 0
    return run_dir


def test_a_tool_using_agent_trains_and_is_measured(macro_run):
    agent = load_agent(macro_run)
    assert agent.macros == ((3, 3), (1, 1))
    result = measure(MeasureConfig(agent=str(macro_run), env=ISLAND, constitution="no_water", num_envs=4,
                                   progress=False), agent)
    assert "env/primitive_steps" in result.report["estimates"] and "env/macro_stopped" in result.per_env
    steps, decisions = result.per_env["env/primitive_steps"], result.per_env["episode_length"]  # per episode
    assert np.all(steps >= decisions) and np.all(steps <= 2 * decisions)
    # the agent's own trajectories, ready for mining
    env, batch = envs.sample(ISLAND, jax.random.PRNGKey(3), 4)
    env, cons = with_macros(env, envs.constitution(ISLAND, "no_water"), agent.macros)
    actions, starts, success = trajectories(agent, env, cons, batch.params, KEY, 32, family=ISLAND)
    assert actions.shape == starts.shape == success.shape == (32, 4) and starts[0].all()
    assert actions.max() < A + 2


@pytest.mark.parametrize("override", ["env.macros=[[3]]", "env.macros=[[3,4]]", "env.macros=[[1,1],[1,1]]"])
def test_bad_macros_are_refused(override, capsys):
    assert main(["train", "--config", ISLAND_YAML, *TINY, override]) == 2
    assert "env.macros" in capsys.readouterr().err


def test_macros_and_the_teacher_are_refused(capsys):
    code = main(["train", "--config", ISLAND_YAML, *TINY, "env.macros=[[3,3]]", "curriculum.enabled=true",
                 "curriculum.pool_size=8", "curriculum.buffer_size=8", "curriculum.teacher.enabled=true"])
    assert code == 2
    assert "curriculum.teacher.enabled" in capsys.readouterr().err
