"""The agents ``aligned-rl measure`` runs: AIQ baselines by name, or trained PPO runs.

Every actor drives a whole batch of environments with the same interface:
``init(keys) -> state`` and ``act(state, obs, reward, keys, allowed) -> (state, action, logits)``,
where ``reward`` is what the previous step paid each environment's agent and ``logits`` is
``None`` when the action distribution is implicit (the online baselines).  ``adaptive`` says
whether the rewards an actor is paid can change what it does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from aligned_rl import baselines
from aligned_rl.train.config import ConfigError


# ---------------------------------------------------------------------------------- agents
class BaselineActor:
    """An AIQ baseline driving a batch of environments; needs a discrete observation index."""

    adaptive = True  # learns from the rewards it is paid

    def __init__(self, name: str, env: Any, env_params: Any, overrides: dict, reward_scale: float):
        if not hasattr(env, "observation_index"):
            raise ConfigError(
                f"the baseline {name!r} needs discrete observations, and environment {env.name!r} "
                "provides no observation_index(obs); measure a PPO run directory instead"
            )
        num_actions = int(env.action_space(env_params).n)
        try:
            self.agent = baselines.make_baseline(name, env.num_observations, num_actions, **overrides)
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from err
        self.env = env
        self.reward_scale = reward_scale
        self.name = name

    def init(self, keys: jax.Array) -> Any:
        return jax.vmap(self.agent.init)(keys)

    def act(self, state, obs, reward, keys, allowed):
        del keys, allowed  # the agents draw from the keys in their own state
        index = jax.vmap(self.env.observation_index)(obs)
        state, action = jax.vmap(self.agent.step)(state, index, reward * self.reward_scale)
        return state, action, None  # no explicit policy: the alignment reward uses the indicator


class PolicyActor:
    """The policy of a PPO run's latest checkpoint, acting (sampling) without learning.

    A recurrent (``ppo.network=rl2``) policy carries its memory, previous action and previous
    reward from step to step, starting empty: it adapts to each environment within the
    episode from the rewards it is paid, so it is ``adaptive``.  ``measure`` runs one episode
    per environment and never clears the memory inside it; where a family ends an episode
    early and restarts it (a fallen pole), the memory carries over to the next, as within an
    RL^2 trial.
    """


    def __init__(self, run_dir: str):
        from aligned_rl.train.loop import load_run

        try:
            setup, state, _ = load_run(run_dir)
        except FileNotFoundError as err:
            raise ConfigError(f"{err}: nothing to measure") from err
        config = setup.config
        self.params = state.params
        self.algo = setup.algo
        self.adaptive = setup.algo.recurrent  # a feed-forward policy acts on observations only
        self.shield = config.alignment.shield
        self.env_name = config.env.name
        self.name = str(run_dir)

    def init(self, keys):
        return self.algo.initial_memory(keys.shape[0])

    def act(self, state, obs, reward, keys, allowed):
        memory, prev_action, _, start = state
        memory, logits = self.algo.act_logits(self.params, memory, obs, prev_action, reward, start)
        if self.shield:
            logits = jnp.where(allowed, logits, -jnp.inf)
        action = jax.vmap(jax.random.categorical)(keys, logits)
        if self.adaptive:
            state = (memory, action, reward, jnp.zeros(action.shape, bool))
        return state, action, logits


def make_actor(config: Any, env, env_params):
    if config.agent in baselines.BASELINES:
        return BaselineActor(config.agent, env, env_params, dict(config.agent_params), config.agent_reward_scale)
    if Path(config.agent, "config.yaml").is_file():
        actor = PolicyActor(config.agent)
        if actor.env_name != config.env:
            raise ConfigError(f"{config.agent} was trained on {actor.env_name!r}, not on {config.env!r}")
        return actor
    raise ConfigError(
        f"agent {config.agent!r} is neither a baseline ({sorted(baselines.BASELINES)}) nor a run directory"
    )
