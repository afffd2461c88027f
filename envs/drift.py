"""Drift, as data: a family's environment params moving over deployment time.

A deployed agent meets environments that change: a pole grows longer, a labour market
shifts, lava appears where it never was in training.  A *drift schedule* says how the
params of a batch of environments move from the training distribution to another as a
function of the deployment step ``t``; it is data (a pytree), and its application is a
pure, jittable function, so one compiled step serves a whole batch of drifting
environments and many deployments run vmapped.

What may drift is the family's declaration (``EnvSpec.drift``, a :class:`DriftSpec`):

* numeric params, each with its valid range, and the family's rule that recomputes derived
  fields after a change (CartPole keeps ``total_mass`` and ``polemass_length``);
* named target priors for *structural* drift: a target batch of params drawn from another
  distribution of the same environment class (e.g. distributional shift's test layouts).

A schedule (:class:`DriftConfig`, a typed config with OmegaConf-friendly fields) names the
family, the kind (``abrupt`` or ``gradual``), the window ``[start, end]`` in deployment
steps, the numeric targets ``to`` and the target prior ``to_prior``.  Its fraction is

    f(t) = 1[t >= start]                                   (abrupt, end = start)
    f(t) = clip((t - start) / (end - start), 0, 1)         (gradual, end > start)

and :func:`drifted` applies it to a params batch ``[N]``:

1. structural: environment ``i`` switches from ``base_i`` to ``target_i`` once ``u_i < f(t)``,
   with ``u_i`` uniform on [0, 1) drawn once per environment: a gradual drift moves a growing
   share ``f(t)`` of the environments to the new distribution, an abrupt one all at once;
2. numeric: every param named in ``to`` becomes ``(1 - f) x + f to`` (``x`` its value after
   step 1), exactly ``x`` before the window and exactly ``to`` after it; then the family's
   ``derive`` recomputes the derived fields (only once the drift has begun, so that before
   ``start`` the params are bit for bit the ones given).

To deploy under a drift: validate the schedule (:func:`load_scenario` or :func:`validate`),
draw the base batch from the family's prior as usual, the target batch once up front with
:func:`draw_target` (``None`` when the schedule has no ``to_prior``) and the per-environment
uniforms with :func:`draw_uniforms`, build the :class:`Schedule` with :func:`schedule`,
then call ``drifted(sched, base, target, u, t)`` inside the jitted step with the traced
deployment step ``t``.  ``switched`` applies the structural switch alone to any batch with
a leading environment axis, e.g. the description lengths ``bits`` of base and target.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments.environment import Environment
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aligned_rl.envs import registry
from aligned_rl.envs.family import DriftRange, DriftSpec, ParamBatch

__all__ = [
    "KINDS", "DriftConfig", "DriftRange", "DriftSpec", "Schedule", "drift_families", "drift_spec", "drifted",
    "draw_target", "draw_uniforms", "fraction", "from_dict", "load_scenario", "schedule", "stack", "switched",
    "validate",
]

KINDS = ("abrupt", "gradual")


@dataclasses.dataclass
class DriftConfig:
    """A drift schedule, as a config (the ``drift:`` section of a scenario file)."""

    family: str = ""  # a registered family that declares drift (EnvSpec.drift)
    kind: str = "gradual"  # "abrupt": a step at `start`; "gradual": linear over [start, end]
    start: int = 0  # deployment step at which the drift begins
    end: int = 0  # deployment step at which it is complete (= start for an abrupt drift)
    to: dict[str, float] = dataclasses.field(default_factory=dict)  # numeric param -> its value after the drift
    to_prior: Optional[str] = None  # a target prior the family ships (structural drift)
    description: str = ""  # what the scenario models, in words


# --------------------------------------------------------------------------- declarations
def drift_families() -> list[str]:
    """Registered families that declare what may drift."""
    return [name for name in registry.registered_families() if registry.spec(name).drift is not None]


def drift_spec(family: str) -> DriftSpec:
    """The :class:`DriftSpec` of ``family``; a ValueError naming the fix if it has none."""
    try:
        spec = registry.spec(family)
    except KeyError:
        raise ValueError(
            f"drift.family: unknown family {family!r}; set it to one of the families that declare drift: "
            f"{drift_families()}"
        ) from None
    if spec.drift is None:
        raise ValueError(
            f"drift.family: family {family!r} declares no drift (its EnvSpec.drift is None); set it to one of "
            f"{drift_families()}, or declare a DriftSpec in its registration"
        )
    return spec.drift


def _declared(spec: DriftSpec) -> str:
    return ", ".join(f"{name} in [{r.low:g}, {r.high:g}]" for name, r in sorted(spec.params.items())) or "none"


def validate(config: DriftConfig) -> None:
    """Raise ValueError, naming the fix, if ``config`` is not a schedule its family can follow."""
    spec = drift_spec(config.family)
    if config.kind not in KINDS:
        raise ValueError(f"drift.kind must be one of {list(KINDS)}, got {config.kind!r}")
    if config.start < 0:
        raise ValueError(f"drift.start={config.start} is negative; deployment steps count from 0")
    if config.end < config.start:
        raise ValueError(
            f"drift.end={config.end} is before drift.start={config.start}; set drift.end >= drift.start"
        )
    if config.kind == "abrupt" and config.end != config.start:
        raise ValueError(
            f"an abrupt drift happens at one step: set drift.end = drift.start ({config.start}), "
            f"not {config.end}, or use drift.kind=gradual for a drift over [{config.start}, {config.end}]"
        )
    if config.kind == "gradual" and config.end == config.start:
        raise ValueError(
            f"a gradual drift needs drift.end > drift.start (both are {config.start}); widen the window, "
            "or use drift.kind=abrupt for a step at drift.start"
        )
    for name, value in config.to.items():
        if name not in spec.params:
            raise ValueError(
                f"drift.to: family {config.family!r} declares no drift param {name!r}; "
                f"declared: {_declared(spec)}"
            )
        r = spec.params[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"drift.to.{name} must be a finite number, got {value!r}")
        if not r.low <= value <= r.high:
            raise ValueError(
                f"drift.to.{name}={value:g} is outside its valid range [{r.low:g}, {r.high:g}]; "
                "choose a value inside it"
            )
    if config.to_prior is not None and config.to_prior not in spec.priors:
        raise ValueError(
            f"drift.to_prior: family {config.family!r} ships no target prior {config.to_prior!r}; "
            f"shipped: {sorted(spec.priors) or 'none'}"
        )
    if not config.to and config.to_prior is None:
        raise ValueError(
            f"the schedule moves nothing: set drift.to (declared params: {_declared(spec)}) or drift.to_prior "
            f"(shipped priors: {sorted(spec.priors) or 'none'})"
        )


# --------------------------------------------------------------------------- loading
def from_dict(data: Any) -> DriftConfig:
    """A validated :class:`DriftConfig` from the ``drift:`` section (a mapping or an OmegaConf node)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DriftConfig), data)
        config: DriftConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        keys = ", ".join(f.name for f in dataclasses.fields(DriftConfig))
        raise ValueError(
            f"drift config: bad or unknown key 'drift.{key}': {str(err).splitlines()[0]} (keys: {keys})"
        ) from err
    config.to = {name: float(value) for name, value in config.to.items()}
    validate(config)
    return config


