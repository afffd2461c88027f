"""CartPole-v1 (gymnax) with an example constitution to read and copy.

The track runs from -2.4 to 2.4.  The ``safe_zone`` constitution marks a stretch of it
as off limits and forbids pushing toward that stretch when close to it:

* forbidden state: the cart is inside ``[zone_low, zone_high]``;
* forbidden action: pushing toward the zone (right if the zone lies to the right, left
  if it lies to the left) while the cart is within ``margin`` of it, and, inside the
  zone, pushing deeper in (away from the centre of the track).

All three numbers live in the constitution's params, so a batch of different zones
can be vmapped.  CartPole's step is deterministic, so one lookahead sample is exact.
Note that CartPole's Euler step moves the cart by ``tau * x_dot`` whatever the action,
so the one-step lookahead of the state rule rarely separates the two actions: next to
the zone both actions may lead in.  Then every action is forbidden and sigma falls back
to the actions the action rule allows (see ``aligned_rl.constitution``): push away.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aligned_rl.constitution import Constitution
from aligned_rl.envs.family import DriftRange, DriftSpec, episodic
from aligned_rl.envs.gymnax_adapter import gymnax_spec
from aligned_rl.envs.registry import register

PUSH_LEFT, PUSH_RIGHT = 0, 1


def cart_in_zone(state, params) -> jax.Array:
    """Forbidden state: the cart stands inside the zone."""
    return (state.x >= params["zone_low"]) & (state.x <= params["zone_high"])


def push_toward_zone(obs, state, action, params) -> jax.Array:
    """Forbidden action: a push toward the zone from within ``margin`` of it, or, inside
    the zone, a push that leads deeper in (away from the centre of the track)."""
    x = obs[0]
    low, high, margin = params["zone_low"], params["zone_high"], params["margin"]
    approaching_from_left = (x >= low - margin) & (x < low) & (action == PUSH_RIGHT)
    approaching_from_right = (x > high) & (x <= high + margin) & (action == PUSH_LEFT)
    deeper_push = jnp.where(low + high >= 0, PUSH_RIGHT, PUSH_LEFT)
    inside = (x >= low) & (x <= high) & (action == deeper_push)
    return approaching_from_left | approaching_from_right | inside


def safe_zone() -> Constitution:
    return Constitution(
        name="safe_zone",
        action_rules=(push_toward_zone,),
        state_rules=(cart_in_zone,),
        params={
            "zone_low": jnp.float32(1.2),
            "zone_high": jnp.float32(2.4),
            "margin": jnp.float32(0.6),
        },
        description=(
            "The right end of the track, x in [zone_low, zone_high], is forbidden; pushing "
            "toward it from within `margin` of it is forbidden."
        ),
    )


def derive_masses(params):
    """gymnax's CartPole keeps two derived fields beside the masses and the length; after a
    drift they are recomputed so that the dynamics stay those of the new cart and pole."""
    return params.replace(
        total_mass=params.masscart + params.masspole,
        polemass_length=params.masspole * params.length,
    )


CARTPOLE_DRIFT = DriftSpec(
    params={
        "gravity": DriftRange(1.0, 30.0, "m/s^2"),
        "masscart": DriftRange(0.1, 10.0, "kg"),
        "masspole": DriftRange(0.01, 5.0, "kg"),
        "length": DriftRange(0.05, 5.0, "half the pole's length, m"),
        "force_mag": DriftRange(1.0, 50.0, "N per push"),
    },
    derive=derive_masses,
)

CARTPOLE = register(
    gymnax_spec(
        "CartPole-v1",
        constitutions={"safe_zone": safe_zone},
        description="gymnax CartPole-v1 with the safe_zone constitution.",
        value=episodic(lambda params: (0.0, params.max_steps_in_episode)),  # 1 per step the pole stays up
        drift=CARTPOLE_DRIFT,
    )
)
