"""The AIQ baseline agents as vectorisable online learners.

Legg & Veness ("An Approximation of the Universal Intelligence Measure", 2011)
rate simple reinforcement learners against their sampled environments: Random,
Freq, Watkins' Q(lambda), Q_0 (Q(lambda) with lambda 0) and HLQ(lambda)
(Q(lambda) whose learning rate is set per state-action pair from discounted
visit counts).  This module rebuilds them
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

``q_0``         ``Q0(init_q, alpha, epsilon, gamma)``: ``q_lambda`` with lam
                fixed at 0 (one-step Q-learning: E holds only the last pair),
                the paper's Q_0.  It takes no ``lam``.

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

Defaults: the AIQ paper's settings
----------------------------------
AIQ's agent constructors take their parameters from the command line, in a
fixed order (only HLQ_l's epsilon and gamma have defaults, both 0).  The
defaults here are the settings of the AIQ paper (Legg & Veness 2011), from the
settings file of its code (``Conf Paper Settings.ods`` in
github.com/mathemajician/AIQ): the BF reference machine with 5 symbols, no
discounting, one row per episode length.
Parameters in AIQ's command-line order -- HLQ_l (sel_mode, init_Q, Lambda,
epsilon, gamma), Q_l and Q_0 (init_Q, Lambda, alpha, epsilon, gamma), Freq
(epsilon) -- and the published AIQ, mean +- half its 95% CI::

    length   HLQ_l (hlq_lambda)       Q_l (q_lambda)          Q_0 (q_0)             Freq (freq)
      1,000  0,0,0.95,0.04,0.7        0,0.5,0.5,0.04,0.6      0,0,0.5,0.04,0.6      0.07
             49.1 +- 0.4              44.3 +- 0.4             41.8 +- 0.4           40.2 +- 0.4
      3,000  0,0,0.99,0.04,0.6        0,0.5,0.5,0.03,0.6      0,0,0.5,0.03,0.7      0.09
             52.2 +- 0.5              48.1 +- 0.4             46.3 +- 0.4           42.6 +- 0.4
     10,000  0,0,0.99,0.02,0.7        0,0.5,0.5,0.02,0.8      0,0,0.5,0.02,0.8      0.09
             54.7 +- 0.4              51.5 +- 0.5             50.2 +- 0.4           45.2 +- 0.4
     30,000  0,0,0.995,0.01,0.8       0,0.5,0.5,0.01,0.9      0,0,0.5,0.01,0.9      0.07
             56.1 +- 0.5              53.7 +- 0.5             52.5 +- 0.5           47.3 +- 0.5
    100,000  0,0,0.995,0.005,0.9      0,0.5,0.5,0.005,0.95    0,0,0.5,0.005,0.95    0.05
             56.3 +- 0.5              54.8 +- 0.5             54.1 +- 0.5           49.1 +- 0.5

(MC-AIXI, the paper's fifth agent, scored 41 +- 1.4, 47.7 +- 0.9, 54.1 +- 1.3,
56 +- 1 and 59.6 +- 1.1; it is not built here.)  ``PAPER_SETTINGS`` holds the
table (parameters in AIQ's order, ``AIQ_PARAMETERS`` names them, and each
published figure), ``paper_setting(name, episode_length)`` the parameters of
one agent as keywords, and ``make_baseline(name, num_obs, num_actions,
episode_length)`` builds the agent with them, keywords given to it taking
precedence.  The row is the one nearest ``episode_length`` in log-space
(``paper_row``): n takes the shorter of two neighbouring rows L1 < L2 when
n * n <= L1 * L2, so 1,000 serves up to 1,732 steps, 3,000 up to 5,477,
10,000 up to 17,320, 30,000 up to 54,772 and 100,000 everything longer; every
length below 1,000 takes the 1,000 row.  The dataclasses' own defaults are the
1,000-step row; Random has no parameters.

``gamma`` is the agent's internal discount.  In AIQ a gamma of 0 means "use
the environment's discount rate" (which must then be below 1; the paper ran
undiscounted, so every preset gives gamma explicitly).  This module knows no
environment: gamma is always the value given (any value in [0, 1)), and
``parse_aiq_spec`` refuses AIQ's 0.

AIQ's agents see rewards 100 (s - m) / m for output symbol s and middle symbol
m, that is in [-100, 100]; ``BaselineAgent`` in ``train/agents.py`` pays
``r * agent_reward_scale``, 100 by default.  With init_Q 0 in every preset,
the scale changes no agent's choices (up to rounding): Q values, Freq's means
and HLQ(lambda)'s updates are linear in the rewards and its learning rates do
not depend on them.  Only softmax selection (``sel_mode=1``, whose temperature
is in reward units) or a nonzero ``init_q`` would notice the scale.

AIQ's command-line spelling of an agent, ``HLQ_l,0,0,0.95,0.04,0.7``,
``Q_l,0,0.5,0.5,0.04,0.6``, ``Q_0,0,0,0.5,0.04,0.6`` (the settings file's
name for Q_l with Lambda 0), ``Freq,0.07`` or ``Random``, is read by
``parse_aiq_spec``: all parameters in AIQ's order, as numbers (HLQ_l's
optional epsilon and gamma included, since gamma 0 cannot mean the
environment's discount here).

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

    agent = make_baseline("q_lambda", num_obs=8, num_actions=3, episode_length=1000)
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
    "AIQ_NAMES",
    "AIQ_PARAMETERS",
    "BASELINES",
    "PAPER_SETTINGS",
    "AgentState",
    "Baseline",
    "Freq",
    "HLQLambda",
    "PaperEntry",
    "Q0",
    "QLambda",
    "RandomAgent",
    "make_baseline",
    "paper_row",
    "paper_setting",
    "parse_aiq_spec",
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

    epsilon: float = 0.07

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

    init_q: float = 0.0
    lam: float = 0.5
    alpha: float = 0.5
    epsilon: float = 0.04
    gamma: float = 0.6

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
class Q0(QLambda):
    """Q(lambda) with lambda fixed at 0 (one-step Q-learning), the AIQ paper's Q_0."""

    lam: float = dataclasses.field(default=0.0, init=False)

    name: ClassVar[str] = "q_0"


