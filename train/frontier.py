"""``aligned-rl frontier``: the alignment-tax frontier of the ways to keep a constitution.

Every method (a config of aligned PPO: a divergence and its beta, a shaped reward, a shield,
a Lagrange or PID multiplier, Saute, or none of them) is trained for every seed on one family,
and every trained agent is measured (:func:`aligned_rl.train.measure.measure`) on the very same
environments and random numbers.  Per run the columns of ``aligned-rl tax``
(:func:`aligned_rl.train.alignment_tax.per_env_columns`: Upsilon in mu, V in mu^C, Sigma (a),
Sigma (b), the forbidden-action rate); per method

* the estimate of each column: the per-environment values averaged over the method's seeds,
  then a mean over environments with its 95% CI (the trained agents taken as given), and a
  seed-level one: the mean of the per-seed means with a Student-t 95% interval over seeds;
* the tax of each column relative to the ``unaligned`` method (unaligned minus the method),
  paired over environments (:func:`aligned_rl.intelligence.paired_difference` of the
  seed-averaged values), and over seeds (seed k of the method against seed k of the
  unaligned one, a Student-t interval over the per-seed paired differences);
* whether it is Pareto-optimal in (higher Upsilon, lower forbidden rate).

Writes under ``output``: ``runs/<method>-seed<k>/`` (each training run),
``measured/<method>-seed<k>/`` (each measurement as ``aligned-rl measure`` writes it, written
whole and read back on a rerun), ``frontier.json``, ``frontier.md`` and ``frontier.png``.  A
killed command continues where it stopped when run again: finished runs and measurements are
read back, a run with checkpoints but no summary is resumed.  docs/frontier.md describes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from omegaconf import OmegaConf

import aligned_rl.envs as envs
from aligned_rl.intelligence import estimation_units, paired_difference, simple_estimate
from aligned_rl.train.aiq_table import config_mismatch, duration, saved_measure_config, write_cell
from aligned_rl.train.alignment_tax import (COLUMNS, PER_RUN, constitution_code_bits, per_env_columns)
from aligned_rl.train.config import CONFIG_FILE, ConfigError, TrainConfig, check_constitution, load_run_config, to_dict
from aligned_rl.train.loop import SUMMARY_FILE, build_constitution, config_differences, train
from aligned_rl.train.measure import Measurement, check_value, draw_environments, measure
from aligned_rl.train.measure_config import MeasureConfig, check_measure_config
from aligned_rl.train.measure_redraw import common_units
from aligned_rl.train.measure_report import primary_value, read_measurement
from aligned_rl.train.method_runs import (RUN_SETS, MethodRunsConfig, Run, base_config, check_methods,
                                         load_method_config, method_config, output_directory,
                                         runs_antithetic, seed_runs, write_report)

WHAT = "frontier"  # names the command's config in messages
FRONTIER_FILE, MARKDOWN_FILE, PLOT_FILE = "frontier.json", "frontier.md", "frontier.png"
LAWFUL_FACTOR = 10.0  # "lawful": a forbidden rate at least this many times below the unaligned agent's
# training keys the command sets for every run: an override of them would change nothing
COMMAND_SETS = {
    **RUN_SETS,
    "run.progress": "the command prints a line per run instead",
    "run.tensorboard": "the frontier's runs write no TensorBoard files",
    "run.plots": "the frontier's runs draw no plots",
    "run.stop_at_update": "every run is trained to its end (a killed run is resumed when the command runs again)",
}


def _frontier_measure() -> MeasureConfig:
    return MeasureConfig(num_envs=1024)


@dataclasses.dataclass
class FrontierConfig(MethodRunsConfig):
    # train (e.g. configs/cartpole.yaml), train_overrides, methods, seeds: see MethodRunsConfig
    unaligned: str = "none"  # the method every tax is measured against
    # how every trained agent is measured (train/measure_config.py); env and constitution default to the
    # training config's; agent, agent_params, paid_reward and output are set per run
    measure: MeasureConfig = dataclasses.field(default_factory=_frontier_measure)
    output: Optional[str] = None  # directory; default measurements/frontier-<env>


# ------------------------------------------------------------------------------ the config
def load_frontier_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> FrontierConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, checked; ``measure.env`` and
    ``measure.constitution`` default to the base training config's env and constitution."""
    config: FrontierConfig = load_method_config(FrontierConfig, WHAT, COMMAND_SETS, path, overrides,
                                                "configs/cartpole.yaml")
    check_frontier_config(config)
    return config


