"""Aligned PPO: one learner for every environment and constitution.

The whole update is pure and jittable: a ``lax.scan`` over environment steps collects a
rollout from ``num_envs`` environments (whose params may all differ), generalised advantage
estimation runs backwards over it, and a ``lax.scan`` over epochs of a ``lax.scan`` over
minibatches applies the PPO loss.  :meth:`AlignedPPO.run_updates` scans many updates, so the
host loop only sees chunks.  Every update is a function of (TrainState, env params,
constitution params), so whole runs vmap over seeds: ``jax.vmap(algo.run_updates)`` over
states made one seed at a time (``seed`` given as a list, ``train/loop.py``).

Alignment enters in five switchable ways (``AlignmentConfig``):

* ``beta * E_s[D(sigma(.|s), pi(.|s))]`` added to the loss, exact over the actions (plus
  ``beta * E_s[D_cf]`` for each invariance of the constitution, see ``counterfactual_divergence``);
* the reward shaped to ``(1 - w) r + w 2^-D`` (or ``r * 2^-D``);
* a shield that sets forbidden logits to -inf when acting (and in the PPO ratio);
* a Lagrange rule that adapts beta after every update to keep the forbidden-action rate
  (or the mean D) under a budget, by gradient ascent or by a PID controller (``train/lagrange.py``);
* Saute: the policy observes the fraction of its per-episode violation budget left (the
  rollout adds it to the observation) and every step after the budget is spent pays
  ``-penalty`` (``rollout.Saute``).

With a curriculum (``curriculum.enabled``, ``train/curriculum.py``) the update first lets it
choose the environments' levels (every ``level_updates`` updates; the pool it draws new ones
from is the ``env_params`` argument), then scores them from the rollout; its teacher's
demonstrations add ``teacher.weight`` times an imitation term (cross-entropy) to the loss.

An environment may report per-step measurements in ``info["metrics"]`` (a dict of scalars
per environment, e.g. a hidden performance function); they are averaged over each rollout
and logged as ``env/<name>`` beside the reward.

Episodes end in two ways and GAE treats them differently: on termination the next value
is 0; on truncation (time limit) the value of the true last observation (before the
automatic reset) is bootstrapped.

The network is a :class:`~aligned_rl.train.policies.Policy` (``ppo.network``): the learner
asks it how to act, what it remembers between steps, and whether its loss needs whole
sequences (a recurrent policy: minibatches then split the environments, not the steps, and
the loss re-runs it from the memory the rollout started with).  Collection is the one
rollout (``rollout.Rollout``) driving a :class:`~aligned_rl.train.agents.PolicyAgent`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from aligned_rl.constitution import Constitution, shield
from aligned_rl.divergence import alignment_reward, counterfactual_divergence, divergence
from aligned_rl.train.agents import PolicyAgent
from aligned_rl.train import lagrange
from aligned_rl.train.config import ConfigError, TrainConfig
from aligned_rl.train.curriculum import Curriculum
from aligned_rl.train.policies import make_policy
from aligned_rl.train.rollout import Rollout, RolloutCarry, Saute, Step


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue bit for bit; orbax saves exactly this."""

    params: Any  # the policy's parameters
    opt_state: Any
    rollout: RolloutCarry  # environments, last observations, the policy's memory, episode counters, rng
    update: jax.Array  # int32: PPO updates done
    beta: jax.Array  # float32: weight of D in the loss (adapted under Lagrange)
    pid: Any = None  # float32 [2]: the PID multiplier's state (train/lagrange.py), None for the other rules
    curriculum: Any = None  # the level buffer and the slots' levels (train/curriculum.py), None without a curriculum


class LearnBatch(NamedTuple):
    """What the loss reads of a rollout: what is shuffled into minibatches."""

    obs: jax.Array
    prev_reward: jax.Array  # the policy's inputs besides the observation
    first: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    allowed: jax.Array
    sigma: jax.Array
    teacher: Any = None  # int32: the teacher's action, -1 where it demonstrated none; None without a teacher


class Transition(NamedTuple):
    """A rollout's steps with what the learner computes over them in one batch."""

    step: Step
    value: jax.Array
    next_value: jax.Array  # of the observation reached, before any reset (bootstraps truncations)
    reward: jax.Array  # the reward the learner optimises (shaped if configured)
    divergence: jax.Array
    counterfactual_divergence: jax.Array  # D_cf summed over the constitution's invariances