@dataclasses.dataclass(frozen=True)
class HLQLambda(Baseline):
    """HLQ(lambda): Q(lambda) with learning rates from discounted visit counts."""

    sel_mode: int = 0
    init_q: float = 0.0
    lam: float = 0.95
    epsilon: float = 0.04
    gamma: float = 0.7

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
    "q_0": Q0,
    "hlq_lambda": HLQLambda,
}

# AIQ's names (command line, settings file) of the agents built here.
AIQ_NAMES: dict[str, str] = {"HLQ_l": "hlq_lambda", "Q_l": "q_lambda", "Q_0": "q_0", "Freq": "freq",
                             "Random": "random"}
# Each agent's parameters in AIQ's command-line order, under this module's names (AIQ's own
# names: init_Q for init_q, Lambda for lam).  Q_0's Lambda is always 0.
AIQ_PARAMETERS: dict[str, tuple[str, ...]] = {
    "hlq_lambda": ("sel_mode", "init_q", "lam", "epsilon", "gamma"),
    "q_lambda": ("init_q", "lam", "alpha", "epsilon", "gamma"),
    "q_0": ("init_q", "lam", "alpha", "epsilon", "gamma"),
    "freq": ("epsilon",),
    "random": (),
}
_AIQ_SPELLING = {"init_q": "init_Q", "lam": "Lambda"}


class PaperEntry(NamedTuple):
    """One agent at one episode length in the AIQ paper's settings file."""

    params: tuple[float, ...]  # in AIQ's command-line order (AIQ_PARAMETERS)
    aiq: float                 # the published AIQ, mean
    half_ci: float             # half the width of its 95% confidence interval


