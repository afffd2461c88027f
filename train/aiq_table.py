"""``aligned-rl aiq``: every agent at every episode length of the AIQ paper's table.

Legg and Veness (2011) published the AIQ of their agents at five episode lengths (1,000 to
100,000 steps), each agent with the parameters of that length's row of their settings file
(``aligned_rl.baselines.PAPER_SETTINGS``).  This command measures the same table here: every
agent of ``agents`` at every length of ``episode_lengths``, each cell a run of
:func:`aligned_rl.train.measure.measure` in this process on the very same programs (drawn
once, :func:`~aligned_rl.train.measure.draw_environments`) and the same random numbers.  A
baseline named by its name takes the paper's parameters for the steps it acts; one in AIQ's
spelling (``HLQ_l,0,0,0.95,0.04,0.7``) keeps the parameters it names at every length; a run
directory is a trained agent.

Our value is the average reward per step in [-1, 1]; AIQ's scale is 100 times that, and the
tables and the plot speak AIQ's.  Where an agent runs with the paper's parameters at one of
the paper's lengths on BF-programs, the published AIQ (mean +- half its 95% CI) is shown
beside ours (:func:`paper_value`).

Writes, under ``output``:

* ``<agent>-<length>/``: each cell as ``aligned-rl measure`` writes it (``report.json``,
  ``per_env.npz``, ``values.png``; :func:`cell_name` names it);
* ``table.json``: every cell's estimate and CI (ours and on AIQ's scale), n, seconds,
  agent-environment steps/s, the agent's parameters, the runs voided and redrawn, the
  paper's value; the total time, the machine and the command;
* ``table.md``: the same as markdown tables (printed at the end by the command);
* ``aiq_vs_length.png``: AIQ against episode length, one line per agent, the paper's
  values dashed.

The run is resumable: a cell is written whole (into a temporary directory, then renamed),
and a cell whose ``report.json`` exists and whose config is this run's is read back instead
of measured again; one whose config differs is refused, not mixed into the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import aligned_rl.envs as envs
from aligned_rl import baselines
from aligned_rl.train.agents import BaselineAgent, acting_steps, make_agent
from aligned_rl.train.aiq_workers import plan_workers, run_workers
from aligned_rl.train.config import ConfigError, merge_layers
from aligned_rl.train.measure import draw_environments, measure, resolve_antithetic
from aligned_rl.train.measure_config import MeasureConfig, check_measure_config
from aligned_rl.train.measure_families import is_mixture
from aligned_rl.train.measure_report import REPORT_FILE, read_measurement, write_measurement

AIQ_SCALE = 100.0  # AIQ = 100 x our average reward per step
PAPER_ENV = "BF-programs"  # the family whose AIQ the paper published
ESTIMATE = "upsilon_average_reward"
TABLE_FILE, MARKDOWN_FILE, PLOT_FILE = "table.json", "table.md", "aiq_vs_length.png"
DEFAULT_AGENTS = ("random", "freq", "q_0", "q_lambda", "hlq_lambda")
DEFAULT_LENGTHS = (1_000, 3_000, 10_000, 30_000, 100_000)


def _table_measure() -> MeasureConfig:
    return MeasureConfig(env="BF-programs", num_envs=4096, antithetic=True)


@dataclasses.dataclass
class AiqTableConfig:
    # the rows: baseline names (with the paper's parameters for each length), AIQ spellings
    # (HLQ_l,0,0,0.95,0.04,0.7: the same parameters at every length) or run directories
    agents: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_AGENTS))
    # the columns: steps per environment (the AIQ paper's episode lengths by default)
    episode_lengths: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_LENGTHS))
    # how every cell is measured (train/measure_config.py): env (a continuing family), num_envs,
    # antithetic, seed, buckets, devices, ...; agent and episode_length are set per cell
    measure: MeasureConfig = dataclasses.field(default_factory=_table_measure)
    output: str = "measurements/aiq_table"  # directory: a subdirectory per cell, table.json/.md, the plot
    # processes that measure the cells side by side on a CPU, each pinned to its own core
    # (train/aiq_workers.py); 0: one per core this process may use (one process on an accelerator);
    # 1: the cells one after the other in this process
    workers: int = 0


# set per cell by the command (agent, episode_length), or meaningless for a table of several agents
PER_CELL = {
    "agent": "the command sets it for each cell: list the agents in agents=[...]",
    "episode_length": "the command sets it for each cell: list the lengths in episode_lengths=[...]",
    "agent_params": "it would apply to every agent of the table: name an agent with its parameters in AIQ's "
                    "spelling instead, e.g. agents=[random,\"HLQ_l,0,0,0.95,0.04,0.7\"]",
    "output": "each cell is written under the table's output: set output=DIR",
    "episodes": "the table measures a continuing family, whose environments run episode_lengths steps",
}
# keys of a cell's saved config that do not change its numbers (a read-back cell may differ in them)
NOT_RESULTS = ("progress", "output", "devices", "coordinator_address", "num_processes", "process_id")


def given_measure_keys(path: str | None, overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The measure keys the YAML file or the overrides set (whatever their value)."""
    layers = [OmegaConf.load(path)] if path is not None else []
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    raw = OmegaConf.merge(*layers)
    section = raw.get("measure") if OmegaConf.is_dict(raw) else None
    return set(section.keys()) if OmegaConf.is_dict(section) else set()


