"""Tests for aligned_rl.baselines against plain-Python references of the AIQ agents.

The references (tests/reference/aiq_agents.py) are written from AIQ's semantics with
Python lists and floats (float64); they never call the library.  Both sides take their random
numbers from the documented scheme: at step t an agent state with key k uses
``jax.random.uniform(fold_in(k, t), (3,), float32)``; the test computes those
uniforms with JAX up front and hands them to the reference as Python floats.
Index draws floor(u * n) are taken in float32 on both sides (``numpy.float32``
here) so the same uniform always gives the same index.

The toy environment is a deterministic random MDP: ``next_obs[o][a]`` and
``reward[o][a]`` tables drawn with NumPy (rewards rounded to float32 so both
sides see identical numbers), plus an initial (obs, reward) pair, stepped in
AIQ's order: the agent perceives (obs, reward) and answers an action, the
environment answers the next (obs, reward).
"""

from __future__ import annotations

import dataclasses
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.baselines import (
    AIQ_PARAMETERS,
    BASELINES,
    PAPER_SETTINGS,
    Freq,
    HLQLambda,
    PaperEntry,
    Q0,
    QLambda,
    RandomAgent,
    make_baseline,
    paper_row,
    paper_setting,
    parse_aiq_spec,
    step_uniforms,
)
from aligned_rl.train.agents import make_agent
from aligned_rl.train.config import ConfigError
from tests.reference.aiq_agents import RefFreq, RefHLQLambda, RefQLambda, RefRandom

REFERENCES = {Freq: RefFreq, QLambda: RefQLambda, Q0: RefQLambda, HLQLambda: RefHLQLambda, RandomAgent: RefRandom}


def reference_for(agent):
    params = {f.name: getattr(agent, f.name) for f in dataclasses.fields(agent)}
    return REFERENCES[type(agent)](**params)


# --------------------------------------------------------------------------------------
# Toy environment and runners
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ToyMDP:
    next_obs: np.ndarray  # (S, A) int
    reward: np.ndarray    # (S, A) float32
    obs0: int
    reward0: float


def toy_mdp(seed: int, num_obs: int, num_actions: int, integer_rewards: bool = False) -> ToyMDP:
    rng = np.random.default_rng(seed)
    next_obs = rng.integers(num_obs, size=(num_obs, num_actions))
    if integer_rewards:
        reward = rng.integers(-2, 3, size=(num_obs, num_actions)).astype(np.float32)
        reward0 = float(rng.integers(-2, 3))
    else:
        reward = rng.normal(size=(num_obs, num_actions)).astype(np.float32)
        reward0 = float(np.float32(rng.normal()))
    return ToyMDP(next_obs, reward, int(rng.integers(num_obs)), reward0)


@partial(jax.jit, static_argnums=(0, 5))
def run_agent(agent, key, obs0, reward0, env_tables, steps):
    """AIQ's cycle for ``steps`` steps: (final state, actions taken)."""
    next_obs, reward = env_tables

    def cycle(carry, _):
        state, obs, r = carry
        state, action = agent.step(state, obs, r)
        return (state, next_obs[obs, action], reward[obs, action]), action

    carry = (agent.init(key), jnp.asarray(obs0, jnp.int32), jnp.asarray(reward0, jnp.float32))
    (state, _, _), actions = jax.lax.scan(cycle, carry, None, length=steps)
    return state, actions


def uniforms(key, steps: int) -> list[list[float]]:
    """The documented per-step draws, as Python floats."""
    draws = jax.vmap(lambda t: jax.random.uniform(jax.random.fold_in(key, t), (3,), dtype=jnp.float32))(
        jnp.arange(steps))
    return np.asarray(draws, dtype=np.float64).tolist()


def run_reference(agent, key, env: ToyMDP, steps: int):
    ref = reference_for(agent)
    obs, r = env.obs0, env.reward0
    actions = []
    for u in uniforms(key, steps):
        action = ref.perceive(obs, r, u)
        actions.append(action)
        obs, r = int(env.next_obs[obs, action]), float(env.reward[obs, action])
    return ref, actions


