"""aligned-rl improve: deployments under a drift with a monitor, fine-tuning, the gate and the
lineage; a tampered candidate is never promoted; a killed run resumes where it stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from aligned_rl.cli import main
from aligned_rl.improve import deploy
from aligned_rl.improve.config import load_improve_config
from aligned_rl.improve.lineage import Lineage
from aligned_rl.train.config import ConfigError, load_config
from aligned_rl.train.loop import train
from tests.conftest import CARTPOLE, REPO, TINY

SMALL = ["deployments=1", "envs_per_deployment=4", "rounds=4", "drift.start=1", "drift.end=2", "finetune.updates=2",
         "finetune.num_envs=4", "finetune.periodic_every=3", "gate.num_envs=8", "progress=false",
         # a monitor that fires on every round: the strategies' bookkeeping, not the detector, is tested
         "monitor.params.min_instances=1", "monitor.params.threshold=0.0", "monitor.params.delta=-1000.0",
         "monitor.cooldown=0"]
IMPROVE = str(REPO / "configs" / "improve_cartpole.yaml")


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    run = tmp_path_factory.mktemp("agent") / "cartpole"
    train(load_config(CARTPOLE, [*TINY, f"run.dir={run}"]))
    return str(run)


def test_bad_improve_input_is_refused(agent, tmp_path, capsys):
    for overrides, message in (
        (["strategies=[frozen,lucky]"], "strategies"),
        (["gate.delta=1.5"], "delta"),
        (["drift.end=50"], "drift.end=50 must come before the last round"),
        (["drift.to={length: 100.0}"], "length"),
        (["finetune.num_envs=99"], "num_envs"),
        (["monitor.detector=cusum"], "do not fit cusum"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_improve_config(IMPROVE, [f"agents=[{agent}]", *overrides])
    assert main(["improve", "--config", IMPROVE, f"agents=[{tmp_path}]", *SMALL]) == 2  # not a run
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_strategies_on_the_same_environments_with_a_lineage_each(agent, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["improve", "--config", IMPROVE, f"agents=[{agent}]", *SMALL, f"output={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "timeline.png").stat().st_size > 0
    s = report["strategies"]
    assert set(s) == {"frozen", "periodic", "monitored", "ungated"}
    # the frozen agent never changes; the monitor (CUSUM with h = 0 fires at once) triggers every round
    assert s["frozen"]["finetunes"]["mean"] == 0 and s["monitored"]["finetunes"]["mean"] == 4
    assert s["periodic"]["finetunes"]["mean"] == 1  # round 2
    # ungated: every fine-tune promoted; gated: only those the gate passed, and the lineage agrees
    assert s["ungated"]["promotions"]["mean"] == 4
    for strategy in ("periodic", "monitored", "ungated"):
        lineage = Lineage.open(out / strategy / "agent0-deployment0")
        gates = [e["data"] for e in lineage.events() if e["kind"] == "gate"]
        promoted = [e["data"]["version"] for e in lineage.events() if e["kind"] == "promote"][1:]
        passed = [g["candidate"] for g in gates if g["promote"]]
        assert promoted == ([g["candidate"] for g in gates] if strategy == "ungated" else passed)
        assert len(lineage.versions()) == 1 + len(gates)
    # the same environments for every strategy: before any fine-tune their values are equal
    timelines = {k: v["timeline"] for k, v in s.items()}
    assert timelines["frozen"][0] == timelines["monitored"][0] == timelines["ungated"][0]


@pytest.mark.slow
def test_a_monitor_on_violations_triggers_fine_tunes_of_its_own(agent, tmp_path):
    out = tmp_path / "out"
    assert main(["improve", "--config", IMPROVE, f"agents=[{agent}]", *SMALL, "strategies=[monitored]", "rounds=3",
                 "monitor.params.threshold=1e9",  # the value detector never fires
                 "monitor.violations=true", "monitor.violation_params.min_instances=1",
                 "monitor.violation_params.threshold=0.0", "monitor.violation_params.delta=-1000.0",
                 f"output={out}"]) == 0
    lineage = Lineage.open(out / "monitored" / "agent0-deployment0")
    rounds = [e["data"] for e in lineage.events() if e["kind"] == "round"]
    assert [r["fired_on"] for r in rounds] == [["violations"]] * 3 and all(r["trigger"] == "monitor" for r in rounds)
    assert len(rounds[0]["detector_state"]) == 2  # the value detector's state and the violation detector's
    with pytest.raises(ConfigError, match="violation_params has no effect"):
        load_improve_config(IMPROVE, [f"agents=[{agent}]", "monitor.violation_params.delta=0.1"])


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["rule parameters", "eps"])
def test_a_candidate_under_another_constitution_is_never_promoted(agent, tmp_path, monkeypatch, edit):
    def tampered(config, **kwargs):  # the fine-tune edits its own constitution
        if edit == "eps":  # with a divergence that reads sigma, so that the floor matters
            config.alignment.divergence, config.constitution.eps = "tv", 0.3
        else:
            config.constitution.params = {**config.constitution.params, "zone_low": 0.1}
        return train(config, **kwargs)

    monkeypatch.setattr(deploy, "train", tampered)
    out = tmp_path / "out"
    # ungated: the strategy that promotes every fine-tune, except one under another constitution
    assert main(["improve", "--config", IMPROVE, f"agents=[{agent}]", *SMALL, "strategies=[ungated]", "rounds=3",
                 f"output={out}"]) == 0
    for strategy in ("ungated",):
        lineage = Lineage.open(out / strategy / "agent0-deployment0")
        gates = [e["data"] for e in lineage.events() if e["kind"] == "gate"]
        assert len(gates) == 3 and not any(g["promote"] for g in gates)
        assert all(not g["checks"]["same_constitution"] for g in gates)
        assert lineage.deployed() == "v0001"


# A run that kills itself (SIGKILL, no clean-up) at a chosen moment of a chosen phase.
_KILLED_AT = r"""
import os, signal, sys
from aligned_rl.improve import deploy, lineage
phase = sys.argv[1]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if phase == "deploying":  # in the middle of a round, after the first fine-tune
    play, rounds = deploy.Deployment.play, []
    def playing(self, round_):
        rounds.append(round_)
        return die() if len(rounds) == 4 else play(self, round_)
    deploy.Deployment.play = playing
