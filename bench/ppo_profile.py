"""Where one PPO update spends its time, phase by phase, and the kernels of one environment step.

Run from the repository root with the project's environment active:

    python -m bench.ppo_profile                       # the bench's settings, aligned and alignment off
    python -m bench.ppo_profile --num-envs 8 --num-steps 32 --epochs 20 --minibatches 1   # the zoo's

Each phase of :meth:`AlignedPPO.update` is compiled on its own (ahead of time, compile excluded),
run ``--inner`` times inside one ``lax.fori_loop`` so that dispatch does not count, blocked until
ready, and timed ``--repeats`` times (median reported):

* rollout: ``num_steps`` steps of the one rollout (judge, act, step, count);
* complete: values, next values, D and the learner's reward over the rollout, then GAE;
* shuffle: one epoch's permutation of the batch into minibatches;
* grad step: one minibatch's gradient and optimiser step;
* whole update: ``run_updates`` of ``--inner`` updates, the figure the bench's steps per second
  come from.  The phases' sum (rollout + complete + epochs x (shuffle + minibatches x grad step))
  is printed beside it; what it leaves over is the scans' own overhead.

"kernels per env step" counts the instructions XLA's CPU (or GPU) backend runs for one step of
the rollout, compiled alone: fusions, matrix products, sorts, custom calls and the like (not
parameters, tuples or constants).  It is the cost of a step that does not grow with the batch.
Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from aligned_rl.train.config import load_config
from aligned_rl.train.loop import build, initial_state
from aligned_rl.train.ppo import LearnBatch
from bench.ppo_cartpole import PRESETS, ROOT, ppo_overrides, unaligned_config

CONFIG = ROOT / "configs" / "cartpole.yaml"  # the bench's aligned entry
# instructions that launch no work of their own
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "copy-start", "copy-done",
         "after-all", "partition-id", "replica-id"}


def settings(args: argparse.Namespace) -> list[str]:
    """The bench's overrides (its hyperparameters, at this profile's sizes)."""
    return [f"env.num_envs={args.num_envs}", f"ppo.num_steps={args.num_steps}",
            f"ppo.update_epochs={args.epochs}", f"ppo.num_minibatches={args.minibatches}",
            f"ppo.total_timesteps={args.num_envs * args.num_steps * 100}", "run.progress=false",
            *ppo_overrides(argparse.Namespace(**PRESETS["bench"]))]


def median_seconds(call, repeats: int, per_call: int) -> float:
    """Median seconds of one of the ``per_call`` runs inside ``call()`` (run once first, then
    ``repeats`` times, each blocked until ready)."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append((time.perf_counter() - start) / per_call)
    return statistics.median(times)


def timed(fn, carry, inner: int, repeats: int) -> float:
    """Median seconds of one ``fn(carry) -> carry``, run ``inner`` times per compiled call."""
    loop = jax.jit(lambda c: jax.lax.fori_loop(0, inner, lambda i, c: fn(c), c)).lower(carry).compile()
    return median_seconds(lambda: loop(carry), repeats, inner)


def kernels(compiled_text: str) -> int:
    """Instructions of the entry computation that do work (see the module docstring)."""
    entry = compiled_text[compiled_text.index("\nENTRY "):]
    entry = entry[:entry.index("\n}")]
    count = 0
    for line in entry.splitlines()[1:]:
        match = re.search(r"=\s*\S+\s+([a-z][\w-]*)\(", line)
        if match and match.group(1) not in _FREE:
            count += 1
    return count