# The AIQ paper's settings (Legg & Veness 2011; "Conf Paper Settings.ods" in
# github.com/mathemajician/AIQ): BF with 5 symbols, discount 1.0, keyed by episode length.
PAPER_SETTINGS: dict[int, dict[str, PaperEntry]] = {
    1_000: {
        "hlq_lambda": PaperEntry((0, 0.0, 0.95, 0.04, 0.7), 49.1, 0.4),
        "q_lambda": PaperEntry((0.0, 0.5, 0.5, 0.04, 0.6), 44.3, 0.4),
        "q_0": PaperEntry((0.0, 0.0, 0.5, 0.04, 0.6), 41.8, 0.4),
        "freq": PaperEntry((0.07,), 40.2, 0.4),
    },
    3_000: {
        "hlq_lambda": PaperEntry((0, 0.0, 0.99, 0.04, 0.6), 52.2, 0.5),
        "q_lambda": PaperEntry((0.0, 0.5, 0.5, 0.03, 0.6), 48.1, 0.4),
        "q_0": PaperEntry((0.0, 0.0, 0.5, 0.03, 0.7), 46.3, 0.4),
        "freq": PaperEntry((0.09,), 42.6, 0.4),
    },
    10_000: {
        "hlq_lambda": PaperEntry((0, 0.0, 0.99, 0.02, 0.7), 54.7, 0.4),
        "q_lambda": PaperEntry((0.0, 0.5, 0.5, 0.02, 0.8), 51.5, 0.5),
        "q_0": PaperEntry((0.0, 0.0, 0.5, 0.02, 0.8), 50.2, 0.4),
        "freq": PaperEntry((0.09,), 45.2, 0.4),
    },
    30_000: {
        "hlq_lambda": PaperEntry((0, 0.0, 0.995, 0.01, 0.8), 56.1, 0.5),
        "q_lambda": PaperEntry((0.0, 0.5, 0.5, 0.01, 0.9), 53.7, 0.5),
        "q_0": PaperEntry((0.0, 0.0, 0.5, 0.01, 0.9), 52.5, 0.5),
        "freq": PaperEntry((0.07,), 47.3, 0.5),
    },
    100_000: {
        "hlq_lambda": PaperEntry((0, 0.0, 0.995, 0.005, 0.9), 56.3, 0.5),
        "q_lambda": PaperEntry((0.0, 0.5, 0.5, 0.005, 0.95), 54.8, 0.5),
        "q_0": PaperEntry((0.0, 0.0, 0.5, 0.005, 0.95), 54.1, 0.5),
        "freq": PaperEntry((0.05,), 49.1, 0.5),
    },
}


def _baseline_class(name: str) -> type[Baseline]:
    try:
        return BASELINES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None


def paper_row(episode_length: int) -> int:
    """The episode length of the settings-file row nearest ``episode_length`` in log-space.

    Between neighbouring rows L1 < L2, n takes L1 when n * n <= L1 * L2 (integers, so the
    rule is exact); lengths below the first row take the first, beyond the last the last.
    """
    if isinstance(episode_length, bool):
        raise TypeError(f"episode_length must be an integer, got {episode_length!r}")
    try:
        n = operator.index(episode_length)
    except TypeError:
        raise TypeError(f"episode_length must be an integer, got {episode_length!r}") from None
    if n < 1:
        raise ValueError(f"episode_length must be at least 1, got {n}")
    rows = sorted(PAPER_SETTINGS)
    for shorter, longer in zip(rows, rows[1:]):
        if n * n <= shorter * longer:
            return shorter
    return rows[-1]


