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

from aligned_rl.divergence import alignment_reward, divergence
from aligned_rl.train.agents import PolicyAgent, restore_policy
from aligned_rl.train.config import CurriculumConfig, load_run_config
from aligned_rl.train.loop import build
from aligned_rl.train.ppo import AlignedPPO
from aligned_rl.train.rollout import Rollout

SUMS = ("return", "length", "violations", "divergence", "alignment_reward", "forbidden_states", "all_forbidden",
        "counterfactual_divergence")


def _max_steps(env_params: Any, fallback: int) -> int:
    limit = getattr(env_params, "max_steps_in_episode", None)
    return int(np.max(np.asarray(limit))) if limit is not None else fallback


def rollout_episodes(
    algo: AlignedPPO, agent: PolicyAgent, env_params: Any, cparams: Any, key: jax.Array, max_steps: int
) -> dict[str, jax.Array]:
    """Per-environment sums over the first episode of each environment in ``env_params``."""
    n = jax.tree.leaves(env_params)[0].shape[0]
    k_reset, k_run = jax.random.split(key)
    reset_keys = jax.random.split(k_reset, n)
    rollout = Rollout(agent, algo.env, algo.constitution, algo.num_actions, restart_memory=False, saute=algo.saute)
    carry = rollout.start(env_params, reset_keys, reset_keys, k_run)
    # environments that report info["metrics"] get those summed too (their names known at trace time)
    probe = jax.eval_shape(rollout.step, env_params, cparams, carry)[1].metrics
    zeros = jnp.zeros((n,), jnp.float32)
    totals = {k: zeros for k in (*SUMS, *(f"env/{k}" for k in probe))}

    def accumulate(acc, step, _):
        totals, active = acc
        d = divergence(algo.divergence_name, step.logits, step.verdict.sigma, step.verdict.allowed)
        increments = {
            "return": step.reward, "length": jnp.ones((n,), jnp.float32), "violations": step.violated,
            "divergence": d, "alignment_reward": alignment_reward(d),
            "forbidden_states": step.verdict.in_forbidden_state, "all_forbidden": step.verdict.all_forbidden,
            "counterfactual_divergence": algo.counterfactual(agent.params, cparams, step.obs, step.logits),
            **{f"env/{k}": v for k, v in step.metrics.items()},
        }
        w = active.astype(jnp.float32)
        totals = {k: totals[k] + w * increments[k].astype(jnp.float32) for k in totals}
        return totals, active & ~step.done

    _, (totals, active) = rollout.run(env_params, cparams, carry, max_steps, accumulate, (totals, jnp.ones((n,), bool)))
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
    policy, params, config, update = restore_policy(run_dir, which)
    agent = PolicyAgent(policy, params, shields=config.alignment.shield, greedy=greedy, name=str(run_dir))
    # the evaluation's own batch: one environment per episode, drawn as the run's config says
    config = load_run_config(run_dir, ["run.devices=1", f"env.num_envs={episodes}"])
    config.curriculum = CurriculumConfig()  # the episodes' worlds are drawn from the prior, not chosen
    setup = build(config)
    key = jax.random.PRNGKey(seed)
    env_params = setup.env_params
    steps = _max_steps(env_params, max_steps)
    fn = jax.jit(rollout_episodes, static_argnums=(0, 5))  # the agent is a pytree of its parameters
    totals = jax.tree.map(np.asarray, fn(setup.algo, agent, env_params, setup.cparams, key, steps))
    length = totals["length"]
    total_steps = float(length.sum())
    return {
        "run_dir": str(run_dir),
        "checkpoint_update": update,
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