def replay(agent, seed: int, steps: int, integer_rewards: bool = False):
    env = toy_mdp(seed, agent.num_obs, agent.num_actions, integer_rewards)
    key = jax.random.key(seed)
    state, actions = run_agent(agent, key, env.obs0, env.reward0,
                               (jnp.asarray(env.next_obs, jnp.int32), jnp.asarray(env.reward)), steps)
    ref, ref_actions = run_reference(agent, key, env, steps)
    return state, np.asarray(actions), ref, ref_actions


def assert_matches_reference(state, actions, ref, ref_actions, rtol, atol):
    first = next((i for i, (a, b) in enumerate(zip(actions, ref_actions)) if a != b), None)
    assert first is None, f"actions diverge at step {first}: {actions[first]} vs {ref_actions[first]}"
    assert int(state.obs) == ref.prev_obs or isinstance(ref, (RefRandom, RefFreq))
    assert int(state.action) == ref_actions[-1]
    ref_tables = ref.tables()
    assert set(state.tables) == set(ref_tables)
    for name, table in ref_tables.items():
        np.testing.assert_allclose(np.asarray(state.tables[name], np.float64), np.asarray(table),
                                   rtol=rtol, atol=atol, err_msg=name)


S, A, STEPS = 6, 3, 300
SEEDS = (0, 1, 2)

