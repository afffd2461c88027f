"""Evaluate a saved policy: one episode in each of ``episodes`` environments, vmapped.

Returns the mean episode return with a 95% confidence interval (normal approximation over
episodes, which are independent), and the alignment measurements of the same steps:
forbidden-action rate, mean D(sigma, pi), alignment reward, forbidden-state visits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aligned_rl.constitution import violates
from aligned_rl.divergence import alignment_reward, divergence
from aligned_rl.train.loop import build, load_run, load_run_config
from aligned_rl.train.ppo import AlignedPPO, masked_logits


def _max_steps(env_params: Any, fallback: int) -> int:
    limit = getattr(env_params, "max_steps_in_episode", None)
    return int(np.max(np.asarray(limit))) if limit is not None else fallback


def rollout_episodes(
    algo: AlignedPPO, params: Any, env_params: Any, cparams: Any, key: jax.Array, max_steps: int, greedy: bool
) -> dict[str, jax.Array]:
    """Per-environment sums over the first episode of each environment in ``env_params``."""
    n = jax.tree.leaves(env_params)[0].shape[0]
    k_reset, k_run = jax.random.split(key)
    obs, env_state = jax.vmap(algo.env.reset)(jax.random.split(k_reset, n), env_params)
    zeros = jnp.zeros((n,), jnp.float32)
    names = ["return", "length", "violations", "divergence", "alignment_reward", "forbidden_states",
             "all_forbidden", "counterfactual_divergence"]
    # environments that report info["metrics"] get those summed too (shape of info known at trace time)
    _, _, _, _, _, probe = jax.eval_shape(
        jax.vmap(algo.env.step), jax.random.split(k_run, n), env_state, jnp.zeros((n,), jnp.int32), env_params
    )
    names += [f"env/{k}" for k in probe.get("metrics", {})]
    totals = {k: zeros for k in names}
    carry = (obs, env_state, jnp.ones((n,), bool), totals, algo.initial_memory(n), k_run)

    def step(carry, _):
        obs, env_state, active, totals, (memory, prev_action, prev_reward, start), rng = carry
        rng, k_act, k_step = jax.random.split(rng, 3)
        step_keys = jax.random.split(k_step, n)
        verdict = algo.judge_batch(cparams, env_params, step_keys, obs, env_state)
        memory, raw = algo.act_logits(params, memory, obs, prev_action, prev_reward, start)
        logits = masked_logits(raw, verdict.allowed) if algo.config.alignment.shield else raw
        action = jnp.argmax(logits, axis=-1) if greedy else jax.random.categorical(k_act, logits)
        d = divergence(algo.divergence_name, raw, verdict.sigma, verdict.allowed)
        violated = violates(verdict, action)
        d_cf = algo.counterfactual(params, cparams, obs, raw)
        obs, env_state, reward, terminated, truncated, info = jax.vmap(algo.env.step)(
            step_keys, env_state, action, env_params
        )
        w = active.astype(jnp.float32)
        increments = {
            "return": reward, "length": jnp.ones_like(w), "violations": violated, "divergence": d,
            "alignment_reward": alignment_reward(d), "forbidden_states": verdict.in_forbidden_state,
            "all_forbidden": verdict.all_forbidden, "counterfactual_divergence": d_cf,
            **{f"env/{k}": v for k, v in info.get("metrics", {}).items()},
        }
        totals = {k: totals[k] + w * increments[k].astype(jnp.float32) for k in totals}
        active = active & ~(terminated | truncated)
        recurrent_inputs = algo.initial_memory(n)
        if algo.recurrent:
            recurrent_inputs = (memory, action, reward.astype(jnp.float32), jnp.zeros_like(active))
        return (obs, env_state, active, totals, recurrent_inputs, rng), None

    (_, _, active, totals, _, _), _ = jax.lax.scan(step, carry, None, length=max_steps)
    totals["finished"] = (~active).astype(jnp.float32)
    return totals


def mean_ci95(values: np.ndarray) -> dict[str, float]:
    n = len(values)
    mean = float(np.mean(values))
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def evaluate(run_dir: str | Path, episodes: int = 256, greedy: bool = False, seed: int = 12345,
             which: str = "latest", max_steps: int = 1000) -> dict[str, Any]:
    """Evaluate the ``which`` ('latest' or 'best') checkpoint of ``run_dir``."""
    _, state, step = load_run(run_dir, which)
    # the evaluation's own batch: one environment per episode, drawn as the run's config says
    setup = build(load_run_config(run_dir, ["run.devices=1", f"env.num_envs={episodes}"]))
    key = jax.random.PRNGKey(seed)
    env_params = setup.env_params
    steps = _max_steps(env_params, max_steps)
    fn = jax.jit(rollout_episodes, static_argnums=(0, 5, 6))
    totals = jax.tree.map(np.asarray, fn(setup.algo, state.params, env_params, setup.cparams, key, steps, greedy))
    length = totals["length"]
    total_steps = float(length.sum())
    return {
        "run_dir": str(run_dir),
        "checkpoint_update": int(step),
        "episodes": episodes,
        "greedy": greedy,
        "seed": seed,
        "episode_return": mean_ci95(totals["return"]),
        "episode_length": mean_ci95(length),
        "finished_fraction": float(totals["finished"].mean()),
        "forbidden_rate": float(totals["violations"].sum() / total_steps),
        "divergence": float(totals["divergence"].sum() / total_steps),
        "divergence_name": setup.algo.divergence_name,
        "alignment_reward": float(totals["alignment_reward"].sum() / total_steps),
        "forbidden_state_rate": float(totals["forbidden_states"].sum() / total_steps),
        "all_forbidden_rate": float(totals["all_forbidden"].sum() / total_steps),
        "counterfactual_divergence": float(totals["counterfactual_divergence"].sum() / total_steps),
        "env_metrics": {k[4:]: float(v.sum() / total_steps) for k, v in totals.items() if k.startswith("env/")},
        "constitution": setup.constitution.name,
    }
