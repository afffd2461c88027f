"""Agent-environment steps per second of the JAX estimator against plain Python, in one run.

    python -m bench.measure_q_lambda                 # 4096 programs x 1000 steps in JAX
    python -m bench.measure_q_lambda --envs 1024 --reference-envs 8

JAX: Watkins Q(lambda) (the AIQ paper's settings for ``--steps`` steps:
``aligned_rl.baselines.paper_setting``) learning online in every one of ``--envs`` programs
drawn from the BF-programs prior, ``--steps`` steps each, one compiled program
(``aligned-rl measure``'s runner; compile excluded, blocked until ready).  Plain Python: the
same machine and the same agent, written in plain Python as the test suite's oracles
(``tests.reference.bf_machine.BFMachine`` and ``tests.reference.aiq_agents.RefQLambda``), run
on the first ``--reference-envs`` of the same programs for the same number of steps.  Steps
per second is a rate, so the two are comparable although the reference runs fewer programs.
Writes ``bench/results/measure_q_lambda.json``.  Run it from the repository root, as a
module, so that ``tests.reference`` imports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import jax
import numpy as np

import aligned_rl.envs as envs
from aligned_rl.baselines import paper_setting
from aligned_rl.envs.programs_machine import decode
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import load_measure_config
from tests.reference.aiq_agents import RefQLambda
from tests.reference.bf_machine import BFMachine

REPO = Path(__file__).resolve().parents[1]


def run_reference(program: str, steps: int, num_symbols: int, rng: random.Random) -> float:
    """Q(lambda) against the plain-Python machine for ``steps`` cycles; returns the mean reward."""
    machine = BFMachine(program, n=num_symbols)
    agent = RefQLambda(num_symbols, num_symbols, **paper_setting("q_lambda", steps))
    reward, obs, total = 0.0, (num_symbols - 1) // 2, 0.0
    for _ in range(steps):
        action = agent.perceive(obs, reward * 100.0, [rng.random(), rng.random(), rng.random()])
        reward, cells, _ = machine.act(action, seed=rng.getrandbits(32))
        obs = cells[0]
        total += reward
    return total / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--reference-envs", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", type=int, default=16, help="batches of similar cost (see aligned-rl measure)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "measure_q_lambda.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    env, batch = envs.sample("BF-programs", jax.random.PRNGKey(args.seed), args.envs)
    print(f"sampled {args.envs} programs in {time.perf_counter() - start:.0f}s (not timed below)")
    config = load_measure_config(None, [
        "agent=q_lambda", f"num_envs={args.envs}", f"episode_length={args.steps}", "antithetic=false",
        f"seed={args.seed}", "progress=false", f"buckets={args.buckets}",
    ])
    report = measure(config, sampled=(env, batch)).report
    jax_sps = report["agent_env_steps_per_second"]

    programs = [decode(batch.params.program[i], batch.params.length[i]) for i in range(args.reference_envs)]
    rng = random.Random(args.seed)
    start = time.perf_counter()
    reference_means = [run_reference(p, args.steps, env.num_symbols, rng) for p in programs]
    seconds = time.perf_counter() - start
    python_sps = args.reference_envs * args.steps / seconds

    ratio = jax_sps / python_sps
    print(f"Q(lambda) on BF-programs, {args.steps} steps per program, compile excluded")
    print(f"{'implementation':28s} {'programs':>9s} {'steps/s':>14s}")
    print(f"{'JAX (aligned-rl measure)':28s} {args.envs:>9d} {jax_sps:>14,.0f}")
    print(f"{'plain Python reference':28s} {args.reference_envs:>9d} {python_sps:>14,.0f}")
    print(f"ratio JAX / Python: {ratio:,.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": f"python -m bench.measure_q_lambda --envs {args.envs} --steps {args.steps} "
                   f"--reference-envs {args.reference_envs}",
        "jax_steps_per_second": jax_sps, "python_steps_per_second": python_sps, "ratio": ratio,
        "jax_upsilon": report["estimates"]["upsilon_average_reward"],
        "python_mean_reward_first_programs": float(np.mean(reference_means)),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": str(jax.devices()[0]),
                    "jax": jax.__version__},
    }, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