def load_aiq_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> AiqTableConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, checked against :class:`AiqTableConfig`."""
    merged = merge_layers(AiqTableConfig, "aiq", path, overrides,
                          example="episode_lengths=[1000,3000] measure.num_envs=1024")
    try:
        config: AiqTableConfig = OmegaConf.to_object(merged)
        given = given_measure_keys(path, overrides)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "")
        raise ConfigError(f"aiq config: bad or unknown key '{key}': {str(err).splitlines()[0]}") from err
    for key, fix in PER_CELL.items():
        if key in given:
            raise ConfigError(f"aiq config: measure.{key} has no effect: {fix}; remove it")
    check_aiq_config(config)
    return config


def check_aiq_config(config: AiqTableConfig) -> None:
    """Everything :func:`load_aiq_config` checks after merging (also for a config built in Python,
    where only values that differ from the defaults can be told apart)."""
    default = MeasureConfig()
    for key, fix in PER_CELL.items():
        if key not in ("agent", "episode_length") and getattr(config.measure, key) != getattr(default, key):
            raise ConfigError(f"aiq config: measure.{key} has no effect: {fix}; remove it")
    if not config.agents:
        raise ConfigError("aiq config: agents is empty; name at least one, e.g. agents=[random,q_lambda]")
    for spec in config.agents:
        try:
            float(spec)
        except ValueError:
            continue
        raise ConfigError(f"aiq config: agents holds {spec!r}, a number: an agent in AIQ's spelling must be "
                          "quoted inside the list, e.g. 'agents=[random,\"HLQ_l,0,0,0.95,0.04,0.7\"]'")
    twice = sorted({a for a in config.agents if config.agents.count(a) > 1})
    if twice:
        raise ConfigError(f"aiq config: agents lists {', '.join(twice)} more than once; list each agent once")
    if not config.episode_lengths:
        raise ConfigError("aiq config: episode_lengths is empty; name at least one, e.g. episode_lengths=[1000]")
    bad = [n for n in config.episode_lengths if n < 1]
    if bad:
        raise ConfigError(f"aiq config: episode_lengths holds {bad[0]}: every length must be a positive "
                          "number of steps, e.g. episode_lengths=[1000,3000,10000,30000,100000]")
    twice = sorted({n for n in config.episode_lengths if config.episode_lengths.count(n) > 1})
    if twice:
        raise ConfigError(f"aiq config: episode_lengths lists {', '.join(map(str, twice))} more than once; "
                          "list each length once")
    m = config.measure
    if m.coordinator_address:
        raise ConfigError("aiq config: measure.coordinator_address: the table runs in one process, on every "
                          "device of this machine (measure.devices); remove it, or run `aligned-rl measure` "
                          "per cell over several processes")
    if is_mixture(m.env):
        raise ConfigError(f"aiq config: measure.env={m.env} is a mixture of families; the table measures one "
                          "continuing family, e.g. measure.env=BF-programs")
    try:
        value = envs.spec(m.env).value
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    if value is None or value.kind != "continuing":
        kind = "declares no value" if value is None else f"is {value.kind}"
        raise ConfigError(f"aiq config: measure.env={m.env} {kind}: the table's cells are episode lengths, "
                          "which only a continuing family has (its value the average reward per step over "
                          "episode_length steps); measure one, e.g. measure.env=BF-programs")
    if m.sampling == "simple" and m.num_envs % m.buckets:
        raise ConfigError(f"aiq config: measure.num_envs={m.num_envs} does not split into "
                          f"measure.buckets={m.buckets} equal batches")
    check_measure_config(m, "aiq measure")
    if len(plan_workers(config.workers)) > 1 and m.devices > 1:
        raise ConfigError(f"aiq config: workers={config.workers} with measure.devices={m.devices}: each worker "
                          "measures on one CPU core; set workers=1 to spread cells over devices")
    names = [cell_name(a) for a in config.agents]
    for name in set(names):
        same = [a for a, n in zip(config.agents, names) if n == name]
        if len(same) > 1:
            raise ConfigError(f"aiq config: agents {' and '.join(same)} would be written to the same "
                              f"directories ({name}-<length>); give the runs directories of different names")


# ------------------------------------------------------------------------------ cells
def cell_name(agent: str) -> str:
    """The directory name of ``agent``'s cells (without ``-<length>``): a baseline's name, an AIQ
    spelling with ``_`` for its commas (``HLQ_l_0_0_0.95_0.04_0.7``), a run directory's last part."""
    name = Path(agent.rstrip("/")).name if agent not in baselines.BASELINES and "," not in agent else agent
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "agent"