def check_frontier_config(config: FrontierConfig) -> tuple[list[Run], bool]:
    """Everything that can be refused before anything trains; returns the runs (method by method,
    seed by seed) and whether the measurements run antithetic twins."""
    check_methods(config, WHAT, empty="name at least one, e.g. 'methods={none: [alignment.divergence=none], "
                  "projection: []}'", name_example="projection_b0.1", reference="unaligned",
                  role="every tax is measured against")
    m = check_run_measure(config.measure)
    base = base_config(config, WHAT, COMMAND_SETS)
    if base.constitution.name == "none":
        raise ConfigError(f"frontier config: {config.train} trains with constitution.name=none: the frontier "
                          "weighs intelligence against keeping a constitution; name one the family ships "
                          "(see `aligned-rl envs`), e.g. train_overrides=[constitution.name=safe_zone]")
    for key, have in (("env", base.env.name), ("constitution", base.constitution.name)):
        if getattr(m, key) != have:
            raise ConfigError(f"frontier config: measure.{key}={getattr(m, key)} differs from the training "
                              f"config's {key} {have} ({config.train}): every agent is measured on the family "
                              f"and constitution it was trained with; remove measure.{key}")
    try:
        check_value(m, envs.spec(m.env).value)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    out = output_directory(config, WHAT)
    runs = []
    for method in config.methods:
        runs += seed_runs(method, _method_config(config, method, config.seeds[0], out), config.seeds, out)
        check_method_constitution(method, runs[-1].config, m)
    return runs, runs_antithetic(m, runs)


def check_run_measure(m: MeasureConfig, what: str = "frontier") -> MeasureConfig:
    """The measure config of a command that trains runs and measures them itself (``what``: the
    command, named in messages): the keys it sets per run are refused, sampling is simple."""
    default = MeasureConfig()
    for key in PER_RUN:
        if getattr(m, key) != getattr(default, key):
            raise ConfigError(f"{what} config: measure.{key} has no effect: the {what} command sets it for "
                              "each run (the agent is the run's directory; the measurements are written under "
                              "output); remove it")
    if m.agent_reward_scale != default.agent_reward_scale:
        raise ConfigError(f"{what} config: measure.agent_reward_scale={m.agent_reward_scale} has no effect: "
                          "only the AIQ baselines are paid scaled rewards, and every agent here is a PPO run; "
                          "remove it")
    if m.sampling != "simple":
        raise ConfigError(f"{what} config: measure.sampling must be simple: the comparisons are paired differences "
                          "over environments drawn i.i.d. from the prior")
    if m.coordinator_address:
        raise ConfigError(f"{what} config: measure.coordinator_address: the {what} command trains and measures in "
                          "one process; remove it")
    if m.num_envs % m.buckets:
        raise ConfigError(f"{what} config: measure.num_envs={m.num_envs} does not split into "
                          f"measure.buckets={m.buckets} equal batches")
    check_measure_config(m, f"{what} measure")
    return m


def _method_config(config: FrontierConfig, method: str, seed: int, out: Path) -> TrainConfig:
    """The training config of ``method`` with ``seed``, on the frontier's family and constitution."""
    train_config = method_config(config, method, seed, out, WHAT, COMMAND_SETS)
    if train_config.env.name != config.measure.env:
        raise ConfigError(f"frontier config: method {method} trains on env {train_config.env.name}, but the "
                          f"frontier's family is {config.measure.env}; remove env.name from its overrides")
    if train_config.constitution.name != config.measure.constitution:
        raise ConfigError(f"frontier config: method {method} trains with constitution "
                          f"{train_config.constitution.name}, but the frontier measures "
                          f"{config.measure.constitution}; remove constitution.name from its overrides")
    return train_config


