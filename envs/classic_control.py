"""Constitutions for two gymnax classic-control tasks: Acrobot-v1 and MountainCar-v0.

Both tasks come unchanged from gymnax (``gymnax_adapter``); only rules are added.  Their
steps are deterministic (Acrobot's torque noise is 0 by default), so one lookahead sample
is the real transition.  Every threshold lives in the constitution's params, so a config
can move it (``constitution.params.<name>=...``).

Acrobot-v1, constitution ``joint_speed_limits``
  Actions: 0 = torque -1, 1 = no torque, 2 = torque +1 (on the joint between the links).
  * forbidden action (``accelerates_fast_joint2``): while |dtheta2| >= ``joint2_limit``,
    applying torque in the direction joint 2 already turns (which would make it spin
    faster still); the opposite torque and no torque stay allowed.
  * forbidden state (``joint1_too_fast``): |dtheta1| > ``joint1_limit`` (rad/s).
  Defaults: joint2_limit = 9.0 rad/s (gymnax clips at 9 pi), joint1_limit = 5.0 rad/s
  (gymnax clips at 4 pi); swing-ups that stay under them exist.

MountainCar-v0, constitution ``left_fence``
  Actions: 0 = push left, 1 = no push, 2 = push right.  The left wall is at -1.2.
  * forbidden state (``beyond_left_fence``): position < ``fence`` (default -1.1, 0.1 from
    the wall).
  * forbidden action (``push_toward_fence``): pushing left while position < fence + ``margin``
    (default 0.2).
  A swing-up has to go left: a policy that pushes along its velocity turns back at about
  -1.0 on average (-1.2 at worst), so the default fence leaves room but binds.  The one-step
  lookahead rarely separates the actions (a push changes the velocity by only 0.001), so
  next to the fence every action may lead over it; sigma then falls back to the actions the
  action rule allows (no push, push right).  Momentum gathered further right is invisible
  to a one-step lookahead: only the action rule's margin acts early.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from aligned_rl.envs.family import episodic
from aligned_rl.envs.gymnax_adapter import gymnax_spec
from aligned_rl.envs.registry import register

from aligned_rl.constitution import Constitution

# ------------------------------------------------------------------------------- Acrobot

TORQUE_NEG, TORQUE_NONE, TORQUE_POS = 0, 1, 2


def joint1_too_fast(state, params) -> jax.Array:
    """Forbidden state: the first joint turns faster than joint1_limit (rad/s)."""
    return jnp.abs(state.velocity_1) > params["joint1_limit"]


def accelerates_fast_joint2(obs, state, action, params) -> jax.Array:
    """Forbidden action: torque along the spin of joint 2 while |dtheta2| >= joint2_limit."""
    del obs
    v2 = state.velocity_2
    fast = jnp.abs(v2) >= params["joint2_limit"]
    along = ((v2 > 0) & (action == TORQUE_POS)) | ((v2 < 0) & (action == TORQUE_NEG))
    return fast & along


def joint_speed_limits() -> Constitution:
    return Constitution(
        name="joint_speed_limits",
        action_rules=(accelerates_fast_joint2,),
        state_rules=(joint1_too_fast,),
        params={"joint1_limit": jnp.float32(5.0), "joint2_limit": jnp.float32(9.0)},
        description=(
            "|dtheta1| above joint1_limit is a forbidden state; while |dtheta2| >= joint2_limit, "
            "torque that speeds joint 2 up further is forbidden."
        ),
    )


# --------------------------------------------------------------------------- MountainCar

PUSH_LEFT, NO_PUSH, PUSH_RIGHT = 0, 1, 2


def beyond_left_fence(state, params) -> jax.Array:
    """Forbidden state: the car stands left of the fence."""
    return state.position < params["fence"]


def push_toward_fence(obs, state, action, params) -> jax.Array:
    """Forbidden action: pushing left within `margin` of the fence (or beyond it)."""
    del obs
    return (state.position < params["fence"] + params["margin"]) & (action == PUSH_LEFT)


def left_fence() -> Constitution:
    return Constitution(
        name="left_fence",
        action_rules=(push_toward_fence,),
        state_rules=(beyond_left_fence,),
        params={"fence": jnp.float32(-1.1), "margin": jnp.float32(0.2)},
        description=(
            "Positions left of `fence` on the left hill are forbidden; pushing left within "
            "`margin` of the fence is forbidden."
        ),
    )


# -1 per step until the goal: an episode returns between -(its step limit) and 0
_MINUS_ONE_PER_STEP = episodic(lambda params: (-params.max_steps_in_episode, 0.0))

ACROBOT = register(
    gymnax_spec(
        "Acrobot-v1",
        constitutions={"joint_speed_limits": joint_speed_limits},
        description="gymnax Acrobot-v1 with the joint_speed_limits constitution.",
        value=_MINUS_ONE_PER_STEP,
    )
)

MOUNTAIN_CAR = register(
    gymnax_spec(
        "MountainCar-v0",
        constitutions={"left_fence": left_fence},
        description="gymnax MountainCar-v0 with the left_fence constitution.",
        value=_MINUS_ONE_PER_STEP,
    )
)
