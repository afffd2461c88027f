"""Asynchronous measurement of the AIQ baselines on BF programs: no lane waits for the slowest.

``aligned-rl measure``'s :class:`~aligned_rl.train.measure_runner.EnvRunner` runs agent and
environments in lockstep: one scan step is one agent step and one vmapped machine cycle of
every environment, so every step lasts as long as the slowest program's cycle (most cycles
take about 17 machine instructions, a few run for hundreds).  :class:`AsyncRunner` measures the
same thing for an AIQ baseline (:class:`~aligned_rl.train.agents.BaselineAgent`) in
``BF-programs`` environments without that wait.  Every environment (and its antithetic twin)
is a *lane*; one loop iteration executes one machine instruction in every lane whose cycle is
under way; a lane whose cycle has ended waits, and the agent steps the waiting lanes together
(a *round*): it reads each one's reward and observation off its output tape, chooses the next
action, pushes it on the input tape and starts the next cycle, until every lane has run
``episode_length`` cycles.

The loop (``lax.while_loop``s, run a chunk of iterations per call so that a progress bar can
move; no host round trip per cycle)
------------------------------------------------------------------------------------------
* Registers are packed into three words per lane (:class:`Layout`; ``ctl``: instruction
  pointer, input head, output head, steps of the cycle; ``data``: work-tape head, the cell
  under the head, the output cells; ``rs``: the '%' stream) plus the readable input cells
  packed into a few uint32 words, so that an instruction is a handful of fused elementwise
  passes over the lanes (about 4 ns per lane on one core of the 2-core machine of
  docs/benchmarks.md).
* The cell under the head lives in ``data``; the work tape is touched only when the head
  moves (the old cell written back, the new one read).  Tapes and programs are stored
  transposed (``[tape_len, lanes]``, ``[max_program_len + 1, lanes]``): heads near the start
  of their tapes and instruction pointers near the start of their programs share cache lines
  and pages across lanes.  A cell is numbered by one uint32 (up to 2^32 - 1 cells: 42,949
  lanes of 100,000 cells, antithetic twins of 16,384 programs included), past that by
  (cell, lane).
* Rounds: an inner loop executes instructions until a round is due: ``S / ROUND_DIVISOR`` of
  the stage's S lanes wait, or the waiting lanes are ``1 / WAIT_FRACTION`` of its unfinished
  ones (the tail of a stage).  The round compacts the first ``S / ROUND_DIVISOR`` waiting
  lanes (a prefix sum) and steps them ``CHUNK_LANES`` at a time: each lane's agent state,
  sums and counters are gathered from one record per lane (:class:`Record`), the agent steps
  them (vmapped), and they are written back in one scatter per array.  Rounds, not
  instructions, cost most (about 100 ns per lane besides the agent's own step, the agent's
  threefry draws the largest part of that step).
* Stages: a stage of S lanes runs while more than ``S / STAGE_FACTOR`` lanes are unfinished;
  then the unfinished ones move into a stage ``STAGE_FACTOR`` times smaller (their registers
  gathered; tapes, agent states and sums stay where they are and are addressed through
  ``rows``), down to ``STAGE_MIN`` lanes, so that the last slow lanes (the slowest of 16,384
  programs from the prior needed about 480,000 iterations for its 1000 cycles) cost about
  1 us per iteration, not a full-batch iteration each.  A stage of more than ``BLOCK_LANES`` lanes runs as blocks of at
  most that many, one after the other, each down to its share of the next stage: a block's
  registers and its programs' current instructions stay in the caches.
* Threads: on a CPU that other processes share, XLA's intra-op threads wait for each other
  whenever one of them is descheduled, and this loop's small kernels (tens of microseconds)
  suffer most: pinned to one core (``taskset -c 0``) both runners ran about twice as fast on
  the shared 2-core machine of docs/benchmarks.md.

Semantics (AIQ's, as the lockstep runner's)
-------------------------------------------
* The agent's first step sees the environment's reset: reward 0 and every output cell
  ``mid``.  Agent step t (0-based) of lane i chooses an action; the cycle runs with it; its
  reward ``sign_i * (s - m) / m`` (``s`` output cell 0, ``m = (n - 1) / 2``, ``sign_i = -1``
  for the antithetic twin) is summed, and the agent sees it, times the agent's
  ``reward_scale``, with the next observation.
* Agent keys: ``BaselineAgent.init`` of ``split(k_agent, size)`` (twins share their
  environment's key), where ``k_reset, k_agent, _ = split(fold_in(key, 0), 3)`` for the key
  given to :meth:`AsyncRunner.run_buckets`: exactly the keys of ``EnvRunner`` with one bucket,
  so the agent draws the same uniforms in both runners.
* Randomness of the machine (where the runners differ): lane i's cycle t runs with seed
  ``hash_index(lane_seed_i, t)`` (``programs_machine.hash_index``), i.e. its j-th '%' writes
  ``hash_index(hash_index(lane_seed_i, t), j) mod n``, where ``lane_seed_i =
  jax.random.bits(split(k_reset, size)[i], (), uint32)`` (twins share it).  The lockstep
  runner draws every cycle's seed from that step's key instead; a program without '%'
  gives both runners the same rewards bit for bit.
* Sums per lane, float32 and in time order, with ``EnvRunner``'s expressions:
  ``measure_runner.SUMS`` without a constitution (``constrained`` = ``reward``, ``aligned`` =
  (1 - w) r + w, ``lawful`` = 1 per step, ``violations`` = 0, ``discounted`` = sum gamma^t
  r_t) and ``voided``, the cycles that ran overtime (all ``step_limit`` steps), always
  (the ``voiding`` argument is accepted for ``EnvRunner``'s signature and changes nothing).
  The results do not depend on the scheduling (stages, blocks, rounds): every lane's
  sequence of actions and cycles is fixed by its keys.

Timing: ``seconds`` counts the loop and the moves between stages (blocked until ready);
building the lanes (allocating the tapes, the agent's first step) and compiling are not
counted, as ``EnvRunner`` does not count its reset.  :meth:`AsyncRunner.eligible` says
whether a measurement can run here: a baseline, a BF-programs family (continuing), no
constitution, one device, registers that fit the packing.  Memory: the tapes (``tape_len``
bytes per lane: 1.6 GB for 16,384 lanes), the programs (two bytes per instruction slot and
lane), a record and a few words of registers per lane.

Measured (``python -m bench.measure_q_lambda --repeats 3``, docs/benchmarks.md): Q(lambda) on
16,384 programs x 1000 steps on the shared 2-core CPU, 1.8 million agent-environment steps
per second pinned to one core (1.9x ``EnvRunner``, 23x the plain-Python machine and agent),
0.96 million unpinned (1.9x and 11x).
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import aligned_rl.envs as envs
from aligned_rl.envs.programs_machine import (CLOSE, DEC, GOLDEN, HALT, INC, LEFT, OPEN, RAND, READ, RIGHT, WRITE,
                                              BFInterpreter, ProgramParams, hash_index)
from aligned_rl.train import devices
from aligned_rl.train.agents import BaselineAgent
from aligned_rl.train.compiled import CompiledCache
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_runner import SUMS

#: a round runs as soon as lanes / ROUND_DIVISOR lanes wait (the agent steps that many), or as soon
#: as the waiting lanes are 1 / WAIT_FRACTION of the unfinished ones (it steps them CHUNK_LANES at a time)
ROUND_DIVISOR = 2
CHUNK_LANES = 256
WAIT_FRACTION = 2
#: the unfinished lanes move into a stage STAGE_FACTOR times smaller, down to STAGE_MIN lanes
STAGE_FACTOR = 4
STAGE_MIN = 16
#: a stage of more lanes runs in blocks of at most BLOCK_LANES lanes, one after the other (each
#: block's registers and code stay in the caches), each down to its share of the next stage
BLOCK_LANES = 4096
#: loop iterations per compiled call (the progress bar moves between calls)
CHUNK_ITERATIONS = 4096

OUTPUT_SUMS = SUMS + ("voided",)
#: the largest uint32: an index past the end of every tape indexed by one uint32 (a write there is dropped)
FAR = 2**32 - 1


class Layout:
    """The packed registers of one machine configuration (bit fields of int32 words).

    ``ctl``: ip | in_ptr | out_ptr | step, where step counts the cycle's machine steps while it
    runs and, once it has ended, is ``step_limit`` (overtime), ``step_limit + 1`` (ended in
    time) or ``step_limit + 2`` (the lane has run all its cycles).  ``data``: head + tape_len
    (in [0, 2 tape_len)) | cell under the head | output cells (``b`` bits each, cell 0 the
    reward symbol), unless the outputs need a word of their own (``outs_apart``).  The input
    tape's readable cells (``input_len - 1``: AIQ never reads the last one) are packed
    ``per_word`` to a uint32 word, cell 0 (this cycle's action) lowest.
    """

    def __init__(self, env: BFInterpreter):
        self.n, self.mid, self.L = env.num_symbols, env.mid, env.tape_len
        self.limit, self.out_len = env.step_limit, 1 + env.obs_cells
        self.P = env.max_program_len + 1
        self.readable = env.input_len - 1  # input cells a cycle can read
        self.b = max(1, (self.n - 1).bit_length())  # bits per symbol
        widths = [("ip", (self.P - 1).bit_length()), ("in", max(1, self.readable.bit_length())),
                  ("out", self.out_len.bit_length()), ("step", (self.limit + 2).bit_length())]
        self.shift, self.width = {}, dict(widths)
        at = 0
        for name, w in widths:
            self.shift[name] = at
            at += w
        self.ctl_bits = at
        self.pp_bits = (2 * self.L - 1).bit_length()
        self.cell_shift = self.pp_bits
        self.outs_shift = self.pp_bits + self.b
        self.outs_apart = self.outs_shift + self.out_len * self.b > 31
        self.data_bits = self.outs_shift + (0 if self.outs_apart else self.out_len * self.b)
        self.per_word = 1 << (32 // self.b).bit_length() - 1  # a power of two
        self.words = max(1, -(-self.readable // self.per_word))
        self.code_dtype = jnp.int16 if (self.P << 4) < 2**15 else jnp.int32
        self.ended_time, self.finished = self.limit + 1, self.limit + 2

    def fits(self) -> tuple[bool, str]:
        if self.ctl_bits > 31:
            return False, (f"the control registers need {self.ctl_bits} bits (max_program_len, input_len, obs_cells "
                           "and step_limit too large to pack in 31)")
        if self.data_bits > 31 or self.out_len * self.b > 31:
            return False, f"the head and cell registers need more than 31 bits (tape_len {self.L} too large)"
        return True, "ok"

    def field(self, ctl: jax.Array, name: str) -> jax.Array:
        x = ctl >> self.shift[name]
        return x if name == "step" else x & ((1 << self.width[name]) - 1)


class Lanes(NamedTuple):
    """A stage of S lanes (leading axis S), and where the run stands."""

    ctl: jax.Array  # int32[S]
    data: jax.Array  # int32[S]
    outs: jax.Array  # int32[S] output cells (only with Layout.outs_apart; else zeros)
    rs: jax.Array  # uint32[S]: the seed of the next '%' of the cycle
    hist: tuple  # uint32[S] per word: the input tape
    rows: jax.Array  # int32[S]: the lane's row in Run (tape column, agent state, sums)
    prow: jax.Array  # int32[S]: the lane's program (column of the code table)


class Run(NamedTuple):
    """Per lane of the whole batch (N lanes), addressed through ``Lanes.rows``."""

    tape: jax.Array  # int8[tape_len, N]
    record: tuple  # per lane: agent state, sums, cycles completed, seed, sign (packed as Record says)


class Record:
    """A pytree of per-lane arrays (leading axis N) kept as a few arrays, so that a round moves a
    lane's agent state, sums and counters in a few pieces: leaves of at least ``WIDE`` values per
    lane (the agent's tables) stay arrays of their own; the others are packed into one uint32 row
    per lane (four-byte values bit cast, eight-byte ones as two words, narrower ones widened,
    PRNG keys by their data)."""

    WIDE = 8

    def __init__(self, example: Any):
        leaves, self.treedef = jax.tree.flatten(example)
        self.specs, at, self.wide = [], 0, 0
        for x in leaves:
            key_impl = jax.random.key_impl(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else None
            data = jax.random.key_data(x) if key_impl is not None else x
            item = np.dtype(data.dtype).itemsize
            count = int(np.prod(data.shape[1:], dtype=np.int64))
            if key_impl is None and count >= self.WIDE:
                self.specs.append((data.shape[1:], data.dtype, None, None, 1 + self.wide))
                self.wide += 1
                continue
            width = count * (2 if item == 8 else 1)
            self.specs.append((data.shape[1:], data.dtype, key_impl, at, width))
            at += width
        self.width = at

    def pack(self, tree: Any) -> tuple:
        parts, wide = [], []
        for x, (_, dtype, key_impl, at, _) in zip(jax.tree.leaves(tree), self.specs):
            if at is None:
                wide.append(x)
                continue
            if key_impl is not None:
                x = jax.random.key_data(x)
            M = x.shape[0]
            if np.dtype(dtype).itemsize < 4:
                x = x.astype(jnp.int32)
            parts.append(jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(M, -1))
        return (jnp.concatenate(parts, axis=1),) + tuple(wide)

    def unpack(self, record: tuple) -> Any:
        leaves = []
        packed = record[0]
        M = packed.shape[0]
        for shape, dtype, key_impl, at, width in self.specs:
            if at is None:
                leaves.append(record[width])
                continue
            words = packed[:, at:at + width]
            item = np.dtype(dtype).itemsize
            if item == 8:
                x = jax.lax.bitcast_convert_type(words.reshape((M,) + tuple(shape) + (2,)), dtype)
            elif item == 4:
                x = jax.lax.bitcast_convert_type(words.reshape((M,) + tuple(shape)), dtype)
            else:
                x = jax.lax.bitcast_convert_type(words.reshape((M,) + tuple(shape)), jnp.int32).astype(dtype)
            leaves.append(jax.random.wrap_key_data(x, impl=key_impl) if key_impl is not None else x)
        return jax.tree.unflatten(self.treedef, leaves)


def _gather_rows(record: tuple, rows: jax.Array) -> tuple:
    """Each array of ``record`` at ``rows`` (one slice per row: cheaper than XLA's gather on a CPU)."""
    return tuple(jax.vmap(lambda i, x=x: jax.lax.dynamic_slice_in_dim(x, i, 1, 0)[0])(rows) for x in record)


def _scatter_rows(record: tuple, rows: jax.Array, values: tuple, count: jax.Array) -> tuple:
    """``record`` with rows ``rows[:count]`` of every array set to ``values[:count]`` (in place;
    ``rows[:count]`` ascending and distinct)."""
    slots = jnp.arange(rows.shape[0], dtype=jnp.int32)
    at = jnp.where(slots < count, rows, record[0].shape[0] + slots)  # past the end: dropped
    return tuple(x.at[at].set(v.astype(x.dtype), mode="drop")
                 for x, v in zip(record, values))


class AsyncRunner:
    """A baseline run in chosen rows of ``all_params`` for ``horizon`` cycles, lanes at their own
    pace (see the module doc).  Mirrors :class:`~aligned_rl.train.measure_runner.EnvRunner`."""

    def __init__(self, config: MeasureConfig, agent: Any, env: Any, all_params: Any, constitution: Any,
                 mesh: Mesh | None, value: Any, horizon: int, voiding: Any = None):
        ok, reason = self.eligible(config, agent, env, constitution, mesh)
        if not ok:
            raise ConfigError(f"the asynchronous runner cannot run this measurement: {reason}")
        self.config, self.agent, self.env, self.all_params, self.mesh = config, agent, env, all_params, mesh
        self.value, self.horizon, self.voiding, self.constitution = value, int(horizon), voiding, constitution
        self.layout = Layout(env)
        self.twins = 2 if config.antithetic else 1
        self.seconds = 0.0
        self.steps = 0
        self.memory: dict[str, int] = {}
        self.trace: list[tuple] = []  # per call: (stage size, iterations, seconds, unfinished, rounds, cycles done)
        self.round_divisor, self.wait_fraction, self.chunk_lanes = ROUND_DIVISOR, WAIT_FRACTION, CHUNK_LANES
        self.stage_factor, self.stage_min, self.chunk_iterations = STAGE_FACTOR, STAGE_MIN, CHUNK_ITERATIONS
        self.block_lanes = BLOCK_LANES
        self.flat_index_limit = FAR  # tapes of more cells go by (cell, lane)
        self._start = CompiledCache(self._build, static_argnums=(4,))
        self._advance = CompiledCache(self._loop, donate_argnums=(0, 1))
        self._compact = CompiledCache(self._shrink, static_argnums=(1,))

    @property
    def compile_seconds(self) -> float:
        return sum(c.compile_seconds for c in (self._start, self._advance, self._compact))

    @classmethod
    def eligible(cls, config: MeasureConfig, agent: Any, env: Any, constitution: Any,
                 mesh: Mesh | None) -> tuple[bool, str]:
        """(whether this runner can run the measurement, why not)."""
        if not isinstance(agent, BaselineAgent):
            return False, f"{getattr(agent, 'name', agent)!r} is not an AIQ baseline (the runner steps only those)"
        try:
            kind = envs.spec(config.env).value.kind
        except (KeyError, AttributeError):
            kind = None
        if kind != "continuing":
            return False, f"family {config.env!r} is {kind or 'not valued'}, not continuing"
        if not isinstance(env, BFInterpreter):
            return False, f"{getattr(env, 'name', env)!r} is not a BF-programs family"
        if config.constitution != "none" or (constitution is not None and not constitution.is_empty):
            return False, f"constitution {config.constitution!r}: the runner measures without one"
        if mesh is not None and mesh.devices.size > 1:
            return False, f"a mesh of {mesh.devices.size} devices (the runner uses one)"
        return Layout(env).fits()

    # ------------------------------------------------------------------ compiled pieces
    def _keys(self, key: jax.Array, size: int) -> jax.Array:
        keys = jax.random.split(key, size)
        return jnp.concatenate([keys] * self.twins)

    def _initial_record(self, key: jax.Array, sign: jax.Array, size: int) -> dict:
        """Every lane's record before the agent's first step (see :class:`Record`)."""
        N = size * self.twins
        k_reset, k_agent, _ = jax.random.split(key, 3)
        zeros = jnp.zeros((N,), jnp.float32)
        return {"agent": self.agent.init(self._keys(k_agent, size)), "sums": {k: zeros for k in OUTPUT_SUMS},
                "t": jnp.zeros((N,), jnp.int32),
                "seed": jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32))(self._keys(k_reset, size)),
                "sign": sign}

    def _build(self, program: jax.Array, match: jax.Array, key: jax.Array, sign: jax.Array,
               size: int) -> tuple[Lanes, Run, jax.Array]:
        """The lanes before their first cycle: the agent's first step, the first action pushed.
        Returns (lanes, run, code table)."""
        lay, agent = self.layout, self.agent
        N = size * self.twins
        record = self._initial_record(key, sign, size)
        op = program.astype(jnp.int32)
        bracket = (op == OPEN) | (op == CLOSE)
        code = (op | jnp.where(bracket, (match.astype(jnp.int32) + 1) << 4, 0)).astype(lay.code_dtype).T
        mid = jnp.int32(lay.mid)
        outs0 = functools.reduce(lambda acc, k: acc | (mid << (k * lay.b)), range(lay.out_len), jnp.int32(0))
        obs0 = sum(lay.mid * lay.n ** k for k in range(lay.out_len - 1))
        index = jnp.full((N,), obs0 if agent.indexed else 0, jnp.int32)
        states, action = jax.vmap(agent.agent.step)(record["agent"], index, jnp.zeros((N,), jnp.float32))
        record["agent"] = states
        hist = self._push(tuple(jnp.full((N,), self._mid_word(), jnp.uint32) for _ in range(lay.words)), action)
        data = jnp.full((N,), lay.L | (lay.mid << lay.cell_shift), jnp.int32)
        if lay.outs_apart:
            outs = jnp.full((N,), outs0, jnp.int32)
        else:
            data, outs = data | (outs0 << lay.outs_shift), jnp.zeros((N,), jnp.int32)
        lanes = Lanes(ctl=jnp.zeros((N,), jnp.int32), data=data, outs=outs, rs=hash_index(record["seed"], 0),
                      hist=hist, rows=jnp.arange(N, dtype=jnp.int32), prow=jnp.arange(N, dtype=jnp.int32) % size)
        run = Run(tape=jnp.full((lay.L, N), jnp.int8(lay.mid)), record=self._rec.pack(record))
        return lanes, run, code

    def _mid_word(self) -> int:
        lay = self.layout
        return sum(lay.mid << (k * lay.b) for k in range(lay.per_word))

    def _push(self, hist: tuple, action: jax.Array) -> tuple:
        """The input tape after pushing ``action`` (cell 0) and shifting the others along."""
        lay = self.layout
        a = jnp.clip(action.astype(jnp.int32), 0, lay.n - 1).astype(jnp.uint32)
        top = (lay.per_word - 1) * lay.b
        mask = jnp.uint32((1 << (lay.per_word * lay.b)) - 1) if lay.per_word * lay.b < 32 else jnp.uint32(0xFFFFFFFF)
        out, carry = [], a
        for w in hist:
            out.append(((w << lay.b) | carry) & mask)
            carry = (w >> top) & jnp.uint32((1 << lay.b) - 1)
        return tuple(out)

    def _execute(self, lanes: Lanes, tape: jax.Array, code: jax.Array) -> tuple[Lanes, jax.Array]:
        """One instruction in every lane whose cycle is under way (see programs_machine)."""
        lay = self.layout
        n, mid, L, b = lay.n, lay.mid, lay.L, lay.b
        ctl, data = lanes.ctl, lanes.data
        ip, inp, out, step = (lay.field(ctl, k) for k in ("ip", "in", "out", "step"))
        run = step < lay.limit
        w = code.reshape(-1)[ip * code.shape[1] + lanes.prow].astype(jnp.int32)
        op, target = w & 15, w >> 4
        pp = data & ((1 << lay.pp_bits) - 1)
        cell = (data >> lay.cell_shift) & ((1 << b) - 1)
        outs = lanes.outs if lay.outs_apart else data >> lay.outs_shift
        # head: ptr = pp - L in [-L, L - 1]; '<' from -L and '>' from L - 1 go to 0 (AIQ)
        left, right = op == LEFT, op == RIGHT
        moved = run & (left | right)
        new_pp = jnp.where(left, jnp.where(pp == 0, L, pp - 1), jnp.where(pp == 2 * L - 1, L, pp + 1))
        # the cell: ',' reads the input tape (mid past its readable cells), '%' the random stream
        can_read = inp < lay.readable
        word = inp // lay.per_word
        packed = lanes.hist[0]
        for j in range(1, lay.words):
            packed = jnp.where(word == j, lanes.hist[j], packed)
        shift = ((inp % lay.per_word) * b).astype(jnp.uint32)
        read = jnp.where(can_read, ((packed >> shift) & jnp.uint32((1 << b) - 1)).astype(jnp.int32), mid)
        rand = (hash_index(lanes.rs, 0) % jnp.uint32(n)).astype(jnp.int32)  # rs = seed + j * GOLDEN
        new_cell = jnp.where(op == INC, jnp.where(cell + 1 >= n, 0, cell + 1),
                             jnp.where(op == DEC, jnp.where(cell == 0, n - 1, cell - 1),
                                       jnp.where(op == READ, read, jnp.where(op == RAND, rand, cell))))
        new_cell = jnp.where(run, new_cell, cell)
        write = op == WRITE
        slot = out * b
        new_outs = jnp.where(run & write, (outs & ~(((1 << b) - 1) << slot)) | (cell << slot), outs)
        # control
        jump = ((op == OPEN) & (cell == mid)) | ((op == CLOSE) & (cell != mid))
        new_ip = jnp.where(jump, target, ip + 1)
        new_out = out + write
        new_step = step + 1
        ended = (op == HALT) | (new_out >= lay.out_len) | (new_step >= lay.limit)
        new_step = jnp.where(ended & (new_step < lay.limit), lay.ended_time, new_step)
        new_in = inp + ((op == READ) & can_read)
        new_ctl = (new_ip | (new_in << lay.shift["in"]) | (new_out << lay.shift["out"])
                   | (new_step << lay.shift["step"]))
        ctl = jnp.where(run, new_ctl, ctl)
        # the tape: on a move, write the cell back and read the one the head reaches
        col = lanes.rows
        old_at = jnp.where(pp < L, pp, pp - L)
        new_at = jnp.where(new_pp < L, new_pp, new_pp - L)
        tape = self._tape_set(tape, moved, old_at, col, cell)
        got = self._tape_get(tape, moved, new_at, col)
        cell = jnp.where(moved, got, new_cell)
        pp = jnp.where(moved, new_pp, pp)
        rs = lanes.rs + jnp.where(run & (op == RAND), jnp.uint32(GOLDEN), jnp.uint32(0))
        if lay.outs_apart:
            data = pp | (cell << lay.cell_shift)
            lanes = lanes._replace(outs=new_outs)
        else:
            data = pp | (cell << lay.cell_shift) | (new_outs << lay.outs_shift)
        return lanes._replace(ctl=ctl, data=data, rs=rs), tape

    def _flat(self, tape: jax.Array) -> bool:
        """Whether one uint32 index numbers every cell of ``tape`` (else cells go by (cell, lane))."""
        return tape.size < self.flat_index_limit

    _ONE = dict(update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,))

    def _tape_set(self, tape, moved, at, col, cell):
        N = tape.shape[1]
        value = cell.astype(jnp.int8)
        if self._flat(tape):  # lax.scatter: jnp's indexing would narrow uint32 indices to int32
            idx = jnp.where(moved, at.astype(jnp.uint32) * jnp.uint32(N) + col.astype(jnp.uint32), jnp.uint32(FAR))
            flat = jax.lax.scatter(tape.reshape(-1), idx[:, None], value, jax.lax.ScatterDimensionNumbers(**self._ONE),
                                   mode=jax.lax.GatherScatterMode.FILL_OR_DROP)
            return flat.reshape(tape.shape)
        return tape.at[jnp.where(moved, at, tape.shape[0]), col].set(value, mode="drop")

    def _tape_get(self, tape, moved, at, col):
        N = tape.shape[1]
        if self._flat(tape):
            idx = jnp.where(moved, at.astype(jnp.uint32) * jnp.uint32(N) + col.astype(jnp.uint32), jnp.uint32(0))
            dims = jax.lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,))
            return jax.lax.gather(tape.reshape(-1), idx[:, None], dims, (1,),
                                  mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS).astype(jnp.int32)
        return tape[jnp.where(moved, at, 0), col].astype(jnp.int32)

    def _round(self, lanes: Lanes, run: Run, remaining: jax.Array, batch: int,
               chunk: int) -> tuple[Lanes, Run, jax.Array]:
        """The agent steps the first ``batch`` lanes whose cycle has ended (all of them if fewer wait;
        the others wait for the next round), ``chunk`` lanes at a time."""
        S = lanes.ctl.shape[0]
        lay = self.layout
        step = lay.field(lanes.ctl, "step")
        ended = (step == lay.limit) | (step == lay.ended_time)
        count = jnp.cumsum(ended, dtype=jnp.int32)
        size = -(-batch // chunk) * chunk
        # sel[k]: the k-th lane whose cycle has ended (k < count[-1])
        sel = jnp.zeros((size,), jnp.int32).at[jnp.where(ended, count - 1, size)].set(
            jnp.arange(S, dtype=jnp.int32), mode="drop")
        total = jnp.minimum(count[-1], batch)

        def body(c, state):
            lanes, record, remaining = state
            at = c * chunk
            taken = jnp.minimum(total - at, chunk)
            return self._step_lanes(lanes, record, remaining, jax.lax.dynamic_slice_in_dim(sel, at, chunk), taken)

        lanes, record, remaining = jax.lax.fori_loop(0, (total + chunk - 1) // chunk, body,
                                                     (lanes, run.record, remaining))
        return lanes, run._replace(record=record), remaining

    def _step_lanes(self, lanes: Lanes, record: jax.Array, remaining: jax.Array, sel: jax.Array,
                    taken: jax.Array) -> tuple[Lanes, jax.Array, jax.Array]:
        """Agent steps of the lanes ``sel[:taken]`` of the stage (their cycles have ended)."""
        lay, agent, config = self.layout, self.agent, self.config
        S, C = lanes.ctl.shape[0], sel.shape[0]
        valid = jnp.arange(C) < taken
        rows = lanes.rows[sel]
        rec = self._rec.unpack(_gather_rows(record, rows))
        ctl, data = lanes.ctl[sel], lanes.data[sel]
        outs = lanes.outs[sel] if lay.outs_apart else data >> lay.outs_shift
        mask = (1 << lay.b) - 1
        symbol = (outs & mask).astype(jnp.float32)
        index = sum(((outs >> (k * lay.b)) & mask) * lay.n ** (k - 1) for k in range(1, lay.out_len))
        index = jnp.asarray(index, jnp.int32) if agent.indexed else jnp.zeros((C,), jnp.int32)
        midpoint = (lay.n - 1) / 2.0
        r = rec["sign"] * ((symbol - midpoint) / midpoint)
        t = rec["t"]
        overtime = lay.field(ctl, "step") == lay.limit
        gamma, w = config.gamma, config.alignment_weight
        old = rec["sums"]
        lawful = jnp.float32(1.0)
        sums = {  # EnvRunner's expressions, in its order of operations
            "reward": old["reward"] + r,
            "constrained": old["constrained"] + r,
            "discounted": old["discounted"] + gamma ** t.astype(jnp.float32) * r,
            "aligned": old["aligned"] + (1 - w) * r + w * lawful,
            "violations": old["violations"] + jnp.float32(0.0),
            "lawful": old["lawful"] + lawful,
            "voided": old["voided"] + overtime,
        }
        t = t + 1
        finished = t >= self.horizon
        states, action = jax.vmap(agent.agent.step)(rec["agent"], index, r * agent.reward_scale)
        rec = {**rec, "agent": states, "t": t, "sums": {k: v.astype(jnp.float32) for k, v in sums.items()}}
        record = _scatter_rows(record, rows, self._rec.pack(rec), taken)
        hist = self._push(tuple(h[sel] for h in lanes.hist), action)
        new_ctl = jnp.where(finished, lay.finished << lay.shift["step"], 0)
        put = jnp.where(valid, sel, S)
        lanes = lanes._replace(
            ctl=lanes.ctl.at[put].set(new_ctl, mode="drop"),
            rs=lanes.rs.at[put].set(hash_index(rec["seed"], t), mode="drop"),
            hist=tuple(h.at[put].set(x, mode="drop") for h, x in zip(lanes.hist, hist)),
        )
        return lanes, record, remaining - jnp.sum(valid & finished, dtype=jnp.int32)

    def _loop(self, lanes: Lanes, run: Run, code: jax.Array, max_iterations: jax.Array,
              stop: jax.Array) -> tuple[Lanes, Run, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Up to ``max_iterations`` iterations, or until at most ``stop`` of the stage's lanes are
        unfinished: (lanes, run, cycles completed by all lanes, iterations, unfinished lanes, rounds)."""
        lay = self.layout
        S = lanes.ctl.shape[0]
        due_at = max(1, S // self.round_divisor)  # a round is due once this many lanes wait
        chunk = max(1, min(due_at, self.chunk_lanes))

        def waiting(lanes):
            step = lay.field(lanes.ctl, "step")
            return jnp.sum((step == lay.limit) | (step == lay.ended_time), dtype=jnp.int32)

        def due(lanes, remaining):
            w = waiting(lanes)
            return (w > 0) & ((w >= jnp.minimum(due_at, remaining)) | (w * self.wait_fraction >= remaining))

        def execute_until_due(lanes, tape, i, remaining):
            """Instructions until a round is due (the loop carries only the stage's lanes and the tapes)."""
            def cond(c):
                lanes, tape, i = c
                return ~due(lanes, remaining) & (i < max_iterations)

            def body(c):
                lanes, tape, i = c
                lanes, tape = self._execute(lanes, tape, code)
                return lanes, tape, i + 1

            return jax.lax.while_loop(cond, body, (lanes, tape, i))

        def cond(c):
            lanes, run, remaining, i, rounds = c
            return (remaining > stop) & (i < max_iterations)

        def body(c):
            lanes, run, remaining, i, rounds = c
            lanes, tape, i = execute_until_due(lanes, run.tape, i, remaining)
            lanes, run, remaining = self._round(lanes, run._replace(tape=tape), remaining, due_at, chunk)
            return lanes, run, remaining, i, rounds + 1

        remaining = jnp.sum(lay.field(lanes.ctl, "step") != lay.finished, dtype=jnp.int32)
        lanes, run, remaining, i, rounds = jax.lax.while_loop(cond, body,
                                                              (lanes, run, remaining, jnp.int32(0), jnp.int32(0)))
        return lanes, run, jnp.sum(self._rec.unpack(run.record)["t"]), i, remaining, rounds

    def _shrink(self, lanes: Lanes, size: int) -> Lanes:
        """The unfinished lanes in a stage of ``size`` (padded with a finished lane)."""
        lay = self.layout
        done = lay.field(lanes.ctl, "step") == lay.finished
        keep = jnp.nonzero(~done, size=size, fill_value=jnp.argmax(done))[0]
        pad = jnp.arange(size) >= jnp.sum(~done)
        small = jax.tree.map(lambda x: x[keep], lanes)
        return small._replace(ctl=jnp.where(pad, lay.finished << lay.shift["step"], small.ctl))

    # ------------------------------------------------------------------ running
    def stage_sizes(self, lanes: int) -> list[int]:
        sizes = [lanes]
        while sizes[-1] // self.stage_factor >= self.stage_min:
            sizes.append(sizes[-1] // self.stage_factor)
        return sizes

    def run(self, members: np.ndarray, key: jax.Array, progress=None, task=None) -> dict[str, np.ndarray]:
        """Sums per metric over ``horizon`` cycles, float64[twins, len(members)]."""
        size, twins = len(members), self.twins
        params: ProgramParams = jax.tree.map(lambda x: x[np.asarray(members)], self.all_params)
        sign = jnp.concatenate([jnp.ones((size,), jnp.float32), -jnp.ones((size,), jnp.float32)][:twins])
        self._rec = Record(jax.eval_shape(functools.partial(self._initial_record, size=size), key, sign))
        lanes, run, code = self._start(params.program, params.match, key, sign, size)
        N = size * twins
        self.memory = max(self.memory, {
            "env_params_bytes": devices.nbytes(code), "env_state_bytes": devices.nbytes((run.tape, lanes)),
            "agent_state_bytes": devices.nbytes(run.record),
            "environments_in_batch": N}, key=lambda m: m.get("environments_in_batch", 0))
        sizes = self.stage_sizes(N)
        self._shown = 0
        for k, S in enumerate(sizes):
            following = sizes[k + 1] if k + 1 < len(sizes) else 0
            blocks = -(-S // self.block_lanes)
            if blocks == 1:
                lanes, run, remaining = self._stage(lanes, run, code, following, N, progress, task)
            else:  # lanes in blocks that fit the caches, each run on its own down to its share of the next stage
                start_time = time.perf_counter()
                width = -(-S // blocks)
                lanes = self._padded(lanes, blocks * width)
                parts, remaining = [], 0
                self.seconds += time.perf_counter() - start_time
                for g in range(blocks):
                    part = jax.tree.map(lambda x, g=g: x[g * width:(g + 1) * width], lanes)
                    part, run, left = self._stage(part, run, code, following // blocks, N, progress, task)
                    parts.append(part)
                    remaining += left
                start_time = time.perf_counter()
                lanes = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
                self.seconds += time.perf_counter() - start_time
            if remaining == 0:
                break
            compact = self._compact.executable(lanes, following)
            start_time = time.perf_counter()
            lanes = compact(lanes)
            jax.block_until_ready(lanes)
            self.seconds += time.perf_counter() - start_time
        jax.block_until_ready(run)
        if progress is not None:
            progress.advance(task, self.horizon - self._shown)
        self.steps += N * self.horizon
        sums = self._rec.unpack(run.record)["sums"]
        return {k: np.asarray(v).astype(np.float64).reshape(twins, size) for k, v in sums.items()}

    def _stage(self, lanes: Lanes, run: Run, code: jax.Array, stop: int, N: int, progress, task):
        """Advance ``lanes`` until at most ``stop`` of them are unfinished, a chunk of iterations per
        call: (lanes, run, unfinished lanes)."""
        S = lanes.ctl.shape[0]
        chunk, limit = jnp.int32(self.chunk_iterations), jnp.int32(stop)
        while True:
            advance = self._advance.executable(lanes, run, code, chunk, limit)
            start_time = time.perf_counter()
            lanes, run, done_steps, iterations, remaining, rounds = advance(lanes, run, code, chunk, limit)
            remaining = int(remaining)
            seconds = time.perf_counter() - start_time
            self.seconds += seconds
            self.trace.append((S, int(iterations), seconds, remaining, int(rounds), int(done_steps)))
            if progress is not None:
                done = int(done_steps) // N
                progress.advance(task, done - self._shown)
                self._shown = done
            if remaining <= stop:
                return lanes, run, remaining

    def _padded(self, lanes: Lanes, size: int) -> Lanes:
        """``lanes`` followed by finished copies of its first lane, ``size`` in all."""
        lay = self.layout
        pad = size - lanes.ctl.shape[0]
        if pad == 0:
            return lanes
        fill = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], (pad,) + x.shape[1:]), lanes)
        fill = fill._replace(ctl=jnp.full((pad,), lay.finished << lay.shift["step"], jnp.int32))
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), lanes, fill)

    def run_buckets(self, indices: np.ndarray, key: jax.Array, buckets: int, progress, label: str) -> dict:
        """Runs ``indices`` (into the batch) as one batch of lanes (``buckets`` is not needed: no lane
        waits for another) with ``fold_in(key, 0)``, the key of ``EnvRunner``'s first bucket; sums
        float64[twins, len(indices)] in the order given."""
        del buckets
        task = progress.add_task(f"measuring {self.agent.name} on {len(indices) * self.twins} environments{label}",
                                 total=self.horizon)
        return self.run(np.asarray(indices), jax.random.fold_in(key, 0), progress, task)  # EnvRunner's first bucket

    def memory_report(self) -> dict:
        """Bytes of the largest batch's arrays and this process's peak resident memory."""
        memory = dict(self.memory)
        memory["per_env_state_total_bytes"] = sum(v for k, v in self.memory.items() if k.endswith("_bytes"))
        memory["peak_rss_bytes"] = devices.peak_rss_bytes()
        return memory

