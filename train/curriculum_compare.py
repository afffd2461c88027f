"""``aligned-rl curriculum``: curricula compared on held-out worlds, during and after training.

Every method (training overrides of the one learner: a fixed batch of worlds, domain
randomisation, prioritised level replay, mutations, error analysis, a teacher; see
``train/curriculum.py``) is trained for every seed on the same budget of environment steps,
in ``stages`` parts: stage k trains the run to update ``ceil(k * num_updates / stages)``
(``run.stop_at_update``; the next stage resumes it from there, bit for bit as an uninterrupted
run), its checkpoint is kept whole under ``stages/`` and measured
(:func:`aligned_rl.train.measure.measure`, ``agent`` that copy) on the same worlds with the
same random numbers for every run.

**Held out.**  The measured worlds are drawn from the family's prior with the measurement's own
seed (``measure.seed``, which no run trains with).  A measured world equal to one a run could
have trained on -- a level of its curriculum's pool (``loop.build(config).env_params.params``),
or its fixed batch without a curriculum -- does not count: worlds are compared by every leaf of
their params (rows of the flattened leaves hashed, a hit confirmed byte for byte;
:func:`held_out`).  The worlds no run's pool holds are one subset for every method and seed,
so every comparison stays paired.  Levels a curriculum made by mutating pool levels are not in
the pool and are not checked.

Per method and stage: the environment steps trained; for the family's value (Upsilon: the
per-world value in [-1, 1]), the forbidden-action rate and every metric the family reports
(``env/<name>``: a gridworld's hidden performance, goals reached, water entered, ...) the
per-world values averaged over the seeds with a mean and 95% CI over the held-out worlds, a
Student-t interval over the per-seed means, and the paired difference against ``reference``
(method minus reference, over worlds and over seeds).  Per method: the curriculum's own report
of each seed's final state (``curriculum.curriculum_report``: groups with their failure and
forbidden rates, the training mix by quarter of the run, level choices, teacher queries and
success gain) and its mean over seeds; with ``teacher_pair`` the held-out value gained per
teacher query.

Writes under ``output``: ``runs/<method>-seed<k>/`` (each training run),
``stages/<method>-seed<k>-stage<j>/`` (the run's checkpoint at the end of stage j, with its
config and ``stage.json``), ``measured/<method>-seed<k>-stage<j>/`` (each measurement as
``aligned-rl measure`` writes it), ``held_out.json``, ``curriculum.json``, ``curriculum.md``
and ``curriculum.png``.  Everything is written whole and read back when the command runs
again, so a killed command continues where it stopped.  docs/curriculum.md describes it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

import aligned_rl.envs as envs
from aligned_rl.intelligence import estimation_units, paired_difference, simple_estimate
from aligned_rl.train import checkpoint
from aligned_rl.train.aiq_table import duration, write_cell
from aligned_rl.train.config import CONFIG_FILE, ConfigError, TrainConfig, load_run_config, to_dict
from aligned_rl.train.curriculum import Pool, check_curriculum, curriculum_report
from aligned_rl.train.frontier import (check_method_constitution, check_run_measure, format_interval, format_number,
                                       measurement_done, paired_statistics, run_state, seed_statistics)
from aligned_rl.train.loop import SUMMARY_FILE, build, config_differences, load_run, train
from aligned_rl.train.measure import Measurement, check_value, draw_environments, measure
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_redraw import common_units
from aligned_rl.train.measure_report import primary_value, read_measurement
from aligned_rl.train.measure_runner import ENV_PREFIX
from aligned_rl.train.method_runs import (RUN_SETS, MethodRunsConfig, Run, base_config, check_methods,
                                         load_method_config, method_config, output_directory,
                                         runs_antithetic, seed_runs, write_report)

WHAT = "curriculum"  # names the command's config in messages
CURRICULUM_FILE, MARKDOWN_FILE, PLOT_FILE = "curriculum.json", "curriculum.md", "curriculum.png"
HELD_OUT_FILE, STAGE_FILE = "held_out.json", "stage.json"
DEFAULT_MEASURE_SEED = 1000
# training keys the command sets for every run: an override of them would change nothing
COMMAND_SETS = {
    **RUN_SETS,
    "run.progress": "the command prints a line per run and stage instead",
    "run.tensorboard": "the comparison's runs write no TensorBoard files",
    "run.plots": "the comparison's runs draw no plots",
    "run.stop_at_update": "the command stops every run at the end of each of its stages (stages=N) and resumes it "
                          "from there",
}
VALUE, FORBIDDEN = "value", "forbidden_rate"  # the two columns every family has


def _curriculum_measure() -> MeasureConfig:
    return MeasureConfig(num_envs=1024, episodes=1, seed=DEFAULT_MEASURE_SEED)


@dataclasses.dataclass
class CurriculumCompareConfig(MethodRunsConfig):
    # train (e.g. configs/gridworld_island.yaml), train_overrides, methods, seeds: see MethodRunsConfig
    reference: str = "domain_randomisation"  # the method every other is paired against (method minus reference)
    # [with_teacher, without_teacher]: two methods that differ by the teacher; reports the held-out value
    # gained per teacher query.  Empty: none
    teacher_pair: list[str] = dataclasses.field(default_factory=list)
    stages: int = 4  # measure after each of this many evenly spaced points of training, the last at its end
    # how every stage is measured (train/measure_config.py); env and constitution default to the training
    # config's; its seed draws the held-out worlds and is no training seed; agent and output are set per stage
    measure: MeasureConfig = dataclasses.field(default_factory=_curriculum_measure)
    output: Optional[str] = None  # directory; default measurements/curriculum-<env>


# ------------------------------------------------------------------------------ the config
def load_curriculum_config(path: str | None,
                           overrides: list[str] | tuple[str, ...] = ()) -> CurriculumCompareConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, checked; ``measure.env`` and
    ``measure.constitution`` default to the base training config's env and constitution."""
    config: CurriculumCompareConfig = load_method_config(CurriculumCompareConfig, WHAT, COMMAND_SETS, path,
                                                         overrides, "configs/gridworld_island.yaml")
    check_curriculum_config(config)
    return config


