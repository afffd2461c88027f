"""Tests for aligned_rl.divergence against an independent float64 NumPy reference.

The reference below is written from the definitions (bits, pi = softmax(logits)) and
never calls the library.  sigma is built the way the library builds it
(``aligned_rl.constitution.reference_policy``) and fed to both sides unchanged.
"""

from __future__ import annotations

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aligned_rl.constitution import reference_policy

# ``aligned_rl.divergence`` the attribute is the re-exported dispatcher function, which
# shadows the submodule; fetch the module itself.
dv = importlib.import_module("aligned_rl.divergence")

LN2 = math.log(2.0)
NAMES = ("kl_pi_sigma", "kl_sigma_pi", "tv", "js", "projection")

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------------
# Independent float64 reference
# --------------------------------------------------------------------------------------


def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(logits))


def np_kl_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) in bits, 0 log 0 = 0, +inf where q = 0 < p."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        total = 0.0
        for pa, qa in zip(p[idx], q[idx]):
            if pa == 0.0:
                continue
            if qa == 0.0:
                total = math.inf
                break
            total += pa * math.log2(pa / qa)
        out[idx] = total
    return out


def ref_kl_pi_sigma(logits, sigma):
    return np_kl_bits(np_softmax(logits), sigma)


def ref_kl_sigma_pi(logits, sigma):
    return np_kl_bits(sigma, np_softmax(logits))


def ref_tv(logits, sigma):
    return 0.5 * np.abs(np_softmax(logits) - np.asarray(sigma, np.float64)).sum(axis=-1)


def ref_js(logits, sigma):
    pi = np_softmax(logits)
    s = np.asarray(sigma, np.float64)
    m = 0.5 * (pi + s)
    return 0.5 * np_kl_bits(pi, m) + 0.5 * np_kl_bits(s, m)


def ref_log_prob_allowed(logits, allowed):
    """log pi(allowed) in nats, in log space (exact for extreme logits too)."""
    log_pi = np_log_softmax(logits)
    masked = np.where(np.asarray(allowed, bool), log_pi, -np.inf)
    return np.logaddexp.reduce(masked, axis=-1)


def ref_projection(logits, allowed):
    return -ref_log_prob_allowed(logits, allowed) / LN2


REFERENCE = {
    "kl_pi_sigma": ref_kl_pi_sigma,
    "kl_sigma_pi": ref_kl_sigma_pi,
    "tv": ref_tv,
    "js": ref_js,
}

LIBRARY = {
    "kl_pi_sigma": dv.kl_pi_sigma,
    "kl_sigma_pi": dv.kl_sigma_pi,
    "tv": dv.total_variation,
    "js": dv.jensen_shannon,
}


# Analytic gradients of each divergence w.r.t. the logits (float64), from
# d pi_a / d z_j = pi_a (delta_aj - pi_j):  if D = f(pi) then dD/dz_j = pi_j (h_j - <pi, h>)
# with h = df/dpi.
def _softmax_chain(pi, h):
    return pi * (h - (pi * h).sum(axis=-1, keepdims=True))


def grad_kl_pi_sigma(logits, sigma):
    pi = np_softmax(logits)
    h = (np.log(pi) - np.log(np.asarray(sigma, np.float64)) + 1.0) / LN2
    return _softmax_chain(pi, h)


def grad_kl_sigma_pi(logits, sigma):
    return (np_softmax(logits) - np.asarray(sigma, np.float64)) / LN2


def grad_tv(logits, sigma):
    pi = np_softmax(logits)
    return _softmax_chain(pi, 0.5 * np.sign(pi - np.asarray(sigma, np.float64)))


def grad_js(logits, sigma):
    pi = np_softmax(logits)
    m = 0.5 * (pi + np.asarray(sigma, np.float64))
    return _softmax_chain(pi, 0.5 * np.log(pi / m) / LN2)


def grad_projection(logits, allowed):
    pi = np_softmax(logits)
    a = np.asarray(allowed, bool)
    p_allowed = (pi * a).sum(axis=-1, keepdims=True)
    return (pi - np.where(a, pi, 0.0) / p_allowed) / LN2


REFERENCE_GRAD = {
    "kl_pi_sigma": grad_kl_pi_sigma,
    "kl_sigma_pi": grad_kl_sigma_pi,
    "tv": grad_tv,
    "js": grad_js,
}


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

