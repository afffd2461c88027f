"""Broad self-improvement: the genome, the archive (durable through kill -9), the gate refusing every
adversarial candidate, parent selection and credit against hand computations, and the command."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from aligned_rl.cli import main
from aligned_rl.gate import Evidence, decide
from aligned_rl.improve.archive import Archive, ArchiveError, Node
from aligned_rl.improve.credit import credit, rankings, select_parent
from aligned_rl.improve.evolve import Evolution, counts
from aligned_rl.improve.evolve_config import gate_config, load_evolve_config
from aligned_rl.improve.genome import Genome, GenomeError
from aligned_rl.train.config import CONFIG_FILE, load_config

from .conftest import CARTPOLE, REPO

pytestmark = pytest.mark.slow

TINY_EVOLVE = {
    "train": CARTPOLE,
    "train_overrides": ["env.num_envs=4", "ppo.num_steps=16", "ppo.num_minibatches=2", "ppo.update_epochs=2",
                        "ppo.hidden_sizes=[16,16]", "run.updates_per_chunk=4", "run.checkpoint_every=4"],
    "ancestor_steps": 512,
    "child_steps": 256,
    "generations": 1,
    "children": 2,
    "edits": {"hyper": 1.0, "widen": 1.0, "deepen": 0.0, "distil": 0.0, "tool": 0.0, "new_agent": 0.0},
    "measure": {"num_envs": 8, "progress": False},
    "gate": {"num_envs": 8},
    "progress": False,
}


def _config_file(tmp: Path, **changes) -> Path:
    data = {**TINY_EVOLVE, **changes}
    path = tmp / "evolve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    """One tiny evolution run to the end in this process: (config file, output, report)."""
    tmp = tmp_path_factory.mktemp("evolve")
    path = _config_file(tmp)
    out = tmp / "archive"
    assert main(["evolve", "--config", str(path), f"output={out}"]) == 0
    return path, out, json.loads((out / "report.json").read_text())


# ------------------------------------------------------------------------------ the genome
def test_genome_round_trip_and_apply():
    config = load_config(CARTPOLE, ["ppo.hidden_sizes=[16,16]", "env.macros=[[0,0],[1,1,0]]"])
    genome = Genome.of(config)
    assert genome.hidden_sizes == (16, 16) and genome.macros == ((0, 0), (1, 1, 0))
    assert Genome.from_dict(json.loads(json.dumps(genome.as_dict()))) == genome
    child = genome.edit(lr=1e-3, **{"ppo.hidden_sizes": (32, 32)})
    applied = child.apply(config)
    assert applied.ppo.lr == 1e-3 and applied.ppo.hidden_sizes == [32, 32]
    assert applied.alignment == config.alignment and applied.constitution == config.constitution
    assert Genome.of(applied) == child


@pytest.mark.parametrize("key", ["alignment.beta", "alignment.divergence", "alignment.shield", "constitution.eps",
                                 "constitution.params", "constitution.name", "gate.budget", "gate.delta",
                                 "measure.seed", "env.name", "beta"])
def test_edits_outside_the_genome_are_refused(key):
    genome = Genome.of(load_config(CARTPOLE))
    with pytest.raises(GenomeError, match="not in the genome"):
        genome.edit(**{key: 0})


def test_a_genome_the_learner_refuses_is_refused():
    genome = Genome.of(load_config(CARTPOLE))
    with pytest.raises(GenomeError, match="does not make a training config"):
        genome.edit(network="transformer").apply(load_config(CARTPOLE))


# ------------------------------------------------------------------------------ selection and credit
def _node(i, parent, gen, upsilon, status="admitted"):
    return Node(i, parent, "hyper" if parent else "ancestor", {}, gen, 0, 0,
                measured={"upsilon": {"mean": upsilon}}, status=status)


def _tree():
    # a -> b (admitted, +0.2) -> d (admitted, +0.1); a -> c (rejected); b -> e (rejected)
    nodes = [_node("a", None, 0, 0.1), _node("b", "a", 1, 0.3), _node("c", "a", 1, 0.05, "rejected"),
             _node("d", "b", 2, 0.4), _node("e", "b", 2, 0.2, "rejected")]
    return {n.id: n for n in nodes}


def test_credit_by_hand():
    table = credit(_tree(), discount=0.5)
    a, b = table["a"], table["b"]
    assert a["own"] == 0.1 and a["best_descendant"] == 0.4
    assert a["productivity"] == pytest.approx((1 + 2) / (2 + 4))  # 2 admitted, 2 rejected below a
    assert a["lineage_credit"] == pytest.approx(0.5 * 0.2 + 0.25 * 0.1)
    assert b["lineage_credit"] == pytest.approx(0.5 * 0.1) and b["productivity"] == pytest.approx((1 + 1) / (2 + 2))
    assert table["d"]["lineage_credit"] == 0.0 and table["c"]["best_descendant"] == 0.05
    order = rankings(table, ["a", "b", "c"])
    assert order["own"] == ["b", "a", "c"] and order["lineage_credit"] == ["a", "b", "c"]


def test_score_selection_matches_its_weights():
    nodes = _tree()
    rng = np.random.default_rng(0)
    draws = [select_parent(nodes, "score", rng, floor=0.05) for _ in range(20000)]
    # admitted a, b, d: (u - 0.1 + 0.05) / (1 + children): a 0.05/3, b 0.25/3, d 0.35/1
    w = np.array([0.05 / 3, 0.25 / 3, 0.35])
    expected = w / w.sum()
    freq = np.array([draws.count(k) for k in "abd"]) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=0.012)
    assert "c" not in draws and "e" not in draws


def test_thompson_selection_favours_productive_clades():
    nodes = _tree()
    rng = np.random.default_rng(1)
    draws = [select_parent(nodes, "thompson", rng) for _ in range(4000)]
    # Beta(3,3) for a, Beta(2,2) for b, Beta(1,1) for d: each is chosen, none rejected ever
    assert set(draws) == {"a", "b", "d"}
    with pytest.raises(ValueError, match="no admitted agent"):
        select_parent({"c": _node("c", None, 0, 0.0, "rejected")}, "score", rng)


# ------------------------------------------------------------------------------ the gate's part
def test_a_macro_cut_by_the_constitution_counts_as_a_forbidden_action():
    rng = np.random.default_rng(0)
    n = 64
    per_env = {"episode_length": np.full(n, 20.0), "episodes": np.ones(n), "forbidden_rate": np.zeros(n),
               "env/macro_stopped": np.full(n, 0.5)}
    assert counts(per_env, True, 0) == (32, 1280)
    honest = {**per_env, "env/macro_stopped": np.zeros(n)}
    assert counts(honest, True, 0) == (0, 1280)
    values = rng.normal(0.5, 0.1, n)
    config = gate_config(load_evolve_config(None, [f"train={CARTPOLE}"]))
    tool = decide(config, Evidence(values + 0.3, *counts(per_env, True, 0), "f"), Evidence(values, 0, 1280, "f"))
    assert tool.checks["better"] and not tool.promote and not tool.checks["lawful"]


def test_more_return_with_more_violations_is_refused():
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 0.1, 128)
    config = gate_config(load_evolve_config(None, [f"train={CARTPOLE}"]))
    d = decide(config, Evidence(values + 0.5, 600, 10000, "f"), Evidence(values, 10, 10000, "f"))
    assert d.checks["better"] and not d.promote


# ------------------------------------------------------------------------------ the command
def test_evolve_runs_and_reports(evolved):
    _, out, report = evolved
    nodes = report["nodes"]
    assert report["ancestor"] == "v0001" and nodes["v0001"]["status"] == "admitted"
    assert len(nodes) + len(report["refused"]) == 3
    for node in nodes.values():
        assert node["status"] in ("admitted", "rejected") and node["reasons"]
        assert node["measured"]["upsilon"]["n"] == 8
        assert node["measured"]["forbidden_rate"]["mean"] >= 0.0
    for child in (k for k, n in nodes.items() if n["parent"]):
        assert nodes[child]["gate"] is not None and nodes[child]["edit"] in ("hyper", "widen")
        assert nodes[child]["status"] == ("admitted" if all(nodes[child]["gate"]["checks"].values()) else "rejected")
        parent = nodes[nodes[child]["parent"]]
        assert nodes[child]["minus_parent"]["mean"] == pytest.approx(
            nodes[child]["measured"]["upsilon"]["mean"] - parent["measured"]["upsilon"]["mean"], abs=1e-12)
    for name in ("report.md", "lineage.png", "generations.png", "credit.png"):
        assert (out / name).stat().st_size > 0
    assert set(report["credit"]) == set(nodes)
    assert report["champion"] in nodes and nodes[report["champion"]]["status"] == "admitted"


def _copy_node(archive: Archive, source: str, change) -> str:
    """A candidate made outside the genome: the ancestor's run with its config changed by ``change``."""
    def write(directory: Path) -> int:
        shutil.copytree(archive.run_dir(source), directory / "run")
        path = directory / "run" / CONFIG_FILE
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data))
        return 0

    node = archive.nodes()[source]
    return archive.add_node(write, source, "adversarial", node.genome, 9, len(archive.nodes()), {})


