"""Change detectors for a deployed agent's per-episode streams, as pure JAX functions.

A deployed agent watches its episode returns (mapped to [-1, 1]) and its violation indicator
(0 or 1 per episode) and notices when their mean drifts.  Three detectors:

    PageHinkley  river's ``river.drift.PageHinkley``: cumulative deviations from the running
                 mean, with a fading factor; mode "down" for a falling return, "up" for a
                 rising violation rate.
    CUSUM        the one-sided tabular CUSUM of Page (1954) against a given reference, or the
                 mean of the first ``burn_in`` values after each reset.
    ADWIN        river's ``river.drift.ADWIN``: the adaptive window with exponential histograms,
                 here in fixed-size arrays (``max_rows`` rows of ``max_buckets + 1`` buckets).

Each is a frozen dataclass of static hyperparameters with ``init() -> state`` (a NamedTuple of
arrays) and ``update(state, x) -> (state, drift)``.  Both are jittable and ``jax.vmap`` over a
batch of states watches many independent streams at once.  After a detection the detector
starts afresh on the next update, as river's do.  The arithmetic follows river's operation
for operation, so in float64 they fire at the same steps; float32 (JAX's default) rounds
sooner and can move a detection that sits on its threshold.

``false_alarms`` and ``detection_delay`` measure, over many simulated streams, the mean number
of steps between false alarms and the delay after a shift, each with a 95% interval; the
presets ``RETURN_DETECTORS`` and ``VIOLATION_DETECTORS`` hold the calibrated thresholds.
``python -m aligned_rl.detectors`` prints the calibration table of docs/monitoring.md, which
describes the detectors, their agreement with river and the calibration in full.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("up", "down", "both")
Sampler = Callable[[jax.Array, tuple], jax.Array]  # (key, shape) -> values, like jax.random


def _float(value: float) -> jax.Array:
    """A scalar of JAX's default float type (float64 under x64, float32 otherwise)."""
    return jnp.asarray(value, dtype=jnp.asarray(0.0).dtype)


def _restart(state: NamedTuple, fresh: NamedTuple) -> NamedTuple:
    """``fresh`` where the last update detected a change, ``state`` elsewhere (river resets
    a detector at the start of the update that follows a detection)."""
    return jax.tree.map(lambda f, s: jnp.where(state.drift, f, s), fresh, state)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")


# ------------------------------------------------------------------------------ Page-Hinkley
class PageHinkleyState(NamedTuple):
    n: jax.Array             # values seen since the last reset (a float, as river's Mean)
    mean: jax.Array          # their running mean
    sum_increase: jax.Array  # faded sum of (x - mean - delta)
    sum_decrease: jax.Array  # faded sum of (x - mean + delta)
    min_increase: jax.Array
    max_decrease: jax.Array
    drift: jax.Array         # bool: the last update detected a change


@dataclass(frozen=True)
class PageHinkley:
    """river's PageHinkley: alarm when a faded cumulative deviation from the running mean
    leaves its extreme by more than ``threshold`` (lambda), after ``min_instances`` values.

    mode "up" detects an increase of the mean, "down" a decrease, "both" either.
    """

    min_instances: int = 30
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    mode: str = "both"

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def init(self) -> PageHinkleyState:
        """The state before any value (river's ``_reset``)."""
        return PageHinkleyState(n=_float(0.0), mean=_float(0.0), sum_increase=_float(0.0),
                                sum_decrease=_float(0.0), min_increase=_float(math.inf),
                                max_decrease=_float(-1.0), drift=jnp.asarray(False))

    def update(self, state: PageHinkleyState, x: jax.Array) -> tuple[PageHinkleyState, jax.Array]:
        """Feed one value; returns the new state and whether a change was detected."""
        state = _restart(state, self.init())
        x = jnp.asarray(x, state.mean.dtype)
        n = state.n + 1.0
        mean = state.mean + (1.0 / n) * (x - state.mean)
        dev = x - mean
        sum_increase = self.alpha * state.sum_increase + dev - self.delta
        sum_decrease = self.alpha * state.sum_decrease + dev + self.delta
        min_increase = jnp.where(sum_increase < state.min_increase, sum_increase, state.min_increase)
        max_decrease = jnp.where(sum_decrease > state.max_decrease, sum_decrease, state.max_decrease)
        increase = sum_increase - min_increase > self.threshold
        decrease = max_decrease - sum_decrease > self.threshold
        test = {"up": increase, "down": decrease, "both": increase | decrease}[self.mode]
        drift = (n >= self.min_instances) & test
        return PageHinkleyState(n, mean, sum_increase, sum_decrease, min_increase, max_decrease, drift), drift


