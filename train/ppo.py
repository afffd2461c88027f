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

Two networks (``ppo.network``): ``mlp``, separate actor and critic MLPs of the observation;
and ``rl2``, a recurrent agent (``networks.RecurrentActorCritic``) fed the previous action
and reward, whose memory runs through the rollout and is cleared where an episode starts.
The recurrent agent learns from whole sequences: the memory at the start of a rollout is
kept, and the loss re-runs the network over each minibatch's [T, envs] sequences from it
(minibatches split the environments, not the steps).  Memory flows between rollouts, so
the gradient is backpropagated through time ``ppo.num_steps`` steps at most.
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
from aligned_rl.train.config import ConfigError
from aligned_rl.train.networks import Actor, Critic, RecurrentActorCritic


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
    # the rl2 network's inputs besides the observation (None for the mlp network)
    memory: Any = None  # [N, M] recurrent memory
    prev_action: Any = None  # [N] int32 action of the previous step (-1: none yet)
    prev_reward: Any = None  # [N] reward of the previous step
    start: Any = None  # [N] bool: the next step is the first of an episode


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
    # the recurrent network's other inputs (None for the mlp network)
    prev_action: Any = None
    prev_reward: Any = None
    start: Any = None


class LearnBatch(NamedTuple):
    """The fields of a Transition the loss reads: what is shuffled into minibatches."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    allowed: jax.Array
    sigma: jax.Array
    prev_action: Any = None
    prev_reward: Any = None
    start: Any = None


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
    prev_action: Any = None
    prev_reward: Any = None
    start: Any = None


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
        ppo = config.ppo
        self.recurrent = ppo.network == "rl2"
        if self.recurrent:
            if constitution.invariances:
                raise ConfigError(
                    f"constitution {constitution.name!r} has invariances, which the rl2 network cannot "
                    "be held to (its decision depends on its memory too); use ppo.network=mlp"
                )
            self.net = RecurrentActorCritic(self.num_actions, hidden, ppo.activation, ppo.memory_size)
        else:
            self.actor = Actor(self.num_actions, hidden, ppo.activation)
            self.critic = Critic(hidden, ppo.activation)
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
        memory, prev_action, prev_reward, start = self.initial_memory(self.num_envs)
        if self.recurrent:
            params = {"net": self.net.init(k_actor, memory[:1], obs[:1], prev_action[:1], prev_reward[:1], start[:1])}
        else:
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
            memory=memory,
            prev_action=prev_action,
            prev_reward=prev_reward,
            start=start,
        )

    # --------------------------------------------------------------- acting
    def initial_memory(self, n: int) -> tuple[Any, Any, Any, Any]:
        """(memory, prev_action, prev_reward, start) of ``n`` agents that have not acted yet;
        all None for the mlp network, which has no memory."""
        if not self.recurrent:
            return (None, None, None, None)
        return (jnp.zeros((n, self.config.ppo.memory_size), jnp.float32), jnp.full((n,), -1, jnp.int32),
                jnp.zeros((n,), jnp.float32), jnp.ones((n,), bool))

    def act_logits(self, params: Any, memory: jax.Array, obs: jax.Array, prev_action: jax.Array,
                   prev_reward: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step of the policy over a batch: (memory after the step, raw logits).  The mlp
        network reads the observation only (its memory is None)."""
        if self.recurrent:
            memory, logits, _ = self.net.apply(params["net"], memory, obs, prev_action, prev_reward, start)
            return memory, logits
        return memory, self.actor.apply(params["actor"], obs)

    def counterfactual(self, params: Any, cparams: Any, obs: jax.Array, raw_logits: jax.Array) -> jax.Array:
        """D_cf per state [B] (0 without invariances; the rl2 network refuses invariances)."""
        if not self.constitution.invariances:
            return jnp.zeros(raw_logits.shape[:-1], jnp.float32)
        return counterfactual_divergence(self.actor.apply, params["actor"], self.constitution, cparams, obs, raw_logits)

    def _sequence(self, params: Any, memory: jax.Array, obs, prev_action, prev_reward, start):
        """The recurrent network over [T, B] inputs from ``memory`` [B, M]: logits [T, B, A],
        values [T, B] and the memory after every step [T, B, M]."""

        def body(m, inputs):
            m, logits, value = self.net.apply(params["net"], m, *inputs)
            return m, (logits, value, m)

        _, (logits, values, memories) = jax.lax.scan(body, memory, (obs, prev_action, prev_reward, start))
        return logits, values, memories

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
        memory, raw_logits = self.act_logits(state.params, state.memory, state.obs, state.prev_action,
                                             state.prev_reward, state.start)
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
        if self.recurrent:
            step = step._replace(prev_action=state.prev_action, prev_reward=state.prev_reward, start=state.start)
            # the network clears memory, previous action and reward itself where ``start`` is set
            state = state.replace(memory=memory, prev_action=action, prev_reward=reward, start=done)
        state = state.replace(
            env_state=env_state,
            obs=obs,
            rng=rng,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
        )
        return state, step

    def _complete(self, params: Any, cparams: Any, rollout: "RolloutStep", memory: jax.Array) -> Transition:
        """Values, next values (pre-reset observations, for truncation bootstraps), D and the
        learner's reward, computed once over the whole [T, N] rollout (``memory``: the
        recurrent memory at its start)."""
        T, N = rollout.action.shape
        flat = lambda x: x.reshape((T * N,) + x.shape[2:])  # noqa: E731
        if self.recurrent:
            _, value, memories = self._sequence(params, memory, rollout.obs, rollout.prev_action,
                                                rollout.prev_reward, rollout.start)
            # the value of the pre-reset observation, one step further along the same memory
            _, _, next_value = self.net.apply(params["net"], flat(memories), flat(rollout.final_obs),
                                              flat(rollout.action), flat(rollout.env_reward),
                                              jnp.zeros((T * N,), bool))
            next_value = next_value.reshape(T, N)
        else:
            value = self.critic.apply(params["critic"], flat(rollout.obs)).reshape(T, N)
            next_value = self.critic.apply(params["critic"], flat(rollout.final_obs)).reshape(T, N)
        d = divergence(self.divergence_name, rollout.raw_logits, rollout.sigma, rollout.allowed)
        d_cf = self.counterfactual(params, cparams, flat(rollout.obs), flat(rollout.raw_logits)).reshape(T, N)
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
        self, params: Any, beta: jax.Array, cparams: Any, batch: LearnBatch, advantages: jax.Array, targets: jax.Array,
        memory: jax.Array | None = None,
    ):
        """PPO loss over a minibatch: [B] samples (mlp), or [T, B] sequences from ``memory`` (rl2)."""
        ppo = self.config.ppo
        if self.recurrent:
            raw_logits, value, _ = self._sequence(params, memory, batch.obs, batch.prev_action,
                                                  batch.prev_reward, batch.start)
            flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
            raw_logits, value = flat(raw_logits), flat(value)
            batch = LearnBatch(*(flat(x) for x in batch[:6]))
            advantages, targets = flat(advantages), flat(targets)
        else:
            raw_logits = self.actor.apply(params["actor"], batch.obs)
            value = self.critic.apply(params["critic"], batch.obs)
        logits = masked_logits(raw_logits, batch.allowed) if self.config.alignment.shield else raw_logits
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), batch.action[:, None], axis=-1)[:, 0]

        value_clipped = batch.value + jnp.clip(value - batch.value, -ppo.clip_eps, ppo.clip_eps)
        value_loss = 0.5 * jnp.mean(jnp.maximum((value - targets) ** 2, (value_clipped - targets) ** 2))

        ratio = jnp.exp(log_prob - batch.log_prob)
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - ppo.clip_eps, 1 + ppo.clip_eps) * adv))
        entropy = jnp.mean(_entropy(logits))
        d = jnp.mean(divergence(self.divergence_name, raw_logits, batch.sigma, batch.allowed))
        if self.constitution.invariances:
            d += jnp.mean(self.counterfactual(params, cparams, batch.obs, raw_logits))
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
        traj, advantages, targets, memory = batch_and_targets
        ppo = self.config.ppo
        rng, k_perm = jax.random.split(rng)
        batch = LearnBatch(traj.obs, traj.action, traj.log_prob, traj.value, traj.allowed, traj.sigma,
                           traj.prev_action, traj.prev_reward, traj.start)
        k = ppo.num_minibatches
        if self.recurrent:  # whole sequences: shuffle and split the environments
            perm = jax.random.permutation(k_perm, self.num_envs)

            def to_minibatches(x):  # [T, N, ...] -> [k, T, N / k, ...]
                x = x[:, perm]
                return x.reshape((x.shape[0], k, self.num_envs // k) + x.shape[2:]).swapaxes(0, 1)

            minibatches = jax.tree.map(to_minibatches, (batch, advantages, targets))
            minibatches += (memory[perm].reshape((k, self.num_envs // k) + memory.shape[1:]),)
        else:
            size = self.config.steps_per_update
            perm = jax.random.permutation(k_perm, size)

            def to_minibatches(x):
                x = x.reshape((size,) + x.shape[2:])[perm]
                return x.reshape((k, size // k) + x.shape[1:])

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
        memory = state.memory  # at the start of the rollout
        state, rollout = jax.lax.scan(
            functools.partial(self._env_step, env_params, cparams), state, None, length=ppo.num_steps
        )
        traj = self._complete(state.params, cparams, rollout, memory)
        chex.assert_shape(traj.reward, (ppo.num_steps, self.num_envs))
        advantages, targets = self._advantages(traj)
        rng, k_epochs = jax.random.split(state.rng)
        (params, opt_state, _, _), info = jax.lax.scan(
            functools.partial(self._epoch, (traj, advantages, targets, memory), cparams),
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
