"""aligned-rl tax: K(C), the two formulations of Sigma, the paired difference, the command end to end."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.cli import main
from aligned_rl.codes import elias_gamma_bits
from aligned_rl.constitution import Constitution, description_bits
from aligned_rl.train.alignment_tax import (
    constitution_code_bits,
    estimation_units,
    load_tax_config,
    paired_difference,
    per_env_columns,
    sigma_a,
)
from aligned_rl.train.config import ConfigError

from tests.conftest import REPO, TINY
from tests.reference.estimators import mean_ci95, pair_means

Z95 = 1.959963984540054


# ------------------------------------------------------------------------------ K(C)
def _elias_gamma(m: int) -> str:
    binary = bin(m)[2:]
    return "0" * (len(binary) - 1) + binary


def test_elias_gamma_lengths_match_the_code_and_it_is_prefix_free():
    words = {m: _elias_gamma(m) for m in range(1, 200)}
    for m, word in words.items():
        assert elias_gamma_bits(m) == len(word)
    assert [elias_gamma_bits(m) for m in (1, 2, 3, 4, 7, 8, 15, 16)] == [1, 3, 3, 5, 5, 7, 7, 9]
    listed = sorted(words.values())
    assert not any(b.startswith(a) for a, b in zip(listed, listed[1:]))  # sorted: a prefix sits right before
    with pytest.raises(ValueError, match=">= 1"):
        elias_gamma_bits(0)


def test_constitution_bits_by_hand():
    # BF-programs ships no_hang and no_low_symbols; sorted by name no_low_symbols is second:
    # Elias-gamma of 2 is '010' (3 bits), plus its one float32 parameter `low` (32 bits)
    family = envs.spec("BF-programs").constitutions
    assert description_bits(envs.constitution("BF-programs", "no_low_symbols"), family) == 3 + 32
    assert description_bits(envs.constitution("BF-programs", "no_hang"), family) == 1  # '1', no parameters
    assert constitution_code_bits("BF-programs", "no_low_symbols") == 35.0
    assert constitution_code_bits("BF-programs", "no_low_symbols", override=7.5) == 7.5
    # third of three ('011', 3 bits), a float32 vector of 3 (96 bits) and a float32 scalar (32 bits)
    rules = Constitution(name="c", params={"v": jnp.zeros((3,), jnp.float32), "s": jnp.float32(1.0)})
    assert description_bits(rules, ["b", "a", "c"]) == 3 + 96 + 32
    with pytest.raises(ValueError, match="not one of the family"):
        description_bits(rules, ["a", "b"])
    with pytest.raises(ConfigError, match="ships no constitution"):
        constitution_code_bits("BF-programs", "no_such_rules")


# ------------------------------------------------------------------------------ Sigma (a)
@pytest.mark.parametrize("bits", [0.0, 1.0, 3.5, 35.0])
def test_sigma_a_is_the_prior_weighted_mean_over_mu_and_mu_c(bits):
    rng = np.random.default_rng(0)
    v, vc = rng.uniform(-1, 1, 500), rng.uniform(-1, 1, 500)
    # the universe {mu, mu^C}: weights 2^-K(mu) and 2^-K(mu) 2^-K(C), normalised
    reference = np.average(np.stack([v, vc]), axis=0, weights=[1.0, 2.0 ** -bits])
    np.testing.assert_allclose(sigma_a(v, vc, bits), reference, rtol=0, atol=1e-15)
    assert np.all(np.abs(sigma_a(v, vc, bits) - v) <= 2 * 2.0 ** -bits / (1 + 2.0 ** -bits) + 1e-15)


def test_columns_take_v_c_from_the_constrained_run():
    run = {k: np.array([0.5, -0.2]) for k in ("average_reward", "constrained_value", "aligned_value",
                                               "forbidden_rate")}
    constrained = {**run, "constrained_value": np.array([-1.0, 0.0])}
    cols = per_env_columns(run, constrained, bits=1.0)
    np.testing.assert_array_equal(cols["constrained_value"], [-1.0, 0.0])
    np.testing.assert_allclose(cols["sigma_a"], [(0.5 - 0.5) / 1.5, (-0.2 + 0.0) / 1.5])
    np.testing.assert_array_equal(cols["upsilon"], run["average_reward"])


# ------------------------------------------------------------------------------ paired difference
@pytest.mark.parametrize("antithetic", [False, True])
def test_paired_difference_against_numpy(antithetic):
    rng = np.random.default_rng(1)
    n = 300
    rows = 2 * n if antithetic else n
    common = rng.normal(size=rows)  # what the shared environments contribute to both agents
    aligned = common + 0.1 * rng.normal(size=rows)
    unaligned = common + 0.05 + 0.1 * rng.normal(size=rows)
    d = unaligned - aligned
    if antithetic:
        d = (d[:n] + d[n:]) / 2
    se = np.std(d, ddof=1) / math.sqrt(n)
    e = paired_difference(unaligned, aligned, n, antithetic, filtered_mass=0.25).as_dict()
    assert e["n"] == n and e["filtered_mass"] == 0.25
    assert e["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert e["ci95_low"] == pytest.approx(d.mean() - Z95 * se, abs=1e-12)
    assert e["ci95_high"] == pytest.approx(d.mean() + Z95 * se, abs=1e-12)
    # pairing removes the shared part: far tighter than the unpaired interval
    unpaired = math.sqrt(np.var(estimation_units(aligned, n, antithetic), ddof=1) / n
                         + np.var(estimation_units(unaligned, n, antithetic), ddof=1) / n)
    assert se < unpaired / 3
    with pytest.raises(ValueError, match="expected"):
        estimation_units(aligned[:-1], n, antithetic)


# ------------------------------------------------------------------------------ the command
def test_bad_tax_input_is_refused(capsys):
    with pytest.raises(ConfigError, match="unknown key"):
        load_tax_config(None, ["aligned=random", "unaligned=q_lambda", "measure.constitution=no_low_symbols", "seeed=1"])
    with pytest.raises(ConfigError, match="unaligned not given"):
        load_tax_config(None, ["aligned=random", "measure.constitution=no_low_symbols"])
    with pytest.raises(ConfigError, match="measure.constitution=none"):
        load_tax_config(None, ["aligned=random", "unaligned=q_lambda", "measure.constitution=none"])
    with pytest.raises(ConfigError, match="constitution_bits"):
        load_tax_config(None, ["aligned=random", "unaligned=q_lambda", "measure.constitution=no_low_symbols",
                               "constitution_bits=-1"])
    assert main(["tax", "aligned=random", "unaligned=no_such_agent", "measure.constitution=no_low_symbols",
                 "measure.num_envs=4", "measure.progress=false"]) == 2
    assert "neither a baseline" in capsys.readouterr().err
    assert main(["tax", "aligned=random", "unaligned=q_lambda", "measure.constitution=no_hangg", "measure.num_envs=4"]) == 2
    assert "ships no constitution" in capsys.readouterr().err
    assert main(["tax", "--config", str(REPO / "configs" / "no_such_file.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_antithetic_twins_are_refused_for_an_agent_that_ignores_rewards(monkeypatch, capsys):
    # a fixed policy acts the same in an environment and its reward-negated twin: every pair averages 0
    import aligned_rl.train.alignment_tax as tax

    monkeypatch.setattr(tax, "make_agent", lambda spec, *args: SimpleNamespace(adaptive=spec != "ppo", name=spec))
    assert main(["tax", "aligned=ppo", "unaligned=q_lambda", "measure.constitution=no_low_symbols", "measure.antithetic=true",
                 "measure.num_envs=4"]) == 2
    assert "set measure.antithetic=false" in capsys.readouterr().err


def test_shipped_tax_config_loads():
    config = load_tax_config(str(REPO / "configs" / "tax_programs.yaml"))
    assert config.aligned.endswith("programs") and config.unaligned.endswith("programs_unaligned")
    assert config.measure.constitution == "no_low_symbols" and config.measure.num_envs == 4096


@pytest.mark.slow
def test_tax_of_random_against_q_lambda_end_to_end(tmp_path, capsys):
    code = main(["tax", "aligned=random", "unaligned=q_lambda", "measure.constitution=no_low_symbols", "measure.num_envs=12",
                 "measure.episode_length=60", "measure.chunk_steps=60", "measure.antithetic=true", "measure.progress=false", f"output={tmp_path}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "K(C) = 35 bits" in out and "2^-K(C) = 2.91e-11" in out
    for text in ("random (aligned)", "q_lambda (unaligned)", "difference (unaligned - aligned, paired)",
                 "Upsilon in mu", "V in mu^C", "Sigma (a) env", "Sigma (b) V'", "forbidden rate"):
        assert text in out
    assert (tmp_path / "tax.png").stat().st_size > 0
    report = json.loads((tmp_path / "tax.json").read_text())
    assert report["constitution_bits"] == 35 and report["num_envs"] == 12 and report["antithetic"]
    # both baselines learn from what they are paid: each was measured a second time, paid r^C
    for role in ("aligned", "unaligned"):
        assert report["agents"][role]["adaptive"]
        assert set(report["agents"][role]["runs"]) == {"env", "constrained"}
    est = {r: report["agents"][r]["estimates"] for r in ("aligned", "unaligned")}
    for role, columns in est.items():
        # every column's mean and interval, recomputed from measure's per-environment files: the
        # run paid r gives Upsilon, Sigma (b) and the forbidden rate, the run paid r^C gives V^C
        paid_r = np.load(tmp_path / role / "per_env.npz")
        paid_rc = np.load(tmp_path / f"{role}-constrained" / "per_env.npz")
        weight = 2.0 ** -35
        values = {"upsilon": paid_r["average_reward"], "constrained_value": paid_rc["constrained_value"],
                  "sigma_a": [(v + weight * vc) / (1 + weight)
                              for v, vc in zip(paid_r["average_reward"], paid_rc["constrained_value"])],
                  "sigma_b": paid_r["aligned_value"], "forbidden_rate": paid_r["forbidden_rate"]}
        assert set(columns) == set(values)
        for name, e in columns.items():
            reference = mean_ci95(pair_means(values[name], 12))  # the unit: the antithetic pair
            assert e["n"] == 12, name
            assert (e["mean"], e["ci95_low"], e["ci95_high"]) == pytest.approx(reference, abs=1e-12), name
        # measure's own estimate of Upsilon, from the same run
        measured = json.loads((tmp_path / role / "report.json").read_text())["estimates"]["upsilon_average_reward"]
        assert columns["upsilon"]["mean"] == pytest.approx(measured["mean"], abs=1e-12)
        assert abs(columns["sigma_a"]["mean"] - columns["upsilon"]["mean"]) <= report["sigma_a_max_deviation_from_upsilon"]
    assert est["aligned"]["upsilon"]["mean"] == 0.0  # reward-blind on antithetic pairs
    # the difference is paired: recompute it from the per-environment files
    a = np.load(tmp_path / "aligned" / "per_env.npz")["average_reward"]
    u = np.load(tmp_path / "unaligned" / "per_env.npz")["average_reward"]
    d = (u[:12] + u[12:]) / 2 - (a[:12] + a[12:]) / 2
    diff = report["difference"]["upsilon"]
    assert diff["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert diff["ci95_high"] - diff["mean"] == pytest.approx(Z95 * np.std(d, ddof=1) / math.sqrt(12), abs=1e-12)
    vc = np.load(tmp_path / "unaligned-constrained" / "per_env.npz")["constrained_value"]
    assert est["unaligned"]["constrained_value"]["mean"] == pytest.approx(((vc[:12] + vc[12:]) / 2).mean(), abs=1e-12)


@pytest.mark.slow
def test_tax_of_a_ppo_run_needs_one_run_for_mu_and_mu_c(tmp_path, capsys):
    run = tmp_path / "ppo"
    assert main(["train", "--config", str(REPO / "configs" / "programs.yaml"), *TINY, f"run.dir={run}"]) == 0
    out = tmp_path / "tax"
    assert main(["tax", f"aligned={run}", "unaligned=random", "measure.constitution=no_low_symbols", "measure.num_envs=8",
                 "measure.episode_length=40", "measure.chunk_steps=40", "measure.progress=false", f"output={out}"]) == 0
    assert "ppo (aligned)" in capsys.readouterr().out
    report = json.loads((out / "tax.json").read_text())
    ppo = report["agents"]["aligned"]
    assert not ppo["adaptive"] and set(ppo["runs"]) == {"env"}  # its actions do not depend on what it is paid
    per_env = np.load(out / "aligned" / "per_env.npz")
    assert ppo["estimates"]["constrained_value"]["mean"] == pytest.approx(per_env["constrained_value"].mean(),
                                                                          abs=1e-12)
    assert ppo["estimates"]["upsilon"]["n"] == 8 and not report["antithetic"]