def paper_setting(name: str, episode_length: int) -> dict[str, float]:
    """The AIQ paper's parameters of baseline ``name`` for the row nearest ``episode_length``
    (``paper_row``), as keywords of its class (Random: none; Q_0: no ``lam``)."""
    cls = _baseline_class(name)
    row = paper_row(episode_length)
    if name not in PAPER_SETTINGS[row]:
        return {}
    params = dict(zip(AIQ_PARAMETERS[name], PAPER_SETTINGS[row][name].params))
    return {k: v for k, v in params.items() if k in _parameters(cls)}


def _parameters(cls: type[Baseline]) -> list[str]:
    """The hyperparameters ``cls`` takes, in field order."""
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("num_obs", "num_actions")]


def make_baseline(name: str, num_obs: int, num_actions: int, episode_length: int = 1000,
                  **overrides: Any) -> Baseline:
    """The baseline ``name`` for the given sizes, with the AIQ paper's parameters for the row
    nearest ``episode_length`` (the steps it will act in each environment) and ``overrides``
    on top."""
    cls = _baseline_class(name)
    params = _parameters(cls)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        takes = ", ".join(params) if params else "no parameters"
        hint = "; q_0 is q_lambda with lam 0: use q_lambda for another lam" if cls is Q0 and "lam" in unknown else ""
        raise ValueError(f"baseline {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes {takes}{hint}")
    return cls(num_obs=num_obs, num_actions=num_actions, **{**paper_setting(name, episode_length), **overrides})


def parse_aiq_spec(spec: str) -> tuple[str, dict[str, float]]:
    """(baseline name, parameters) of an agent in AIQ's command-line spelling.

    ``HLQ_l,0,0,0.95,0.04,0.7`` -> ``("hlq_lambda", {"sel_mode": 0, "init_q": 0.0, "lam": 0.95,
    "epsilon": 0.04, "gamma": 0.7})``.  The names are AIQ's (``AIQ_NAMES``: HLQ_l, Q_l, Q_0,
    Freq, Random) and every parameter is given, in AIQ's order (``AIQ_PARAMETERS``), as a
    number.  Q_0 is Q_l with Lambda 0: its Lambda must be 0 and is dropped.  A gamma of 0,
    AIQ's "the environment's discount rate", is refused: this module knows no environment.
    """
    if not isinstance(spec, str):
        raise TypeError(f"an AIQ agent spec is a string, got {spec!r}")
    aiq_name, *values = [part.strip() for part in spec.split(",")]
    if aiq_name not in AIQ_NAMES:
        ours = f"; {aiq_name} is this code's name: give its parameters by name" if aiq_name in BASELINES else ""
        raise ValueError(f"unknown AIQ agent {aiq_name!r} in {spec!r}; known: {', '.join(AIQ_NAMES)} "
                         f"(AIQ's MC_AIXI and Manual are not built here){ours}")
    name = AIQ_NAMES[aiq_name]
    order = AIQ_PARAMETERS[name]
    spelled = ", ".join(_AIQ_SPELLING.get(p, p) for p in order)
    if len(values) != len(order):
        takes = f"{len(order)} parameter{'s' * (len(order) != 1)} in AIQ's order ({spelled})" if order \
            else "no parameters"
        raise ValueError(f"{aiq_name} takes {takes}, got {len(values)} in {spec!r}")
    params: dict[str, float] = {}
    for param, text in zip(order, values):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{aiq_name}: {_AIQ_SPELLING.get(param, param)} must be a number, got {text!r} "
                             f"in {spec!r}; AIQ's order: {spelled}") from None
        params[param] = int(value) if param == "sel_mode" and value.is_integer() else value
    if params.get("gamma") == 0.0:
        raise ValueError(f"{aiq_name}: gamma 0 means the environment's discount rate in AIQ, and this code "
                         f"gives the agent its own: write it out (in (0, 1)) in {spec!r}")
    if name == "q_0":
        if params.pop("lam") != 0.0:
            raise ValueError(f"Q_0 is Q_l with Lambda 0, got Lambda {values[1]} in {spec!r}; for another "
                             "Lambda write Q_l")
    return name, params
