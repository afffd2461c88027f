"""``aligned-rl compare``: agents measured on the same environments, side by side, with paired CIs.

Each argument is an output directory of ``aligned-rl measure`` (``report.json`` and
``per_env.npz``).  Runs with the same family, seed, number of environments, episode length,
antithetic setting and simple sampling ran on the very same environments with the same
random numbers, so the difference between two agents is estimated from per-environment
differences (a paired estimate, far tighter than the difference of two independent means).
The first run is the reference: every other row shows ``reference - agent`` with its 95% CI.
Environments that one of the two runs redrew (a void run, e.g. an overtime program; see
``measure_redraw``) are not shared, and are left out of that row's difference (counted).
Rows are named by their directories.
Writes ``compare.json`` and ``compare.png`` (means with 95% CI error bars) to ``--output``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aligned_rl.intelligence import estimation_units, paired_difference, simple_estimate
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure_redraw import common_units
from aligned_rl.train.measure_report import primary_value, read_measurement

# what must agree for two runs to have seen the same environments and random numbers
SAME = ("env", "num_envs", "seed", "episode_length", "antithetic")


def _length(report: dict) -> str:
    """How long each environment ran: steps (a continuing family) or episodes (an episodic one)."""
    value = primary_value(report)
    if value["kind"] == "episodic":
        return f"{value['episodes']} episode{'s' if value['episodes'] > 1 else ''} each"
    return f"{report['episode_length']} steps"


def compare(runs: list[str], metric: str | None = None, output: str | None = None) -> dict:
    """The comparison of ``runs`` (measure output directories; the first is the reference)."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two measure output directories")
    loaded = [(m.report, m.per_env) for m in map(read_measurement, runs)]
    ref = loaded[0][0]
    metric = metric or primary_value(ref)["per_env"]  # by default the value Upsilon is the mean of
    for run, (report, per_env) in zip(runs, loaded):
        seen, expected = ({**{k: r[k] for k in SAME}, "length": _length(r)} for r in (report, ref))
        differ = [k for k in seen if seen[k] != expected[k]]
        if differ:
            raise ConfigError(
                f"{run} did not run on the same environments as {runs[0]}: "
                + ", ".join(f"{k} {seen[k]!r} vs {expected[k]!r}" for k in differ)
                + "; measure both with the same env, num_envs, seed, episode_length or episodes, and antithetic")
        if report.get("sampling", "simple") != "simple":
            raise ConfigError(f"{run} used sampling={report['sampling']}: its rows are not a simple sample "
                              "of the prior; compare runs measured with sampling=simple")
        if metric not in per_env:
            raise ConfigError(f"{run} has no per-environment {metric!r}; choose one of {sorted(per_env)}")
    n, antithetic, mass = ref["num_envs"], ref["antithetic"], ref["estimates"][primary_value(ref)["estimate"]]["filtered_mass"]
    values = [per_env[metric] for _, per_env in loaded]
    rows = []
    for run, (report, per_env), v in zip(runs, loaded, values):
        row = {"run": str(run), "agent": report["agent"],
               "estimate": simple_estimate(estimation_units(v, n, antithetic), mass).as_dict()}
        if rows:
            # where a run redrew a void environment the two no longer share it: those units are left out
            keep = common_units([loaded[0][1], per_env], n)
            row["reference_minus_agent"] = paired_difference(values[0], v, n, antithetic, mass, keep).as_dict()
            if keep is not None and not keep.all():
                row["unpaired_redrawn"] = int(n - keep.sum())
        rows.append(row)
    result = {"metric": metric, "reference": str(runs[0]), **{k: ref[k] for k in SAME}, "filtered_mass": mass,
              "length": _length(ref),
              "rows": rows}
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        _plot(result, out / "compare.png")
        result["output"] = str(out)
    return result


def format_table(result: dict) -> str:
    cell = lambda e: f"{e['mean']:.4f} [{e['ci95_low']:.4f}, {e['ci95_high']:.4f}]"  # noqa: E731
    names = [Path(r["run"]).name for r in result["rows"]]
    width = max(len(x) for x in names + ["agent"])
    unit = "antithetic pairs" if result["antithetic"] else "environments"
    lines = [f"{result['metric']} on {result['env']}: {result['num_envs']} {unit}, {result['length']}, "
             f"seed {result['seed']}; paired differences against {names[0]}",
             f"{'agent':{width}s}  {'mean [95% CI]':>26s}  {names[0] + ' minus agent':>30s}"]
    for name, row in zip(names, result["rows"]):
        diff = cell(row["reference_minus_agent"]) if "reference_minus_agent" in row else ""
        if row.get("unpaired_redrawn"):
            diff += f" ({row['unpaired_redrawn']} redrawn left out)"
        lines.append(f"{name:{width}s}  {cell(row['estimate']):>26s}  {diff:>30s}")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["run"]).name for r in result["rows"]]
    est = [r["estimate"] for r in result["rows"]]
    means = np.array([e["mean"] for e in est])
    err = np.array([[e["mean"] - e["ci95_low"] for e in est], [e["ci95_high"] - e["mean"] for e in est]])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5), dpi=100)
    ax.bar(names, means, yerr=err, capsize=4, color="tab:blue")
    ax.set_ylabel(f"{result['metric']} (mean, 95% CI)")
    ax.set_title(f"{result['env']}: {result['num_envs']} environments, {result['length']}", fontsize=9)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
