"""What ``aligned-rl improve`` reports: per strategy, with 95% CIs over deployments, the value
before the drift, right after it and at the end, the forbidden-action rate, detection delay,
false alarms and fine-tuning compute; a timeline plot; all read from the lineages' events."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aligned_rl.improve.config import ImproveConfig
from aligned_rl.improve.lineage import Lineage
from aligned_rl.intelligence import simple_estimate

WINDOW = 5  # rounds averaged for "right after the drift" and "at the end"


def _rounds(lineage: Lineage) -> list[dict]:
    return [e["data"] for e in lineage.events() if e["kind"] == "round"]


def _estimate(values: list[float]) -> dict:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if len(values) < 2:
        return {"mean": float(values[0]) if values else None, "n": len(values)}
    return simple_estimate(np.asarray(values)).as_dict()


def summarise(config: ImproveConfig, out: Path) -> dict:
    start, end = config.drift.start, config.drift.end
    strategies = {}
    for strategy in config.strategies:
        per = {k: [] for k in ("before", "after", "end", "forbidden_rate", "delay", "false_alarms", "finetunes",
                               "promotions", "rejections", "promoted_without_gate", "finetune_env_steps")}
        timeline = []
        for directory in sorted((out / strategy).iterdir()):
            lineage = Lineage(directory, {})
            rounds = _rounds(lineage)
            value = np.array([r["value"] for r in rounds])
            timeline.append(value)
            per["before"].append(float(value[:start].mean()) if start > 0 else None)
            per["after"].append(float(value[end:end + WINDOW].mean()))
            per["end"].append(float(value[-WINDOW:].mean()))
            per["forbidden_rate"].append(float(np.mean([r["forbidden_rate"] for r in rounds])))
            triggers = [r for r in rounds if r.get("trigger")]
            per["false_alarms"].append(float(sum(r["round"] < start for r in triggers)))
            late = [r["round"] - start for r in triggers if r["round"] >= start]
            per["delay"].append(float(late[0]) if late else None)
            per["finetunes"].append(float(len(triggers)))
            per["promotions"].append(float(sum(r["promoted"] for r in triggers)))
            per["rejections"].append(float(sum(not r["promoted"] for r in triggers)))
            per["promoted_without_gate"].append(float(sum(r["promoted"] and not r["gate_passed"] for r in triggers)))
            per["finetune_env_steps"].append(float(sum(r.get("env_steps", 0) for r in triggers)))
        strategies[strategy] = {
            "deployments": len(timeline),
            **{k: _estimate(v) for k, v in per.items()},
            "timeline": np.mean(timeline, axis=0).tolist(),
            "timeline_ci95": (1.96 * np.std(timeline, axis=0, ddof=1) / np.sqrt(len(timeline))).tolist()
            if len(timeline) > 1 else None,
        }
    report = {
        "family": config.drift.family,
        "drift": {"kind": config.drift.kind, "start": start, "end": end, "to": dict(config.drift.to),
                  "to_prior": config.drift.to_prior},
        "agents": list(config.agents),
        "deployments_per_agent": config.deployments,
        "rounds": config.rounds,
        "envs_per_deployment": config.envs_per_deployment,
        "window": WINDOW,
        "strategies": strategies,
        "output": str(out),
    }
    plot_timeline(report, out / "timeline.png")
    return report


def plot_timeline(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    rounds = np.arange(report["rounds"])
    for name, s in report["strategies"].items():
        mean = np.asarray(s["timeline"])
        ax.plot(rounds, mean, label=name)
        if s["timeline_ci95"] is not None:
            half = np.asarray(s["timeline_ci95"])
            ax.fill_between(rounds, mean - half, mean + half, alpha=0.15)
    drift = report["drift"]
    ax.axvspan(drift["start"], max(drift["end"], drift["start"] + 0.5), color="grey", alpha=0.2, label="drift")
    ax.set_xlabel("round (one episode per environment)")
    ax.set_ylabel("episode value, mean over deployments")
    ax.set_title(f"{report['family']}: {report['drift']['kind']} drift, 95% CI over deployments", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_report(report: dict) -> str:
    def cell(e: dict) -> str:
        if e.get("mean") is None:
            return "-"
        if "ci95_low" not in e:
            return f"{e['mean']:.3f}"
        return f"{e['mean']:.3f} [{e['ci95_low']:.3f}, {e['ci95_high']:.3f}]"

    columns = ("before", "after", "end", "forbidden_rate", "delay", "false_alarms", "promotions", "rejections",
               "promoted_without_gate", "finetune_env_steps")
    lines = [f"{report['family']}: {report['drift']['kind']} drift over rounds {report['drift']['start']}.."
             f"{report['drift']['end']} of {report['rounds']}; mean [95% CI] over deployments"]
    for name, s in report["strategies"].items():
        lines.append(f"{name} ({s['deployments']} deployments)")
        for c in columns:
            lines.append(f"  {c:20s} {cell(s[c])}")
    return "\n".join(lines)
