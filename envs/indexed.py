"""Environments whose observations an agent can index: what a tabular (AIQ) baseline needs."""

from __future__ import annotations

import abc

import jax


class IndexedObservations(abc.ABC):
    """An environment that declares a finite set of observations and numbers them.

    Subclassing promises that every observation the environment emits maps to an index in
    ``[0, num_observations)``, so that a tabular agent can keep one row per observation:

    * ``num_observations`` is the number of distinct observations (a Python int, fixed by the
      environment's static configuration);
    * ``observation_index(obs)`` takes one observation vector (no batch axis) and returns its
      index as an int32 scalar array.  It is a pure JAX function: jittable and vmappable, so a
      batch of observations is indexed with ``jax.vmap(env.observation_index)``.

    Learners check ``isinstance(env, IndexedObservations)``.
    """

    @property
    @abc.abstractmethod
    def num_observations(self) -> int:
        """The number of distinct observations, so indices lie in [0, num_observations)."""

    @abc.abstractmethod
    def observation_index(self, obs: jax.Array) -> jax.Array:
        """The index of one observation: an int32 scalar in [0, num_observations) (jittable)."""
