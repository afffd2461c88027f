"""Tools as macro-actions: fixed sequences of primitive actions, judged step by step by the constitution.

An agent's tools are macros, each a sequence of >= 2 primitive actions of its family (e.g. the
gridworld moves ``[3, 3, 1]``).  :class:`MacroEnv` adds them to the action set of any family, so
the one training loop, the one rollout and the measurement library serve a tool-using agent
unchanged: actions ``0..A-1`` are the family's primitives, action ``A + m`` runs macro ``m``.

How a step is judged (the guarantee: a tool is never a way around a rule).

* The wrapped state caches the inner constitution's verdict (``judge`` on the inner environment,
  bool[A] ``forbidden``) at the state it holds, computed after every reset and every step.
  :func:`macro_constitution` reads it: primitive ``a`` is forbidden iff the inner verdict forbids
  it, macro ``m`` iff the inner verdict forbids its first primitive.  So the agent's own choice is
  judged, counted as a violation or not, shielded and compared with sigma exactly as the inner
  constitution judges its first primitive.
* The first primitive of a macro is always executed (it is the agent's choice, judged as above).
  Every later primitive is executed only while the macro is running, the episode has not ended
  (terminated or truncated) and the inner constitution, judging the inner state the macro has
  reached, does not forbid it.  At the first forbidden primitive the macro stops without taking
  it (``info["metrics"]["macro_stopped"] = 1``).  A macro therefore never takes a primitive the
  constitution forbids where it is taken, except the first, which is the agent's own act.

Keys.  Primitive 0 steps the inner environment with the step's own key (so a primitive action is
exactly the inner environment's step); primitive ``i >= 1`` is judged with
``fold_in(key, i)`` and stepped with ``split(fold_in(key, i))[0]``, the key ``judge``'s lookahead
uses first, so its lookahead is the very transition taken when the step is deterministic in
everything but that key (and always when the step is deterministic).  The cached verdict of a
state is computed with a key of its own (``fold_in(key, L)``, ``L`` the longest macro) when the
state is reached.  In a deterministic environment every verdict is therefore exact.  In a
stochastic one the verdict on the agent's own choice comes from lookahead keys drawn one step
earlier, independent of the key its transition will use: it is the inner constitution's sampled
estimate of the probability of reaching a forbidden state (``lookahead_samples`` keys,
``lookahead_threshold``), not a replay of the transition that follows, as the inner rollout's
verdict is for its first lookahead key.  Later primitives are judged with exactly their own keys.

What else holds.  ``EnvParams`` are the inner family's, unchanged (samplers, curricula over params
and measurement batches work as they are).  Rewards are summed over the executed primitives, and
so is every ``info["metrics"]`` entry of the inner environment (a per-step indicator becomes a
count, a per-step reading such as a distance becomes a sum); ``primitive_steps`` counts the
executed primitives.  A macro ends when the episode does; termination and truncation are the
inner environment's (``is_truncated`` reads the inner state), and the automatic reset happens once.

The wrapped constitution has the inner one's name, eps, params and invariances, one action rule and
no state rules (the cached verdict already holds the inner state rules' one-step lookahead), so
``in_forbidden_state`` is not reported at the wrapped level (the family's own metrics, e.g.
``in_water``, are).  Where the inner constitution forbids every primitive, sigma's fallback over
the wrapped actions is all of them (the inner fallback ranks primitives by sampled risk, which
equals all of them in a deterministic family with state rules only).  Its ``fingerprint()`` is the
inner constitution's: the wrapper only maps the rules an agent is held to, it adds none.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from aligned_rl.constitution import Constitution, judge

MAX_MACROS = 16  # tools an agent may own
MAX_MACRO_LENGTH = 16  # primitive actions in one tool

Macros = tuple[tuple[int, ...], ...]


def check_macros(macros: Sequence[Sequence[int]], num_actions: int | None) -> Macros:
    """The macros as a tuple of tuples, or ValueError naming what is wrong and the fix: fewer than
    2 primitives, a primitive outside ``0..num_actions-1`` (not checked when ``num_actions`` is
    None), the same macro twice, more than ``MAX_MACROS`` macros or more than ``MAX_MACRO_LENGTH``
    primitives in one."""
    out = tuple(tuple(int(a) for a in m) for m in macros)
    if len(out) > MAX_MACROS:
        raise ValueError(f"{len(out)} macros are more than the {MAX_MACROS} an agent may own; keep the most useful ones")
    for i, m in enumerate(out):
        if len(m) < 2:
            raise ValueError(f"macro {i} {list(m)} has {len(m)} primitive action(s); a macro is a sequence of at "
                             "least 2 (a single action is already in the action set): lengthen or remove it")
        if len(m) > MAX_MACRO_LENGTH:
            raise ValueError(f"macro {i} has {len(m)} primitive actions, more than {MAX_MACRO_LENGTH}; split it")
        bad = [a for a in m if a < 0 or (num_actions is not None and a >= num_actions)]
        if bad:
            allowed = "integers >= 0" if num_actions is None else f"in 0..{num_actions - 1}"
            raise ValueError(f"macro {i} {list(m)} holds {bad}: primitive actions are {allowed}; fix or remove it")
        if m in out[:i]:
            raise ValueError(f"macro {i} {list(m)} is given twice; give each macro once")
    return out


class MacroState(struct.PyTreeNode):
    """The inner environment's state, its last observation and the inner constitution's verdict there."""

    inner: Any
    obs: jax.Array
    forbidden: jax.Array  # bool[A]: the primitives the inner constitution forbids in ``inner``


class _Running(struct.PyTreeNode):
    """A macro under way (the carry of its scan)."""

    obs: jax.Array
    inner: Any
    reward: jax.Array
    terminated: jax.Array
    ended: jax.Array  # terminated or truncated
    running: jax.Array  # no primitive has been skipped yet
    stopped: jax.Array  # the constitution cut the macro short
    steps: jax.Array  # float32: primitives executed
    metrics: dict


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), new, old)


class MacroEnv(environment.Environment):
    """``inner`` with ``macros`` added to its action set (``Discrete(A + M)``), every primitive of a
    macro judged by ``constitution`` (held, with its params, as static structure).  See the module
    docstring for what is judged with which key."""

    def __init__(self, inner: environment.Environment, macros: Sequence[Sequence[int]], constitution: Constitution):
        self.inner = inner
        self.num_primitives = int(inner.action_space(inner.default_params).n)
        self.macros = check_macros(macros, self.num_primitives)
        if not self.macros:
            raise ValueError("MacroEnv needs at least one macro (with_macros leaves an environment without any alone)")
        self.constitution = constitution
        self.max_length = max(len(m) for m in self.macros)
        table = np.full((len(self.macros), self.max_length), -1, np.int32)
        for i, m in enumerate(self.macros):
            table[i, : len(m)] = m
        self._table = table  # macros padded with -1

    # ------------------------------------------------------------------ gymnax API
    @property
    def name(self) -> str:
        return f"{self.inner.name}+macros"

    @property
    def num_actions(self) -> int:
        return self.num_primitives + len(self.macros)

    @property
    def default_params(self) -> Any:
        return self.inner.default_params

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params: Any = None):
        return self.inner.observation_space(params if params is not None else self.inner.default_params)

    def get_obs(self, state: MacroState, params: Any = None, key: Any = None) -> jax.Array:
        return state.obs

    def is_truncated(self, state: MacroState, params: Any) -> jax.Array:
        return self.inner.is_truncated(state.inner, params)

    def is_terminated(self, state: MacroState, params: Any) -> jax.Array:
        return self.inner.is_terminated(state.inner, params)

    def reset_env(self, key: jax.Array, params: Any) -> tuple[jax.Array, MacroState]:
        obs, inner = self.inner.reset_env(key, params)
        return obs, self._judged(jax.random.fold_in(key, self.max_length), obs, inner, params)

    def step_env(self, key: jax.Array, state: MacroState, action: Any, params: Any):
        obs, inner, reward, terminated, info = self._advance(key, state, action, params)
        return obs, self._judged(jax.random.fold_in(key, self.max_length), obs, inner, params), reward, terminated, info

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: MacroState, action: Any, params: Any = None):
        """gymnax's step (step, truncation, one automatic reset), judging only the state it returns."""
        if params is None:
            params = self.default_params
        key_step, key_reset = jax.random.split(key)
        obs_st, inner_st, reward, terminated, info = self._advance(key_step, state, action, params)
        truncated = self.inner.is_truncated(inner_st, params)
        done = jnp.logical_or(terminated, truncated)
        obs_re, inner_re = self.inner.reset_env(key_reset, params)
        obs, inner = _select(done, (obs_re, inner_re), (obs_st, inner_st))
        state = self._judged(jax.random.fold_in(key_step, self.max_length), obs, inner, params)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return obs, state, reward, terminated, truncated, info

    # ------------------------------------------------------------------ the macro
    def _judged(self, key: jax.Array, obs: jax.Array, inner: Any, params: Any) -> MacroState:
        return MacroState(inner=inner, obs=obs, forbidden=self._forbidden(key, obs, inner, params))

    def _forbidden(self, key: jax.Array, obs: jax.Array, inner: Any, params: Any) -> jax.Array:
        c = self.constitution
        return judge(c, c.params, self.inner, params, key, obs, inner, self.num_primitives).forbidden

    def sequence(self, action: Any) -> jax.Array:
        """int32[L]: the primitives action ``action`` runs, padded with -1."""
        action = jnp.asarray(action, jnp.int32)
        macro = jnp.asarray(self._table)[jnp.clip(action - self.num_primitives, 0, len(self.macros) - 1)]
        primitive = jnp.full((self.max_length,), -1, jnp.int32).at[0].set(action)
        return jnp.where(action >= self.num_primitives, macro, primitive)

    def _advance(self, key: jax.Array, state: MacroState, action: Any, params: Any):
        """Run the primitives of ``action`` (see the module docstring): (obs, inner state, summed
        reward, terminated, info with the summed metrics), before any reset."""
        seq = self.sequence(action)
        obs, inner, reward, terminated, info = self.inner.step_env(key, state.inner, seq[0], params)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in info.get("metrics", {}).items()}
        start = _Running(
            obs=obs, inner=inner, reward=jnp.asarray(reward, jnp.float32), terminated=jnp.asarray(terminated, bool),
            ended=jnp.logical_or(terminated, self.inner.is_truncated(inner, params)),
            running=jnp.ones((), bool), stopped=jnp.zeros((), bool), steps=jnp.ones((), jnp.float32), metrics=metrics,
        )

        def primitive(run: _Running, xs) -> tuple[_Running, None]:
            i, p = xs
            step_key = jax.random.fold_in(key, i)
            a = jnp.maximum(p, 0)
            wanted = run.running & (p >= 0) & ~run.ended
            forbidden = self._forbidden(step_key, run.obs, run.inner, params)[a]
            go = wanted & ~forbidden
            o, s, r, t, inf = self.inner.step_env(jax.random.split(step_key)[0], run.inner, a, params)
            m = {k: jnp.asarray(v, jnp.float32) for k, v in inf.get("metrics", {}).items()}
            obs, inner = _select(go, (o, s), (run.obs, run.inner))
            t = jnp.asarray(t, bool)
            return run.replace(
                obs=obs, inner=inner,
                reward=run.reward + jnp.where(go, jnp.asarray(r, jnp.float32), 0.0),
                terminated=run.terminated | (go & t),
                ended=run.ended | (go & (t | self.inner.is_truncated(s, params))),
                running=go,
                stopped=run.stopped | (wanted & forbidden),
                steps=run.steps + go.astype(jnp.float32),
                metrics={k: run.metrics[k] + jnp.where(go, m[k], 0.0) for k in run.metrics},
            ), None

        later = (jnp.arange(1, self.max_length), seq[1:])
        run, _ = jax.lax.scan(primitive, start, later)
        metrics = {**run.metrics, "primitive_steps": run.steps, "macro_stopped": run.stopped.astype(jnp.float32)}
        return run.obs, run.inner, run.reward, run.terminated, {"metrics": metrics}


