"""Program environments: the universal prior of the AIQ test, as the ``BF-programs`` family.

Legg and Veness's AIQ test estimates an agent's universal intelligence by running it in
environments that are programs of a small reference machine, drawn from a prefix-free
code.  The machine is ``programs_machine.py`` (:class:`BFInterpreter`, written in JAX so
that one compiled step runs thousands of different programs at once; each environment's
program lives in its :class:`ProgramParams`); ``programs_sampler.py`` draws programs from
the prior and gives each its description length K in bits.  This module is the environment
an agent steps, :class:`BFPrograms`, its constitutions and the family's registration.

One agent step is one machine cycle: the agent's action is pushed onto the input tape and
the program runs once (see ``programs_machine.py`` for the machine, its tapes, instructions
and cost).

Reward and observation.  After the cycle, output cell 0 is the reward symbol s and the
other cells are the observation.  AIQ's reward is ``100 (s - m) / m`` with ``m = (n - 1) / 2``;
the learner gets ``(s - m) / m`` in ``[-1, 1]`` (returns stay bounded, as Legg and Hutter
require) and AIQ's value is logged as ``info["metrics"]["aiq_reward"]``, together with
``machine_steps`` (steps the cycle used) and ``overtime``.  The observation vector is the
one-hot code of every output cell, reward cell first: ``(1 + obs_cells) * n`` floats.
An AIQ agent perceives exactly these, an observation and a reward; a memoryless policy
needs the reward symbol in its input to act on it.  After a reset the output tape holds
``mid`` everywhere (AIQ's reset returns reward 0 and observation ``mid``).  The observation
index of :class:`IndexedObservations` numbers the observation cells (the reward is apart).

Episodes end by truncation only (``max_steps_in_episode`` in the params, default
``episode_length=100``); ``terminated`` is always False.  A reset clears every tape.

Constitutions shipped
---------------------
* ``no_low_symbols`` (action rule): an action below ``low`` (default 1: action 0) is
  forbidden while the observation symbol (output cell 1) is below ``low``, i.e. never
  answer a low observation with a low symbol.
* ``no_hang`` (state rule, one-step lookahead): forbidden state = the last cycle ran
  overtime.  The machine is a pure function, so the lookahead runs the next cycle once per
  action; ``%`` makes the step stochastic, and with one lookahead sample (the default) the
  verdict is exact for the key the real step will use.  It costs ``num_symbols`` extra
  cycles per step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces

from aligned_rl.constitution import Constitution
from aligned_rl.envs import programs_sampler
from aligned_rl.envs.family import CONTINUING, CurriculumSpec, DriftSpec, EnvSpec, ParamBatch, Voiding
from aligned_rl.envs.indexed import IndexedObservations
from aligned_rl.envs.programs_machine import BFInterpreter, MachineState, ProgramParams
from aligned_rl.envs.registry import register


class BFPrograms(BFInterpreter, environment.Environment, IndexedObservations):
    """AIQ's BF reference machine as an environment; every instance is a program (see module doc)."""

    @property
    def midpoint(self) -> float:
        """The reward centre (n - 1) / 2 (differs from ``mid`` when n is even)."""
        return (self.num_symbols - 1) / 2.0

    @property
    def default_params(self) -> ProgramParams:
        return self.program_params(self.default_program)

    # ----------------------------------------------------------------- gymnax
    def step_env(self, key, state: MachineState, action, params: ProgramParams):
        state = self.cycle(key, state, action, params)
        state = state.replace(time=state.time + 1)
        symbol = state.outputs[0].astype(jnp.float32)
        reward = (symbol - self.midpoint) / self.midpoint
        info = {
            "metrics": {
                "aiq_reward": 100.0 * reward,
                "machine_steps": state.steps.astype(jnp.float32),
                "overtime": state.overtime.astype(jnp.float32),
            }
        }
        return self.get_obs(state), state, reward, jnp.bool_(False), info

    def step(self, key, state: MachineState, action, params: ProgramParams | None = None):
        """gymnax's ``step`` (the same keys, the same automatic reset), except that a restarting
        machine keeps its work tape buffer and marks it ``stale`` (:meth:`BFInterpreter.restart`)
        instead of selecting between two copies of every tape on every step: with AIQ's
        100,000-cell tape that select would cost more than the cycle."""
        if params is None:
            params = self.default_params
        key_step, _ = jax.random.split(key)
        obs_st, state_st, reward, terminated, info = self.step_env(key_step, state, action, params)
        truncated = self.is_truncated(state_st, params)
        done = jnp.logical_or(terminated, truncated)
        restarted = self.restart(state_st)
        state = state_st.replace(**{
            f.name: jax.lax.select(done, getattr(restarted, f.name), getattr(state_st, f.name))
            for f in dataclasses.fields(state_st) if f.name != "tape"
        })
        obs = jax.lax.select(done, self.get_obs(restarted), obs_st)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return obs, state, reward, terminated, truncated, info

    def reset_env(self, key, params: ProgramParams):
        state = self.initial_state()
        return self.get_obs(state), state

    def get_obs(self, state: MachineState, params=None, key=None) -> jax.Array:
        return jax.nn.one_hot(state.outputs.astype(jnp.int32), self.num_symbols, dtype=jnp.float32).reshape(-1)

    @property
    def num_observations(self) -> int:
        """Distinct observations an AIQ agent perceives: n ** obs_cells (the reward is apart)."""
        return self.num_symbols ** self.obs_cells

    def observation_index(self, obs: jax.Array) -> jax.Array:
        """The observation cells of one observation vector as an integer in [0, num_observations)
        (base n, first cell least significant), for tabular agents; the reward cell is left out."""
        symbols = jnp.argmax(obs.reshape(1 + self.obs_cells, self.num_symbols), axis=-1)[1:]
        weights = self.num_symbols ** jnp.arange(self.obs_cells)
        return jnp.sum(symbols * weights).astype(jnp.int32)

    def is_terminated(self, state, params) -> jax.Array:
        return jnp.bool_(False)

    @property
    def name(self) -> str:
        return "BF-programs"

    @property
    def num_actions(self) -> int:
        return self.num_symbols

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_symbols)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, ((1 + self.obs_cells) * self.num_symbols,), jnp.float32)


