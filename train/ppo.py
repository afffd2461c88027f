"""Aligned PPO: one learner for every environment and constitution.

The whole update is pure and jittable: a ``lax.scan`` over environment steps collects a
rollout from ``num_envs`` environments (whose params may all differ), generalised advantage
estimation runs backwards over it, and a ``lax.scan`` over epochs of a ``lax.scan`` over
minibatches applies the PPO loss.  :meth:`AlignedPPO.run_updates` scans many updates, so the
host loop only sees chunks.  Every update is a function of (TrainState, env params,
constitution params), so whole runs vmap over seeds: ``jax.vmap(algo.init)(keys)``.

Alignment enters in four switchable ways (``AlignmentConfig``):

* ``beta * E_s[D(sigma(.|s), pi(.|s))]`` added to the loss, exact over the actions (plus
  ``beta * E_s[D_cf]`` for each invariance of the constitution, see ``counterfactual_divergence``);
* the reward shaped to ``(1 - w) r + w 2^-D`` (or ``r * 2^-D``);
* a shield that sets forbidden logits to -inf when acting (and in the PPO ratio);
* a Lagrange rule that adapts beta after every update to keep the forbidden-action rate
  (or the mean D) under a budget.

An environment may report per-step measurements in ``info["metrics"]`` (a dict of scalars
per environment, e.g. a hidden performance function); they are averaged over each rollout
and logged as ``env/<name>`` beside the reward.

Episodes end in two ways and GAE treats them differently: on termination the next value
is 0; on truncation (time limit) the value of the true last observation (before the
automatic reset) is bootstrapped.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from aligned_rl.constitution import Constitution, judge, violates
from aligned_rl.divergence import alignment_reward, divergence, jensen_shannon
from aligned_rl.train.config import TrainConfig
from aligned_rl.train.networks import Actor, Critic


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue bit for bit; orbax saves exactly this."""

    params: Any  # {"actor": ..., "critic": ...}
    opt_state: Any
    env_state: Any  # [N] batch of environment states
    obs: jax.Array  # [N, ...] last observations
    rng: jax.Array
    update: jax.Array  # int32: PPO updates done
    beta: jax.Array  # float32: weight of D in the loss (adapted under Lagrange)
    episode_return: jax.Array  # [N] return of the running episode (environment reward)
    episode_length: jax.Array  # [N] int32 length of the running episode


class RolloutStep(NamedTuple):
    """What one environment step records while acting (no critic, no D: those are batched later)."""

    obs: jax.Array
    final_obs: jax.Array  # observation the step reached, before any automatic reset
    raw_logits: jax.Array  # the policy's logits before any shield
    action: jax.Array
    log_prob: jax.Array
    env_reward: jax.Array
    terminated: jax.Array
    done: jax.Array
    allowed: jax.Array
    sigma: jax.Array
    violated: jax.Array
    all_forbidden: jax.Array
    in_forbidden_state: jax.Array
    finished_return: jax.Array
    finished_length: jax.Array
    env_metrics: dict  # info["metrics"] of the environment, if it reports any


class LearnBatch(NamedTuple):
    """The fields of a Transition the loss reads: what is shuffled into minibatches."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    allowed: jax.Array
    sigma: jax.Array


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    next_value: jax.Array
    reward: jax.Array  # the reward the learner optimises (shaped if configured)
    terminated: jax.Array
    done: jax.Array
    allowed: jax.Array  # [A] actions sigma allows (fallback applied)
    sigma: jax.Array  # [A]
    # measurements, not used by the loss
    env_reward: jax.Array
    divergence: jax.Array
    violated: jax.Array
    all_forbidden: jax.Array
    in_forbidden_state: jax.Array
    finished_return: jax.Array  # return of the episode that ended here (0 if none)
    finished_length: jax.Array
    counterfactual_divergence: jax.Array  # D_cf summed over the constitution's invariances
    env_metrics: dict


def masked_logits(logits: jax.Array, allowed: jax.Array) -> jax.Array:
    """Shield: forbidden actions get -inf logits (sigma's fallback keeps one action allowed)."""
    return jnp.where(allowed, logits, -jnp.inf)


def counterfactual_divergence(
    actor_apply: Any, actor_params: Any, constitution: Constitution, cparams: Any, obs: jax.Array, logits: jax.Array
) -> jax.Array:
    """Sum over the constitution's invariances of JS(pi(.|o), pi(.|t(o))) in bits, per state [B]."""
    total = jnp.zeros(logits.shape[:-1], jnp.float32)
    for transform in constitution.invariances:
        flipped = jax.vmap(lambda o: transform(o, cparams))(obs)
        total += jensen_shannon(logits, jax.nn.softmax(actor_apply(actor_params, flipped), axis=-1))
    return total


def _entropy(logits: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, log_p, 0.0), 0.0), axis=-1)


