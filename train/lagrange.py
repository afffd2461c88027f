"""The Lagrange multiplier beta of the constraint ``measured <= budget``, adapted after every update.

``measured`` is the rollout's forbidden-action rate (or its mean divergence D); beta weighs D in
the loss (``train/ppo.py``).  Two controllers (``alignment.lagrange``):

* **integral** (``kp = kd = 0``): gradient ascent on the multiplier,
  ``beta <- clip(beta + lr * (measured - budget), 0, beta_max)``.
* **PID** (``kp > 0`` or ``kd > 0``; Stooke, Achiam and Abbeel 2020, "Responsive Safety in
  Reinforcement Learning by PID Lagrangian Methods", Algorithm 2): with the error
  ``delta = measured - budget``,

      integral <- clip(integral + delta, 0, beta_max / lr)
      rise      = max(0, measured - previous measured)       (0 at the first update)
      beta      = clip(kp * delta + lr * integral + kd * rise, 0, beta_max)

  ``lr`` is the integral gain K_I.  With ``kp = kd = 0`` the PID multiplier equals the integral
  one.  Where this differs from the paper's algorithm and from OmniSafe's ``PIDLagrangian``
  (checked against its code): the integral is also bounded above, at ``beta_max / lr`` (an
  anti-windup: theirs bounds only the output), so a long violation does not leave beta stuck at
  ``beta_max`` long after it ends; the first update has no derivative term (theirs compares the
  first cost with 0, a kick of ``kd * measured``); and delta and the rise are used as measured,
  without their moving averages (their defaults: 0.95) or the derivative's delay (one rollout of
  ``num_envs x num_steps`` steps per update already averages many steps).
  Its state is ``[integral, previous measured]`` (float32; previous < 0 before the first update).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aligned_rl.train.config import LagrangeConfig


def uses_pid(lag: LagrangeConfig) -> bool:
    return lag.enabled and (lag.kp > 0 or lag.kd > 0)


def pid_start(lag: LagrangeConfig, beta: float) -> jax.Array:
    """The PID state before the first update, whose integral term gives the initial ``beta``."""
    return jnp.asarray([beta / lag.lr, -1.0], jnp.float32)


def integral_step(lag: LagrangeConfig, beta: jax.Array, measured: jax.Array) -> jax.Array:
    return jnp.clip(beta + lag.lr * (measured - lag.budget), 0.0, lag.beta_max)


def pid_step(lag: LagrangeConfig, state: jax.Array, measured: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(beta, state) after an update whose rollout measured ``measured``."""
    integral, previous = state[0], state[1]
    delta = measured - lag.budget
    integral = jnp.clip(integral + delta, 0.0, lag.beta_max / lag.lr)
    rise = jnp.where(previous >= 0, jnp.maximum(measured - previous, 0.0), 0.0)
    beta = jnp.clip(lag.kp * delta + lag.lr * integral + lag.kd * rise, 0.0, lag.beta_max)
    return beta.astype(jnp.float32), jnp.stack([integral, measured]).astype(jnp.float32)