EPS = st.one_of(
    st.just(0.0),
    st.sampled_from([1e-6, 1e-3, 0.05, 0.5, 1.0]),
    st.floats(1e-6, 1.0, allow_nan=False),
)


@st.composite
def cases(draw, min_logit=-8.0, max_logit=8.0):
    """(logits f32 [B, A], forbidden bool [B, A], eps) with A in 2..8, B = 3.

    B is fixed so that only 7 shapes get compiled; each example still holds three
    independent rows."""
    a = draw(st.integers(2, 8))
    b = 3
    logits = draw(
        hnp.arrays(
            np.float32,
            (b, a),
            elements=st.floats(min_logit, max_logit, width=32, allow_nan=False),
        )
    )
    forbidden = draw(hnp.arrays(np.bool_, (b, a)))
    eps = draw(EPS)
    return logits, forbidden, eps


def build(logits, forbidden, eps):
    sigma, allowed, all_forbidden = _reference_policy_jit(jnp.asarray(forbidden), jnp.float32(eps))
    return jnp.asarray(logits), sigma, allowed, all_forbidden


def _lib_all(logits, sigma, allowed):
    out = {name: fn(logits, sigma) for name, fn in LIBRARY.items()}
    out["projection"] = dv.projection(logits, allowed)
    return out


# Jitted once per shape so hypothesis' hundreds of examples stay fast; the eager paths are
# exercised by the closed-form and boundary tests below, and jit == eager is tested too.
_lib_all_jit = jax.jit(_lib_all)


def lib_all(logits, sigma, allowed):
    return {k: np.asarray(v) for k, v in _lib_all_jit(logits, sigma, allowed).items()}


_log2_prob_allowed_jit = jax.jit(lambda z, m: dv.log2_prob_allowed(z, m))


@jax.jit
def _all_grads(logits, sigma, allowed):
    """Gradient of the batch sum of every divergence w.r.t. the logits (one compile per shape)."""
    out = {name: jax.grad(lambda z, fn=fn: jnp.sum(fn(z, sigma)))(logits) for name, fn in LIBRARY.items()}
    out["projection"] = jax.grad(lambda z: jnp.sum(dv.projection(z, allowed)))(logits)
    return out


_reference_policy_jit = jax.jit(reference_policy)  # eps traced: one compile per shape


def ref_all(logits, sigma, allowed):
    logits = np.asarray(logits, np.float64)
    sigma = np.asarray(sigma, np.float64)
    out = {name: fn(logits, sigma) for name, fn in REFERENCE.items()}
    out["projection"] = ref_projection(logits, np.asarray(allowed))
    return out


# --------------------------------------------------------------------------------------
# Library vs reference
# --------------------------------------------------------------------------------------


@SETTINGS
@given(cases())
def test_matches_float64_reference(case):
    logits, sigma, allowed, _ = build(*case)
    got = lib_all(logits, sigma, allowed)
    want = ref_all(logits, sigma, allowed)
    for name in NAMES:
        assert got[name].dtype == np.float32, name
        assert got[name].shape == logits.shape[:-1], name
        # assert_allclose treats matching +inf as equal and fails on mismatched infs.
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5, err_msg=name)


@SETTINGS
@given(cases(min_logit=-60.0, max_logit=60.0))
def test_projection_matches_reference_for_extreme_logits(case):
    """Projection is computed in log space: no underflow to -log2(0) = inf."""
    logits, sigma, allowed, _ = build(*case)
    got = lib_all(logits, sigma, allowed)["projection"]
    want = ref_projection(np.asarray(logits, np.float64), np.asarray(allowed))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@SETTINGS
@given(cases())
def test_gradients_match_analytic(case):
    logits, sigma, allowed, _ = build(*case)
    l64 = np.asarray(logits, np.float64)
    s64 = np.asarray(sigma, np.float64)
    grads = {k: np.asarray(v) for k, v in _all_grads(logits, sigma, allowed).items()}
    for name in LIBRARY:
        if name == "kl_pi_sigma" and case[2] == 0.0 and np.any(s64 == 0):
            continue  # divergence is infinite there; no gradient to compare
        g = grads[name]
        assert np.all(np.isfinite(g)), name
        if name == "tv" and np.min(np.abs(np_softmax(l64) - s64)) < 1e-5:
            continue  # |.| has a kink where pi_a == sigma_a (float32 may be on either side)
        np.testing.assert_allclose(g, REFERENCE_GRAD[name](l64, s64), rtol=1e-3, atol=1e-4, err_msg=name)
    g = grads["projection"]
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, grad_projection(l64, np.asarray(allowed)), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------

