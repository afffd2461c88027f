"""The command line as a user meets it: a pipe closed early, a resumed stop, agents that fit the family."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from aligned_rl.cli import main
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure import measure, resolve_antithetic
from aligned_rl.train.measure_config import load_measure_config
from tests.conftest import CARTPOLE, REPO, TINY


def test_a_reader_that_stops_early_ends_the_listing_quietly():
    r = subprocess.run(f"{sys.executable} -m aligned_rl.cli envs | head -n 1", shell=True, capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_a_resumed_stop_continues_to_the_end_unless_told_otherwise(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", CARTPOLE, *TINY, f"run.dir={run}", "run.stop_at_update=2"]) == 0
    assert json.loads((run / "summary.json").read_text())["updates"] == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "run.stop_at_update=4"]) == 0  # told: stops again
    assert json.loads((run / "summary.json").read_text())["updates"] == 4
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "run.stop_at_update=4 stopped the earlier run" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == summary["total_updates"] == 8


def test_antithetic_twins_by_default_only_for_agents_that_adapt():
    adaptive, fixed = SimpleNamespace(adaptive=True, name="q"), SimpleNamespace(adaptive=False, name="ppo")
    assert resolve_antithetic(None, [adaptive])[0] is True
    assert resolve_antithetic(None, [fixed])[0] is False
    assert resolve_antithetic(None, [adaptive, fixed])[0] is False  # a pair is measured in the same units
    assert resolve_antithetic(False, [adaptive]) == (False, "set in the config")
    with pytest.raises(ConfigError, match="ppo does not adapt.*set antithetic=false"):
        resolve_antithetic(True, [adaptive, fixed])


def test_agents_that_ignore_observations_run_on_any_discrete_family(capsys):
    """Random and Freq need no observation index; Q(lambda) does, and says so."""
    common = ["env=CartPole-v1", "num_envs=4", "chunk_steps=100", "progress=false", "constitution=safe_zone"]
    random = measure(load_measure_config(None, ["agent=random", *common]))
    freq = measure(load_measure_config(None, ["agent=freq", *common]))
    for m in (random, freq):
        assert m.report["antithetic"] and m.report["antithetic_source"].startswith("default")
        counts = m.per_env["forbidden_rate"] * m.per_env["episode_length"]  # one episode per environment
        assert counts.shape == (8,) and np.allclose(counts, np.round(counts), atol=1e-9)
    # the twins share every random number: a random agent takes the same actions in both
    np.testing.assert_array_equal(random.per_env["forbidden_rate"][:4], random.per_env["forbidden_rate"][4:])
    assert main(["measure", "agent=q_lambda", *common]) == 2
    assert "ignores observations (random, freq)" in capsys.readouterr().err
