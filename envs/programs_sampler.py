"""Drawing BF programs from the universal prior, with description lengths and AIQ's strata.

The code (AIQ's ``random_program``)
-----------------------------------
A program is drawn one instruction at a time, each of the ten characters ``<>+-,.[]#%``
with probability 1/10.  A drawn ``#`` counts as ``]``.  ``[`` opens a loop and ``]``
closes the innermost open one; the first ``]`` with no loop open ends the program and
is written as ``#``.  So a code word is a string of instructions with balanced brackets
followed by ``#``, and no code word is a prefix of another (the only ``#`` is the last
character, and brackets balance only there): the code is prefix-free.  The probability
of drawing the code word w is

    P(w) = (1/10)^(#instructions other than ] and #) * (2/10)^(#] + 1),

so its description length is ``K(w) = -log2 P(w)`` bits = ``a log2 10 + (b + 1) log2 5``
for ``a`` instructions other than brackets-closing and ``b`` closing brackets
(:func:`description_length`).  The lengths add up to 1 over all code words (Kraft
equality: the bracket depth is a random walk with drift -0.1, so a program ends with
probability 1).

AIQ then runs one simplification pass over the drawn word: it deletes every ``+-``, then
every ``-+``, then every ``<>``, every ``><`` and every ``[]``, in that order, each pass
once over the string (Python's ``str.replace``; :func:`simplify`).  The environment is the
simplified program.  ``ParamBatch.bits`` holds K of the drawn word, so that a sample from
this sampler is an environment drawn with probability 2^-K by the generating process.
Several words can simplify to the same program, so the probability of the *program* is
at least 2^-K (K is an upper bound on its own -log2 probability).  Note that the pass
changes behaviour in corner cases (``[]`` on a cell that is not ``mid`` loops until the
step limit; removed, it does nothing), exactly as in AIQ.

Filtering and strata (AIQ's ``BF_sampler``)
-------------------------------------------
A simplified program is *passive* (stratum 0) if it lacks ``.`` or ``,``; otherwise it is
run ``runs`` = 5 times for ``cycles`` = 200 cycles each against uniformly random actions
from a fresh machine.  If any cycle of any run uses all ``step_limit`` steps it is
*overtime* (stratum -1).  If the reward symbols from cycle 4 on are the same in all five
runs it is passive.  Otherwise each run is tested from cycle 6 on for ten simple
mappings from the actions a_t (the action of this cycle), a_{t-1}, ... to the reward
symbol r_t, in this order of priority:

==  =============================  ==  ==============================================
1   r = a_t (copy)                  6   r = a_t - 1 mod n
2   r = a_{t-1}                     7   r = a_{t-1} + 1 mod n
3   r = a_{t-2}                     8   r = a_{t-1} - 1 mod n
4   r = a_{t-3}                     9   r = a_t whenever a_t != mid
5   r = a_t + 1 mod n               10  r = a_{t-1} whenever a_{t-1} != mid
==  =============================  ==  ==============================================

If all five runs agree on one of them, that is the stratum; otherwise the stratum goes by
the simplified program's length: 11 (< 8), 12 (< 10), 13 (< 13), 14 (< 16), 15 (< 20),
16 (< 24), 17 (< 31), 18 (< 43), 19 (< 60), 20 (>= 60).  Programs longer than the
environment's ``max_program_len`` (after simplification) cannot be encoded and are
filtered too (code ``TOO_LONG``; at most 3.4e-11 of the mass at the default 1024,
:func:`word_length_tail`).

Passive, overtime and too long programs are rejected and drawing continues until ``n``
programs are accepted (AIQ's ``active_program``).  The rejected fraction of all draws is
a Monte Carlo estimate of the prior mass the family leaves out; :class:`SampleReport`
(from :func:`sample_programs`) and :func:`prior_diagnostics` give it with its standard
error, by reason, and the distribution over strata.  Conditioning on acceptance scales
every accepted program's probability by 1 / acceptance, which K does not include.

Where the work happens
----------------------
Drawing and simplifying run on the host in NumPy/Python (a ``numpy.random.Generator``
seeded from the JAX key), because programs have random lengths and rejection needs an
unbounded number of retries.  The classifying runs are one jitted, vmapped JAX call per
batch of candidates on the machine of ``programs_machine.py`` (the same cycle the
environment steps).  The sampler is therefore not jittable; it is called once, when a run is
built, and is deterministic for a given key.  ``strata=`` restricts the draw to some strata
(e.g. ``strata=(1,)`` for copy environments).  Each test run moves from cycle to cycle at its
own pace inside one flat loop, and the few slow runs are moved into smaller batches as the
others finish.  About 14% of draws are accepted (step limit 1000): 4096 programs take about
29,000 draws and 40 s on a shared 2-core CPU, 64 programs a few seconds (plus about 5 s of
compilation the first time per batch shape).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aligned_rl.codes import host_rng
from aligned_rl.envs.family import ParamBatch
from aligned_rl.envs.programs_machine import BFInterpreter, Carry, ProgramParams, hash_index, random_symbols

DRAW_ALPHABET = "<>+-,.[]#%"  # the ten equally likely draws; a drawn '#' counts as ']'
BITS_PER_INSTRUCTION = math.log2(10)  # any instruction but ']' and the final '#'
BITS_PER_CLOSE = math.log2(5)  # ']' and the final '#': probability 2/10
OVERTIME, PASSIVE, TOO_LONG = -1, 0, -3
LENGTH_BOUNDS = (8, 10, 13, 16, 20, 24, 31, 43, 60)  # strata 11..19 are lengths below these; 20 the rest
STRATUM_NAMES = {
    OVERTIME: "overtime", PASSIVE: "passive", TOO_LONG: "too long",
    1: "r=a", 2: "r=a[-1]", 3: "r=a[-2]", 4: "r=a[-3]", 5: "r=a+1", 6: "r=a-1", 7: "r=a[-1]+1",
    8: "r=a[-1]-1", 9: "r=a unless a=mid", 10: "r=a[-1] unless a[-1]=mid",
    **{11 + i: f"length<{b}" for i, b in enumerate(LENGTH_BOUNDS)}, 20: f"length>={LENGTH_BOUNDS[-1]}",
}
ACTIVE_STRATA = tuple(range(1, 21))


# --------------------------------------------------------------------------- the code
def description_length(word: str) -> float:
    """K in bits of a drawn code word (balanced brackets, then one final '#')."""
    bad = sorted(set(word) - set(DRAW_ALPHABET))
    if bad:
        raise ValueError(f"{word!r}: {bad} are not instructions")
    if not word.endswith("#") or "#" in word[:-1]:
        raise ValueError(f"{word!r} is not a code word: it must end with its only '#'")
    depth = 0
    for c in word[:-1]:
        depth += (c == "[") - (c == "]")
        if depth < 0:
            raise ValueError(f"{word!r} is not a code word: a ']' closes no loop before the end")
    if depth:
        raise ValueError(f"{word!r} is not a code word: {depth} loop(s) left open at the '#'")
    closes = word.count("]") + 1
    return (len(word) - closes) * BITS_PER_INSTRUCTION + closes * BITS_PER_CLOSE


def word_length_tail(length: int) -> float:
    """P(a code word drawn from the prior has more than ``length`` characters), exactly (in
    float64): the bracket depth is a walk that goes up with probability 1/10, down with 2/10
    (a ']' or '#'), and the word ends when it goes below 0.  Simplification only shortens a
    word, so this bounds the probability that a program exceeds ``length`` instructions
    (3.4e-11 at the default ``max_program_len`` of 1024, 1.3e-4 at 256)."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    depth = np.zeros((length + 2,), np.float64)  # the open words by depth, after n draws
    depth[0] = 1.0
    for _ in range(length):
        depth = 0.7 * depth + 0.1 * np.concatenate([[0.0], depth[:-1]]) + 0.2 * np.concatenate([depth[1:], [0.0]])
    return float(depth.sum())