# ------------------------------------------------------------------------------ CUSUM
class CUSUMState(NamedTuple):
    n: jax.Array          # values seen since the last reset
    total: jax.Array      # their sum during the burn-in
    reference: jax.Array  # the in-control mean the sums are taken against
    s_up: jax.Array       # max(0, s_up + x - reference - k)
    s_down: jax.Array     # max(0, s_down + reference - x - k)
    drift: jax.Array


@dataclass(frozen=True)
class CUSUM:
    """The one-sided tabular CUSUM (Page 1954): ``s_up`` accumulates x - reference - k and
    ``s_down`` reference - x - k, each floored at 0; alarm when one that ``mode`` watches
    exceeds ``h``.  ``k`` is the drift allowance (half the shift to detect, by the textbook
    rule), ``h`` the decision threshold, both in the units of x.

    With ``reference=None`` the reference is the mean of the first ``burn_in`` values after
    each reset (no alarm during them); with a number, the sums start at the first value.
    """

    k: float = 0.05
    h: float = 5.0
    mode: str = "both"
    reference: float | None = None
    burn_in: int = 30

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if self.reference is None and self.burn_in < 1:
            raise ValueError("burn_in must be at least 1 when no reference is given")

    def init(self) -> CUSUMState:
        reference = 0.0 if self.reference is None else self.reference
        return CUSUMState(n=_float(0.0), total=_float(0.0), reference=_float(reference),
                          s_up=_float(0.0), s_down=_float(0.0), drift=jnp.asarray(False))

    def update(self, state: CUSUMState, x: jax.Array) -> tuple[CUSUMState, jax.Array]:
        """Feed one value; returns the new state and whether a change was detected."""
        state = _restart(state, self.init())
        x = jnp.asarray(x, state.reference.dtype)
        n = state.n + 1.0
        if self.reference is None:
            learning = n <= self.burn_in
            total = jnp.where(learning, state.total + x, state.total)
            reference = jnp.where(learning, total / n, state.reference)
        else:
            learning = jnp.asarray(False)
            total, reference = state.total, state.reference
        s_up = jnp.where(learning, 0.0, jnp.maximum(0.0, state.s_up + (x - reference) - self.k))
        s_down = jnp.where(learning, 0.0, jnp.maximum(0.0, state.s_down + (reference - x) - self.k))
        test = {"up": s_up > self.h, "down": s_down > self.h, "both": (s_up > self.h) | (s_down > self.h)}[self.mode]
        drift = ~learning & test
        return CUSUMState(n, total, reference, s_up, s_down, drift), drift


# ------------------------------------------------------------------------------ ADWIN
class ADWINState(NamedTuple):
    totals: jax.Array     # [max_rows, max_buckets + 1]: row i holds buckets of 2**i values, oldest first
    variances: jax.Array  # [max_rows, max_buckets + 1]: each bucket's sum of squared deviations
    counts: jax.Array     # [max_rows] int32: buckets in use in each row
    total: jax.Array      # sum of the window
    variance: jax.Array   # sum of squared deviations of the window
    width: jax.Array      # number of values in the window
    tick: jax.Array       # int32: updates since the last reset
    drift: jax.Array


