"""The cells of ``aligned-rl aiq`` split over CPU cores: one process per core, each pinned to it.

On a CPU, one measurement process uses its cores poorly: the asynchronous engine's loop is a
stream of small kernels (tens of microseconds), and XLA's intra-op threads wait for each other
at every one of them.  Measured on the 2-core machine of docs/benchmarks.md, one cell (Q(lambda),
4096 programs with twins, 3000 steps) ran at 1.67 M agent-environment steps/s unpinned and at
2.19 M pinned to one core; two pinned processes side by side ran at 2.22 M and 1.94 M, so two
cores measure about 2.5 times as much as one unpinned process.

``workers=N`` (``AiqTableConfig.workers``) starts N processes of this module, process k pinned to
the k-th core this process may use (``os.sched_getaffinity``).  Each draws the same programs from
the table's seed (the draw is a function of the seed), then takes the cells still to measure,
longest first, one at a time: a cell is taken by creating its claim file (``O_EXCL``, so no two
processes measure it) and written whole as ``aligned-rl aiq`` writes it.  The numbers are those
of one process (a cell's numbers depend on its config and the seed, not on where it ran).  The
parent waits for every worker, then reads the cells back and writes the table.  A killed run
keeps the cells written; the next run removes the stale claims and measures the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from aligned_rl.train.config import ConfigError

WORK_DIR = ".workers"  # under the table's output: the workers' spec, claims and draw times


def worker_cores(workers: int) -> list[int]:
    """The cores the ``workers`` processes are pinned to (0: one per core this process may use)."""
    cores = sorted(os.sched_getaffinity(0))
    if workers < 0:
        raise ConfigError(f"aiq config: workers={workers}: give a number of processes, one per CPU core "
                          f"(1 to {len(cores)} here), or 0 for one per core")
    n = len(cores) if workers == 0 else workers
    if n > len(cores):
        raise ConfigError(f"aiq config: workers={workers}, but this process may use {len(cores)} CPU "
                          f"core{'s' * (len(cores) != 1)}: each worker is pinned to its own core; "
                          f"set workers={len(cores)} or 0 (one per core)")
    return cores[:n]


def plan_workers(workers: int) -> list[int]:
    """The cores of the worker processes for ``workers`` on this machine: on an accelerator one
    process measures the table (``workers`` 0 or 1; more is refused), on a CPU see :func:`worker_cores`."""
    import jax

    if jax.default_backend() == "cpu":
        return worker_cores(workers)
    if workers > 1:
        raise ConfigError(f"aiq config: workers={workers} splits the cells over CPU cores, but this machine "
                          f"measures on {jax.default_backend()}: set workers=1 (or 0: one per core on a CPU)")
    return worker_cores(1)


def run_workers(config, todo: list[tuple[str, int]], cores: list[int],
                say: Callable[..., None] = print) -> dict:
    """Measure the ``todo`` cells of ``config`` (an ``AiqTableConfig``) in one process per core of
    ``cores`` and wait for them; returns ``{"workers", "cores", "wall_seconds", "draw_seconds"}``
    (the slowest worker's draw).  Raises :class:`ConfigError` naming the workers that failed (the
    cells written are kept)."""
    work = Path(config.output) / WORK_DIR
    claims = work / "claims"
    if claims.exists():  # left by a killed run: those cells were not written
        for stale in claims.iterdir():
            stale.unlink()
    claims.mkdir(parents=True, exist_ok=True)
    spec = work / "spec.json"
    spec.write_text(json.dumps({"config": OmegaConf.to_container(OmegaConf.structured(config)),
                                "cells": sorted(todo, key=lambda cell: -cell[1])}, indent=1) + "\n")
    say(f"measuring {len(todo)} cell{'s' * (len(todo) != 1)} in {len(cores)} processes, one per CPU core "
        f"({', '.join(map(str, cores))}), longest first", flush=True)
    started = time.perf_counter()
    processes = []
    for index, core in enumerate(cores):
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "aligned_rl.train.aiq_workers", str(spec), str(index), str(core)]))
    try:
        codes = [p.wait() for p in processes]
    except BaseException:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait()
        raise
    wall = time.perf_counter() - started
    failed = [f"worker {i} (core {core}) exit code {code}" for i, (core, code) in enumerate(zip(cores, codes))
              if code != 0]
    if failed:
        raise ConfigError(f"aiq: {'; '.join(failed)} (its message is above); the cells written are kept: "
                          "run the command again to measure the rest")
    draws = [json.loads(path.read_text())["draw_seconds"] for path in work.glob("draw-*.json")]
    shutil.rmtree(work)
    return {"workers": len(cores), "cores": cores, "wall_seconds": wall, "draw_seconds": max(draws, default=0.0)}


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def worker(spec_path: Path, index: int) -> int:
    """One worker: take unclaimed cells of the spec, longest first, and write each whole."""
    import dataclasses

    from aligned_rl.train import aiq_table as table
    from aligned_rl.train.aiq_table import AiqTableConfig

    spec = json.loads(spec_path.read_text())
    config: AiqTableConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AiqTableConfig),
                                                                  spec["config"]))
    claims, sampled = spec_path.parent / "claims", None
    for agent, length in spec["cells"]:
        directory = table.cell_directory(config.output, agent, length)
        if not _claim(claims / directory.name):
            continue
        if sampled is None:
            t0 = time.perf_counter()
            sampled = table.draw_environments(config.measure)
            (spec_path.parent / f"draw-{index}.json").write_text(
                json.dumps({"draw_seconds": time.perf_counter() - t0}) + "\n")
        print(f"[worker {index}] {agent} at {length:,} steps: measuring", flush=True)
        cell = dataclasses.replace(table.cell_config(config, agent, length), progress=False)
        measurement = table.measure(cell, sampled=sampled)
        table.write_cell(measurement, directory)
        e = measurement.report["estimates"][table.ESTIMATE]
        print(f"[worker {index}] {agent} at {length:,} steps: AIQ {table.AIQ_SCALE * e['mean']:.1f}, "
              f"{table.duration(measurement.report['seconds'])}", flush=True)
    return 0


if __name__ == "__main__":
    os.sched_setaffinity(0, {int(sys.argv[3])})  # before JAX starts its threads
    try:
        sys.exit(worker(Path(sys.argv[1]), int(sys.argv[2])))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
