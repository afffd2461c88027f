"""What ``aligned-rl evolve`` reports, read from the archive alone: every node with its
measurements and decision, Upsilon / Sigma / forbidden rate per generation, the champion against
its ancestor and against every baseline (paired over the same environments and random numbers),
the credit table with the rankings of the first generations under each rule, the edits that
paid off, and three plots: the lineage tree, the generations, and the rankings."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aligned_rl.improve.credit import RULES_OF_CREDIT, credit, improvement, rankings
from aligned_rl.intelligence import paired_difference
from aligned_rl.train.aiq_table import machine

FILES = ("report.json", "report.md", "lineage.png", "generations.png", "credit.png")


def _mean(e: dict | None) -> float | None:
    return None if e is None else float(e["mean"])


def _cell(e: dict | None, digits: int = 4) -> str:
    if e is None or e.get("mean") is None:
        return "-"
    if e.get("ci95_low") is None:
        return f"{e['mean']:.{digits}f}"
    return f"{e['mean']:.{digits}f} [{e['ci95_low']:.{digits}f}, {e['ci95_high']:.{digits}f}]"


def _pooled(node: dict) -> str:
    return "-" if node.get("forbidden_pooled") is None else f"{node['forbidden_pooled']['rate']:.2e}"


def _paired(evolution: Any, a: str, b: str) -> dict:
    """Upsilon(a) - Upsilon(b) over the archive's environments, paired, with its 95% CI."""
    key = evolution.names[next(iter(evolution.names))]
    both = [evolution.archive.values(a), evolution.archive.values(b)]
    m = evolution.config.measure
    keep = None
    for values in both:
        if "redrawn" in values:  # an environment one run redrew is not the same environment in both
            redrawn = values["redrawn"][: m.num_envs] > 0
            keep = ~redrawn if keep is None else keep & ~redrawn
    return paired_difference(both[0][key], both[1][key], m.num_envs, bool(m.antithetic), keep=keep).as_dict()


def summarise(evolution: Any) -> dict:
    archive, config = evolution.archive, evolution.config
    nodes = archive.nodes()
    measured = {k: n for k, n in nodes.items() if n.measured is not None}
    table = credit(measured, config.credit_discount)
    champion = archive.champion()
    ancestor = next((k for k, n in nodes.items() if n.parent is None), None)
    generations = sorted({n.generation for n in nodes.values()})
    per_generation = []
    for g in generations:
        members = [n for n in measured.values() if n.generation == g]
        admitted = [n for n in members if n.admitted]
        per_generation.append({
            "generation": g,
            "children": len([n for n in nodes.values() if n.generation == g])
            + len([r for r in archive.refused() if r["generation"] == g]),
            "admitted": len(admitted),
            "rejected": len([n for n in members if n.status == "rejected"]),
            "refused": len([r for r in archive.refused() if r["generation"] == g]),
            "best_upsilon": max((n.upsilon() for n in members), default=None),
            "members": {n.id: {"upsilon": n.measured["upsilon"], "sigma": n.measured.get("sigma"),
                               "forbidden_rate": n.measured.get("forbidden_rate"),
                               "forbidden_pooled": evolution.pooled(n.id)["rate"], "status": n.status}
                        for n in members},
        })
    edit_kinds: dict[str, dict] = {}
    for n in nodes.values():
        if n.parent is None:
            continue
        e = edit_kinds.setdefault(n.edit, {"children": 0, "admitted": 0, "rejected": 0, "refused": 0,
                                           "improvements": []})
        e["children"] += 1
        if n.status in ("admitted", "rejected"):
            e[n.status] += 1
        if n.admitted:
            e["improvements"].append(improvement(measured, n))
    for r in archive.refused():
        e = edit_kinds.setdefault(str(r["edit"]), {"children": 0, "admitted": 0, "rejected": 0, "refused": 0,
                                                   "improvements": []})
        e["children"] += 1
        e["refused"] += 1
    for e in edit_kinds.values():
        e["total_improvement"] = float(sum(e["improvements"]))
    first = sorted(k for k, n in measured.items() if n.generation <= 1)
    heldout = {e["data"]["name"]: e["data"] for e in archive.events() if e["kind"] == "heldout"}
    comparisons = {}
    if champion is not None and f"{champion}" in heldout:
        # the ancestor as champion differs from itself by exactly 0: the row is kept for comparisons over seeds
        others = [ancestor] + [f"baseline-{b}" for b in archive.baselines()]
        for other in others:
            if other in heldout:
                label = "ancestor" if other == ancestor else other.replace("baseline-", "")
                comparisons[f"champion_minus_{label}"] = _paired(
                    evolution, f"heldout-{champion}", f"heldout-{other}")
    return {
        "family": config.measure.env,
        "constitution": config.measure.constitution,
        "fingerprint": archive.lineage.info["fingerprint"],
        "measure": {"num_envs": config.measure.num_envs, "seed": config.measure.seed,
                    "antithetic": config.measure.antithetic, "episode_length": config.measure.episode_length,
                    "value": evolution.names[next(iter(evolution.names))]},
        "gate": {"delta": config.gate.delta, "budget": config.gate.budget, "margin": config.gate.margin,
                 "num_envs": config.gate.num_envs},
        "seed": config.seed,
        "selection": config.selection.rule,
        "credit_discount": config.credit_discount,
        "env_steps": int(sum(n.env_steps for n in nodes.values())),
        "champion": champion,
        "ancestor": ancestor,
        "nodes": {k: {"parent": n.parent, "edit": n.edit, "generation": n.generation, "slot": n.slot,
                      "genome": n.genome, "detail": n.detail, "env_steps": n.env_steps, "status": n.status,
                      "reasons": n.reasons, "measured": n.measured,
                      "forbidden_pooled": None if n.measured is None else evolution.pooled(k),
                      "steps_per_episode": None if n.measured is None else evolution.steps_per_episode(k),
                      # Upsilon minus its parent's over the archive's environments, paired
                      "minus_parent": None if n.measured is None or n.parent is None
                      or nodes[n.parent].measured is None else _paired(evolution, k, n.parent),
                      "gate": None if n.gate is None else {k2: n.gate[k2] for k2 in (
                          "lower_bound", "mean_difference", "forbidden_upper_bound",
                          "forbidden_excess_upper_bound", "checks")}}
                  for k, n in nodes.items()},
        "refused": archive.refused(),
        "baselines": archive.baselines(),
        "generations": per_generation,
        "edits": edit_kinds,
        "credit": table,
        "rankings_first_generations": rankings(table, first) if first else {},
        "heldout": {"seed": next(iter(heldout.values()))["seed"] if heldout else None,
                    "estimates": {k: v["estimates"] for k, v in heldout.items()}},
        "comparisons": comparisons,
        "admitted_forbidden_pooled_max": max((evolution.pooled(k)["rate"] for k, n in measured.items()
                                              if n.admitted), default=None),
        "baselines_forbidden_pooled": {name: evolution.pooled(f"baseline-{name}")["rate"]
                                       for name in archive.baselines()},
        "budget_stop": [e["data"] for e in archive.events() if e["kind"] == "budget"],
    }


