"""The JAX change detectors fire where river's do, and the calibration helpers measure what
they claim.

PageHinkley and ADWIN are run against river.drift's implementations (river is a test
dependency), CUSUM against the textbook recursion written out below, on the same streams:
stationary noise, an abrupt shift of the mean, a gradual drift, a Bernoulli violation rate
that jumps, and a mean that switches back and forth (so the detectors restart many times).
The comparisons run in float64: in float32, JAX's default, the running mean, the faded sums
and ADWIN's variances round at about 1e-7 of their size, so a statistic that lands within
that of its threshold can fire one step earlier or later than river's float64 arithmetic.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from river import drift

from aligned_rl.detectors import (ADWIN, CUSUM, RETURN_DETECTORS, VIOLATION_DETECTORS, PageHinkley, detect,
                                  detection_delay, false_alarms, violations_sampler)

LENGTH = 3000
SEEDS = (0, 1, 2)


def streams(seed: int) -> dict[str, np.ndarray]:
    """Episode-return-like and violation-like streams, float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH)
    half = LENGTH // 2
    return {
        "stationary": np.clip(rng.normal(0.2, 0.4, LENGTH), -1, 1),
        "abrupt": np.clip(rng.normal(np.where(t < half, 0.5, -0.1), 0.4), -1, 1),
        "gradual": np.clip(rng.normal(0.6 - 1.2 * t / LENGTH, 0.4), -1, 1),
        "violations": (rng.random(LENGTH) < np.where(t < half, 0.05, 0.3)).astype(np.float64),
        "switching": rng.normal(np.where((t // 300) % 2 == 0, 0.0, 1.0), 0.5),
    }


def batch() -> tuple[list[tuple[int, str]], np.ndarray]:
    names, rows = [], []
    for seed in SEEDS:
        for name, xs in streams(seed).items():
            names.append((seed, name))
            rows.append(xs)
    return names, np.stack(rows)


def river_indices(detector, xs) -> list[int]:
    found = []
    for i, x in enumerate(xs):
        detector.update(float(x))
        if detector.drift_detected:
            found.append(i)
    return found


def jax_indices(detector, xs: np.ndarray) -> list[list[int]]:
    """Drift indices of every row of xs, all rows watched at once by a vmapped detector."""
    flags = jax.jit(jax.vmap(lambda row: detect(detector, row)[1]))(jnp.asarray(xs))
    return [np.flatnonzero(row).tolist() for row in np.asarray(flags)]


# ------------------------------------------------------------------------------ against river
PAGE_HINKLEYS = [
    dict(),  # river's defaults
    dict(mode="down", delta=0.05, threshold=5.0),
    dict(mode="up", delta=0.01, threshold=3.0, alpha=0.99, min_instances=10),
    dict(mode="both", delta=0.02, threshold=8.0, alpha=1.0, min_instances=50),
]


@pytest.mark.parametrize("params", PAGE_HINKLEYS, ids=str)
def test_page_hinkley_fires_where_river_does(params):
    names, xs = batch()
    with jax.enable_x64(True):
        ours = jax_indices(PageHinkley(**params), xs)
    fired = 0
    for (seed, name), row, found in zip(names, xs, ours):
        assert found == river_indices(drift.PageHinkley(**params), row), (seed, name)
        fired += len(found)
    assert fired >= 3  # the comparison saw detections, not only silence


ADWINS = [
    dict(),  # river's defaults
    dict(delta=0.05, clock=1),
    dict(delta=0.01, clock=4, max_buckets=2, min_window_length=2, grace_period=20),
]


@pytest.mark.parametrize("params", ADWINS, ids=str)
def test_adwin_fires_where_river_does(params):
    names, xs = batch()
    with jax.enable_x64(True):
        ours = jax_indices(ADWIN(**params), xs)
    fired = 0
    for (seed, name), row, found in zip(names, xs, ours):
        assert found == river_indices(drift.ADWIN(**params), row), (seed, name)
        fired += len(found)
    assert fired >= 10


def test_adwin_window_follows_river():
    """Without a detection the window's width, sum and squared deviations match river's."""
    xs = streams(3)["stationary"][:1000]
    ours, river_adwin = ADWIN(), drift.ADWIN()
    with jax.enable_x64(True):
        state, flags = jax.jit(lambda row: detect(ours, row))(jnp.asarray(xs))
        assert not np.asarray(flags).any()
    for x in xs:
        river_adwin.update(float(x))
    assert float(state.width) == river_adwin.width == 1000
    assert float(state.total) == river_adwin.total
    assert float(state.variance) == river_adwin.variance
    np.testing.assert_allclose(float(state.variance), ((xs - xs.mean()) ** 2).sum(), rtol=1e-9)


def test_adwin_full_histogram_forgets_its_oldest_bucket():
    """With 3 rows of 2 buckets the window holds at most 2 * (1 + 2 + 4) = 14 values: the most
    recent ones, with their exact sum and squared deviations."""
    xs = np.random.default_rng(4).normal(size=200)
    detector = ADWIN(max_buckets=2, max_rows=3, clock=10_000)
    with jax.enable_x64(True):
        state = detector.init()
        update = jax.jit(detector.update)
        widths = []
        for x in xs:
            state, _ = update(state, x)
            widths.append(int(state.width))
    assert max(widths) == 14 and min(widths[20:]) >= 8
    recent = xs[-widths[-1]:]
    np.testing.assert_allclose(float(state.total), recent.sum(), rtol=1e-12)
    np.testing.assert_allclose(float(state.variance), ((recent - recent.mean()) ** 2).sum(), rtol=1e-9)


# ------------------------------------------------------------------------------ CUSUM
def textbook_cusum(xs, k, h, mode="both", reference=None, burn_in=30) -> list[int]:
    """Page's one-sided CUSUMs S+ = max(0, S+ + x - mu0 - k), S- = max(0, S- + mu0 - x - k),
    an alarm when a watched one exceeds h, and a fresh start (and a fresh mu0, the mean of the
    next burn_in values, when none is given) after each alarm."""
    found, start = [], 0
    while start < len(xs):
        if reference is None:
            first = xs[start:start + burn_in]
            mu0, begin = sum(float(x) for x in first) / len(first), start + burn_in
        else:
            mu0, begin = reference, start
        s_plus = s_minus = 0.0
        alarm = None
        for i in range(begin, len(xs)):
            s_plus = max(0.0, s_plus + (float(xs[i]) - mu0) - k)
            s_minus = max(0.0, s_minus + (mu0 - float(xs[i])) - k)
            if (mode in ("up", "both") and s_plus > h) or (mode in ("down", "both") and s_minus > h):
                alarm = i
                break
        if alarm is None:
            break
        found.append(alarm)
        start = alarm + 1
    return found


CUSUMS = [
    dict(k=0.1, h=3.0),
    dict(k=0.05, h=2.0, mode="down", reference=0.3),
    dict(k=0.05, h=1.5, mode="up", burn_in=1),
    dict(k=0.2, h=4.0, mode="up", burn_in=50),
]


@pytest.mark.parametrize("params", CUSUMS, ids=str)
def test_cusum_fires_where_the_textbook_does(params):
    names, xs = batch()
    with jax.enable_x64(True):
        ours = jax_indices(CUSUM(**params), xs)
    fired = 0
    for (seed, name), row, found in zip(names, xs, ours):
        assert found == textbook_cusum(row, **params), (seed, name)
        fired += len(found)
    assert fired >= 5


# ------------------------------------------------------------------------------ the JAX contract
@pytest.mark.parametrize("detector", [PageHinkley(), CUSUM(), ADWIN(max_rows=8)], ids=lambda d: type(d).__name__)
def test_update_is_jittable_and_vmaps_over_states(detector):
    states = jax.vmap(lambda _: detector.init())(jnp.arange(4))
    xs = jnp.asarray([0.1, -0.5, 0.3, 0.9])
    batched, flags = jax.jit(jax.vmap(detector.update))(states, xs)
    assert flags.shape == (4,) and flags.dtype == jnp.bool_
    single = jax.jit(detector.update)
    for i in range(4):
        one, flag = single(detector.init(), xs[i])
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
            np.testing.assert_array_equal(a, b[i])
        assert bool(flag) == bool(flags[i])


def test_state_is_float64_under_x64_and_float32_otherwise():
    assert PageHinkley().init().mean.dtype == jnp.float32
    with jax.enable_x64(True):
        assert PageHinkley().init().mean.dtype == jnp.float64
        assert ADWIN().init().totals.dtype == jnp.float64


def test_a_detection_restarts_the_detector():
    detector = CUSUM(k=0.0, h=2.5, mode="up", reference=0.0)
    _, flags = detect(detector, jnp.ones(9))
    assert np.flatnonzero(np.asarray(flags)).tolist() == [2, 5, 8]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode='sideways'"):
        PageHinkley(mode="sideways")
    with pytest.raises(ValueError, match="mode="):
        CUSUM(mode="left")


# ------------------------------------------------------------------------------ calibration
def constant(value):
    return lambda key, shape: jnp.full(shape, value, jnp.float32)


def test_false_alarms_counts_a_known_run_length():
    """On a constant 1 stream, CUSUM(reference 0, k 0, h 6.5) fires every 7th value."""
    result = false_alarms(CUSUM(k=0.0, h=6.5, mode="up", reference=0.0), constant(1.0),
                          jax.random.PRNGKey(0), n_streams=8, n_steps=100)
    assert result.alarms == 8 * (100 // 7)
    assert result.steps == 800
    assert result.mean_run_length == pytest.approx(800 / result.alarms)
    assert result.low == pytest.approx(result.mean_run_length) == result.high  # no spread between streams


def test_false_alarms_interval_covers_a_geometric_run_length():
    """h below one violation: every violation fires, so run lengths are geometric with mean 1/rate."""
    result = false_alarms(CUSUM(k=0.0, h=0.5, mode="up", reference=0.0), violations_sampler(0.1),
                          jax.random.PRNGKey(1), n_streams=200, n_steps=1000)
    assert result.low < 10.0 < result.high
    assert result.high - result.low < 1.0


def test_false_alarms_without_alarms_gives_the_poisson_bound():
    result = false_alarms(PageHinkley(), constant(0.0), jax.random.PRNGKey(0), n_streams=4, n_steps=50)
    assert result.alarms == 0 and math.isinf(result.mean_run_length)
    assert result.low == pytest.approx(200 / 3.6888794541139363)


def test_detection_delay_of_a_deterministic_shift():
    """0 -> 1 at step 20; s_up grows by 0.5 a value after the shift and passes h = 2.2 at the 5th."""
    result = detection_delay(CUSUM(k=0.5, h=2.2, mode="up", reference=0.0), constant(0.0), constant(1.0),
                             jax.random.PRNGKey(0), n_streams=6, change_at=20, horizon=30)
    assert result.mean == 5.0 and result.detected == 1.0 and result.streams == 6


def test_detection_delay_counts_undetected_streams():
    result = detection_delay(CUSUM(k=0.5, h=50.0, mode="up", reference=0.0), constant(0.0), constant(1.0),
                             jax.random.PRNGKey(0), n_streams=3, change_at=5, horizon=10)
    assert result.detected == 0.0 and math.isinf(result.mean)


def test_presets_watch_the_right_direction():
    for detector in (RETURN_DETECTORS["page_hinkley"], RETURN_DETECTORS["cusum"]):
        assert detector.mode == "down"
    for detector in (VIOLATION_DETECTORS["page_hinkley"], VIOLATION_DETECTORS["cusum"]):
        assert detector.mode == "up"