BIG = 60.0  # softmax([60, -60]) is a point mass to float32 precision (1 - 7.7e-53 == 1)


def test_tv_of_point_masses_is_one():
    logits = jnp.array([[BIG, -BIG, -BIG], [-BIG, -BIG, BIG]])
    sigma = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(dv.total_variation(logits, sigma), [1.0, 1.0], atol=1e-6)
    # Same point mass: 0.
    np.testing.assert_allclose(
        dv.total_variation(jnp.array([BIG, -BIG]), jnp.array([1.0, 0.0])), 0.0, atol=1e-6
    )


def test_js_of_disjoint_supports_is_one_bit():
    logits = jnp.array([BIG, BIG, -BIG, -BIG])  # pi = (1/2, 1/2, 0, 0)
    sigma = jnp.array([0.0, 0.0, 0.25, 0.75])
    np.testing.assert_allclose(dv.jensen_shannon(logits, sigma), 1.0, atol=1e-5)
    # pi = (1, 0), sigma = (1/2, 1/2): m = (3/4, 1/4),
    # JS = 1/2 log2(4/3) + 1/2 (1/2 log2(2/3) + 1/2 log2 2) ~= 0.311 bits
    want = 0.5 * (math.log2(1 / 0.75)) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    np.testing.assert_allclose(
        dv.jensen_shannon(jnp.array([BIG, -BIG]), jnp.array([0.5, 0.5])), want, atol=1e-5
    )


def test_kl_two_actions_by_hand():
    # pi = (3/4, 1/4) (logits log 3, 0); sigma = (1/2, 1/2).
    logits = jnp.array([math.log(3.0), 0.0])
    sigma = jnp.array([0.5, 0.5])
    # KL(pi||sigma) = 3/4 log2(3/2) + 1/4 log2(1/2) = 3/4 log2 3 - 1
    np.testing.assert_allclose(dv.kl_pi_sigma(logits, sigma), 0.75 * math.log2(3) - 1.0, rtol=1e-5)
    # KL(sigma||pi) = 1/2 log2(2/3) + 1/2 log2(2) = 1 - 1/2 log2 3
    np.testing.assert_allclose(dv.kl_sigma_pi(logits, sigma), 1.0 - 0.5 * math.log2(3), rtol=1e-5)
    # TV = 1/4
    np.testing.assert_allclose(dv.total_variation(logits, sigma), 0.25, rtol=1e-5)

    # pi = (1/2, 1/2), sigma = (1, 0): KL(pi||sigma) = inf, KL(sigma||pi) = 1 bit.
    uniform = jnp.zeros(2)
    point = jnp.array([1.0, 0.0])
    assert np.isposinf(np.asarray(dv.kl_pi_sigma(uniform, point)))
    np.testing.assert_allclose(dv.kl_sigma_pi(uniform, point), 1.0, rtol=1e-6)
    # pi = (1/2, 1/2), sigma = (1/5, 4/5): KL(pi||sigma) = 1/2 log2(5/2) + 1/2 log2(5/8)
    want = 0.5 * math.log2(2.5) + 0.5 * math.log2(0.625)
    np.testing.assert_allclose(dv.kl_pi_sigma(uniform, jnp.array([0.2, 0.8])), want, rtol=1e-5)


@pytest.mark.parametrize("num_actions", [2, 3, 5, 8])
def test_projection_of_uniform_pi(num_actions):
    logits = jnp.zeros(num_actions)
    for k in range(1, num_actions + 1):
        allowed = jnp.arange(num_actions) < k
        np.testing.assert_allclose(
            dv.projection(logits, allowed), math.log2(num_actions / k), rtol=1e-5, atol=1e-6
        )


def test_projection_is_finite_when_allowed_mass_underflows():
    # pi(allowed) = e^-200 underflows in float32, but -log2 of it is 200/ln 2 bits.
    logits = jnp.array([100.0, -100.0])
    allowed = jnp.array([False, True])
    np.testing.assert_allclose(dv.projection(logits, allowed), 200.0 / LN2, rtol=1e-5)
    g = jax.grad(lambda z: dv.projection(z, allowed))(logits)
    np.testing.assert_allclose(g, np.array([1.0, -1.0]) / LN2, rtol=1e-5)