def load_scenario(path: str | Path) -> DriftConfig:
    """Read a scenario file (one top-level ``drift:`` section) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"drift scenario {str(path)!r} does not exist")
    try:
        data = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors and the like
        raise ValueError(f"{path}: cannot parse YAML: {err}") from err
    if not OmegaConf.is_dict(data) or set(data.keys()) != {"drift"}:
        found = sorted(data.keys()) if OmegaConf.is_dict(data) else type(data).__name__
        raise ValueError(f"{path}: a drift scenario holds one top-level 'drift:' section, found {found}")
    try:
        return from_dict(data.drift)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# --------------------------------------------------------------------------- the schedule as data
@struct.dataclass
class Schedule:
    """A validated schedule as a pytree: the numbers are arrays (they may be traced, stacked
    over deployments and vmapped); the family and the target prior are static."""

    start: jax.Array  # int32
    end: jax.Array  # int32
    gradual: jax.Array  # bool
    to: dict[str, jax.Array]  # float32 each
    family: str = struct.field(pytree_node=False, default="")
    to_prior: Optional[str] = struct.field(pytree_node=False, default=None)


def schedule(config: DriftConfig | Schedule) -> Schedule:
    """The :class:`Schedule` of a config (validated first); a Schedule is returned as it is."""
    if isinstance(config, Schedule):
        return config
    validate(config)
    return Schedule(
        start=jnp.int32(config.start),
        end=jnp.int32(config.end),
        gradual=jnp.bool_(config.kind == "gradual"),
        to={name: jnp.float32(value) for name, value in sorted(config.to.items())},
        family=config.family,
        to_prior=config.to_prior,
    )


def stack(schedules: Sequence[DriftConfig | Schedule]) -> Schedule:
    """Schedules of several deployments stacked on a leading axis (for ``jax.vmap``).  They must
    share the family, the drifting param names and the target prior; their numbers may differ."""
    built = [schedule(s) for s in schedules]
    first = built[0]
    for s in built[1:]:
        if (s.family, s.to_prior, sorted(s.to)) != (first.family, first.to_prior, sorted(first.to)):
            raise ValueError(
                "stacked schedules must share the family, the drifting params and the target prior: "
                f"{(first.family, sorted(first.to), first.to_prior)} vs {(s.family, sorted(s.to), s.to_prior)}"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *built)


def fraction(sched: DriftConfig | Schedule, t: Any) -> jax.Array:
    """float32: how far the drift has gone at deployment step ``t`` (0 before, 1 after)."""
    sched = schedule(sched)
    t = jnp.asarray(t).astype(jnp.int32)
    elapsed = (t - sched.start).astype(jnp.float32)
    span = jnp.maximum(sched.end - sched.start, 1).astype(jnp.float32)
    ramp = jnp.clip(elapsed / span, 0.0, 1.0)
    step = (t >= sched.start).astype(jnp.float32)
    return jnp.where(sched.gradual, ramp, step)


def _check_target(sched: Schedule, target: Any) -> None:
    if sched.to_prior is None and target is not None:
        raise ValueError("the schedule has no drift.to_prior: pass target=None (draw_target returns None for it)")
    if sched.to_prior is not None and target is None:
        raise ValueError(
            f"the schedule drifts to the prior {sched.to_prior!r}: pass the target batch drawn once with "
            "draw_target(config, env, key, n)"
        )


def switched(sched: DriftConfig | Schedule, base: Any, target: Any, u: jax.Array, t: Any) -> Any:
    """The structural part alone, on any pytree with a leading environment axis [N] (params,
    description lengths): ``target_i`` where ``u_i < f(t)``, else ``base_i``.  Without a
    target prior in the schedule, ``base`` itself."""
    sched = schedule(sched)
    _check_target(sched, target)
    if sched.to_prior is None:
        return base
    on = jnp.asarray(u) < fraction(sched, t)

    def pick(b, tg):
        b, tg = jnp.asarray(b), jnp.asarray(tg)
        mask = on.reshape(on.shape + (1,) * (b.ndim - on.ndim))
        return jnp.where(mask, tg, b)

    return jax.tree.map(pick, base, target)


def _lerp(x: Any, to: jax.Array, f: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return ((1.0 - f) * x + f * to).astype(dtype)


def drifted(sched: DriftConfig | Schedule, base: Any, target: Any, u: jax.Array, t: Any) -> Any:
    """The params batch [N] at deployment step ``t`` (jittable; ``t`` may be traced).

    ``base``: the params batch from the family's prior; ``target``: the batch from the
    schedule's target prior (``None`` without one), drawn once; ``u``: float32[N] uniforms,
    drawn once; see the module docstring for the rule.
    """
    sched = schedule(sched)
    params = switched(sched, base, target, u, t)
    if not sched.to:
        return params
    f = fraction(sched, t)
    moved = params.replace(**{name: _lerp(getattr(params, name), value, f) for name, value in sched.to.items()})
    derive = drift_spec(sched.family).derive
    if derive is None:
        return moved
    begun = f > 0
    return jax.tree.map(lambda d, m: jnp.where(begun, d, m), derive(moved), moved)


# --------------------------------------------------------------------------- what a deployment draws
def draw_target(sched: DriftConfig | Schedule, env: Environment, key: jax.Array, n: int) -> ParamBatch | None:
    """The target batch of ``n`` params from the schedule's ``to_prior`` (with their description
    lengths), or ``None`` when the schedule has none.  Drawn once, up front, on the host for
    the families whose samplers run there (not jittable)."""
    sched = schedule(sched)
    if sched.to_prior is None:
        return None
    return drift_spec(sched.family).priors[sched.to_prior](env, key, n)


def draw_uniforms(key: jax.Array, n: int) -> jax.Array:
    """float32[n] uniforms on [0, 1): environment i switches to its target once f(t) > u_i."""
    return jax.random.uniform(key, (n,), jnp.float32)