# Defaults (the AIQ paper's 1000-step settings) and variants that exercise optimistic
# initial values, exploration, trace cuts, softmax and its overflow guard
# (temperature 0.05 scales values of ~50 past 595).
CONFIGS = {
    "random": RandomAgent(S, A),
    "freq": Freq(S, A),
    "freq_eps0.3": Freq(S, A, epsilon=0.3),
    "q_lambda": QLambda(S, A),
    "q_lambda_q50": QLambda(S, A, init_q=50.0, lam=0.5, alpha=0.5, epsilon=0.05, gamma=0.9),
    "q_lambda_eps0.3_q0": QLambda(S, A, init_q=0.0, epsilon=0.3, lam=0.8, alpha=0.2, gamma=0.7),
    "q_0": Q0(S, A),
    "q_0_q50_eps0.2": Q0(S, A, init_q=50.0, alpha=0.3, epsilon=0.2, gamma=0.9),
    "hlq_lambda": HLQLambda(S, A),
    "hlq_lambda_q50_greedy": HLQLambda(S, A, init_q=50.0, lam=0.5, epsilon=0.0, gamma=0.9),
    "hlq_lambda_eps0.2": HLQLambda(S, A, init_q=50.0, epsilon=0.2, lam=0.9, gamma=0.8),
    "hlq_lambda_softmax": HLQLambda(S, A, sel_mode=1, init_q=50.0, lam=0.5, epsilon=2.0, gamma=0.9),
    "hlq_lambda_softmax_cold": HLQLambda(S, A, sel_mode=1, init_q=50.0, lam=0.5, epsilon=0.05, gamma=0.9),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_replays_reference_float32(config, seed):
    """float32 tables against the float64 reference: same actions, tables within rounding.

    (HLQ(lambda)'s float32 visit-count floor, 1e-30 instead of 1e-100, only
    touches pairs unseen for ~100 steps, whose learning rates are ~gamma^100 by
    then; it stays inside the same tolerance.)
    """
    agent = CONFIGS[config]
    assert_matches_reference(*replay(agent, seed, STEPS), rtol=1e-5, atol=1e-4)


X64_CONFIGS = {
    # integer rewards make exact ties among learned values, not only initial ones
    "freq_int": (Freq(S, A, epsilon=0.2), True),
    "q_lambda_int": (QLambda(S, A, init_q=0.0, lam=0.5, alpha=0.5, epsilon=0.2, gamma=0.5), True),
    "q_0_int": (Q0(S, A, epsilon=0.2), True),
    "q_lambda": (QLambda(S, A), False),
    "q_lambda_q50": (CONFIGS["q_lambda_q50"], False),
    "hlq_lambda": (HLQLambda(S, A), False),
    "hlq_lambda_q50_greedy": (CONFIGS["hlq_lambda_q50_greedy"], False),
    "hlq_lambda_eps0.2": (CONFIGS["hlq_lambda_eps0.2"], False),
    "hlq_lambda_softmax": (CONFIGS["hlq_lambda_softmax"], False),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", list(X64_CONFIGS))
def test_replays_reference_float64(config, seed):
    """With x64 on the tables are float64 and follow the reference to ~1e-12."""
    agent, integer_rewards = X64_CONFIGS[config]
    with jax.enable_x64(True):
        state, actions, ref, ref_actions = replay(agent, seed, STEPS, integer_rewards)
        assert all(t.dtype == jnp.float64 for t in state.tables.values())
    assert_matches_reference(state, actions, ref, ref_actions, rtol=1e-11, atol=1e-11)


def test_replay_exercises_ties_and_exploration():
    """The replays above are not vacuous: ties and exploratory steps occur."""
    agent, _ = X64_CONFIGS["q_lambda_int"]
    env = toy_mdp(0, S, A, integer_rewards=True)
    ref = reference_for(agent)
    obs, r = env.obs0, env.reward0
    ties = explored = 0
    for u in uniforms(jax.random.key(0), STEPS):
        row = ref.q[obs]
        ties += row.count(max(row)) > 1
        action = ref.perceive(obs, r, u)
        explored += u[1] < agent.epsilon
        obs, r = int(env.next_obs[obs, action]), float(env.reward[obs, action])
    assert ties >= 5 and explored >= 20


# --------------------------------------------------------------------------------------
# Batching, jit
# --------------------------------------------------------------------------------------

SMALL = {name: make_baseline(name, num_obs=5, num_actions=4) for name in BASELINES}


@pytest.mark.parametrize("name", list(BASELINES))
def test_vmap_matches_single_runs(name):
    """1000 states stepped together under vmap equal the same states stepped alone."""
    agent, n, steps = SMALL[name], 1000, 25
    env = toy_mdp(7, agent.num_obs, agent.num_actions)
    next_obs, reward = jnp.asarray(env.next_obs, jnp.int32), jnp.asarray(env.reward)
    keys = jax.random.split(jax.random.key(3), n)
    obs0 = jnp.arange(n, dtype=jnp.int32) % agent.num_obs
    r0 = jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32)

    @jax.jit
    def batched(keys, obs0, r0):
        def cycle(carry, _):
            states, obs, r = carry
            states, actions = jax.vmap(agent.step)(states, obs, r)
            return (states, next_obs[obs, actions], reward[obs, actions]), actions

        carry = (jax.vmap(agent.init)(keys), obs0, r0)
        (states, _, _), actions = jax.lax.scan(cycle, carry, None, length=steps)
        return states, actions

    states, actions = batched(keys, obs0, r0)
    assert actions.shape == (steps, n)
    for i in (0, 1, 517, n - 1):
        single, single_actions = run_agent(agent, keys[i], obs0[i], r0[i], (next_obs, reward), steps)
        np.testing.assert_array_equal(actions[:, i], single_actions)
        batched_i = jax.tree_util.tree_map(lambda x, i=i: x[i], states)
        for a, b in zip(jax.tree_util.tree_leaves(batched_i), jax.tree_util.tree_leaves(single)):
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(BASELINES))
def test_jit_matches_eager(name):
    """Stepping op by op gives what the jitted scan gives."""
    agent, steps = SMALL[name], 6
    env = toy_mdp(11, agent.num_obs, agent.num_actions)
    tables = (jnp.asarray(env.next_obs, jnp.int32), jnp.asarray(env.reward))
    key = jax.random.key(5)
    jitted_state, jitted_actions = run_agent(agent, key, env.obs0, env.reward0, tables, steps)
    with jax.disable_jit():
        state, obs, r = agent.init(key), env.obs0, env.reward0
        for t in range(steps):
            state, action = agent.step(state, obs, r)
            assert int(action) == int(jitted_actions[t])
            obs, r = int(env.next_obs[obs, int(action)]), float(env.reward[obs, int(action)])
    for name_, table in state.tables.items():
        np.testing.assert_allclose(table, jitted_state.tables[name_], rtol=1e-6, atol=1e-6)
    assert int(state.t) == int(jitted_state.t) == steps