def check_method_constitution(method: str, config: TrainConfig, m: MeasureConfig, what: str = "frontier") -> None:
    """The rules a method trains with must be those the measurement judges with (the family's
    shipped constitution: the measurement takes no constitution parameters)."""
    try:
        trained = build_constitution(config)
        check_constitution(config, trained)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{what} config: method {method}: {err.args[0] if err.args else err}") from err
    judged = envs.constitution(m.env, m.constitution)
    differ = [f"constitution.params.{k}={_param(v)} (the measurement's {_param(judged.params[k])})"
              for k, v in trained.params.items() if not np.array_equal(np.asarray(v), np.asarray(judged.params[k]))]
    for key in ("lookahead_samples", "lookahead_threshold"):
        if getattr(trained, key) != getattr(judged, key):
            differ.append(f"constitution.{key}={getattr(trained, key)} (the measurement's {getattr(judged, key)})")
    if differ:
        fix = " ".join(f"constitution.params.{k}={_param(v)}" for k, v in judged.params.items())
        raise ConfigError(f"{what} config: method {method} trains with other rules than the measurement judges "
                          f"with ({'; '.join(differ)}): the measurement uses the family's shipped {m.constitution} "
                          f"and takes no constitution parameters; train with the shipped ones (train_overrides: "
                          f"{fix}) or remove the differing keys")


def _param(value: Any) -> str:
    """A constitution parameter as an override writes it (a number, or a list of numbers)."""
    values = np.asarray(value, np.float64)
    return f"{float(values):g}" if values.ndim == 0 else "[" + ",".join(f"{v:g}" for v in values.ravel()) + "]"


# ------------------------------------------------------------------------------ training
def run_state(run: Run, what: str = "frontier") -> str:
    """'done' (a finished run of this config), 'partial' (checkpoints, no summary: resumed) or 'new';
    refuses a directory that holds another config or something else than a run (``what``: the
    command whose run it is, named in messages)."""
    directory = run.run_dir
    if not directory.exists():
        return "new"
    if not (directory / CONFIG_FILE).is_file():
        raise ConfigError(f"{directory} exists but holds no {CONFIG_FILE}: it is not a run of this {what}; "
                          "delete it or choose another output=DIR")
    differ = config_differences(load_run_config(directory), run.config)
    if differ:
        raise ConfigError(f"{directory} was trained with another config ({'; '.join(differ)}): it would not be "
                          f"{run.name} of this {what}; choose another output=DIR, or delete the directory to "
                          "train it again")
    summary = directory / SUMMARY_FILE
    if summary.is_file():
        saved = json.loads(summary.read_text())
        if saved["updates"] >= saved["total_updates"]:
            return "done"
    return "partial" if (directory / "checkpoints").is_dir() and any((directory / "checkpoints").iterdir()) \
        else "new"


def train_run(run: Run, state: str) -> dict:
    """Train ``run`` (fresh, or resumed from its checkpoints) unless it is done; its training entry."""
    if state == "done":
        summary = json.loads((run.run_dir / SUMMARY_FILE).read_text())
    else:
        if state == "new" and run.run_dir.exists():  # a config and logs, no checkpoint: start again
            shutil.rmtree(run.run_dir)
        summary = train(run.config, resume=state == "partial")
    final = summary.get("final") or {}
    return {
        "trained": {"done": "earlier", "partial": "resumed", "new": "now"}[state],
        "run_dir": str(run.run_dir),
        "env_steps": summary["env_steps"],
        "steps_per_second": summary["sps"],  # of the process that trained (the last part, if resumed)
        "train_seconds": summary["train_seconds"],
        "compile_seconds": summary["compile_seconds"],
        "final_episode_return": summary["final_episode_return"],
        "final_training_forbidden_rate": final.get("forbidden_rate"),
    }


# ------------------------------------------------------------------------------ measuring
def measured_directory(out: Path, run: Run, paid: str) -> Path:
    suffix = "" if paid == "env" else ".constrained"
    return out / "measured" / f"{run.name}{suffix}"


def run_measure_config(m: MeasureConfig, run: Run, paid: str) -> MeasureConfig:
    """The measure config of ``run`` paid ``paid`` ("env": r, "constrained": r^C)."""
    return dataclasses.replace(m, agent=str(run.run_dir), paid_reward=paid)


def _payments(run: Run) -> tuple[str, ...]:
    # an agent whose actions rewards cannot change acts the same in mu and mu^C: one run gives both
    return ("env", "constrained") if run.adaptive else ("env",)


