"""The environment registry: names -> environments, their parameter batches and constitutions.

Every environment is a gymnax ``Environment``; every difference between instances lives
in its ``EnvParams`` pytree, so the learner vmaps one compiled step over a batch of params.
A registered :class:`EnvSpec` says how to build the environment, how to draw a batch of
``n`` params from the family's prior, and which constitutions ship with it.  Any
environment gymnax registers can be named too (``gymnax_adapter``).

A sampler returns a :class:`ParamBatch`: the params and, for each, its description length
K in bits under the family's prefix-free code, so that drawing by the sampler is drawing
with probability 2^-K.  A family with a single fixed instance (a plain gymnax task) has
K = 0: the prior puts all its mass on that one environment.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from gymnax.environments.environment import Environment

from aligned_rl.constitution import UNCONSTRAINED, Constitution

class ParamBatch(NamedTuple):
    """``n`` environment instances drawn from a family's prior."""

    params: Any  # EnvParams pytree, every leaf with a leading axis of size n
    bits: jax.Array  # float32[n]: description length K of each instance, in bits
    filtered_mass: float = 0.0  # prior mass the sampler filtered out (e.g. passive programs)


ParamSampler = Callable[[Environment, jax.Array, int], ParamBatch]


def broadcast_params(env: Environment, key: jax.Array, n: int) -> ParamBatch:
    """n identical copies of the environment's default params (K = 0 bits each)."""
    del key
    params = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), env.default_params)
    return ParamBatch(params, jnp.zeros((n,), jnp.float32))


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to make one environment family and what ships with it."""

    name: str
    make: Callable[[], Environment]
    constitutions: dict[str, Callable[[], Constitution]] = dataclasses.field(default_factory=dict)
    sample_params: ParamSampler = broadcast_params
    description: str = ""


_REGISTRY: dict[str, EnvSpec] = {}


def register(spec: EnvSpec) -> EnvSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"environment {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def spec(name: str) -> EnvSpec:
    """The spec for ``name``: a registered family, or any environment gymnax knows."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    from aligned_rl.envs.gymnax_adapter import gymnax_spec, gymnax_names

    if name in gymnax_names():
        return gymnax_spec(name)
    raise KeyError(
        f"unknown environment {name!r}. Registered: {sorted(_REGISTRY)}; "
        f"gymnax environments with discrete actions can be named too, e.g. 'Acrobot-v1' "
        f"(run `aligned-rl envs` for the list)."
    )


def sample(name: str, key: jax.Array, n: int) -> tuple[Environment, ParamBatch]:
    """The environment of family ``name`` and ``n`` instances drawn from its prior."""
    family = spec(name)
    env = family.make()
    return env, family.sample_params(env, key, n)


def make(name: str) -> tuple[Environment, Any]:
    """(environment, default params) for ``name``, as ``gymnax.make`` does."""
    env = spec(name).make()
    return env, env.default_params


def registered_families() -> list[str]:
    """Names registered with :func:`register` (families and gymnax tasks with constitutions)."""
    return sorted(_REGISTRY)


def list_envs() -> list[str]:
    from aligned_rl.envs.gymnax_adapter import gymnax_names

    return sorted(set(_REGISTRY) | set(gymnax_names()))


def constitution(env_name: str, name: str) -> Constitution:
    """The constitution ``name`` shipped with ``env_name`` (``'none'`` is always available)."""
    if name == "none":
        return UNCONSTRAINED
    shipped = spec(env_name).constitutions
    if name not in shipped:
        raise KeyError(
            f"environment {env_name!r} ships no constitution {name!r}; "
            f"available: {['none', *sorted(shipped)]}"
        )
    return shipped[name]()