def simplify(word: str) -> str:
    """AIQ's one simplification pass (see the module doc)."""
    for pair in ("+-", "-+", "<>", "><", "[]"):
        word = word.replace(pair, "")
    return word


def draw_words(rng: np.random.Generator, count: int, chunk: int = 64) -> list[str]:
    """``count`` code words drawn from the prior (vectorised over words, chunk by chunk)."""
    columns: list[np.ndarray] = []
    depth = np.zeros((count,), np.int64)
    end = np.full((count,), -1, np.int64)
    open_rows = np.arange(count)
    while open_rows.size:
        block = rng.integers(0, 10, size=(open_rows.size, chunk), dtype=np.int8)
        start = len(columns) * chunk
        column = np.zeros((count, chunk), np.int8)
        column[open_rows] = block
        columns.append(column)
        step = np.where(block == 6, 1, np.where((block == 7) | (block == 8), -1, 0))
        path = depth[open_rows, None] + np.cumsum(step, axis=1)
        below = path < 0
        done = below.any(axis=1)
        end[open_rows[done]] = start + below[done].argmax(axis=1)
        depth[open_rows] = path[:, -1]
        open_rows = open_rows[~done]
    draws = np.concatenate(columns, axis=1) if columns else np.zeros((count, 0), np.int8)
    chars = np.frombuffer(DRAW_ALPHABET.replace("#", "]").encode(), np.uint8)
    words = []
    for row, last in zip(draws, end):
        body = chars[row[:last]].tobytes().decode()
        words.append(body + "#")
    return words


