"""The learner's shuffle (``ppo.permutation``): a permutation, fair, and what the minibatches are.

It replaced ``jax.random.permutation`` (ten times slower on the CPU backend, see its docstring),
so the learner's numbers differ from those of earlier versions for the same seed: the
minibatches hold other steps.  These tests pin down what stayed: every step is in exactly one
minibatch of every epoch, and the order is uniformly random.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from aligned_rl.train.config import load_config
from aligned_rl.train.loop import build
from aligned_rl.train import ppo
from aligned_rl.train.ppo import LearnBatch, permutation
from tests.conftest import CARTPOLE, TINY


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 100, 8192, 65536])
def test_it_is_a_permutation(n):
    for seed in range(3):
        perm = np.asarray(permutation(jax.random.PRNGKey(seed), n))
        assert perm.dtype == np.int32
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    assert not np.array_equal(permutation(jax.random.PRNGKey(0), 64), permutation(jax.random.PRNGKey(1), 64))


def test_every_element_is_equally_likely_in_every_position():
    """Chi-square over 6,000 shuffles of 6 elements: each element's position is uniform, and all
    720 orders appear about equally often."""
    draws = np.asarray(jax.vmap(lambda k: permutation(k, 6))(jax.random.split(jax.random.PRNGKey(0), 6000)))
    for element in range(6):
        counts = np.bincount(np.argmax(draws == element, axis=1), minlength=6)
        assert stats.chisquare(counts).pvalue > 1e-3, counts
    codes = draws @ (6 ** np.arange(6))
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 720
    assert stats.chisquare(counts).pvalue > 1e-3


def test_pairs_are_ordered_fairly_at_the_learners_size():
    """At 8192 elements the random part of each sorted word is 19 bits, so ties are common in
    one round; across rounds every pair is still before or after with probability 1/2."""
    draws = np.asarray(jax.vmap(lambda k: permutation(k, 8192))(jax.random.split(jax.random.PRNGKey(1), 400)))
    where = np.argsort(draws, axis=1)  # where each element went
    before = (where[:, :-1] < where[:, 1:]).mean(axis=0)  # neighbours in the input: 8191 pairs
    assert abs(before.mean() - 0.5) < 0.01
    first = where[:, 0] / 8191  # the first element's position, uniform on [0, 1]
    assert stats.kstest(first, "uniform").pvalue > 1e-3


def test_beyond_the_packed_words_it_is_jaxs_own(monkeypatch):
    """Above PACKED_MAX elements a word keeps too few random bits: jax.random.permutation is used."""
    monkeypatch.setattr(ppo, "PACKED_MAX", 64)
    key = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(ppo.permutation(key, 100), jax.random.permutation(key, 100))
    assert not np.array_equal(ppo.permutation(key, 64), jax.random.permutation(key, 64))


def test_minibatches_are_the_shuffled_batch_in_order():
    setup = build(load_config(CARTPOLE, TINY))
    algo, size, k = setup.algo, setup.config.steps_per_update, setup.config.ppo.num_minibatches
    T, N = setup.config.ppo.num_steps, setup.config.env.num_envs
    steps = jnp.arange(size, dtype=jnp.float32).reshape(T, N)
    batch = LearnBatch(obs=steps[..., None], prev_reward=steps, first=steps > 0, action=steps.astype(jnp.int32),
                       log_prob=steps, value=steps, allowed=steps[..., None] > 0, sigma=steps[..., None])
    key = jax.random.PRNGKey(5)
    mb, adv, targets, _ = algo._minibatches(key, batch, steps, -steps, ())
    expected = np.asarray(permutation(key, size)).reshape(k, 1, size // k)
    np.testing.assert_array_equal(np.asarray(mb.value), expected)
    np.testing.assert_array_equal(np.asarray(adv), expected)
    np.testing.assert_array_equal(np.asarray(targets), -expected)
    np.testing.assert_array_equal(np.asarray(mb.obs)[..., 0], expected)


def test_one_minibatch_is_the_batch_unshuffled():
    """With ppo.num_minibatches=1 the loss averages over the whole batch, in whatever order it
    comes: the shuffle is skipped (the sums' order, not their terms, differs from shuffling)."""
    setup = build(load_config(CARTPOLE, [*TINY, "ppo.num_minibatches=1"]))
    T, N = setup.config.ppo.num_steps, setup.config.env.num_envs
    steps = jnp.arange(T * N, dtype=jnp.float32).reshape(T, N)
    batch = LearnBatch(obs=steps[..., None], prev_reward=steps, first=steps > 0, action=steps.astype(jnp.int32),
                       log_prob=steps, value=steps, allowed=steps[..., None] > 0, sigma=steps[..., None])
    mb, adv, _, _ = setup.algo._minibatches(jax.random.PRNGKey(5), batch, steps, steps, ())
    np.testing.assert_array_equal(np.asarray(mb.value), np.arange(T * N).reshape(1, 1, T * N))
