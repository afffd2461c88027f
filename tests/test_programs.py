"""BF-programs: the AIQ reference machine, its prior, strata, constitution and learning.

The machine is checked against ``BFMachine`` (tests/reference/bf_machine.py), a plain-Python
interpreter written from AIQ's description of its BF machine (nested loops run recursively,
the tape is a Python list addressed by a head in [-tape_len, tape_len - 1], as in AIQ).  The
random symbols of ``%`` are made identical in both by deriving them the same way: the j-th
``%`` of a cycle run with key k writes mix32(seed + j * 0x9E3779B9) mod n with
seed = jax.random.bits(k) (uint32); the test takes the seeds from JAX and does the hashing in
plain Python.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import environment

import aligned_rl.envs.programs as programs  # registers BF-programs
import aligned_rl.envs.programs_machine as machine
from aligned_rl.envs import programs_sampler as sampler
from aligned_rl.envs.programs import BFPrograms
from aligned_rl.envs.registry import ParamBatch, spec
from tests.reference.bf_machine import BFMachine

KEY = jax.random.PRNGKey(0)


def random_program(rng: np.random.Generator, max_len: int = 30) -> str:
    """A balanced program with a bias toward loops and head moves (test inputs, not the prior)."""
    weights = np.array([3, 3, 2, 2, 2, 2, 1.5, 0, 1, 0.0])
    out, depth = [], 0
    length = int(rng.integers(1, max_len))
    for _ in range(length):
        w = weights.copy()
        w[7] = 2.0 if depth > 0 else 0.0
        c = "<>+-,.[]%#"[rng.choice(10, p=w / w.sum())]
        depth += (c == "[") - (c == "]")
        out.append(c)
    return "".join(out) + "]" * depth + "#"


def run_jax(env: BFPrograms, texts: list[str], actions: np.ndarray, keys: jax.Array):
    """Step every program through its action sequence (vmapped); returns rewards, observations, steps."""
    params = env.program_params(texts)

    def one(p, acts, ks):
        def body(state, x):
            a, k = x
            _, state, reward, _, info = env.step_env(k, state, a, p)
            return state, (reward, state.outputs[1:], state.steps, info["metrics"]["overtime"])

        return jax.lax.scan(body, env.initial_state(), (acts, ks))[1]

    return jax.device_get(jax.jit(jax.vmap(one))(params, jnp.asarray(actions), keys))


# ----------------------------------------------------------- equivalence with AIQ
@pytest.mark.parametrize(
    "config",
    [
        dict(num_symbols=5, obs_cells=1, tape_len=7, input_len=4, step_limit=60),
        dict(num_symbols=4, obs_cells=2, tape_len=5, input_len=3, step_limit=40),
        dict(num_symbols=5, obs_cells=1, tape_len=100_000, input_len=25, step_limit=1000),
    ],
    ids=["5-symbols", "4-symbols-2-obs", "aiq-reference"],
)
def test_machine_matches_the_reference_interpreter(config):
    reference = config["tape_len"] == machine.REFERENCE_TAPE_LEN
    # the reference configuration is the default one; the small ones make every corner frequent
    env = BFPrograms() if reference else BFPrograms(max_program_len=64, **config)
    assert env.config[:5] == tuple(config[k] for k in env.CONFIG_NAMES[:5])
    rng = np.random.default_rng(7)
    count, cycles = (400, 60) if reference else (1200, 20)
    texts = [random_program(rng) for _ in range(count // 2)]
    drawn = [sampler.simplify(w) for w in sampler.draw_words(rng, 4 * count)]
    texts += [p for p in drawn if len(p) <= env.max_program_len][: count - len(texts)]
    actions = rng.integers(0, env.num_symbols, size=(count, cycles))
    keys = jax.random.split(jax.random.PRNGKey(3), count * cycles).reshape(count, cycles, -1)
    seeds = np.asarray(jax.vmap(jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32)))(keys)).astype(np.int64)
    rewards, observations, steps, overtime = run_jax(env, texts, actions, keys)
    totals = dict.fromkeys(("wrap_left", "wrap_right", "past_input", "overtime", "loops", "rand"), 0)
    for i, text in enumerate(texts):
        ref = BFMachine(text, config["num_symbols"], config["obs_cells"], config["tape_len"], config["input_len"],
                        config["step_limit"])
        for t in range(cycles):
            r, obs, s = ref.act(int(actions[i, t]), int(seeds[i, t]))
            assert (rewards[i, t], list(observations[i, t]), steps[i, t]) == (np.float32(r), obs, s), (text, t)
            assert overtime[i, t] == (s == config["step_limit"])
        for k in totals:
            totals[k] += ref.coverage[k]
    # the programs exercised every corner the test is about (no wrap-around of AIQ's long tape
    # in a few cycles: the small tapes test that)
    corners = [k for k in totals if not (reference and k.startswith("wrap"))]
    assert all(totals[k] > 20 for k in corners), totals


# ------------------------------------------------------------- scripted programs
@functools.cache
def jitted_step(env: BFPrograms):
    return jax.jit(env.step_env)


def rollout(env: BFPrograms, program: str, actions, key=KEY):
    params = env.program_params(program)
    _, state = env.reset(key, params)
    out = []
    for t, a in enumerate(actions):
        _, state, reward, _, info = jitted_step(env)(jax.random.fold_in(key, t), state, a, params)
        observation = [int(x) for x in state.outputs[1:]]
        out.append((float(reward), observation, int(state.steps), float(info["metrics"]["aiq_reward"])))
    return out


def test_scripted_programs_give_hand_computed_rewards():
    env = BFPrograms()  # 5 symbols, mid = 2, reward (s - 2) / 2
    # copy: reward = this action; the observation is never written and stays mid
    got = rollout(env, ",.#", [0, 1, 2, 3, 4])
    assert [g[0] for g in got] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert [g[1] for g in got] == [[2]] * 5 and [g[2] for g in got] == [3] * 5
    assert [g[3] for g in got] == [-100.0, -50.0, 0.0, 50.0, 100.0]  # AIQ's scale
    # reward = action + 1, observation = the previous action (the second ',' reads input cell 1);
    # the cycle ends as soon as the output tape is full (5 steps, the '#' never runs)
    got = rollout(env, ",+.,.#", [4, 0, 3])
    assert [g[:3] for g in got] == [(-1.0, [2], 5), (-0.5, [4], 5), (1.0, [0], 5)]
    # the work tape persists across cycles: 3, 4, 0, 1, 2, 3
    assert [g[0] for g in rollout(env, "+.#", [0] * 6)] == [0.5, 1.0, -1.0, -0.5, 0.0, 0.5]
    # a loop runs while the cell differs from mid: 4 -> '.' 3 -> 2 '.' 2, then the output is full
    got = rollout(env, ",[-.]#", [4, 2])
    assert got[0][:3] == (0.5, [2], 7)
    # action 2 = mid skips the loop; nothing is written, so the output tape keeps the last cycle's symbols
    assert got[1][:3] == (0.5, [2], 3)


def test_step_limit_and_overtime():
    env = BFPrograms(step_limit=50)
    params = env.program_params("+[]#")  # cell 3 != mid: the empty loop never ends
    _, state = env.reset(KEY, params)
    _, state, reward, _, info = jitted_step(env)(KEY, state, 0, params)
    assert int(state.steps) == 50 and bool(state.overtime) and float(info["metrics"]["overtime"]) == 1.0
    assert float(reward) == 0.0  # nothing written: the output tape still holds mid
    _, state, _, _, info = jitted_step(env)(KEY, env.initial_state(), 0, env.program_params(",.#"))
    assert float(info["metrics"]["overtime"]) == 0.0 and float(info["metrics"]["machine_steps"]) == 3.0


def test_tape_wraps_at_both_ends_as_in_aiq():
    env = BFPrograms(tape_len=3)
    # left: 0 -> -1 (cell 2) -> -2 (cell 1) -> -3 (cell 0) -> below -3: back to 0 (cell 0 again), which '+' set to 3;
    # a plain modulo tape would stand on cell 2 (mid) and give reward 0
    assert rollout(env, "+<<<<.#", [0])[0][0] == 0.5
    # right: 0 -> 1 -> 2 -> 3 >= 3: back to 0
    assert rollout(env, "+>>>.#", [0])[0][0] == 0.5
    assert rollout(env, "+>>.#", [0])[0][0] == 0.0


def test_reading_past_the_input_gives_mid():
    env = BFPrograms(input_len=3)  # AIQ reads input_len - 1 = 2 cells at most
    got = rollout(env, ",,.#", [4, 1, 3])
    assert [g[0] for g in got] == [0.0, 1.0, -0.5]  # the previous action: mid, 4, 1
    # the third read would find the action of two cycles ago on the tape, but AIQ gives mid
    assert [g[0] for g in rollout(env, ",,,.#", [4, 4, 4, 4])] == [0.0] * 4


def test_even_symbol_count_and_several_observation_cells():
    env = BFPrograms(num_symbols=4, obs_cells=2)  # mid 1, reward centre 1.5
    assert [g[0] for g in rollout(env, "+.#", [0] * 4)] == pytest.approx([1 / 3, 1.0, -1.0, -1 / 3])
    got = rollout(env, ",.,.,.#", [3, 0, 2])
    assert [g[1] for g in got] == [[1, 1], [3, 1], [0, 3]]  # previous action, and the one before
    obs = env.get_obs(env.initial_state())
    assert obs.shape == (12,) and obs.dtype == jnp.float32 and float(obs.sum()) == 3.0


def test_program_encoding_and_validation():
    env = BFPrograms(max_program_len=8)
    p = env.program_params("[+[-]]#")
    assert machine.decode(p.program, p.length) == "[+[-]]#"
    assert list(np.asarray(p.match)[:6]) == [5, 0, 4, 0, 2, 0]
    assert int(p.program[8]) == machine.HALT  # padding ends the cycle
    for bad in ("[", "]", "+x", "+" * 9):
        with pytest.raises(ValueError):
            env.program_params(bad)


# ------------------------------------------------------------------ gymnax API
def test_jit_vmap_equals_a_python_loop_and_is_deterministic():
    env = BFPrograms(step_limit=200, tape_len=64)
    rng = np.random.default_rng(1)
    texts = [",%.>,.#", "+[-.%]#", ",[>+<-.]>.#", "%[>%]<.,.#", ",.#", "<<,[>,.<-]#"]
    params = env.program_params(texts)
    actions = jnp.asarray(rng.integers(0, 5, size=(len(texts), 12)))

    def episode(p, acts, key):
        def body(carry, a):
            state, k = carry
            k, sub = jax.random.split(k)
            obs, state, reward, _, _, _ = env.step(sub, state, a, p)
            return (state, k), (obs, reward)

        _, state = env.reset(key, p)
        return jax.lax.scan(body, (state, key), acts)[1]

    batched = jax.jit(jax.vmap(episode, in_axes=(0, 0, None)))(params, actions, KEY)
    single = jax.jit(episode)
    for i in range(len(texts)):
        one = single(jax.tree.map(lambda x, i=i: x[i], params), actions[i], KEY)
        for a, b in zip(one, batched):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b[i]))
    again = jax.jit(jax.vmap(episode, in_axes=(0, 0, None)))(params, actions, KEY)
    for a, b in zip(batched, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = jax.jit(jax.vmap(episode, in_axes=(0, 0, None)))(params, actions, jax.random.PRNGKey(1))
    assert not np.array_equal(np.asarray(other[1][0]), np.asarray(batched[1][0]))  # '%' follows the key


def test_truncation_only_and_reset_after_the_time_limit():
    env = BFPrograms(episode_length=3)
    params = env.program_params("+.,.#")
    obs, state = env.reset(KEY, params)
    initial = obs
    for t in range(3):
        obs, state, _, terminated, truncated, info = env.step(jax.random.fold_in(KEY, t), state, 4, params)
        assert not bool(terminated)
        assert bool(truncated) == (t == 2)
    # the step that truncates returns the reset state, and the last real observation in info
    assert int(state.time) == 0 and bool(jnp.all(env.work_tape(state) == 2))
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(initial))
    # the third cycle's reward symbol: '+' on the 4 the second cycle read, 4 + 1 = 0 (mod 5)
    assert int(jnp.argmax(info["final_observation"][:5])) == 0


def test_automatic_reset_equals_gymnax_and_leaves_the_tape_for_the_next_cycle_to_clear():
    """``BFPrograms.step`` restarts a machine without writing its tape; the next cycle clears it.
    Every observable equals gymnax's own ``step`` (which selects between two whole states)."""
    env = BFPrograms(episode_length=4, tape_len=64)
    texts = [",[>+.,]#", ">+>+.,.#", ",%.>,.#"]
    params = env.program_params(texts)
    actions = jnp.asarray(np.random.default_rng(3).integers(0, 5, size=(len(texts), 11)))

    def episode(step, p, acts):
        def body(state, x):
            a, k = x
            obs, state, reward, _, truncated, info = step(k, state, a, p)
            return state, (obs, reward, truncated, info["final_observation"], env.work_tape(state), state.ptr)

        _, state = env.reset(KEY, p)
        return jax.lax.scan(body, state, (acts, jax.random.split(KEY, acts.shape[0])))[1]

    ours = jax.jit(jax.vmap(lambda p, a: episode(env.step, p, a)))(params, actions)
    gymnax_step = functools.partial(environment.Environment.step, env)
    theirs = jax.jit(jax.vmap(lambda p, a: episode(gymnax_step, p, a)))(params, actions)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(ours[2]).sum() == 2 * len(texts)  # every program restarted twice in 11 steps


