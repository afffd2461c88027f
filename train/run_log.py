"""What a run writes while it trains: metrics.jsonl, TensorBoard events, a progress bar.

``chunk_record`` turns the per-update metrics of one jitted chunk into one JSON line:
episode return and length are averaged over the episodes that finished in the chunk
(``null`` when none did), everything else over the chunk's updates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

METRICS_FILE = "metrics.jsonl"
_LAST_VALUE = ("beta", "teacher/queries", "teacher/demonstrated")  # levels, cumulative counts: the last value
_SUMMED = ("episodes", "episode_return_sum", "episode_length_sum")


def chunk_record(metrics: dict[str, np.ndarray], env_steps: int, update: int, sps: float) -> dict[str, Any]:
    episodes = float(np.sum(metrics["episodes"]))
    record: dict[str, Any] = {"update": int(update), "env_steps": int(env_steps)}
    if episodes > 0:
        record["episode_return"] = float(np.sum(metrics["episode_return_sum"]) / episodes)
        record["episode_length"] = float(np.sum(metrics["episode_length_sum"]) / episodes)
    else:
        record["episode_return"] = None
        record["episode_length"] = None
    record["episodes"] = int(episodes)
    for key, values in metrics.items():
        if key in _SUMMED:
            continue
        record[key] = float(values[-1]) if key in _LAST_VALUE else float(np.mean(values))
    record["sps"] = float(sps)
    return record


def non_finite_keys(metrics: dict[str, np.ndarray]) -> list[str]:
    return sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))


class RunLog:
    """metrics.jsonl + TensorBoard + a rich progress bar for one run directory."""

    def __init__(self, run_dir: Path, total_updates: int, start_update: int, tensorboard: bool, progress: bool):
        self.path = run_dir / METRICS_FILE
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.progress = None
        if progress:
            self.progress = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} updates"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_updates, completed=start_update, status="compiling")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("update", "env_steps") and value is not None and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["env_steps"])
            self.writer.flush()
        if self.progress is not None:
            ret = record["episode_return"]
            status = (
                f"return {ret:7.1f}" if ret is not None else "return     n/a"
            ) + f"  forbidden {record['forbidden_rate']:.4f}  D {record['divergence']:.4f}  {record['sps']:,.0f} sps"
            self.progress.update(self.task, completed=record["update"], status=status)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_update: int) -> None:
    """Drop lines written after ``last_update`` (by a run that died before its next checkpoint)."""
    records = [r for r in read_metrics(run_dir) if r["update"] <= last_update]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