class AlignedPPO:
    """The learner: static structure (config, env, constitution, networks) plus pure functions."""

    def __init__(self, config: TrainConfig, env: Any, env_params_example: Any, constitution: Constitution):
        self.config = config
        self.env = env
        self.constitution = constitution
        self.num_envs = config.env.num_envs
        self.num_actions = int(env.action_space(env_params_example).n)
        hidden = tuple(config.ppo.hidden_sizes)
        self.actor = Actor(self.num_actions, hidden, config.ppo.activation)
        self.critic = Critic(hidden, config.ppo.activation)
        ppo = config.ppo
        steps_per_epoch = ppo.num_minibatches * ppo.update_epochs
        if ppo.anneal_lr:
            lr = optax.linear_schedule(ppo.lr, 0.0, config.num_updates * steps_per_epoch)
        else:
            lr = ppo.lr
        self.optimizer = optax.chain(optax.clip_by_global_norm(ppo.max_grad_norm), optax.adam(lr, eps=1e-5))
        align = config.alignment
        self.divergence_name = align.divergence if align.divergence != "none" else "projection"
        self.divergence_in_loss = align.divergence != "none"

    # ------------------------------------------------------------------ init
    def init(self, key: jax.Array, env_params: Any) -> TrainState:
        """A fresh TrainState; env_params is the [N] batch the run will use."""
        k_actor, k_critic, k_reset, k_run = jax.random.split(key, 4)
        reset_keys = jax.random.split(k_reset, self.num_envs)
        obs, env_state = jax.vmap(self.env.reset)(reset_keys, env_params)
        params = {
            "actor": self.actor.init(k_actor, obs[:1]),
            "critic": self.critic.init(k_critic, obs[:1]),
        }
        return TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            env_state=env_state,
            obs=obs,
            rng=k_run,
            update=jnp.zeros((), jnp.int32),
            beta=jnp.asarray(self.config.alignment.beta, jnp.float32),
            episode_return=jnp.zeros((self.num_envs,), jnp.float32),
            episode_length=jnp.zeros((self.num_envs,), jnp.int32),
        )

    # --------------------------------------------------------------- acting
    def policy(self, params: Any, obs: jax.Array, judgement_allowed: jax.Array | None = None) -> jax.Array:
        """Logits the agent acts with (shielded when configured and a mask is given)."""
        logits = self.actor.apply(params["actor"], obs)
        if self.config.alignment.shield and judgement_allowed is not None:
            logits = masked_logits(logits, judgement_allowed)
        return logits

    def judge_batch(self, cparams: Any, env_params: Any, step_keys: jax.Array, obs: jax.Array, env_state: Any):
        return jax.vmap(
            lambda ep, k, o, s: judge(self.constitution, cparams, self.env, ep, k, o, s, self.num_actions)
        )(env_params, step_keys, obs, env_state)

    def _shape_reward(self, reward: jax.Array, align_reward: jax.Array) -> jax.Array:
        align = self.config.alignment
        if align.reward_mode == "multiplicative":
            return reward * align_reward
        if align.reward_weight > 0:
            return (1.0 - align.reward_weight) * reward + align.reward_weight * align_reward
        return reward

    def _env_step(self, env_params: Any, cparams: Any, state: TrainState, _: Any):
        """Act and step; the critic and D are evaluated after the rollout, batched over all steps."""
        rng, k_act, k_step = jax.random.split(state.rng, 3)
        step_keys = jax.random.split(k_step, self.num_envs)
        verdict = self.judge_batch(cparams, env_params, step_keys, state.obs, state.env_state)
        raw_logits = self.actor.apply(state.params["actor"], state.obs)
        logits = masked_logits(raw_logits, verdict.allowed) if self.config.alignment.shield else raw_logits
        action = jax.random.categorical(k_act, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]

        obs, env_state, reward, terminated, truncated, info = jax.vmap(self.env.step)(
            step_keys, state.env_state, action, env_params
        )
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(terminated, truncated)
        violated = violates(verdict, action)

        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        step = RolloutStep(
            obs=state.obs,
            final_obs=info["final_observation"],
            raw_logits=raw_logits,
            action=action,
            log_prob=log_prob,
            env_reward=reward,
            terminated=terminated,
            done=done,
            allowed=verdict.allowed,
            sigma=verdict.sigma,
            violated=violated,
            all_forbidden=verdict.all_forbidden,
            in_forbidden_state=verdict.in_forbidden_state,
            finished_return=jnp.where(done, episode_return, 0.0),
            finished_length=jnp.where(done, episode_length, 0),
            env_metrics=info.get("metrics", {}),
        )
        state = state.replace(
            env_state=env_state,
            obs=obs,
            rng=rng,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
        )
        return state, step

    def _complete(self, params: Any, cparams: Any, rollout: "RolloutStep") -> Transition:
        """Values, next values (pre-reset observations, for truncation bootstraps), D and the
        learner's reward, computed once over the whole [T, N] rollout."""
        T, N = rollout.action.shape
        flat = lambda x: x.reshape((T * N,) + x.shape[2:])  # noqa: E731
        value = self.critic.apply(params["critic"], flat(rollout.obs)).reshape(T, N)
        next_value = self.critic.apply(params["critic"], flat(rollout.final_obs)).reshape(T, N)
        d = divergence(self.divergence_name, rollout.raw_logits, rollout.sigma, rollout.allowed)
        d_cf = counterfactual_divergence(
            self.actor.apply, params["actor"], self.constitution, cparams,
            flat(rollout.obs), flat(rollout.raw_logits),
        ).reshape(T, N)
        shared = {k: getattr(rollout, k) for k in Transition._fields if k in RolloutStep._fields}
        return Transition(
            **shared,
            value=value,
            next_value=next_value,
            reward=self._shape_reward(rollout.env_reward, alignment_reward(d)),
            divergence=d,
            counterfactual_divergence=d_cf,
        )

    # -------------------------------------------------------------- learning
    def _advantages(self, traj: Transition) -> tuple[jax.Array, jax.Array]:
        ppo = self.config.ppo

        def backward(gae, t: Transition):
            delta = t.reward + ppo.gamma * t.next_value * (1.0 - t.terminated) - t.value
            gae = delta + ppo.gamma * ppo.gae_lambda * (1.0 - t.done) * gae
            return gae, gae

        _, advantages = jax.lax.scan(backward, jnp.zeros_like(traj.value[0]), traj, reverse=True)
        return advantages, advantages + traj.value

    def loss(
        self, params: Any, beta: jax.Array, cparams: Any, batch: LearnBatch, advantages: jax.Array, targets: jax.Array
    ):
        ppo = self.config.ppo
        raw_logits = self.actor.apply(params["actor"], batch.obs)
        logits = masked_logits(raw_logits, batch.allowed) if self.config.alignment.shield else raw_logits
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), batch.action[:, None], axis=-1)[:, 0]
        value = self.critic.apply(params["critic"], batch.obs)

        value_clipped = batch.value + jnp.clip(value - batch.value, -ppo.clip_eps, ppo.clip_eps)
        value_loss = 0.5 * jnp.mean(jnp.maximum((value - targets) ** 2, (value_clipped - targets) ** 2))

        ratio = jnp.exp(log_prob - batch.log_prob)
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - ppo.clip_eps, 1 + ppo.clip_eps) * adv))
        entropy = jnp.mean(_entropy(logits))
        d = jnp.mean(divergence(self.divergence_name, raw_logits, batch.sigma, batch.allowed))
        if self.constitution.invariances:
            d += jnp.mean(counterfactual_divergence(
                self.actor.apply, params["actor"], self.constitution, cparams, batch.obs, raw_logits
            ))
        alignment_loss = jax.lax.stop_gradient(beta) * d if self.divergence_in_loss else jnp.zeros(())
        total = policy_loss + ppo.vf_coef * value_loss - ppo.ent_coef * entropy + alignment_loss
        approx_kl = jnp.mean((ratio - 1.0) - jnp.log(ratio))
        return total, {
            "loss/total": total,
            "loss/policy": policy_loss,
            "loss/value": value_loss,
            "loss/entropy": entropy,
            "loss/alignment": alignment_loss,
            "loss/approx_kl": approx_kl,
        }

    def _epoch(self, batch_and_targets, cparams, carry, _):
        params, opt_state, beta, rng = carry
        traj, advantages, targets = batch_and_targets
        ppo = self.config.ppo
        rng, k_perm = jax.random.split(rng)
        size = self.config.steps_per_update
        perm = jax.random.permutation(k_perm, size)

        def to_minibatches(x):
            x = x.reshape((size,) + x.shape[2:])[perm]
            return x.reshape((ppo.num_minibatches, size // ppo.num_minibatches) + x.shape[1:])

        batch = LearnBatch(traj.obs, traj.action, traj.log_prob, traj.value, traj.allowed, traj.sigma)
        minibatches = jax.tree.map(to_minibatches, (batch, advantages, targets))

        def minibatch_step(inner, mb):
            params, opt_state = inner
            grads, info = jax.grad(self.loss, has_aux=True)(params, beta, cparams, *mb)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), info

        (params, opt_state), info = jax.lax.scan(minibatch_step, (params, opt_state), minibatches)
        return (params, opt_state, beta, rng), info

    def _lagrange(self, beta: jax.Array, traj: Transition) -> jax.Array:
        lag = self.config.alignment.lagrange
        if not lag.enabled:
            return beta
        measured = traj.violated.mean() if lag.target == "forbidden_rate" else traj.divergence.mean()
        return jnp.clip(beta + lag.lr * (measured - lag.budget), 0.0, lag.beta_max)

    def update(self, state: TrainState, env_params: Any, cparams: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """One PPO update: rollout, GAE, epochs of minibatch steps, Lagrange step."""
        ppo = self.config.ppo
        state, rollout = jax.lax.scan(
            functools.partial(self._env_step, env_params, cparams), state, None, length=ppo.num_steps
        )
        traj = self._complete(state.params, cparams, rollout)
        chex.assert_shape(traj.reward, (ppo.num_steps, self.num_envs))
        advantages, targets = self._advantages(traj)
        rng, k_epochs = jax.random.split(state.rng)
        (params, opt_state, _, _), info = jax.lax.scan(
            functools.partial(self._epoch, (traj, advantages, targets), cparams),
            (state.params, state.opt_state, state.beta, k_epochs),
            None,
            length=ppo.update_epochs,
        )
        beta_used = state.beta
        state = state.replace(
            params=params,
            opt_state=opt_state,
            rng=rng,
            update=state.update + 1,
            beta=self._lagrange(state.beta, traj),
        )
        metrics = {k: v.mean() for k, v in info.items()}
        finished = traj.done.astype(jnp.float32)
        metrics.update(
            {
                "episodes": finished.sum(),
                "episode_return_sum": traj.finished_return.sum(),
                "episode_length_sum": traj.finished_length.sum().astype(jnp.float32),
                "reward": traj.env_reward.mean(),
                "divergence": traj.divergence.mean(),
                "alignment_reward": alignment_reward(traj.divergence).mean(),
                "forbidden_rate": traj.violated.mean(),
                "forbidden_state_rate": traj.in_forbidden_state.mean(),
                "all_forbidden_rate": traj.all_forbidden.mean(),
                "beta": beta_used,
            }
        )
        if self.constitution.invariances:
            metrics["counterfactual_divergence"] = traj.counterfactual_divergence.mean()
        metrics.update({f"env/{k}": v.mean() for k, v in traj.env_metrics.items()})
        return state, metrics

    def run_updates(self, state: TrainState, env_params: Any, cparams: Any, num_updates: int):
        """``num_updates`` updates in one scan; metrics stacked along the first axis."""

        def body(s, _):
            return self.update(s, env_params, cparams)

        return jax.lax.scan(body, state, None, length=num_updates)