def cell_directory(output: str | Path, agent: str, episode_length: int) -> Path:
    return Path(output) / f"{cell_name(agent)}-{episode_length}"


def cell_config(config: AiqTableConfig, agent: str, episode_length: int) -> MeasureConfig:
    """The measure config of one cell."""
    return dataclasses.replace(config.measure, agent=agent, episode_length=int(episode_length))


def config_mismatch(saved: dict, expected: MeasureConfig) -> list[str]:
    """``key: saved -> expected`` for every key of a cell's saved config (``report.json``'s
    ``config``) that differs from this run's and changes its numbers; antithetic unset (null)
    accepts what the agent's default chose."""
    default = dataclasses.asdict(MeasureConfig())
    found = []
    for key, want in dataclasses.asdict(expected).items():
        if key in NOT_RESULTS or (key == "antithetic" and want is None):
            continue
        have = saved.get(key, default[key])
        if have != want:
            found.append(f"{key}: {have!r} there, {want!r} here")
    return found


def saved_measure_config(directory: Path, what: str) -> Optional[dict]:
    """The measure config saved in ``directory``'s report, or None where the directory does not
    exist; raises where it holds no readable report (it is not ``what``)."""
    if not directory.exists():
        return None
    report_path = directory / REPORT_FILE
    if not report_path.is_file():
        raise ConfigError(f"{directory} exists but holds no {REPORT_FILE}: it is not {what}; "
                          "delete it or choose another output=DIR")
    try:
        return json.loads(report_path.read_text()).get("config", {})
    except json.JSONDecodeError as err:
        raise ConfigError(f"{report_path} is not readable JSON ({err}); delete {directory} to measure it "
                          "again") from err


def _existing_cell(directory: Path, expected: MeasureConfig) -> bool:
    """Whether the cell in ``directory`` is done (its report is read back); raises where it holds
    something else than this cell."""
    saved = saved_measure_config(directory, "a cell of this table")
    if saved is None:
        return False
    differ = config_mismatch(saved, expected)
    if differ:
        raise ConfigError(f"{directory} was measured with another config ({'; '.join(differ)}): its cell would "
                          "not be comparable with the others; choose another output=DIR, or delete the "
                          "directory to measure it again")
    return True


