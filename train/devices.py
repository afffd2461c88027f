"""Devices and hosts: the one mesh builder, moving arrays onto it and back, memory figures.

Training and measurement split their environment batch over the ``"envs"`` axis of a
one-axis :class:`~jax.sharding.Mesh`; everything per environment is sharded, parameters,
keys and counters are replicated.  Several hosts join through ``jax.distributed``
(:func:`start_distributed`, before anything touches a device).
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aligned_rl.train.config import ConfigError

AXIS = "envs"


def device_mesh(count: int, what: str, across_processes: bool = False, num_envs: int | None = None) -> Mesh | None:
    """A mesh over the first ``count`` devices (0: all), or None for a single device.

    ``across_processes``: the devices of every process (a measurement over several hosts
    must use them all); else this process's.  ``num_envs``: refuse a batch that does not
    split evenly (the learner cannot pad).  ``what`` names the setting in messages."""
    devices = jax.devices() if across_processes else jax.local_devices()
    count = count or len(devices)
    where = "" if across_processes else " local"
    if count > len(devices):
        raise ConfigError(f"{what}={count} but only {len(devices)}{where} device(s) are visible")
    if across_processes and jax.process_count() > 1 and count != len(devices):
        raise ConfigError(f"{what}={count}: a run over {jax.process_count()} processes uses all "
                          f"{len(devices)} devices ({what}=0)")
    if count == 1:
        return None
    if num_envs is not None and num_envs % count:
        raise ConfigError(f"env.num_envs={num_envs} does not split over {count} devices; "
                          f"use a multiple of {count} or set {what}")
    return Mesh(np.array(devices[:count]), (AXIS,))


def split_over(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays whose leading axis is the environment axis."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from a value every process holds whole."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered from every process when it spans several)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def start_distributed(coordinator_address: str | None, num_processes: int, process_id: int) -> None:
    """``jax.distributed.initialize`` for a run over several processes (a no-op without a
    coordinator).  Must come before anything else touches a JAX device."""
    if not coordinator_address or jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    except RuntimeError as err:
        raise ConfigError(f"jax.distributed.initialize failed: {err} (it must run before any JAX "
                          "computation in the process)") from err


def nbytes(tree: Any) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (getrusage; Linux reports KiB)."""
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_peak_bytes() -> list[int]:
    """Each local accelerator's peak bytes in use (empty where devices do not report it)."""
    peaks = []
    for d in jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return peaks