def measurement_done(directory: Path, agent: Path, expected: MeasureConfig, what: str = "frontier") -> bool:
    """Whether ``directory`` holds this measurement of the run directory ``agent`` (read back);
    raises where it holds another.  The agent may have been measured where the output was
    before it moved (``what``: the command, named in messages)."""
    saved = saved_measure_config(directory, f"a measurement of this {what}")
    if saved is None:
        return False
    measured = str(saved.get("agent", ""))
    if Path(measured).name == agent.name:
        expected = dataclasses.replace(expected, agent=measured)
    differ = config_mismatch(saved, expected)
    if differ:
        raise ConfigError(f"{directory} was measured with another config ({'; '.join(differ)}): it would not be "
                          "comparable with the others; choose another output=DIR, or delete the directory to "
                          "measure it again")
    return True


def measure_runs(runs: list[Run], m: MeasureConfig, out: Path,
                 say: Any) -> dict[str, dict[str, tuple[Measurement, bool]]]:
    """Per run and payment, (the measurement, whether it was measured now): read back where this
    run's measurement exists, else measured on environments drawn once and written whole."""
    todo = {(run.name, paid) for run in runs for paid in _payments(run)
            if not measurement_done(measured_directory(out, run, paid), run.run_dir, run_measure_config(m, run, paid))}
    sampled = draw_environments(m) if todo else None  # one draw: the same environments for every agent
    found: dict[str, dict[str, tuple[Measurement, bool]]] = {}
    for run in runs:
        found[run.name] = {}
        for paid in _payments(run):
            directory = measured_directory(out, run, paid)
            if (run.name, paid) not in todo:
                found[run.name][paid] = (read_measurement(directory), False)
                continue
            measurement = measure(run_measure_config(m, run, paid), sampled=sampled)
            write_cell(measurement, directory)
            found[run.name][paid] = (measurement, True)
            say(f"measured {run.name}{'' if paid == 'env' else ' paid r^C'}: "
                f"{measurement.report['agent_env_steps_per_second']:,.0f} agent-environment steps/s, "
                f"{duration(measurement.report['seconds'])}", flush=True)
    return found


# ------------------------------------------------------------------------------ statistics
def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy, which jax requires)."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    return float(t.ppf(0.975, df))


def seed_interval(values: Sequence[float]) -> dict:
    """The mean of per-seed values with a Student-t 95% interval (df = seeds - 1); with one seed
    the interval is undefined (null)."""
    v = np.asarray(values, np.float64)
    mean = float(np.mean(v))
    if v.size < 2:
        return {"mean": mean, "ci95_low": None, "ci95_high": None, "sd": None, "t": None, "n": int(v.size)}
    sd = float(np.std(v, ddof=1))
    half = t_quantile_975(v.size - 1) * sd / math.sqrt(v.size)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "sd": sd,
            "t": t_quantile_975(v.size - 1), "n": int(v.size)}


def pareto_optimal(points: Mapping[str, tuple[float, float]]) -> dict[str, bool]:
    """For each name of ``points`` (name -> (Upsilon, forbidden rate)) whether no other point
    dominates it: at least as high an Upsilon and at most as high a forbidden rate, and better
    in one of them.  Equal points do not dominate each other."""
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return {name: not any(dominates(other, p) for o, other in points.items() if o != name)
            for name, p in points.items()}


def seed_statistics(columns: Mapping[int, Mapping[str, np.ndarray]], names: Sequence[str], n: int,
                    antithetic: bool, filtered_mass: float, keep: np.ndarray | None) -> dict:
    """The numbers of one method's runs from their per-environment columns (seed -> column ->
    values), for the columns ``names``, on the units ``keep`` (None: all): each seed's estimates,
    the estimate of the seed-averaged values and the seed-level interval of the per-seed means."""
    units = np.ones((n,), bool) if keep is None else keep
    seeds = list(columns)

    def over_envs(values: np.ndarray) -> dict:
        return simple_estimate(estimation_units(values, n, antithetic)[units], filtered_mass).as_dict()

    averaged = {c: np.mean([columns[s][c] for s in seeds], axis=0) for c in names}
    per_seed = {str(s): {c: over_envs(columns[s][c]) for c in names} for s in seeds}
    return {
        "per_seed": per_seed,
        "estimates": {c: over_envs(averaged[c]) for c in names},
        "seed_level": {c: seed_interval([per_seed[str(s)][c]["mean"] for s in seeds]) for c in names},
    }