def profile(args: argparse.Namespace, aligned: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:  # alignment off: the bench's unaligned config
        config = CONFIG if aligned else unaligned_config(CONFIG, Path(tmp) / "unaligned.yaml")
        setup = build(load_config(config, settings(args)))
    algo, ep, cp = setup.algo, setup.env_params, setup.cparams
    state = initial_state(setup)
    T, k = args.num_steps, args.minibatches
    collect = lambda s: s.replace(rollout=algo.rollout(s.params).run(ep, cp, s.rollout, T)[0])  # noqa: E731
    carry, steps = jax.jit(lambda s: algo.rollout(s.params).run(ep, cp, s.rollout, T))(state)

    def complete(s):
        traj = algo._complete(s.params, cp, steps, s.rollout.agent_state)
        adv, _ = algo._advantages(traj.reward, traj.value, traj.next_value, steps.terminated, steps.done)
        return s.replace(beta=s.beta + 1e-12 * adv.mean())

    traj = algo._complete(state.params, cp, steps, state.rollout.agent_state)
    adv, targets = algo._advantages(traj.reward, traj.value, traj.next_value, steps.terminated, steps.done)
    batch = LearnBatch(steps.obs, steps.prev_reward, steps.first, steps.action, steps.log_prob, traj.value,
                       steps.verdict.allowed, steps.verdict.sigma, None)

    def shuffle(key):
        minibatches = algo._minibatches(key, batch, adv, targets, state.rollout.agent_state)
        return jax.random.fold_in(key, jnp.sum(minibatches[1][0]).astype(jnp.int32))

    first = jax.tree.map(lambda x: x[0], algo._minibatches(jax.random.PRNGKey(0), batch, adv, targets,
                                                             state.rollout.agent_state)[:3]) + (None,)

    def grad_step(c):
        params, opt_state = c
        grads, _ = jax.grad(algo.loss, has_aux=True)(params, state.beta, cp, *first)
        updates, opt_state = algo.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    r = args.repeats
    phases = {
        "rollout": timed(collect, state, max(1, args.inner // 4), r),
        "complete": timed(complete, state, args.inner, r),
        "shuffle": timed(shuffle, jax.random.PRNGKey(1), args.inner, r),
        "grad step": timed(grad_step, (state.params, state.opt_state), args.inner, r),
    }
    whole = jax.jit(algo.run_updates, static_argnums=3).lower(state, ep, cp, args.inner).compile()
    phases["whole update"] = median_seconds(lambda: whole(state, ep, cp), r, args.inner)
    phases["sum of phases"] = (phases["rollout"] + phases["complete"]
                               + args.epochs * (phases["shuffle"] + k * phases["grad step"]))
    step = jax.jit(lambda c: algo.rollout(state.params).step(ep, cp, c)).lower(carry).compile()
    return {"ms": {name: 1e3 * s for name, s in phases.items()},
            "kernels_per_env_step": kernels(step.as_text()),
            "sps": setup.config.steps_per_update / phases["whole update"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--inner", type=int, default=20, help="runs of a phase per compiled call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per phase; the median is reported")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ppo_profile.json")
    args = p.parse_args(argv)
    if min(args.num_envs, args.num_steps, args.epochs, args.minibatches, args.inner, args.repeats) < 1:
        p.error("every size must be >= 1")
    if (args.num_envs * args.num_steps) % args.minibatches:
        p.error("--num-envs * --num-steps must split into --minibatches equal minibatches")
    results = {}
    for name, aligned in (("aligned", True), ("alignment off", False)):
        print(f"[{name}] compiling and timing ...", flush=True)
        results[name] = profile(args, aligned)
    names = list(results["aligned"]["ms"])
    print(f"\none update: {args.num_envs} envs x {args.num_steps} steps, {args.epochs} epochs x "
          f"{args.minibatches} minibatches; ms, median of {args.repeats}")
    print(f"{'phase':<16}" + "".join(f"{n:>16}" for n in results))
    for phase in names:
        print(f"{phase:<16}" + "".join(f"{r['ms'][phase]:>16.3f}" for r in results.values()))
    print(f"{'kernels/env step':<16}" + "".join(f"{r['kernels_per_env_step']:>16d}" for r in results.values()))
    print(f"{'steps/s':<16}" + "".join(f"{r['sps']:>16,.0f}" for r in results.values()))
    a, b = results["aligned"]["ms"]["whole update"], results["alignment off"]["ms"]["whole update"]
    print(f"\nalignment's cost per update: {100 * (a / b - 1):+.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, "-m", "bench.ppo_profile", *(argv or sys.argv[1:])]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(jax.devices()[0]), "jax": jax.__version__,
        "settings": {"num_envs": args.num_envs, "num_steps": args.num_steps, "epochs": args.epochs,
                     "minibatches": args.minibatches, "inner": args.inner, "repeats": args.repeats},
        "results": results}, indent=2) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