@dataclass(frozen=True)
class ADWIN:
    """river's ADWIN (ADWIN2 of Bifet and Gavalda 2007): every ``clock`` values, once the
    window holds more than ``grace_period``, every split of the window into an older and a
    newer part of at least ``min_window_length`` values each is tested, and a difference of
    their means beyond the Bernstein bound at level ``delta`` is a change.

    The exponential histogram lives in ``max_rows`` rows of ``max_buckets + 1`` buckets, so the
    window holds at most max_buckets * (2**max_rows - 1) values (84 million at the defaults);
    past that the oldest bucket is forgotten, where river's window would keep growing.
    """

    delta: float = 0.002
    clock: int = 32
    max_buckets: int = 5
    min_window_length: int = 5
    grace_period: int = 10
    max_rows: int = 24

    def __post_init__(self) -> None:
        if self.max_buckets < 1 or self.max_rows < 1 or self.clock < 1:
            raise ValueError("max_buckets, max_rows and clock must be at least 1")

    def init(self) -> ADWINState:
        shape = (self.max_rows, self.max_buckets + 1)
        zeros = jnp.zeros(shape, jnp.asarray(0.0).dtype)
        return ADWINState(totals=zeros, variances=zeros, counts=jnp.zeros(self.max_rows, jnp.int32),
                          total=_float(0.0), variance=_float(0.0), width=_float(0.0),
                          tick=jnp.asarray(0, jnp.int32), drift=jnp.asarray(False))

    def update(self, state: ADWINState, x: jax.Array) -> tuple[ADWINState, jax.Array]:
        """Feed one value; returns the new state and whether a change was detected."""
        state = _restart(state, self.init())
        state = self._insert(state, jnp.asarray(x, state.total.dtype))
        tick = state.tick + 1
        drift = (tick % self.clock == 0) & (state.width > self.grace_period) & self._any_cut(state)
        return state._replace(tick=tick, drift=drift), drift

    def _insert(self, state: ADWINState, x: jax.Array) -> ADWINState:
        """Append x to row 0, update the window's sums, and merge full rows upward: a row that
        reaches max_buckets + 1 buckets merges its two oldest into one bucket of the next row."""
        width = state.width + 1.0
        delta_v = x - state.total / (width - 1.0)
        variance = state.variance + jnp.where(width > 1.0, (width - 1.0) * delta_v * delta_v / width, 0.0)
        total = state.total + x
        slots = jnp.arange(self.max_buckets + 1)
        shift2 = lambda a: jnp.concatenate([a[2:], jnp.zeros(2, a.dtype)])  # noqa: E731

        def row_step(incoming, row):
            arriving, new_total, new_variance = incoming
            totals, variances, count, size = row
            into = arriving & (slots == count)
            totals = jnp.where(into, new_total, totals)
            variances = jnp.where(into, new_variance, variances)
            count = count + arriving.astype(jnp.int32)
            full = count == self.max_buckets + 1
            mu1, mu2 = totals[0] / size, totals[1] / size
            merged_variance = variances[0] + variances[1] + size * 0.5 * (mu1 - mu2) * (mu1 - mu2)
            outgoing = (full, totals[0] + totals[1], merged_variance)
            totals = jnp.where(full, shift2(totals), totals)
            variances = jnp.where(full, shift2(variances), variances)
            return outgoing, (totals, variances, count - 2 * full.astype(jnp.int32))

        sizes = 2.0 ** jnp.arange(self.max_rows - 1, dtype=total.dtype)
        incoming = (jnp.asarray(True), x, jnp.zeros_like(x))
        (arriving, new_total, new_variance), (totals, variances, counts) = jax.lax.scan(
            row_step, incoming, (state.totals[:-1], state.variances[:-1], state.counts[:-1], sizes))

        # The last row takes what the row below merged; when full, it forgets its oldest bucket
        # (river's delete_element), where river would open a new row.
        last_totals, last_variances, last_count = state.totals[-1], state.variances[-1], state.counts[-1]
        into = arriving & (slots == last_count)
        last_totals = jnp.where(into, new_total, last_totals)
        last_variances = jnp.where(into, new_variance, last_variances)
        last_count = last_count + arriving.astype(jnp.int32)
        forget = last_count == self.max_buckets + 1
        size = float(2 ** (self.max_rows - 1))
        u, v = last_totals[0], last_variances[0]
        kept_width, kept_total = width - size, total - u
        mu_window = kept_total / kept_width
        kept_variance = variance - (v + size * kept_width * (u / size - mu_window) * (u / size - mu_window)
                                    / (size + kept_width))
        shift1 = lambda a: jnp.concatenate([a[1:], jnp.zeros(1, a.dtype)])  # noqa: E731
        last_totals = jnp.where(forget, shift1(last_totals), last_totals)
        last_variances = jnp.where(forget, shift1(last_variances), last_variances)
        last_count = last_count - forget.astype(jnp.int32)
        return state._replace(totals=jnp.concatenate([totals, last_totals[None]]),
                              variances=jnp.concatenate([variances, last_variances[None]]),
                              counts=jnp.concatenate([counts, last_count[None]]),
                              total=jnp.where(forget, kept_total, total),
                              variance=jnp.where(forget, kept_variance, variance),
                              width=jnp.where(forget, kept_width, width))

    def _any_cut(self, state: ADWINState) -> jax.Array:
        """Whether some split of the window, oldest buckets first, passes the Bernstein test.

        The sums of the two parts are accumulated one bucket at a time, oldest first, as river
        does (a scan rather than a cumsum, whose summation order differs in the last bit).
        """
        slots = self.max_buckets + 1
        rows = jnp.arange(self.max_rows - 1, -1, -1)  # oldest row first
        in_use = jnp.arange(slots)[None, :] < state.counts[rows][:, None]
        sizes = jnp.where(in_use, (2.0 ** rows.astype(state.total.dtype))[:, None], 0.0).reshape(-1)
        values = jnp.where(in_use, state.totals[rows], 0.0).reshape(-1)
        last_of_row0 = (rows[:, None] == 0) & (jnp.arange(slots)[None, :] == state.counts[0] - 1)
        candidate = (in_use & ~last_of_row0).reshape(-1)

        def accumulate(sums, bucket):
            u0, u1 = sums[0] + bucket, sums[1] - bucket
            return (u0, u1), (u0, u1)

        _, (u0, u1) = jax.lax.scan(accumulate, (_float(0.0), state.total), values)
        n0 = jnp.cumsum(sizes)  # whole numbers below 2**53: exact in any order
        n1 = state.width - n0

        mwl = float(self.min_window_length)
        safe_n0, safe_n1 = jnp.where(candidate, n0, 1.0), jnp.where(candidate, n1, 1.0)
        delta_mean = u0 / safe_n0 - u1 / safe_n1
        delta_prime = jnp.log(2.0 * jnp.log(state.width) / self.delta)
        # The floor at 1 only binds where n0 or n1 < min_window_length, splits that are not tested.
        m_recip = 1.0 / jnp.maximum(safe_n0 - mwl + 1.0, 1.0) + 1.0 / jnp.maximum(safe_n1 - mwl + 1.0, 1.0)
        epsilon = (jnp.sqrt(2.0 * m_recip * (state.variance / state.width) * delta_prime)
                   + 2.0 / 3.0 * delta_prime * m_recip)
        cut = candidate & (n1 >= mwl) & (n0 >= mwl) & (jnp.abs(delta_mean) > epsilon)
        return jnp.any(cut)


