"""Checkpoints of the whole TrainState with orbax-checkpoint.

One ``CheckpointManager`` per run directory (``<run>/checkpoints``) keeps the latest two
saves and the best one by mean episode return.  Saves are atomic (orbax writes to a
temporary directory and renames it), so a run killed mid-save resumes from the last
complete checkpoint.  Each save carries metadata: the config, the constitution's
fingerprint, package versions and the host-side counters a resumed run needs.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import jax
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from aligned_rl.train.config import ConfigError

PACKAGES = ("aligned-rl", "jax", "jaxlib", "flax", "optax", "chex", "gymnax", "orbax-checkpoint")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def manager(run_dir: str | Path, read_only: bool = False) -> ocp.CheckpointManager:
    if read_only:  # orbax warns that a read-only manager will not save; that is the point
        absl_logging.set_verbosity(absl_logging.ERROR)
    policy = checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=2),
            checkpoint_managers.BestN(get_metric_fn=lambda m: m["episode_return"], reverse=False, n=1),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        Path(run_dir).absolute() / "checkpoints", options=options, item_names=("state", "meta")
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict, episode_return: float) -> None:
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics={"episode_return": float(episode_return)},
    )
    mngr.wait_until_finished()


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
    return mngr.latest_step()


def best_step(mngr: ocp.CheckpointManager) -> int | None:
    """The kept step whose save recorded the highest mean episode return."""
    scored = []
    for step in mngr.all_steps():
        value = restore_meta(mngr, step).get("episode_return")
        scored.append((float("-inf") if value is None else value, step))
    return max(scored)[1] if scored else None


def find_step(mngr: ocp.CheckpointManager, which: str = "latest") -> int:
    """The step of the ``which`` ('latest' or 'best') checkpoint; FileNotFoundError if there is none."""
    step = latest_step(mngr) if which == "latest" else best_step(mngr)
    if step is None:
        raise FileNotFoundError(f"{Path(mngr.directory).parent} has no checkpoint")
    return int(step)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _incompatible(mngr: ocp.CheckpointManager, step: int, what: str, err: Exception) -> ConfigError:
    reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return ConfigError(
        f"checkpoint {step} in {mngr.directory} does not hold the {what} this version of aligned-rl builds "
        f"from the run's config ({reason}). It was written by an incompatible version: train the run again, "
        "or restore it with the version named in its metadata."
    )


def restore_state(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """Restore the TrainState saved at ``step`` with the structure, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except (ValueError, KeyError, TypeError) as err:
        raise _incompatible(mngr, step, "training state", err) from err
    return restored["state"]


def restore_params(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """Only the ``params`` field of the TrainState saved at ``step`` (shapes and dtypes of ``like``):
    a policy restored without building the rest of its training state."""
    abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
    path = Path(mngr.directory) / str(step) / "state"
    try:
        restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        raise _incompatible(mngr, step, "policy parameters", err) from err
    return jax.tree.map(jax.numpy.asarray, restored["params"])