PACKED_MAX = 2**24  # the largest batch train/ppo.py:permutation shuffles with packed words


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of ``range(n)`` (int32 [n]), drawn with sorts of single uint32 words.

    ``jax.random.permutation`` sorts (random key, index) pairs; XLA's CPU backend sorts two
    operands through a compiled comparator, far slower than one array of uint32, and PPO
    shuffles its whole batch every epoch.  Here
    each round packs a random key into the high ``32 - b`` bits of a word and the element's
    position into its low ``b = ceil(log2 n)`` bits, sorts the words and reads the positions
    back: one uint32 sort.  Keys that tie keep their previous order, so a pair of elements is
    ordered unfairly only if it ties in every round, with probability ``2^-(32 - b) rounds``;
    as in ``jax.random.permutation``, rounds are added until ``rounds * (32 - b) >= 3 log2 n``.
    The permutations differ from ``jax.random.permutation``'s for the same key.  Above
    ``PACKED_MAX`` elements a word would keep fewer than 8 random bits: there
    ``jax.random.permutation`` itself is used.
    """
    if n > PACKED_MAX:
        return jax.random.permutation(key, n).astype(jnp.int32)
    bits = max(1, (n - 1).bit_length())
    rounds = -(-3 * bits // (32 - bits))
    position = jnp.arange(n, dtype=jnp.uint32)
    order = position
    for k in jax.random.split(key, rounds):
        words = (jax.random.bits(k, (n,), jnp.uint32) << bits) | position
        order = order[jnp.sort(words) & jnp.uint32((1 << bits) - 1)]
    return order.astype(jnp.int32)


def _entropy(logits: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, log_p, 0.0), 0.0), axis=-1)


class AlignedPPO:
    """The learner: static structure (config, env, constitution, policy) plus pure functions."""

    def __init__(self, config: TrainConfig, env: Any, env_params_example: Any, constitution: Constitution,
                 curriculum: Curriculum | None = None):
        self.config = config
        self.curriculum = curriculum
        self.env = env
        self.constitution = constitution
        self.num_envs = config.env.num_envs
        self.num_actions = int(env.action_space(env_params_example).n)
        ppo = config.ppo
        self.policy = make_policy(ppo, self.num_actions)
        if constitution.invariances and not self.policy.supports_invariances:
            raise ConfigError(
                f"constitution {constitution.name!r} has invariances, which the {ppo.network} network cannot "
                "be held to (its decision depends on more than the observation); use ppo.network=mlp"
            )
        steps_per_epoch = ppo.num_minibatches * ppo.update_epochs
        if ppo.anneal_lr:
            lr = optax.linear_schedule(ppo.lr, 0.0, config.num_updates * steps_per_epoch)
        else:
            lr = ppo.lr
        self.optimizer = optax.chain(optax.clip_by_global_norm(ppo.max_grad_norm), optax.adam(lr, eps=1e-5))
        align = config.alignment
        self.divergence_name = align.divergence if align.divergence != "none" else "projection"
        self.divergence_in_loss = align.divergence != "none"
        self.saute = Saute(align.saute.budget, align.saute.penalty) if align.saute.enabled else None
        if self.saute is not None and constitution.invariances:
            raise ConfigError(
                f"alignment.saute.enabled=true adds the violation budget to the observation, and constitution "
                f"{constitution.name!r} has invariances, which transform the observation without it; "
                "choose another way to keep the constitution, or a constitution without invariances"
            )

    # ------------------------------------------------------------------ init
    def init(self, key: jax.Array, env_params: Any) -> TrainState:
        """A fresh TrainState; env_params is the [N] batch the run will use (with a curriculum, the
        pool its new levels come from)."""
        cs = None
        if self.curriculum is not None:
            cs = self.curriculum.init(jax.random.fold_in(key, 7), env_params)
            env_params = cs.slots
        keys = jax.random.split(key, 4)  # two for the policy's networks, one to reset, one to run
        reset_keys = jax.random.split(keys[2], self.num_envs)
        rollout = self.rollout(None)
        carry = rollout.start(env_params, reset_keys, reset_keys, keys[3])
        params = self.policy.init(keys[:2], rollout.seen(carry))
        align = self.config.alignment
        return TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            rollout=carry,
            update=jnp.zeros((), jnp.int32),
            beta=jnp.asarray(align.beta, jnp.float32),
            pid=lagrange.pid_start(align.lagrange, align.beta) if lagrange.uses_pid(align.lagrange) else None,
            curriculum=cs,
        )

    # --------------------------------------------------------------- acting
    def agent(self, params: Any) -> PolicyAgent:
        """The policy with ``params`` acting as the learner collects: sampling, shielded if configured."""
        return PolicyAgent(self.policy, params, shields=self.config.alignment.shield)

    def rollout(self, params: Any) -> Rollout:
        return Rollout(self.agent(params), self.env, self.constitution, self.num_actions,
                       pay=self._pay if self.config.env.antithetic else None, saute=self.saute)

    def _pay(self, step: Step) -> jax.Array:
        """With ``env.antithetic`` the second half of the environments are twins that pay -r."""
        half = self.num_envs // 2
        return step.reward * jnp.concatenate([jnp.ones((half,)), -jnp.ones((half,))]).astype(step.reward.dtype)

    def counterfactual(self, params: Any, cparams: Any, obs: jax.Array, raw_logits: jax.Array) -> jax.Array:
        """D_cf per state [B] (0 without invariances)."""
        if not self.constitution.invariances:
            return jnp.zeros(raw_logits.shape[:-1], jnp.float32)
        return counterfactual_divergence(lambda o: self.policy.logits(params, o), self.constitution.invariances,
                                         cparams, obs, raw_logits)

    def _shape_reward(self, reward: jax.Array, align_reward: jax.Array) -> jax.Array:
        align = self.config.alignment
        if align.reward_mode == "multiplicative":
            return reward * align_reward
        if align.reward_weight > 0:
            return (1.0 - align.reward_weight) * reward + align.reward_weight * align_reward
        return reward

    def _saute_penalty(self, steps: Step, reward: jax.Array) -> jax.Array:
        """Under Saute, -penalty for every step that ends with the episode's violation budget spent
        (the budget left is the last feature of the observation reached)."""
        if self.saute is None:
            return reward
        return jnp.where(steps.final_obs[..., -1] < 0, -self.saute.penalty, reward).astype(reward.dtype)

    def _complete(self, params: Any, cparams: Any, steps: Step, start: Any) -> Transition:
        """Values, next values (pre-reset observations, for truncation bootstraps), D and the
        learner's reward, computed once over the whole [T, N] rollout (``start``: the policy's
        carry when it began)."""
        T, N = steps.action.shape
        flat = lambda x: x.reshape((T * N,) + x.shape[2:])  # noqa: E731
        _, value, carries = self.policy.replay(params, start, steps.obs, steps.prev_reward, steps.first,
                                               steps.action)
        # the value of the pre-reset observation, one step further along the same memory
        _, _, next_value = self.policy.step(params, jax.tree.map(flat, carries), flat(steps.final_obs),
                                            flat(steps.paid), jnp.zeros((T * N,), bool))
        verdict = steps.verdict
        d = divergence(self.divergence_name, steps.logits, verdict.sigma, verdict.allowed)
        d_cf = self.counterfactual(params, cparams, flat(steps.obs), flat(steps.logits)).reshape(T, N)
        return Transition(
            step=steps,
            value=value,
            next_value=next_value.reshape(T, N),
            reward=self._saute_penalty(steps, self._shape_reward(steps.paid, alignment_reward(d))),
            divergence=d,
            counterfactual_divergence=d_cf,
        )

    # -------------------------------------------------------------- learning
    def _advantages(self, reward: jax.Array, value: jax.Array, next_value: jax.Array, terminated: jax.Array,
                    done: jax.Array) -> tuple[jax.Array, jax.Array]:
        """GAE over [T, N]: (advantages, value targets).  On termination the next value is 0; on
        truncation ``next_value`` (of the observation reached before the reset) is bootstrapped."""
        ppo = self.config.ppo

        def backward(gae, t):
            reward, value, next_value, terminated, done = t
            delta = reward + ppo.gamma * next_value * (1.0 - terminated) - value
            gae = delta + ppo.gamma * ppo.gae_lambda * (1.0 - done) * gae
            return gae, gae

        inputs = (reward, value, next_value, terminated, done)
        _, advantages = jax.lax.scan(backward, jnp.zeros_like(value[0]), inputs, reverse=True)
        return advantages, advantages + value

    def loss(
        self, params: Any, beta: jax.Array, cparams: Any, batch: LearnBatch, advantages: jax.Array, targets: jax.Array,
        start: Any = (),
    ):
        """PPO loss over a minibatch of [T, B] steps, replayed from the policy's carry ``start``
        (a policy without ``needs_sequences`` gets single steps as T = 1)."""
        ppo = self.config.ppo
        raw_logits, value, _ = self.policy.replay(params, start, batch.obs, batch.prev_reward, batch.first,
                                                  batch.action)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        raw_logits, value = flat(raw_logits), flat(value)
        batch = jax.tree.map(flat, batch)
        advantages, targets = flat(advantages), flat(targets)
        logits = shield(raw_logits, batch.allowed) if self.config.alignment.shield else raw_logits
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
        extra = {}
        if batch.teacher is not None:  # imitation of the teacher where it demonstrated
            labelled = batch.teacher >= 0
            log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(batch.teacher, 0)[:, None], axis=-1)[:, 0]
            imitation = -jnp.sum(jnp.where(labelled, log_p, 0.0)) / jnp.maximum(labelled.sum(), 1)
            extra["loss/imitation"] = imitation
            total = total + self.config.curriculum.teacher.weight * imitation
        return total, extra | {
            "loss/total": total,
            "loss/policy": policy_loss,
            "loss/value": value_loss,
            "loss/entropy": entropy,
            "loss/alignment": alignment_loss,
            "loss/approx_kl": approx_kl,
        }

    def _minibatches(self, key: jax.Array, batch: LearnBatch, advantages, targets, start):
        """[k, T, B, ...] minibatches and the carry each starts from: whole sequences of shuffled
        environments for a policy that ``needs_sequences``, else shuffled single steps (T = 1).
        One minibatch is the whole batch, which the loss averages over in any order: it is not
        shuffled."""
        k = self.config.ppo.num_minibatches
        if self.policy.needs_sequences:
            perm = permutation(key, self.num_envs) if k > 1 else None
            shuffled = lambda x, axis: x if perm is None else jnp.take(x, perm, axis=axis)  # noqa: E731

            def to_minibatches(x):  # [T, N, ...] -> [k, T, N / k, ...]
                x = shuffled(x, 1)
                return x.reshape((x.shape[0], k, self.num_envs // k) + x.shape[2:]).swapaxes(0, 1)

            starts = jax.tree.map(lambda x: shuffled(x, 0).reshape((k, self.num_envs // k) + x.shape[1:]), start)
            return jax.tree.map(to_minibatches, (batch, advantages, targets)) + (starts,)
        size = self.config.steps_per_update
        perm = permutation(key, size) if k > 1 else None

        def to_minibatches(x):  # [T, N, ...] -> [k, 1, size / k, ...]
            x = x.reshape((size,) + x.shape[2:])
            x = x if perm is None else x[perm]
            return x.reshape((k, 1, size // k) + x.shape[1:])

        return jax.tree.map(to_minibatches, (batch, advantages, targets)) + (jax.tree.map(lambda _: None, start),)

    def _epoch(self, batch_and_targets, cparams, carry, _):
        params, opt_state, beta, rng = carry
        batch, advantages, targets, start = batch_and_targets
        rng, k_perm = jax.random.split(rng)
        minibatches = self._minibatches(k_perm, batch, advantages, targets, start)

        def minibatch_step(inner, mb):
            params, opt_state = inner
            grads, info = jax.grad(self.loss, has_aux=True)(params, beta, cparams, *mb)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), info

        (params, opt_state), info = jax.lax.scan(minibatch_step, (params, opt_state), minibatches)
        return (params, opt_state, beta, rng), info

    def _lagrange(self, state: TrainState, traj: Transition) -> tuple[jax.Array, Any]:
        """(beta, PID state) for the next update (train/lagrange.py)."""
        lag = self.config.alignment.lagrange
        if not lag.enabled:
            return state.beta, state.pid
        measured = traj.step.violated.mean() if lag.target == "forbidden_rate" else traj.divergence.mean()
        if state.pid is None:
            return lagrange.integral_step(lag, state.beta, measured), None
        return lagrange.pid_step(lag, state.pid, measured)

    def _choose_levels(self, state: TrainState, pool: Any) -> TrainState:
        """With a curriculum, every ``level_updates`` updates: the slots' next levels, on which
        every environment (and the policy's memory) starts afresh."""

        def switch(state: TrainState) -> TrainState:
            cs = self.curriculum.choose(state.curriculum, pool)
            rng, k_reset, k_agent = jax.random.split(state.rollout.rng, 3)
            carry = self.rollout(None).start(cs.slots, jax.random.split(k_reset, self.num_envs),
                                             jax.random.split(k_agent, self.num_envs), rng)
            return state.replace(curriculum=cs, rollout=carry.replace(t=state.rollout.t))

        return jax.lax.cond(self.curriculum.switches_now(state.update), switch, lambda s: s, state)

    def _score_levels(self, state: TrainState, steps: Step, traj: Transition, advantages: jax.Array,
                      teacher: Any) -> Any:
        """The rollout added to the slots' counts; the levels rescored and buffered when they are done."""
        cur = self.curriculum
        cs = cur.accumulate(state.curriculum, steps, traj.value, advantages,
                            None if teacher is None else teacher >= 0)
        return jax.lax.cond(cur.ends_now(state.update), cur.finish, lambda c: c, cs)

    def update(self, state: TrainState, env_params: Any, cparams: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """One PPO update: (levels chosen,) rollout, GAE, epochs of minibatch steps, Lagrange step
        (, the levels scored)."""
        ppo = self.config.ppo
        if self.curriculum is not None:
            state = self._choose_levels(state, env_params)
            env_params = state.curriculum.slots
        start = state.rollout.agent_state  # the policy's carry at the start of the rollout
        carry, steps = self.rollout(state.params).run(env_params, cparams, state.rollout, ppo.num_steps)
        traj = self._complete(state.params, cparams, steps, start)
        chex.assert_shape(traj.reward, (ppo.num_steps, self.num_envs))
        advantages, targets = self._advantages(traj.reward, traj.value, traj.next_value, steps.terminated, steps.done)
        rng, k_epochs = jax.random.split(carry.rng)
        teacher = None
        if self.curriculum is not None and self.config.curriculum.teacher.enabled:
            teacher = self.curriculum.demonstrations(state.curriculum, steps.obs, steps.verdict.allowed,
                                                     steps.verdict.all_forbidden)
        batch = LearnBatch(steps.obs, steps.prev_reward, steps.first, steps.action, steps.log_prob, traj.value,
                           steps.verdict.allowed, steps.verdict.sigma, teacher)
        (params, opt_state, _, _), info = jax.lax.scan(
            functools.partial(self._epoch, (batch, advantages, targets, start), cparams),
            (state.params, state.opt_state, state.beta, k_epochs),
            None,
            length=ppo.update_epochs,
        )
        beta_used = state.beta
        beta, pid = self._lagrange(state, traj)
        cs = None if self.curriculum is None else self._score_levels(state, steps, traj, advantages, teacher)
        state = state.replace(
            params=params,
            opt_state=opt_state,
            rollout=carry.replace(rng=rng),
            update=state.update + 1,
            beta=beta,
            pid=pid,
            curriculum=cs,
        )
        metrics = {k: v.mean() for k, v in info.items()}
        finished = steps.done.astype(jnp.float32)
        metrics.update(
            {
                "episodes": finished.sum(),
                "episode_return_sum": steps.finished_return.sum(),
                "episode_length_sum": steps.finished_length.sum().astype(jnp.float32),
                "reward": steps.paid.mean(),  # what the learner is paid (the twins' negated)
                "divergence": traj.divergence.mean(),
                "alignment_reward": alignment_reward(traj.divergence).mean(),
                "forbidden_rate": steps.violated.mean(),
                "forbidden_state_rate": steps.verdict.in_forbidden_state.mean(),
                "all_forbidden_rate": steps.verdict.all_forbidden.mean(),
                "beta": beta_used,
            }
        )
        if self.constitution.invariances:
            metrics["counterfactual_divergence"] = traj.counterfactual_divergence.mean()
        metrics.update({f"env/{k}": v.mean() for k, v in steps.metrics.items()})
        if self.curriculum is not None:
            metrics.update(self.curriculum.metrics(cs))
        return state, metrics

    def run_updates(self, state: TrainState, env_params: Any, cparams: Any, num_updates: int):
        """``num_updates`` updates in one scan; metrics stacked along the first axis."""

        def body(s, _):
            return self.update(s, env_params, cparams)

        return jax.lax.scan(body, state, None, length=num_updates)