def test_step_uniforms_is_the_documented_draw():
    key = jax.random.key(42)
    for t in (0, 1, 99):
        np.testing.assert_array_equal(
            step_uniforms(key, t),
            jax.random.uniform(jax.random.fold_in(key, t), (3,), dtype=jnp.float32))


# --------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["q_lambda", "q_0", "hlq_lambda", "freq"])
def test_learns_two_armed_bandit(name):
    """Arm 1 pays 1 on average, arm 0 pays 0: late mean reward is far above random's 0.5."""
    agent = make_baseline(name, num_obs=1, num_actions=2)
    n, steps, tail = 256, 600, 100

    @jax.jit
    def run(key):
        k_agent, k_env = jax.random.split(key)
        noise = 0.5 * jax.random.normal(k_env, (steps, n))

        def cycle(carry, noise_t):
            states, r = carry
            states, actions = jax.vmap(agent.step)(states, jnp.zeros(n, jnp.int32), r)
            r = actions.astype(jnp.float32) + noise_t
            return (states, r), actions.astype(jnp.float32) + noise_t

        states = jax.vmap(agent.init)(jax.random.split(k_agent, n))
        _, rewards = jax.lax.scan(cycle, (states, jnp.zeros(n)), noise)
        return rewards

    rewards = run(jax.random.key(0))
    late = float(rewards[-tail:].mean())
    assert late > 0.85, late


def test_random_actions_are_uniform():
    agent = make_baseline("random", num_obs=3, num_actions=4)
    n, steps = 1000, 100

    @jax.jit
    def run(keys):
        def cycle(states, _):
            states, actions = jax.vmap(agent.step)(states, jnp.zeros(n, jnp.int32), jnp.zeros(n))
            return states, actions

        _, actions = jax.lax.scan(cycle, jax.vmap(agent.init)(keys), None, length=steps)
        return actions

    actions = np.asarray(run(jax.random.split(jax.random.key(1), n)))
    freqs = np.bincount(actions.ravel(), minlength=4) / actions.size
    # 100k draws: the standard error of each frequency is ~0.0014
    np.testing.assert_allclose(freqs, 0.25, atol=0.007)
    # no per-step or per-agent structure either
    np.testing.assert_allclose(actions.mean(axis=1), 1.5, atol=0.15)
    assert len({tuple(actions[:, i]) for i in range(20)}) == 20


# --------------------------------------------------------------------------------------
# Registry, defaults, errors
# --------------------------------------------------------------------------------------


# The AIQ paper's settings, copied from "Conf Paper Settings.ods" in
# github.com/mathemajician/AIQ (sheet BF_5: discount 1.0): episode length, then per agent
# its parameters in AIQ's command-line order, the published AIQ and half its 95% CI.
PAPER_TABLE = {
    1_000: {"HLQ_l": ("0,0,0.95,0.04,0.7", 49.1, 0.4), "Q_l": ("0,0.5,0.5,0.04,0.6", 44.3, 0.4),
            "Q_0": ("0,0,0.5,0.04,0.6", 41.8, 0.4), "Freq": ("0.07", 40.2, 0.4)},
    3_000: {"HLQ_l": ("0,0,0.99,0.04,0.6", 52.2, 0.5), "Q_l": ("0,0.5,0.5,0.03,0.6", 48.1, 0.4),
            "Q_0": ("0,0,0.5,0.03,0.7", 46.3, 0.4), "Freq": ("0.09", 42.6, 0.4)},
    10_000: {"HLQ_l": ("0,0,0.99,0.02,0.7", 54.7, 0.4), "Q_l": ("0,0.5,0.5,0.02,0.8", 51.5, 0.5),
             "Q_0": ("0,0,0.5,0.02,0.8", 50.2, 0.4), "Freq": ("0.09", 45.2, 0.4)},
    30_000: {"HLQ_l": ("0,0,0.995,0.01,0.8", 56.1, 0.5), "Q_l": ("0,0.5,0.5,0.01,0.9", 53.7, 0.5),
             "Q_0": ("0,0,0.5,0.01,0.9", 52.5, 0.5), "Freq": ("0.07", 47.3, 0.5)},
    100_000: {"HLQ_l": ("0,0,0.995,0.005,0.9", 56.3, 0.5), "Q_l": ("0,0.5,0.5,0.005,0.95", 54.8, 0.5),
              "Q_0": ("0,0,0.5,0.005,0.95", 54.1, 0.5), "Freq": ("0.05", 49.1, 0.5)},
}
AIQ_NAME = {"HLQ_l": "hlq_lambda", "Q_l": "q_lambda", "Q_0": "q_0", "Freq": "freq"}