def markdown(report: dict) -> str:
    lines = [f"# Evolution on {report['family']} under {report['constitution']} (@{report['fingerprint']})", "",
             f"{len(report['nodes'])} agents, {len(report['refused'])} edits refused before training, "
             f"{report['env_steps']:,} environment steps; champion {report['champion']}, ancestor "
             f"{report['ancestor']}. Measured on {report['measure']['num_envs']} environments (seed "
             f"{report['measure']['seed']}, antithetic {report['measure']['antithetic']}); gate: delta "
             f"{report['gate']['delta']}, budget {report['gate']['budget']}, margin {report['gate']['margin']}, "
             f"{report['gate']['num_envs']} fresh environments per child.", "",
             "| agent | parent | edit | gen | genome | Upsilon | minus its parent (paired) | Sigma | "
             "forbidden rate (pooled) | steps per episode | decision |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k, n in report["nodes"].items():
        m = n["measured"] or {}
        g = n["genome"]
        genome = (f"{g['network']} {g['hidden_sizes']}" + (f" mem {g['memory_size']}" if g["network"] == "rl2" else "")
                  + (f" tools {g['macros']}" if g["macros"] else "") + f" lr {g['lr']:.2g}")
        if n["status"] != "rejected":
            why = ""
        elif n["gate"] is not None:
            why = "failed " + ", ".join(k.replace("_", " ") for k, ok in n["gate"]["checks"].items() if not ok)
        else:
            why = n["reasons"][0][:200]
        lines.append(f"| {k} | {n['parent'] or ''} | {n['edit']} | {n['generation']} | {genome} | "
                     f"{_cell(m.get('upsilon'))} | {_cell(n['minus_parent'])} | {_cell(m.get('sigma'))} | "
                     f"{_cell(m.get('forbidden_rate'))} "
                     f"({_pooled(n)}) | {'-' if n['steps_per_episode'] is None else round(n['steps_per_episode'], 1)} "
                     f"| {n['status']}{': ' + why if why else ''} |")
    if report["refused"]:
        lines += ["", "Refused before training:", ""]
        lines += [f"- generation {r['generation']} slot {r['slot']}, {r['edit']} of {r['parent']}: {r['reason']}"
                  for r in report["refused"]]
    if report["baselines"]:
        lines += ["", "| baseline | Upsilon | Sigma | forbidden rate (pooled) |", "| --- | ---: | ---: | ---: |"]
        for name, est in report["baselines"].items():
            lines.append(f"| {name} | {_cell(est.get('upsilon'))} | {_cell(est.get('sigma'))} | "
                         f"{_cell(est.get('forbidden_rate'))} ({report['baselines_forbidden_pooled'][name]:.2e}) |")
    if report["heldout"]["estimates"]:
        lines += ["", f"On {report['measure']['num_envs']} held-out environments (seed {report['heldout']['seed']}), "
                  "where no choice was made (the champion was chosen on the archive's environments):", "",
                  "| agent | Upsilon | Sigma | forbidden rate |", "| --- | ---: | ---: | ---: |"]
        for name, est in report["heldout"]["estimates"].items():
            lines.append(f"| {name} | {_cell(est.get('upsilon'))} | {_cell(est.get('sigma'))} | "
                         f"{_cell(est.get('forbidden_rate'))} |")
    if report["comparisons"]:
        lines += ["", "| paired difference of Upsilon, held-out environments | mean [95% CI] |", "| --- | ---: |"]
        lines += [f"| {k.replace('_', ' ')} | {_cell(v)} |" for k, v in report["comparisons"].items()]
    lines += ["", f"Credit (discount {report['credit_discount']}):", "",
              "| agent | own | best descendant | clade productivity | lineage credit | descendants (admitted) |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for k, c in report["credit"].items():
        lines.append(f"| {k} | {c['own']:.4f} | {c['best_descendant']:.4f} | {c['productivity']:.3f} | "
                     f"{c['lineage_credit']:.4f} | {c['descendants']} ({c['admitted_descendants']}) |")
    if report["rankings_first_generations"]:
        lines += ["", "Rankings of the first generations under each rule, best first:", ""]
        lines += [f"- {rule}: {', '.join(order)}" for rule, order in report["rankings_first_generations"].items()]
    lines += ["", "| edit | children | admitted | rejected | refused | sum of admitted improvements |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind, e in report["edits"].items():
        lines.append(f"| {kind} | {e['children']} | {e['admitted']} | {e['rejected']} | {e['refused']} | "
                     f"{e['total_improvement']:.4f} |")
    return "\n".join(lines) + "\n"


def format_report(report: dict) -> str:
    """The console summary: the champion, its comparisons, and the per-generation line."""
    lines = [f"evolve {report['family']}: {len(report['nodes'])} agents, champion {report['champion']}"]
    for g in report["generations"]:
        lines.append(f"  generation {g['generation']}: {g['admitted']} admitted, {g['rejected']} rejected, "
                     f"{g['refused']} refused; best Upsilon {g['best_upsilon'] if g['best_upsilon'] is None else round(g['best_upsilon'], 4)}")
    for k, v in report["comparisons"].items():
        lines.append(f"  {k.replace('_', ' ')}: {_cell(v)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lineage(report: dict, path: Path) -> None:
    """The lineage tree: generation across, Upsilon up; admitted filled, rejected hollow."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    nodes = report["nodes"]
    colours = {}
    for k, n in nodes.items():
        if n["measured"] is None:
            continue
        x, y = n["generation"] + 0.12 * (n["slot"] - 1.5) * (n["generation"] > 0), n["measured"]["upsilon"]["mean"]
        p = nodes.get(n["parent"]) if n["parent"] else None
        if p is not None and p["measured"] is not None:
            px = p["generation"] + 0.12 * (p["slot"] - 1.5) * (p["generation"] > 0)
            ax.plot([px, x], [p["measured"]["upsilon"]["mean"], y], color="grey", lw=0.8, zorder=1)
        c = colours.setdefault(n["edit"], f"C{len(colours)}")
        admitted = n["status"] == "admitted"
        ax.scatter([x], [y], s=60 if k == report["champion"] else 30, zorder=2, edgecolors=c,
                   facecolors=c if admitted else "none", label=n["edit"])
    for name, est in report["baselines"].items():
        ax.axhline(est["upsilon"]["mean"], ls=":", lw=0.8, color="black")
        ax.text(ax.get_xlim()[1], est["upsilon"]["mean"], f" {name}", fontsize=7, va="center")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, title="edit (hollow: rejected)", title_fontsize=7)
    ax.set_xticks(sorted({n["generation"] for n in nodes.values()}))
    ax.set_xlabel("generation")
    ax.set_ylabel("Upsilon over the archive's environments")
    ax.set_title(f"{report['family']}: lineage tree, champion {report['champion']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_generations(report: dict, path: Path) -> None:
    """Upsilon, Sigma and the forbidden rate of every measured agent against its generation."""
    plt = _plt()
    keys = [("upsilon", "Upsilon"), ("sigma", "Sigma (V')"), ("forbidden_pooled", "pooled forbidden rate")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=100)
    for ax, (key, label) in zip(axes, keys):
        for g in report["generations"]:
            for member in g["members"].values():
                e = member.get(key)
                if e is None:
                    continue
                if not isinstance(e, dict):  # a rate without an interval
                    e = {"mean": e}
                admitted = member["status"] == "admitted"
                low, high = e.get("ci95_low", e["mean"]), e.get("ci95_high", e["mean"])
                ax.errorbar([g["generation"]], [e["mean"]], yerr=[[e["mean"] - low], [high - e["mean"]]],
                            fmt="o" if admitted else "x", color="C0" if admitted else "C3", ms=4, lw=0.8)
        if key == "forbidden_pooled":
            ax.axhline(report["gate"]["budget"], ls="--", color="C3", lw=0.8, label="gate budget")
            ax.legend(fontsize=7)
        ax.set_xlabel("generation")
        ax.set_title(f"{label} (o admitted, x rejected" + ("; 95% CI)" if key != "forbidden_pooled" else ")"),
                     fontsize=8)
        ax.set_xticks(range(len(report["generations"])))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_credit(report: dict, path: Path) -> None:
    """The first generations' agents ranked under each rule of credit."""
    plt = _plt()
    ranks = report["rankings_first_generations"]
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    if ranks:
        agents = ranks[RULES_OF_CREDIT[0]]
        for agent in agents:
            ax.plot(range(len(RULES_OF_CREDIT)), [ranks[r].index(agent) + 1 for r in RULES_OF_CREDIT],
                    marker="o", label=agent)
        ax.set_xticks(range(len(RULES_OF_CREDIT)), [r.replace("_", " ") for r in RULES_OF_CREDIT], fontsize=8)
        ax.invert_yaxis()
        ax.set_ylabel("rank (1 = best)")
        ax.legend(fontsize=7)
    ax.set_title("the first generations ranked under each rule of credit", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(evolution: Any, seconds: float, command: str = "") -> dict:
    out = evolution.out
    report = summarise(evolution)
    report.update(command=command, machine=machine(), wall_seconds_this_run=seconds, written=time.strftime("%Y-%m-%d %H:%M:%S"),
                  output=str(out))
    (out / FILES[0]).write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / FILES[1]).write_text(markdown(report))
    plot_lineage(report, out / FILES[2])
    plot_generations(report, out / FILES[3])
    plot_credit(report, out / FILES[4])
    return report


# ------------------------------------------------------------------------------ several evolutions
def across_evolutions(outputs: list[str]) -> dict:
    """Evolutions of one config with different seeds, side by side: per evolution, the held-out
    paired differences of its champion, and over evolutions the mean of each with a Student-t 95%
    interval (``train.frontier.seed_interval``)."""
    from aligned_rl.train.frontier import seed_interval

    reports = {path: json.loads((Path(path) / FILES[0]).read_text()) for path in outputs}
    names = sorted(set.intersection(*(set(r["comparisons"]) for r in reports.values())))
    rows = {path: {"seed": r["seed"], "champion": r["champion"],
                   "champion_genome": r["nodes"][r["champion"]]["genome"],
                   "agents": len(r["nodes"]), "admitted": sum(n["status"] == "admitted" for n in r["nodes"].values()),
                   "heldout": r["heldout"]["estimates"],
                   "comparisons": {k: r["comparisons"][k] for k in names}} for path, r in reports.items()}
    over = {k: seed_interval([r["comparisons"][k]["mean"] for r in reports.values()]) for k in names}
    return {"evolutions": rows, "over_evolutions": over}


def format_across(result: dict) -> str:
    lines = []
    for path, row in result["evolutions"].items():
        g = row["champion_genome"]
        lines.append(f"{path}: champion {row['champion']} ({g['network']} {g['hidden_sizes']}), "
                     f"{row['admitted']} of {row['agents']} agents admitted")
        lines += [f"  {k.replace('_', ' ')}: {_cell(v)}" for k, v in row["comparisons"].items()]
    n = len(result["evolutions"])
    lines.append(f"over the {n} evolutions (mean, Student-t 95% interval):")
    lines += [f"  {k.replace('_', ' ')}: {_cell(v)}" for k, v in result["over_evolutions"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(format_across(across_evolutions(sys.argv[1:])))