elif phase == "fine-tuning":  # while the candidate trains, its version half written
    deploy.train = die
elif phase == "gating":  # the candidate written, no decision yet
    deploy.decide = die
elif phase == "promoting":  # the pointer moved, its event not yet written
    record = lineage.Lineage.record
    lineage.Lineage.record = lambda self, kind, **data: die() if kind == "promote" and data.get("round") \
        else record(self, kind, **data)
from aligned_rl.cli import main
sys.exit(main(["improve", *sys.argv[2:]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["deploying", "fine-tuning", "gating", "promoting"])
def test_a_run_killed_in_any_phase_resumes_and_ends_as_an_uninterrupted_one(agent, tmp_path_factory, phase):
    args = ["--config", IMPROVE, f"agents=[{agent}]", *SMALL, "strategies=[ungated]", "rounds=5",
            "finetune.periodic_every=2"]
    whole = tmp_path_factory.getbasetemp() / "whole-run"
    if not (whole / "report.json").is_file():
        assert main(["improve", *args, f"output={whole}"]) == 0
    split = tmp_path_factory.mktemp(phase) / "split"
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT, phase, *args, f"output={split}"], cwd=REPO,
                            capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert main(["improve", *args, f"output={split}"]) == 0
    a = json.loads((whole / "report.json").read_text())["strategies"]["ungated"]
    b = json.loads((split / "report.json").read_text())["strategies"]["ungated"]
    assert a["timeline"] == b["timeline"] and a["promotions"] == b["promotions"], phase
    lineage = Lineage.open(split / "ungated" / "agent0-deployment0")
    assert [e["data"]["version"] for e in lineage.events() if e["kind"] == "promote"][-1] == lineage.deployed()
