"""Constitutions: rules that forbid actions in states and rules that forbid reaching states.

A :class:`Constitution` is data plus jittable rules.  Its numeric parameters live in a
pytree (``params``) that every rule receives, so a batch of different constitutions
can be vmapped exactly like a batch of environment parameters.

* An action rule ``rule(obs, state, action, params) -> bool`` forbids ``action`` in
  the state it is shown.
* An invariance ``transform(obs, params) -> obs'`` says what the decision must not depend
  on: pi(.|obs) must equal pi(.|obs'), e.g. with a protected attribute flipped.  The
  learner measures D_cf = JS(pi(.|obs), pi(.|obs')) in bits, exactly, and adds it to the
  loss with the same weight as D(sigma, pi).
* A state rule ``rule(state, params) -> bool`` forbids being in ``state``.  It becomes
  an action rule by one-step lookahead: environments are pure functions, so
  ``vmap(env.step_env, over actions)`` tells where every action leads.  For a
  stochastic step, ``lookahead_samples`` keys are drawn; the first is exactly the key
  the real step will use (the first half of ``jax.random.split(step_key)``, as in
  gymnax's ``Environment.step``), so for a deterministic step the lookahead is the
  real transition.  An action is forbidden when the fraction of sampled next states
  that break a state rule is greater than ``lookahead_threshold`` (default 0: any
  sampled violation forbids the action).

The reference policy is ``sigma(a|s)``: uniform over the allowed actions, with a floor
``eps`` on the forbidden ones, renormalised.  If every action of a state is forbidden,
sigma as defined does not exist.  The defined fallback honours what can still be
honoured: among the actions no action rule forbids (all actions, if the action rules
forbid every one), the allowed ones are those least likely to lead into a forbidden
state.  In a deterministic environment whose every next state is forbidden, that is
exactly the actions the action rules allow.  The state is flagged in ``all_forbidden``
so the rate is logged.  Nothing divides by zero.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from aligned_rl.codes import elias_gamma_bits

ActionRule = Callable[[jax.Array, Any, jax.Array, Any], jax.Array]
StateRule = Callable[[Any, Any], jax.Array]
ObsTransform = Callable[[jax.Array, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class Constitution:
    """Rules plus the numbers they read.

    Attributes:
      name: short identifier used in configs and checkpoint metadata.
      action_rules: ``(obs, state, action, params) -> bool``; True means forbidden.
      state_rules: ``(state, params) -> bool``; True means the state is forbidden.
      invariances: ``(obs, params) -> obs``; the policy must act the same on both.
      params: default parameter pytree handed to every rule (vmappable).
      eps: floor of sigma on forbidden actions, before renormalising (>= 0).
      lookahead_samples: keys sampled per action to look one step ahead.
      lookahead_threshold: forbid an action when the sampled probability of reaching a
        forbidden state exceeds this (in [0, 1)).
      description: one paragraph, shown by ``aligned-rl constitutions``.
    """

    name: str
    action_rules: tuple[ActionRule, ...] = ()
    state_rules: tuple[StateRule, ...] = ()
    invariances: tuple[ObsTransform, ...] = ()
    params: Any = dataclasses.field(default_factory=dict, compare=False, hash=False)
    eps: float = 0.0
    lookahead_samples: int = 1
    lookahead_threshold: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"constitution {self.name!r}: eps must be a finite number >= 0, got {self.eps}")
        if not isinstance(self.lookahead_samples, int) or self.lookahead_samples < 1:
            raise ValueError(
                f"constitution {self.name!r}: lookahead_samples must be >= 1, got {self.lookahead_samples}"
            )
        if not 0.0 <= self.lookahead_threshold < 1.0:
            raise ValueError(
                f"constitution {self.name!r}: lookahead_threshold must be in [0, 1), "
                f"got {self.lookahead_threshold}"
            )

    @property
    def is_empty(self) -> bool:
        return not self.action_rules and not self.state_rules and not self.invariances

    def with_params(self, **overrides: float) -> "Constitution":
        """A copy whose params have the given entries replaced (unknown names are refused)."""
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            raise KeyError(
                f"constitution {self.name!r} has no parameter(s) {unknown}; "
                f"its parameters are {sorted(self.params)}"
            )
        return dataclasses.replace(self, params={**self.params, **overrides})

    def fingerprint(self) -> str:
        """A hash of everything that defines sigma: rule source, params, eps, lookahead."""
        parts = {
            "name": self.name,
            "action_rules": [_source(r) for r in self.action_rules],
            "state_rules": [_source(r) for r in self.state_rules],
            "invariances": [_source(r) for r in self.invariances],
            "params": jax.tree.map(lambda x: np.asarray(x).tolist(), self.params),
            "eps": self.eps,
            "lookahead_samples": self.lookahead_samples,
            "lookahead_threshold": self.lookahead_threshold,
        }
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _source(fn: Callable) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


UNCONSTRAINED = Constitution(name="none", description="No rules: every action is allowed everywhere.")


class Judgement(NamedTuple):
    """What a constitution says about one state (leading batch axes allowed).

    forbidden: [A] actions the rules forbid (after lookahead), before any fallback.
    allowed: [A] actions sigma treats as allowed (the least-bad fallback when all are forbidden).
    sigma: [A] the reference policy.
    all_forbidden: every action was forbidden, so the fallback was used.
    in_forbidden_state: the state itself breaks a state rule.
    """

    forbidden: jax.Array
    allowed: jax.Array
    sigma: jax.Array
    all_forbidden: jax.Array
    in_forbidden_state: jax.Array


def reference_policy(
    forbidden: jax.Array, eps: float, fallback: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """sigma from a forbidden-action mask [..., A]: returns (sigma, allowed, all_forbidden).

    ``fallback`` [..., A] is the set treated as allowed where every action is forbidden
    (default: every action).  It must hold at least one action.
    """
    all_forbidden = jnp.all(forbidden, axis=-1)
    if fallback is None:
        fallback = jnp.ones_like(forbidden)
    allowed = jnp.where(all_forbidden[..., None], fallback, ~forbidden)
    weights = jnp.where(allowed, 1.0, eps)
    sigma = weights / jnp.sum(weights, axis=-1, keepdims=True)  # sum >= 1: an allowed action exists
    return sigma, allowed, all_forbidden


def least_bad_actions(action_forbidden: jax.Array, violation_probability: jax.Array) -> jax.Array:
    """The fallback set: among actions no action rule forbids (or all, if none is left), those
    with the smallest probability of leading into a forbidden state."""
    candidates = ~action_forbidden
    candidates = jnp.where(jnp.any(candidates, axis=-1, keepdims=True), candidates, True)
    risk = jnp.where(candidates, violation_probability, jnp.inf)
    return candidates & (risk <= jnp.min(risk, axis=-1, keepdims=True))


def state_is_forbidden(constitution: Constitution, state: Any, params: Any) -> jax.Array:
    """True where ``state`` breaks any state rule."""
    verdict = jnp.zeros((), dtype=bool)
    for rule in constitution.state_rules:
        verdict = jnp.logical_or(verdict, rule(state, params))
    return verdict


def rule_verdicts(
    constitution: Constitution,
    params: Any,
    env: Any,
    env_params: Any,
    step_key: jax.Array,
    obs: jax.Array,
    state: Any,
    num_actions: int,
) -> tuple[jax.Array, jax.Array]:
    """For one (unbatched) state: (bool[A] forbidden by action rules,
    float[A] sampled probability that the action leads into a forbidden state)."""
    actions = jnp.arange(num_actions)
    action_forbidden = jnp.zeros((num_actions,), dtype=bool)
    for rule in constitution.action_rules:
        action_forbidden |= jax.vmap(lambda a: rule(obs, state, a, params))(actions)
    violation_probability = jnp.zeros((num_actions,), dtype=jnp.float32)
    if constitution.state_rules:
        step_keys = _lookahead_keys(step_key, constitution.lookahead_samples)

        def lands_forbidden(key: jax.Array, action: jax.Array) -> jax.Array:
            _, next_state, _, _, _ = env.step_env(key, state, action, env_params)
            return state_is_forbidden(constitution, next_state, params)

        per_key = jax.vmap(lambda k: jax.vmap(lambda a: lands_forbidden(k, a))(actions))(step_keys)
        violation_probability = jnp.mean(per_key.astype(jnp.float32), axis=0)
    return action_forbidden, violation_probability


def _lookahead_keys(step_key: jax.Array, samples: int) -> jax.Array:
    # gymnax's Environment.step hands the first half of split(key) to step_env.
    first = jax.random.split(step_key)[0]
    if samples == 1:
        return first[None]
    extra = jax.random.split(jax.random.fold_in(step_key, 1), samples - 1)
    return jnp.concatenate([first[None], extra], axis=0)


def judge(
    constitution: Constitution,
    params: Any,
    env: Any,
    env_params: Any,
    step_key: jax.Array,
    obs: jax.Array,
    state: Any,
    num_actions: int,
) -> Judgement:
    """Everything the learner needs from the constitution in one state (unbatched; vmap it)."""
    action_forbidden, violation_probability = rule_verdicts(
        constitution, params, env, env_params, step_key, obs, state, num_actions
    )
    forbidden = action_forbidden | (violation_probability > constitution.lookahead_threshold)
    fallback = least_bad_actions(action_forbidden, violation_probability)
    sigma, allowed, all_forbidden = reference_policy(forbidden, constitution.eps, fallback)
    return Judgement(
        forbidden=forbidden,
        allowed=allowed,
        sigma=sigma,
        all_forbidden=all_forbidden,
        in_forbidden_state=state_is_forbidden(constitution, state, params),
    )


def forbidden_action_mask(
    constitution: Constitution,
    params: Any,
    env: Any,
    env_params: Any,
    step_key: jax.Array,
    obs: jax.Array,
    state: Any,
    num_actions: int,
) -> jax.Array:
    """bool[A]: which actions the constitution forbids in one (unbatched) state."""
    return judge(constitution, params, env, env_params, step_key, obs, state, num_actions).forbidden


def shield(logits: jax.Array, allowed: jax.Array) -> jax.Array:
    """Forbidden actions get -inf logits, so a policy drawing from the result never takes one
    (sigma's fallback keeps at least one action allowed in every state)."""
    return jnp.where(allowed, logits, -jnp.inf)


def violates(judgement: Judgement, action: jax.Array) -> jax.Array:
    """bool[B]: the action taken ([B] ints) is one sigma does not allow (the least-bad fallback
    counts as allowed where every action is forbidden)."""
    return ~jnp.take_along_axis(judgement.allowed, action[..., None], axis=-1)[..., 0]


# ------------------------------------------------------------------------------ description length
def description_bits(constitution: Constitution, family_constitutions: Any) -> int:
    """K(C): the length in bits of a prefix-free code of ``constitution`` among those of its family.

    The code is the Elias-gamma code of 1 + the constitution's index among the names of the
    family's registered constitutions sorted by name (``family_constitutions``, e.g.
    ``aligned_rl.envs.spec(env).constitutions``; ``"none"`` is not one of them), followed by
    each parameter of ``params`` in its machine width: 32 bits per float32 (or int32) number,
    so a leaf of shape (3,) costs 96 bits. The index fixes the rules, eps and the lookahead
    settings (the reference machine knows the family's registry), and with them how many
    parameter bits follow, so the whole code is prefix-free.

    It is a code length, not the Kolmogorov complexity: any realistic code gives tens of bits
    or more, so 2^-K(C) is tiny. ``aligned-rl tax`` lets a user choose another value
    (``constitution_bits``).
    """
    names = sorted(family_constitutions)
    if constitution.name not in names:
        raise ValueError(
            f"constitution {constitution.name!r} is not one of the family's registered constitutions "
            f"{names}; the unconstrained 'none' has no code here (it adds nothing to an environment)"
        )
    index_bits = elias_gamma_bits(1 + names.index(constitution.name))
    param_bits = sum(int(np.size(leaf)) * 8 * jnp.asarray(leaf).dtype.itemsize
                     for leaf in jax.tree.leaves(constitution.params))
    return index_bits + param_bits