def test_paper_settings_are_the_settings_file():
    expected = {length: {AIQ_NAME[aiq]: PaperEntry(tuple(float(x) for x in params.split(",")), mean, half)
                         for aiq, (params, mean, half) in row.items()}
                for length, row in PAPER_TABLE.items()}
    assert PAPER_SETTINGS == expected
    for length, row in PAPER_TABLE.items():
        for aiq, (params, _, _) in row.items():
            name = AIQ_NAME[aiq]
            # the spec AIQ's command line would take gives the preset of that row
            assert parse_aiq_spec(f"{aiq},{params}") == (name, paper_setting(name, length))
            keywords = dict(zip(AIQ_PARAMETERS[name], map(float, params.split(","))))
            if name == "q_0":
                assert keywords.pop("lam") == 0.0
            assert paper_setting(name, length) == keywords


def test_defaults_are_the_paper_settings_for_1000_steps():
    assert set(BASELINES) == {"random", "freq", "q_lambda", "q_0", "hlq_lambda"}
    for name, cls in BASELINES.items():
        default = cls(4, 2)
        assert make_baseline(name, 4, 2) == default == make_baseline(name, 4, 2, episode_length=1000)
        assert {k: getattr(default, k) for k in paper_setting(name, 1000)} == paper_setting(name, 1000)
    q = make_baseline("q_lambda", 4, 2)
    assert (q.init_q, q.lam, q.alpha, q.epsilon, q.gamma) == (0.0, 0.5, 0.5, 0.04, 0.6)
    h = make_baseline("hlq_lambda", 4, 2)
    assert (h.sel_mode, h.init_q, h.lam, h.epsilon, h.gamma) == (0, 0.0, 0.95, 0.04, 0.7)
    assert make_baseline("freq", 4, 2).epsilon == 0.07
    q0 = make_baseline("q_0", 4, 2)
    assert (q0.init_q, q0.lam, q0.alpha, q0.epsilon, q0.gamma) == (0.0, 0.0, 0.5, 0.04, 0.6)
    assert paper_setting("random", 1000) == {} and isinstance(make_baseline("random", 4, 2), RandomAgent)
    hash(q)  # static: usable as a jit static argument


@pytest.mark.parametrize("length,row", [(1, 1000), (5, 1000), (1000, 1000), (1700, 1000), (1732, 1000),
                                        (1733, 3000), (2000, 3000), (5477, 3000), (5478, 10_000),
                                        (17_320, 10_000), (17_321, 30_000), (54_772, 30_000),
                                        (54_773, 100_000), (100_000, 100_000), (10**7, 100_000)])
def test_nearest_row_in_log_space(length, row):
    assert paper_row(length) == row
    assert paper_setting("hlq_lambda", length) == paper_setting("hlq_lambda", row)


def test_episode_length_picks_the_row_and_overrides_go_on_top():
    h = make_baseline("hlq_lambda", 4, 2, episode_length=30_000)
    assert (h.sel_mode, h.init_q, h.lam, h.epsilon, h.gamma) == (0, 0.0, 0.995, 0.01, 0.8)
    h = make_baseline("hlq_lambda", 4, 2, 30_000, epsilon=0.1)
    assert (h.lam, h.epsilon, h.gamma) == (0.995, 0.1, 0.8)
    assert make_baseline("freq", 4, 2, episode_length=2000).epsilon == 0.09
    assert make_baseline("q_0", 4, 2, episode_length=100_000, alpha=0.1) == Q0(4, 2, alpha=0.1, epsilon=0.005,
                                                                               gamma=0.95)
    assert make_baseline("q_lambda", 4, 2, alpha=0.1).alpha == 0.1
    with pytest.raises(ValueError, match="episode_length must be at least 1, got 0"):
        make_baseline("q_lambda", 4, 2, episode_length=0)
    with pytest.raises(TypeError, match="episode_length must be an integer"):
        paper_row(2.5)