def write_cell(measurement: Any, directory: Path) -> None:
    """Write the cell whole: into a temporary directory, renamed once complete."""
    partial = directory.with_name(f".{directory.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    write_measurement(measurement, partial)
    measurement.report["output"] = str(directory)
    (partial / REPORT_FILE).write_text(json.dumps(measurement.report, indent=2) + "\n")
    os.replace(partial, directory)


# ------------------------------------------------------------------------------ the paper
def paper_value(agent: str, episode_length: int, env: str = PAPER_ENV) -> Optional[dict]:
    """The AIQ the paper published for ``agent`` at ``episode_length`` steps, or None: the length
    must be one of the paper's (``PAPER_SETTINGS``), the family BF-programs and the agent a
    baseline the paper ran, named by its name (it then takes the paper's parameters) or in AIQ's
    spelling with exactly the paper's parameters for that length."""
    if env != PAPER_ENV or episode_length not in baselines.PAPER_SETTINGS:
        return None
    if agent in baselines.BASELINES:
        name = agent
    elif "," in agent or agent in baselines.AIQ_NAMES:
        try:
            name, params = baselines.parse_aiq_spec(agent)
        except ValueError:
            return None
        if params != baselines.paper_setting(name, episode_length):
            return None
    else:
        return None
    entry = baselines.PAPER_SETTINGS[episode_length].get(name)
    if entry is None:
        return None
    return {"aiq": entry.aiq, "half_ci": entry.half_ci, "ci95_low": round(entry.aiq - entry.half_ci, 6),
            "ci95_high": round(entry.aiq + entry.half_ci, 6), "agent": name,
            "params": baselines.paper_setting(name, episode_length)}


# ------------------------------------------------------------------------------ the command
def _preflight(config: AiqTableConfig) -> None:
    """Build every agent once before anything is drawn or run, so that a bad name, a run directory
    that cannot act here or twins for an agent that ignores rewards fail at once."""
    m = config.measure
    env, example = envs.make(m.env)
    num_actions = int(env.action_space(example).n)
    for spec in config.agents:
        try:
            agent = make_agent(spec, env, num_actions, m.env, {}, m.agent_reward_scale,
                               acting_steps("continuing", config.episode_lengths[0], 1, example))
        except ConfigError:
            raise
        except ValueError as err:  # e.g. a checkpoint whose parameters this code no longer matches
            raise ConfigError(f"agent {spec}: cannot load it: {str(err).strip().splitlines()[0]} "
                              "(retrain it with this version)") from err
        resolve_antithetic(m.antithetic, [agent], "measure.antithetic")
        if not isinstance(agent, BaselineAgent) and m.agent_reward_scale != MeasureConfig().agent_reward_scale:
            raise ConfigError(f"aiq config: measure.agent_reward_scale={m.agent_reward_scale} has no effect on "
                              f"{spec}, which is not a baseline; remove it")


def machine() -> dict:
    """Where the table was measured."""
    import jax

    device = jax.devices()[0]
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "jax_platform": device.platform,
            "jax_device": getattr(device, "device_kind", str(device)), "jax_devices": jax.device_count()}


def equivalent_command(config: AiqTableConfig) -> str:
    """An ``aligned-rl aiq`` command line for ``config``: the keys that differ from the defaults."""
    default = AiqTableConfig()
    words = ["aligned-rl", "aiq"]
    if config.agents != default.agents:
        words.append("agents=[" + ",".join(f'"{a}"' if "," in a else a for a in config.agents) + "]")
    if config.episode_lengths != default.episode_lengths:
        words.append("episode_lengths=[" + ",".join(map(str, config.episode_lengths)) + "]")
    ours, theirs = dataclasses.asdict(config.measure), dataclasses.asdict(default.measure)
    for key, value in ours.items():
        if value != theirs[key] and key not in PER_CELL:
            text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            words.append(f"measure.{key}={text}")
    if config.output != default.output:
        words.append(f"output={config.output}")
    return shlex.join(words)


def _cell_entry(agent: str, length: int, report: dict, directory: Path, measured_now: bool, env: str) -> dict:
    e = report["estimates"][ESTIMATE]
    voided = report.get("voided")
    return {
        "agent": agent,
        "episode_length": length,
        "directory": str(directory),
        "measured": "now" if measured_now else "read back",
        "estimate": e,  # average reward per step in [-1, 1]
        "aiq": {"mean": AIQ_SCALE * e["mean"], "ci95_low": AIQ_SCALE * e["ci95_low"],
                "ci95_high": AIQ_SCALE * e["ci95_high"], "se": AIQ_SCALE * e["se"]},
        "n": e["n"],
        "antithetic": report["antithetic"],
        "seconds": report["seconds"],  # measuring, compile excluded
        "compile_seconds": report["compile_seconds"],
        "agent_env_steps_per_second": report["agent_env_steps_per_second"],
        "agent_parameters": report.get("agent_parameters"),
        "voided": None if voided is None else {k: voided[k] for k in ("metric", "replaced", "environments", "rounds")
                                               if k in voided},
        "paper": paper_value(agent, length, env),
    }


