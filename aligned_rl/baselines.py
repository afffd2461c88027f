"""The AIQ baseline agents as vectorisable online learners.

Legg & Veness ("An Approximation of the Universal Intelligence Measure") rate
four simple reinforcement learners against their sampled environments: Random,
Freq, Watkins' Q(lambda) and HLQ(lambda) (Q(lambda) whose learning rate is set
per state-action pair from discounted visit counts).  This module rebuilds them
in pure JAX with every table held in a per-environment state, so one agent
object drives thousands of environments under ``jax.vmap``.

Interface
---------
Observations are integers in ``[0, num_obs)``, actions integers in
``[0, num_actions)``, rewards floats.  An agent is a frozen dataclass of static
sizes and hyperparameters with two pure methods::

    state = agent.init(key)                          # AgentState pytree
    state, action = agent.step(state, obs, reward)   # one AIQ cycle

``step`` is AIQ's ``perceive(observation, reward)``: the agent receives the
reward and observation the environment just produced and returns its next
action.  It is one call rather than an ``act``/``learn`` pair because AIQ
chooses the next action *before* it learns, and the learning update needs that
choice: Q(lambda) cuts its traces when the chosen action is exploratory, and
HLQ(lambda)'s learning rates depend on the chosen (observation, action) pair.
A split API would either replay that order by hand at every call site or get it
wrong.  The environment loop is therefore, exactly as in AIQ::

    reward, obs = env.reset()
    for t in range(T):
        state, action = agent.step(state, obs, reward)
        reward, obs = env.step(action)

The first ``step`` sees the environment's initial (reward, observation) and,
as in AIQ, learns from it as though it followed observation 0 and action 0 (the
values AIQ's ``reset`` leaves behind): Freq credits the initial reward to
action 0, the Q learners make one update from (0, 0).

Everything is jittable and vmappable: ``jax.vmap(agent.init)(keys)`` builds one
state per environment and ``jax.vmap(agent.step)(states, obs, rewards)`` steps
them all.  Tables are float32, or float64 when ``jax_enable_x64`` is on at
``init``.

The agents
----------
All learners pick greedily with AIQ's ``random_optimal``: the largest value,
with ties broken uniformly at random (a value must exceed -1e10 to count as a
maximum; if none does, the entries equal to -1e10 and a fallback to action 0
share the draw; NaN entries never win).  With probability ``epsilon`` the
greedy choice is replaced by a uniformly random action, which may be the greedy
one again.

``random``      ``RandomAgent``: a uniformly random action each step.

``freq``        ``Freq(epsilon)``: per action, the running total of the
                rewards that followed it and a count that starts at 1; acts
                epsilon-greedily on total / count.  Ignores observations.

``q_lambda``    ``QLambda(init_q, lam, alpha, epsilon, gamma)``: Watkins'
                Q(lambda) with accumulating traces (Sutton & Barto).  With
                previous pair (s, a), new observation s' and reward r: pick
                a* = random_optimal(Q[s']) and the next action a' (epsilon-greedy
                on a*); delta = r + gamma Q[s', a*] - Q[s, a]; E[s, a] += 1;
                Q += alpha delta E; E *= gamma lam if a' == a* else E = 0.

``hlq_lambda``  ``HLQLambda(sel_mode, init_q, lam, epsilon, gamma)``:
                Hutter & Legg's HLQ(lambda).  Same selection and delta; then
                E[s, a] += 1, V[s, a] += 1 (V starts at 1),
                B = E / (V[s',a'] - gamma E[s',a']) * (lam V[s',a'] + d)
                    / (lam V + d),  d = 1 at (s', a') and 0 elsewhere;
                V *= lam where V exceeds a floor, else V = floor;
                E *= gamma lam if a' == a* else E = 0;  Q += B delta.
                The floor is AIQ's 1e-100 for float64 tables; float32 cannot
                hold it, so float32 tables use 1e-30 (with lam = 0.5 a pair
                reaches it after ~100 steps unvisited, when its learning rate
                is already ~gamma^100 of the TD error).  ``sel_mode=1`` replaces epsilon-greedy by
                softmax selection at temperature max(epsilon, 1e-4), as AIQ's
                ``soft_max`` does (the greedy action a* is still drawn and
                still decides whether traces are cut).

Defaults
--------
AIQ's agent constructors take their parameters from the command line and carry
no defaults except HLQ(lambda)'s ``epsilon=0`` and ``gamma=0`` (the latter
meaning "use the environment's discount rate", which must be below 1).  The
defaults here follow the invocation given in AIQ's README,
``-a Q_l,50.0,0.5,0.5,0.05,0.9``: initial Q 50, lambda 0.5, alpha 0.5,
epsilon 0.05, gamma 0.9.  Freq takes that epsilon; HLQ(lambda) takes that
initial Q, lambda and gamma with its own code default epsilon 0 (greedy, with
exploration coming from the optimistic initial values).  This module knows no
environment, so gamma is always given explicitly (any value in [0, 1)).

Randomness
----------
Every random choice comes from the key stored in the state.  Step ``t``
(counting from 0 per state) draws three float32 uniforms::

    u = jax.random.uniform(jax.random.fold_in(key, t), (3,), dtype=jnp.float32)

``u[0]`` breaks ties (the k-th tied action, k = floor(u[0] * n_ties)),
``u[1]`` decides exploration (explore when u[1] < epsilon), and ``u[2]`` picks
the random action (floor(u[2] * num_actions), Random's action too) or, under
softmax, is the draw compared with the cumulative probabilities (the first
action whose cumulative probability exceeds u[2], else the last).  The three
are drawn every step whether used or not, so a reference implementation fed
the same uniforms reproduces the agent step for step.  Products are taken in
float32 and clipped to the last index.  ``step_uniforms`` computes them.

Example
-------
Scanning an agent against a batch of environments whose (hypothetical,
environment-side) ``env_reset(key) -> (env_state, obs, reward)`` and
``env_step(env_state, action) -> (env_state, obs, reward)`` return an
observation index and a reward::

    agent = make_baseline("q_lambda", num_obs=8, num_actions=3)
    k_agent, k_env = jax.random.split(jax.random.key(0))
    agent_states = jax.vmap(agent.init)(jax.random.split(k_agent, 4096))
    env_states, obs, reward = jax.vmap(env_reset)(jax.random.split(k_env, 4096))

    def cycle(carry, _):
        agent_states, env_states, obs, reward = carry
        agent_states, action = jax.vmap(agent.step)(agent_states, obs, reward)
        env_states, obs, reward = jax.vmap(env_step)(env_states, action)
        return (agent_states, env_states, obs, reward), reward

    carry = (agent_states, env_states, obs, reward)
    carry, rewards = jax.jit(
        lambda c: jax.lax.scan(cycle, c, None, length=1000))(carry)
    # rewards: (1000, 4096), the reward after each action
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "BASELINES",
    "AgentState",
    "Baseline",
    "Freq",
    "HLQLambda",
    "QLambda",
    "RandomAgent",
    "make_baseline",
    "random_optimal",
    "step_uniforms",
]

# random_optimal's starting "best value": only values above it count as maxima.
TIE_THRESHOLD = -1e10
# AIQ's floor on HLQ(lambda)'s discounted visit counts (float64 tables), and the
# float32 stand-in: lam * floor and (1 - gamma) * floor must stay normal numbers,
# since XLA flushes subnormals to zero and 0 / 0 would poison the learning rates.
V_FLOOR = 1e-100
V_FLOOR_FLOAT32 = 1e-30
# AIQ's lowest softmax temperature.
MIN_TEMPERATURE = 1e-4


class AgentState(NamedTuple):
    """Per-environment agent state (a pytree; batch it with ``jax.vmap``).

    key     the agent's PRNG key, fixed; step t draws from fold_in(key, t)
    t       steps taken so far (int32)
    obs     the previous observation (AIQ's ``self.state``; 0 after init)
    action  the previous action (0 after init)
    tables  the learner's arrays by name: Freq {"total", "count"},
            Q(lambda) {"q", "e"}, HLQ(lambda) {"q", "e", "v"}, Random {}
    """

    key: jax.Array
    t: jax.Array
    obs: jax.Array
    action: jax.Array
    tables: dict[str, jax.Array]


def step_uniforms(key: jax.Array, t: jax.Array | int) -> jax.Array:
    """The three float32 uniforms a state with ``key`` draws at step ``t``."""
    return jax.random.uniform(jax.random.fold_in(key, t), (3,), dtype=jnp.float32)


def _index_below(u: jax.Array, n: jax.Array | int) -> jax.Array:
    """floor(u * n) in float32, clipped to n - 1: a uniform index in [0, n)."""
    n = jnp.asarray(n, jnp.int32)
    k = jnp.floor(u * n.astype(jnp.float32)).astype(jnp.int32)
    return jnp.minimum(k, n - 1)


def random_optimal(values: jax.Array, u: jax.Array) -> jax.Array:
    """AIQ's greedy choice over ``values`` (one row), ties broken by ``u``.

    The maximum must exceed -1e10; otherwise the candidates are the entries
    equal to -1e10 plus one extra slot that falls back to action 0.
    """
    values = jnp.where(jnp.isnan(values), -jnp.inf, values)
    best = jnp.max(values)
    found = best > TIE_THRESHOLD
    target = jnp.where(found, best, jnp.asarray(TIE_THRESHOLD, values.dtype))
    ties = values == target
    count = jnp.sum(ties, dtype=jnp.int32) + jnp.where(found, 0, 1)
    k = _index_below(u, count)
    pick = ties & (jnp.cumsum(ties, dtype=jnp.int32) == k + 1)
    return jnp.where(jnp.any(pick), jnp.argmax(pick), 0).astype(jnp.int32)


def _epsilon_greedy(values: jax.Array, u: jax.Array, epsilon: float, num_actions: int):
    """(greedy action, chosen action) for AIQ's epsilon-greedy selection."""
    greedy = random_optimal(values, u[0])
    explore = u[1] < jnp.float32(epsilon)
    return greedy, jnp.where(explore, _index_below(u[2], num_actions), greedy)


def _softmax_choice(values: jax.Array, u: jax.Array, temperature: float) -> jax.Array:
    """AIQ's soft_max: the first action whose cumulative probability exceeds u.

    AIQ shifts the scaled values so that exp() cannot overflow; the softmax
    below is the same distribution computed stably.
    """
    probs = jax.nn.softmax(values / max(temperature, MIN_TEMPERATURE))
    below = u < jnp.cumsum(probs)
    return jnp.where(jnp.any(below), jnp.argmax(below), values.shape[-1] - 1).astype(jnp.int32)


def _float_dtype():
    return jnp.result_type(float)


def _check_fraction(name: str, value: float, low: float, high: float, *,
                    open_low: bool = False, open_high: bool = False) -> None:
    ok_low = value > low if open_low else value >= low
    ok_high = value < high if open_high else value <= high
    if not (math.isfinite(value) and ok_low and ok_high):
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Sizes shared by every agent; subclasses add hyperparameters."""

    num_obs: int
    num_actions: int

    name: ClassVar[str] = ""
    # whether the agent's actions depend on the observation (else any family will do: num_obs = 1)
    reads_observations: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for field in ("num_obs", "num_actions"):
            value = getattr(self, field)
            try:
                value = operator.index(value)
            except TypeError:
                raise TypeError(f"{field} must be an integer, got {value!r}") from None
            if value < 1:
                raise ValueError(f"{field} must be at least 1, got {value}")
            object.__setattr__(self, field, value)
        for f in dataclasses.fields(self):
            if f.name not in ("num_obs", "num_actions"):
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise TypeError(f"{self.name}: {f.name} must be a number, got {value!r}")
        self._validate()

    def _validate(self) -> None:
        pass

    def _tables(self) -> dict[str, jax.Array]:
        return {}

    def init(self, key: jax.Array) -> AgentState:
        """A fresh state as after AIQ's ``reset``: previous obs and action 0."""
        zero = jnp.zeros((), jnp.int32)
        return AgentState(key=key, t=zero, obs=zero, action=zero, tables=self._tables())

    def _advance(self, state: AgentState, obs: jax.Array, action: jax.Array,
                 tables: dict[str, jax.Array]) -> tuple[AgentState, jax.Array]:
        new = AgentState(key=state.key, t=state.t + 1, obs=obs, action=action, tables=tables)
        return new, action

    def step(self, state: AgentState, obs: jax.Array, reward: jax.Array) -> tuple[AgentState, jax.Array]:
        """One AIQ ``perceive``: learn from (reward, obs), return the next action."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RandomAgent(Baseline):
    """Uniformly random actions; observations and rewards are ignored."""

    name: ClassVar[str] = "random"
    reads_observations: ClassVar[bool] = False

    def step(self, state, obs, reward):
        u = step_uniforms(state.key, state.t)
        action = _index_below(u[2], self.num_actions)
        return self._advance(state, jnp.asarray(obs, jnp.int32), action, state.tables)


@dataclasses.dataclass(frozen=True)
class Freq(Baseline):
    """Epsilon-greedy on each action's mean reward (totals over counts from 1)."""

    epsilon: float = 0.05

    name: ClassVar[str] = "freq"
    reads_observations: ClassVar[bool] = False

    def _validate(self):
        _check_fraction("epsilon", self.epsilon, 0.0, 1.0)

    def _tables(self):
        dtype = _float_dtype()
        return {"total": jnp.zeros((self.num_actions,), dtype),
                "count": jnp.ones((self.num_actions,), dtype)}

    def step(self, state, obs, reward):
        total, count = state.tables["total"], state.tables["count"]
        total = total.at[state.action].add(jnp.asarray(reward, total.dtype))
        count = count.at[state.action].add(1.0)
        u = step_uniforms(state.key, state.t)
        _, action = _epsilon_greedy(total / count, u, self.epsilon, self.num_actions)
        return self._advance(state, jnp.asarray(obs, jnp.int32), action,
                             {"total": total, "count": count})


@dataclasses.dataclass(frozen=True)
class QLambda(Baseline):
    """Watkins' Q(lambda), epsilon-greedy, traces cut after exploratory actions."""

    init_q: float = 50.0
    lam: float = 0.5
    alpha: float = 0.5
    epsilon: float = 0.05
    gamma: float = 0.9

    name: ClassVar[str] = "q_lambda"

    def _validate(self):
        _check_fraction("init_q", self.init_q, -math.inf, math.inf, open_low=True, open_high=True)
        _check_fraction("lam", self.lam, 0.0, 1.0)
        _check_fraction("alpha", self.alpha, 0.0, math.inf, open_high=True)
        _check_fraction("epsilon", self.epsilon, 0.0, 1.0)
        _check_fraction("gamma", self.gamma, 0.0, 1.0, open_high=True)

    def _tables(self):
        shape, dtype = (self.num_obs, self.num_actions), _float_dtype()
        return {"q": jnp.full(shape, self.init_q, dtype), "e": jnp.zeros(shape, dtype)}

    def step(self, state, obs, reward):
        obs = jnp.asarray(obs, jnp.int32)
        q, e = state.tables["q"], state.tables["e"]
        reward = jnp.asarray(reward, q.dtype)
        u = step_uniforms(state.key, state.t)
        greedy, action = _epsilon_greedy(q[obs], u, self.epsilon, self.num_actions)
        s, a = state.obs, state.action
        delta = reward + self.gamma * q[obs, greedy] - q[s, a]
        e = e.at[s, a].add(1.0)
        q = q + self.alpha * delta * e
        e = jnp.where(action == greedy, e * self.gamma * self.lam, jnp.zeros_like(e))
        return self._advance(state, obs, action, {"q": q, "e": e})


@dataclasses.dataclass(frozen=True)
class HLQLambda(Baseline):
    """HLQ(lambda): Q(lambda) with learning rates from discounted visit counts."""

    sel_mode: int = 0
    init_q: float = 50.0
    lam: float = 0.5
    epsilon: float = 0.0
    gamma: float = 0.9

    name: ClassVar[str] = "hlq_lambda"

    def _validate(self):
        if self.sel_mode not in (0, 1):
            raise ValueError(f"sel_mode must be 0 (epsilon-greedy) or 1 (softmax), got {self.sel_mode!r}")
        _check_fraction("init_q", self.init_q, -math.inf, math.inf, open_low=True, open_high=True)
        # lam = 0 would divide 0 by 0 in the learning rates.
        _check_fraction("lam", self.lam, 0.0, 1.0, open_low=True)
        _check_fraction("epsilon", self.epsilon, 0.0, 1.0 if self.sel_mode == 0 else math.inf,
                        open_high=self.sel_mode == 1)
        _check_fraction("gamma", self.gamma, 0.0, 1.0, open_high=True)

    def _tables(self):
        shape, dtype = (self.num_obs, self.num_actions), _float_dtype()
        return {"q": jnp.full(shape, self.init_q, dtype), "e": jnp.zeros(shape, dtype),
                "v": jnp.ones(shape, dtype)}

    def step(self, state, obs, reward):
        obs = jnp.asarray(obs, jnp.int32)
        q, e, v = state.tables["q"], state.tables["e"], state.tables["v"]
        reward = jnp.asarray(reward, q.dtype)
        u = step_uniforms(state.key, state.t)
        if self.sel_mode == 0:
            greedy, action = _epsilon_greedy(q[obs], u, self.epsilon, self.num_actions)
        else:
            greedy = random_optimal(q[obs], u[0])
            action = _softmax_choice(q[obs], u[2], self.epsilon)
        s, a = state.obs, state.action
        delta = reward + self.gamma * q[obs, greedy] - q[s, a]
        e = e.at[s, a].add(1.0)
        v = v.at[s, a].add(1.0)
        here = ((jnp.arange(self.num_obs)[:, None] == obs)
                & (jnp.arange(self.num_actions)[None, :] == action)).astype(q.dtype)
        v_next, e_next = v[obs, action], e[obs, action]
        rate = e / (v_next - self.gamma * e_next) * (self.lam * v_next + here) / (self.lam * v + here)
        floor = V_FLOOR if v.dtype == jnp.float64 else V_FLOOR_FLOAT32
        v = jnp.where(v > floor, v * self.lam, jnp.asarray(floor, v.dtype))
        e = jnp.where(action == greedy, e * (self.gamma * self.lam), jnp.zeros_like(e))
        q = q + rate * delta
        return self._advance(state, obs, action, {"q": q, "e": e, "v": v})


BASELINES: dict[str, type[Baseline]] = {
    "random": RandomAgent,
    "freq": Freq,
    "q_lambda": QLambda,
    "hlq_lambda": HLQLambda,
}


def make_baseline(name: str, num_obs: int, num_actions: int, **overrides: Any) -> Baseline:
    """The baseline ``name`` for the given sizes, AIQ defaults unless overridden."""
    try:
        cls = BASELINES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None
    params = [f.name for f in dataclasses.fields(cls) if f.name not in ("num_obs", "num_actions")]
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        takes = ", ".join(params) if params else "no parameters"
        raise ValueError(f"baseline {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes {takes}")
    return cls(num_obs=num_obs, num_actions=num_actions, **overrides)