def test_tapes_indexed_by_row_and_cell_give_the_same_cycles():
    """Past 2^31 cells in a batch the machine indexes (row, cell) instead of a flat int32 index."""
    texts = [",[>+.,]#", "<<,.[-<]>.#", ",%.>,.#", "+[>+]<.,#"]
    actions = np.random.default_rng(5).integers(0, 5, size=(len(texts), 30))
    keys = jax.random.split(jax.random.PRNGKey(8), len(texts) * 30).reshape(len(texts), 30, -1)
    flat = BFPrograms(tape_len=50, step_limit=300)
    by_row = BFPrograms(tape_len=50, step_limit=300)
    by_row.FLAT_INDEX_LIMIT = 0
    for a, b in zip(run_jax(flat, texts, actions, keys), run_jax(by_row, texts, actions, keys)):
        np.testing.assert_array_equal(a, b)


def test_word_length_tail_matches_the_drawn_words():
    rng = np.random.default_rng(11)
    lengths = np.array([len(w) for w in sampler.draw_words(rng, 40_000)])
    for n in (1, 2, 5, 20, 60):
        p = sampler.word_length_tail(n)
        freq = np.mean(lengths > n)
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / lengths.size) + 1e-9, (n, freq, p)
    assert sampler.word_length_tail(1) == pytest.approx(0.8) and sampler.word_length_tail(2) == pytest.approx(0.66)
    assert sampler.word_length_tail(machine.MAX_PROGRAM_LEN) < 1e-10


