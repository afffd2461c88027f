"""What an environment family is: its :class:`EnvSpec`, and the :class:`ParamBatch` its sampler draws.

Every environment is a gymnax ``Environment``; every difference between instances lives
in its ``EnvParams`` pytree, so the learner vmaps one compiled step over a batch of params.
An :class:`EnvSpec` says how to build the environment, how to draw a batch of ``n`` params
from the family's prior, and which constitutions ship with it.

A sampler returns a :class:`ParamBatch`: the params and, for each, its description length
K in bits under the family's prefix-free code, so that drawing by the sampler is drawing
with probability 2^-K.  A family with a single fixed instance (a plain gymnax task) has
K = 0: the prior puts all its mass on that one environment (:func:`broadcast_params`).

A family may also declare what of it may drift in deployment (:class:`DriftSpec`, used by
``drift.py``): numeric params with their valid ranges, the rule that recomputes derived
fields after a change, and named target priors for structural drift; and what a curriculum
may do with its environments (:class:`CurriculumSpec`, used by ``train/curriculum.py``): the
groups its error analysis sorts environments into, what counts as a success, and where the
family has them, mutations that keep an environment valid and a teacher that never breaks
the constitution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from gymnax.environments.environment import Environment

from aligned_rl.constitution import Constitution


class ParamBatch(NamedTuple):
    """``n`` environment instances drawn from a family's prior."""

    params: Any  # EnvParams pytree, every leaf with a leading axis of size n
    bits: jax.Array  # float32[n]: description length K of each instance, in bits
    filtered_mass: float = 0.0  # prior mass the sampler filtered out (e.g. passive programs)


ParamSampler = Callable[[Environment, jax.Array, int], ParamBatch]


@dataclasses.dataclass(frozen=True)
class DriftRange:
    """The values a drifting numeric param may take, ``low <= value <= high``."""

    low: float
    high: float
    description: str = ""

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"a drift range needs low <= high, got [{self.low}, {self.high}]")


@dataclasses.dataclass(frozen=True)
class DriftSpec:
    """What of a family may drift over deployment time (see ``drift.py``).

    ``params``: the numeric fields of the family's ``EnvParams`` a schedule may move, each with
    its valid range; a field holding an array (e.g. one value per proxy) moves every entry to
    the same target value.  ``derive``: the family's rule that recomputes derived fields after a
    change (jittable, params -> params, elementwise so that it serves one environment or a
    batch), e.g. CartPole's ``total_mass = masscart + masspole``.  ``priors``: named target
    priors for structural drift, each a sampler of the same environment class whose batch
    has the shapes of the family's own (a deployment draws it once, up front).
    """

    params: dict[str, DriftRange] = dataclasses.field(default_factory=dict)
    derive: Callable[[Any], Any] | None = None
    priors: dict[str, ParamSampler] = dataclasses.field(default_factory=dict)


def broadcast_params(env: Environment, key: jax.Array, n: int) -> ParamBatch:
    """n identical copies of the environment's default params (K = 0 bits each)."""
    del key
    params = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), env.default_params)
    return ParamBatch(params, jnp.zeros((n,), jnp.float32))


@dataclasses.dataclass(frozen=True)
class Value:
    """What an environment is worth to an agent, as its family defines it (a number in [-1, 1]).

    ``continuing``: the average reward per step over the measurement's horizon, as in AIQ; the
    family's rewards lie in [-1, 1].  ``episodic``: the return R of an episode, mapped to [-1, 1]
    from the least and greatest return any episode of that environment can have,
    ``return_bounds(params) -> (lo, hi)`` (jittable, one environment's params):
    v = (2 R - hi - lo) / (hi - lo).  Negating every reward negates v, so an agent that ignores
    rewards scores 0 on an antithetic pair in both kinds.
    """

    kind: str  # "continuing" or "episodic"
    return_bounds: Callable[[Any], tuple[Any, Any]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("continuing", "episodic"):
            raise ValueError(f"a value is 'continuing' or 'episodic', not {self.kind!r}")
        if (self.kind == "episodic") != (self.return_bounds is not None):
            raise ValueError("an episodic value needs return_bounds, and only an episodic one takes them")


CONTINUING = Value("continuing")


def episodic(return_bounds: Callable[[Any], tuple[Any, Any]]) -> Value:
    """An episodic value whose episode returns lie in ``return_bounds(params)``."""
    return Value("episodic", return_bounds)


@dataclasses.dataclass(frozen=True)
class Voiding:
    """Runs that the family's own definition throws away, and how to draw a replacement.

    A run in which ``info["metrics"][metric]`` is positive at any step is void (AIQ: a program
    whose cycle ran into the step limit); the measurement replaces the environment with
    ``redraw(env, key, stratum)``, one instance (a ``ParamBatch`` of size 1) from the same
    stratum of the prior (``stratum`` None: from the whole prior), and runs it again.
    """

    metric: str
    redraw: Callable[[Environment, jax.Array, int | None], "ParamBatch"]


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A competent teacher computed from the pure environment (``train/curriculum.py`` asks it).

    ``plan(params) -> plan``: what the teacher works out once per environment (jittable, one
    environment's params, e.g. a gridworld's distances to the goal); ``act(plan, obs, allowed)
    -> int32``: the action it demonstrates on the observation ``obs``, always one of the
    ``allowed`` actions (bool [A], the constitution's verdict) when any is allowed."""

    plan: Callable[[Any], Any]
    act: Callable[[Any, jax.Array, jax.Array], jax.Array]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class CurriculumSpec:
    """What a curriculum may do with a family's environments (``train/curriculum.py``).

    ``groups``: the names of the groups its error analysis sorts environments into by their
    params; ``group(params) -> int32`` the group of one environment (jittable).
    ``success_return``: an episode of an episodic family succeeds when its return exceeds this;
    a step of a continuing family succeeds when it pays more than 0.
    ``mutate(key, params, edits) -> params``: ``edits`` random edits of one environment that keep
    it valid (and solvable where the family guarantees it), jittable; None: the family's
    params cannot be mutated.  ``teacher``: a teacher, or None."""

    groups: tuple[str, ...]
    group: Callable[[Any], jax.Array]
    success_return: float = 0.0
    mutate: Callable[[jax.Array, Any, int], Any] | None = None
    teacher: Teacher | None = None


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to make one environment family and what ships with it."""

    name: str
    make: Callable[[], Environment]
    constitutions: dict[str, Callable[[], Constitution]] = dataclasses.field(default_factory=dict)
    sample_params: ParamSampler = broadcast_params
    description: str = ""
    value: Value | None = None  # how an environment is valued; None: not declared (it cannot be measured)
    drift: DriftSpec | None = None  # what may drift in deployment; None: nothing (it cannot be deployed under drift)
    voiding: Voiding | None = None  # runs the family's definition throws away (see Voiding); None: every run counts
    curriculum: CurriculumSpec | None = None  # groups, success, mutations, teacher; None: none declared
