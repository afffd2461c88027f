"""A new agent in a few lines: implement the agent protocol and hand the object to ``measure``.

The agent below draws uniformly among the actions the constitution allows (sigma with no
floor): it never learns, so its Upsilon on BF-programs is near 0 and its forbidden-action
rate is exactly 0.  It is measured beside AIQ's random agent on the same programs.

    python examples/custom_agent.py
    python examples/custom_agent.py --num-envs 16 --episode-length 20     # in seconds
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from aligned_rl.train.agents import sample_actions
from aligned_rl.train.measure import draw_environments, measure
from aligned_rl.train.measure_config import MeasureConfig


class LawfulRandomAgent:
    """The agent protocol (train/agents.py): ``init(keys) -> state`` and
    ``act(state, obs, reward, first, keys, verdict) -> (state, action, logits or None)``."""

    name = "lawful-random"
    adaptive = False  # the rewards it is paid never change what it does
    shields = False  # its logits already give forbidden actions no mass

    def init(self, keys: jax.Array) -> tuple:
        return ()  # it remembers nothing

    def act(self, state, obs, reward, first, keys, verdict):
        logits = jnp.where(verdict.allowed, 0.0, -jnp.inf)  # [N, A]: uniform over the allowed actions
        return state, sample_actions(keys, logits), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--episode-length", type=int, default=1000)
    args = parser.parse_args()

    config = MeasureConfig(agent="random", env="BF-programs", constitution="no_low_symbols",
                           num_envs=args.num_envs, episode_length=args.episode_length, antithetic=False,
                           progress=False)
    sampled = draw_environments(config)  # the same programs and random numbers for both agents
    for label, agent in (("lawful random (this file)", LawfulRandomAgent()), ("AIQ random", None)):
        result = measure(config, agent=agent, sampled=sampled)  # agent=None: the one config.agent names
        print(f"{label:26s} Upsilon {result.estimate()}   forbidden rate {result.estimate('forbidden_rate')}")


if __name__ == "__main__":
    main()
