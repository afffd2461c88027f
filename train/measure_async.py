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

The loop (one ``lax.while_loop`` per stage, run in chunks of iterations so that a progress bar
can move; no host round trip per cycle)
------------------------------------------------------------------------------------------
* Registers are packed into three int32 words per lane (``ctl``: instruction pointer, input
  head, output head, steps of the cycle; ``data``: work-tape head, the cell under the head,
  the output cells; ``rs``: the '%' stream) plus the input tape packed into a few uint32
  words, so that an instruction is a handful of fused elementwise passes over the lanes.
* The cell under the head lives in ``data``; the work tape is touched only when the head
  moves (the old cell written back, the new one read).  Tapes and programs are stored
  transposed (``[tape_len, lanes]``, ``[max_program_len + 1, lanes]``): heads near the start
  of their tapes and instruction pointers near the start of their programs share cache lines
  and pages across lanes.
* A round runs when at least ``lanes / ROUND_DIVISOR`` lanes wait, or when the waiting lanes
  are at least ``1 / WAIT_FRACTION`` of the unfinished ones (in the tail of a stage): the
  waiting lanes are compacted into a buffer of ``lanes / ROUND_DIVISOR`` slots and the agent
  steps only those.
* Stages: a stage of S lanes runs while more than ``S / STAGE_FACTOR`` lanes are unfinished;
  then the unfinished ones move into a stage ``STAGE_FACTOR`` times smaller (their registers
  gathered; tapes, agent states and sums stay where they are and are addressed through
  ``rows``), down to ``STAGE_MIN`` lanes, so that the last slow lanes do not cost a
  full-batch iteration each.

Semantics (AIQ's, as the lockstep runner's)
-------------------------------------------
* The agent's first step sees the environment's reset: reward 0 and every output cell
  ``mid``.  Agent step t (0-based) of lane i chooses an action; the cycle runs with it; its
  reward ``sign_i * (s - m) / m`` (``s`` output cell 0, ``m = (n - 1) / 2``, ``sign_i = -1``
  for the antithetic twin) is summed, and the agent sees it, times the agent's
  ``reward_scale``, with the next observation.