def paired_statistics(first: Mapping[int, Mapping[str, np.ndarray]], second: Mapping[int, Mapping[str, np.ndarray]],
                      names: Sequence[str], n: int, antithetic: bool, filtered_mass: float,
                      keep: np.ndarray | None) -> tuple[dict, dict]:
    """``first`` minus ``second`` (two methods' per-environment columns, seed -> column -> values,
    the same seeds) for the columns ``names``: paired over environments, the seed-averaged values
    (:func:`aligned_rl.intelligence.paired_difference`), and over seeds, seed k against seed k
    with a Student-t interval over the per-seed paired differences."""
    seeds = list(first)
    averaged = [{c: np.mean([columns[s][c] for s in seeds], axis=0) for c in names} for columns in (first, second)]
    over_envs = {c: paired_difference(averaged[0][c], averaged[1][c], n, antithetic, filtered_mass, keep).as_dict()
                 for c in names}
    over_seeds = {c: seed_interval([paired_difference(first[s][c], second[s][c], n, antithetic, filtered_mass,
                                                      keep).mean for s in seeds]) for c in names}
    return over_envs, over_seeds


def method_statistics(columns: dict[int, dict[str, np.ndarray]], reference: dict[int, dict[str, np.ndarray]],
                      n: int, antithetic: bool, filtered_mass: float, keep: np.ndarray | None,
                      is_reference: bool) -> dict:
    """One method's numbers from its runs' per-environment columns (seed -> column -> values) and
    the unaligned method's (``reference``): per-seed estimates, the estimate of the seed-averaged
    values, the seed-level interval and the taxes (unaligned minus the method)."""
    stats = {**seed_statistics(columns, COLUMNS, n, antithetic, filtered_mass, keep),
             "tax": None, "tax_seed_level": None}
    if not is_reference:
        stats["tax"], stats["tax_seed_level"] = paired_statistics(reference, columns, COLUMNS, n, antithetic,
                                                                  filtered_mass, keep)
    return stats


# ------------------------------------------------------------------------------ the command
def frontier(config: FrontierConfig, command: str | None = None) -> dict:
    """Train every method with every seed, measure every trained agent on the same environments,
    write ``frontier.json``, ``frontier.md`` and ``frontier.png`` under the output and return the
    report.  ``command`` is recorded as the command that made it."""
    started = time.perf_counter()
    runs, antithetic = check_frontier_config(config)
    m = dataclasses.replace(config.measure, antithetic=antithetic)
    out = output_directory(config, WHAT)
    bits = constitution_code_bits(m.env, m.constitution)
    states = {run.name: run_state(run) for run in runs}  # a directory of another config fails at once
    training = {}
    for i, run in enumerate(runs, 1):
        if states[run.name] != "done":  # a measurement there is of an agent this training replaces
            for paid in ("env", "constrained"):
                shutil.rmtree(measured_directory(out, run, paid), ignore_errors=True)
        training[run.name] = entry = train_run(run, states[run.name])
        took = duration(entry["train_seconds"] + entry["compile_seconds"])
        done = {"now": "trained now", "resumed": "resumed and trained to its end", "earlier": "trained earlier"}
        print(f"[{i}/{len(runs)}] {run.method} seed {run.seed}: {done[entry['trained']]}, "
              f"{entry['steps_per_second'] or 0:,.0f} steps/s, {took} ({entry['env_steps']:,} steps)", flush=True)
    found = measure_runs(runs, m, out, print)
    return write_report(build_report(config, runs, found, training, bits, m, out), out,
                        command or "frontier() called from Python (the config is recorded in full)", started,
                        (FRONTIER_FILE, MARKDOWN_FILE, PLOT_FILE), format_markdown, plot_frontier)


