"""aligned-rl compare: paired differences between agents measured on the same environments."""

import json
import math

import numpy as np
import pytest

from aligned_rl.cli import main
from aligned_rl.train.compare import compare
from aligned_rl.train.config import ConfigError
from tests.reference.estimators import mean_ci95


def _fake_run(path, agent, values, seed=0, antithetic=False, sampling="simple"):
    """A measure output directory holding ``values`` as every environment's average reward."""
    path.mkdir(parents=True)
    n = len(values) // 2 if antithetic else len(values)
    report = {"agent": agent, "env": "BF-programs", "num_envs": n, "seed": seed, "episode_length": 100,
              "antithetic": antithetic, "sampling": sampling,
              "estimates": {"upsilon_average_reward": {"filtered_mass": 0.25}}}
    (path / "report.json").write_text(json.dumps(report))
    np.savez(path / "per_env.npz", average_reward=np.asarray(values, np.float64))
    return str(path)


def test_paired_difference_matches_a_hand_computation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shared = rng.normal(0.4, 0.2, 200)  # what the environments contribute to both agents
    a = shared + rng.normal(0.03, 0.01, 200)
    b = shared
    runs = [_fake_run(tmp_path / "a", "ckpt/a", a), _fake_run(tmp_path / "b", "q_lambda", b)]
    result = compare(runs, output=str(tmp_path / "out"))
    diff = result["rows"][1]["reference_minus_agent"]
    mean, low, high = mean_ci95(a - b)
    assert diff["mean"] == pytest.approx(mean) and diff["ci95_low"] == pytest.approx(low)
    assert diff["ci95_high"] == pytest.approx(high) and diff["n"] == 200
    # the pairing is what makes it tight: the unpaired interval of the same means is far wider
    unpaired = 1.96 * math.sqrt(np.var(a, ddof=1) / 200 + np.var(b, ddof=1) / 200)
    assert (high - low) / 2 < unpaired / 5
    assert result["rows"][0]["estimate"]["filtered_mass"] == 0.25
    assert (tmp_path / "out" / "compare.png").is_file()
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["rows"][1]["agent"] == "q_lambda"

    assert main(["compare", *runs]) == 0
    out = capsys.readouterr().out
    assert "a minus agent" in out and f"{mean:.4f}" in out


def test_antithetic_runs_compare_pair_means(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.normal(size=40)  # 20 environments + their 20 twins each
    runs = [_fake_run(tmp_path / "a", "a", a, antithetic=True), _fake_run(tmp_path / "b", "b", b, antithetic=True)]
    diff = compare(runs)["rows"][1]["reference_minus_agent"]
    pairs = (a[:20] + a[20:]) / 2 - (b[:20] + b[20:]) / 2
    mean, low, high = mean_ci95(pairs)
    assert diff["n"] == 20 and diff["mean"] == pytest.approx(mean) and diff["ci95_low"] == pytest.approx(low)


def test_runs_on_different_environments_are_refused(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", "a", np.zeros(10))
    with pytest.raises(ConfigError, match="seed 1 vs 0"):
        compare([a, _fake_run(tmp_path / "b", "b", np.zeros(10), seed=1)])
    with pytest.raises(ConfigError, match="sampling=stratified"):
        compare([a, _fake_run(tmp_path / "c", "c", np.zeros(10), sampling="stratified")])
    with pytest.raises(ConfigError, match="no per-environment 'aligned_value'"):
        compare([a, a], metric="aligned_value")
    assert main(["compare", a, str(tmp_path / "missing")]) == 2
    assert "not an output directory of aligned-rl measure" in capsys.readouterr().err