def test_projection_zero_when_everything_allowed():
    logits = jnp.array([[3.0, -2.0, 0.5], [30.0, -30.0, 0.0], [0.0, 0.0, 0.0]])
    allowed = jnp.ones((3, 3), bool)
    np.testing.assert_allclose(dv.projection(logits, allowed), 0.0, atol=1e-6)


@SETTINGS
@given(cases())
def test_zero_at_pi_equal_sigma(case):
    """D = 0 when logits = log sigma (sigma > 0 everywhere)."""
    _, forbidden, eps = case
    assume(eps > 0)
    sigma, _, _ = reference_policy(jnp.asarray(forbidden), eps)
    logits = jnp.log(sigma)
    allowed = jnp.ones(sigma.shape, bool)
    # Any constant shift of the logits leaves pi unchanged.
    for shift in (0.0, 3.0):
        d = lib_all(logits + shift, sigma, allowed)
        for name in LIBRARY:
            np.testing.assert_allclose(d[name], 0.0, atol=2e-6, err_msg=(name, shift))
        np.testing.assert_allclose(d["projection"], 0.0, atol=1e-6)


@SETTINGS
@given(cases())
def test_zero_only_at_pi_equal_sigma(case):
    """The converse, quantitatively: each divergence bounds TV from above (so D=0 => pi=sigma).

    Pinsker: TV <= sqrt(KL_nats / 2) for both KLs; and for JS (bits)
    TV^2 / (2 ln 2) <= JS <= TV.
    """
    logits, sigma, allowed, _ = build(*case)
    d = lib_all(logits, sigma, allowed)
    tv = d["tv"]
    for name in ("kl_pi_sigma", "kl_sigma_pi"):
        assert np.all(tv <= np.sqrt(np.maximum(d[name], 0.0) * LN2 / 2) + 1e-4), name
    assert np.all(tv**2 / (2 * LN2) <= d["js"] + 1e-5)
    assert np.all(d["js"] <= tv + 1e-5)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@SETTINGS
@given(cases())
def test_ranges_and_non_negativity(case):
    logits, sigma, allowed, _ = build(*case)
    d = lib_all(logits, sigma, allowed)
    for name in NAMES:
        assert not np.any(np.isnan(d[name])), name
        assert np.all(d[name] >= -1e-6), (name, d[name])
    assert np.all(d["tv"] <= 1.0 + 1e-6)
    assert np.all(d["js"] <= 1.0 + 1e-5)
    for name in ("kl_sigma_pi", "tv", "js", "projection"):
        assert np.all(np.isfinite(d[name])), name


@SETTINGS
@given(cases())
def test_kl_pi_sigma_infinite_iff_sigma_has_zero(case):
    logits, forbidden, eps = case
    logits, sigma, allowed, all_forbidden = build(logits, forbidden, eps)
    d = lib_all(logits, sigma, allowed)["kl_pi_sigma"]
    sigma_has_zero = np.asarray(jnp.any(sigma == 0, axis=-1))
    if eps > 0:
        assert not sigma_has_zero.any()
        assert np.all(np.isfinite(d))
    else:
        want_zero = np.asarray(forbidden).any(-1) & ~np.asarray(all_forbidden)
        np.testing.assert_array_equal(sigma_has_zero, want_zero)
        # softmax puts mass on every action, so a zero in sigma makes the KL infinite
        assert np.all(np.isposinf(d[sigma_has_zero]))
        assert np.all(np.isfinite(d[~sigma_has_zero]))


@SETTINGS
@given(cases())
def test_alignment_reward_of_projection_is_prob_allowed(case):
    logits, sigma, allowed, _ = build(*case)
    d = lib_all(logits, sigma, allowed)["projection"]
    r = np.asarray(dv.alignment_reward(d))
    p_allowed = (np_softmax(np.asarray(logits, np.float64)) * np.asarray(allowed)).sum(-1)
    np.testing.assert_allclose(r, p_allowed, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(_log2_prob_allowed_jit(logits, allowed)), -d, rtol=1e-5, atol=1e-6
    )
    assert np.all(r > 0) and np.all(r <= 1.0 + 1e-6)