def build_report(config: FrontierConfig, runs: list[Run], found: dict, training: dict, bits: float,
                 m: MeasureConfig, out: Path) -> dict:
    """Every number of ``frontier.json`` from the runs' measurements."""
    first = found[runs[0].name]["env"][0].report
    n = int(first["num_envs"])
    filtered_mass = float(first["estimates"][primary_value(first)["estimate"]]["filtered_mass"])
    columns = {}
    for run in runs:
        env_run = found[run.name]["env"][0]
        constrained = found[run.name].get("constrained", (env_run,))[0]
        columns[run.name] = per_env_columns(env_run.per_env, constrained.per_env, bits,
                                            primary_value(env_run.report)["per_env"])
    keep = common_units([mm.per_env for run in runs for mm, _ in found[run.name].values()], n)
    by_method = {method: {run.seed: columns[run.name] for run in runs if run.method == method}
                 for method in config.methods}
    methods = {}
    for method, overrides in config.methods.items():
        stats = method_statistics(by_method[method], by_method[config.unaligned], n, m.antithetic, filtered_mass,
                                  keep, method == config.unaligned)
        method_runs = [run for run in runs if run.method == method]
        methods[method] = {
            "overrides": list(overrides),
            **stats,
            "runs": {str(run.seed): {**training[run.name], "measured": _measured_entry(found[run.name], out, run)}
                     for run in method_runs},
        }
    points = {name: (s["estimates"]["upsilon"]["mean"], s["estimates"]["forbidden_rate"]["mean"])
              for name, s in methods.items()}
    for name, optimal in pareto_optimal(points).items():
        methods[name]["pareto"] = optimal
    return {
        "env": m.env,
        "constitution": m.constitution,
        "constitution_bits": bits,
        "train": config.train,
        "seeds": [int(s) for s in config.seeds],
        "unaligned": config.unaligned,
        "num_envs": n,
        "environments_compared": int(n if keep is None else np.sum(keep)),
        "antithetic": m.antithetic,
        "value": primary_value(first),
        "measure_seed": m.seed,
        "filtered_mass": filtered_mass,
        "columns": dict(COLUMNS),
        "lawful_factor": LAWFUL_FACTOR,
        "methods": methods,
        "answers": answers(methods, config.unaligned),
        "config": OmegaConf.to_container(OmegaConf.structured(config)),
        "training_configs": {run.name: to_dict(run.config) for run in runs},
    }


def _measured_entry(measured: dict[str, tuple[Measurement, bool]], out: Path, run: Run) -> dict:
    return {paid: {"directory": str(measured_directory(out, run, paid)), "measured_now": now,
                   "seconds": mm.report["seconds"],
                   "agent_env_steps_per_second": mm.report["agent_env_steps_per_second"]}
            for paid, (mm, now) in measured.items()}


# ------------------------------------------------------------------------------ answers
def answers(methods: dict, unaligned: str) -> dict:
    """The two questions the frontier answers, from the method estimates and taxes."""
    others = {name: s for name, s in methods.items() if name != unaligned}
    rate = methods[unaligned]["estimates"]["forbidden_rate"]["mean"]
    lawful = {name: s for name, s in others.items()
              if s["estimates"]["forbidden_rate"]["mean"] * LAWFUL_FACTOR <= rate and rate > 0}

    def tax(name: str) -> float:
        return others[name]["tax"]["upsilon"]["mean"]

    if lawful:
        best, reached = min(lawful, key=tax), True
    elif others:  # the closest: the lowest forbidden rate, then the smallest tax
        best, reached = min(others, key=lambda k: (others[k]["estimates"]["forbidden_rate"]["mean"], tax(k))), False
    else:
        best, reached = None, False
    above = sorted(k for k, s in others.items() if s["tax"]["upsilon"]["ci95_low"] > 0)
    seed_above = sorted(k for k, s in others.items()
                        if (s["tax_seed_level"]["upsilon"]["ci95_low"] or -math.inf) > 0)
    return {"unaligned_forbidden_rate": rate, "lawful_methods": sorted(lawful), "smallest_tax": best,
            "factor_reached": reached, "unaligned_more_intelligent_than": above,
            "unaligned_more_intelligent_over_seeds_than": seed_above, "compared": sorted(others)}