# --------------------------------------------------------------------- sampler
def test_description_length_of_hand_written_code_words():
    l10, l5 = math.log2(10), math.log2(5)
    cases = {"#": l5, ",.#": 2 * l10 + l5, "[+]#": 2 * l10 + 2 * l5, "[[%]<]>#": 5 * l10 + 3 * l5,
             "+-<>#": 4 * l10 + l5}
    for word, bits in cases.items():
        assert sampler.description_length(word) == pytest.approx(bits, abs=1e-12)
    for bad in ("", "+", "]#", "[#", "#+#", "+#+", "a#"):
        with pytest.raises(ValueError):
            sampler.description_length(bad)


def test_code_is_prefix_free_and_kraft_sums_to_the_stopping_probability():
    # every code word of length <= 5, by brute force: sum of 2^-K = P(a draw stops within 5 instructions)
    total = 0.0
    for length in range(5):
        for body in itertools.product("<>+-,.[]%", repeat=length):
            word = "".join(body) + "#"
            try:
                total += 2.0 ** -sampler.description_length(word)
            except ValueError:
                continue
    depth = {0: 1.0}  # distribution of the bracket depth among draws that have not stopped
    stopped = 0.0
    for _ in range(5):
        stopped += 0.2 * depth.get(0, 0.0)
        nxt: dict[int, float] = {}
        for d, p in depth.items():
            for e, q in ((d + 1, 0.1), (d, 0.7), (d - 1, 0.2)):
                if e >= 0:
                    nxt[e] = nxt.get(e, 0.0) + p * q
        depth = nxt
    assert total == pytest.approx(stopped, rel=1e-12)
    # drawn words: no word is a proper prefix of another, and each is a valid code word
    words = sorted(set(sampler.draw_words(np.random.default_rng(0), 20000)))
    for a, b in itertools.pairwise(words):
        assert not b.startswith(a)
    for w in words[:2000]:
        sampler.description_length(w)