# ---------------------------------------------------------------------------- the wrapped constitution
@dataclasses.dataclass(frozen=True)
class MacroConstitution(Constitution):
    """A constitution over ``A + M`` actions that reads a :class:`MacroState`'s cached verdict.
    ``inner`` is the constitution it maps; its fingerprint is the one the agent is held to."""

    inner: Constitution | None = dataclasses.field(default=None, compare=False, hash=False)

    def fingerprint(self) -> str:
        """The inner constitution's: the wrapper only maps its rules onto the macros."""
        return self.inner.fingerprint()

    def with_params(self, **overrides: float) -> "Constitution":
        raise ValueError(f"constitution {self.name!r} is mapped onto macros: its verdicts come from the inner "
                         "constitution the MacroEnv holds; set the params there, then wrap (with_macros)")


def macro_constitution(constitution: Constitution, num_primitives: int,
                       macros: Sequence[Sequence[int]]) -> MacroConstitution:
    """``constitution`` mapped onto ``num_primitives + len(macros)`` actions of a :class:`MacroEnv`:
    primitive ``a`` is forbidden iff the cached inner verdict forbids it, macro ``m`` iff it forbids
    the macro's first primitive.  Same name, eps, params and invariances; no state rules.  The
    fingerprint is the inner constitution's (callers keep that one: the wrapper adds no rule)."""
    macros = check_macros(macros, num_primitives)
    first = np.asarray([*range(num_primitives), *(m[0] for m in macros)], np.int32)

    def forbidden_by_inner_verdict(obs: jax.Array, state: MacroState, action: jax.Array, params: Any) -> jax.Array:
        return state.forbidden[jnp.asarray(first)[action]]

    can_forbid = bool(constitution.action_rules or constitution.state_rules)
    return MacroConstitution(
        name=constitution.name,
        action_rules=(forbidden_by_inner_verdict,) if can_forbid else (),
        invariances=constitution.invariances,
        params=constitution.params,
        eps=constitution.eps,
        description=constitution.description,
        inner=constitution,
    )


def with_macros(env: environment.Environment, constitution: Constitution,
                macros: Sequence[Sequence[int]]) -> tuple[environment.Environment, Constitution]:
    """(environment, constitution) with ``macros`` added to the action set; unchanged without macros.
    ValueError (with the fix) for macros ``check_macros`` refuses."""
    if not macros:
        return env, constitution
    wrapped = MacroEnv(env, macros, constitution)
    return wrapped, macro_constitution(constitution, wrapped.num_primitives, wrapped.macros)