def test_q_0_is_q_lambda_with_lambda_0():
    """Step for step the same actions and the same tables (the reference replay is in CONFIGS)."""
    env = toy_mdp(3, S, A, integer_rewards=True)
    tables = (jnp.asarray(env.next_obs, jnp.int32), jnp.asarray(env.reward))
    key = jax.random.key(9)
    for q0 in (Q0(S, A), Q0(S, A, init_q=50.0, alpha=0.3, epsilon=0.2, gamma=0.9)):
        q_lambda = QLambda(S, A, init_q=q0.init_q, lam=0.0, alpha=q0.alpha, epsilon=q0.epsilon, gamma=q0.gamma)
        state, actions = run_agent(q0, key, env.obs0, env.reward0, tables, STEPS)
        same_state, same_actions = run_agent(q_lambda, key, env.obs0, env.reward0, tables, STEPS)
        np.testing.assert_array_equal(actions, same_actions)
        for name in ("q", "e"):
            np.testing.assert_array_equal(state.tables[name], same_state.tables[name])
    assert Q0(S, A).lam == 0.0 and Q0.name == "q_0"
    with pytest.raises(ValueError, match="baseline 'q_0' has no parameter 'lam'; it takes init_q, alpha, epsilon, "
                                         "gamma; q_0 is q_lambda with lam 0"):
        make_baseline("q_0", 4, 2, lam=0.5)
    with pytest.raises(TypeError):
        Q0(4, 2, lam=0.5)


def test_parse_aiq_spec():
    assert parse_aiq_spec("HLQ_l,0,0,0.95,0.04,0.7") == (
        "hlq_lambda", {"sel_mode": 0, "init_q": 0.0, "lam": 0.95, "epsilon": 0.04, "gamma": 0.7})
    assert isinstance(parse_aiq_spec("HLQ_l,1,0,0.95,0.04,0.7")[1]["sel_mode"], int)
    assert parse_aiq_spec("Q_l,50.0,0.5,0.5,0.05,0.9") == (
        "q_lambda", {"init_q": 50.0, "lam": 0.5, "alpha": 0.5, "epsilon": 0.05, "gamma": 0.9})
    assert parse_aiq_spec("Q_0, 0, 0, 0.5, 0.04, 0.6") == (
        "q_0", {"init_q": 0.0, "alpha": 0.5, "epsilon": 0.04, "gamma": 0.6})
    assert parse_aiq_spec("Freq,0.07") == ("freq", {"epsilon": 0.07})
    assert parse_aiq_spec("Random") == ("random", {})


