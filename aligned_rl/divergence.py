"""Exact divergences D(sigma(.|s), pi(.|s)) in bits over a discrete action set.

Every function takes the policy as logits (``pi = softmax(logits)``) and the
constitution's reference policy ``sigma`` as probabilities over the same actions
(last axis), and returns one number per state, in bits.  They are exact sums over
the actions (no sampling), safe at the boundaries (zeros in ``sigma`` or ``pi``
give finite values and finite gradients wherever the divergence itself is finite),
and differentiable with respect to the logits, so they can be added to a loss.

    kl_pi_sigma   KL(pi || sigma) = sum_a pi log2(pi / sigma)    infinite if sigma has
                  zeros where pi has mass, so use it with eps > 0.  Equals
                  -H(pi) - sum_a pi log2 sigma: it pulls pi toward spreading mass.
    kl_sigma_pi   KL(sigma || pi) = sum_a sigma log2(sigma / pi)  finite for any
                  softmax policy (pi > 0 everywhere).
    tv            total variation 1/2 sum_a |pi - sigma|, in [0, 1].
    js            Jensen-Shannon divergence with the mixture m = (pi + sigma) / 2,
                  in [0, 1] bits.
    projection    -log2 pi(allowed | s): the KL from pi to the nearest policy that
                  puts no mass on forbidden actions (pi conditioned on the allowed
                  set).  2**-D is exactly the probability of acting lawfully.  It
                  takes the allowed-action mask (sigma > its floor), not sigma.

``alignment_reward(d) = 2**-d`` maps any of them to (0, 1].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LN2 = 0.6931471805599453
DIVERGENCES = ("kl_pi_sigma", "kl_sigma_pi", "tv", "js", "projection")


def _plogq(p: jax.Array, log_q: jax.Array) -> jax.Array:
    """p * log q with the convention 0 * log 0 = 0 and a gradient that stays finite."""
    safe_log_q = jnp.where(p > 0, log_q, 0.0)
    return jnp.where(p > 0, p * safe_log_q, 0.0)


def _safe_log(p: jax.Array) -> jax.Array:
    return jnp.log(jnp.where(p > 0, p, 1.0))


def kl_pi_sigma(logits: jax.Array, sigma: jax.Array) -> jax.Array:
    """KL(pi || sigma) in bits; +inf where sigma is zero on an action pi can take."""
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    pi = jnp.exp(log_pi)
    log_sigma = _safe_log(sigma)
    terms = pi * (log_pi - log_sigma)
    terms = jnp.where(sigma > 0, terms, jnp.inf)
    return jnp.sum(terms, axis=-1) / LN2


def kl_sigma_pi(logits: jax.Array, sigma: jax.Array) -> jax.Array:
    """KL(sigma || pi) in bits."""
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(_plogq(sigma, _safe_log(sigma)) - _plogq(sigma, log_pi), axis=-1) / LN2


def total_variation(logits: jax.Array, sigma: jax.Array) -> jax.Array:
    """Total variation distance 1/2 sum |pi - sigma|, in [0, 1]."""
    pi = jax.nn.softmax(logits, axis=-1)
    return 0.5 * jnp.sum(jnp.abs(pi - sigma), axis=-1)


def jensen_shannon(logits: jax.Array, sigma: jax.Array) -> jax.Array:
    """Jensen-Shannon divergence in bits, in [0, 1]."""
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    pi = jnp.exp(log_pi)
    m = 0.5 * (pi + sigma)
    log_m = _safe_log(m)
    kl_pm = jnp.sum(_plogq(pi, log_pi) - _plogq(pi, log_m), axis=-1)
    kl_sm = jnp.sum(_plogq(sigma, _safe_log(sigma)) - _plogq(sigma, log_m), axis=-1)
    return 0.5 * (kl_pm + kl_sm) / LN2


def log2_prob_allowed(logits: jax.Array, allowed: jax.Array) -> jax.Array:
    """log2 pi(allowed | s) = (logsumexp over the allowed logits - logsumexp over all) / ln 2,
    each logsumexp shifted by its own maximum (stable for any logits); 0 when every action is
    allowed.  At least one allowed action is guaranteed by the caller (see constitution.sigma);
    if none is, the result is -inf, never NaN."""
    masked = jnp.where(allowed, logits, -jnp.inf)
    return (jax.nn.logsumexp(masked, axis=-1) - jax.nn.logsumexp(logits, axis=-1)) / LN2


def projection(logits: jax.Array, allowed: jax.Array) -> jax.Array:
    """D_proj = -log2 pi(allowed | s) = min over compliant policies q of KL(q-projection)."""
    # log pi(allowed) can round a hair above 0 when every action is allowed; D is >= 0.
    return jnp.maximum(-log2_prob_allowed(logits, allowed), 0.0)


def alignment_reward(divergence: jax.Array) -> jax.Array:
    """R = 2**-D in (0, 1]; with the projection divergence, the probability of acting lawfully."""
    return jnp.exp2(-divergence)


_BY_NAME: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "kl_pi_sigma": kl_pi_sigma,
    "kl_sigma_pi": kl_sigma_pi,
    "tv": total_variation,
    "js": jensen_shannon,
}


def divergence(name: str, logits: jax.Array, sigma: jax.Array, allowed: jax.Array) -> jax.Array:
    """D(sigma, pi) by name (one of DIVERGENCES); ``allowed`` is used by ``projection``."""
    if name == "projection":
        return projection(logits, allowed)
    if name not in _BY_NAME:
        raise ValueError(f"unknown divergence {name!r}; choose one of {DIVERGENCES}")
    return _BY_NAME[name](logits, sigma)


def counterfactual_divergence(policy_logits: Callable[[jax.Array], jax.Array], invariances, params,
                              obs: jax.Array, logits: jax.Array) -> jax.Array:
    """D_cf per state [B]: the sum over a constitution's ``invariances`` (``transform(obs,
    params) -> obs'``) of JS(pi(.|o), pi(.|t(o))) in bits, where ``logits`` are pi(.|o) for
    the batch ``obs`` and ``policy_logits`` gives the logits of any batch of observations."""
    total = jnp.zeros(logits.shape[:-1], jnp.float32)
    for transform in invariances:
        flipped = jax.vmap(lambda o: transform(o, params))(obs)
        total += jensen_shannon(logits, jax.nn.softmax(policy_logits(flipped), axis=-1))
    return total
