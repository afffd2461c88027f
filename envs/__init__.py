"""Environments: a registry of gymnax-API environment families and their constitutions."""

from aligned_rl.envs import cartpole  # noqa: F401  (registers CartPole-v1 and its constitution)
from aligned_rl.envs.registry import (
    EnvSpec,
    ParamBatch,
    broadcast_params,
    constitution,
    list_envs,
    make,
    register,
    registered_families,
    sample,
    spec,
)

__all__ = [
    "EnvSpec", "ParamBatch", "broadcast_params", "constitution", "list_envs", "make", "register",
    "registered_families", "sample", "spec",
]
