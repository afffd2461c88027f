"""The output format of a measurement, written and read in one place.

A measurement directory holds ``report.json`` (the estimates with 95% CIs, the settings,
throughput, memory), ``per_env.npz`` (the per-environment values, a row per environment
run) and ``values.png`` (their histogram).  ``aligned-rl measure`` writes it
(:func:`write_measurement`); ``compare`` and anything else that needs a past measurement
reads it back with :func:`read_measurement`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure import Measurement

REPORT_FILE = "report.json"
PER_ENV_FILE = "per_env.npz"


def default_output(agent: str, env: str) -> Path:
    return Path("measurements") / f"{Path(agent).name}-{env}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_measurement(measurement: Measurement, output: str | Path) -> Path:
    """Write the measurement into ``output`` (created); records the directory in the report."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    measurement.report["output"] = str(out)
    (out / REPORT_FILE).write_text(json.dumps(measurement.report, indent=2) + "\n")
    np.savez_compressed(out / PER_ENV_FILE, **measurement.per_env)
    plot_values(measurement, out / "values.png")
    return out


def read_measurement(directory: str | Path) -> Measurement:
    """A measurement written by :func:`write_measurement`."""
    directory = Path(directory)
    if not (directory / REPORT_FILE).is_file() or not (directory / PER_ENV_FILE).is_file():
        raise ConfigError(f"{directory} is not an output directory of aligned-rl measure ({REPORT_FILE} and "
                          f"{PER_ENV_FILE} are missing)")
    report = json.loads((directory / REPORT_FILE).read_text())
    with np.load(directory / PER_ENV_FILE) as data:
        per_env = {k: data[k] for k in data.files}
    return Measurement(report, per_env)


def plot_values(measurement: Measurement, path: Path) -> None:
    """Histogram of the per-environment average reward, the estimate in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = measurement.report
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(measurement.per_env["average_reward"], bins=50)
    ax.set_xlabel("average reward per step")
    ax.set_ylabel("environments")
    e = report["estimates"]["upsilon_average_reward"]
    ax.set_title(f"{report['agent']} on {report['env']}: Upsilon {e['mean']:.3f} "
                 f"[{e['ci95_low']:.3f}, {e['ci95_high']:.3f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_estimates(report: dict) -> str:
    """The command's table: one line per estimate, with its 95% CI and n."""
    lines = [f"{report['agent']} on {report['env']}: {report['num_envs']} environments"
             f"{' (+ antithetic twins)' if report['antithetic'] else ''}, {report['episode_length']} steps each, "
             f"seed {report['seed']}",
             f"{'estimate':28s} {'mean':>9s} {'95% CI':>22s} {'n':>6s}"]
    for name, e in report["estimates"].items():
        lines.append(f"{name:28s} {e['mean']:9.4f} [{e['ci95_low']:9.4f}, {e['ci95_high']:9.4f}] {e['n']:6d}")
    return "\n".join(lines)
