"""PPO training throughput on CartPole: aligned-rl against rejax, a PureJaxRL-style PPO and SB3.

aligned-rl runs aligned and with alignment off.

Run from the repository root with the project's environment active:

    python -m bench.ppo_cartpole                     # everything, defaults below
    python -m bench.ppo_cartpole --repeats 3         # median of 3 runs per entry
    python -m bench.ppo_cartpole --skip sb3          # leave out an entry (ours, ours-none, rejax, purejaxrl, sb3, ...)
    python -m bench.ppo_cartpole --seeds 8           # also 8 seeds trained at once (vmapped), and one after another
    python -m bench.ppo_cartpole --preset zoo        # SB3's own tuned CartPole settings (rl-baselines3-zoo)

Every entry trains PPO with the same hyperparameters (64 envs, 128 steps per rollout, 4 epochs,
4 minibatches, lr 2.5e-4, gamma 0.99, GAE lambda 0.95, clip 0.2, entropy 0.01, value 0.5,
max grad norm 0.5, 2x64 tanh networks) and reports environment steps per second of training,
compile time excluded, with results blocked until ready. rejax and SB3 run in their own virtual
environments under bench/.venvs/, created on first use with the Python running this script and
the pinned requirements in bench/peers/; the PureJaxRL-style PPO (bench/peers/purejaxrl_ppo.py)
needs only jax, flax, optax and gymnax and runs with this Python. Results go to
bench/results/ppo_cartpole.json.

``--seeds N`` (N > 1) adds entries that train N seeds of the same run: aligned-rl with
``seed=[s, ..., s+N-1]`` (the N runs vmapped in one program), aligned-rl N times one after
another, and rejax and the PureJaxRL-style PPO with ``jax.vmap(train)`` over N keys. Their SPS
counts the env steps of all N runs.

``--preset zoo`` runs aligned-rl and SB3 at the settings rl-baselines3-zoo tuned for SB3's PPO on
CartPole-v1 instead (8 envs, 32 steps, 20 epochs of one 256-step minibatch, lr 1e-3 annealed,
gamma 0.98, GAE lambda 0.8, no entropy bonus, 100,000 steps; the zoo also anneals the clip range,
which aligned-rl and the PureJaxRL-style PPO keep at 0.2), and leaves rejax out (its runner takes
the bench's settings only). Results go to bench/results/ppo_cartpole_zoo.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
PEERS = BENCH / "peers"
DEFAULT_OUT = BENCH / "results" / "ppo_cartpole.json"

ENTRIES = ("ours", "ours-none", "rejax", "purejaxrl", "sb3")
# Measured with --seeds N > 1, each beside the entry it is named after (skipping that entry skips it too).
SEED_ENTRIES = {"ours-seeds": "ours", "ours-sequential": "ours", "rejax-seeds": "rejax", "purejaxrl-seeds": "purejaxrl"}
ALL_ENTRIES = ENTRIES + tuple(SEED_ENTRIES)
VENV_PEERS = ("rejax", "sb3")  # the peers with a virtual environment of their own; purejaxrl runs with this Python
LABELS = {
    "ours": "aligned-rl, aligned (safe_zone, projection)",
    "ours-none": "aligned-rl, alignment off",
    "rejax": "rejax PPO",
    "purejaxrl": "PureJaxRL-style PPO (bench/peers/purejaxrl_ppo.py)",
    "sb3": "Stable-Baselines3 PPO (torch CPU)",
}
SEED_LABELS = {
    "ours-seeds": "aligned-rl, aligned, {n} seeds vmapped",
    "ours-sequential": "aligned-rl, aligned, {n} seeds one after another",
    "rejax-seeds": "rejax PPO, {n} seeds vmapped",
    "purejaxrl-seeds": "PureJaxRL-style PPO, {n} seeds vmapped",
}


def label(entry: str, seeds: int) -> str:
    return LABELS[entry] if entry in LABELS else SEED_LABELS[entry].format(n=seeds)

# The settings every entry trains with: the bench's own, and the ones rl-baselines3-zoo tuned for SB3's
# PPO on CartPole-v1 (hyperparams/ppo.yml).  The peers' runners take the same values as flags.
PRESETS = {
    "bench": {"num_envs": 64, "num_steps": 128, "epochs": 4, "minibatches": 4, "timesteps": 500_000,
              "lr": 2.5e-4, "gamma": 0.99, "gae_lambda": 0.95, "ent_coef": 0.01},
    "zoo": {"num_envs": 8, "num_steps": 32, "epochs": 20, "minibatches": 1, "timesteps": 100_000,
            "lr": 1e-3, "gamma": 0.98, "gae_lambda": 0.8, "ent_coef": 0.0},
}
HYPERPARAMETERS = ("lr", "gamma", "gae_lambda", "ent_coef")  # the preset's values beyond the sizes


def ppo_overrides(args: argparse.Namespace) -> list[str]:
    """The shared hyperparameters as aligned-rl overrides."""
    return [f"ppo.lr={args.lr}", "ppo.anneal_lr=true", f"ppo.gamma={args.gamma}", f"ppo.gae_lambda={args.gae_lambda}",
            "ppo.clip_eps=0.2", f"ppo.ent_coef={args.ent_coef}", "ppo.vf_coef=0.5", "ppo.max_grad_norm=0.5",
            "ppo.hidden_sizes=[64,64]", "ppo.activation=tanh"]


# ----------------------------------------------------------------------------- helpers


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def say(message: str) -> None:
    print(message, flush=True)


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str, rebuild: bool = False) -> tuple[Path | None, str]:
    """The peer's venv, created with this interpreter and its pinned requirements if missing or
    stale (the requirements file changed). Returns (python, "") or (None, error text)."""
    requirements = PEERS / f"requirements-{name}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    venv = VENVS / name
    stamp = venv / ".requirements.sha256"
    python = venv_python(name)
    if not rebuild and python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python, ""
    if venv.exists():
        shutil.rmtree(venv)
    say(f"[setup] creating {venv.relative_to(ROOT)} from {requirements.relative_to(ROOT)} (first run only; minutes)")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail(proc.stdout + proc.stderr)}"
    stamp.write_text(digest + "\n")
    return python, ""


def aligned_rl_command() -> list[str]:
    """The `aligned-rl` console script of the environment running this script."""
    script = Path(sys.executable).parent / "aligned-rl"
    if script.exists():
        return [str(script)]
    found = shutil.which("aligned-rl")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from aligned_rl.cli import main; sys.exit(main())"]


def unaligned_config(source: Path, dest: Path) -> Path:
    """``source`` with no constitution at all and no divergence in the loss. Its constitution
    section goes whole: the parameters of a constitution do not fit "none"."""
    from omegaconf import OmegaConf  # a dependency of aligned-rl, so present where it runs

    cfg = OmegaConf.load(source)
    cfg.constitution = {"name": "none"}
    if "alignment" not in cfg:
        cfg.alignment = {}
    cfg.alignment.divergence = "none"
    OmegaConf.save(cfg, dest)
    return dest


def run_ours(args: argparse.Namespace, aligned: bool, seed: int | list[int] | None = None) -> dict:
    """One `aligned-rl train` run; ``seed`` a list trains those seeds vmapped in one program."""
    seed = args.seed if seed is None else seed
    seed_override = f"seed=[{','.join(map(str, seed))}]" if isinstance(seed, list) else f"seed={seed}"
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        run_dir = Path(tmp) / "run"
        config = Path(args.config)
        if not aligned:
            config = unaligned_config(config, Path(tmp) / "unaligned.yaml")
        cmd = aligned_rl_command() + ["train", "--config", str(config),
            f"run.dir={run_dir}",
            f"ppo.total_timesteps={args.timesteps}",
            f"env.num_envs={args.num_envs}",
            f"ppo.num_steps={args.num_steps}",
            f"ppo.update_epochs={args.epochs}",
            f"ppo.num_minibatches={args.minibatches}",
            *ppo_overrides(args),
            seed_override,
            "run.progress=false",
            # chunks of a twentieth of the run: the return is that of the episodes of the last chunk
            # (the end of training); the seconds are the chunks' alone, the logging between them excluded
            f"run.updates_per_chunk={max(1, -(-(args.timesteps // (args.num_envs * args.num_steps)) // 20))}",
        ]
        if not aligned:
            cmd += ["constitution.name=none", "alignment.divergence=none"]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - start
        summary_path = run_dir / "summary.json"
        if proc.returncode != 0 or not summary_path.exists():
            raise RuntimeError(
                f"`{' '.join(cmd)}` exited {proc.returncode}"
                + ("" if summary_path.exists() else f" and wrote no {summary_path.name}")
                + f"\n{tail(proc.stdout + proc.stderr)}"
            )
        summary = json.loads(summary_path.read_text())
    run = {
        "name": LABELS["ours" if aligned else "ours-none"],
        "sps": float(summary["sps"]),
        "env_steps": int(summary["env_steps"]),
        "seconds": summary.get("train_seconds"),
        "compile_seconds": summary.get("compile_seconds"),
        "final_return": summary.get("final_episode_return"),
        "wall_seconds": wall,
        "loadavg_1min_before": load,
        "command": " ".join(cmd),
        "config": (f"{args.config} with its constitution section replaced by {{name: none}} and "
                   "alignment.divergence=none") if not aligned else str(args.config),
        "versions": summary.get("versions", {}),
    }
    if isinstance(seed, list):
        run["seeds"] = summary.get("seeds", seed)
        run["final_returns"] = [member.get("final_episode_return") for member in summary.get("members", {}).values()]
    return run


def run_ours_sequential(args: argparse.Namespace) -> dict:
    """The aligned entry's run once per seed, one after another: SPS = the runs' env steps over
    their training seconds (each run's compile excluded)."""
    seeds = list(range(args.seed, args.seed + args.seeds))
    runs = [run_ours(args, aligned=True, seed=s) for s in seeds]
    if any(r["seconds"] is None for r in runs):
        raise ValueError("an aligned-rl run wrote no train_seconds to its summary")
    seconds = sum(r["seconds"] for r in runs)
    env_steps = sum(r["env_steps"] for r in runs)
    returns = [r["final_return"] for r in runs]
    measured = [r for r in returns if r is not None]
    return {
        "name": label("ours-sequential", args.seeds),
        "sps": env_steps / seconds,
        "env_steps": env_steps,
        "seconds": seconds,
        "compile_seconds": sum(r["compile_seconds"] or 0.0 for r in runs),
        "final_return": sum(measured) / len(measured) if measured else None,
        "final_returns": returns,
        "seeds": seeds,
        "wall_seconds": sum(r["wall_seconds"] for r in runs),
        "loadavg_1min_before": runs[0]["loadavg_1min_before"],
        "command": "; ".join(r["command"] for r in runs),
        "config": runs[0]["config"],
        "versions": runs[0]["versions"],
        "per_seed": [{k: r[k] for k in ("sps", "env_steps", "seconds", "compile_seconds", "final_return")} for r in runs],
    }


def run_peer(args: argparse.Namespace, name: str, python: Path, seeds: int = 1) -> dict:
    """One run of a peer's runner (bench/peers/<name>_ppo.py); ``seeds`` > 1: that many runs vmapped."""
    timesteps = args.sb3_timesteps if name == "sb3" else args.timesteps
    cmd = [
        str(python), str(PEERS / f"{name}_ppo.py"),
        f"--timesteps={timesteps}",
        f"--num-envs={args.num_envs}",
        f"--num-steps={args.num_steps}",
        f"--epochs={args.epochs}",
        f"--minibatches={args.minibatches}",
        f"--seed={args.seed}",
    ]
    if name == "sb3":
        cmd.append(f"--threads={args.sb3_threads}")
    if name in ("sb3", "purejaxrl"):
        cmd += [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in HYPERPARAMETERS]
    if seeds > 1:
        cmd.append(f"--seeds={seeds}")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}\n{tail(proc.stdout + proc.stderr)}")
    result = json.loads(lines[-1])
    if "final_return" not in result and "eval_return" in result:  # rejax: its own evaluation of the final policy
        result["final_return"], result["final_returns"] = result["eval_return"], result.get("eval_returns")
    result["wall_seconds"] = wall
    result["loadavg_1min_before"] = load
    result["command"] = " ".join(cmd)
    return result


