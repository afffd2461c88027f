"""PNG plots of a run's metrics.jsonl: return, divergence and forbidden-action rate against steps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aligned_rl.train.run_log import read_metrics  # noqa: E402

PANELS = (
    ("episode_return", "episode return", "return.png"),
    ("divergence", "mean D(sigma, pi) [bits]", "divergence.png"),
    ("forbidden_rate", "forbidden-action rate", "forbidden_rate.png"),
)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write one PNG per panel into ``<run_dir>/plots``; returns their paths."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return []
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for key, label, filename in PANELS:
        points = [(r["env_steps"], r[key]) for r in records if r.get(key) is not None]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.set_title(f"{run_dir.name}: {label}", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        written.append(out / filename)
    return written