def test_draw_frequencies_match_two_to_the_minus_k():
    words = sampler.draw_words(np.random.default_rng(5), 40000)
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    for word in ("#", ",#", "[]#", "+-#", ",.#"):
        p = 2.0 ** -sampler.description_length(word)
        se = math.sqrt(p * (1 - p) / len(words))
        assert abs(counts.get(word, 0) / len(words) - p) < 4 * se + 1e-9, word
    assert np.mean([len(w) for w in words]) == pytest.approx(10.0, rel=0.05)  # E[length] = 1 / 0.1


def test_simplification_is_aiqs_single_pass():
    assert sampler.simplify("+-<>#") == "#"
    assert sampler.simplify("+<>-#") == "+-#"  # one pass per pair, in AIQ's order
    assert sampler.simplify("[+-],.#") == ",.#"
    assert sampler.simplify("+--+#") == "#"


def test_classify_finds_aiqs_strata_for_hand_written_programs():
    env = BFPrograms()
    texts = [",.#", ",,.#", ",+.#", ",-.#", "+.#", "+[],.#", ",>.#", ",%.#", ",,+.#"]
    got = sampler.classify(env, texts, KEY).tolist()
    assert got == [1, 2, 5, 6, sampler.PASSIVE, sampler.OVERTIME, sampler.PASSIVE, 11, 7]