# ------------------------------------------------------------------- classification
class _Runs(NamedTuple):
    """M test runs in flight (leading axis M everywhere)."""

    program: jax.Array
    match: jax.Array
    seeds: jax.Array  # uint32[M, 2]: action seed, '%' seed
    machine: Carry
    inputs: jax.Array
    t: jax.Array  # cycles completed
    in_cycle: jax.Array
    frozen: jax.Array  # ran overtime (the run stops there)
    rewards: jax.Array  # int8[M, cycles] reward symbols
    actions: jax.Array  # int8[M, cycles]


def _unfinished(env: BFInterpreter, r: _Runs) -> jax.Array:
    return r.in_cycle | (~r.frozen & (r.t < r.rewards.shape[1]))


@functools.lru_cache(maxsize=None)
def _run_kernels(env: BFInterpreter, cycles: int):
    """Jitted (start, advance) for test runs against random actions.

    Every run is a machine of one flat batch that goes from cycle to cycle at its own pace
    (the next cycle starts in the loop iteration where the last one ended), so a batch
    lasts as long as its slowest run's total, not the sum over cycles of the slowest cycle;
    ``advance`` stops after ``max_iters`` loop iterations so that the host can move the few
    slow runs into a smaller batch.  A run stops at its first overtime cycle.  The action of
    cycle t is ``hash_index(seed_a, t) mod n`` (uniform) and cycle t's ``%`` seed is
    ``hash_index(seed_r, t)``, with ``seed_a, seed_r`` drawn from the key.
    """
    n, mid = env.num_symbols, env.mid

    def start(program, match, seeds):
        M = program.shape[0]
        zeros = jnp.zeros((M,), jnp.int32)
        machine = env.start_cycle(
            ptr=zeros,
            tape=jnp.full((M, env.tape_len), mid, jnp.int8),
            outputs=jnp.full((M, 1 + env.obs_cells), mid, jnp.int8),
            seed=seeds[:, 1],
            active=jnp.zeros((M,), jnp.bool_),
        )
        false = jnp.zeros((M,), jnp.bool_)
        return _Runs(program, match, seeds, machine, jnp.full((M, env.input_len), mid, jnp.int8), zeros,
                     false, false, jnp.full((M, cycles), mid, jnp.int8), jnp.zeros((M, cycles), jnp.int8))

    def body(r: _Runs) -> _Runs:
        M = r.t.shape[0]
        rows = jnp.arange(M)
        c = env.execute(r.machine, r.in_cycle & env.running(r.machine), r.program, r.match, r.inputs)
        ended = r.in_cycle & ~env.running(c)
        slot = jnp.minimum(r.t, cycles - 1)
        rewards = r.rewards.at[rows, slot].set(jnp.where(ended, c.outputs[:, 0], r.rewards[rows, slot]))
        frozen = r.frozen | (ended & (c.step >= env.step_limit))
        t = r.t + ended
        in_cycle = r.in_cycle & ~ended
        begin = ~in_cycle & ~frozen & (t < cycles)
        slot = jnp.minimum(t, cycles - 1)
        action = random_symbols(r.seeds[:, 0], t, n).astype(jnp.int8)
        actions = r.actions.at[rows, slot].set(jnp.where(begin, action, r.actions[rows, slot]))
        pushed = jnp.concatenate([action[:, None], r.inputs[:, :-1]], axis=1)
        inputs = jnp.where(begin[:, None], pushed, r.inputs)
        def fresh(x):  # a new cycle: heads and counters at 0
            return jnp.where(begin, 0, x)

        c = c._replace(ip=fresh(c.ip), step=fresh(c.step), in_ptr=fresh(c.in_ptr), out_ptr=fresh(c.out_ptr),
                       n_rand=fresh(c.n_rand), seed=jnp.where(begin, hash_index(r.seeds[:, 1], t), c.seed),
                       halted=c.halted & ~begin)
        return r._replace(machine=c, inputs=inputs, t=t, in_cycle=in_cycle | begin, frozen=frozen,
                          rewards=rewards, actions=actions)

    def advance(r: _Runs, max_iters: jax.Array) -> tuple[_Runs, jax.Array]:
        def cond(state):
            r, i = state
            return jnp.any(_unfinished(env, r)) & (i < max_iters)

        r, _ = jax.lax.while_loop(cond, lambda state: (body(state[0]), state[1] + 1), (r, jnp.int32(0)))
        return r, _unfinished(env, r)

    return jax.jit(start), jax.jit(advance)


