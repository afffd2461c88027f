"""Mining tools: macro-actions found in an agent's own successful trajectories.

A tool (``envs/macros.py``) is a fixed sequence of primitive actions.  :func:`trajectories` runs an
agent with the one rollout and marks every step of the episodes that succeeded;
:func:`mine_macros` counts the action n-grams inside those episodes and returns the ones that
would save the most primitive decisions, ready for ``env.macros``.  The constitution still judges
every primitive step of a mined tool (``MacroEnv``), so mining can never make a way around it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import aligned_rl.envs as envs
from aligned_rl.train.rollout import Rollout


def mine_macros(actions: Any, starts: Any, success: Any, max_len: int = 4, count: int = 4, min_len: int = 2,
                num_primitives: int | None = None) -> list[list[int]]:
    """The ``count`` action sequences that save the most primitive decisions in successful episodes.

    ``actions`` [T, N] ints of a rollout, ``starts`` [T, N] bool (the step begins an episode),
    ``success`` [T, N] bool or float (every step of a successful episode marked; > 0 counts).
    Every n-gram of length ``min_len..max_len`` that lies inside one successful episode (never
    across an episode boundary, overlapping occurrences counted) is scored by frequency x (length - 1),
    the primitive decisions it would have saved.  Ties go to the longer n-gram, then the smaller
    in lexicographic order, so the result is deterministic.  ``num_primitives``: n-grams holding an
    action >= it (a tool the agent already owns) are skipped.  Pure NumPy."""
    actions = np.asarray(actions)
    starts = np.asarray(starts, bool)
    success = np.asarray(success) > 0
    if actions.ndim != 2 or starts.shape != actions.shape or success.shape != actions.shape:
        raise ValueError(f"actions, starts and success must all be [T, N]; got {actions.shape}, {starts.shape}, "
                         f"{success.shape}")
    if not 2 <= min_len <= max_len:
        raise ValueError(f"need 2 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    scored: list[tuple[int, int, tuple[int, ...]]] = []
    for length in range(min_len, min(max_len, actions.shape[0]) + 1):
        windows = sliding_window_view(actions, length, axis=0)  # [T - length + 1, N, length]
        inside = ~sliding_window_view(starts, length, axis=0)[..., 1:].any(-1)  # no episode begins after its first step
        ok = inside & success[: windows.shape[0]]
        if num_primitives is not None:
            ok &= (windows < num_primitives).all(-1) & (windows >= 0).all(-1)
        grams = windows[ok]
        if not len(grams):
            continue
        unique, counts = np.unique(grams, axis=0, return_counts=True)
        scored += [(int(c) * (length - 1), length, tuple(int(a) for a in g)) for g, c in zip(unique, counts)]
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    return [list(g) for _, _, g in scored[:count]]


def episode_success(rewards: Any, done: Any, success_return: float) -> np.ndarray:
    """bool [T, N]: the step belongs to an episode that ended within the T steps with a return
    (sum of ``rewards``) above ``success_return``."""
    rewards, done = np.asarray(rewards, np.float64), np.asarray(done, bool)
    n = rewards.shape[1]
    episode = np.cumsum(done, axis=0) - done  # the episode each step belongs to, per column
    column = np.broadcast_to(np.arange(n), rewards.shape)
    returns = np.zeros((rewards.shape[0] + 1, n))
    np.add.at(returns, (episode, column), rewards)
    finished = episode < done.sum(axis=0)
    return finished & (returns[episode, column] > success_return)


def trajectories(agent: Any, env: Any, constitution: Any, params: Any, key: jax.Array, steps: int,
                 success_return: float | None = None, family: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actions [T, N], starts [T, N], success [T, N]) of ``agent`` acting ``steps`` steps in every
    environment of ``params`` [N] under ``constitution``, by the one rollout.

    An episode succeeds when its return (the environment's reward) is above ``success_return``, by
    default the ``success_return`` of ``family``'s ``CurriculumSpec`` (e.g. reaching a gridworld's
    goal); episodes still running after ``steps`` steps count as failures.  Every step of an
    episode is marked with its success, as :func:`mine_macros` expects."""
    if success_return is None:
        spec = envs.spec(family).curriculum if family is not None else None
        if spec is None:
            raise ValueError(f"no success_return given, and family {family!r} declares no success (CurriculumSpec); "
                             "pass success_return")
        success_return = spec.success_return
    n = jax.tree.leaves(params)[0].shape[0]
    k_reset, k_run = jax.random.split(key)
    keys = jax.random.split(k_reset, n)
    rollout = Rollout(agent, env, constitution, int(env.action_space(env.default_params).n),
                      saute=getattr(agent, "saute", None))

    @jax.jit
    def run(params, cparams):
        carry = rollout.start(params, keys, keys, k_run)
        _, stacked = rollout.run(params, cparams, carry, steps)
        return stacked.action, stacked.reward, stacked.done

    actions, rewards, done = (np.asarray(x) for x in run(params, constitution.params))
    starts = np.concatenate([np.ones((1, n), bool), done[:-1]], axis=0)
    return actions, starts, episode_success(rewards, done, success_return)
