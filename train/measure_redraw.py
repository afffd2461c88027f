"""Void runs, replaced as the family's definition says (AIQ: an overtime program is thrown away).

A family may declare a :class:`~aligned_rl.envs.family.Voiding`: a run in which a metric
of the environment is positive at some step does not count (BF-programs: a cycle ran into
the step limit, which AIQ's estimators treat as a failed run and replace with another
program).  :class:`RedrawingRunner` wraps the measurement's runner: after a batch has run,
every environment whose run (or its antithetic twin's) was void gets a replacement drawn by
the family, from the same stratum with ``sampling=stratified`` (as AIQ's stratified
estimator does) or from the whole prior with ``sampling=simple`` (as AIQ's simple Monte
Carlo estimator does), and is run again, until no run is void.

A replacement is a function of the slot and of how many times that slot was redrawn
(key ``fold_in(fold_in(seed key, slot), count)``), so two agents measured on the same
environments that both void a slot get the same replacement; ``redrawn`` (per
environment) tells a paired comparison which slots still hold the same environment for
both (:func:`common_units`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from aligned_rl.envs.family import Voiding

#: rounds of redrawing after which a measurement gives up (a family whose replacements keep
#: voiding their runs: e.g. an agent that drives every program into the step limit)
MAX_ROUNDS = 50


class RedrawingRunner:
    """A runner (``EnvRunner`` or ``AsyncRunner``) whose void runs are replaced and run again.

    ``prepare(params)`` turns freshly drawn params into what the runner runs (e.g. the
    measurement's episode length).  ``bits`` and ``redrawn`` (per slot of the batch) follow
    the replacements."""

    def __init__(self, runner: Any, voiding: Voiding, env: Any, params: Any, bits: np.ndarray, seed: int,
                 same_stratum: bool, prepare: Callable[[Any], Any]):
        self.runner, self.voiding, self.env, self.prepare = runner, voiding, env, prepare
        self.strata = np.asarray(params.stratum).reshape(-1) if same_stratum else None
        self.key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x7E5EED)
        self.bits = np.asarray(bits, np.float64).copy()
        self.redrawn = np.zeros(self.bits.shape, np.int64)
        self.rounds = 0

    def __getattr__(self, name: str) -> Any:  # twins, steps, seconds, memory_report, ...
        return getattr(self.runner, name)

    def run_buckets(self, indices: np.ndarray, key: jax.Array, buckets: int, progress, label: str) -> dict:
        sums = self.runner.run_buckets(indices, key, buckets, progress, label)
        for round_ in range(MAX_ROUNDS + 1):
            void = np.nonzero((sums.pop("voided") > 0).any(axis=0))[0]
            if void.size == 0:
                return sums
            if round_ == MAX_ROUNDS:
                break
            slots = indices[void]
            self._replace(slots)
            self.rounds = max(self.rounds, round_ + 1)
            again = self.runner.run_buckets(slots, jax.random.fold_in(key, 1 + round_), 1, progress,
                                            f"{label} (redrawn, round {round_ + 1})")
            for k, v in again.items():
                sums.setdefault(k, np.zeros_like(v, shape=(v.shape[0], len(indices))))[:, void] = v
        raise RuntimeError(
            f"{void.size} environments still had void runs ({self.voiding.metric}) after {MAX_ROUNDS} rounds of "
            "redrawing: the agent voids nearly every environment it meets; measure it with a family that does "
            "not void runs, or look at why its runs fail")

    def _replace(self, slots: np.ndarray) -> None:
        drawn = []
        for slot in slots:
            self.redrawn[slot] += 1
            key = jax.random.fold_in(jax.random.fold_in(self.key, int(slot)), int(self.redrawn[slot]))
            stratum = None if self.strata is None else int(self.strata[slot])
            drawn.append(self.voiding.redraw(self.env, key, stratum))
            self.bits[slot] = float(np.asarray(drawn[-1].bits)[0])
        new = self.prepare(jax.tree.map(lambda *xs: jnp.concatenate(xs), *[b.params for b in drawn]))
        at = jnp.asarray(slots)
        self.runner.all_params = jax.tree.map(lambda x, y: x.at[at].set(y.astype(x.dtype)), self.runner.all_params, new)

    def report(self) -> dict:
        return {"metric": self.voiding.metric,
                "replaced": int(self.redrawn.sum()),
                "environments": int(np.count_nonzero(self.redrawn)),
                "rounds": self.rounds,
                "rule": ("a run with " + self.voiding.metric + " at any step (or its twin's) does not count: the "
                         "environment is replaced by a draw from " +
                         ("its stratum" if self.strata is not None else "the prior") + " and run again")}


def common_units(per_envs: list[dict], n: int) -> np.ndarray | None:
    """bool[n]: the environments (estimation units: an environment with its antithetic twin)
    that every one of ``per_envs`` (measurements on the same environments) ran unchanged, i.e.
    redrew equally often, so that they saw the same environment there: the units a paired
    comparison may use.  None when no measurement redrew anything."""
    counts = [p["redrawn"] for p in per_envs if "redrawn" in p]
    if not counts:
        return None
    if len(counts) != len(per_envs):  # a run without redraws: its environments are the originals
        counts.append(np.zeros_like(counts[0]))
    units = [np.asarray(c).reshape(-1, n).max(axis=0) for c in counts]
    return np.all([u == units[0] for u in units], axis=0)