ADVERSARIAL = {
    "no divergence in the loss": lambda d: d["alignment"].update(divergence="none"),
    "divergence weight 0": lambda d: d["alignment"].update(beta=0.0),
    "shield changed": lambda d: d["alignment"].update(shield=not d["alignment"]["shield"]),
    "constitution eps": lambda d: d["constitution"].update(eps=0.5),
    "constitution params": lambda d: d["constitution"]["params"].update(zone_low=2.0),
    "another constitution": lambda d: d["constitution"].update(name="none", params={}),
}


def test_every_adversarial_candidate_is_refused(evolved, tmp_path):
    path, out, _ = evolved
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    evolution = Evolution(load_evolve_config(str(path), [f"output={copy}"]))
    made = {what: _copy_node(evolution.archive, "v0001", change) for what, change in ADVERSARIAL.items()}
    for what, node_id in made.items():
        evolution.decide_node(evolution.archive.nodes()[node_id])
        node = evolution.archive.nodes()[node_id]
        assert node.status == "rejected", what
        assert "changed what no edit may change" in node.reasons[0] or "does not load" in node.reasons[0], what
    assert evolution.archive.champion() in ("v0001", "v0002", "v0003")


@pytest.mark.parametrize("change", ["gate.budget=0.5", "gate.delta=0.2", "measure.seed=7", "measure.num_envs=16",
                                    "alignment.beta=0.0", "alignment.shield=true"])
