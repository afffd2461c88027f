"""Training throughput of a PureJaxRL-style PPO on gymnax CartPole-v1.

A plain PPO written after the recipe of PureJaxRL's single-file ``ppo.py`` (luchris429/purejaxrl):
the whole run is one pure ``train(key)``: a ``lax.scan`` over updates, each one a ``lax.scan``
rollout of ``--num-steps`` steps of ``--num-envs`` vmapped gymnax environments (gymnax resets an
environment inside ``step`` when its episode ends), GAE, then a scan over epochs of a scan over
minibatches shuffled with ``jax.random.permutation``.  Actor and critic are separate 2x64 tanh
MLPs with orthogonal initialisation (sqrt(2) hidden, 0.01 actor head, 1.0 critic head); the
policy is categorical; the optimiser is ``clip_by_global_norm(0.5)`` then Adam (eps 1e-5) with
the learning rate annealed linearly toward 0 over the updates; the value loss is clipped and the
advantages are normalised per minibatch.  As in PureJaxRL, an episode that ends by truncation
(500 steps) is treated as terminated.

``--seeds N`` trains N independent runs at once, PureJaxRL's way: ``jax.vmap(train)`` over N keys
split from ``--seed``.  The program is compiled ahead of time (``jax.jit(...).lower(...).compile()``,
timed apart as compile_seconds), executed once and timed until every output is ready
(``jax.block_until_ready``).

It needs only jax, flax, optax and gymnax, so it runs with the project's own Python.  Prints one
JSON line: {"name", "sps", "env_steps", "seconds", "compile_seconds", "seeds", "final_return",
"final_returns", "versions", "device", ...}.  ``final_return`` is the mean return of the episodes
that ended during the last 5% of the updates (at least the last update), per run and averaged
over the runs: a measured figure, so a learner that does not learn shows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from importlib import metadata
from typing import Any, Callable, NamedTuple

CLIP_EPS = 0.2
VF_COEF = 0.5
MAX_GRAD_NORM = 0.5
HIDDEN = (64, 64)


class Settings(NamedTuple):
    num_envs: int
    num_steps: int
    epochs: int
    minibatches: int
    num_updates: int
    lr: float
    gamma: float
    gae_lambda: float
    ent_coef: float


def make_train(settings: Settings) -> Callable[[Any], dict]:
    """A pure ``train(key) -> dict`` for ``settings``: one whole training run, jit- and vmap-able.

    The dict holds the final parameters, the env steps taken (counted in the program), and per
    update the sum and count of the returns of the episodes that ended during it."""
    import flax.linen as nn
    import gymnax
    import jax
    import jax.numpy as jnp
    import optax

    env, env_params = gymnax.make("CartPole-v1")
    num_actions = env.action_space(env_params).n
    obs_shape = env.observation_space(env_params).shape
    batch_size = settings.num_envs * settings.num_steps
    minibatch_size = batch_size // settings.minibatches

    def mlp_torso(x):
        for width in HIDDEN:
            x = nn.Dense(width, kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)),
                         bias_init=nn.initializers.zeros)(x)
            x = nn.tanh(x)
        return x

    class Actor(nn.Module):
        @nn.compact
        def __call__(self, obs):
            return nn.Dense(num_actions, kernel_init=nn.initializers.orthogonal(0.01),
                            bias_init=nn.initializers.zeros)(mlp_torso(obs))

    class Critic(nn.Module):
        @nn.compact
        def __call__(self, obs):
            value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0),
                             bias_init=nn.initializers.zeros)(mlp_torso(obs))
            return jnp.squeeze(value, axis=-1)

    actor, critic = Actor(), Critic()

    def policy_and_value(params, obs):
        """Log-probabilities of every action, and the value, for a batch of observations."""
        logits = actor.apply(params["actor"], obs)
        return jax.nn.log_softmax(logits), critic.apply(params["critic"], obs)

    def lr_schedule(count):
        # one optimiser step per minibatch; the rate drops once per update, toward 0 at the end
        update = count // (settings.epochs * settings.minibatches)
        return settings.lr * (1.0 - update / settings.num_updates)

    optimiser = optax.chain(optax.clip_by_global_norm(MAX_GRAD_NORM), optax.adam(lr_schedule, eps=1e-5))

    class Learner(NamedTuple):
        params: Any
        opt_state: Any

    class Runner(NamedTuple):
        learner: Learner
        env_state: Any
        obs: jax.Array
        episode_return: jax.Array   # running return of each environment's current episode
        env_steps: jax.Array
        key: jax.Array

    class Transition(NamedTuple):
        obs: jax.Array
        action: jax.Array
        log_prob: jax.Array
        value: jax.Array
        reward: jax.Array
        done: jax.Array

    class UpdateStats(NamedTuple):
        finished_return_sum: jax.Array   # returns of the episodes that ended during the update
        finished_episodes: jax.Array

    vmapped_reset = jax.vmap(env.reset, in_axes=(0, None))
    vmapped_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def env_step(runner: Runner, _):
        """One step of every environment; the transition keeps the observation acted on."""
        key, key_action, key_env = jax.random.split(runner.key, 3)
        log_probs, value = policy_and_value(runner.learner.params, runner.obs)
        action = jax.random.categorical(key_action, log_probs)
        log_prob = jnp.take_along_axis(log_probs, action[:, None], axis=-1)[:, 0]
        out = vmapped_step(jax.random.split(key_env, settings.num_envs), runner.env_state, action, env_params)
        obs, env_state, reward = out[0], out[1], out[2]
        # gymnax >= 1.0 returns terminated and truncated apart; PureJaxRL ends the episode on either
        done = jnp.logical_or(out[3], out[4]) if len(out) == 6 else out[3]
        episode_return = runner.episode_return + reward
        transition = Transition(runner.obs, action, log_prob, value, reward, done)
        runner = runner._replace(
            env_state=env_state, obs=obs, key=key,
            episode_return=jnp.where(done, 0.0, episode_return),
            env_steps=runner.env_steps + settings.num_envs,
        )
        return runner, (transition, jnp.where(done, episode_return, 0.0))

    def gae(transitions: Transition, last_value):
        def backward(carry, t: Transition):
            advantage, next_value = carry
            not_done = 1.0 - t.done.astype(jnp.float32)
            delta = t.reward + settings.gamma * next_value * not_done - t.value
            advantage = delta + settings.gamma * settings.gae_lambda * not_done * advantage
            return (advantage, t.value), advantage

        _, advantages = jax.lax.scan(backward, (jnp.zeros_like(last_value), last_value), transitions,
                                     reverse=True, unroll=16)
        return advantages, advantages + transitions.value

    def loss_fn(params, batch: Transition, advantages, targets):
        log_probs, value = policy_and_value(params, batch.obs)
        log_prob = jnp.take_along_axis(log_probs, batch.action[:, None], axis=-1)[:, 0]
        value_clipped = batch.value + jnp.clip(value - batch.value, -CLIP_EPS, CLIP_EPS)
        value_loss = 0.5 * jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = jnp.exp(log_prob - batch.log_prob)
        policy_loss = -jnp.minimum(ratio * advantages,
                                   jnp.clip(ratio, 1.0 - CLIP_EPS, 1.0 + CLIP_EPS) * advantages).mean()
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
        return policy_loss + VF_COEF * value_loss - settings.ent_coef * entropy

    grad_fn = jax.grad(loss_fn)

    def minibatch_step(learner: Learner, minibatch):
        grads = grad_fn(learner.params, *minibatch)
        updates, opt_state = optimiser.update(grads, learner.opt_state, learner.params)
        return Learner(optax.apply_updates(learner.params, updates), opt_state), None

    def epoch(carry, _):
        learner, data, key = carry
        key, key_perm = jax.random.split(key)
        permutation = jax.random.permutation(key_perm, batch_size)

        def shuffle_split(x):
            x = x.reshape((batch_size,) + x.shape[2:])
            return jnp.take(x, permutation, axis=0).reshape((settings.minibatches, minibatch_size) + x.shape[1:])

        learner, _ = jax.lax.scan(minibatch_step, learner, jax.tree.map(shuffle_split, data))
        return (learner, data, key), None

    def update(runner: Runner, _):
        runner, (transitions, finished) = jax.lax.scan(env_step, runner, None, settings.num_steps)
        _, last_value = policy_and_value(runner.learner.params, runner.obs)
        advantages, targets = gae(transitions, last_value)
        key, key_epochs = jax.random.split(runner.key)
        (learner, _, _), _ = jax.lax.scan(epoch, (runner.learner, (transitions, advantages, targets), key_epochs),
                                          None, settings.epochs)
        stats = UpdateStats(finished.sum(), transitions.done.sum())
        return runner._replace(learner=learner, key=key), stats

    # The orthogonal initialiser takes a QR decomposition.  Vmapped, that is one batched LAPACK call,
    # which with jaxlib 0.10 on a CPU of few cores can wait forever on the thread pool it runs in;
    # under vmap the initialisation therefore runs as a loop over the runs (the same values).
    @jax.custom_batching.sequential_vmap
    def init_params(key):
        key_actor, key_critic = jax.random.split(key)
        dummy = jnp.zeros(obs_shape)
        return {"actor": actor.init(key_actor, dummy), "critic": critic.init(key_critic, dummy)}

    def train(key) -> dict:
        key, key_init, key_reset, key_run = jax.random.split(key, 4)
        params = init_params(key_init)
        obs, env_state = vmapped_reset(jax.random.split(key_reset, settings.num_envs), env_params)
        runner = Runner(
            learner=Learner(params, optimiser.init(params)), env_state=env_state, obs=obs,
            episode_return=jnp.zeros(settings.num_envs), env_steps=jnp.zeros((), jnp.int32), key=key_run,
        )
        runner, stats = jax.lax.scan(update, runner, None, settings.num_updates)
        return {"params": runner.learner.params, "env_steps": runner.env_steps,
                "finished_return_sum": stats.finished_return_sum, "finished_episodes": stats.finished_episodes}

    return train


def final_returns(return_sums, episodes, window: int) -> tuple[list[float | None], list[int]]:
    """Per run: the mean return of the episodes that ended during the last ``window`` updates."""
    import numpy as np

    sums = np.asarray(return_sums).reshape(-1, np.shape(return_sums)[-1])[:, -window:].sum(-1)
    counts = np.asarray(episodes).reshape(-1, np.shape(episodes)[-1])[:, -window:].sum(-1)
    means = [float(s / c) if c else None for s, c in zip(sums, counts)]
    return means, [int(c) for c in counts]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=500_000, help="env steps per run (whole updates)")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="independent runs trained at once (vmapped)")
    parser.add_argument("--lr", type=float, default=2.5e-4)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--ent-coef", type=float, default=0.01)
    args = parser.parse_args(argv)
    for name in ("timesteps", "num_envs", "num_steps", "epochs", "minibatches", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if (args.num_envs * args.num_steps) % args.minibatches:
        parser.error("--num-envs * --num-steps must split into --minibatches equal minibatches")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import jax

    batch = args.num_envs * args.num_steps
    num_updates = max(1, args.timesteps // batch)  # whole updates, as the other trainers run
    settings = Settings(args.num_envs, args.num_steps, args.epochs, args.minibatches, num_updates,
                        args.lr, args.gamma, args.gae_lambda, args.ent_coef)
    train = make_train(settings)
    key = jax.random.key(args.seed)
    if args.seeds > 1:
        train, key = jax.vmap(train), jax.random.split(key, args.seeds)

    t0 = time.perf_counter()
    compiled = jax.jit(train).lower(key).compile()
    compile_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = compiled(key)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - t0

    env_steps = int(jax.numpy.sum(out["env_steps"]))
    window = max(1, math.ceil(num_updates / 20))
    returns, episodes = final_returns(out["finished_return_sum"], out["finished_episodes"], window)
    measured = [r for r in returns if r is not None]
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "gymnax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = sys.version.split()[0]
    print(json.dumps({
        "name": "PureJaxRL-style PPO",
        "sps": env_steps / seconds,
        "env_steps": env_steps,
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "seeds": args.seeds,
        "updates": num_updates,
        "final_return": sum(measured) / len(measured) if measured else None,
        "final_returns": returns,
        "final_return_episodes": episodes,
        "final_return_updates": window,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "versions": versions,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