def test_strata_do_not_depend_on_the_batch_size():
    env = BFPrograms()
    rng = np.random.default_rng(4)
    programs = [sampler.simplify(w) for w in sampler.draw_words(rng, 300)]
    whole = sampler.classify(env, programs, KEY)
    np.testing.assert_array_equal(sampler.classify(env, programs, KEY, max_batch=64), whole)
    assert len(set(whole.tolist())) > 4


def test_sampler_returns_active_programs_with_their_bits_and_strata():
    env = BFPrograms()
    batch, report = sampler.sample_programs(env, KEY, 24)
    assert isinstance(batch, ParamBatch) and batch.bits.shape == (24,)
    assert report.bits.tolist() == pytest.approx([sampler.description_length(w) for w in report.words])
    assert report.programs == [sampler.simplify(w) for w in report.words]
    assert np.array_equal(np.asarray(batch.params.stratum), report.strata)
    assert all(1 <= s <= 20 for s in report.strata)
    assert all("," in p and "." in p for p in report.programs)
    assert [machine.decode(c, n) for c, n in zip(batch.params.program, batch.params.length)] == report.programs
    # the draws that were rejected are the filtered mass; with no strata restriction the rest is accepted
    # (the last round may accept more than needed: those count as drawn and active)
    assert report.filtered_mass + report.outcomes["active"] / report.drawn == pytest.approx(1.0)
    assert 0.5 < report.filtered_mass < 1.0 and report.filtered_mass_se > 0
    # deterministic for a key, and the strata agree with a fresh classification
    again, _ = sampler.sample_programs(env, KEY, 24)
    np.testing.assert_array_equal(np.asarray(again.params.program), np.asarray(batch.params.program))
    stats = sampler.prior_diagnostics(env, jax.random.PRNGKey(2), draws=256)
    assert sum(stats["outcome_fractions"].values()) == pytest.approx(1.0)
    assert stats["acceptance_rate"] + stats["filtered_mass"] == pytest.approx(1.0)
    assert sum(stats["strata_distribution"].values()) == pytest.approx(1.0)
    _, rep = sampler.sample_programs(env, jax.random.PRNGKey(4), 6, strata=(1,))
    assert rep.strata.tolist() == [1] * 6
    assert sampler.classify(env, rep.programs, jax.random.PRNGKey(9)).tolist() == [1] * 6