def _earlier_draw_seconds(out: Path) -> float:
    """The time the earlier run whose cells are read back took to draw the programs (0 if unknown):
    the total time is that of the cells and one draw."""
    try:
        return float(json.loads((out / TABLE_FILE).read_text())["time"]["draw_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def aiq_table(config: AiqTableConfig, command: str | None = None) -> dict:
    """Measure every (agent, episode length) cell on the same programs, write the cells, ``table.json``,
    ``table.md`` and ``aiq_vs_length.png`` under ``config.output``, and return the table.
    ``command`` is recorded as the command that made it (default: :func:`equivalent_command`)."""
    check_aiq_config(config)
    started = time.perf_counter()
    m = config.measure
    out = Path(config.output)
    cells = [(agent, int(length)) for agent in config.agents for length in config.episode_lengths]
    # what is already there, before anything is drawn or run: a cell of another config fails at once
    done = {cell: _existing_cell(cell_directory(out, *cell), cell_config(config, *cell)) for cell in cells}
    todo = [cell for cell in cells if not done[cell]]
    sampled, draw_seconds, workers = None, _earlier_draw_seconds(out), None
    say = print if m.progress else (lambda *a, **k: None)
    cores = plan_workers(config.workers)
    if todo:
        _preflight(config)
        if len(cores) > 1:
            workers = run_workers(config, todo, cores, say)  # the workers write the cells
            draw_seconds = workers["draw_seconds"]
        else:
            t0 = time.perf_counter()
            sampled = draw_environments(m)  # one draw: the same programs for every agent and length
            draw_seconds = time.perf_counter() - t0
    now = set(todo)
    entries = []
    for i, cell in enumerate(cells, 1):
        agent, length = cell
        directory = cell_directory(out, agent, length)
        where = f"[{i}/{len(cells)}] {agent} at {length:,} steps"
        if done[cell] or workers is not None:
            report = read_measurement(directory).report
        else:
            say(f"{where}: measuring ({len(todo)} cell{'s' * (len(todo) != 1)} to measure in all)", flush=True)
            measurement = measure(cell_config(config, agent, length), sampled=sampled)
            write_cell(measurement, directory)
            report = measurement.report
        entry = _cell_entry(agent, length, report, directory, cell in now, m.env)
        a = entry["aiq"]
        took = "read back" if cell not in now else duration(entry["seconds"])
        say(f"{where}: AIQ {a['mean']:.1f} [{a['ci95_low']:.1f}, {a['ci95_high']:.1f}], {took}, "
            f"{entry['agent_env_steps_per_second']:,.0f} agent-environment steps/s", flush=True)
        entries.append(entry)
    measuring = sum(e["seconds"] for e in entries)
    compiling = sum(e["compile_seconds"] for e in entries)
    saved_config = OmegaConf.to_container(OmegaConf.structured(config))
    for key in PER_CELL:
        saved_config["measure"].pop(key, None)
    table = {
        "env": m.env,
        "num_envs": m.num_envs,
        "antithetic": sorted({e["antithetic"] for e in entries}),
        "seed": m.seed,
        "sampling": m.sampling,
        "agents": list(config.agents),
        "episode_lengths": [int(n) for n in config.episode_lengths],
        "aiq_scale": AIQ_SCALE,
        "value": "AIQ = 100 x the average reward per step in [-1, 1], mean over the programs (antithetic pairs "
                 "with twins) with its 95% CI",
        "cells": entries,
        "time": {"total_seconds": measuring + compiling + draw_seconds, "measuring_seconds": measuring,
                 "compile_seconds": compiling, "draw_seconds": draw_seconds,
                 "cells_measured_now": len(todo), "cells_read_back": len(cells) - len(todo),
                 "wall_seconds_this_run": time.perf_counter() - started,
                 "workers": None if workers is None else {k: workers[k] for k in ("workers", "cores", "wall_seconds")}},
        "agent_env_steps": int(sum(e["n"] * (2 if e["antithetic"] else 1) * e["episode_length"] for e in entries)),
        "machine": machine(),
        "command": command or equivalent_command(config),
        "config": saved_config,
        "output": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE_FILE).write_text(json.dumps(table, indent=2) + "\n")
    (out / MARKDOWN_FILE).write_text(format_markdown(table))
    plot_table(table, out / PLOT_FILE)
    return table


# ------------------------------------------------------------------------------ output
def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cells(table: dict) -> dict[tuple[str, int], dict]:
    return {(c["agent"], c["episode_length"]): c for c in table["cells"]}


def _markdown_rows(table: dict, header: str, cell_text, agents: list[str] | None = None) -> list[str]:
    lengths = table["episode_lengths"]
    cells = _cells(table)
    lines = [f"| {header} | " + " | ".join(f"{n:,}" for n in lengths) + " |",
             "| --- | " + " | ".join("---:" for _ in lengths) + " |"]
    for agent in table["agents"] if agents is None else agents:
        lines.append(f"| {agent} | " + " | ".join(cell_text(cells[agent, n]) for n in lengths) + " |")
    return lines


def format_markdown(table: dict) -> str:
    """The table as markdown: ours, the paper's where it has one, time per cell, then the total
    time, the machine and the command."""
    twins = " (+ antithetic twins)" if True in table["antithetic"] else ""
    lines = [f"# AIQ across episode lengths on {table['env']}", "",
             f"AIQ (100 x the average reward per step), mean [95% CI], over {table['num_envs']:,} programs"
             f"{twins}, the same programs and random numbers in every cell, seed {table['seed']}; columns: "
             "steps per program.", ""]

    def ours(c: dict) -> str:
        a = c["aiq"]
        return f"{a['mean']:.1f} [{a['ci95_low']:.1f}, {a['ci95_high']:.1f}]"

    lines += _markdown_rows(table, "agent", ours)
    published = [a for a in table["agents"] if any(c["paper"] for c in table["cells"] if c["agent"] == a)]
    if published:
        lines += ["", "The AIQ paper (Legg & Veness 2011), mean ± half its 95% CI, where the agent ran with the "
                      "paper's parameters at one of its lengths (-: not published):", ""]
        lines += _markdown_rows(table, "agent (paper)", lambda c: f"{c['paper']['aiq']:.1f} ± "
                                f"{c['paper']['half_ci']:.1f}" if c["paper"] else "-", published)
    lines += ["", "Seconds per cell (compile excluded), agent-environment steps/s, and runs voided and redrawn "
                  "(an overtime cycle):", ""]

    def cost(c: dict) -> str:
        voided = c["voided"]["replaced"] if c["voided"] else 0
        return f"{duration(c['seconds'])}, {c['agent_env_steps_per_second']:,.0f}/s, {voided} redrawn"

    lines += _markdown_rows(table, "agent", cost)
    t, mach = table["time"], table["machine"]
    note = "" if not t["cells_read_back"] else \
        f"; {t['cells_read_back']} of {len(table['cells'])} cells were read back from an earlier run"
    workers = t.get("workers")
    if workers:
        note += (f". Wall time {duration(workers['wall_seconds'])}: {workers['workers']} processes side by side, "
                 "one per CPU core, each drawing the programs once and measuring a cell at a time")
    lines += ["",
              f"{'Time summed over the cells' if workers else 'Total time'}: {duration(t['total_seconds'])} ({duration(t['measuring_seconds'])} measuring, "
              f"{duration(t['compile_seconds'])} compiling, {duration(t['draw_seconds'])} drawing the programs) "
              f"for {table['agent_env_steps']:.3g} agent-environment steps{note}.",
              f"Machine: {mach['platform']}, {mach['cpu_count']} CPUs, jax {mach['jax']} on "
              f"{mach['jax_devices']} x {mach['jax_device']} ({mach['jax_platform']}).",
              f"Command: `{table['command']}`", ""]
    return "\n".join(lines)


def plot_table(table: dict, path: Path) -> None:
    """AIQ against episode length (log x axis): a line with 95% CI error bars per agent, the
    paper's published values dashed with their own markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(table)
    lengths = np.array(table["episode_lengths"], dtype=np.float64)
    order = np.argsort(lengths)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, agent in enumerate(table["agents"]):
        color = colors[i % len(colors)]
        row = [cells[agent, int(n)] for n in lengths[order]]
        mean = np.array([c["aiq"]["mean"] for c in row])
        err = np.array([[c["aiq"]["mean"] - c["aiq"]["ci95_low"] for c in row],
                        [c["aiq"]["ci95_high"] - c["aiq"]["mean"] for c in row]])
        ax.errorbar(lengths[order], mean, yerr=err, color=color, marker="o", capsize=3, label=agent)
        paper = [(n, c["paper"]) for n, c in zip(lengths[order], row) if c["paper"]]
        if paper:
            ax.errorbar([n for n, _ in paper], [p["aiq"] for _, p in paper], yerr=[p["half_ci"] for _, p in paper],
                        color=color, marker="s", markerfacecolor="none", linestyle="--", capsize=3,
                        label=f"{agent} (paper)")
    ax.set_xscale("log")
    ax.set_xticks(lengths[order], [f"{int(n):,}" for n in lengths[order]])
    ax.minorticks_off()
    ax.set_xlabel("episode length (steps per program)")
    ax.set_ylabel("AIQ (100 x average reward per step)")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(f"AIQ on {table['env']}, {table['num_envs']:,} programs, 95% CIs", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