Detector = Any  # PageHinkley | CUSUM | ADWIN: anything with init() and update(state, x)


def detect(detector: Detector, xs: jax.Array, state: NamedTuple | None = None) -> tuple[NamedTuple, jax.Array]:
    """Run ``detector`` over the values ``xs`` (time on axis 0); returns the final state and
    the drift flags, one per value.  Vmap it for a batch of streams."""
    state = detector.init() if state is None else state
    return jax.lax.scan(detector.update, state, xs)


# ------------------------------------------------------------------------------ calibration
class FalseAlarms(NamedTuple):
    mean_run_length: float  # steps per false alarm (inf when none was seen)
    low: float              # 95% interval
    high: float
    alarms: int
    steps: int


class Delay(NamedTuple):
    mean: float             # mean values from the shift to its detection, counting the detecting one
    low: float              # 95% interval
    high: float
    detected: float         # fraction of the streams below that detected the shift within the horizon
    streams: int            # streams with no false alarm before the shift (the others are left out)


Z95 = 1.959963984540054
POISSON_ZERO_95 = 3.6888794541139363  # -log(0.025): the upper 95% bound of a Poisson mean after 0 events


def _batched_steps(detector: Detector, n_streams: int, key: jax.Array, n_steps: int,
                   sample_at: Callable[[jax.Array, jax.Array], jax.Array],
                   record: Callable[[Any, jax.Array, jax.Array], Any], acc: Any) -> Any:
    """Scan ``n_steps`` over ``n_streams`` independent detectors fed sample_at(t, key_t); fold
    each step's drift flags into ``acc`` with record(acc, t, drift)."""
    update = jax.vmap(detector.update)

    def step(carry, t):
        states, acc = carry
        states, drift = update(states, sample_at(t, jax.random.fold_in(key, t)))
        return (states, record(acc, t, drift)), None

    @jax.jit
    def run(acc):
        states = jax.vmap(lambda _: detector.init())(jnp.arange(n_streams))
        (_, acc), _ = jax.lax.scan(step, (states, acc), jnp.arange(n_steps))
        return acc

    return run(acc)