def test_registry_entry():
    family = spec("BF-programs")
    assert set(family.constitutions) == {"no_low_symbols", "no_hang"}
    env = family.make()
    assert isinstance(env, BFPrograms) and env.num_actions == 5


# ---------------------------------------------------------------- constitution
def test_no_low_symbols_forbids_low_answers_to_low_observations():
    from aligned_rl.constitution import judge

    env = BFPrograms()
    cons = programs.no_low_symbols()
    params = env.program_params(",.,.#")
    state = env.initial_state().replace(outputs=jnp.array([2, 0], jnp.int8))
    verdict = judge(cons, cons.params, env, params, KEY, env.get_obs(state), state, 5)
    assert verdict.forbidden.tolist() == [True, False, False, False, False]
    state = state.replace(outputs=jnp.array([0, 1], jnp.int8))
    verdict = judge(cons, cons.params, env, params, KEY, env.get_obs(state), state, 5)
    assert not bool(verdict.forbidden.any())
    strict = cons.with_params(low=jnp.float32(2.0))
    verdict = judge(strict, strict.params, env, params, KEY, env.get_obs(state), state, 5)
    assert verdict.forbidden.tolist() == [True, True, False, False, False]


def test_no_hang_forbids_the_actions_that_hang_the_machine():
    from aligned_rl.constitution import judge

    env = BFPrograms(step_limit=100)
    cons = programs.no_hang()
    params = env.program_params(",[].#")  # any action but mid loops forever
    state = env.initial_state()
    verdict = judge(cons, cons.params, env, params, KEY, env.get_obs(state), state, 5)
    assert verdict.forbidden.tolist() == [True, True, False, True, True]


# -------------------------------------------------------------------- learning
def _train(*overrides):
    from aligned_rl.train.config import load_config
    from aligned_rl.train.loop import build, initial_state

    config = load_config(None, [
        "env.name=BF-programs", "constitution.name=no_low_symbols", "env.num_envs=16", "ppo.num_steps=32",
        "ppo.num_minibatches=4", "ppo.update_epochs=4", "ppo.total_timesteps=16384", "ppo.lr=3e-3",
        "ppo.hidden_sizes=[32,32]", "ppo.ent_coef=0.003", "run.devices=1", *overrides,
    ])
    setup = build(config)  # draws 16 programs from the prior, K and strata included
    assert setup.env_params.program.shape == (16, setup.env.max_program_len + 1)
    # Learn on one easy program instead: reward = this action - 1 (best: action 0), observation = the
    # previous action.  no_low_symbols forbids action 0 after observing 0, i.e. repeating the best action.
    setup.env_params = setup.env.program_params([",-.,.#"] * 16)
    state = initial_state(setup)
    _, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(
        state, setup.env_params, setup.cparams, setup.config.num_updates
    )
    return {k: np.asarray(v) for k, v in metrics.items()}


@pytest.mark.slow
def test_ppo_learns_a_program_and_the_constitution_lowers_violations():
    aligned = _train("alignment.beta=5.0")
    unaligned = _train("alignment.divergence=none")
    for m in (aligned, unaligned):
        # a random policy earns 0 per step on average (the reward symbol is uniform)
        assert abs(m["reward"][0]) < 0.25
        assert m["reward"][-5:].mean() > 0.4
    assert m["env/aiq_reward"][-5:].mean() == pytest.approx(100 * m["reward"][-5:].mean(), rel=1e-4)
    # the unaligned agent repeats action 0 and breaks the rule on most steps; the aligned one alternates
    assert unaligned["forbidden_rate"][-5:].mean() > 0.3
    assert aligned["forbidden_rate"][-5:].mean() < 0.3 * unaligned["forbidden_rate"][-5:].mean()
