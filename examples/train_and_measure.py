"""Train an aligned PPO agent on BF-programs, then measure it beside AIQ's Q(lambda).

The agent is trained with ``configs/programs.yaml`` (the ``no_low_symbols`` constitution,
the projection divergence in the loss), then both agents run on the very same programs,
freshly drawn from the universal prior, with the same random numbers, so their difference
is estimated from per-program differences (a paired 95% CI).

    python examples/train_and_measure.py                          # about 2 million steps of training
    python examples/train_and_measure.py --timesteps 1024 --train-envs 8 \
        --num-envs 16 --episode-length 20 --buckets 1              # a check that it runs (under a minute)

Every key the measurement takes is documented in train/measure_config.py, every training key
in train/config.py.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from aligned_rl.intelligence import paired_difference
from aligned_rl.train.agents import load_agent
from aligned_rl.train.config import load_config
from aligned_rl.train.loop import train
from aligned_rl.train.measure import draw_environments, measure
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_redraw import common_units

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "programs.yaml"), help="training config")
    parser.add_argument("--run-dir", help="run directory (default: checkpoints/BF-programs-no_low_symbols-s0-<time>)")
    parser.add_argument("--timesteps", type=int, help="training steps (default: the config's, 2,048,000)")
    parser.add_argument("--train-envs", type=int, help="programs trained on at once (default: the config's, 64)")
    parser.add_argument("--num-envs", type=int, default=1024, help="fresh programs each agent is measured on")
    parser.add_argument("--episode-length", type=int, default=1000, help="steps per measured program")
    parser.add_argument("--buckets", type=int, default=16,
                        help="measure programs in this many batches of similar cost (must divide --num-envs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measured programs")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()

    # 1. train: the config file plus dotted overrides, exactly as `aligned-rl train` takes them
    overrides = [f"run.progress={str(args.progress).lower()}"]
    if args.run_dir:
        overrides.append(f"run.dir={args.run_dir}")
    if args.timesteps:
        overrides.append(f"ppo.total_timesteps={args.timesteps}")
    if args.train_envs:
        overrides.append(f"env.num_envs={args.train_envs}")
    summary = train(load_config(args.config, overrides))
    print(f"trained {summary['env_steps']:,} steps at {summary['sps']:,.0f} steps/s -> {summary['run_dir']}")

    # 2. measure: draw the programs once and give the same draw to every agent
    config = MeasureConfig(agent="q_lambda", env="BF-programs", constitution="no_low_symbols",
                           num_envs=args.num_envs, episode_length=args.episode_length, buckets=args.buckets,
                           seed=args.seed, antithetic=False,  # a feed-forward policy does not adapt to rewards
                           progress=args.progress)
    sampled = draw_environments(config)  # (env, ParamBatch): the programs every agent will meet
    ppo = measure(dataclasses.replace(config, agent=summary["run_dir"]), agent=load_agent(summary["run_dir"]),
                  sampled=sampled)
    q_lambda = measure(config, sampled=sampled)  # agent=None: the baseline config.agent names

    # 3. the estimates, each a mean over the programs with its 95% CI and n
    filtered = sampled[1].filtered_mass  # prior mass the sampler filtered out (passive, overtime programs)
    both = common_units([ppo.per_env, q_lambda.per_env], config.num_envs)  # programs neither run redrew
    difference = paired_difference(ppo.per_env["average_reward"], q_lambda.per_env["average_reward"],
                                   config.num_envs, config.antithetic, filtered, both)  # PPO minus Q(lambda)
    print(f"{config.num_envs} programs x {config.episode_length} steps, seed {config.seed}; "
          f"prior mass filtered out {filtered:.3f}")
    print(f"{'':30s}{'aligned PPO':>34s}{'Q(lambda)':>34s}")
    for name, label in (("upsilon_average_reward", "Upsilon (reward per step)"),
                        ("sigma_aligned", "Sigma (aligned value V')"),
                        ("forbidden_rate", "forbidden-action rate")):
        print(f"{label:30s}{str(ppo.estimate(name)):>34s}{str(q_lambda.estimate(name)):>34s}")
    print(f"Upsilon, PPO minus Q(lambda), paired: {difference}")


if __name__ == "__main__":
    main()