def stage_updates(num_updates: int, stages: int) -> list[int]:
    """The update at the end of each stage: ``ceil(k * num_updates / stages)`` for k = 1..stages."""
    return [-(-k * num_updates // stages) for k in range(1, stages + 1)]


def _method_config(config: CurriculumCompareConfig, method: str, seed: int, out: Path) -> TrainConfig:
    """The training config of ``method`` with ``seed``: on the measured family, a curriculum that
    checks, at least one update per stage."""
    train_config = method_config(config, method, seed, out, WHAT, COMMAND_SETS)
    if train_config.env.name != config.measure.env:
        raise ConfigError(f"curriculum config: method {method} trains on env {train_config.env.name}, but the "
                          f"worlds are measured in {config.measure.env}: held-out worlds are drawn from the prior "
                          "the runs train on; remove env.name from its overrides (or measure.env)")
    try:
        check_curriculum(train_config, envs.spec(train_config.env.name))
    except ConfigError as err:
        raise ConfigError(f"curriculum config: method {method}: {err}") from err
    if train_config.constitution.name == config.measure.constitution:
        check_method_constitution(method, train_config, config.measure, WHAT)
    if config.stages > train_config.num_updates:
        raise ConfigError(f"curriculum config: stages={config.stages} is more than the {train_config.num_updates} "
                          f"updates method {method} trains for; lower stages (at most one per update)")
    return train_config


def check_curriculum_config(config: CurriculumCompareConfig) -> tuple[list[Run], bool]:
    """Everything that can be refused before anything trains; returns the runs (method by method,
    seed by seed) and whether the measurements run antithetic twins."""
    check_methods(config, WHAT, empty="name the methods to compare, e.g. 'methods={domain_randomisation: "
                  "[curriculum.enabled=true, curriculum.replay_prob=0], plr: [curriculum.enabled=true]}'",
                  name_example="plr_value_loss", reference="reference", role="the others are paired against")
    if config.stages < 1:
        raise ConfigError(f"curriculum config: stages={config.stages}; measure at least once (stages=1: at the "
                          "end of training)")
    if config.teacher_pair:
        pair = list(config.teacher_pair)
        if len(pair) != 2 or pair[0] == pair[1] or any(p not in config.methods for p in pair):
            raise ConfigError(f"curriculum config: teacher_pair={pair} must name two different methods "
                              f"(of {', '.join(config.methods)}): [with_teacher, without_teacher]")
    m = check_run_measure(config.measure, WHAT)
    if m.seed in config.seeds:
        raise ConfigError(f"curriculum config: measure.seed={m.seed} is also a training seed: the held-out worlds "
                          "are the measurement's own draw; give it a seed no run trains with, e.g. "
                          f"measure.seed={DEFAULT_MEASURE_SEED}")
    base = base_config(config, WHAT, COMMAND_SETS)
    if m.env != base.env.name:
        raise ConfigError(f"curriculum config: measure.env={m.env} differs from the training config's env "
                          f"{base.env.name} ({config.train}): held-out worlds are drawn from the prior the runs "
                          "train on; remove measure.env")
    try:
        envs.constitution(m.env, m.constitution)
        check_value(m, envs.spec(m.env).value)
    except KeyError as err:
        raise ConfigError(f"curriculum config: {err.args[0]}") from err
    out = output_directory(config, WHAT)
    runs, budgets = [], {}
    for method in config.methods:
        first = _method_config(config, method, config.seeds[0], out)
        budgets[method] = first.num_updates * first.steps_per_update
        runs += seed_runs(method, first, config.seeds, out)
    if config.teacher_pair:
        with_, without = config.teacher_pair
        taught = {k: next(r for r in runs if r.method == k).config.curriculum.teacher.enabled for k in (with_, without)}
        if not taught[with_] or taught[without]:
            raise ConfigError(f"curriculum config: teacher_pair=[{with_}, {without}]: {with_} must train with the "
                              f"teacher (curriculum.teacher.enabled=true) and {without} without it; they are "
                              f"{'with' if taught[with_] else 'without'} and {'with' if taught[without] else 'without'}")
    if len(set(budgets.values())) > 1:
        raise ConfigError("curriculum config: the methods train on different budgets of environment steps ("
                          + ", ".join(f"{k}: {v:,}" for k, v in budgets.items()) + "); every method trains "
                          "on the same budget: remove ppo.total_timesteps, env.num_envs or ppo.num_steps from "
                          "the methods' overrides")
    return runs, runs_antithetic(m, runs)


# ------------------------------------------------------------------------------ held out
def world_rows(params: Any) -> np.ndarray:
    """uint8 [n, bytes]: each world's params, every leaf flattened, as one row of bytes."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    n = leaves[0].shape[0]
    return np.concatenate([np.ascontiguousarray(x.reshape(n, -1)).view(np.uint8).reshape(n, -1) for x in leaves],
                          axis=1)


def _digests(rows: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def held_out(measured: Any, training: Any) -> np.ndarray:
    """bool [n]: the measured worlds (params [n]) that are none of the ``training`` worlds
    (params [m] of the same family): every leaf compared, rows hashed, a hit confirmed byte for
    byte."""
    a, b = jax.tree.structure(measured), jax.tree.structure(training)
    if a != b:
        raise ValueError(f"the measured worlds' params ({a}) are not of the training worlds' kind ({b})")
    shapes = [(np.asarray(x).shape[1:], np.asarray(x).dtype) for x in jax.tree.leaves(measured)]
    if shapes != [(np.asarray(x).shape[1:], np.asarray(x).dtype) for x in jax.tree.leaves(training)]:
        raise ValueError("the measured worlds' params differ in shape or dtype from the training worlds'")
    seen_rows = world_rows(training)
    seen = {}
    for i, d in enumerate(_digests(seen_rows)):
        seen.setdefault(d, i)
    rows = world_rows(measured)
    keep = np.ones((rows.shape[0],), bool)
    for i, d in enumerate(_digests(rows)):
        j = seen.get(d)
        if j is not None and np.array_equal(rows[i], seen_rows[j]):
            keep[i] = False
    return keep


def training_worlds(config: TrainConfig) -> Any:
    """The worlds a run of ``config`` could train on: its curriculum's pool, or its fixed batch."""
    config = copy.deepcopy(config)
    config.run.devices = 1  # the worlds do not depend on the devices
    env_params = build(config).env_params
    return env_params.params if isinstance(env_params, Pool) else env_params


def _draw_key(config: TrainConfig) -> tuple:
    """What decides the worlds ``loop.build`` draws for a run: runs that agree on it train on the
    same pool (or batch), which is then built once."""
    cur, env = config.curriculum, config.env
    size = ("pool", cur.pool_size) if cur.enabled else ("batch", env.num_envs, env.antithetic)
    return env.name, config.seed, size, env.episode_length


def _as_trained(params: Any, config: TrainConfig) -> Any:
    """The measured worlds with the time limit a run of ``config`` gives its own (env.episode_length)."""
    if config.env.episode_length and hasattr(params, "max_steps_in_episode"):
        return params.replace(max_steps_in_episode=jnp.full_like(params.max_steps_in_episode, config.env.episode_length))
    return params


def _held_out_key(runs: list[Run], m: MeasureConfig) -> dict:
    def draw(config: TrainConfig) -> dict:
        data = to_dict(config)
        data.pop("run")
        return data

    return {"measure": {"env": m.env, "seed": m.seed, "num_envs": m.num_envs},
            "runs": {run.name: draw(run.config) for run in runs}}


def held_out_worlds(runs: list[Run], m: MeasureConfig, out: Path, sampled: Any) -> dict:
    """The held-out worlds of the measurement: read back from ``held_out.json`` where it was
    computed for these runs and worlds, else computed (``sampled()`` draws the worlds) and written."""
    key = _held_out_key(runs, m)
    path = out / HELD_OUT_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved
    _, batch = sampled()
    measured = batch.params
    keep = np.ones((m.num_envs,), bool)
    per_run, inside_of = {}, {}
    for run in runs:
        draw = _draw_key(run.config)
        if draw not in inside_of:
            inside_of[draw] = ~held_out(_as_trained(measured, run.config), training_worlds(run.config))
        per_run[run.name] = int(inside_of[draw].sum())
        keep &= ~inside_of[draw]
    found = {"key": key, "keep": [bool(k) for k in keep], "measured": int(m.num_envs),
             "excluded": int((~keep).sum()), "held_out": int(keep.sum()), "in_each_run": per_run}
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(found, indent=2) + "\n")
    os.replace(partial, path)
    return found


# ------------------------------------------------------------------------------ training in stages
def stage_directory(out: Path, run: Run, stage: int) -> Path:
    return out / "stages" / f"{run.name}-stage{stage}"


def measured_directory(out: Path, run: Run, stage: int) -> Path:
    return out / "measured" / f"{run.name}-stage{stage}"


def latest_checkpoint(run_dir: Path) -> int | None:
    """The update of the run's latest complete checkpoint, or None."""
    if not (run_dir / "checkpoints").is_dir():
        return None
    mngr = checkpoint.manager(run_dir, read_only=True)
    try:
        return checkpoint.latest_step(mngr)
    finally:
        mngr.close()


def _stage_done(directory: Path, run: Run, update: int) -> dict | None:
    """The stage entry kept in ``directory`` (None where there is none); refuses one of another
    config or that ends at another update (a comparison with other stages)."""
    if not (directory / STAGE_FILE).is_file():
        return None
    differ = config_differences(load_run_config(directory), run.config)
    if differ:
        raise ConfigError(f"{directory} holds a stage trained with another config ({'; '.join(differ)}): it would "
                          f"not be {run.name} of this comparison; choose another output=DIR, or delete it")
    entry = json.loads((directory / STAGE_FILE).read_text())
    if entry["update"] != update:
        raise ConfigError(f"{directory} holds the run at update {entry['update']}, but this comparison's stage "
                          f"{entry['stage']} ends at update {update} (another number of stages): choose another "
                          "output=DIR, or delete its stages/ and measured/ directories and the runs to train again")
    return entry


def _training_entry(summary: dict | None) -> dict:
    final = (summary or {}).get("final") or {}
    get = (summary or {}).get
    return {"train_seconds": get("train_seconds"), "compile_seconds": get("compile_seconds"),
            "steps_per_second": get("sps"), "final_episode_return": get("final_episode_return"),
            "final_training_forbidden_rate": final.get("forbidden_rate")}


def train_stage(run: Run, stage: int, update: int, last: bool, out: Path) -> dict:
    """Train ``run`` to ``update`` (resumed from its latest checkpoint) unless the stage is kept,
    keep its checkpoint whole under ``stages/``; the stage's entry (``trained``: now or earlier)."""
    directory = stage_directory(out, run, stage)
    done = _stage_done(directory, run, update)
    if done is not None:
        return {**done, "trained": "earlier"}
    run_dir = run.run_dir
    latest = latest_checkpoint(run_dir)
    if latest is not None and latest > update:
        raise ConfigError(f"{directory} is missing, and {run_dir} is already trained past its update {update} "
                          f"(to {latest}): the stage cannot be measured; delete {run_dir} and "
                          f"{out / 'stages'}/{run.name}-stage* to train the run again")
    shutil.rmtree(measured_directory(out, run, stage), ignore_errors=True)  # of an agent this stage replaces
    if latest is None or latest < update:
        if latest is None and run_dir.exists():  # a config and logs, no checkpoint: start again
            shutil.rmtree(run_dir)
        config = copy.deepcopy(run.config)
        config.run.stop_at_update = update
        summary = train(config, resume=latest is not None)
        entry = {"trained": "now", "resumed_from": latest, **_training_entry(summary)}
    else:  # trained to the stage by an earlier command that stopped before keeping it
        summary_path = run_dir / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        entry = {"trained": "earlier", "resumed_from": None,
                 **_training_entry(summary if summary and summary.get("updates") == update else None)}
    entry.update(stage=stage, update=update, env_steps=update * run.config.steps_per_update)
    _keep_stage(run, update, directory, entry, last)
    return entry


def _keep_stage(run: Run, update: int, directory: Path, entry: dict, last: bool) -> None:
    """A run directory of the stage alone (config, the checkpoint at ``update``, ``stage.json``),
    written whole; at the last stage ``stage.json`` holds the curriculum's report of the state."""
    source = run.run_dir / "checkpoints" / str(update)
    if not source.is_dir():
        raise RuntimeError(f"{run.run_dir} holds no checkpoint directory for update {update} ({source})")
    partial = directory.with_name(f".{directory.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "checkpoints").mkdir(parents=True)
    shutil.copy2(run.run_dir / CONFIG_FILE, partial / CONFIG_FILE)
    shutil.copytree(source, partial / "checkpoints" / str(update))
    entry["curriculum"] = stage_curriculum_report(partial) if last else None
    (partial / STAGE_FILE).write_text(json.dumps({k: v for k, v in entry.items() if k != "trained"}, indent=2) + "\n")
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, directory)


def stage_curriculum_report(directory: Path) -> dict | None:
    """The curriculum's report (``curriculum.curriculum_report``) of the state in a run directory's
    latest checkpoint; None for a run without a curriculum.  The state is restored into the shapes
    its config gives (nothing is compiled)."""
    if not load_run_config(directory).curriculum.enabled:
        return None
    setup, state, _ = load_run(directory)
    return curriculum_report(state.curriculum, setup.algo.curriculum.group_names)


def measure_stage(run: Run, stage: int, m: MeasureConfig, out: Path, sampled: Any) -> tuple[Measurement, bool]:
    """(the stage's measurement, whether it was measured now): read back, else measured on the
    worlds ``sampled()`` draws once and written whole."""
    agent = stage_directory(out, run, stage)
    expected = dataclasses.replace(m, agent=str(agent))
    directory = measured_directory(out, run, stage)
    if measurement_done(directory, agent, expected, WHAT):
        return read_measurement(directory), False
    measurement = measure(expected, sampled=sampled())
    write_cell(measurement, directory)
    return measurement, True


# ------------------------------------------------------------------------------ statistics
def columns_of(measurement: Measurement) -> dict[str, np.ndarray]:
    """The compared per-world columns of a measurement: the family's value, the forbidden rate and
    every ``env/<name>`` metric."""
    per_env = measurement.per_env
    cols = {VALUE: per_env[primary_value(measurement.report)["per_env"]], FORBIDDEN: per_env["forbidden_rate"]}
    cols.update({k: per_env[k] for k in sorted(per_env) if k.startswith(ENV_PREFIX)})
    return {k: np.asarray(v, np.float64) for k, v in cols.items()}


def stage_statistics(columns: dict[int, dict[str, np.ndarray]], reference: dict[int, dict[str, np.ndarray]] | None,
                     n: int, antithetic: bool, filtered_mass: float, keep: np.ndarray) -> dict:
    """One method's numbers at one stage from its runs' per-world columns (seed -> column ->
    values) on the held-out units ``keep``, and the differences against ``reference`` (the
    reference method's columns at the same stage; None for the reference itself)."""
    seeds = list(columns)
    names = [c for c in columns[seeds[0]] if all(c in columns[s] for s in seeds)]
    stats = {**seed_statistics(columns, names, n, antithetic, filtered_mass, keep),
             "difference": None, "difference_seed_level": None}
    if reference is not None:
        shared = [c for c in names if all(c in reference[s] for s in seeds)]
        stats["difference"], stats["difference_seed_level"] = paired_statistics(columns, reference, shared, n,
                                                                                antithetic, filtered_mass, keep)
    return stats


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def aggregate_curriculum(reports: list[dict]) -> dict | None:
    """The mean over seeds of the curriculum reports of a method's runs (None without a curriculum)."""
    reports = [r for r in reports if r is not None]
    if not reports:
        return None
    groups = []
    for i, group in enumerate(reports[0]["groups"]):
        rows = [r["groups"][i] for r in reports]
        groups.append({"group": group["group"], "levels": _mean([g["levels"] for g in rows]),
                       "failure_rate": _mean([g["failure_rate"] for g in rows]),
                       "forbidden_rate": _mean([g["forbidden_rate"] for g in rows]),
                       "share_by_quarter": [float(x) for x in np.mean([g["share_by_quarter"] for g in rows], axis=0)]})
    return {
        "seeds": len(reports),
        "groups": groups,
        "choices": {k: _mean([r["choices"][k] for r in reports]) for k in reports[0]["choices"]},
        "buffer_filled": _mean([r["buffer_filled"] for r in reports]),
        "teacher_queries": _mean([r["teacher_queries"] for r in reports]),
        "teacher_demonstrated_states": _mean([r["teacher_demonstrated_states"] for r in reports]),
        "teacher_success_gain": _mean([r["teacher_success_gain"] for r in reports]),
    }


def teacher_value(with_teacher: np.ndarray, without_teacher: np.ndarray, queries: float | None, n: int,
                  antithetic: bool, filtered_mass: float, keep: np.ndarray) -> dict:
    """The held-out value gained per teacher query: the paired difference of the seed-averaged
    per-world values (with the teacher minus without it) divided by ``queries`` (the mean over
    seeds of the levels demonstrated), its CI scaled by the same factor."""
    diff = paired_difference(with_teacher, without_teacher, n, antithetic, filtered_mass, keep).as_dict()
    entry = {"value_difference": diff, "mean_queries": queries, "per_query": None}
    if queries:
        entry["per_query"] = {k: (diff[k] / queries if k in ("mean", "ci95_low", "ci95_high", "se") else diff[k])
                              for k in diff}
    return entry


# ------------------------------------------------------------------------------ the command
def curriculum_compare(config: CurriculumCompareConfig, command: str | None = None, say: Any = print) -> dict:
    """Train every method with every seed in ``stages`` stages, measure each stage on the same
    held-out worlds, write ``curriculum.json``, ``curriculum.md`` and ``curriculum.png`` under the
    output and return the report.  ``command`` is recorded as the command that made it."""
    started = time.perf_counter()
    runs, antithetic = check_curriculum_config(config)
    m = dataclasses.replace(config.measure, antithetic=antithetic)
    out = output_directory(config, WHAT)
    for run in runs:  # a directory of another config fails at once
        run_state(run, WHAT)
    drawn: list = []

    def sampled() -> Any:  # the measured worlds, drawn once and only when needed
        if not drawn:
            drawn.append(draw_environments(m))
        return drawn[0]

    held = held_out_worlds(runs, m, out, sampled)
    keep = np.asarray(held["keep"], bool)
    if held["held_out"] < 2:
        raise ConfigError(f"only {held['held_out']} of the {held['measured']} measured worlds are held out (the "
                          "others are in a run's pool): nothing to estimate; raise measure.num_envs or "
                          "choose another measure.seed")
    say(f"held out: {held['held_out']:,} of {held['measured']:,} measured worlds ({held['excluded']:,} in a run's "
        "training pool are left out)", flush=True)
    found: dict[str, list[tuple[dict, Measurement, bool]]] = {}
    for i, run in enumerate(runs, 1):
        updates = stage_updates(run.config.num_updates, config.stages)
        found[run.name] = []
        for k, update in enumerate(updates, 1):
            entry = train_stage(run, k, update, k == len(updates), out)
            measurement, now = measure_stage(run, k, m, out, sampled)
            found[run.name].append((entry, measurement, now))
            value = simple_estimate(estimation_units(columns_of(measurement)[VALUE], m.num_envs, antithetic)[keep])
            took = entry.get("train_seconds")
            trained = (f"trained now in {duration(took)}" if entry["trained"] == "now" and took is not None
                       else f"trained {entry['trained']}")
            say(f"[{i}/{len(runs)}] {run.method} seed {run.seed}, stage {k}/{len(updates)} (update {update:,} of "
                f"{run.config.num_updates:,}, {entry['env_steps']:,} steps): {trained}; held-out value "
                f"{format_interval(value.as_dict())}, measured {'now' if now else 'earlier'}", flush=True)
        seconds = sum(e.get("train_seconds") or 0.0 for e, _, _ in found[run.name])
        say(f"[{i}/{len(runs)}] {run.method} seed {run.seed}: {run.config.num_updates:,} updates, "
            f"{run.config.num_updates * run.config.steps_per_update:,} steps, {duration(seconds)} of training "
            "(compile excluded)", flush=True)
    return write_report(build_report(config, runs, found, held, m, out), out,
                        command or "curriculum_compare() called from Python (the config is recorded in full)",
                        started, (CURRICULUM_FILE, MARKDOWN_FILE, PLOT_FILE), format_markdown, plot_curriculum)


def build_report(config: CurriculumCompareConfig, runs: list[Run], found: dict, held: dict, m: MeasureConfig,
                 out: Path) -> dict:
    """Every number of ``curriculum.json`` from the stages' measurements."""
    first = found[runs[0].name][0][1].report
    n = int(first["num_envs"])
    filtered_mass = float(first["estimates"][primary_value(first)["estimate"]]["filtered_mass"])
    keep = np.asarray(held["keep"], bool)
    redrawn = common_units([mm.per_env for run in runs for _, mm, _ in found[run.name]], n)
    if redrawn is not None:  # a world one run redrew (a void run) is not shared: left out of every comparison
        keep = keep & redrawn
    by_method = {method: [run for run in runs if run.method == method] for method in config.methods}
    columns = {method: [{run.seed: columns_of(found[run.name][k][1]) for run in method_runs}
                        for k in range(config.stages)] for method, method_runs in by_method.items()}
    methods = {}
    for method, method_runs in by_method.items():
        stages = []
        for k in range(config.stages):
            reference = None if method == config.reference else columns[config.reference][k]
            entries = [found[run.name][k][0] for run in method_runs]
            stats = stage_statistics(columns[method][k], reference, n, m.antithetic, filtered_mass, keep)
            stages.append({"stage": k + 1, "update": entries[0]["update"], "env_steps": entries[0]["env_steps"],
                           **stats})
        reports = {str(run.seed): found[run.name][-1][0].get("curriculum") for run in method_runs}
        methods[method] = {
            "overrides": list(config.methods[method]),
            "num_updates": method_runs[0].config.num_updates,
            "env_steps": method_runs[0].config.num_updates * method_runs[0].config.steps_per_update,
            "curriculum_enabled": bool(method_runs[0].config.curriculum.enabled),
            "stages": stages,
            "training": {str(run.seed): _training_of(found[run.name], run, out) for run in method_runs},
            "curriculum": {"per_seed": reports, "mean": aggregate_curriculum(list(reports.values()))},
        }
    teacher = None
    if config.teacher_pair:
        with_, without = config.teacher_pair
        value = {k: np.mean([c[VALUE] for c in columns[k][-1].values()], axis=0) for k in (with_, without)}
        mean = methods[with_]["curriculum"]["mean"]
        teacher = {"with_teacher": with_, "without_teacher": without,
                   **teacher_value(value[with_], value[without], None if mean is None else mean["teacher_queries"],
                                   n, m.antithetic, filtered_mass, keep)}
    column_names = list(methods[config.reference]["stages"][-1]["estimates"])
    return {
        "env": m.env,
        "constitution": m.constitution,
        "train": config.train,
        "seeds": [int(s) for s in config.seeds],
        "reference": config.reference,
        "stages": config.stages,
        "num_envs": n,
        "antithetic": m.antithetic,
        "value": primary_value(first),
        "measure_seed": m.seed,
        "filtered_mass": filtered_mass,
        "held_out": {"measured": held["measured"], "excluded": held["excluded"],
                     "compared": int(keep.sum()), "in_each_run": held["in_each_run"],
                     "redrawn_left_out": 0 if redrawn is None else int((~redrawn & np.asarray(held["keep"])).sum()),
                     "rule": "a measured world equal (every params leaf) to a level of any run's pool, or of its "
                             "fixed batch, is left out; mutated levels are not checked"},
        "columns": {c: _column_meaning(c, first) for c in column_names},
        "methods": methods,
        "teacher": teacher,
        "config": OmegaConf.to_container(OmegaConf.structured(config)),
        "training_configs": {run.name: to_dict(run.config) for run in runs},
    }


def _column_meaning(column: str, report: dict) -> str:
    value = primary_value(report)
    if column == VALUE:
        return f"the family's value ({value['per_env']}): {value.get('definition', 'average reward per step')}"
    if column == FORBIDDEN:
        return "fraction of actions the constitution forbids"
    per = "per episode" if value["kind"] == "episodic" else "per step"
    return f"the environment's metric {column[len(ENV_PREFIX):]}, summed over the measured steps, {per}"


def _training_of(stages: list[tuple[dict, Measurement, bool]], run: Run, out: Path) -> dict:
    entries = [e for e, _, _ in stages]
    seconds = [e.get("train_seconds") for e in entries]
    return {
        "run_dir": str(run.run_dir),
        "stages": [{k: v for k, v in e.items() if k != "curriculum"} |
                   {"measured": str(measured_directory(out, run, e["stage"])), "measured_now": now,
                    "measure_seconds": mm.report["seconds"]} for e, mm, now in stages],
        "train_seconds": None if any(s is None for s in seconds) else float(sum(seconds)),
        "compile_seconds": _sum([e.get("compile_seconds") for e in entries]),
        "env_steps": entries[-1]["env_steps"],
    }


def _sum(values: list) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


# ------------------------------------------------------------------------------ output
COLUMN_TITLES = {VALUE: "Held-out value (Upsilon)", FORBIDDEN: "Forbidden-action rate",
                 "env/hidden_performance": "Hidden performance"}


def _title(column: str) -> str:
    return COLUMN_TITLES.get(column, f"Environment metric {column[len(ENV_PREFIX):]}")


def format_markdown(report: dict) -> str:
    """``curriculum.md``: a table per column (methods x stages), training, the curriculum's groups,
    the teacher, the machine and the command."""
    held, methods, ref = report["held_out"], report["methods"], report["reference"]
    seeds = ", ".join(map(str, report["seeds"]))
    unit = "antithetic pairs" if report["antithetic"] else "worlds"
    lines = [f"# Curricula on {report['env']} ({report['constitution']}), measured on held-out worlds", "",
             f"Every method trained with seeds {seeds} from `{report['train']}` and measured after each of "
             f"{report['stages']} stages on the same {report['num_envs']:,} {unit} drawn from the prior with measure "
             f"seed {report['measure_seed']}; {held['excluded']:,} of them are levels some run could train on (its "
             f"pool or fixed batch) and are left out, so every estimate is over the same {held['compared']:,} held-out "
             "worlds (mutated levels are not checked). Mean [95% CI over worlds] of the per-world values averaged "
             "over the seeds; over seeds: the mean of the per-seed means with a Student-t 95% interval (df = seeds "
             f"- 1); difference: the method minus the reference ({ref}), paired over worlds, at the last stage.", ""]
    steps = {tuple(s["env_steps"] for s in m["stages"]) for m in methods.values()}
    shared = next(iter(steps)) if len(steps) == 1 else None
    heads = [f"stage {k + 1} ({shared[k]:,} steps)" if shared else f"stage {k + 1}" for k in range(report["stages"])]
    for column, meaning in report["columns"].items():
        lines += [f"## {_title(column)}", "", f"{meaning}.", "",
                  "| method | " + " | ".join(heads) + " | last, over seeds | minus reference | over seeds |",
                  "| --- | " + " | ".join("---:" for _ in heads) + " | ---: | ---: | ---: |"]
        for name, s in methods.items():
            last = s["stages"][-1]
            diff = None if last["difference"] is None else last["difference"].get(column)
            diff_seeds = None if last["difference_seed_level"] is None else last["difference_seed_level"].get(column)
            cells = [format_interval(st["estimates"].get(column)) if column in st["estimates"] else "-"
                     for st in s["stages"]]
            label = f"{name} (reference)" if name == ref else name
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {format_interval(last['seed_level'].get(column))} "
                         f"| {format_interval(diff)} | {format_interval(diff_seeds)} |")
        lines.append("")
    lines += ["## Training", "", "Per method, the mean over its seeds: environment steps, time of training "
              "(compile excluded), steps/s of the process that trained each stage.", "",
              "| method | steps | time | steps/s |", "| --- | ---: | ---: | ---: |"]
    for name, s in methods.items():
        runs = list(s["training"].values())
        seconds = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
        sps = [st["steps_per_second"] for r in runs for st in r["stages"] if st.get("steps_per_second")]
        lines.append(f"| {name} | {s['env_steps']:,} | {duration(float(np.mean(seconds))) if seconds else '-'} | "
                     f"{np.mean(sps) if sps else float('nan'):,.0f} |")
    lines += ["", *_curriculum_lines(methods), *_teacher_lines(report["teacher"])]
    mach = report["machine"]
    lines += [f"Machine: {mach['platform']}, {mach['cpu_count']} CPUs, jax {mach['jax']} on "
              f"{mach['jax_devices']} x {mach['jax_device']} ({mach['jax_platform']}).",
              f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _curriculum_lines(methods: dict) -> list[str]:
    with_curriculum = {k: s["curriculum"]["mean"] for k, s in methods.items() if s["curriculum"]["mean"]}
    if not with_curriculum:
        return []
    lines = ["## The curricula", "", "Each run's final curriculum state, the mean over seeds: level choices "
             "(new, replayed, mutated), the buffer's fill, teacher queries and the success gain of demonstrated "
             "levels at their next replay.", "",
             "| method | new | replay | mutate | buffer filled | teacher queries | success gain |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in with_curriculum.items():
        ch = c["choices"]
        lines.append(f"| {name} | {ch['new']:.1f} | {ch['replay']:.1f} | {ch['mutate']:.1f} | "
                     f"{c['buffer_filled']:.2f} | {c['teacher_queries']:.1f} | {_rate(c['teacher_success_gain'])} |")
    lines.append("")
    for name, c in with_curriculum.items():
        lines += [f"### {name}: groups", "", "Levels trained on, failure and forbidden rates on them, and each "
                  "group's share of the training mix in each quarter of the run (how the mix moved).", "",
                  "| group | levels | failure rate | forbidden rate | share q1 | q2 | q3 | q4 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for g in c["groups"]:
            q = g["share_by_quarter"]
            lines.append(f"| {g['group']} | {g['levels']:.1f} | {_rate(g['failure_rate'])} | "
                         f"{_rate(g['forbidden_rate'])} | " + " | ".join(f"{x:.2f}" for x in q) + " |")
        lines.append("")
    return lines


def _teacher_lines(teacher: dict | None) -> list[str]:
    if teacher is None:
        return []
    head = f"## The teacher: {teacher['with_teacher']} against {teacher['without_teacher']}"
    diff = teacher["value_difference"]
    if teacher["per_query"] is None:
        return [head, "", f"Held-out value difference {format_interval(diff)}; no teacher queries, so no value per "
                "query.", ""]
    return [head, "", f"Held-out value difference {format_interval(diff)} over "
            f"{format_number(teacher['mean_queries'])} teacher queries (mean over seeds): "
            f"{format_interval(teacher['per_query'])} of value per query.", ""]


def plot_curriculum(report: dict, path: Path) -> None:
    """Held-out value against environment steps, a line per method with its 95% CI band; beside it
    the forbidden-action rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, column, label in ((axes[0], VALUE, f"held-out value ({report['value']['per_env'].replace('_', ' ')})"),
                              (axes[1], FORBIDDEN, "forbidden-action rate")):
        for i, (name, s) in enumerate(report["methods"].items()):
            x = [st["env_steps"] for st in s["stages"]]
            e = [st["estimates"][column] for st in s["stages"]]
            color = "black" if name == report["reference"] else colors[i % len(colors)]
            low = [max(v["ci95_low"], 0.0) if column == FORBIDDEN else v["ci95_low"] for v in e]
            ax.plot(x, [v["mean"] for v in e], marker="o", color=color,
                    label=f"{name} (reference)" if name == report["reference"] else name)
            ax.fill_between(x, low, [v["ci95_high"] for v in e], color=color, alpha=0.15)
        ax.set_xlabel("environment steps trained")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"curricula on {report['env']}: {len(report['seeds'])} seed{'s' if len(report['seeds']) > 1 else ''}, {report['held_out']['compared']:,} "
                 "held-out worlds, 95% CIs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