def false_alarms(detector: Detector, sample: Sampler, key: jax.Array, n_streams: int = 1000,
                 n_steps: int = 10_000) -> FalseAlarms:
    """The mean number of steps between alarms on ``n_streams`` stationary streams of
    ``n_steps`` values drawn by sample(key, shape), with a 95% interval.

    The detector restarts after each alarm, so alarms renew: the estimate is steps / alarms,
    and its interval comes from the alarm rate's normal interval over the independent streams
    (with no alarm at all, the lower end is the Poisson bound steps / 3.69).
    """
    counts = _batched_steps(detector, n_streams, key, n_steps,
                            lambda t, k: sample(k, (n_streams,)),
                            lambda acc, t, drift: acc + drift.astype(jnp.int32),
                            jnp.zeros(n_streams, jnp.int32))
    counts = np.asarray(counts, dtype=np.float64)
    alarms, steps = int(counts.sum()), n_streams * n_steps
    if alarms == 0:
        return FalseAlarms(math.inf, steps / POISSON_ZERO_95, math.inf, 0, steps)
    rate = counts.mean() / n_steps
    half = Z95 * counts.std(ddof=1) / math.sqrt(n_streams) / n_steps if n_streams > 1 else math.inf
    low_rate, high_rate = rate - half, rate + half
    return FalseAlarms(float(1.0 / rate), float(1.0 / high_rate), float(1.0 / low_rate) if low_rate > 0 else math.inf,
                       alarms, steps)


def detection_delay(detector: Detector, before: Sampler, after: Sampler, key: jax.Array,
                    n_streams: int = 1000, change_at: int = 500, horizon: int = 2000) -> Delay:
    """The delay from a shift to its detection: each stream draws ``change_at`` values from
    ``before`` and then up to ``horizon`` from ``after``; the delay counts the values after the
    shift up to and including the first alarm.  Streams with a false alarm before the shift are
    left out (their detector restarted, and may have learnt a reference across the shift), as in
    the conditional delay of the change-detection literature.  Returns the mean delay over the
    streams that detected within the horizon, its 95% normal interval, and that fraction.
    """
    def sample_at(t, k):
        return jnp.where(t < change_at, before(k, (n_streams,)), after(jax.random.fold_in(k, 1), (n_streams,)))

    def record(acc, t, drift):
        early, first = acc
        early = early | (drift & (t < change_at))
        first = jnp.where((first < 0) & drift & (t >= change_at), t - change_at + 1, first)
        return early, first

    early, first = _batched_steps(detector, n_streams, key, change_at + horizon, sample_at, record,
                                  (jnp.zeros(n_streams, bool), jnp.full(n_streams, -1, jnp.int32)))
    first = np.asarray(first, dtype=np.float64)[~np.asarray(early)]
    delays = first[first > 0]
    if len(delays) == 0:
        return Delay(math.inf, math.inf, math.inf, 0.0, len(first))
    half = Z95 * delays.std(ddof=1) / math.sqrt(len(delays)) if len(delays) > 1 else math.inf
    mean = float(delays.mean())
    return Delay(mean, float(mean - half), float(mean + half), len(delays) / len(first), len(first))


# ------------------------------------------------------------------------------ presets
def returns_sampler(p_win: float) -> Sampler:
    """Episode returns of +1 (probability p_win) or -1: of all returns in [-1, 1] with that
    mean, the ones of largest variance, on which the return presets are calibrated."""
    return lambda key, shape: jnp.where(jax.random.bernoulli(key, p_win, shape), 1.0, -1.0)