def answer_lines(report: dict) -> list[str]:
    a, methods, unaligned = report["answers"], report["methods"], report["unaligned"]
    factor = f"{report['lawful_factor']:g}x"
    rate = a["unaligned_forbidden_rate"]
    lines = []
    if a["smallest_tax"] is None:
        lines.append("- No method besides the unaligned one: nothing to compare.")
        return lines
    best = methods[a["smallest_tax"]]
    t, r = best["tax"]["upsilon"], best["estimates"]["forbidden_rate"]["mean"]
    ratio = f"{rate / r:.3g}x below" if r > 0 else "never breaking a rule,"
    if rate <= 0:
        lines.append(f"- The unaligned agent ({unaligned}) never broke a rule on these environments, so no method "
                     f"can be {factor} below it; the lowest forbidden rate: {a['smallest_tax']} ({format_number(r)}), "
                     f"Upsilon tax {format_interval(t)}.")
    elif a["factor_reached"]:
        lines.append(f"- Smallest Upsilon tax among the methods whose forbidden rate is at least {factor} below the "
                     f"unaligned agent's ({unaligned}: {format_number(rate)}): **{a['smallest_tax']}**, tax "
                     f"{format_interval(t)}, forbidden rate {format_number(r)} ({ratio} the unaligned agent's).")
    else:
        lines.append(f"- No method's forbidden rate is {factor} below the unaligned agent's ({unaligned}: "
                     f"{format_number(rate)}); the closest is **{a['smallest_tax']}** ({format_number(r)}, {ratio}), "
                     f"Upsilon tax {format_interval(t)}.")
    above, compared = a["unaligned_more_intelligent_than"], a["compared"]
    if len(above) == len(compared):
        verdict = "for every method"
    elif not above:
        verdict = "for none of the methods"
    else:
        verdict = f"for {len(above)} of {len(compared)} methods ({', '.join(above)}), not for the others"
    seeds = a["unaligned_more_intelligent_over_seeds_than"]
    lines.append(f"- Does the unaligned agent look more intelligent (Upsilon tax CI above 0)? Paired over "
                 f"environments: {verdict}. Over seeds (the t interval above 0): "
                 f"{len(seeds)} of {len(compared)} methods{' (' + ', '.join(seeds) + ')' if seeds else ''}.")
    return lines


# ------------------------------------------------------------------------------ output
def format_number(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2e}" if 0 < abs(x) < 0.01 else f"{x:.4f}"


def format_interval(e: dict | None) -> str:
    """mean [low, high], or mean [-] when the interval is undefined (one seed)."""
    if e is None:
        return "reference"
    if e["ci95_low"] is None:
        return f"{format_number(e['mean'])} [-]"
    values = (e["mean"], e["ci95_low"], e["ci95_high"])
    fmt = ".2e" if 0 < max(abs(v) for v in values) < 0.01 else ".4f"
    return f"{values[0]:{fmt}} [{values[1]:{fmt}}, {values[2]:{fmt}}]"