@SETTINGS
@given(cases(), st.data())
def test_projection_is_kl_to_nearest_compliant_policy(case, data):
    """D_proj = KL(q* || pi) with q* = pi conditioned on the allowed set, and
    KL(q || pi) >= D_proj for every compliant q (in particular for sigma with eps = 0)."""
    logits, forbidden, _ = case
    logits, sigma0, allowed, _ = build(logits, forbidden, 0.0)
    l64 = np.asarray(logits, np.float64)
    a = np.asarray(allowed)
    pi = np_softmax(l64)
    q_star = np.where(a, pi, 0.0) / (pi * a).sum(-1, keepdims=True)
    d = lib_all(logits, sigma0, allowed)
    proj = d["projection"]
    np.testing.assert_allclose(np_kl_bits(q_star, pi), proj, rtol=1e-4, atol=2e-5)
    # sigma with eps = 0 is compliant
    assert np.all(d["kl_sigma_pi"] >= proj - 1e-5)
    # random compliant q
    w = data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(0.0, 1.0)))
    w = np.where(a, w + 1e-3, 0.0)
    q = w / w.sum(-1, keepdims=True)
    assert np.all(np_kl_bits(q, pi) >= proj - 1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.05])
@pytest.mark.parametrize("num_actions", [2, 5])
def test_dispatcher_agrees(eps, num_actions):
    key_l, key_f = jax.random.split(jax.random.PRNGKey(num_actions))
    logits = 3.0 * jax.random.normal(key_l, (6, num_actions))
    forbidden = jax.random.bernoulli(key_f, 0.5, (6, num_actions))
    logits, sigma, allowed, _ = build(logits, forbidden, eps)
    direct = {k: np.asarray(v) for k, v in _lib_all(logits, sigma, allowed).items()}  # eager
    for name in NAMES:
        np.testing.assert_array_equal(np.asarray(dv.divergence(name, logits, sigma, allowed)), direct[name])


def test_dispatcher_names_and_unknown():
    assert set(dv.DIVERGENCES) == set(NAMES)
    logits = jnp.zeros((2, 3))
    sigma = jnp.full((2, 3), 1 / 3)
    allowed = jnp.ones((2, 3), bool)
    for name in dv.DIVERGENCES:
        out = dv.divergence(name, logits, sigma, allowed)
        assert out.shape == (2,)
    for bad in ("kl", "KL_PI_SIGMA", "", "total_variation", "jensen_shannon"):
        with pytest.raises(ValueError, match="unknown divergence"):
            dv.divergence(bad, logits, sigma, allowed)


def test_alignment_reward_values():
    np.testing.assert_allclose(dv.alignment_reward(jnp.array([0.0, 1.0, 3.0, jnp.inf])), [1.0, 0.5, 0.125, 0.0])


# --------------------------------------------------------------------------------------
# Gradients at the boundaries
# --------------------------------------------------------------------------------------

# sigma with exact zeros (eps = 0): built from forbidden masks.
ZERO_SIGMA_FORBIDDEN = jnp.array(
    [
        [True, False, False],
        [False, True, True],
        [False, False, False],  # everything allowed
        [True, True, True],  # all forbidden -> uniform fallback
    ]
)

BOUNDARY_LOGITS = [
    jnp.array([30.0, -30.0, 0.0]),  # near-deterministic
    jnp.array([-30.0, 30.0, 0.0]),
    jnp.array([100.0, -100.0, 0.0]),  # pi underflows to exact zeros in float32
    jnp.array([0.0, 0.0, 0.0]),
    jnp.array([2.0, -1.0, 0.5]),
]


@jax.jit
def _grads_of_mean(logits, sigma, allowed):
    return {
        name: jax.grad(lambda z, name=name: jnp.mean(dv.divergence(name, z, sigma, allowed)))(logits)
        for name in NAMES
    }


def _grad_of_mean(name, logits, sigma, allowed):
    # jitted, all five at once: one compile per shape instead of an eager grad per case
    return _grads_of_mean(logits, sigma, allowed)[name]


@pytest.mark.parametrize("name", ["kl_sigma_pi", "tv", "js", "projection"])
@pytest.mark.parametrize("logits", BOUNDARY_LOGITS, ids=lambda z: str(np.asarray(z).tolist()))
def test_gradients_finite_with_zeros_in_sigma(name, logits):
    sigma, allowed, _ = reference_policy(ZERO_SIGMA_FORBIDDEN, 0.0)
    assert np.any(np.asarray(sigma) == 0)
    batch = jnp.broadcast_to(logits, sigma.shape)
    value = dv.divergence(name, batch, sigma, allowed)
    assert np.all(np.isfinite(np.asarray(value))), value
    g = _grad_of_mean(name, batch, sigma, allowed)
    assert np.all(np.isfinite(np.asarray(g))), (name, g)