def violations_sampler(rate: float) -> Sampler:
    """Violation indicators: 1 with probability ``rate``, else 0."""
    return lambda key, shape: jax.random.bernoulli(key, rate, shape).astype(jnp.asarray(0.0).dtype)


# Calibrated by `python -m aligned_rl.detectors` (docs/monitoring.md): on the stationary stream
# of largest variance of each kind (returns of +-1 with even odds, violations at rate 0.5) the
# mean run length between false alarms is at least 1000 episodes, the lower end of its 95%
# interval included.  PageHinkley's delta and CUSUM's k are half the shift each is meant to
# catch: a fall of 0.5 in the mean return, a rise of 0.2 in the violation rate.
RETURN_DETECTORS = {
    "page_hinkley": PageHinkley(min_instances=30, delta=0.25, threshold=10.0, mode="down"),
    "cusum": CUSUM(k=0.25, h=9.0, mode="down", burn_in=100),
    "adwin": ADWIN(delta=0.8),
}
VIOLATION_DETECTORS = {
    "page_hinkley": PageHinkley(min_instances=30, delta=0.1, threshold=6.0, mode="up"),
    "cusum": CUSUM(k=0.1, h=5.0, mode="up", burn_in=100),
    "adwin": ADWIN(delta=0.8),
}


def calibration_table(n_streams: int = 200, n_steps: int = 4000, seed: int = 0,
                      horizon: int = 1000, change_at: int = 500) -> list[dict]:
    """One row per (stream kind, detector, stream): the false-alarm run length on stationary
    streams and the delay after a shift, for the presets above."""
    key = jax.random.PRNGKey(seed)
    cases = [
        ("returns", RETURN_DETECTORS, "win 0.5 (mean 0)", returns_sampler(0.5), returns_sampler(0.25),
         "mean 0 -> -0.5"),
        ("returns", RETURN_DETECTORS, "win 0.8 (mean 0.6)", returns_sampler(0.8), returns_sampler(0.55),
         "mean 0.6 -> 0.1"),
        ("violations", VIOLATION_DETECTORS, "rate 0.5", violations_sampler(0.5), violations_sampler(0.7),
         "rate 0.5 -> 0.7"),
        ("violations", VIOLATION_DETECTORS, "rate 0.05", violations_sampler(0.05), violations_sampler(0.25),
         "rate 0.05 -> 0.25"),
    ]
    rows = []
    for i, (kind, presets, stream, stationary, shifted, shift) in enumerate(cases):
        for j, (name, detector) in enumerate(presets.items()):
            k = jax.random.fold_in(key, 100 * i + j)
            fa = false_alarms(detector, stationary, jax.random.fold_in(k, 0), n_streams, n_steps)
            dd = detection_delay(detector, stationary, shifted, jax.random.fold_in(k, 1), n_streams,
                                 change_at, horizon)
            rows.append(dict(kind=kind, detector=name, stream=stream, false_alarms=fa, shift=shift, delay=dd))
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of calibration_table as a Markdown table."""
    def interval(mean, low, high, digits=0):
        return f"{mean:,.{digits}f} [{low:,.{digits}f}, {high:,.{digits}f}]"

    lines = ["| stream | detector | stationary stream | steps between false alarms [95% CI] (alarms) "
             "| shift | delay [95% CI] (detected, of streams without an earlier alarm) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fa, dd = r["false_alarms"], r["delay"]
        lines.append(f"| {r['kind']} | {r['detector']} | {r['stream']} "
                     f"| {interval(fa.mean_run_length, fa.low, fa.high)} ({fa.alarms:,}) "
                     f"| {r['shift']} | {interval(dd.mean, dd.low, dd.high, 1)} ({dd.detected:.1%} of {dd.streams}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the presets' false alarms and detection delays.")
    parser.add_argument("--streams", type=int, default=200, help="independent streams per measurement")
    parser.add_argument("--steps", type=int, default=4000, help="length of each stationary stream")
    parser.add_argument("--horizon", type=int, default=1000, help="values watched after a shift")
    parser.add_argument("--change-at", type=int, default=500, help="values drawn before a shift")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = calibration_table(args.streams, args.steps, args.seed, args.horizon, args.change_at)
    print(format_table(rows))


if __name__ == "__main__":
    main()