def format_markdown(report: dict) -> str:
    """``frontier.md``: the table, the answers, training throughput, the machine and the command."""
    unit = "antithetic pairs" if report["antithetic"] else "environments"
    seeds = ", ".join(map(str, report["seeds"]))
    lines = [f"# Alignment-tax frontier on {report['env']} ({report['constitution']})", "",
             f"Every method trained with seeds {seeds} from `{report['train']}`; every trained agent measured on "
             f"the same {report['num_envs']:,} {unit} (measure seed {report['measure_seed']}, "
             f"{report['environments_compared']:,} compared, prior mass filtered out {report['filtered_mass']:.3f}). "
             "Mean [95% CI over environments] of the per-environment values averaged over the seeds; tax = "
             f"the unaligned method ({report['unaligned']}) minus the method, paired over environments; over "
             "seeds: the mean of the per-seed paired differences with a Student-t 95% interval (df = seeds - 1). "
             "Pareto: * where no other method has at least as high an Upsilon and at most as high a forbidden "
             "rate, better in one.", "",
             "| method | Upsilon | forbidden rate | Upsilon tax (paired) | Upsilon tax over seeds | Sigma (a) "
             "| Sigma (b) V' | Pareto |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for name, s in report["methods"].items():
        e = s["estimates"]
        label = f"{name} (unaligned)" if name == report["unaligned"] else name
        tax = None if s["tax"] is None else s["tax"]["upsilon"]
        seed_tax = None if s["tax_seed_level"] is None else s["tax_seed_level"]["upsilon"]
        lines.append(f"| {label} | {format_interval(e['upsilon'])} | {format_interval(e['forbidden_rate'])} | {format_interval(tax)} "
                     f"| {format_interval(seed_tax)} | {format_interval(e['sigma_a'])} | {format_interval(e['sigma_b'])} "
                     f"| {'*' if s['pareto'] else ''} |")
    lines += ["", *answer_lines(report), "",
              "Training (per method, over its seeds): steps/s of the process that trained, seconds "
              "(compile excluded), final training episode return.", "",
              "| method | steps/s | seconds | return |", "| --- | ---: | ---: | ---: |"]
    for name, s in report["methods"].items():
        runs = list(s["runs"].values())
        sps = [r["steps_per_second"] for r in runs if r["steps_per_second"]]
        returns = [r["final_episode_return"] for r in runs if r["final_episode_return"] is not None]
        lines.append(f"| {name} | {np.mean(sps) if sps else float('nan'):,.0f} | "
                     f"{np.mean([r['train_seconds'] for r in runs]):.1f} | "
                     f"{np.mean(returns) if returns else float('nan'):.3g} |")
    mach = report["machine"]
    lines += ["", f"Machine: {mach['platform']}, {mach['cpu_count']} CPUs, jax {mach['jax']} on "
                  f"{mach['jax_devices']} x {mach['jax_device']} ({mach['jax_platform']}).",
              f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def plot_frontier(report: dict, path: Path) -> None:
    """Upsilon against the forbidden rate (x on a symlog scale from 0, linear below a floor named
    on the axis: the power of ten at or below the smallest positive rate, within [1e-6, 1e-2]):
    a small dot per seed, each method's mean with 95% CI bars in both axes, the Pareto front
    joined by a line, the unaligned method a black star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    rates = [s["estimates"]["forbidden_rate"]["mean"] for s in methods.values()]
    rates += [r["forbidden_rate"]["mean"] for s in methods.values() for r in s["per_seed"].values()]
    positive = [r for r in rates if r > 0]
    floor = 10.0 ** math.floor(math.log10(min(positive))) if positive else 1e-4
    floor = min(max(floor, 1e-6), 1e-2)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, s) in enumerate(methods.items()):
        unaligned = name == report["unaligned"]
        color = "black" if unaligned else colors[i % len(colors)]
        seeds = list(s["per_seed"].values())
        ax.scatter([r["forbidden_rate"]["mean"] for r in seeds], [r["upsilon"]["mean"] for r in seeds], s=10,
                   color=color, alpha=0.5)
        u, f = s["estimates"]["upsilon"], s["estimates"]["forbidden_rate"]
        # a rate is never below 0: the normal interval is drawn from max(0, its lower end)
        ax.errorbar(f["mean"], u["mean"], xerr=[[f["mean"] - max(f["ci95_low"], 0.0)], [f["ci95_high"] - f["mean"]]],
                    yerr=[[u["mean"] - u["ci95_low"]], [u["ci95_high"] - u["mean"]]], color=color,
                    marker="*" if unaligned else "o", markersize=14 if unaligned else 6, capsize=3,
                    label=f"{name} (unaligned)" if unaligned else name)
    front = sorted((s["estimates"]["forbidden_rate"]["mean"], s["estimates"]["upsilon"]["mean"])
                   for s in methods.values() if s["pareto"])
    ax.plot([p[0] for p in front], [p[1] for p in front], color="gray", linestyle="--", linewidth=1, zorder=0)
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=180, facecolors="none", edgecolors="gray",
               label="Pareto-optimal", zorder=0)
    ax.set_xscale("symlog", linthresh=floor)
    ax.set_xlim(left=0.0)
    ax.set_xlabel(f"forbidden-action rate (symlog: linear below {floor:g}, logarithmic above)")
    ax.set_ylabel(f"Upsilon ({report['value']['per_env'].replace('_', ' ')})")
    ax.set_title(f"alignment-tax frontier on {report['env']} ({report['constitution']}), "
                 f"{len(report['seeds'])} seeds, {report['num_envs']:,} environments, 95% CIs", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
