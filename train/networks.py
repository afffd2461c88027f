"""Actor and critic MLPs (flax linen), orthogonal init as in the PPO literature.

Separate actor and critic so the learner can evaluate the critic alone (for the value of
the pre-reset next observation, used to bootstrap truncated episodes).
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
