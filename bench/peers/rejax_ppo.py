"""Training throughput of rejax's PPO on gymnax CartPole-v1.

Runs inside its own virtual environment (bench/.venvs/rejax, see requirements-rejax.txt):
rejax 0.1.3 unpacks the 5-tuple step API of gymnax < 1.0, so it cannot share the project's
environment (gymnax 1.0.1).

The whole training run is one jitted function (``algo.train``). It is compiled ahead of time
(``jax.jit(...).lower(key).compile()``, timed separately as compile_seconds), then executed once
and timed until every output is ready (``jax.block_until_ready``). rejax's default callback
evaluates the policy on 128 episodes every ``eval_freq`` steps; that is not training, so it is
replaced by a no-op callback (the documented ``algo.replace(eval_callback=...)``).

Prints one JSON line: {"name", "sps", "env_steps", "seconds", "compile_seconds", "versions", ...}.
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
    args = parser.parse_args(argv)

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

    algo = algo.replace(eval_callback=no_eval)
    key = jax.random.PRNGKey(args.seed)

    t0 = time.perf_counter()
    compiled = jax.jit(algo.train).lower(key).compile()
    compile_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_state, _ = compiled(key)
    jax.block_until_ready(train_state)
    seconds = time.perf_counter() - t0

    env_steps = int(train_state.global_step)
    versions = {name: metadata.version(name) for name in ("rejax", "gymnax", "jax", "jaxlib", "flax", "optax", "distrax")}
    versions["python"] = sys.version.split()[0]
    print(json.dumps({
        "name": "rejax PPO",
        "sps": env_steps / seconds,
        "env_steps": env_steps,
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "updates": num_updates,
        "backend": jax.default_backend(),
        "versions": versions,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
