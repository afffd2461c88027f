"""Policy networks (flax linen), orthogonal init as in the PPO literature.

* :class:`Actor` and :class:`Critic`: separate MLPs (``ppo.network=mlp``), so the learner can
  evaluate the critic alone (for the value of the pre-reset next observation, used to
  bootstrap truncated episodes).
* :class:`RecurrentActorCritic` (``ppo.network=rl2``): an agent that adapts within an
  episode, in the style of RL^2 (Duan et al. 2016; Wang et al. 2016).  Its input is the
  observation, the previous action (one-hot) and the previous reward; an MLP embeds them, a
  GRU carries a memory from step to step, and two heads read the memory's output: logits
  and value.  The memory (and the previous action and reward) is cleared where an episode
  starts, so whatever the agent learns about an environment it learns inside the episode.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


def _trunk(x: jax.Array, hidden_sizes: Sequence[int], activation: str) -> jax.Array:
    x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
    for width in hidden_sizes:
        x = nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x)
        x = _ACTIVATIONS[activation](x)
    return x


class Actor(nn.Module):
    """obs [B, ...] -> logits [B, num_actions]."""

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _trunk(obs, self.hidden_sizes, self.activation)
        return nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01))(x)


class Critic(nn.Module):
    """obs [B, ...] -> value [B]."""

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _trunk(obs, self.hidden_sizes, self.activation)
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(x)[:, 0]


class RecurrentActorCritic(nn.Module):
    """(memory [B, M], obs [B, ...], prev_action [B] int, prev_reward [B], start [B] bool)
    -> (memory [B, M], logits [B, num_actions], value [B]).

    ``prev_action = -1`` means "no previous action" (a zero one-hot); where ``start`` is True
    the memory, previous action and previous reward are cleared before the step.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (64,)
    activation: str = "tanh"
    memory_size: int = 128

    @nn.compact
    def __call__(self, memory, obs, prev_action, prev_reward, start):
        memory = jnp.where(start[:, None], 0.0, memory)
        prev_action = jnp.where(start, -1, prev_action)
        prev_reward = jnp.where(start, 0.0, prev_reward)
        x = jnp.concatenate([
            obs.reshape((obs.shape[0], -1)).astype(jnp.float32),
            jax.nn.one_hot(prev_action, self.num_actions, dtype=jnp.float32),
            prev_reward.astype(jnp.float32)[:, None],
        ], axis=-1)
        x = _trunk(x, self.hidden_sizes, self.activation)
        memory, out = nn.GRUCell(features=self.memory_size)(memory, x)
        logits = nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01))(out)
        value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(out)[:, 0]
        return memory, logits, value