@pytest.mark.parametrize("eps", [1e-8, 1e-4, 0.1])
@pytest.mark.parametrize("logits", BOUNDARY_LOGITS, ids=lambda z: str(np.asarray(z).tolist()))
def test_kl_pi_sigma_gradient_finite_with_eps(eps, logits):
    sigma, allowed, _ = reference_policy(ZERO_SIGMA_FORBIDDEN, eps)
    batch = jnp.broadcast_to(logits, sigma.shape)
    value = dv.kl_pi_sigma(batch, sigma)
    assert np.all(np.isfinite(np.asarray(value)))
    g = _grad_of_mean("kl_pi_sigma", batch, sigma, allowed)
    assert np.all(np.isfinite(np.asarray(g))), g


@pytest.mark.parametrize("name", NAMES)
def test_gradients_all_allowed(name):
    logits = jnp.array([[30.0, -30.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    sigma, allowed, _ = reference_policy(jnp.zeros((3, 3), bool), 0.0)
    g = _grad_of_mean(name, logits, sigma, allowed)
    assert np.all(np.isfinite(np.asarray(g)))
    if name == "projection":
        # D_proj is identically 0 when every action is allowed.
        np.testing.assert_allclose(g, 0.0, atol=1e-6)


@pytest.mark.parametrize("name", ["kl_pi_sigma", "kl_sigma_pi", "tv", "js"])
@pytest.mark.parametrize(
    "logits",
    [jnp.array([30.0, -30.0, 0.0]), jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 0.0, 0.0])],
    ids=["near-det", "generic", "uniform"],
)
def test_gradients_at_sigma_equal_pi(name, logits):
    sigma = jax.nn.softmax(logits)
    allowed = jnp.ones(3, bool)
    value = dv.divergence(name, logits, sigma, allowed)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    g = _grad_of_mean(name, logits, sigma, allowed)
    assert np.all(np.isfinite(np.asarray(g))), g
    if name != "tv":  # TV has a kink at pi = sigma; the smooth ones have a zero gradient there
        np.testing.assert_allclose(g, 0.0, atol=1e-5)


# --------------------------------------------------------------------------------------
# jit and vmap
# --------------------------------------------------------------------------------------


def _batch(seed=0, b=6, a=5, eps=0.01):
    key_l, key_f = jax.random.split(jax.random.PRNGKey(seed))
    logits = 4.0 * jax.random.normal(key_l, (b, a))
    forbidden = jax.random.bernoulli(key_f, 0.4, (b, a))
    sigma, allowed, _ = reference_policy(forbidden, eps)
    return logits, sigma, allowed


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("eps", [0.0, 0.01])
def test_jit_and_vmap(name, eps):
    logits, sigma, allowed = _batch(eps=eps)
    eager = np.asarray(dv.divergence(name, logits, sigma, allowed))
    jitted = jax.jit(dv.divergence, static_argnums=0)
    np.testing.assert_allclose(jitted(name, logits, sigma, allowed), eager, rtol=1e-5, atol=1e-6)
    per_row = jax.vmap(lambda z, s, m: dv.divergence(name, z, s, m))
    np.testing.assert_allclose(per_row(logits, sigma, allowed), eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(per_row)(logits, sigma, allowed), eager, rtol=1e-5, atol=1e-6)
    rows = np.array([np.asarray(dv.divergence(name, logits[i], sigma[i], allowed[i])) for i in range(len(logits))])
    np.testing.assert_allclose(rows, eager, rtol=1e-5, atol=1e-6)
    # grad under jit and vmap
    g = jax.jit(jax.vmap(jax.grad(lambda z, s, m: dv.divergence(name, z, s, m))))(logits, sigma, allowed)
    if name == "kl_pi_sigma" and eps == 0.0:
        return
    assert np.all(np.isfinite(np.asarray(g)))
    g_mean = jax.grad(lambda z: jnp.sum(dv.divergence(name, z, sigma, allowed)))(logits)
    np.testing.assert_allclose(g, g_mean, rtol=1e-4, atol=1e-6)


def test_leading_batch_axes():
    logits, sigma, allowed = _batch(b=12, a=4)
    shaped = (logits.reshape(3, 4, 4), sigma.reshape(3, 4, 4), allowed.reshape(3, 4, 4))
    for name in NAMES:
        flat = np.asarray(dv.divergence(name, logits, sigma, allowed))
        out = dv.divergence(name, *shaped)
        assert out.shape == (3, 4)
        np.testing.assert_allclose(np.asarray(out).reshape(-1), flat, rtol=1e-6, atol=1e-7)
