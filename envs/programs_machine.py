"""The BF reference machine of the AIQ test, in JAX: programs, tapes, registers, cycles.

Legg and Veness's AIQ test runs an agent in environments that are programs of a small
reference machine.  This module is that machine, written so that one compiled cycle runs
thousands of different programs at once (each program lives in its :class:`ProgramParams`):
:class:`BFInterpreter` holds the static configuration and runs cycles.  The environment that
an agent steps is ``programs.py`` (:class:`~aligned_rl.envs.programs.BFPrograms`, reward and
observation read off the output tape); ``programs_sampler.py`` draws programs from the prior
and runs them against random actions to classify them.

The machine (AIQ's ``BF`` with ``n = num_symbols`` tape symbols, default 5)
---------------------------------------------------------------------------
Symbols are 0..n-1; the *middle symbol* is ``mid = (n - 1) // 2``.  Three tapes:

* a work tape of ``tape_len`` cells (default 100,000, AIQ's), all ``mid`` at reset, that
  persists from cycle to cycle within an episode.  The head position ``ptr`` lives in
  ``[-tape_len, tape_len-1]`` and addresses cell ``ptr mod tape_len`` (AIQ keeps a Python
  list and negative indices).  ``>`` moves right, and from ``tape_len - 1`` wraps to 0; ``<``
  moves left, and from ``-tape_len`` (cell 0) wraps to position 0, i.e. the same cell 0.
  That is AIQ's arithmetic exactly;
* an input tape of ``input_len`` cells (AIQ: 25), all ``mid`` at reset.  Before every
  cycle the agent's action is pushed onto cell 0 and the older actions shift one cell
  along (the oldest falls off), so cell i holds the action of i cycles ago;
* an output tape of ``1 + obs_cells`` cells, all ``mid`` at reset and never cleared: a
  cycle that writes fewer cells leaves the others as they were.

An environment step is one machine cycle.  The cycle runs the program from its first
instruction, with the input and output heads at 0, one instruction per machine step:

=======  =====================================================================
``<``    head left (wrap as above)
``>``    head right
``+``    cell + 1 mod n
``-``    cell - 1 mod n
``,``    cell = next input cell, advancing the input head; once the input head
         stands on the tape's last cell (AIQ reads ``input_len - 1`` cells at most)
         the cell becomes ``mid`` and the head stays
``.``    write the cell on the next output cell
``[``    if the cell equals ``mid``, jump past the matching ``]``
``]``    if the cell differs from ``mid``, jump back to the first instruction after
         the matching ``[`` (so a loop runs while the cell differs from ``mid``)
``%``    cell = a random symbol (see *Randomness*)
``#``    end of the cycle
=======  =====================================================================

Every executed instruction costs one step, including ``[`` (once, on entry), ``]`` (once
per pass) and ``#``.  Before each instruction the cycle ends if the output tape is full or
``step_limit`` steps have run (AIQ: 1000).  A program is padded with ``#``, so running off
its end ends the cycle.  A cycle that used all ``step_limit`` steps is *overtime*; the state's ``overtime`` flag
is set and the environment reports it as ``info["metrics"]["overtime"]``.  AIQ throws away a
run with an overtime cycle and measures another program instead; so does ``aligned-rl
measure`` (the family declares the metric that voids a run, see ``train/measure.py``), and
the sampler filters out programs that run overtime under random actions, as AIQ does.

Randomness.  The j-th ``%`` executed in a cycle (j = 0, 1, ...) writes
``hash_index(seed, j) mod n``, where ``seed = jax.random.bits(key, (), uint32)`` for the key
the cycle runs with (the key ``step_env`` receives) and ``hash_index(seed, j) = mix32(seed + j * 0x9E3779B9)`` with
MurmurHash3's 32-bit finaliser (:func:`random_symbols`; the modulo bias is below n / 2^32).
A hash rather than ``jax.random`` per instruction keeps the machine step cheap (threefry
on every step made it five times slower).  The machine is otherwise deterministic.

Static configuration and cost
-----------------------------
``num_symbols``, ``obs_cells``, ``tape_len``, ``input_len``, ``step_limit``,
``max_program_len``, ``episode_length`` and ``default_program`` are the constructor arguments
of :class:`BFInterpreter` and of the environment (they fix array shapes and loop bounds; equal
configurations share compiled code).  ``episode_length`` is the ``max_steps_in_episode`` that
:meth:`BFInterpreter.program_params` writes into every program's params, ``default_program``
(default ``,.``) the program of the environment's default params.  The registered family
uses the defaults; another configuration is another family, e.g.
``register(EnvSpec(name="BF-programs-100", make=lambda: BFPrograms(step_limit=100), ...))``.

A cycle is a ``lax.while_loop`` over machine steps.  However the step is vmapped (the
learner's batch of environments, the constitution's lookahead over actions, both at once),
all machines run in one flat loop (``jax.custom_batching.custom_vmap``) that writes one tape
cell per machine per step in place and masks the machines that are done; a plain vmapped
while loop would copy every tape on every machine step.  Most programs end a cycle in a few
steps and a few run to the step limit, so the loop runs in stages (:meth:`BFInterpreter.run_batch`):
the whole batch steps while more than 1/8 of it is running, then the running machines move
into a batch 8 times smaller (registers gathered, tapes written in place), and so on down to
8 machines.  A batched agent step costs about (batch size) x (steps until 1/8 is left) x
~20 ns plus, per later stage, its steps x (~1 us + its size x ~20 ns) on a CPU core: the
slowest program still sets the length, but a step of the tail costs about 1 us, not
(batch size) x 20 ns.  Measured on a shared 2-core CPU (4096 programs from the prior after
100 random-action cycles, CPU time per vmapped cycle of all 4096): 3.4 ms, against 31 ms
for the single flat loop this replaced (the mean program takes 11 steps per cycle, the
slowest of the 4096 about 300).

Memory per program (sum of ``nbytes`` over the pytree leaves) with the defaults: 103,128
bytes, of which the params take 3,087 (int8 program and int16 match table of
``max_program_len + 1 = 1025`` slots) and the state 100,041 (the int8 tape of 100,000 cells,
25 input and 2 output cells, counters).  4096 programs: 403 MiB; 65,536 programs: 6.3 GiB
(a measurement with antithetic twins holds twice as many states).  Both grow linearly:
``tape_len`` bytes and ``3 * (max_program_len + 1)`` bytes per environment.  An automatic reset
does not rewrite the tape: it marks it stale (:meth:`BFInterpreter.restart`) and the next
cycle clears the stale tapes of its batch in place, so a step costs no pass over every tape.
Past 2^31 tape cells in one batch (21,474 programs at 100,000 cells) cells are indexed by
(row, cell) instead of one flat int32 index.

Where this machine differs from AIQ's
-------------------------------------
* A ``tape_len`` other than 100,000 is a deviation (``BFPrograms(tape_len=1024)`` is another
  family): the machines agree only while the head's excursion within an episode stays below
  ``tape_len``.  Over 1000 cycles with random actions, 12.1% of 1024 programs from the prior
  (seed 0) write different outputs at 1024 cells than at 100,000, and 13.1% run a different
  number of machine steps in some cycle.
* Programs are capped at ``max_program_len`` instructions (default 1024, AIQ has no cap); a
  drawn code word is longer with probability 3.4e-11
  (:func:`~aligned_rl.envs.programs_sampler.word_length_tail`), and the sampler rejects such a
  program as ``TOO_LONG``.
* ``%`` draws from the hash above instead of Python's ``random``.
* A hand-written program may omit the final ``#``; unbalanced brackets are refused.
The test file checks the machine against a plain-Python interpreter written from AIQ's
description, program by program and cycle by cycle.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

INSTRUCTIONS = "<>+-,.[]%#"
LEFT, RIGHT, INC, DEC, READ, WRITE, OPEN, CLOSE, RAND, HALT = range(10)
OPCODE = {c: i for i, c in enumerate(INSTRUCTIONS)}
REFERENCE_TAPE_LEN = 100_000  # AIQ's work tape (BF.work_tape_len)
MAX_PROGRAM_LEN = 1024  # a drawn code word is longer with probability 3.4e-11 (programs_sampler.word_length_tail)
UNCLASSIFIED = -2  # stratum of a hand-written program that was not classified (AIQ: -1 overtime, 0 passive)


@struct.dataclass
class ProgramParams:
    """One environment: a program of the reference machine.

    program: int8[max_program_len + 1] opcodes (index into ``INSTRUCTIONS``), padded with ``#``.
    match: int16[max_program_len + 1]: for ``[`` the index of its ``]``, for ``]`` that of its ``[``.
    length: int32, the number of instructions before the padding.
    stratum: int32, AIQ's stratum (1-10 simple mappings, 11-20 by length; see the sampler).
    """

    program: jax.Array
    match: jax.Array
    length: jax.Array
    stratum: jax.Array
    max_steps_in_episode: int = 100


class Carry(NamedTuple):
    """A batch of machines in the middle of a cycle (leading axis B on every field)."""

    ip: jax.Array  # instruction pointer
    step: jax.Array  # machine steps so far this cycle
    in_ptr: jax.Array  # input head
    out_ptr: jax.Array  # output head
    ptr: jax.Array  # work-tape head
    tape: jax.Array  # int8[B, tape_len]
    outputs: jax.Array  # int8[B, 1 + obs_cells]
    n_rand: jax.Array  # '%' executed so far this cycle
    seed: jax.Array  # uint32 seed of this cycle's random symbols
    halted: jax.Array  # '#' executed (or the machine is inactive)


@struct.dataclass
class MachineState(environment.EnvState):
    tape: jax.Array  # int8[tape_len]
    ptr: jax.Array  # int32 head position in [-tape_len, tape_len - 1]
    inputs: jax.Array  # int8[input_len]: the last actions, newest first
    outputs: jax.Array  # int8[1 + obs_cells]: reward symbol, then observation symbols
    steps: jax.Array  # int32: machine steps of the last cycle
    overtime: jax.Array  # bool: the last cycle used all step_limit steps
    stale: jax.Array  # bool: the episode restarted and ``tape`` still holds the old one (all mid, in effect)


def encode(program: str, max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(opcodes int8[max_len + 1], bracket matches int16[max_len + 1], length) of ``program``.

    The program must use only ``INSTRUCTIONS`` and have balanced brackets; a trailing ``#``
    is optional (the padding ends the cycle anyway).
    """
    bad = sorted(set(program) - set(INSTRUCTIONS))
    if bad:
        raise ValueError(f"program {program!r} holds characters outside {INSTRUCTIONS!r}: {bad}")
    if len(program) > max_len:
        raise ValueError(f"program of {len(program)} instructions exceeds max_program_len={max_len}")
    codes = np.full((max_len + 1,), HALT, np.int8)
    match = np.zeros((max_len + 1,), np.int16)
    stack: list[int] = []
    for i, c in enumerate(program):
        codes[i] = OPCODE[c]
        if c == "[":
            stack.append(i)
        elif c == "]":
            if not stack:
                raise ValueError(f"program {program!r}: unmatched ']' at {i}")
            j = stack.pop()
            match[i], match[j] = j, i
    if stack:
        raise ValueError(f"program {program!r}: unmatched '[' at {stack[-1]}")
    return codes, match, len(program)


GOLDEN = 0x9E3779B9


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser (a bijection of uint32 with full avalanche)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_index(seed: jax.Array, j: jax.Array) -> jax.Array:
    """uint32 hash of (seed, j): mix32(seed + j * 0x9E3779B9) (wrapping uint32 arithmetic)."""
    return _mix32(jnp.asarray(seed).astype(jnp.uint32) + jnp.asarray(j).astype(jnp.uint32) * jnp.uint32(GOLDEN))


def random_symbols(seed: jax.Array, j: jax.Array, n: int) -> jax.Array:
    """The symbol the j-th ``%`` of a cycle writes: ``hash_index(seed, j) mod n`` (int32), where
    ``seed = jax.random.bits(key, (), uint32)`` for the key the cycle runs with."""
    return (hash_index(seed, j) % jnp.uint32(n)).astype(jnp.int32)


def decode(codes: np.ndarray, length: int) -> str:
    return "".join(INSTRUCTIONS[int(c)] for c in np.asarray(codes)[: int(length)])


class BFInterpreter:
    """AIQ's BF reference machine of one static configuration: it encodes programs into
    :class:`ProgramParams` and runs cycles of any batch of them (see the module doc)."""

    #: the names of :attr:`config`, in order
    CONFIG_NAMES: tuple[str, ...] = ("num_symbols", "obs_cells", "tape_len", "input_len", "step_limit",
                                     "max_program_len", "episode_length", "default_program")

    def __init__(
        self,
        num_symbols: int = 5,
        obs_cells: int = 1,
        tape_len: int = REFERENCE_TAPE_LEN,
        input_len: int = 25,
        step_limit: int = 1000,
        max_program_len: int = MAX_PROGRAM_LEN,
        episode_length: int = 100,
        default_program: str = ",.",
    ):
        if not 2 <= num_symbols <= 127:
            raise ValueError(f"num_symbols must be in [2, 127], got {num_symbols}")
        for name, value in (("obs_cells", obs_cells), ("tape_len", tape_len), ("input_len", input_len),
                            ("step_limit", step_limit), ("max_program_len", max_program_len),
                            ("episode_length", episode_length)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_program_len > np.iinfo(np.int16).max - 1:
            raise ValueError(f"max_program_len must be below {np.iinfo(np.int16).max}, got {max_program_len}")
        self.num_symbols = int(num_symbols)
        self.obs_cells = int(obs_cells)
        self.tape_len = int(tape_len)
        self.input_len = int(input_len)
        self.step_limit = int(step_limit)
        self.max_program_len = int(max_program_len)
        self.episode_length = int(episode_length)
        self.default_program = default_program
        self.mid = (self.num_symbols - 1) // 2  # blank symbol and loop test

    @property
    def config(self) -> tuple:
        """The static configuration (values of :attr:`CONFIG_NAMES`); equal configurations share
        compiled code."""
        return tuple(getattr(self, name) for name in self.CONFIG_NAMES)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.config == self.config

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in zip(self.CONFIG_NAMES, self.config))})"

    # ------------------------------------------------------------------ params
    def program_params(self, programs: str | Sequence[str],
                       stratum: int | Sequence[int] | None = None) -> ProgramParams:
        """Params for one program (a string) or a batch (a list of strings, leading axis)."""
        single = isinstance(programs, str)
        texts = [programs] if single else list(programs)
        encoded = [encode(p, self.max_program_len) for p in texts]
        if stratum is None:
            strata = np.full((len(texts),), UNCLASSIFIED, np.int32)
        else:
            strata = np.broadcast_to(np.asarray(stratum, np.int32), (len(texts),))
        params = ProgramParams(
            program=jnp.asarray(np.stack([e[0] for e in encoded])),
            match=jnp.asarray(np.stack([e[1] for e in encoded])),
            length=jnp.asarray(np.array([e[2] for e in encoded], np.int32)),
            stratum=jnp.asarray(strata),
            max_steps_in_episode=jnp.full((len(texts),), self.episode_length, jnp.int32),
        )
        if single:
            params = jax.tree.map(lambda x: x[0], params)
        return params

    # ----------------------------------------------------------------- machine
    def initial_state(self) -> MachineState:
        mid = jnp.int8(self.mid)
        return MachineState(
            time=jnp.int32(0),
            tape=jnp.full((self.tape_len,), mid, jnp.int8),
            ptr=jnp.int32(0),
            inputs=jnp.full((self.input_len,), mid, jnp.int8),
            outputs=jnp.full((1 + self.obs_cells,), mid, jnp.int8),
            steps=jnp.int32(0),
            overtime=jnp.bool_(False),
            stale=jnp.bool_(False),
        )

    def restart(self, state: MachineState) -> MachineState:
        """The state at the start of a new episode, without writing the work tape: it is marked
        ``stale`` and cleared by the next cycle (in place, only where some machine restarted),
        so that an automatic reset costs a few registers, not a pass over every tape."""
        fresh = self.initial_state().replace(tape=state.tape)
        return fresh.replace(stale=jnp.bool_(True))

    def work_tape(self, state: MachineState) -> jax.Array:
        """The work tape as the machine sees it (all ``mid`` while ``stale``)."""
        return jnp.where(state.stale, jnp.int8(self.mid), state.tape)

    def cycle(self, key: jax.Array, state: MachineState, action: jax.Array, params: ProgramParams,
              active: jax.Array | bool = True) -> MachineState:
        """One machine cycle: push ``action`` on the input tape and run the program once.

        With ``active`` False nothing runs (the input is still pushed) and ``steps`` is 0.
        ``time`` is left alone.
        """
        n = self.num_symbols
        action = jnp.clip(jnp.asarray(action, jnp.int32), 0, n - 1).astype(jnp.int8)
        inputs = jnp.concatenate([action[None], state.inputs[:-1]])
        seed = jax.random.bits(key, (), jnp.uint32)
        tape, ptr, outputs, steps = self._kernel(
            seed, state.tape, state.ptr, inputs, state.outputs, params.program, params.match,
            jnp.asarray(active, jnp.bool_), state.stale,
        )
        return state.replace(tape=tape, ptr=ptr, inputs=inputs, outputs=outputs, steps=steps,
                             overtime=steps >= self.step_limit, stale=jnp.bool_(False))

    @functools.cached_property
    def _kernel(self):
        """The cycle of one machine, whose every vmap (nested or not) becomes one flat batch.

        A vmapped ``lax.while_loop`` would select between the old and the new carry, whole
        tape included, on every machine step; the flat loop of :meth:`run_batch` writes one
        cell per machine per step in place and masks the machines that are done.
        """
        batched = jax.custom_batching.custom_vmap(self.run_batch)

        @batched.def_vmap
        def flatten_axis(axis_size, in_batched, *args):
            args = [x if b else jnp.broadcast_to(x, (axis_size,) + x.shape) for x, b in zip(args, in_batched)]
            inner = args[-1].shape[1]
            out = batched(*[x.reshape((axis_size * inner,) + x.shape[2:]) for x in args])
            return [y.reshape((axis_size, inner) + y.shape[1:]) for y in out], [True] * len(out)

        single = jax.custom_batching.custom_vmap(lambda *args: [y[0] for y in batched(*[x[None] for x in args])])

        @single.def_vmap
        def add_axis(axis_size, in_batched, *args):
            args = [x if b else jnp.broadcast_to(x, (axis_size,) + x.shape) for x, b in zip(args, in_batched)]
            return batched(*args), [True] * 4

        return single

    def start_cycle(self, ptr: jax.Array, tape: jax.Array, outputs: jax.Array, seed: jax.Array,
                    active: jax.Array) -> "Carry":
        """The carry of a batch of machines about to run a cycle (leading axis B everywhere)."""
        zeros = jnp.zeros_like(ptr)
        return Carry(ip=zeros, step=zeros, in_ptr=zeros, out_ptr=zeros, ptr=ptr, tape=tape, outputs=outputs,
                     n_rand=zeros, seed=seed.astype(jnp.uint32), halted=~active)

    def running(self, c: "Carry") -> jax.Array:
        """bool[B]: the machine executes an instruction now (its cycle has not ended)."""
        return (~c.halted) & (c.step < self.step_limit) & (c.out_ptr < 1 + self.obs_cells)

    def execute(self, c: "Carry", run: jax.Array, program: jax.Array, match: jax.Array,
                inputs: jax.Array, rows: jax.Array | None = None) -> "Carry":
        """One instruction on every machine of the batch where ``run``; the others are unchanged.

        ``rows`` (int32[B], default ``arange(B)``) says which row of ``c.tape``, ``program``,
        ``match`` and ``inputs`` each machine of ``c`` uses; the batch of :meth:`run_batch`'s
        later stages is a few machines that work on the full batch's arrays in place.  Rows
        must be distinct where ``run``.
        """
        n, mid, L = self.num_symbols, self.mid, self.tape_len
        last_input = self.input_len - 1
        out_len = 1 + self.obs_cells
        if rows is None:
            rows = jnp.arange(run.shape[0])
        P = program.shape[-1]
        at = rows * P + c.ip  # flat indices: 1-d gathers are cheaper than 2-d ones on a CPU
        op = program.reshape(-1)[at].astype(jnp.int32)
        cell_idx = jnp.where(c.ptr < 0, c.ptr + L, c.ptr)  # ptr mod L for ptr in [-L, L-1]
        if c.tape.size < self.FLAT_INDEX_LIMIT:  # flat int32 indices into all tapes at once
            tape_at = rows * L + cell_idx
            flat_tape = c.tape.reshape(-1)
        else:  # more cells than an int32 can number: index (row, cell)
            tape_at, flat_tape = (rows, cell_idx), c.tape
        cell = flat_tape[tape_at].astype(jnp.int32)
        # head
        left = jnp.where(c.ptr - 1 < -L, 0, c.ptr - 1)
        right = jnp.where(c.ptr + 1 >= L, 0, c.ptr + 1)
        ptr = jnp.where(op == LEFT, left, jnp.where(op == RIGHT, right, c.ptr))
        # cell
        can_read = c.in_ptr < last_input
        read = jnp.where(can_read, inputs.reshape(-1)[rows * self.input_len + jnp.minimum(c.in_ptr, last_input)].astype(jnp.int32), mid)
        new_cell = jnp.where(op == INC, jnp.where(cell + 1 >= n, 0, cell + 1),
                             jnp.where(op == DEC, jnp.where(cell - 1 < 0, n - 1, cell - 1),
                                       jnp.where(op == READ, read, random_symbols(c.seed, c.n_rand, n))))
        writes = run & ((op == INC) | (op == DEC) | (op == READ) | (op == RAND))
        tape = flat_tape.at[tape_at].set(jnp.where(writes, new_cell, cell).astype(jnp.int8),
                                         mode="promise_in_bounds").reshape(c.tape.shape)
        # output
        write = run & (op == WRITE)
        here = write[:, None] & (c.out_ptr[:, None] == jnp.arange(out_len))
        outputs = jnp.where(here, cell[:, None].astype(jnp.int8), c.outputs)
        # control
        jump = ((op == OPEN) & (cell == mid)) | ((op == CLOSE) & (cell != mid))
        target = match.reshape(-1)[at].astype(jnp.int32) + 1
        return Carry(
            ip=jnp.where(run, jnp.where(jump, target, c.ip + 1), c.ip),
            step=c.step + run,
            in_ptr=c.in_ptr + (run & (op == READ) & can_read),
            out_ptr=c.out_ptr + write,
            ptr=jnp.where(run, ptr, c.ptr),
            tape=tape,
            outputs=outputs,
            n_rand=c.n_rand + (run & (op == RAND)),
            seed=c.seed,
            halted=c.halted | (run & (op == HALT)),
        )

    #: tapes of more cells than this are indexed by (row, cell) rather than by a flat int32 index
    FLAT_INDEX_LIMIT = 2**31

    #: run_batch's stages: after the full batch, the machines still running move into batches
    #: STAGE_FACTOR times smaller, down to STAGE_MIN machines.
    STAGE_FACTOR = 8
    STAGE_MIN = 8

    def stage_sizes(self, batch: int) -> list[int]:
        sizes = [batch]
        while sizes[-1] // self.STAGE_FACTOR >= self.STAGE_MIN:
            sizes.append(sizes[-1] // self.STAGE_FACTOR)
        return sizes

    def run_batch(self, seed, tape, ptr, inputs, outputs, program, match, active, stale):
        """Run B machines (leading axis on every argument) until each has ended its cycle:
        returns [tape, ptr, outputs, steps].  The tapes of ``stale`` machines are cleared first
        (a branch taken only when one is).

        A cycle lasts as long as its machine's program needs (a few steps for most programs, the
        step limit for a few), and a loop over the whole batch would step every machine until
        the slowest is done.  So the loop runs in stages (:meth:`stage_sizes`): stage k steps a
        batch of ``sizes[k]`` machines while more than ``sizes[k + 1]`` of them are running, then
        the running ones move into the next, smaller batch (their registers are gathered, their
        tapes stay where they are and are written in place through ``rows``), and the last
        stage runs until every machine is done.
        """
        B = ptr.shape[0]
        mid = jnp.int8(self.mid)
        tape = jax.lax.cond(jnp.any(stale), lambda t: jnp.where(stale[:, None], mid, t), lambda t: t, tape)
        full = self.start_cycle(ptr, tape, outputs, seed, active)
        sizes = self.stage_sizes(B)
        regs = full._replace(tape=None)
        tape = full.tape
        for k, size in enumerate(sizes):
            after = sizes[k + 1] if k + 1 < len(sizes) else 0
            if k == 0:
                rows, sub = None, regs
            else:
                running = self.running(regs)
                # the running machines first, padded with one that is not running (there is one:
                # at most `size` < B run); padding repeats that machine, which stays unchanged
                idle = jnp.argmin(running).astype(jnp.int32)
                slot = jnp.where(running, jnp.cumsum(running) - 1, size)
                rows = jnp.full((size,), idle, jnp.int32).at[slot].set(jnp.arange(B, dtype=jnp.int32), mode="drop")
                sub = jax.tree.map(lambda x, rows=rows: None if x is None else x[rows], regs,
                                   is_leaf=lambda x: x is None)

            def cond(c, after=after):
                if after == 0:
                    return jnp.any(self.running(c[0]))
                return jnp.sum(self.running(c[0]), dtype=jnp.int32) > after

            def body(c, rows=rows):
                sub, tape = c
                c = self.execute(sub._replace(tape=tape), self.running(sub), program, match, inputs, rows)
                return c._replace(tape=None), c.tape

            sub, tape = jax.lax.while_loop(cond, body, (sub, tape))
            if k == 0:
                regs = sub
            else:
                regs = jax.tree.map(lambda x, y, rows=rows: None if x is None else x.at[rows].set(y), regs, sub,
                                    is_leaf=lambda x: x is None)
        return [tape, regs.ptr, regs.outputs, regs.step]