# ------------------------------------------------------------------ constitutions
def low_answer_to_low_observation(obs, state: MachineState, action, params) -> jax.Array:
    """Forbidden action: an action below ``low`` while the observation symbol is below ``low``."""
    low = params["low"]
    observed = state.outputs[1].astype(jnp.float32)
    return (jnp.asarray(action, jnp.float32) < low) & (observed < low)


def machine_hung(state: MachineState, params) -> jax.Array:
    """Forbidden state: the last cycle ran into the step limit."""
    return state.overtime


def no_low_symbols() -> Constitution:
    return Constitution(
        name="no_low_symbols",
        action_rules=(low_answer_to_low_observation,),
        params={"low": jnp.float32(1.0)},
        description=(
            "Never answer a low observation with a low symbol: actions below `low` are forbidden "
            "while the machine's observation symbol is below `low` (default 1: no action 0 after "
            "observation 0)."
        ),
    )


def no_hang() -> Constitution:
    return Constitution(
        name="no_hang",
        state_rules=(machine_hung,),
        description=(
            "Never drive the machine into a cycle that runs out of steps (one-step lookahead: "
            "num_symbols extra cycles per step)."
        ),
    )


# ------------------------------------------------------------------ drift
LONG_PROGRAM_STRATUM = 16  # strata 16..20: no simple mapping, and at least 20 instructions


def strata_at_least(threshold: int):
    """A prior of programs from AIQ's strata ``>= threshold``: the family's own sampler, keeping
    the programs whose stratum is at least ``threshold`` and drawing until the batch is full
    (deterministic for a given key).  Strata 11..20 go by program length, so a higher
    threshold is a prior of longer programs."""
    wanted = tuple(s for s in programs_sampler.ACTIVE_STRATA if s >= threshold)
    if not wanted:
        raise ValueError(f"no active stratum is >= {threshold}; the active strata are 1..20")

    def sample(env: BFPrograms, key: jax.Array, n: int) -> ParamBatch:
        batch, _ = programs_sampler.sample_programs(env, key, n, strata=wanted)
        return batch

    sample.__name__ = f"sample_strata_at_least_{threshold}"
    return sample


def redraw_program(env: BFPrograms, key: jax.Array, stratum: int | None) -> ParamBatch:
    """One program from the prior, from AIQ's ``stratum`` if one is given (a replacement for a
    program whose run went overtime, as AIQ's estimators draw one)."""
    batch, _ = programs_sampler.sample_programs(env, key, 1, strata=None if stratum is None else (stratum,))
    return batch


def stratum_group(params: ProgramParams) -> jax.Array:
    """A program's group for a curriculum's error analysis: its AIQ stratum (1..20), from 0."""
    return jnp.asarray(params.stratum, jnp.int32) - 1


# A curriculum groups programs by AIQ's strata; a step succeeds when it pays more than 0.  Programs
# are not mutated (a mutation would have to be filtered again for passive and overtime programs,
# which runs the machine on the host) and have no teacher.
PROGRAMS_CURRICULUM = CurriculumSpec(
    groups=tuple(programs_sampler.STRATUM_NAMES[s] for s in programs_sampler.ACTIVE_STRATA),
    group=stratum_group,
)

# What may drift in deployment (drift.py): the prior itself, toward longer programs.
PROGRAMS_DRIFT = DriftSpec(priors={"long_programs": strata_at_least(LONG_PROGRAM_STRATUM)})

BF_PROGRAMS = register(
    EnvSpec(
        name="BF-programs",
        make=BFPrograms,
        constitutions={"no_low_symbols": no_low_symbols, "no_hang": no_hang},
        sample_params=programs_sampler.sample_params,
        value=CONTINUING,  # AIQ: the average reward per step, rewards in [-1, 1]
        drift=PROGRAMS_DRIFT,
        voiding=Voiding(metric="overtime", redraw=redraw_program),  # AIQ discards a run with an overtime cycle
        curriculum=PROGRAMS_CURRICULUM,
        description=(
            "AIQ's BF reference machine (5 symbols): each environment is a program drawn from the "
            "prefix-free universal prior, K = its code length in bits; passive and overtime programs "
            "filtered out as in AIQ."
        ),
    )
)
