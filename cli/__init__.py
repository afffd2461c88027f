"""The ``aligned-rl`` command: train, resume, evaluate, and list what is available.

    aligned-rl train --config configs/cartpole.yaml [key=value ...]
    aligned-rl train --resume <run_dir> [--force] [run.key=value ...]
    aligned-rl eval <run_dir> [--episodes 256] [--greedy] [--best]
    aligned-rl measure [--config FILE] [key=value ...]  Upsilon/Sigma over sampled environments
    aligned-rl tax [--config FILE] aligned=A unaligned=B [key=value ...]  the alignment tax of a pair
    aligned-rl aiq [--config FILE] [key=value ...]     every agent at every episode length of the AIQ paper
    aligned-rl frontier [--config FILE] [key=value ...]  train every method x seed, the alignment-tax frontier
    aligned-rl curriculum [--config FILE] [key=value ...]  curricula trained in stages, measured on held-out worlds
    aligned-rl evolve [--config FILE] [key=value ...]    agents that make agents, through the gate: an archive
    aligned-rl compare <measure_dir> <measure_dir> ... [--metric M] [--output DIR]  paired differences
    aligned-rl config [--config FILE] [key=value ...]   print the resolved config
    aligned-rl envs                                      environments and their constitutions

Exit codes: 0 success, 2 bad input (config, resume mismatch, missing run), 3 training
diverged (NaN/inf; the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def configured(sub, name: str, help_text: str, configs: str, example: str) -> argparse.ArgumentParser:
    """A subcommand that takes a YAML config and dotted ``key=value`` overrides."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("--config", help=f"YAML {name} config (see {configs})")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aligned-rl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an aligned PPO agent, or resume a run")
    train.add_argument("--config", help="YAML config (see configs/)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    train.add_argument("--force", action="store_true", help="resume even if config or constitution changed")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ppo.lr=1e-3 env.num_envs=64")

    ev = sub.add_parser("eval", help="evaluate a run's latest checkpoint and print metrics JSON")
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, default=256, help="episodes, one per vmapped environment")
    ev.add_argument("--greedy", action="store_true", help="act by argmax instead of sampling")
    ev.add_argument("--best", action="store_true", help="use the best checkpoint instead of the latest")
    ev.add_argument("--seed", type=int, default=12345)
    ev.add_argument("--output", help="also write the JSON to this file")

    configured(sub, "measure", "estimate Upsilon and Sigma of an agent over sampled environments",
               "configs/measure_*.yaml", "agent=q_lambda num_envs=4096")
    configured(sub, "tax", "the alignment tax: an aligned and an unaligned agent on the same environments",
               "configs/tax_*.yaml", "aligned=RUN_DIR unaligned=RUN_DIR measure.num_envs=1024")

    configured(sub, "aiq", "the AIQ table: every agent at every episode length of the AIQ paper, same programs",
               "configs/aiq_table.yaml", "episode_lengths=[1000,3000] measure.num_envs=1024")
    configured(sub, "frontier", "the alignment-tax frontier: every method trained for several seeds, measured on the "
               "same environments", "configs/frontier_*.yaml", "seeds=[0,1] measure.num_envs=256")
    configured(sub, "curriculum", "curricula compared: every method trained for several seeds in stages, each "
               "stage measured on held-out worlds", "docs/curriculum.md",
               "train=configs/gridworld_island.yaml stages=4 measure.num_envs=1024")

    configured(sub, "evolve", "broad self-improvement: agents edit their genome and make new agents, each admitted "
               "through the gate into a durable archive", "configs/evolve_*.yaml",
               "generations=2 children=2 child_steps=65536")

    cmp = sub.add_parser("compare", help="agents measured on the same environments, with paired CIs")
    cmp.add_argument("runs", nargs="+", help="output directories of aligned-rl measure; the first is the reference")
    cmp.add_argument("--metric", help="a per_env.npz key (default: the value Upsilon is the mean of)")
    cmp.add_argument("--output", help="directory for compare.json and compare.png")

    configured(sub, "improve", "deploy trained agents under a drift: monitor, fine-tune, gate, compare",
               "configs/improve_*.yaml", "rounds=20 deployments=4")

    rb = sub.add_parser("rollback", help="deploy an earlier version of a lineage again")
    rb.add_argument("lineage", help="a lineage directory (a deployment under aligned-rl improve's output)")
    rb.add_argument("version", help="the version to deploy, e.g. v0001")

    cfg = sub.add_parser("config", help="print the resolved config (defaults, file, overrides)")
    cfg.add_argument("--config")
    cfg.add_argument("overrides", nargs="*")

    sub.add_parser("envs", help="list environments and the constitutions they ship")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"aligned-rl: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:
        # the reader stopped reading (`aligned-rl envs | head`): end quietly, as command-line tools do,
        # with stdout pointed at devnull so that the interpreter's last flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    # Imports after parsing so that `--help` is instant.
    from aligned_rl.train.config import ConfigError, load_config, to_yaml

    try:
        if args.command == "config":
            print(to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "envs":
            import aligned_rl.envs as envs

            for name in envs.list_envs():
                try:
                    shipped = sorted(envs.spec(name).constitutions)
                except Exception:  # pragma: no cover - a gymnax env that fails to build
                    shipped = []
                print(f"{name:28s} constitutions: {', '.join(['none', *shipped])}")
            return 0
        if args.command == "train":
            return _train(args)
        if args.command == "measure":
            return _measure(args)
        if args.command == "tax":
            return _tax(args)
        if args.command == "aiq":
            return _aiq(args)
        if args.command == "frontier":
            return _frontier(args)
        if args.command == "curriculum":
            return _curriculum(args)
        if args.command == "evolve":
            from aligned_rl.improve.evolve import evolve
            from aligned_rl.improve.evolve_config import load_evolve_config
            from aligned_rl.improve.evolve_report import FILES, markdown

            return _report_command(args, load_evolve_config, evolve, markdown, FILES)
        if args.command == "improve":
            from aligned_rl.improve.config import load_improve_config
            from aligned_rl.improve.deploy import improve
            from aligned_rl.improve.report import format_report

            report = improve(load_improve_config(args.config, args.overrides))
            print(format_report(report))
            print(f"-> {report['output']}/report.json, {report['output']}/timeline.png")
            return 0
        if args.command == "rollback":
            from aligned_rl.improve.lineage import Lineage, LineageError

            try:
                Lineage.open(args.lineage).rollback(args.version)
            except LineageError as err:
                return _fail(str(err), 2)
            print(f"{args.lineage}: {args.version} deployed")
            return 0
        if args.command == "compare":
            from aligned_rl.train.compare import compare, format_table

            result = compare(args.runs, args.metric, args.output)
            print(format_table(result))
            if args.output:
                print(f"-> {args.output}/compare.json, {args.output}/compare.png")
            return 0
        if args.command == "eval":
            from aligned_rl.train.evaluate import evaluate

            result = evaluate(args.run_dir, episodes=args.episodes, greedy=args.greedy, seed=args.seed,
                              which="best" if args.best else "latest")
            text = json.dumps(result, indent=2)
            print(text)
            if args.output:
                with open(args.output, "w") as f:
                    f.write(text + "\n")
            return 0
    except ConfigError as err:
        return _fail(str(err), 2)
    except FileNotFoundError as err:
        return _fail(str(err), 2)
    return 1


def _train(args: argparse.Namespace) -> int:
    from aligned_rl.train.config import load_config
    from aligned_rl.train.loop import ResumeMismatch, TrainingDiverged, load_run_config, train

    if args.resume and args.config:
        return _fail("give either --config (new run) or --resume RUN_DIR, not both", 2)
    if not args.resume and not args.config:
        return _fail("give --config FILE for a new run (e.g. configs/cartpole.yaml) or --resume RUN_DIR", 2)
    try:
        if args.resume:
            config = load_run_config(args.resume, args.overrides, seeds_ok=True)
            told = any(o.split("=", 1)[0] == "run.stop_at_update" for o in args.overrides)
            if config.run.stop_at_update and not told:
                print(f"resuming {args.resume} to the end ({config.num_updates} updates): the saved "
                      f"run.stop_at_update={config.run.stop_at_update} stopped the earlier run; pass "
                      "run.stop_at_update=N to stop again")
                config.run.stop_at_update = 0
        else:
            config = load_config(args.config, args.overrides)
        summary = train(config, resume=bool(args.resume), force=args.force)
    except ResumeMismatch as err:
        return _fail(str(err), 2)
    except TrainingDiverged as err:
        return _fail(f"training diverged: {err}", 3)
    if not summary.get("sps"):
        print(f"nothing to do: {summary['run_dir']} is at update {summary['updates']} of {summary.get('total_updates')}")
        return 0
    final = summary["final"] or {}
    ret = summary.get("final_episode_return")
    if summary.get("seeds"):
        for seed, member in summary["members"].items():
            r = member["final_episode_return"]
            print(f"seed {seed}: return {r if r is None else round(r, 1)} -> {member['run_dir']}")
    print(
        f"done: {summary['env_steps']:,} steps"
        + (f" ({len(summary['seeds'])} seeds vmapped), mean" if summary.get("seeds") else ",")
        + f" return {ret if ret is None else round(ret, 1)}, "
        f"forbidden-action rate {final.get('forbidden_rate', float('nan')):.4f}, "
        f"mean D {final.get('divergence', float('nan')):.4f}, "
        f"{summary['sps']:,.0f} steps/s (compile {summary['compile_seconds']:.1f}s excluded) -> {summary['run_dir']}"
    )
    return 0


def _measure(args: argparse.Namespace) -> int:
    from aligned_rl.train.devices import start_distributed
    from aligned_rl.train.measure_config import load_measure_config

    config = load_measure_config(args.config, args.overrides)
    # before anything touches a device (importing the families does)
    start_distributed(config.coordinator_address, config.num_processes, config.process_id)
    import jax

    from aligned_rl.train.measure import measure
    from aligned_rl.train.measure_families import is_mixture, measure_families
    from aligned_rl.train.measure_report import default_output, format_estimates, write_measurement

    measurement = measure_families(config) if is_mixture(config.env) else measure(config)
    report = measurement.report
    if jax.process_index() == 0:
        write_measurement(measurement, config.output or default_output(config.agent, config.env))
    print(format_estimates(report))
    print(f"{report['agent_env_steps_per_second']:,.0f} agent-environment steps/s "
          f"(compile {report['compile_seconds']:.1f}s excluded) -> {report.get('output')}")
    return 0


def _tax(args: argparse.Namespace) -> int:
    from aligned_rl.train.alignment_tax import alignment_tax, format_table, load_tax_config

    report = alignment_tax(load_tax_config(args.config, args.overrides))
    print(format_table(report))
    print(f"-> {report['output']}/tax.json, {report['output']}/tax.png")
    return 0


def _aiq(args: argparse.Namespace) -> int:
    from aligned_rl.train.aiq_table import (
        MARKDOWN_FILE, PLOT_FILE, TABLE_FILE, aiq_table, format_markdown, load_aiq_config)

    return _report_command(args, load_aiq_config, aiq_table, format_markdown, (TABLE_FILE, MARKDOWN_FILE, PLOT_FILE))


def _frontier(args: argparse.Namespace) -> int:
    from aligned_rl.train.frontier import (
        FRONTIER_FILE, MARKDOWN_FILE, PLOT_FILE, format_markdown, frontier, load_frontier_config)

    return _report_command(args, load_frontier_config, frontier, format_markdown,
                           (FRONTIER_FILE, MARKDOWN_FILE, PLOT_FILE))


def _curriculum(args: argparse.Namespace) -> int:
    from aligned_rl.train.curriculum_compare import (
        CURRICULUM_FILE, MARKDOWN_FILE, PLOT_FILE, curriculum_compare, format_markdown, load_curriculum_config)

    return _report_command(args, load_curriculum_config, curriculum_compare, format_markdown,
                           (CURRICULUM_FILE, MARKDOWN_FILE, PLOT_FILE))


def _report_command(args: argparse.Namespace, load, run, format_markdown, files: tuple[str, ...]) -> int:
    """A command that loads its config (``load``), runs it (``run``, told the command line that
    started it), prints the report's markdown and the files it wrote under its output."""
    import shlex

    config = load(args.config, args.overrides)
    words = ["aligned-rl", args.command, *(["--config", args.config] if args.config else []), *args.overrides]
    report = run(config, command=shlex.join(words))
    print(format_markdown(report), end="")
    out = report["output"]
    print("-> " + ", ".join(f"{out}/{name}" for name in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
