"""Prefix-free codes for description lengths, each written once.

Every family's sampler draws an instance from a prefix-free code and reports its length K in
bits, so that the draw has probability 2^-K; ``constitution.description_bits`` codes a
constitution among its family's.  The codes they share live here:

* the Elias-gamma code of an integer m >= 1: floor(log2 m) zeros, then m in binary
  (:func:`elias_gamma_bits`);
* the truncated Elias-gamma code with prefix cap ``k_max`` over 1 .. 2^(k_max + 1) - 1: with
  m = 2^k + r, the prefix is k zeros and a one, or k_max zeros and no one when k = k_max, then
  the k bits of r (:func:`truncated_gamma_bits`, :func:`truncated_gamma_word`,
  :func:`read_truncated_gamma`, :func:`draw_truncated_gamma`).  P(k) = 2^-(k+1) for k < k_max
  and 2^-k_max for k = k_max: the code is complete (Kraft sum 1);
* the bounded Elias-gamma code over a range [lo, hi] (:func:`bounded_gamma_bits`,
  :func:`draw_bounded_gamma`): g = s - lo + 1 in 1..n (n = hi - lo + 1), M = floor(log2 n); a
  value with j = floor(log2 g) < M costs its Elias-gamma length 2j + 1, and the last group
  [2^M, n] shares mass 2^-M evenly, so each of its values costs M + log2(n - 2^M + 1) bits (an
  ideal, arithmetic-code length where n - 2^M + 1 is not a power of two).  The truncated code
  with cap k_max is this code over 1 .. 2^(k_max + 1) - 1, where the last group is a whole
  block of k_max-bit words;
* the uniform code over 2^w values: w fair bits (:func:`uniform_width`, :func:`draw_uniform`).

Draws on the host take a NumPy generator seeded from a JAX key (:func:`host_rng`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


# ------------------------------------------------------------------------------ Elias gamma
def elias_gamma_bits(m: int) -> int:
    """Length in bits of the Elias-gamma code of the integer ``m >= 1``: 2 floor(log2 m) + 1.

    The code writes floor(log2 m) zeros, then m in binary; it is prefix-free over m >= 1.
    """
    m = int(m)
    if m < 1:
        raise ValueError(f"the Elias-gamma code covers integers >= 1, got {m}")
    return 2 * (m.bit_length() - 1) + 1


# ------------------------------------------------------------------------------ truncated gamma
def truncated_gamma_bits(m: int, k_max: int) -> int:
    """Length in bits of ``m`` (1 <= m < 2^(k_max + 1)) in the truncated Elias-gamma code with
    prefix cap ``k_max``: 2k + 1 for k = floor(log2 m) < k_max, 2 k_max for k = k_max."""
    k = int(m).bit_length() - 1
    return 2 * k + (1 if k < k_max else 0)


def truncated_gamma_word(m: int, k_max: int) -> str:
    """The codeword (a string of '0'/'1') of ``m`` in the truncated Elias-gamma code with cap ``k_max``."""
    k = int(m).bit_length() - 1
    prefix = "0" * k + ("1" if k < k_max else "")
    return prefix + (format(m - (1 << k), f"0{k}b") if k else "")


def read_truncated_gamma(take: Callable[[int], str], k_max: int) -> int:
    """Read one value of the truncated Elias-gamma code with cap ``k_max``; ``take(count)``
    returns the next ``count`` bits of the input as a string of '0'/'1'."""
    k = 0
    while k < k_max and take(1) == "0":
        k += 1
    return (1 << k) + (int(take(k), 2) if k else 0)


def draw_truncated_gamma(key: jax.Array, n: int, k_max: int) -> tuple[jax.Array, jax.Array]:
    """n values of the truncated Elias-gamma code with cap ``k_max``, drawn bit by bit (fair
    coins), and their lengths: (values int32[n], bits int32[n]).  Jittable."""
    k_prefix, k_mantissa = jax.random.split(key)
    # leading zeros of 32 fair bits: P(k) = 2^-(k+1), and P(k >= k_max) = 2^-k_max
    k = jnp.minimum(jax.lax.clz(jax.random.bits(k_prefix, (n,), jnp.uint32)), k_max).astype(jnp.uint32)
    mantissa = jax.random.bits(k_mantissa, (n,), jnp.uint32) & ((jnp.uint32(1) << k) - 1)
    value = ((jnp.uint32(1) << k) + mantissa).astype(jnp.int32)
    k = k.astype(jnp.int32)
    bits = 2 * k + (k < k_max).astype(jnp.int32)
    return value, bits


# ------------------------------------------------------------------------------ bounded gamma
def bounded_gamma_bits(lo: int, hi: int) -> np.ndarray:
    """float64[hi - lo + 1]: the length in bits of each value lo..hi under the bounded
    Elias-gamma code over that range (see the module doc)."""
    n = hi - lo + 1
    if n < 1:
        raise ValueError(f"empty size range [{lo}, {hi}]")
    top = int(math.floor(math.log2(n)))
    bits = []
    for g in range(1, n + 1):
        j = int(math.floor(math.log2(g)))
        bits.append(2 * j + 1 if j < top else top + math.log2(n - 2**top + 1))
    return np.asarray(bits, np.float64)


def draw_bounded_gamma(rng: np.random.Generator, n: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """n values in [lo, hi] from the bounded Elias-gamma code, each drawn with probability
    2^-bits, and their bits: (values int[n], bits float64[n])."""
    bits = bounded_gamma_bits(lo, hi)
    index = rng.choice(len(bits), size=n, p=2.0**-bits / np.sum(2.0**-bits))
    return lo + index, bits[index]


# ------------------------------------------------------------------------------ uniform
def uniform_width(count: int) -> int:
    """Bits of the uniform code over ``count`` values, a power of two: log2(count)."""
    width = int(count).bit_length() - 1
    if count != 1 << width:
        raise ValueError(f"a uniform code of whole bits needs a power of two values, got {count}")
    return width


def draw_uniform(key: jax.Array, n: int, width: int) -> jax.Array:
    """n indices drawn uniformly from 0 .. 2^width - 1 (``width`` fair bits each): int32[n].  Jittable."""
    return (jax.random.bits(key, (n,), jnp.uint32) >> (32 - width)).astype(jnp.int32)


# ------------------------------------------------------------------------------ host draws
def host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (raw uint32 or typed): same key, same draws."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.random.SeedSequence([int(x) for x in np.asarray(key).ravel()]))
