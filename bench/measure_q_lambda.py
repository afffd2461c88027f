"""Agent-environment steps per second of both JAX estimators against plain Python, in one run.

    python -m bench.measure_q_lambda                 # 16,384 programs x 1000 steps in JAX
    python -m bench.measure_q_lambda --envs 1024 --reference-envs 8
    taskset -c 0 python -m bench.measure_q_lambda    # everything on one core (see below)

Watkins Q(lambda) (the AIQ paper's settings for ``--steps`` steps:
``aligned_rl.baselines.paper_setting``) learns online in every one of ``--envs`` programs drawn
from the BF-programs prior (AIQ's 100,000-cell work tape), ``--steps`` steps each, measured by:

* lockstep: ``aligned-rl measure``'s runner (``train/measure_runner.py``, ``--buckets`` batches
  of similar cost): one scan step is an agent step and a vmapped machine cycle of every program;
* async: ``train/measure_async.py``: every program at its own pace, one machine instruction per
  loop iteration, the agent stepping the programs whose cycle has ended;
* plain Python: the same machine and agent written in plain Python as the test suite's oracles
  (``tests.reference.bf_machine.BFMachine``, ``tests.reference.aiq_agents.RefQLambda``), on the
  first ``--reference-envs`` of the same programs for the same number of steps.

Both JAX runners get the same programs, agent and key, without antithetic twins, and are timed
as ``aligned-rl measure`` times them (compile excluded, blocked until ready); ``--repeats``
runs each that many times (alternating) and the medians are reported.  Steps per second is a
rate, so the three are comparable although the reference runs fewer programs.  Programs are
sampled once, untimed.

On a shared CPU, XLA's intra-op threads wait for each other whenever another process holds a
core, and both JAX runners run twice as fast pinned to one core (``taskset -c 0``); the JSON
records the cores the process could use.  Writes ``bench/results/measure_q_lambda.json``.  Run
it from the repository root, as a module, so that ``tests.reference`` imports.
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
from rich.progress import Progress

import aligned_rl.envs as envs
from aligned_rl.baselines import paper_setting
from aligned_rl.envs.programs_machine import decode
from aligned_rl.intelligence import estimation_units, simple_estimate
from aligned_rl.train.agents import make_agent
from aligned_rl.train.measure import _with_episode_length, per_env_values
from aligned_rl.train.measure_async import AsyncRunner
from aligned_rl.train.measure_config import load_measure_config
from aligned_rl.train.measure_runner import EnvRunner
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
    parser.add_argument("--envs", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--reference-envs", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", type=int, default=16, help="lockstep: batches of similar cost (see aligned-rl measure)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each implementation (medians reported)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "measure_q_lambda.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    env, batch = envs.sample("BF-programs", jax.random.PRNGKey(args.seed), args.envs)
    print(f"sampled {args.envs} programs in {time.perf_counter() - start:.0f}s (not timed below)")
    config = load_measure_config(None, [
        "agent=q_lambda", f"num_envs={args.envs}", f"episode_length={args.steps}", "antithetic=false",
        f"seed={args.seed}", "progress=false", f"buckets={args.buckets}",
    ])
    params = _with_episode_length(batch.params, args.steps)
    agent = make_agent(config.agent, env, env.num_actions, config.env, {}, config.agent_reward_scale, args.steps)
    constitution, value = envs.constitution(config.env, "none"), envs.spec(config.env).value
    runners = {
        "lockstep": EnvRunner(config, agent, env, params, constitution, None, value, args.steps),
        "async": AsyncRunner(config, agent, env, params, constitution, None, value, args.steps),
    }
    key = jax.random.PRNGKey(config.seed + 1)  # measure's
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    upsilon = {}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            runner.seconds, runner.steps = 0.0, 0
            with Progress(disable=True) as progress:
                sums = runner.run_buckets(np.arange(args.envs), key, config.buckets, progress, "")
            seconds[name].append(runner.seconds)
            values = per_env_values({k: v for k, v in sums.items() if k != "voided"}, config)["average_reward"]
            upsilon[name] = simple_estimate(estimation_units(values, args.envs, False), batch.filtered_mass)
    rates = {name: args.envs * args.steps / float(np.median(s)) for name, s in seconds.items()}

    programs = [decode(batch.params.program[i], batch.params.length[i]) for i in range(args.reference_envs)]
    python_seconds, reference_means = [], []
    for _ in range(args.repeats):
        rng = random.Random(args.seed)
        start = time.perf_counter()
        reference_means = [run_reference(p, args.steps, env.num_symbols, rng) for p in programs]
        python_seconds.append(time.perf_counter() - start)
    rates["python"] = args.reference_envs * args.steps / float(np.median(python_seconds))

    print(f"Q(lambda) on BF-programs, {args.steps} steps per program, compile excluded"
          f"{f', median of {args.repeats} runs' if args.repeats > 1 else ''}")
    print(f"{'implementation':34s} {'programs':>9s} {'steps/s':>14s}")
    rows = [("JAX async (measure_async)", args.envs, "async"),
            (f"JAX lockstep ({args.buckets} cost buckets)", args.envs, "lockstep"),
            ("plain Python reference", args.reference_envs, "python")]
    for label, count, name in rows:
        print(f"{label:34s} {count:>9d} {rates[name]:>14,.0f}")
    ratios = {"async_over_lockstep": rates["async"] / rates["lockstep"],
              "async_over_python": rates["async"] / rates["python"],
              "lockstep_over_python": rates["lockstep"] / rates["python"]}
    print("ratios: " + ", ".join(f"{k.replace('_over_', ' / ')} {v:.1f}x" for k, v in ratios.items()))
    for name in runners:
        e = upsilon[name]
        print(f"Upsilon({name}) = {e.mean:.4f} +- {e.se:.4f} (n = {e.n})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": f"python -m bench.measure_q_lambda --envs {args.envs} --steps {args.steps} "
                   f"--reference-envs {args.reference_envs} --buckets {args.buckets} --repeats {args.repeats}",
        "steps_per_second": rates, "ratios": ratios,
        "seconds": {**seconds, "python": python_seconds},
        "upsilon": {name: e.as_dict() for name, e in upsilon.items()},
        "python_mean_reward_first_programs": float(np.mean(reference_means)),
        "compile_seconds": {name: r.compile_seconds for name, r in runners.items()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "cores_usable": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "device": str(jax.devices()[0]), "jax": jax.__version__},
    }, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
