"""aligned-rl measure: estimates over sampled program environments."""

import json
import resource
import sys

import numpy as np
import pytest

from aligned_rl.cli import main
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import load_measure_config
from aligned_rl.train.measure_report import write_measurement
from tests.reference.estimators import Z95, mean_ci95, pair_means, two_phase_stratified


def _measure(tmp_path, *overrides):
    config = load_measure_config(None, ["num_envs=24", "episode_length=150", "chunk_steps=50", "progress=false",
                                        *overrides])
    measurement = measure(config)
    write_measurement(measurement, tmp_path)
    return measurement.report


@pytest.mark.slow
def test_random_agent_scores_exactly_zero_on_antithetic_pairs(tmp_path):
    report = _measure(tmp_path, "agent=random")
    e = report["estimates"]["upsilon_average_reward"]
    assert e["mean"] == 0.0 and e["ci95_low"] == 0.0 == e["ci95_high"]
    assert 0.0 < e["filtered_mass"] < 1.0  # passive and overtime programs were filtered out
    per_env = np.load(tmp_path / "per_env.npz")
    np.testing.assert_array_equal(per_env["average_reward"][:24], -per_env["average_reward"][24:])
    assert (tmp_path / "values.png").is_file()


@pytest.mark.slow
def test_q_lambda_beats_random_with_an_interval_and_a_table(tmp_path, capsys):
    code = main(["measure", "agent=q_lambda", "num_envs=24", "episode_length=300", "progress=false",
                 f"output={tmp_path}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "upsilon_average_reward" in out and "95% CI" in out
    report = json.loads((tmp_path / "report.json").read_text())
    e = report["estimates"]["upsilon_average_reward"]
    assert e["ci95_low"] > 0.0  # learns: the random agent scores exactly 0 on the same pairs
    # the interval is the normal one over the 24 pair means of the per-environment values
    per_env = np.load(tmp_path / "per_env.npz")
    mean, low, high = mean_ci95(pair_means(per_env["average_reward"], 24))
    assert e["n"] == 24 and e["mean"] == pytest.approx(mean, abs=1e-12)
    assert (e["ci95_low"], e["ci95_high"]) == pytest.approx((low, high), abs=1e-12)
    # 24 environments and their 24 twins, and the programs redrawn for void (overtime) runs, 300
    # steps each, over the seconds the steps took
    runs = 24 + report["voided"]["replaced"]
    assert report["agent_env_steps_per_second"] == pytest.approx(2 * runs * 300 / report["seconds"], rel=1e-9)
    assert np.sum(per_env["redrawn"][:24]) == report["voided"]["replaced"]
    # the paper's Q(lambda) preset for the nearest episode length (1000 steps for 300)
    assert report["agent_parameters"] == {"init_q": 0.0, "lam": 0.5, "alpha": 0.5, "epsilon": 0.04, "gamma": 0.6}
    assert report["engine"] == "async"  # an AIQ baseline on BF-programs: lanes at their own pace


@pytest.mark.slow
def test_sigma_and_forbidden_rate_with_a_constitution(tmp_path):
    report = _measure(tmp_path, "agent=random", "constitution=no_low_symbols", "antithetic=false")
    est = report["estimates"]
    assert 0.0 < est["forbidden_rate"]["mean"] < 0.5
    # V' = average of (1-w) r + w 1[lawful]; with w = 0.5 and r of mean ~0 it sits near (1 - rate) / 2
    assert est["sigma_aligned"]["mean"] == pytest.approx(0.5 * (1 - est["forbidden_rate"]["mean"]), abs=0.05)
    assert report["engine"] == "lockstep" and "constitution" in report["engine_source"]


def test_bad_measure_input_is_refused(capsys):
    with pytest.raises(ConfigError, match="unknown key"):
        load_measure_config(None, ["agentt=q_lambda"])
    with pytest.raises(ConfigError, match="out of range"):
        load_measure_config(None, ["gamma=1.5"])
    assert main(["measure", "agent=q_lambda", "env=CartPole-v1", "num_envs=4", "progress=false"]) == 2
    assert "reads observations as an index" in capsys.readouterr().err
    assert main(["measure", "agent=no_such_agent", "env=CartPole-v1", "num_envs=4", "progress=false"]) == 2
    assert "neither a baseline" in capsys.readouterr().err
    assert main(["measure", "agent=q_lambda", "engine=async", "constitution=no_low_symbols", "num_envs=4",
                 "episode_length=5", "progress=false"]) == 2
    assert "engine=async cannot run this measurement: constitution 'no_low_symbols'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="engine"):
        load_measure_config(None, ["engine=fast"])


@pytest.mark.slow
def test_stratified_two_phase_measure_end_to_end(tmp_path):
    report = _measure(tmp_path, "agent=q_lambda", "num_envs=12", "pool_factor=2", "episode_length=60",
                      "chunk_steps=60", "sampling=stratified", "pilot_fraction=0.5")
    strat = report["stratified"]
    assert report["sampling"] == "stratified" and strat["pool_size"] == 24
    rows = strat["strata"]
    assert sum(r["pool_count"] for r in rows) == 24 and sum(r["n"] for r in rows) == 12
    assert all(2 <= r["n"] <= r["pool_count"] for r in rows) and all(r["pilot_n"] >= 2 for r in rows)
    assert [r["w"] for r in rows] == [r["pool_count"] / 24 for r in rows]  # w_h = m_h / M
    # AIQ strata 1..20, every one in exactly one (possibly collapsed) group
    labels = [s for r in rows for s in r["strata"]]
    assert len(labels) == len(set(labels)) and all(1 <= s <= 20 for s in labels)
    e = report["estimates"]["upsilon_average_reward"]
    table = strat["by_estimate"]["upsilon_average_reward"]
    assert e["mean"] == pytest.approx(sum(r["w"] * r["mean"] for r in table), abs=1e-12)
    assert 0.0 < e["filtered_mass"] < 1.0
    per_env = np.load(tmp_path / "per_env.npz")
    # the estimate and its interval, recomputed from the per-environment values with the
    # textbook double-sampling formula (group h of row i: per_env["group"], pool counts m_h)
    mean, se = two_phase_stratified(pair_means(per_env["average_reward"], 12), per_env["group"][:12].tolist(),
                                    [r["pool_count"] for r in rows])
    assert e["n"] == 12 and e["mean"] == pytest.approx(mean, abs=1e-12) and e["se"] == pytest.approx(se, rel=1e-9)
    assert (e["ci95_low"], e["ci95_high"]) == pytest.approx((mean - Z95 * se, mean + Z95 * se), abs=1e-12)
    assert per_env["average_reward"].size == 24 and set(per_env["phase"].tolist()) == {0, 1}
    assert len(set(per_env["pool_index"][:12].tolist())) == 12  # drawn without replacement from the pool
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["stratified"]["strata"] == rows
    # the largest batch run at once: one phase's environments and their twins
    assert saved["memory"]["environments_in_batch"] == np.bincount(per_env["phase"]).max()
    # peak resident memory in bytes (not KiB): a process that compiled JAX programs holds well over
    # 64 MiB, and no more than this process's peak so far
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    assert 64 * 2**20 < saved["memory"]["peak_rss_bytes"] <= peak_now


def test_stratified_sampling_needs_strata():
    with pytest.raises(ConfigError, match="carry a stratum"):
        measure(load_measure_config(None, ["env=CartPole-v1", "num_envs=4", "sampling=stratified",
                                           "progress=false"]))
    with pytest.raises(ConfigError, match="out of range"):
        load_measure_config(None, ["sampling=neyman"])
    with pytest.raises(ConfigError, match="needs coordinator_address"):
        load_measure_config(None, ["num_processes=2"])