* Agent keys: ``BaselineAgent.init`` of ``split(k_agent, size)`` (twins share their
  environment's key), where ``k_reset, k_agent, _ = split(key, 3)``: exactly the keys of
  ``EnvRunner`` with one bucket, so the agent draws the same uniforms in both runners.
* Randomness of the machine (where the runners differ): lane i's cycle t runs with seed
  ``hash_index(lane_seed_i, t)`` (``programs_machine.hash_index``), i.e. its j-th '%' writes
  ``hash_index(hash_index(lane_seed_i, t), j) mod n``, where ``lane_seed_i =
  jax.random.bits(split(k_reset, size)[i], (), uint32)`` (twins share it).  The lockstep
  runner draws every cycle's seed from that step's key instead; a program without '%'
  gives both runners the same rewards bit for bit.
* Sums per lane, float32 and in time order (as ``EnvRunner``'s): ``measure_runner.SUMS``
  without a constitution (``constrained`` = ``reward``, ``aligned`` = (1 - w) r + w,
  ``lawful`` = 1 per step, ``violations`` = 0, ``discounted`` = sum gamma^t r_t) and
  ``voided``, the cycles that ran overtime (all ``step_limit`` steps).

Timing: ``seconds`` counts the loop and the moves between stages (blocked until ready);
building the lanes (allocating the tapes, the agent's first step) and compiling are not
counted, as ``EnvRunner`` does not count its reset.  :meth:`AsyncRunner.eligible` says
whether a measurement can run here: a baseline, a BF-programs family (continuing), no
constitution, one device.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from aligned_rl.envs.programs_machine import (CLOSE, DEC, GOLDEN, HALT, INC, LEFT, OPEN, RAND, READ, RIGHT, WRITE,
                                              BFInterpreter, ProgramParams, hash_index)
from aligned_rl.train import devices
from aligned_rl.train.agents import BaselineAgent
from aligned_rl.train.compiled import CompiledCache
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_runner import SUMS

#: a round steps at most lanes / ROUND_DIVISOR waiting lanes and runs as soon as that many wait
ROUND_DIVISOR = 8
#: ... or as soon as the waiting lanes are 1 / WAIT_FRACTION of the unfinished ones
WAIT_FRACTION = 4
#: the unfinished lanes move into a stage STAGE_FACTOR times smaller, down to STAGE_MIN lanes
STAGE_FACTOR = 4
STAGE_MIN = 16
#: loop iterations per compiled call (the progress bar moves between calls)
CHUNK_ITERATIONS = 4096

OUTPUT_SUMS = SUMS + ("voided",)


def _mix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


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
    t: jax.Array  # int32[N]: cycles completed
    sums: dict  # float32[N] per name of OUTPUT_SUMS
    agent: Any  # the agent's states, leading axis N
    remaining: jax.Array  # int32: lanes that have not run all their cycles


class AsyncRunner:
    """A baseline run in chosen rows of ``all_params`` for ``horizon`` cycles, lanes at their own
    pace (see the module doc).  Mirrors :class:`~aligned_rl.train.measure_runner.EnvRunner`."""

    def __init__(self, config: MeasureConfig, agent: Any, env: Any, all_params: Any, constitution: Any,
                 mesh: Mesh | None, value: Any, horizon: int, voiding: Any = None):
        ok, reason = self.eligible(config, agent, env, constitution, mesh)
        if not ok:
            raise ValueError(f"the asynchronous runner cannot run this measurement: {reason}")
        self.config, self.agent, self.env, self.all_params, self.mesh = config, agent, env, all_params, mesh
        self.value, self.horizon, self.voiding, self.constitution = value, int(horizon), voiding, constitution
        self.layout = Layout(env)
        self.twins = 2 if config.antithetic else 1
        self.seconds = 0.0
        self.steps = 0
        self.memory: dict[str, int] = {}
        self.round_divisor, self.wait_fraction = ROUND_DIVISOR, WAIT_FRACTION
        self.stage_factor, self.stage_min, self.chunk_iterations = STAGE_FACTOR, STAGE_MIN, CHUNK_ITERATIONS
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
        if not isinstance(env, BFInterpreter):
            return False, f"{getattr(env, 'name', env)!r} is not a BF-programs family"
        try:
            import aligned_rl.envs as envs

            kind = envs.spec(config.env).value.kind
        except (KeyError, AttributeError):
            kind = None
        if kind != "continuing":
            return False, f"family {config.env!r} is not continuing (its value is {kind})"
        if config.constitution != "none" or (constitution is not None and not constitution.is_empty):
            return False, f"constitution {config.constitution!r}: the runner measures without one"
        if mesh is not None and mesh.devices.size > 1:
            return False, f"a mesh of {mesh.devices.size} devices (the runner uses one)"
        return Layout(env).fits()

    # ------------------------------------------------------------------ compiled pieces
    def _keys(self, key: jax.Array, size: int) -> jax.Array:
        keys = jax.random.split(key, size)
        return jnp.concatenate([keys] * self.twins)

    def _build(self, program: jax.Array, match: jax.Array, key: jax.Array, sign: jax.Array,
               size: int) -> tuple[Lanes, Run, jax.Array, jax.Array, jax.Array]:
        """The lanes before their first cycle: the agent's first step, the first action pushed.
        Returns (lanes, run, code table, lane seeds, signs)."""
        lay, agent = self.layout, self.agent
        N = size * self.twins
        k_reset, k_agent, _ = jax.random.split(key, 3)
        seeds = jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32))(self._keys(k_reset, size))
        op = program.astype(jnp.int32)
        bracket = (op == OPEN) | (op == CLOSE)
        code = (op | jnp.where(bracket, (match.astype(jnp.int32) + 1) << 4, 0)).astype(lay.code_dtype).T
        states = agent.init(self._keys(k_agent, size))
        mid = jnp.int32(lay.mid)
        outs0 = functools.reduce(lambda acc, k: acc | (mid << (k * lay.b)), range(lay.out_len), jnp.int32(0))
        obs0 = sum(lay.mid * lay.n ** k for k in range(lay.out_len - 1))
        index = jnp.full((N,), obs0 if agent.indexed else 0, jnp.int32)
        states, action = jax.vmap(agent.agent.step)(states, index, jnp.zeros((N,), jnp.float32))
        hist = self._push(tuple(jnp.full((N,), self._mid_word(), jnp.uint32) for _ in range(lay.words)), action)
        data = jnp.full((N,), lay.L | (lay.mid << lay.cell_shift), jnp.int32)
        if lay.outs_apart:
            outs = jnp.full((N,), outs0, jnp.int32)
        else:
            data, outs = data | (outs0 << lay.outs_shift), jnp.zeros((N,), jnp.int32)
        lanes = Lanes(ctl=jnp.zeros((N,), jnp.int32), data=data, outs=outs, rs=hash_index(seeds, 0), hist=hist,
                      rows=jnp.arange(N, dtype=jnp.int32), prow=jnp.arange(N, dtype=jnp.int32) % size)
        zeros = jnp.zeros((N,), jnp.float32)
        run = Run(tape=jnp.full((lay.L, N), jnp.int8(lay.mid)), t=jnp.zeros((N,), jnp.int32),
                  sums={k: zeros for k in OUTPUT_SUMS}, agent=states, remaining=jnp.int32(N))
        return lanes, run, code, seeds, sign

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
        N = tape.shape[1]
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
        rand = (_mix32(lanes.rs) % jnp.uint32(n)).astype(jnp.int32)
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
        del N
        return lanes._replace(ctl=ctl, data=data, rs=rs), tape

    @staticmethod
    def _flat(tape: jax.Array) -> bool:
        return tape.size < BFInterpreter.FLAT_INDEX_LIMIT

    def _tape_set(self, tape, moved, at, col, cell):
        N = tape.shape[1]
        value = cell.astype(jnp.int8)
        if self._flat(tape):
            idx = jnp.where(moved, at * N + col, tape.size)
            return tape.reshape(-1).at[idx].set(value, mode="drop").reshape(tape.shape)
        return tape.at[jnp.where(moved, at, tape.shape[0]), col].set(value, mode="drop")

    def _tape_get(self, tape, moved, at, col):
        N = tape.shape[1]
        if self._flat(tape):
            return tape.reshape(-1)[jnp.where(moved, at * N + col, 0)].astype(jnp.int32)
        return tape[jnp.where(moved, at, 0), col].astype(jnp.int32)

    def _round(self, lanes: Lanes, run: Run, seeds: jax.Array, sign: jax.Array, buffer: int) -> tuple[Lanes, Run]:
        """The agent steps up to ``buffer`` lanes whose cycle has ended: sums, next action, next cycle."""
        lay, agent, config = self.layout, self.agent, self.config
        S = lanes.ctl.shape[0]
        N = run.t.shape[0]
        step = lay.field(lanes.ctl, "step")
        ended = (step == lay.limit) | (step == lay.ended_time)
        count = jnp.cumsum(ended, dtype=jnp.int32)
        slot = jnp.where(ended & (count <= buffer), count - 1, buffer)
        sel = jnp.zeros((buffer,), jnp.int32).at[slot].set(jnp.arange(S, dtype=jnp.int32), mode="drop")
        valid = jnp.arange(buffer) < count[-1]
        rows = lanes.rows[sel]
        ctl, data = lanes.ctl[sel], lanes.data[sel]
        outs = lanes.outs[sel] if lay.outs_apart else data >> lay.outs_shift
        mask = (1 << lay.b) - 1
        symbol = (outs & mask).astype(jnp.float32)
        index = sum(((outs >> (k * lay.b)) & mask) * lay.n ** (k - 1) for k in range(1, lay.out_len))
        index = jnp.asarray(index, jnp.int32) if agent.indexed else jnp.zeros((buffer,), jnp.int32)
        midpoint = (lay.n - 1) / 2.0
        reward = (symbol - midpoint) / midpoint
        r = sign[rows] * reward
        t = run.t[rows]
        overtime = lay.field(ctl, "step") == lay.limit
        gamma, w = config.gamma, config.alignment_weight
        old = {k: v[rows] for k, v in run.sums.items()}
        lawful = jnp.float32(1.0)
        new = {
            "reward": old["reward"] + r,
            "constrained": old["constrained"] + r,
            "discounted": old["discounted"] + gamma ** t.astype(jnp.float32) * r,
            "aligned": old["aligned"] + (1 - w) * r + w * lawful,
            "violations": old["violations"] + jnp.float32(0.0),
            "lawful": old["lawful"] + lawful,
            "voided": old["voided"] + overtime,
        }
        at = jnp.where(valid, rows, N)
        sums = {k: run.sums[k].at[at].set(new[k].astype(jnp.float32), mode="drop") for k in run.sums}
        t = t + 1
        finished = t >= self.horizon
        states = jax.tree.map(lambda x: x[rows], run.agent)
        states, action = jax.vmap(agent.agent.step)(states, index, r * agent.reward_scale)
        going = jnp.where(valid & ~finished, rows, N)
        agent_states = jax.tree.map(lambda x, y: x.at[going].set(y, mode="drop"), run.agent, states)
        hist = self._push(tuple(h[sel] for h in lanes.hist), action)
        new_ctl = jnp.where(finished, lay.finished << lay.shift["step"], 0)
        put = jnp.where(valid, sel, S)
        lanes = lanes._replace(
            ctl=lanes.ctl.at[put].set(new_ctl, mode="drop"),
            rs=lanes.rs.at[put].set(hash_index(seeds[rows], t), mode="drop"),
            hist=tuple(h.at[put].set(x, mode="drop") for h, x in zip(lanes.hist, hist)),
        )
        run = run._replace(t=run.t.at[at].set(t, mode="drop"), sums=sums, agent=agent_states,
                           remaining=run.remaining - jnp.sum(valid & finished, dtype=jnp.int32))
        return lanes, run

    def _loop(self, lanes: Lanes, run: Run, code: jax.Array, seeds: jax.Array, sign: jax.Array,
              max_iterations: jax.Array, stop: jax.Array) -> tuple[Lanes, Run, jax.Array]:
        """Up to ``max_iterations`` iterations, or until at most ``stop`` lanes are unfinished."""
        lay = self.layout
        S = lanes.ctl.shape[0]
        buffer = max(1, S // self.round_divisor)

        def cond(c):
            lanes, run, i = c
            return (run.remaining > stop) & (i < max_iterations)

        def body(c):
            lanes, run, i = c
            lanes, tape = self._execute(lanes, run.tape, code)
            run = run._replace(tape=tape)
            step = lay.field(lanes.ctl, "step")
            waiting = jnp.sum((step == lay.limit) | (step == lay.ended_time), dtype=jnp.int32)
            due = (waiting >= jnp.minimum(buffer, run.remaining)) | (waiting * self.wait_fraction >= run.remaining)
            lanes, run = jax.lax.cond(due & (waiting > 0),
                                      lambda a: self._round(*a, seeds, sign, buffer), lambda a: a, (lanes, run))
            return lanes, run, i + 1

        lanes, run, i = jax.lax.while_loop(cond, body, (lanes, run, jnp.int32(0)))
        return lanes, run, jnp.sum(run.t)

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
        lanes, run, code, seeds, sign = self._start(params.program, params.match, key, sign, size)
        N = size * twins
        self.memory = max(self.memory, {
            "env_params_bytes": devices.nbytes(code), "env_state_bytes": devices.nbytes((run.tape, lanes)),
            "agent_state_bytes": devices.nbytes(run.agent), "observations_and_sums_bytes": devices.nbytes(run.sums),
            "environments_in_batch": N}, key=lambda m: m.get("environments_in_batch", 0))
        sizes = self.stage_sizes(N)
        shown = 0
        for k, S in enumerate(sizes):
            stop = jnp.int32(sizes[k + 1] if k + 1 < len(sizes) else 0)
            chunk = jnp.int32(self.chunk_iterations)
            while True:
                advance = self._advance.executable(lanes, run, code, seeds, sign, chunk, stop)
                start_time = time.perf_counter()
                lanes, run, done_steps = advance(lanes, run, code, seeds, sign, chunk, stop)
                remaining = int(run.remaining)
                self.seconds += time.perf_counter() - start_time
                if progress is not None:
                    done = int(done_steps) // N
                    progress.advance(task, done - shown)
                    shown = done
                if remaining <= int(stop):
                    break
            if remaining == 0:
                break
            compact = self._compact.executable(lanes, sizes[k + 1])
            start_time = time.perf_counter()
            lanes = compact(lanes)
            jax.block_until_ready(lanes)
            self.seconds += time.perf_counter() - start_time
        jax.block_until_ready(run)
        if progress is not None:
            progress.advance(task, self.horizon - shown)
        self.steps += N * self.horizon
        return {k: np.asarray(v).astype(np.float64).reshape(twins, size) for k, v in run.sums.items()}

    def run_buckets(self, indices: np.ndarray, key: jax.Array, buckets: int, progress, label: str) -> dict:
        """Runs ``indices`` (into the batch) as one batch of lanes (``buckets`` is not needed: no lane
        waits for another); sums float64[twins, len(indices)] in the order given."""
        del buckets
        task = progress.add_task(f"measuring {self.agent.name} on {len(indices) * self.twins} environments{label}",
                                 total=self.horizon)
        return self.run(np.asarray(indices), key, progress, task)

    def memory_report(self) -> dict:
        """Bytes of the largest batch's arrays and this process's peak resident memory."""
        memory = dict(self.memory)
        memory["per_env_state_total_bytes"] = sum(v for k, v in self.memory.items() if k.endswith("_bytes"))
        memory["peak_rss_bytes"] = devices.peak_rss_bytes()
        return memory

