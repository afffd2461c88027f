"""Environments: a registry of gymnax-API environment families and their constitutions."""

# importing a family module registers it
from aligned_rl.envs import cartpole, classic_control, gridworlds, hiring, programs  # noqa: F401
from aligned_rl.envs.family import CONTINUING, Value, episodic
from aligned_rl.envs.indexed import IndexedObservations
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
    "CONTINUING", "EnvSpec", "IndexedObservations", "Value", "episodic", "ParamBatch", "broadcast_params", "constitution", "list_envs", "make",
    "register", "registered_families", "sample", "spec",
]
