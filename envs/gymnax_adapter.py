"""Any gymnax environment with a discrete action space, by its gymnax name.

gymnax environments already follow the interface the learner needs (pure ``step_env`` /
``reset_env``, explicit ``EnvParams``), so the adapter only checks the action space
and wraps the name in an :class:`EnvSpec`.  Constitutions for a gymnax task are
registered with a spec of the same name (see ``cartpole.py``).
"""

from __future__ import annotations

import functools

import gymnax
from gymnax.environments import spaces
from gymnax.environments.environment import Environment

from aligned_rl.envs.family import EnvSpec


@functools.lru_cache(maxsize=None)
def gymnax_names() -> tuple[str, ...]:
    return tuple(gymnax.registered_envs)


def make_gymnax(name: str) -> Environment:
    env, params = gymnax.make(name)
    space = env.action_space(params)
    if not isinstance(space, spaces.Discrete):
        raise ValueError(
            f"gymnax environment {name!r} has a {type(space).__name__} action space; "
            "constitutions and exact divergences need a discrete action set."
        )
    return env


def gymnax_spec(name: str, **fields) -> EnvSpec:
    return EnvSpec(name=name, make=functools.partial(make_gymnax, name), **fields)