def _bucket(size: int) -> int:
    return max(64, 1 << (size - 1).bit_length())


@functools.partial(jax.jit, static_argnums=(2, 3))
def run_seeds(key: jax.Array, first: jax.Array, count: int, runs: int) -> jax.Array:
    """uint32[count * runs, 2]: the (action, '%') seeds of the test runs of programs
    ``first .. first + count - 1`` of a classification with ``key`` (program j's from
    ``fold_in(key, j)``, so a program's runs do not depend on the batch it is run in)."""
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(first + jnp.arange(count))
    return jax.vmap(lambda k: jax.random.bits(k, (runs, 2), jnp.uint32))(keys).reshape(count * runs, 2)



def test_runs(env: BFInterpreter, params: ProgramParams, seeds: jax.Array, runs: int = 5, cycles: int = 200,
              first_iters: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run every program of ``params`` (leading axis B) ``runs`` times for ``cycles`` cycles
    against random actions from ``seeds`` (:func:`run_seeds`): (overtime bool[B], rewards
    int8[B, runs, cycles], actions int8[B, runs, cycles])."""
    start, advance = _run_kernels(env, cycles)
    B = int(params.length.shape[0])
    M = B * runs
    r = start(jnp.repeat(params.program, runs, axis=0), jnp.repeat(params.match, runs, axis=0), seeds)
    frozen = np.zeros((M,), bool)
    rewards = np.zeros((M, cycles), np.int8)
    actions = np.zeros((M, cycles), np.int8)
    where = np.arange(M)  # row of the results each row of r belongs to (-1: padding)
    iters = first_iters
    while True:
        r, unfinished = advance(r, jnp.int32(iters))
        unfinished, done_frozen, done_rewards, done_actions = jax.device_get(
            (unfinished, r.frozen, r.rewards, r.actions))
        done = ~unfinished & (where >= 0)
        frozen[where[done]] = done_frozen[done]
        rewards[where[done]] = done_rewards[done]
        actions[where[done]] = done_actions[done]
        keep = np.nonzero(unfinished)[0]
        if keep.size == 0:
            break
        size = _bucket(keep.size)
        if size < where.size:  # move the slow runs into a smaller batch
            pad = size - keep.size
            take = jnp.asarray(np.concatenate([keep, np.full((pad,), keep[0])]))
            r = jax.tree.map(lambda x, take=take: x[take], r)
            padding = jnp.asarray(np.arange(size) >= keep.size)
            r = r._replace(in_cycle=r.in_cycle & ~padding, frozen=r.frozen | padding)
            where = np.concatenate([where[keep], np.full((pad,), -1)])
        iters *= 4
    over = frozen.reshape(B, runs).any(axis=1)
    return over, rewards.reshape(B, runs, cycles), actions.reshape(B, runs, cycles)


def mapping_class(rewards: np.ndarray, actions: np.ndarray, n: int, mid: int) -> np.ndarray:
    """AIQ's simple-mapping class of each run ([..., cycles] arrays): 1..10, or 99 for none."""
    r, a = rewards[..., 6:].astype(np.int64), actions.astype(np.int64)
    a0, a1, a2, a3 = a[..., 6:], a[..., 5:-1], a[..., 4:-2], a[..., 3:-3]
    tests = [
        r == a0, r == a1, r == a2, r == a3, r == (a0 + 1) % n, r == (a0 - 1) % n,
        r == (a1 + 1) % n, r == (a1 - 1) % n, (r == a0) | (a0 == mid), (r == a1) | (a1 == mid),
    ]
    holds = np.stack([t.all(axis=-1) for t in tests], axis=-1)  # [..., 10]
    return np.where(holds.any(axis=-1), holds.argmax(axis=-1) + 1, 99)


def length_stratum(length: int) -> int:
    for i, bound in enumerate(LENGTH_BOUNDS):
        if length < bound:
            return 11 + i
    return 20


#: work-tape bytes a classifying batch may hold (runs x programs x tape_len), by backend; it
#: bounds max_batch (the strata found do not depend on the batch size)
CLASSIFY_TAPE_BYTES = {"cpu": 1 << 28}
CLASSIFY_TAPE_BYTES_ACCELERATOR = 1 << 32


def classify(env: BFInterpreter, programs: Sequence[str], key: jax.Array, runs: int = 5, cycles: int = 200,
             max_batch: int = 2048) -> np.ndarray:
    """AIQ's stratum of each (already simplified) program: -1 overtime, 0 passive, 1..20 active,
    ``TOO_LONG`` if it does not fit ``env.max_program_len``.  Programs are run ``max_batch`` at
    a time, fewer where their tapes would exceed ``CLASSIFY_TAPE_BYTES`` (on a CPU 256 MiB: 512
    programs at AIQ's 100,000 cells; 4 GiB on an accelerator).  The j-th program that needs
    test runs (one with ``,`` and ``.``) draws their actions and '%' symbols from
    ``fold_in(key, j)``, whatever the batch it runs in."""
    programs = list(programs)
    budget = CLASSIFY_TAPE_BYTES.get(jax.default_backend(), CLASSIFY_TAPE_BYTES_ACCELERATOR)
    fits = budget // (runs * env.tape_len)
    max_batch = max(64, min(max_batch, 1 << max(fits, 1).bit_length() - 1))
    out = np.full((len(programs),), PASSIVE, np.int64)
    todo = []
    for i, p in enumerate(programs):
        if len(p) > env.max_program_len:
            out[i] = TOO_LONG
        elif "." in p and "," in p:
            todo.append(i)
    for start in range(0, len(todo), max_batch):
        idx = todo[start:start + max_batch]
        texts = [programs[i] for i in idx] + ["#"] * (_bucket(len(idx)) - len(idx))  # few shapes: few compilations
        seeds = run_seeds(key, jnp.int32(start), len(texts), runs)  # padding rows run too, and are dropped
        over, rewards, actions = test_runs(env, env.program_params(texts), seeds, runs, cycles)
        over, rewards, actions = over[: len(idx)], rewards[: len(idx)], actions[: len(idx)]
        same = (rewards[:, :, 4:] == rewards[:, :1, 4:]).all(axis=(1, 2))
        classes = mapping_class(rewards, actions, env.num_symbols, env.mid)  # [B, runs]
        agree = (classes == classes[:, :1]).all(axis=1) & (classes[:, 0] != 99)
        for j, i in enumerate(idx):
            if over[j]:
                out[i] = OVERTIME
            elif same[j]:
                out[i] = PASSIVE
            elif agree[j]:
                out[i] = classes[j, 0]
            else:
                out[i] = length_stratum(len(programs[i]))
    return out


# ------------------------------------------------------------------------ sampling
@dataclasses.dataclass
class SampleReport:
    """What a draw from the prior looked like (see :func:`sample_programs`)."""

    drawn: int  # code words drawn
    accepted: int  # programs returned (n)
    outcomes: dict[str, int]  # drawn words by outcome: 'passive', 'overtime', 'too long', 'active', 'other strata'
    strata_counts: dict[int, int]  # active draws by stratum (before any strata= restriction)
    words: list[str]  # the accepted code words, in order
    programs: list[str]  # the accepted programs (simplified)
    strata: np.ndarray  # int[n]
    bits: np.ndarray  # float32[n]: K of each accepted code word

    @property
    def acceptance_rate(self) -> float:
        """Fraction of draws that pass the filters (and the strata restriction, if any)."""
        ok = self.outcomes["active"] - self.outcomes["other strata"]
        return ok / self.drawn if self.drawn else float("nan")

    @property
    def filtered_mass(self) -> float:
        """Estimated prior mass of passive, overtime and too long programs."""
        bad = self.outcomes["passive"] + self.outcomes["overtime"] + self.outcomes["too long"]
        return bad / self.drawn if self.drawn else float("nan")

    @property
    def filtered_mass_se(self) -> float:
        p = self.filtered_mass
        return math.sqrt(max(p * (1 - p), 0.0) / self.drawn) if self.drawn else float("nan")

    def summary(self) -> dict:
        active = sum(self.strata_counts.values())
        return {
            "drawn": self.drawn,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "filtered_mass": self.filtered_mass,
            "filtered_mass_se": self.filtered_mass_se,
            "outcome_fractions": {k: v / self.drawn for k, v in self.outcomes.items()},
            "strata_distribution": {s: c / active for s, c in sorted(self.strata_counts.items())} if active else {},
            "mean_bits_accepted": float(np.mean(self.bits)) if len(self.bits) else float("nan"),
        }


def sample_programs(env: BFInterpreter, key: jax.Array, n: int, strata: Sequence[int] | None = None,
                    runs: int = 5, cycles: int = 200, max_draws: int = 10_000_000) -> tuple[ParamBatch, SampleReport]:
    """``n`` active programs from the prior (restricted to ``strata`` if given) and a report."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    wanted = set(ACTIVE_STRATA if strata is None else strata)
    if not wanted <= set(ACTIVE_STRATA):
        raise ValueError(f"strata must be among the active strata 1..20, got {sorted(wanted)}")
    rng = host_rng(key)
    outcomes = {"passive": 0, "overtime": 0, "too long": 0, "active": 0, "other strata": 0}
    strata_counts: dict[int, int] = {}
    words: list[str] = []
    programs: list[str] = []
    chosen: list[int] = []
    drawn, round_ = 0, 0
    while len(words) < n:
        if drawn >= max_draws:
            raise RuntimeError(
                f"drew {drawn} programs and accepted only {len(words)} of the {n} wanted "
                f"(strata {sorted(wanted)}); raise max_draws or widen strata"
            )
        # acceptance so far (a prior of 1 in 8 before the first round), and 20% to spare
        rate = (outcomes["active"] - outcomes["other strata"] + 1) / (drawn + 8)
        want = n - len(words)
        batch = int(min(max(256, math.ceil(1.2 * want / rate)), 65536, max_draws - drawn))
        batch_words = draw_words(rng, batch)
        batch_programs = [simplify(w) for w in batch_words]
        codes = classify(env, batch_programs, jax.random.fold_in(key, round_), runs, cycles)
        round_ += 1
        drawn += batch
        for w, p, s in zip(batch_words, batch_programs, codes):
            s = int(s)
            if s in (PASSIVE, OVERTIME, TOO_LONG):
                outcomes[{PASSIVE: "passive", OVERTIME: "overtime", TOO_LONG: "too long"}[s]] += 1
                continue
            outcomes["active"] += 1
            strata_counts[s] = strata_counts.get(s, 0) + 1
            if s not in wanted:
                outcomes["other strata"] += 1
            elif len(words) < n:
                words.append(w)
                programs.append(p)
                chosen.append(s)
    strata_arr = np.asarray(chosen, np.int32)
    bits = np.asarray([description_length(w) for w in words], np.float32)
    params = env.program_params(programs, stratum=strata_arr)
    report = SampleReport(drawn, len(words), outcomes, strata_counts, words, programs, strata_arr, bits)
    return ParamBatch(params, jnp.asarray(bits), report.filtered_mass), report


def sample_params(env: BFInterpreter, key: jax.Array, n: int) -> ParamBatch:
    """The registry's sampler: ``n`` active programs from the prior, K in bits each."""
    batch, _ = sample_programs(env, key, n)
    return batch


def prior_diagnostics(env: BFInterpreter, key: jax.Array, draws: int = 4096, runs: int = 5,
                      cycles: int = 200) -> dict:
    """Classify ``draws`` code words from the prior: acceptance rate, filtered mass (with its
    standard error, by reason) and the distribution over AIQ's strata."""
    rng = host_rng(key)
    words = draw_words(rng, draws)
    programs = [simplify(w) for w in words]
    codes = classify(env, programs, jax.random.fold_in(key, 0), runs, cycles)
    outcomes = {"passive": int(np.sum(codes == PASSIVE)), "overtime": int(np.sum(codes == OVERTIME)),
                "too long": int(np.sum(codes == TOO_LONG)), "active": int(np.sum(codes > 0)), "other strata": 0}
    counts = {int(s): int(np.sum(codes == s)) for s in np.unique(codes[codes > 0])}
    active = [i for i in range(draws) if codes[i] > 0]
    report = SampleReport(
        drawn=draws, accepted=len(active), outcomes=outcomes, strata_counts=counts,
        words=[words[i] for i in active], programs=[programs[i] for i in active],
        strata=codes[active].astype(np.int32),
        bits=np.asarray([description_length(words[i]) for i in active], np.float32),
    )
    return report.summary()
