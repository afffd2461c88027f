"""The environment registry: names -> environments, their parameter batches and constitutions.

A family registers its :class:`EnvSpec` (``family.py``: how to build the environment, how to
draw a :class:`ParamBatch` of ``n`` params with their description lengths K in bits, which
constitutions ship with it).  Any environment gymnax registers can be named too
(``gymnax_adapter``).
"""

from __future__ import annotations

from typing import Any

import jax
from gymnax.environments.environment import Environment

from aligned_rl.constitution import UNCONSTRAINED, Constitution
from aligned_rl.envs.family import EnvSpec, ParamBatch, ParamSampler, broadcast_params
from aligned_rl.envs.gymnax_adapter import gymnax_names, gymnax_spec

__all__ = [
    "EnvSpec", "ParamBatch", "ParamSampler", "broadcast_params", "constitution", "list_envs", "make",
    "register", "registered_families", "sample", "spec",
]

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