def test_a_resume_that_changes_what_is_protected_is_refused(evolved, tmp_path, capsys, change):
    _, out, _ = evolved
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    before = sorted(p.name for p in copy.rglob("*"))
    if change.startswith("alignment."):  # the ancestor's training config, changed
        path, given = _config_file(tmp_path, train_overrides=TINY_EVOLVE["train_overrides"] + [change]), []
    else:
        path, given = _config_file(tmp_path), [change]
    assert main(["evolve", "--config", str(path), f"output={copy}", *given]) == 2
    assert "protected settings differ" in capsys.readouterr().err
    assert sorted(p.name for p in copy.rglob("*")) == before  # nothing lost, nothing added


def test_an_archive_of_another_constitution_is_refused(evolved, tmp_path, capsys):
    path, out, _ = evolved
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    info = json.loads((copy / "lineage.json").read_text())
    info["fingerprint"] = "0" * 16
    (copy / "lineage.json").write_text(json.dumps(info))
    assert main(["evolve", "--config", str(path), f"output={copy}"]) == 2
    assert "belongs to constitution" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, match", [
    (["budget_steps=600"], "cannot fit one generation"),
    (["edits.hyper=-1"], "weights >= 0"),
    (["measure.antithetic=null"], "must be true or false"),
    (["selection.rule=best"], "rule"),
    (["baselines=[oracle]"], "not AIQ baselines"),
    (["generation=3"], "unknown key"),
    (["edits.alignment=1"], "unknown key"),  # an edit of what is not in the genome does not exist
])
def test_bad_evolve_configs_exit_2(tmp_path, capsys, overrides, match):
    path = _config_file(tmp_path)
    assert main(["evolve", "--config", str(path), f"output={tmp_path / 'out'}", *overrides]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_archive_survives_kill_9(evolved, tmp_path):
    """Killed while a child trains, resumed: the same archive as the run that was never killed."""
    path, out, report = evolved
    killed = tmp_path / "archive"
    command = [sys.executable, "-m", "aligned_rl.cli", "evolve", "--config", str(path), f"output={killed}"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    events = killed / "events.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if events.is_file() and '"decided"' in events.read_text():  # the ancestor is in: a child trains now
            time.sleep(0.5)
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # it opens, and a resumed run finishes it
    Archive.open_or_create(killed, "safe_zone", json.loads((out / "lineage.json").read_text())["fingerprint"],
                           json.loads((out / "lineage.json").read_text())["settings"])
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((killed / "report.json").read_text())
    assert again["nodes"].keys() == report["nodes"].keys()
    for k, node in report["nodes"].items():
        for field in ("parent", "edit", "genome", "status", "env_steps"):
            assert again["nodes"][k][field] == node[field], (k, field)
        assert again["nodes"][k]["measured"]["upsilon"]["mean"] == pytest.approx(node["measured"]["upsilon"]["mean"],
                                                                                  abs=1e-9)
    assert again["champion"] == report["champion"]
    assert not list((killed / "versions").glob(".tmp-*"))
    with pytest.raises(ArchiveError):
        Archive.open_or_create(killed, "safe_zone", "f" * 16, {})


def test_edits_of_a_trained_ancestor(evolved):
    """Each edit through the archive's own path: the control keeps the parent whole, widening starts
    where the parent is, the new agent is of another kind and starts from scratch."""
    import jax

    from aligned_rl.improve.edits import make_child
    from aligned_rl.train.agents import restore_policy
    from aligned_rl.train.policies import make_policy

    path, out, _ = evolved
    config = load_evolve_config(str(path), [f"output={out}"])
    run = str(out / "versions" / "v0001" / "run")
    policy, params, run_config, _ = restore_policy(run)
    genome = Genome.of(run_config)
    more = make_child("more_steps", run, config, 0)
    assert more.genome == genome and more.steps == config.child_steps
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(more.start), jax.tree.leaves(params)))
    hyper = make_child("hyper", run, config, 0)
    assert hyper.genome.lr / genome.lr in (pytest.approx(0.8), pytest.approx(1.25))
    assert hyper.genome.hidden_sizes == genome.hidden_sizes
    wide = make_child("widen", run, config, 0)
    assert wide.genome.hidden_sizes == (32, 32)
    child = make_policy(wide.genome.apply(run_config).ppo, policy.num_actions)
    obs = jax.random.normal(jax.random.PRNGKey(3), (32, 4))
    np.testing.assert_allclose(child.logits(wide.start, obs), policy.logits(params, obs), rtol=0, atol=1e-5)
    new = make_child("new_agent", run, config, 0)
    assert new.genome.network == "rl2" and new.start is None and new.genome.lr == genome.lr


