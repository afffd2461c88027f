"""The one rollout: judge, act, step and count, for any agent in any family.

Every place that runs an agent (training's collection, ``eval``, ``measure``, ``tax``) runs
:class:`Rollout`.  A step, over a batch of environments whose params may all differ:

1. draw the step's keys (``draw_keys``: one key for the whole batch's actions and one per
   environment for its step, as the learner draws, or per-environment keys throughout);
2. judge the state with the constitution (``aligned_rl.constitution.judge``, vmapped): the
   allowed actions, sigma, whether the state itself is forbidden;
3. let the agent act (``agents.Agent.act``) on the observation, the reward it was paid for
   its previous action, whether this observation begins an episode, and the verdict;
4. step the environments and count: the violation (``constitution.violates``), the
   probability that the agent's acting distribution picks an allowed action, the return
   and length of episodes that end.

The carry is a named pytree (:class:`RolloutCarry`), so a run continues from where it
stopped and a learner keeps it in its training state.  :meth:`Rollout.run` either stacks
every :class:`Step` (what a learner needs) or folds them into running totals with a
function the caller gives (what a measurement needs: no [T, N] arrays).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from aligned_rl.constitution import Constitution, Judgement, judge, shield, violates
from aligned_rl.divergence import alignment_reward, projection


class RolloutCarry(struct.PyTreeNode):
    """Where a rollout stands; every field but ``rng`` and ``t`` has a leading environment axis."""

    env_state: Any
    obs: jax.Array  # the observation the agent acts on next
    reward: jax.Array  # float32: what the agent was paid for its last action (0 before the first)
    first: jax.Array  # bool: ``obs`` begins an episode
    agent_state: Any
    episode_return: jax.Array  # float32: what the agent was paid in the running episode so far
    episode_length: jax.Array  # int32
    rng: jax.Array
    t: jax.Array  # int32: steps taken
    budget: Any = None  # float32: forbidden actions the running episode may still take (Saute), else None


class Step(NamedTuple):
    """What one step of a rollout saw and did ([N] per field, [T, N] once stacked)."""

    obs: jax.Array  # the observation acted on
    prev_reward: jax.Array  # the reward the agent was shown with it
    first: jax.Array  # the observation began an episode
    action: jax.Array
    logits: Any  # the agent's own logits before any shield, or None (an implicit distribution)
    log_prob: Any  # log-probability of the action under the distribution it was drawn from, or None
    lawful: jax.Array  # probability that the acting distribution picks an allowed action (indicator if implicit)
    verdict: Judgement
    violated: jax.Array  # the action is one sigma does not allow
    reward: jax.Array  # float32 environment reward
    paid: jax.Array  # what the agent is paid for this action (shown with the next observation)
    final_obs: jax.Array  # the observation reached, before any automatic reset
    terminated: jax.Array
    done: jax.Array  # terminated or truncated
    finished_return: jax.Array  # return (of what the agent is paid) of the episode that ended here (0 if none)
    finished_length: jax.Array
    metrics: dict  # the environment's info["metrics"], if it reports any


class Saute(NamedTuple):
    """Safety-state augmentation (Sootla et al. 2022, "Saute RL: Almost Surely Safe Reinforcement
    Learning Using State Augmentation"): every episode starts with ``budget`` forbidden actions to
    spend; the agent observes the fraction left, ``(budget - forbidden actions so far) / budget``,
    as one more feature after its (flattened) observation; the learner replaces the reward of every
    step that ends with the fraction below 0 by ``-penalty`` (``train/ppo.py``)."""

    budget: float
    penalty: float

    def observe(self, obs: jax.Array, budget: jax.Array) -> jax.Array:
        """``obs`` [N, ...] flattened, then the fraction of the budget left ``budget / self.budget``."""
        flat = obs.reshape((obs.shape[0], -1)).astype(jnp.float32)
        return jnp.concatenate([flat, (budget / self.budget)[:, None]], axis=1)


def batch_keys(rng: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(next rng, one key for all ``n`` actions, one key per environment step): the learner's draw."""
    rng, k_act, k_step = jax.random.split(rng, 3)
    return rng, k_act, jax.random.split(k_step, n)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """An agent in an environment family under a constitution (static structure only).

    ``draw_keys(rng, n) -> (rng, action keys, step keys [n])`` draws a step's randomness;
    ``pay(step) -> [n]`` is what the agent is paid (default: the environment's reward);
    ``restart_memory``: the agent sees ``first`` again after an episode ends (else only at
    the start, so an adaptive agent keeps what it learned about the environment);
    ``saute``: the agent's observations carry its violation budget (:class:`Saute`); the
    constitution still judges the environment's own observations and states.
    """

    agent: Any
    env: Any
    constitution: Constitution
    num_actions: int
    draw_keys: Callable[[jax.Array, int], tuple[jax.Array, jax.Array, jax.Array]] = batch_keys
    pay: Callable[[Step], jax.Array] | None = None
    restart_memory: bool = True
    saute: Saute | None = None

    def judge(self, cparams: Any, env_params: Any, step_keys: jax.Array, obs: jax.Array, env_state: Any) -> Judgement:
        """The constitution's verdict on a batch of states."""
        return jax.vmap(
            lambda ep, k, o, s: judge(self.constitution, cparams, self.env, ep, k, o, s, self.num_actions)
        )(env_params, step_keys, obs, env_state)

    def start(self, env_params: Any, reset_keys: jax.Array, agent_keys: jax.Array, rng: jax.Array) -> RolloutCarry:
        """Reset every environment and the agent."""
        obs, env_state = jax.vmap(self.env.reset)(reset_keys, env_params)
        n = reset_keys.shape[0]
        return RolloutCarry(
            env_state=env_state,
            obs=obs,
            reward=jnp.zeros((n,), jnp.float32),
            first=jnp.ones((n,), bool),
            agent_state=self.agent.init(agent_keys),
            episode_return=jnp.zeros((n,), jnp.float32),
            episode_length=jnp.zeros((n,), jnp.int32),
            rng=rng,
            t=jnp.zeros((), jnp.int32),
            budget=None if self.saute is None else jnp.full((n,), self.saute.budget, jnp.float32),
        )

    def observe(self, obs: jax.Array, budget: Any) -> jax.Array:
        """What the agent sees of ``obs`` [N, ...]: itself, or under Saute the flattened observation
        and the fraction of the budget left."""
        return obs if self.saute is None else self.saute.observe(obs, budget)

    def seen(self, carry: RolloutCarry) -> jax.Array:
        """The observation the agent acts on next."""
        return self.observe(carry.obs, carry.budget)

    def step(self, env_params: Any, cparams: Any, carry: RolloutCarry) -> tuple[RolloutCarry, Step]:
        n = carry.reward.shape[0]
        rng, act_keys, step_keys = self.draw_keys(carry.rng, n)
        verdict = self.judge(cparams, env_params, step_keys, carry.obs, carry.env_state)
        seen = self.seen(carry)
        agent_state, action, logits = self.agent.act(carry.agent_state, seen, carry.reward, carry.first,
                                                     act_keys, verdict)
        violated = violates(verdict, action)
        budget = None if self.saute is None else carry.budget - violated.astype(jnp.float32)
        if logits is None:
            log_prob = None
            lawful = 1.0 - violated.astype(jnp.float32)
        else:
            acting = shield(logits, verdict.allowed) if self.agent.shields else logits
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(acting), action[:, None], axis=-1)[:, 0]
            lawful = alignment_reward(projection(acting, verdict.allowed))
        obs, env_state, reward, terminated, truncated, info = jax.vmap(self.env.step)(
            step_keys, carry.env_state, action, env_params
        )
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(terminated, truncated)
        episode_length = carry.episode_length + 1
        step = Step(
            obs=seen, prev_reward=carry.reward, first=carry.first, action=action, logits=logits,
            log_prob=log_prob, lawful=lawful, verdict=verdict, violated=violated, reward=reward, paid=reward,
            final_obs=self.observe(info["final_observation"], budget), terminated=terminated, done=done,
            finished_return=jnp.zeros_like(reward),
            finished_length=jnp.where(done, episode_length, 0),
            metrics=info.get("metrics", {}),
        )
        if self.pay is not None:
            step = step._replace(paid=self.pay(step))
        episode_return = carry.episode_return + step.paid  # the return of what the agent is paid
        step = step._replace(finished_return=jnp.where(done, episode_return, 0.0))
        carry = carry.replace(
            env_state=env_state,
            obs=obs,
            reward=step.paid,
            first=done if self.restart_memory else jnp.zeros_like(done),
            agent_state=agent_state,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
            rng=rng,
            t=carry.t + 1,
            budget=None if budget is None else jnp.where(done, self.saute.budget, budget),
        )
        return carry, step

    def run(self, env_params: Any, cparams: Any, carry: RolloutCarry, num_steps: int,
            accumulate: Callable[[Any, Step, RolloutCarry], Any] | None = None, totals: Any = None):
        """``num_steps`` steps in one scan: (carry, stacked steps [T, N]), or with ``accumulate``
        ``(totals, step, carry before the step) -> totals``: (carry, totals)."""

        def body(state, _):
            c, acc = state
            after, step = self.step(env_params, cparams, c)
            if accumulate is None:
                return (after, acc), step
            return (after, accumulate(acc, step, c)), None

        (carry, totals), steps = jax.lax.scan(body, (carry, totals), None, length=num_steps)
        return (carry, steps) if accumulate is None else (carry, totals)
