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
    families = env.replace(",", "+") if len(env) < 60 else "families"
    return Path("measurements") / f"{Path(agent).name}-{families}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def primary_value(report: dict) -> dict:
    """The report's ``value`` section: the kind, the estimate of Upsilon and the per-environment
    key it is the mean of (reports written before families declared their value: continuing)."""
    return report.get("value", {"kind": "continuing", "estimate": "upsilon_average_reward",
                                "per_env": "average_reward"})


def plot_values(measurement: Measurement, path: Path) -> None:
    """Histogram of the per-environment average reward, the estimate in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = measurement.report
    value = primary_value(report)
    if value["kind"] == "mixture":
        _plot_families(report, path)
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(measurement.per_env[value["per_env"]], bins=50)
    ax.set_xlabel("average reward per step" if value["kind"] == "continuing" else "episode value in [-1, 1]")
    ax.set_ylabel("environments")
    e = report["estimates"][value["estimate"]]
    ax.set_title(f"{report['agent']} on {report['env']}: Upsilon {e['mean']:.3f} "
                 f"[{e['ci95_low']:.3f}, {e['ci95_high']:.3f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_families(report: dict, path: Path) -> None:
    """Per family: its Upsilon with the 95% CI; the mixture's estimate as a band."""
    import matplotlib.pyplot as plt

    rows = [f for f in report["families"] if f["measured"]]
    names = [f["family"] for f in rows]
    est = [f["estimates"][next(iter(f["estimates"]))] for f in rows]
    means = np.array([e["mean"] for e in est])
    err = np.array([[e["mean"] - e["ci95_low"] for e in est], [e["ci95_high"] - e["mean"] for e in est]])
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 3, 4), dpi=100)
    ax.bar(names, means, yerr=err, capsize=3, color="tab:blue", label="family (95% CI)")
    total = report["estimates"]["upsilon"]
    ax.axhspan(total["ci95_low"], total["ci95_high"], color="tab:orange", alpha=0.3,
               label=f"Upsilon over the mixture {total['mean']:.3f}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("value in [-1, 1]")
    ax.set_title(f"{report['agent']} over {len(names)} families", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_families(report: dict) -> str:
    """The mixture's table: a line per family (weight, units, value with its CI), then the estimates."""
    lines = [f"{report['agent']} over {len(report['families'])} families (fixed-length family code, "
             f"{report['families'][0]['code_bits']} bits each; equal weights), seed {report['seed']}",
             f"{'family':36s} {'weight':>7s} {'n':>5s} {'value':>9s} {'95% CI':>22s}  constitution"]
    for f in report["families"]:
        if not f["measured"]:
            lines.append(f"{f['family']:36s} {f['weight']:7.4f} {'':>5s} not measured: {f['reason']}")
            continue
        e = f["estimates"][next(iter(f["estimates"]))]
        lines.append(f"{f['family']:36s} {f['weight']:7.4f} {e['n']:5d} {e['mean']:9.4f} "
                     f"[{e['ci95_low']:9.4f}, {e['ci95_high']:9.4f}]  {f['constitution']}")
    lines.append(f"weight of the families not measured: {report['weight_not_measured']:.4f}")
    lines.append(f"{'estimate':28s} {'mean':>9s} {'95% CI':>22s} {'n':>6s}")
    return "\n".join(lines + estimate_lines(report))


def estimate_lines(report: dict) -> list[str]:
    """One line per estimate with its 95% CI and n; then, where the family has groups, the primary
    value and the forbidden rate within each group."""
    lines = [f"{name:28s} {e['mean']:9.4f} [{e['ci95_low']:9.4f}, {e['ci95_high']:9.4f}] {e['n']:6d}"
             for name, e in report["estimates"].items()]
    if report.get("groups"):
        shown = [primary_value(report)["estimate"], *(["forbidden_rate"] if "forbidden_rate" in report["estimates"] else [])]
        lines.append(f"by group: {', '.join(shown)}")
        for row in report["groups"]:
            cells = [f"{row['estimates'][k]['mean']:9.4f} [{row['estimates'][k]['ci95_low']:9.4f}, "
                     f"{row['estimates'][k]['ci95_high']:9.4f}]" for k in shown]
            lines.append(f"  {row['group']:26s} {'  '.join(cells)} {row['environments']:6d}")
    return lines


def format_estimates(report: dict) -> str:
    """The command's table: one line per estimate, with its 95% CI and n."""
    if primary_value(report)["kind"] == "mixture":
        return format_families(report)
    lines = [f"{report['agent']} on {report['env']}: {report['num_envs']} environments"
             f"{' (+ antithetic twins)' if report['antithetic'] else ''}, {report['episode_length']} steps each, "
             f"seed {report['seed']}",
             f"{'estimate':28s} {'mean':>9s} {'95% CI':>22s} {'n':>6s}"]
    return "\n".join(lines + estimate_lines(report))
