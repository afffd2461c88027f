"""Training throughput of Stable-Baselines3's PPO on gymnasium CartPole-v1 (PyTorch, CPU).

Runs inside its own virtual environment (bench/.venvs/sb3, see requirements-sb3.txt).
64 environments in a DummyVecEnv (``make_vec_env``), the PPO hyperparameters of the project's
CartPole config (the learning rate, gamma, GAE lambda and entropy weight can be set, for
rl-baselines3-zoo's tuned settings). SB3 compiles nothing: the model (networks, optimizer, environments) is built
first, outside the timing, then ``model.learn(total_timesteps)`` is timed. Its learning rate is
annealed linearly to 0, as the project's trainer does.

``--threads`` sets torch's intra-op threads (default 1; 0 keeps torch's default of one per core).
For networks this small, thread synchronisation costs more than it saves, and with any other
load on the machine a multi-threaded torch slows down by an order of magnitude; one thread is
the setting SB3's maintainers suggest for speed on CPU.

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
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0 = torch's default")
    parser.add_argument("--lr", type=float, default=2.5e-4, help="initial learning rate, annealed linearly to 0")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--ent-coef", type=float, default=0.01)
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    batch = args.num_envs * args.num_steps
    num_updates = max(1, args.timesteps // batch)  # whole rollouts, as the project's trainer does
    total = num_updates * batch

    env = make_vec_env("CartPole-v1", n_envs=args.num_envs, seed=args.seed, vec_env_cls=DummyVecEnv)
    lr = args.lr
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=lambda progress_remaining: lr * progress_remaining,
        n_steps=args.num_steps,
        batch_size=batch // args.minibatches,
        n_epochs=args.epochs,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        clip_range=0.2,
        ent_coef=args.ent_coef,
        vf_coef=0.5,
        max_grad_norm=0.5,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
        device="cpu",
        seed=args.seed,
        verbose=0,
    )

    t0 = time.perf_counter()
    model.learn(total_timesteps=total, progress_bar=False)
    seconds = time.perf_counter() - t0

    env_steps = int(model.num_timesteps)
    versions = {name: metadata.version(name) for name in ("stable_baselines3", "gymnasium", "torch", "numpy")}
    versions["python"] = sys.version.split()[0]
    print(json.dumps({
        "name": "SB3 PPO (torch CPU)",
        "sps": env_steps / seconds,
        "env_steps": env_steps,
        "seconds": seconds,
        "compile_seconds": 0.0,
        "updates": num_updates,
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
