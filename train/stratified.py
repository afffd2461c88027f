"""Two-phase stratified sampling with a pilot and Neyman allocation, for ``measure``
(``sampling=stratified``; families whose params carry a ``stratum``, e.g. BF-programs).

1. Phase 1: a pool of M = ceil(``pool_factor`` x ``num_envs``) environments is drawn from the
   sampler; the stratum masses are estimated by the pool's frequencies, w_h = m_h / M.
   Strata with fewer than 2 pool members (or more strata than the pilot can give 2 runs
   each) are collapsed, two smallest at a time (``intelligence.collapse_strata``).
2. Pilot: max(2 H, round(``pilot_fraction`` x ``num_envs``)) environments, allocated in
   proportion to w_h with at least 2 per stratum, drawn at random without replacement from
   the pool's members of each stratum, are run; their values give s_h.
3. Rest: the Neyman allocation n_h ~ w_h s_h of the whole budget ``num_envs`` (capped at
   m_h) fixes how many each stratum still lacks; the rest of the budget is spread in
   proportion to those shortfalls and run.
4. Estimate: sum_h w_h mean_h with Var = sum_h w_h^2 s_h^2 / n_h + (1/M) sum_h w_h (mean_h -
   mean)^2, the variance of double sampling for stratification (Cochran 1977, Section 12.2,
   infinite population; see ``aligned_rl.intelligence``).  The allocation is made for Upsilon
   (the first estimate); every other estimate uses the same units.

``num_envs`` counts the environments run, so simple and stratified runs of the same
``num_envs`` cost the same to run; drawing the pool is extra (for programs, AIQ's filter
runs every drawn program, about as long as a 1000-step run per accepted program).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from aligned_rl.intelligence import (
    Estimate,
    adaptive_stratified_sample,
    collapse_strata,
    estimation_units,
    two_phase_stratified_estimate,
)
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_runner import EnvRunner


def measure_stratified(config: MeasureConfig, runner: EnvRunner, batch: Any, progress,
                       per_env_values: Callable[[dict, MeasureConfig], dict],
                       estimated: dict[str, str]) -> tuple[dict, dict[str, Estimate], dict]:
    """(per-environment values, estimates, the report's ``stratified`` section)."""
    n, twins = config.num_envs, runner.twins
    allocated_for, primary = next(iter(estimated.items()))  # Neyman allocation for the first estimate
    strata = np.asarray(batch.params.stratum).reshape(-1)
    pool = strata.size
    pilot = max(2, int(round(config.pilot_fraction * n)))
    groups, members = collapse_strata(strata, pilot)
    rng = np.random.default_rng([config.seed, 0x5EED])
    runs: list[dict[str, np.ndarray]] = []

    def evaluate(indices: np.ndarray) -> np.ndarray:
        phase = len(runs)
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 1000 + phase)
        sums = runner.run_buckets(indices, key, config.buckets, progress,
                                  f" (phase 2, {'pilot' if phase == 0 else 'rest'})")
        runs.append(sums)
        return estimation_units(per_env_values(sums, config)[primary], len(indices), config.antithetic)

    sample = adaptive_stratified_sample(groups, n, config.pilot_fraction, evaluate, rng)
    sums = {k: np.concatenate([r[k] for r in runs], axis=1) for k in runs[0]}  # [twins, n] in run order
    per_env = per_env_values(sums, config)
    estimates, tables = {}, {}
    for name, key in estimated.items():
        e, rows = two_phase_stratified_estimate(estimation_units(per_env[key], n, config.antithetic), sample.groups,
                                                sample.pool_counts, batch.filtered_mass)
        for row in rows:
            row["strata"] = members[row.pop("stratum")]
        estimates[name], tables[name] = e, rows
    per_env.update(stratum=np.tile(strata[sample.indices], twins), group=np.tile(sample.groups, twins),
                   phase=np.tile(sample.phase, twins), pool_index=np.tile(sample.indices, twins))
    section = {
        "pool_size": int(pool),
        "pilot_size": int(np.sum(sample.pilot_counts)),
        "strata": [{"strata": members[h], "pool_count": int(sample.pool_counts[h]),
                    "w": float(sample.pool_counts[h] / pool), "pilot_n": int(sample.pilot_counts[h]),
                    "pilot_sd": float(sample.pilot_std[h]), "n": int(sample.counts[h])}
                   for h in range(len(members))],
        "by_estimate": tables,
        "variance": "sum_h w_h^2 s_h^2 / n_h + (1/M) sum_h w_h (mean_h - mean)^2, M = pool_size "
                    "(double sampling for stratification, Cochran 1977 Section 12.2)",
        "allocated_for": allocated_for,
    }
    return per_env, estimates, {"stratified": section}