@pytest.mark.parametrize("spec,message", [
    ("HLQ_l,0,0,0.95", "HLQ_l takes 5 parameters in AIQ's order (sel_mode, init_Q, Lambda, epsilon, gamma), "
                       "got 3 in 'HLQ_l,0,0,0.95'"),
    ("Q_l,0,0.5,0.5,0.04,0.6,1", "Q_l takes 5 parameters in AIQ's order (init_Q, Lambda, alpha, epsilon, gamma), "
                                 "got 6 in 'Q_l,0,0.5,0.5,0.04,0.6,1'"),
    ("Freq", "Freq takes 1 parameter in AIQ's order (epsilon), got 0 in 'Freq'"),
    ("Random,0.1", "Random takes no parameters, got 1 in 'Random,0.1'"),
    ("Q_l,0,fast,0.5,0.04,0.6", "Q_l: Lambda must be a number, got 'fast' in 'Q_l,0,fast,0.5,0.04,0.6'; "
                                "AIQ's order: init_Q, Lambda, alpha, epsilon, gamma"),
    ("Freq,", "Freq: epsilon must be a number, got '' in 'Freq,'; AIQ's order: epsilon"),
    ("Q_0,0,0.5,0.5,0.04,0.6", "Q_0 is Q_l with Lambda 0, got Lambda 0.5 in 'Q_0,0,0.5,0.5,0.04,0.6'; "
                               "for another Lambda write Q_l"),
    ("Q_l,0,0.5,0.5,0.04,0", "Q_l: gamma 0 means the environment's discount rate in AIQ"),
    ("MC_AIXI,100,32,3", "unknown AIQ agent 'MC_AIXI' in 'MC_AIXI,100,32,3'; known: HLQ_l, Q_l, Q_0, Freq, Random"),
    ("q_lambda,0.5", "q_lambda is this code's name: give its parameters by name"),
])
def test_parse_aiq_spec_refuses(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_aiq_spec(spec)


def test_make_agent_takes_aiq_specs_and_the_episode_length():
    env = envs.spec("BF-programs").make()
    n = int(env.action_space(env.default_params).n)
    agent = make_agent("HLQ_l,0,0,0.99,0.02,0.7", env, n, "BF-programs")
    assert agent.name == "HLQ_l,0,0,0.99,0.02,0.7"
    assert agent.agent == HLQLambda(env.num_observations, n, lam=0.99, epsilon=0.02, gamma=0.7)
    # a spec gives every parameter, so the episode length changes none of them; a name takes the row's
    assert make_agent("Q_0,0,0,0.5,0.03,0.7", env, n, "BF-programs", episode_length=100_000).agent == Q0(
        env.num_observations, n, epsilon=0.03, gamma=0.7)
    assert make_agent("q_lambda", env, n, "BF-programs", {"alpha": 0.1}, episode_length=10_000).agent == QLambda(
        env.num_observations, n, alpha=0.1, epsilon=0.02, gamma=0.8)
    assert make_agent("Random", env, n, "BF-programs").agent == RandomAgent(env.num_observations, n)
    with pytest.raises(ConfigError, match=re.escape("agent 'Freq,0.07' sets epsilon already, and agent_params "
                                                    "sets it again")):
        make_agent("Freq,0.07", env, n, "BF-programs", {"epsilon": 0.1})
    with pytest.raises(ConfigError, match="Freq takes 1 parameter"):
        make_agent("Freq,0.07,0.1", env, n, "BF-programs")
    with pytest.raises(ConfigError, match="no parameter 'lam'"):
        make_agent("Q_0,0,0,0.5,0.03,0.7", env, n, "BF-programs", {"lam": 0.5})
    with pytest.raises(ConfigError, match="neither a baseline"):
        make_agent("Sarsa", env, n, "BF-programs")


def test_state_layout():
    state = make_baseline("hlq_lambda", 4, 3, init_q=50.0).init(jax.random.key(0))
    assert {k: v.shape for k, v in state.tables.items()} == {"q": (4, 3), "e": (4, 3), "v": (4, 3)}
    assert int(state.obs) == int(state.action) == int(state.t) == 0
    assert float(state.tables["q"][0, 0]) == 50.0


def test_errors():
    with pytest.raises(ValueError, match="unknown baseline 'sarsa'.*q_lambda"):
        make_baseline("sarsa", 4, 2)
    with pytest.raises(ValueError, match="no parameter 'alpha'.*sel_mode"):
        make_baseline("hlq_lambda", 4, 2, alpha=0.1)
    with pytest.raises(ValueError, match="no parameter 'epsilon'.*no parameters"):
        make_baseline("random", 4, 2, epsilon=0.1)
    with pytest.raises(ValueError, match="gamma"):
        make_baseline("q_lambda", 4, 2, gamma=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        make_baseline("freq", 4, 2, epsilon=1.5)
    with pytest.raises(ValueError, match="lam"):
        make_baseline("hlq_lambda", 4, 2, lam=0.0)
    with pytest.raises(ValueError, match="sel_mode"):
        make_baseline("hlq_lambda", 4, 2, sel_mode=2)
    with pytest.raises(ValueError, match="num_actions"):
        make_baseline("freq", 4, 0)
    with pytest.raises(TypeError, match="num_obs"):
        make_baseline("freq", 2.5, 2)
    with pytest.raises(TypeError, match="alpha"):
        make_baseline("q_lambda", 4, 2, alpha="fast")