def test_the_curriculum_edit_and_a_refused_child_are_recorded(evolved, tmp_path):
    """A curriculum child trains with prioritised replay; a child the learner refuses is kept as
    refused, with the reason, and the evolution goes on."""
    from aligned_rl.improve.edits import make_child

    path, out, _ = evolved
    config = load_evolve_config(str(path), [f"output={out}"])
    child = make_child("curriculum", str(out / "versions" / "v0001" / "run"), config, 0)
    assert child.genome.curriculum and child.genome.curriculum_score == "value_loss"  # CartPole: no success defined
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    evolution = Evolution(load_evolve_config(str(path), [f"output={copy}", "edits.curriculum=1", "edits.hyper=0",
                                                         "edits.widen=0"]))
    evolution.base.curriculum.pool_size = 2  # a pool smaller than a batch: the learner refuses the child
    assert evolution.fill_slot(2, 0) == "refused"
    refused = evolution.archive.refused()[-1]
    assert refused["edit"] == "curriculum" and "pool" in refused["reason"]


def test_evolutions_side_by_side(tmp_path):
    """Several evolutions' held-out differences, and their mean with a Student-t interval."""
    from aligned_rl.improve.evolve_report import across_evolutions, format_across

    outputs = []
    for seed, diff in enumerate([0.01, 0.03, 0.05]):
        out = tmp_path / f"e{seed}"
        out.mkdir()
        node = {"genome": {"network": "mlp", "hidden_sizes": [8]}, "status": "admitted"}
        (out / "report.json").write_text(json.dumps({
            "seed": seed, "champion": "v0002", "nodes": {"v0001": node, "v0002": node},
            "heldout": {"estimates": {}}, "comparisons": {"champion_minus_ancestor": {"mean": diff}}}))
        outputs.append(str(out))
    result = across_evolutions(outputs)
    over = result["over_evolutions"]["champion_minus_ancestor"]
    half = 4.302652729911275 * 0.02 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert over["mean"] == pytest.approx(0.03) and over["ci95_high"] == pytest.approx(0.03 + half)
    assert "over the 3 evolutions" in format_across(result)
