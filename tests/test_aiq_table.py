"""aligned-rl aiq: every agent at every episode length on the same programs, resumable, its refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import aligned_rl.train.aiq_table as aiq
from aligned_rl.cli import main
from aligned_rl.train.aiq_table import (
    AiqTableConfig,
    aiq_table,
    cell_directory,
    cell_name,
    format_markdown,
    load_aiq_config,
    paper_value,
)
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_report import read_measurement

from tests.conftest import REPO

HLQ = "HLQ_l,0,0,0.95,0.04,0.7"  # the paper's HLQ(lambda) at 1,000 steps, in AIQ's spelling
SMALL = [f'agents=[random,"{HLQ}"]', "episode_lengths=[20,60]", "measure.num_envs=8", "measure.progress=false",
         "workers=1"]


def _estimates(table: dict) -> dict:
    return {(c["agent"], c["episode_length"]): c["estimate"] for c in table["cells"]}


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """One small table (2 agents x 2 lengths, 8 programs with twins) shared by the tests."""
    out = tmp_path_factory.mktemp("aiq") / "table"
    config = load_aiq_config(None, [*SMALL, f"output={out}"])
    return config, aiq_table(config)


def _copy(small_table, tmp_path) -> tuple[AiqTableConfig, Path]:
    config, table = small_table
    out = tmp_path / "table"
    shutil.copytree(table["output"], out)
    return load_aiq_config(None, [*SMALL, f"output={out}"]), out


class _Counting:
    """``measure`` that counts its calls and raises on the call numbered ``fail_on``."""

    def __init__(self, fail_on: int | None = None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, config, agent=None, sampled=None):
        self.calls.append((config.agent, config.episode_length))
        if len(self.calls) == self.fail_on:
            raise KeyboardInterrupt("killed")
        return measure(config, agent, sampled)


# ------------------------------------------------------------------------------ the table
def test_every_cell_equals_a_separate_measure_run_on_the_same_programs(small_table):
    config, table = small_table
    out = Path(table["output"])
    assert [(c["agent"], c["episode_length"]) for c in table["cells"]] == [
        ("random", 20), ("random", 60), (HLQ, 20), (HLQ, 60)]
    cells = {(c["agent"], c["episode_length"]): c for c in table["cells"]}
    # a cell measured on its own: the same programs (drawn from the same seed), the same numbers
    alone = measure(MeasureConfig(agent=HLQ, episode_length=60, num_envs=8, antithetic=True, progress=False))
    assert cells[HLQ, 60]["estimate"] == alone.report["estimates"]["upsilon_average_reward"]
    written = read_measurement(cell_directory(out, HLQ, 60))
    np.testing.assert_array_equal(written.per_env["average_reward"], alone.per_env["average_reward"])
    assert written.report["output"] == str(cell_directory(out, HLQ, 60))
    assert written.report["config"] == {**alone.report["config"], "output": None}
    assert all(c["estimate"]["mean"] == 0.0 for (a, _), c in cells.items() if a == "random")  # twins
    hlq = cells[HLQ, 60]
    assert hlq["aiq"]["mean"] == pytest.approx(100 * hlq["estimate"]["mean"])
    assert hlq["agent_parameters"] == {"sel_mode": 0, "init_q": 0.0, "lam": 0.95, "epsilon": 0.04, "gamma": 0.7}
    assert hlq["n"] == 8 and hlq["seconds"] > 0 and hlq["agent_env_steps_per_second"] > 0
    assert set(hlq["voided"]) == {"metric", "replaced", "environments", "rounds"}
    assert hlq["paper"] is None  # 60 steps is none of the paper's lengths
    assert table["agent_env_steps"] == 2 * 16 * (20 + 60)
    assert table["machine"]["cpu_count"] and table["machine"]["jax_platform"]
    assert "measure.num_envs=8" in table["command"]
    assert "agent" not in table["config"]["measure"] and "episode_length" not in table["config"]["measure"]
    saved = json.loads((out / "table.json").read_text())
    assert _estimates(saved) == _estimates(table)
    markdown = (out / "table.md").read_text()
    assert markdown == format_markdown(table)
    assert "| agent | 20 | 60 |" in markdown and f"| {HLQ} | " in markdown and "Machine:" in markdown
    assert (out / "aiq_vs_length.png").stat().st_size > 0


def test_a_rerun_reads_finished_cells_back_and_measures_only_the_rest(small_table, tmp_path, monkeypatch):
    _, original = small_table
    config, out = _copy(small_table, tmp_path)
    # two cells missing, and the run killed while measuring the second: the first is kept whole
    shutil.rmtree(cell_directory(out, "random", 60))
    shutil.rmtree(cell_directory(out, HLQ, 60))
    (out / f".{cell_directory(out, HLQ, 60).name}.partial").mkdir()  # a write cut short earlier
    killed = _Counting(fail_on=2)
    monkeypatch.setattr(aiq, "measure", killed)
    with pytest.raises(KeyboardInterrupt):
        aiq_table(config)
    assert killed.calls == [("random", 60), (HLQ, 60)]
    assert (cell_directory(out, "random", 60) / "report.json").is_file()
    assert not cell_directory(out, HLQ, 60).exists()
    resumed = _Counting()
    monkeypatch.setattr(aiq, "measure", resumed)
    table = aiq_table(config)
    assert resumed.calls == [(HLQ, 60)]  # the cells written before are read back, not measured again
    assert _estimates(table) == _estimates(original)
    assert [c["measured"] for c in table["cells"]] == ["read back", "read back", "read back", "now"]
    assert table["time"]["cells_read_back"] == 3
    assert not list(out.glob(".*.partial"))


def test_an_output_of_another_config_is_refused_before_anything_runs(small_table, tmp_path, monkeypatch):
    _, out = _copy(small_table, tmp_path)
    monkeypatch.setattr(aiq, "draw_environments", lambda *a: pytest.fail("drew programs"))
    monkeypatch.setattr(aiq, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(ConfigError, match=r"random-20 was measured with another config \(seed: 0 there, 1 here\)"):
        aiq_table(load_aiq_config(None, [*SMALL, "measure.seed=1", f"output={out}"]))
    (out / "random-20" / "report.json").unlink()
    with pytest.raises(ConfigError, match="holds no report.json"):
        aiq_table(load_aiq_config(None, [*SMALL, f"output={out}"]))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two CPU cores")
def test_two_workers_pinned_to_two_cores_measure_the_same_table(small_table, tmp_path):
    _, original = small_table
    out = tmp_path / "table"
    (out / ".workers" / "claims").mkdir(parents=True)
    (out / ".workers" / "claims" / "random-20").touch()  # left by a killed run: the cell is still measured
    table = aiq_table(load_aiq_config(None, [*SMALL, "workers=2", f"output={out}"]))
    assert _estimates(table) == _estimates(original)
    assert [c["measured"] for c in table["cells"]] == ["now"] * 4
    for agent, length in [("random", 20), (HLQ, 60)]:
        np.testing.assert_array_equal(
            read_measurement(cell_directory(out, agent, length)).per_env["average_reward"],
            read_measurement(cell_directory(original["output"], agent, length)).per_env["average_reward"])
    assert table["time"]["workers"]["workers"] == 2 and table["time"]["workers"]["wall_seconds"] > 0
    assert "2 processes side by side" in (out / "table.md").read_text()
    assert not (out / ".workers").exists()


def test_the_command_prints_the_table_of_cells_read_back(small_table, tmp_path, monkeypatch, capsys):
    _, out = _copy(small_table, tmp_path)
    monkeypatch.setattr(aiq, "measure", lambda *a, **k: pytest.fail("measured"))
    assert main(["aiq", *SMALL, f"output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| agent | 20 | 60 |" in printed and f"{out}/table.json" in printed
    assert json.loads((out / "table.json").read_text())["command"].startswith("aligned-rl aiq 'agents=[random,")


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("overrides,message", [
    (["measure.agent=q_lambda"], "measure.agent has no effect: the command sets it for each cell"),
    (["measure.episode_length=1000"], "measure.episode_length has no effect"),  # even at its default
    (["measure.agent_params={epsilon: 0.1}"], "measure.agent_params has no effect"),
    (["measure.env=CartPole-v1"], "measure.env=CartPole-v1 is episodic"),
    (["measure.env=all"], "is a mixture of families"),
    (["bogus=1"], "unknown key 'bogus'"),
    (["measure.bogus=1"], "unknown key 'measure.bogus'"),
    (["agents=[]"], "agents is empty"),
    (["agents=[random,random]"], "agents lists random more than once"),
    (["agents=[random,HLQ_l,0,0,0.95,0.04,0.7]"], "must be quoted"),
    (["agents=[a/run,b/run]"], "would be written to the same directories"),
    (["episode_lengths=[1000,0]"], "episode_lengths holds 0: every length must be a positive"),
    (["episode_lengths=[-5]"], "episode_lengths holds -5"),
    (["episode_lengths=[]"], "episode_lengths is empty"),
    (["measure.num_envs=10", "measure.buckets=4"], "does not split into measure.buckets=4"),
    (["measure.alignment_weight=0.9"], "alignment_weight=0.9 has no effect"),
    (["workers=-1"], "workers=-1: give a number of processes"),
    ([f"workers={len(os.sched_getaffinity(0)) + 1}"], "each worker is pinned to its own core"),
    (["workers=2", "measure.devices=2"], "each worker measures on one CPU core"),
])
def test_bad_input_is_refused_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_aiq_config(None, overrides)


def test_a_per_cell_key_is_refused_in_the_file_too(tmp_path):
    path = tmp_path / "aiq.yaml"
    path.write_text("measure:\n  agent: q_lambda\n")
    with pytest.raises(ConfigError, match="measure.agent has no effect"):
        load_aiq_config(str(path))


def test_the_command_refuses_with_exit_code_2(capsys):
    assert main(["aiq", "measure.episode_length=1000"]) == 2
    assert "measure.episode_length has no effect" in capsys.readouterr().err
    assert main(["aiq", "measure.env=CartPole-v1"]) == 2
    assert "is episodic" in capsys.readouterr().err
    assert main(["aiq", "episode_lengths=[0]"]) == 2
    assert "must be a positive number of steps" in capsys.readouterr().err
    assert main(["aiq", "--config", str(REPO / "configs" / "no_such_file.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_shipped_config_is_the_defaults():
    assert load_aiq_config(str(REPO / "configs" / "aiq_table.yaml")) == AiqTableConfig()
    config = AiqTableConfig()
    assert config.agents == ["random", "freq", "q_0", "q_lambda", "hlq_lambda"]
    assert config.episode_lengths == [1000, 3000, 10000, 30000, 100000]
    assert (config.measure.num_envs, config.measure.antithetic, config.measure.env) == (4096, True, "BF-programs")


# ------------------------------------------------------------------------------ the paper, names
def test_the_paper_value_is_found_for_the_paper_agents_at_the_paper_lengths():
    q = paper_value("q_lambda", 1000)
    assert (q["aiq"], q["half_ci"], q["ci95_low"], q["ci95_high"]) == (44.3, 0.4, 43.9, 44.7)
    assert paper_value("hlq_lambda", 100_000)["aiq"] == 56.3
    assert paper_value("freq", 30_000)["aiq"] == 47.3
    assert paper_value(HLQ, 1000)["aiq"] == 49.1  # AIQ's spelling with the paper's parameters
    assert paper_value("Q_0,0,0,0.5,0.02,0.8", 10_000)["aiq"] == 50.2
    assert paper_value(HLQ, 10_000) is None  # the 1,000-step parameters at 10,000 steps: not the paper's agent
    assert paper_value("random", 1000) is None  # the paper published no Random
    assert paper_value("q_lambda", 2000) is None  # not one of the paper's lengths
    assert paper_value("checkpoints/mine", 1000) is None
    assert paper_value("q_lambda", 1000, env="CartPole-v1") is None


def test_the_markdown_shows_the_paper_beside_ours(tmp_path):
    def cell(agent, length, mean):
        return {"agent": agent, "episode_length": length, "estimate": {"mean": mean / 100},
                "aiq": {"mean": mean, "ci95_low": mean - 0.5, "ci95_high": mean + 0.5}, "n": 4096,
                "antithetic": True, "seconds": 12.0, "compile_seconds": 1.0, "agent_env_steps_per_second": 1e6,
                "voided": {"replaced": 2}, "paper": paper_value(agent, length)}

    table = {"env": "BF-programs", "num_envs": 4096, "antithetic": [True], "seed": 0,
             "agents": ["random", "q_lambda"], "episode_lengths": [1000, 3000],
             "cells": [cell("random", 1000, 0.0), cell("random", 3000, 0.0), cell("q_lambda", 1000, 44.0),
                       cell("q_lambda", 3000, 48.5)],
             "time": {"total_seconds": 60.0, "measuring_seconds": 48.0, "compile_seconds": 4.0, "draw_seconds": 8.0,
                      "cells_read_back": 0},
             "agent_env_steps": 10 ** 9, "machine": aiq.machine(), "command": "aligned-rl aiq"}
    text = format_markdown(table)
    assert "| q_lambda | 44.0 [43.5, 44.5] | 48.5 [48.0, 49.0] |" in text
    assert "| q_lambda | 44.3 ± 0.4 | 48.1 ± 0.4 |" in text
    assert "| random | 0.0 [-0.5, 0.5] |" in text and "| random | -" not in text  # no paper row for Random
    assert "Total time: 60.0 s" in text and "Command: `aligned-rl aiq`" in text
    aiq.plot_table(table, tmp_path / "aiq_vs_length.png")  # the paper's points dashed beside ours
    assert (tmp_path / "aiq_vs_length.png").stat().st_size > 0


def test_cell_names_are_directory_names():
    assert cell_name("q_lambda") == "q_lambda"
    assert cell_name(HLQ) == "HLQ_l_0_0_0.95_0.04_0.7"
    assert cell_name("checkpoints/tax/programs/") == "programs"
    assert cell_directory("out", "Freq,0.07", 3000) == Path("out") / "Freq_0.07-3000"
