"""Trainable policies: a network and how it acts and learns, behind one small interface.

A :class:`Policy` is what the learner holds; it never asks which network it has.  Each
policy says how to make its parameters, what it remembers between steps (its *carry*, a
pytree per environment: empty for a feed-forward policy), how it acts on a batch of
observations, and how the loss replays a stored rollout.  Two ship (``ppo.network``):

* ``mlp`` (:class:`FeedForwardPolicy`): separate actor and critic MLPs of the observation,
  orthogonal init as in the PPO literature.  It remembers nothing, so the loss may shuffle
  single steps into minibatches.
* ``rl2`` (:class:`RecurrentPolicy`): an agent that adapts within an episode, in the style
  of RL^2 (Duan et al. 2016; Wang et al. 2016).  Its input is the observation, the previous
  action (one-hot) and the previous reward; an MLP embeds them, a GRU carries a memory from
  step to step, and two heads read the memory's output: logits and value.  The memory (and
  the previous action and reward) is cleared where an episode starts, so whatever the agent
  learns about an environment it learns inside the episode.  The loss re-runs it over whole
  [T, envs] sequences from the memory a rollout started with.

Adding a network is adding a class here and an entry in :data:`POLICIES`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple, Sequence

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


class Policy(abc.ABC):
    """A network and the way it acts and learns.

    Batched arrays have a leading environment axis [B]; ``replay`` takes [T, B] sequences.
    ``reward`` is what the previous step paid each environment, ``first`` marks
    observations that begin an episode (a policy with memory clears it there).
    """

    #: its actions can depend on the rewards it was paid earlier in the episode
    adaptive: ClassVar[bool]
    #: the loss needs whole [T, B] sequences, so minibatches split environments, not steps
    needs_sequences: ClassVar[bool]
    #: it can be held to a constitution's invariances (its decision is a function of the observation)
    supports_invariances: ClassVar[bool]

    num_actions: int

    @classmethod
    @abc.abstractmethod
    def from_config(cls, ppo: Any, num_actions: int) -> "Policy":
        """The policy sized by the PPO config (``ppo.hidden_sizes``, ``ppo.activation``, ...)."""

    @abc.abstractmethod
    def init(self, keys: jax.Array, obs: jax.Array) -> Any:
        """Parameters from two keys (a policy with one network uses the first), given example
        observations [B, ...]."""

    @abc.abstractmethod
    def initial_carry(self, n: int) -> Any:
        """What ``n`` policies remember before their first step."""

    @abc.abstractmethod
    def step(self, params: Any, carry: Any, obs: jax.Array, reward: jax.Array,
             first: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """One step over a batch: (carry after the step, logits [B, A], value [B]).  The carry
        still lacks the action: :meth:`after_action` adds it once one is chosen."""

    def act(self, params: Any, carry: Any, obs: jax.Array, reward: jax.Array, first: jax.Array):
        """(carry, logits): :meth:`step` without the value, which acting does not need."""
        carry, logits, _ = self.step(params, carry, obs, reward, first)
        return carry, logits

    @abc.abstractmethod
    def after_action(self, carry: Any, action: jax.Array) -> Any:
        """The carry once the action taken is known."""

    @abc.abstractmethod
    def replay(self, params: Any, carry: Any, obs: jax.Array, reward: jax.Array, first: jax.Array,
               action: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
        """Re-run [T, B] steps from the carry the first of them started with: logits [T, B, A],
        values [T, B] and the carry after each step's action [T, B, ...]."""

    def logits(self, params: Any, obs: jax.Array) -> jax.Array:
        """Logits of a batch of observations, for policies with ``supports_invariances``."""
        raise NotImplementedError(f"{type(self).__name__} decides from more than the observation")


class FeedForwardPolicy(Policy):
    """``ppo.network=mlp``: separate actor and critic MLPs, no memory (the carry is ``()``)."""

    adaptive = False
    needs_sequences = False
    supports_invariances = True

    def __init__(self, num_actions: int, hidden_sizes: Sequence[int], activation: str):
        self.num_actions = num_actions
        self.actor = Actor(num_actions, tuple(hidden_sizes), activation)
        self.critic = Critic(tuple(hidden_sizes), activation)

    @classmethod
    def from_config(cls, ppo, num_actions):
        return cls(num_actions, ppo.hidden_sizes, ppo.activation)

    def init(self, keys, obs):
        k_actor, k_critic = keys
        return {"actor": self.actor.init(k_actor, obs[:1]), "critic": self.critic.init(k_critic, obs[:1])}

    def initial_carry(self, n):
        return ()

    def step(self, params, carry, obs, reward, first):
        return carry, self.actor.apply(params["actor"], obs), self.critic.apply(params["critic"], obs)

    def act(self, params, carry, obs, reward, first):
        return carry, self.actor.apply(params["actor"], obs)

    def after_action(self, carry, action):
        return carry

    def replay(self, params, carry, obs, reward, first, action):
        lead = obs.shape[:2]
        flat = obs.reshape((-1,) + obs.shape[2:])
        logits = self.actor.apply(params["actor"], flat)
        values = self.critic.apply(params["critic"], flat)
        return logits.reshape(lead + logits.shape[1:]), values.reshape(lead), ()

    def logits(self, params, obs):
        return self.actor.apply(params["actor"], obs)


class RecurrentCarry(NamedTuple):
    """What the recurrent policy remembers per environment."""

    memory: jax.Array  # [B, M] GRU state
    prev_action: jax.Array  # [B] int32, -1 before the first action


class RecurrentPolicy(Policy):
    """``ppo.network=rl2``: a GRU fed the observation, the previous action and reward."""

    adaptive = True
    needs_sequences = True
    supports_invariances = False

    def __init__(self, num_actions: int, hidden_sizes: Sequence[int], activation: str, memory_size: int):
        self.num_actions = num_actions
        self.memory_size = memory_size
        self.net = RecurrentActorCritic(num_actions, tuple(hidden_sizes), activation, memory_size)

    @classmethod
    def from_config(cls, ppo, num_actions):
        return cls(num_actions, ppo.hidden_sizes, ppo.activation, ppo.memory_size)

    def init(self, keys, obs):
        carry = self.initial_carry(1)
        return {"net": self.net.init(keys[0], carry.memory, obs[:1], carry.prev_action, jnp.zeros((1,), jnp.float32),
                                     jnp.ones((1,), bool))}

    def initial_carry(self, n):
        return RecurrentCarry(jnp.zeros((n, self.memory_size), jnp.float32), jnp.full((n,), -1, jnp.int32))

    def step(self, params, carry, obs, reward, first):
        memory, logits, value = self.net.apply(params["net"], carry.memory, obs, carry.prev_action, reward, first)
        return carry._replace(memory=memory), logits, value

    def after_action(self, carry, action):
        return carry._replace(prev_action=action)

    def replay(self, params, carry, obs, reward, first, action):
        def body(c, inputs):
            o, r, f, a = inputs
            c, logits, value = self.step(params, c, o, r, f)
            c = self.after_action(c, a)
            return c, (logits, value, c)

        _, (logits, values, carries) = jax.lax.scan(body, carry, (obs, reward, first, action))
        return logits, values, carries


POLICIES = {"mlp": FeedForwardPolicy, "rl2": RecurrentPolicy}


def make_policy(ppo: Any, num_actions: int) -> Policy:
    """The policy ``ppo.network`` names, sized from the PPO config."""
    return POLICIES[ppo.network].from_config(ppo, num_actions)
