"""Training throughput of rejax's PPO on gymnax CartPole-v1.

Runs inside its own virtual environment (bench/.venvs/rejax, see requirements-rejax.txt):
rejax 0.1.3 unpacks the 5-tuple step API of gymnax < 1.0, so it cannot share the project's
environment (gymnax 1.0.1).

The whole training run is one jitted function (``algo.train``). It is compiled ahead of time
(``jax.jit(...).lower(key).compile()``, timed separately as compile_seconds), then executed once
and timed until every output is ready (``jax.block_until_ready``). rejax's default callback
evaluates the policy on 128 episodes every ``eval_freq`` steps; that is not training, so it is
replaced by a no-op callback (the documented ``algo.replace(eval_callback=...)``).

``--seeds N`` trains N independent runs at once, as rejax documents it: ``jax.vmap(algo.train)``
over N keys split from ``--seed``, compiled and timed as one program; sps counts the env steps
of all N runs.  After the timed run, and outside it, every run's final policy is evaluated with
rejax's own evaluation (its default callback: 128 episodes), so that the returns show whether the
runs learned.

Prints one JSON line: {"name", "sps", "env_steps", "seconds", "compile_seconds", "seeds",
"eval_return", "eval_returns", "versions", ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=500_000)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="independent runs trained at once (vmapped)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")

    import jax
    from rejax import PPO

    batch = args.num_envs * args.num_steps
    num_updates = max(1, args.timesteps // batch)  # whole updates, as the project's trainer does
    total = num_updates * batch

    algo = PPO.create(
        env="CartPole-v1",
        num_envs=args.num_envs,
        num_steps=args.num_steps,
        num_epochs=args.epochs,
        num_minibatches=args.minibatches,
        total_timesteps=total,
        eval_freq=total,  # one block of num_updates iterations (a single fori_loop)
        skip_initial_evaluation=True,
        learning_rate=2.5e-4,
        gamma=0.99,
        gae_lambda=0.95,
        clip_eps=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        normalize_observations=False,
        normalize_rewards=False,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (64, 64)},
    )

    def no_eval(algo, train_state, rng):
        return ()

    evaluate = algo.eval_callback  # rejax's default: the policy on 128 episodes
    algo = algo.replace(eval_callback=no_eval)
    key = jax.random.PRNGKey(args.seed)
    train = algo.train
    if args.seeds > 1:
        train, key = jax.vmap(algo.train), jax.random.split(key, args.seeds)

    t0 = time.perf_counter()
    compiled = jax.jit(train).lower(key).compile()
    compile_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_state, _ = compiled(key)
    jax.block_until_ready(train_state)
    seconds = time.perf_counter() - t0

    env_steps = int(jax.numpy.sum(train_state.global_step))

    # Not timed: each run's final policy on rejax's evaluation episodes.
    def final_return(train_state, rng):
        _, returns = evaluate(algo, train_state, rng)
        return returns.mean()

    eval_keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.seeds)
    if args.seeds > 1:
        eval_returns = [float(r) for r in jax.jit(jax.vmap(final_return))(train_state, eval_keys)]
    else:
        eval_returns = [float(jax.jit(final_return)(train_state, eval_keys[0]))]
    versions = {name: metadata.version(name) for name in ("rejax", "gymnax", "jax", "jaxlib", "flax", "optax", "distrax")}
    versions["python"] = sys.version.split()[0]
    print(json.dumps({
        "name": "rejax PPO",
        "sps": env_steps / seconds,
        "env_steps": env_steps,
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "seeds": args.seeds,
        "updates": num_updates,
        "eval_return": sum(eval_returns) / len(eval_returns),
        "eval_returns": eval_returns,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "versions": versions,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
