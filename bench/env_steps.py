"""Environment steps per second at 4096 environments, for every registered family, with
gymnax's CartPole-v1 measured in the same run as the reference.

    python -m bench.env_steps                       # all registered families
    python -m bench.env_steps --envs 4096 --steps 200 --families CartPole-v1 BF-programs

For each family: draw ``--envs`` instances from its sampler, reset them, and time a jitted
``lax.scan`` of ``--steps`` vmapped steps with uniformly random actions (compile excluded,
``block_until_ready``; median of ``--repeats``).  A second column times the same steps with
the family's first constitution judged at every step (action rules, one-step lookahead of
state rules, sigma), which is what the learner pays on top of the environment.  Every
step's reward and observation are summed into the result, so no step's work can be
compiled away.
Writes ``bench/results/env_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import aligned_rl.envs as envs
from aligned_rl.constitution import judge


def make_runner(env, params, constitution, num_actions: int, steps: int):
    n = jax.tree.leaves(params)[0].shape[0]

    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, n), params)

        def body(carry, _):
            obs, state, rng = carry
            rng, k_act, k_step = jax.random.split(rng, 3)
            keys = jax.random.split(k_step, n)
            if constitution is not None:
                verdict = jax.vmap(
                    lambda p, k, o, s: judge(constitution, constitution.params, env, p, k, o, s, num_actions)
                )(params, keys, obs, state)
                logits = jnp.where(verdict.allowed, 0.0, -1.0)  # consume the verdict
            else:
                logits = jnp.zeros((n, num_actions))
            action = jax.random.categorical(k_act, logits)
            obs, state, reward, *_ = jax.vmap(env.step)(keys, state, action, params)
            # consume reward and observation of every step, or XLA may drop the work that makes them
            return (obs, state, rng), reward.sum() + jnp.sum(obs)

        (obs, state, _), rewards = jax.lax.scan(body, (obs, state, k_run), None, length=steps)
        return rewards.sum()

    return jax.jit(run)


def measure(runner, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    compiled = runner.lower(jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.PRNGKey(i + 1)))
        times.append(time.perf_counter() - start)
    return statistics.median(times), compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", nargs="*", help="default: every registered family")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "env_steps.json"))
    args = parser.parse_args()

    import gymnax

    families = args.families or envs.registered_families()
    rows = []
    # reference: gymnax's own make(), not our registry
    ref_env, ref_params = gymnax.make("CartPole-v1")
    ref_batch = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (args.envs,) + jnp.shape(x)), ref_params)
    seconds, compile_s = measure(make_runner(ref_env, ref_batch, None, 2, args.steps), args.repeats)
    reference_sps = args.envs * args.steps / seconds
    rows.append({"family": "gymnax CartPole-v1 (reference)", "sps": reference_sps, "sps_judged": None,
                 "compile_s": compile_s, "constitution": None})
    for name in families:
        env, batch = envs.sample(name, jax.random.PRNGKey(0), args.envs)
        num_actions = int(env.action_space(env.default_params).n)
        seconds, compile_s = measure(make_runner(env, batch.params, None, num_actions, args.steps), args.repeats)
        shipped = sorted(envs.spec(name).constitutions)
        judged = None
        if shipped:
            cons = envs.constitution(name, shipped[0])
            judged_s, _ = measure(make_runner(env, batch.params, cons, num_actions, args.steps), args.repeats)
            judged = args.envs * args.steps / judged_s
        rows.append({"family": name, "sps": args.envs * args.steps / seconds, "sps_judged": judged,
                     "compile_s": compile_s, "constitution": shipped[0] if shipped else None,
                     "mean_bits": float(batch.bits.mean())})

    print(f"env steps/s at {args.envs} environments, {args.steps} steps, median of {args.repeats}, "
          f"compile excluded ({jax.devices()[0].platform}, {os.cpu_count()} cores)")
    print(f"{'family':34s} {'steps/s':>13s} {'vs CartPole':>11s} {'with constitution':>18s}  constitution")
    for r in rows:
        judged = f"{r['sps_judged']:>18,.0f}" if r["sps_judged"] else f"{'-':>18s}"
        print(f"{r['family']:34s} {r['sps']:>13,.0f} {r['sps'] / reference_sps:>10.2f}x {judged}  {r['constitution'] or '-'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python -m bench.env_steps " + " ".join(f"--{k} {v}" for k, v in (("envs", args.envs), ("steps", args.steps), ("repeats", args.repeats))),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "device": str(jax.devices()[0]), "jax": jax.__version__},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