def machine_info(jax_devices: bool = True) -> dict:
    """The machine; ``jax_devices`` also asks jax for its devices (only once every run is over:
    on a GPU, jax in this process would hold device memory the runs need)."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        if jax_devices:
            import jax

            info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as err:  # the table still means something without it
        info["jax_devices"] = f"unavailable: {err}"
    info["env"] = {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "OPENBLAS_", "OMP_", "MKL_"))}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True)
            info["git_uncommitted_changes"] = dirty.returncode == 1
    except OSError:
        pass
    return info


def own_versions() -> dict:
    versions = {}
    for name in ("aligned-rl", "jax", "jaxlib", "gymnax", "flax", "optax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fmt_sps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_return(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def seed_ratios(results: dict[str, dict]) -> dict[str, float]:
    """ours-seeds' SPS over each other many-seed entry's, where both were measured."""
    ours = results.get("ours-seeds", {}).get("sps")
    return {f"ours-seeds/{e}": ours / results[e]["sps"]
            for e in ("rejax-seeds", "ours-sequential", "purejaxrl-seeds")
            if ours and results.get(e, {}).get("sps")}


def summarise(results: dict[str, dict]) -> None:
    """Each entry's median SPS over its runs, and its last run's env steps, return and versions."""
    for record in results.values():
        if record["runs"]:
            record["sps"] = statistics.median(r["sps"] for r in record["runs"])
            record["env_steps"] = record["runs"][-1]["env_steps"]
            record["final_return"] = record["runs"][-1].get("final_return")
            record["versions"] = record["runs"][-1].get("versions", {})


def write_results(args: argparse.Namespace, results: dict[str, dict], complete: bool) -> None:
    """The results file, replaced atomically; ``complete`` false while entries remain to run."""
    ref = results.get("ours", {}).get("sps")
    out = {
        "benchmark": "PPO training throughput on CartPole-v1 (env steps/s, compile excluded)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": complete,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "hyperparameters": {
            "num_envs": args.num_envs, "num_steps": args.num_steps, "epochs": args.epochs,
            "minibatches": args.minibatches, "lr": args.lr, "gamma": args.gamma, "gae_lambda": args.gae_lambda,
            "clip_eps": 0.2, "ent_coef": args.ent_coef, "vf_coef": 0.5, "max_grad_norm": 0.5, "preset": args.preset,
            "network": "2x64 tanh (separate actor and critic)",
        },
        "timesteps": args.timesteps,
        "sb3_timesteps": args.sb3_timesteps,
        "sb3_torch_threads": args.sb3_threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "seeds": args.seeds,
        "machine": machine_info(jax_devices=complete),
        "versions": own_versions(),
        "results": results,
        "ratios": {
            f"ours/{e}": ref / r["sps"] for e, r in results.items() if e != "ours" and ref and r.get("sps")
        },
        "seed_ratios": seed_ratios(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="bench",
                   help="the settings: the bench's own, or rl-baselines3-zoo's for SB3 on CartPole (rejax left out)")
    p.add_argument("--timesteps", type=int, default=None,
                   help="env steps per training run (SB3 too, unless --sb3-timesteps); default: the preset's")
    p.add_argument("--sb3-timesteps", type=int, default=None,
                   help="env steps per SB3 run, if fewer are wanted (SPS is a rate); default: --timesteps")
    p.add_argument("--sb3-threads", type=int, default=1,
                   help="torch intra-op threads for SB3 (0 = torch's default, one per core)")
    p.add_argument("--repeats", type=int, default=1, help="runs per entry; the median SPS is reported")
    p.add_argument("--seeds", type=int, default=1,
                   help="N > 1 adds entries training N seeds (from --seed on): vmapped in one program "
                        "(aligned-rl, rejax, PureJaxRL-style) and aligned-rl's N runs one after another")
    p.add_argument("--skip", default="", help=f"comma-separated entries to leave out: {','.join(ALL_ENTRIES)} "
                   "(an entry's -seeds and -sequential entries go with it)")
    p.add_argument("--num-envs", type=int, default=None, help="default: the preset's")
    p.add_argument("--num-steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--minibatches", type=int, default=None, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "cartpole.yaml",
                   help="aligned-rl config for the aligned entry")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per training run")
    p.add_argument("--rebuild-venvs", action="store_true", help="recreate the peers' venvs")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default: bench/results/ppo_cartpole.json, "
                   "or ppo_cartpole_zoo.json with --preset zoo)")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = DEFAULT_OUT if args.preset == "bench" else DEFAULT_OUT.with_name(f"ppo_cartpole_{args.preset}.json")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(ALL_ENTRIES)
    if unknown:
        p.error(f"--skip: unknown entries {sorted(unknown)}; choose from {', '.join(ALL_ENTRIES)}")
    if args.preset == "zoo":
        skip.add("rejax")
    skip |= {entry for entry, base in SEED_ENTRIES.items() if base in skip}
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1 (got {args.seeds})")
    for name in ("timesteps", "num_envs", "num_steps", "epochs", "minibatches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if (args.num_envs * args.num_steps) % args.minibatches:
        p.error("--num-envs * --num-steps must split into --minibatches equal minibatches")
    args.skip = skip
    if args.sb3_timesteps is None:
        args.sb3_timesteps = args.timesteps
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entries = [e for e in ENTRIES if e not in args.skip]
    if args.seeds > 1:
        entries += [e for e in SEED_ENTRIES if e not in args.skip]
    say(
        f"PPO on CartPole-v1: {args.num_envs} envs x {args.num_steps} steps, {args.epochs} epochs, "
        f"{args.minibatches} minibatches; {args.timesteps:,} env steps per run"
        + (f" ({args.sb3_timesteps:,} for SB3)" if "sb3" in entries and args.sb3_timesteps != args.timesteps else "")
        + (f"; {args.seeds} seeds in the -seeds and -sequential entries" if args.seeds > 1 else "")
        + f"; {args.repeats} repeat(s), median reported"
    )
    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"note: 1-minute load average is {load:.2f} before starting; other work on this machine skews the numbers")

    results: dict[str, dict] = {e: {"label": label(e, args.seeds), "status": "ok", "runs": []} for e in entries}
    pythons: dict[str, Path] = {"purejaxrl": Path(sys.executable)}
    for peer in VENV_PEERS:
        users = [e for e in results if SEED_ENTRIES.get(e, e) == peer]
        if users:
            python, error = ensure_venv(peer, rebuild=args.rebuild_venvs)
            if python is None:
                for entry in users:
                    results[entry].update(status="failed", error=error)
                say(f"[{peer}] FAILED to set up its venv:\n{error}")
            else:
                pythons[peer] = python

    # Round-robin over the entries, so that a change in background load hits all of them alike.
    for i in range(args.repeats):
        for entry, record in results.items():
            if record["status"] != "ok":
                continue
            say(f"[{entry}] run {i + 1}/{args.repeats} ...")
            try:
                if entry == "ours":
                    run = run_ours(args, aligned=True)
                elif entry == "ours-none":
                    run = run_ours(args, aligned=False)
                elif entry == "ours-seeds":
                    run = run_ours(args, aligned=True, seed=list(range(args.seed, args.seed + args.seeds)))
                elif entry == "ours-sequential":
                    run = run_ours_sequential(args)
                elif entry in SEED_ENTRIES:
                    peer = SEED_ENTRIES[entry]
                    run = run_peer(args, peer, pythons[peer], seeds=args.seeds)
                else:
                    run = run_peer(args, entry, pythons[entry])
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, ValueError) as err:
                record.update(status="failed", error=str(err))
                say(f"[{entry}] FAILED:\n{err}")
                write_results(args, results, complete=False)
                continue
            record["runs"].append(run)
            summarise(results)
            write_results(args, results, complete=False)  # what is measured so far survives a kill
            compile_s = run.get("compile_seconds")
            say(
                f"[{entry}]   {fmt_sps(run['sps'])} steps/s over {run['env_steps']:,} env steps"
                + (f" (compile {compile_s:.1f}s excluded)" if compile_s else "")
                + (f"; final return {fmt_return(run.get('final_return'))}" if run.get("final_return") is not None else "")
            )
    summarise(results)

    # ------------------------------------------------------------------ table
    ref = results.get("ours", {}).get("sps")
    rows = []
    for entry, record in results.items():
        sps = record.get("sps")
        ratio = fmt_ratio(ref / sps if ref and sps else None)
        steps = f"{record['env_steps']:,}" if record.get("env_steps") else "-"
        status = "" if record["status"] == "ok" else "FAILED"
        rows.append((record["label"], fmt_sps(sps), steps, ratio, fmt_return(record.get("final_return")), status))
    header = ("entry", "SPS (median)", "env steps", "aligned-ours / this", "return", "")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if 0 < i < 5 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print()
    print(line(header).rstrip())
    print("  ".join("-" * w for w in widths[:5]))
    for r in rows:
        print(line(r).rstrip())
    print("return: mean episode return at the end of training, averaged over the seeds (aligned-rl: the episodes\n"
          "  that ended in the last chunk; PureJaxRL-style: those that ended in the last 5% of updates; rejax: its\n"
          "  own evaluation of the final policy, 128 episodes; SB3 reports none)")
    none_sps = results.get("ours-none", {}).get("sps")
    if ref and none_sps:
        print(f"\naligned / alignment off: {ref / none_sps:.2f}x "
              f"(alignment changes throughput by {100 * (ref / none_sps - 1):+.1f}%)")
    seeds_ratios = seed_ratios(results)
    if args.seeds > 1:
        vs_rejax = seeds_ratios.get("ours-seeds/rejax-seeds")
        vs_sequential = seeds_ratios.get("ours-seeds/ours-sequential")
        print(f"{args.seeds} vmapped seeds: ours-seeds / rejax-seeds = {fmt_ratio(vs_rejax)}; "
              f"ours-seeds / ours-sequential = {fmt_ratio(vs_sequential)}"
              + (f"; ours-seeds / purejaxrl-seeds = {fmt_ratio(seeds_ratios['ours-seeds/purejaxrl-seeds'])}"
                 if "ours-seeds/purejaxrl-seeds" in seeds_ratios else ""))
    if "sb3" in results and args.sb3_timesteps != args.timesteps:
        print(f"SB3 was measured over {args.sb3_timesteps:,} env steps (the others over {args.timesteps:,}); SPS is a rate.")
    failed = [e for e, r in results.items() if r["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)} (see the errors above)")

    write_results(args, results, complete=True)
    try:
        shown = args.out.resolve().relative_to(ROOT)
    except ValueError:
        shown = args.out
    print(f"results written to {shown}")
    return 1 if failed and len(failed) == len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
