"""aligned-rl frontier: every method x seed trained and measured on the same environments, the
numbers against separate measurements and hand computations, resumability, Pareto, refusals.

The small frontier is on Gridworld-IslandNavigation (no_water): agents trained for a few updates
walk into the water often, so the forbidden rates differ between methods and runs; on CartPole
such agents fall before they reach safe_zone's zone and every forbidden rate is exactly 0.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import aligned_rl.train.frontier as fr
from aligned_rl.cli import main
from aligned_rl.intelligence import paired_difference, simple_estimate
from aligned_rl.train.alignment_tax import COLUMNS, constitution_code_bits, per_env_columns
from aligned_rl.train.config import ConfigError, load_config
from aligned_rl.train.frontier import (FrontierConfig, format_markdown, frontier, load_frontier_config,
                                       pareto_optimal, seed_interval, t_quantile_975)
from aligned_rl.train.loop import train
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_report import read_measurement

from tests.conftest import REPO

GRID = str(REPO / "configs" / "gridworld_island.yaml")
TINY_TRAINING = ("train_overrides=[env.num_envs=4,ppo.num_steps=16,ppo.num_minibatches=2,ppo.update_epochs=2,"
                 "ppo.total_timesteps=256,\"ppo.hidden_sizes=[16,16]\",run.updates_per_chunk=2,run.checkpoint_every=4]")
# gridworld_island.yaml trains with beta 5; without a divergence beta must be left at its default
METHODS = "methods={none: [alignment.divergence=none, alignment.beta=1.0], projection_b5: []}"
SMALL = [f"train={GRID}", TINY_TRAINING, METHODS, "seeds=[0,1]", "measure.num_envs=8", "measure.progress=false"]
RUNS = ["none-seed0", "none-seed1", "projection_b5-seed0", "projection_b5-seed1"]
T_DF1 = 12.706204736174707  # Student-t 0.975 quantile, 1 degree of freedom


@pytest.fixture(scope="module")
def compile_once(tmp_path_factory):
    """Every run of one method compiles the same XLA programs, and every measurement the same:
    a persistent compilation cache for this module only, so each is compiled once."""
    from jax._src import compilation_cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def small_frontier(tmp_path_factory, compile_once):
    """2 methods x 2 seeds, 4 updates each, measured on 8 worlds; shared by the tests."""
    out = tmp_path_factory.mktemp("frontier") / "out"
    config = load_frontier_config(None, [*SMALL, f"output={out}"])
    return config, frontier(config)


def _copy(small_frontier, tmp_path) -> tuple[FrontierConfig, Path]:
    _, report = small_frontier
    out = tmp_path / "out"
    shutil.copytree(report["output"], out)
    return load_frontier_config(None, [*SMALL, f"output={out}"]), out


def _columns(out: Path, name: str) -> dict[str, np.ndarray]:
    measured = read_measurement(out / "measured" / name)
    return per_env_columns(measured.per_env, measured.per_env, constitution_code_bits(
        "Gridworld-IslandNavigation", "no_water"), "episode_value")


def _numbers(report: dict) -> dict:
    return {name: {k: s[k] for k in ("per_seed", "estimates", "seed_level", "tax", "tax_seed_level", "pareto")}
            for name, s in json.loads(json.dumps(report["methods"])).items()}


class _Counting:
    """Wraps ``function`` (train or measure), records what each call was for and raises on the
    call numbered ``fail_on``."""

    def __init__(self, function, describe, fail_on: int | None = None):
        self.function, self.describe, self.fail_on, self.calls = function, describe, fail_on, []

    def __call__(self, *args, **kwargs):
        self.calls.append(self.describe(*args, **kwargs))
        if len(self.calls) == self.fail_on:
            raise KeyboardInterrupt("killed")
        return self.function(*args, **kwargs)


def _trained(config, resume=False):
    return Path(config.run.dir).name, resume


def _measured(config, agent=None, sampled=None):
    return Path(config.agent).name


# ------------------------------------------------------------------------------ the numbers
def test_a_run_s_numbers_equal_a_separate_measurement_of_its_directory(small_frontier):
    config, report = small_frontier
    out = Path(report["output"])
    saved = json.loads((out / "frontier.json").read_text())
    assert _numbers(saved) == _numbers(report)
    assert list(saved["methods"]) == ["none", "projection_b5"]
    run = saved["methods"]["projection_b5"]["runs"]["1"]
    assert run["run_dir"] == str(out / "runs" / "projection_b5-seed1") and run["trained"] == "now"
    assert run["env_steps"] == 256 and run["steps_per_second"] > 0
    alone = measure(MeasureConfig(agent=run["run_dir"], env="Gridworld-IslandNavigation", constitution="no_water",
                                  num_envs=8, progress=False))
    written = read_measurement(out / "measured" / "projection_b5-seed1")
    for key, values in alone.per_env.items():
        np.testing.assert_array_equal(written.per_env[key], values)
    bits = constitution_code_bits("Gridworld-IslandNavigation", "no_water")
    columns = per_env_columns(alone.per_env, alone.per_env, bits, "episode_value")
    per_seed = saved["methods"]["projection_b5"]["per_seed"]["1"]
    assert per_seed == {c: simple_estimate(columns[c]).as_dict() for c in COLUMNS}
    assert per_seed["upsilon"] == alone.report["estimates"]["upsilon_episode_value"]
    assert per_seed["forbidden_rate"] == alone.report["estimates"]["forbidden_rate"]
    assert per_seed["sigma_b"] == alone.report["estimates"]["sigma_aligned"]
    assert 0 < per_seed["forbidden_rate"]["mean"] < 1  # the agents do walk into the water
    assert saved["num_envs"] == 8 and saved["environments_compared"] == 8 and saved["antithetic"] is False
    assert saved["machine"]["cpu_count"] and saved["config"]["seeds"] == [0, 1]
    assert saved["training_configs"]["none-seed1"]["seed"] == 1
    assert saved["training_configs"]["none-seed1"]["alignment"]["divergence"] == "none"


def test_the_estimates_taxes_and_seed_intervals_by_hand(small_frontier):
    _, report = small_frontier
    out = Path(report["output"])
    columns = {name: _columns(out, name) for name in RUNS}
    for c in COLUMNS:
        none = np.mean([columns["none-seed0"][c], columns["none-seed1"][c]], axis=0)
        proj = np.mean([columns["projection_b5-seed0"][c], columns["projection_b5-seed1"][c]], axis=0)
        method = report["methods"]["projection_b5"]
        assert method["estimates"][c] == simple_estimate(proj).as_dict()
        assert report["methods"]["none"]["estimates"][c] == simple_estimate(none).as_dict()
        assert method["tax"][c] == paired_difference(none, proj, 8, False).as_dict()
        differences = [np.mean(columns[f"none-seed{k}"][c] - columns[f"projection_b5-seed{k}"][c]) for k in (0, 1)]
        mean, sd = np.mean(differences), abs(differences[0] - differences[1]) / math.sqrt(2)
        level = method["tax_seed_level"][c]
        assert level["mean"] == pytest.approx(mean, abs=1e-15)
        assert level["ci95_low"] == pytest.approx(mean - T_DF1 * sd / math.sqrt(2), abs=1e-12)
        assert level["ci95_high"] == pytest.approx(mean + T_DF1 * sd / math.sqrt(2), abs=1e-12)
        means = [np.mean(columns[f"projection_b5-seed{k}"][c]) for k in (0, 1)]
        assert method["seed_level"][c]["mean"] == pytest.approx(np.mean(means), abs=1e-15)
        assert method["seed_level"][c]["sd"] == pytest.approx(np.std(means, ddof=1), abs=1e-15)
    assert report["methods"]["none"]["tax"] is None  # the reference
    assert report["methods"]["projection_b5"]["tax"]["upsilon"]["mean"] != 0.0  # the methods differ
    points = {k: (s["estimates"]["upsilon"]["mean"], s["estimates"]["forbidden_rate"]["mean"])
              for k, s in report["methods"].items()}
    assert {k: s["pareto"] for k, s in report["methods"].items()} == pareto_optimal(points)
    markdown = (out / "frontier.md").read_text()
    assert markdown == format_markdown(report)
    assert "| none (unaligned) |" in markdown and "| projection_b5 |" in markdown
    assert "Does the unaligned agent look more intelligent" in markdown
    assert (out / "frontier.png").stat().st_size > 0


def test_the_t_quantile_agrees_with_scipy_and_with_published_values():
    from scipy import stats

    quantiles = [t_quantile_975(df) for df in range(1, 61)]
    np.testing.assert_allclose(quantiles, stats.t.ppf(0.975, np.arange(1, 61)), rtol=0, atol=1e-12)
    assert quantiles[0] == pytest.approx(T_DF1, abs=1e-9) and quantiles[29] == pytest.approx(2.0422724563, abs=1e-9)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile_975(0)


def test_the_seed_interval_by_hand():
    level = seed_interval([0.1, 0.3, 0.2])
    half = t_quantile_975(2) * 0.1 / math.sqrt(3)  # sd of (0.1, 0.3, 0.2) is 0.1
    assert level["mean"] == pytest.approx(0.2) and level["sd"] == pytest.approx(0.1)
    assert (level["ci95_low"], level["ci95_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert t_quantile_975(2) == pytest.approx(4.302652729911275, abs=1e-9)
    one = seed_interval([0.5])  # one seed: no interval
    assert one["mean"] == 0.5 and one["ci95_low"] is None and one["ci95_high"] is None and one["n"] == 1


# ------------------------------------------------------------------------------ Pareto
def test_pareto_optimal_methods_on_a_hand_made_example():
    points = {
        "a": (0.5, 0.10),
        "same_as_a": (0.5, 0.10),  # equal points do not dominate each other
        "b": (0.4, 0.01),
        "same_as_b": (0.4, 0.01),
        "c": (0.4, 0.05),  # b: as intelligent, more lawful
        "d": (0.3, 0.20),  # dominated by everything but f
        "e": (0.5, 0.20),  # a: as intelligent, more lawful
        "f": (0.6, 0.20),  # the most intelligent
        "g": (0.2, 0.0),  # the most lawful
        "h": (0.2, 0.01),  # g: as intelligent, more lawful
    }
    assert pareto_optimal(points) == {"a": True, "same_as_a": True, "b": True, "same_as_b": True, "c": False,
                                      "d": False, "e": False, "f": True, "g": True, "h": False}
    assert pareto_optimal({"alone": (-1.0, 1.0)}) == {"alone": True}
    assert pareto_optimal({"x": (0.1, 0.1), "y": (0.2, 0.05)}) == {"x": False, "y": True}


# ------------------------------------------------------------------------------ resumability
def test_a_killed_frontier_continues_where_it_stopped(small_frontier, tmp_path, monkeypatch):
    _, original = small_frontier
    config, out = _copy(small_frontier, tmp_path)
    runs, measured = out / "runs", out / "measured"
    shutil.rmtree(measured / "none-seed0")  # a measurement missing
    # a run killed halfway: its checkpoints at update 2 of 4, no summary (the measurement there is
    # of the agent it replaces)
    shutil.rmtree(runs / "projection_b5-seed0")
    half = load_config(GRID, [*config.train_overrides, f"run.dir={runs / 'projection_b5-seed0'}", "seed=0",
                              "run.stop_at_update=2", "run.progress=false", "run.tensorboard=false", "run.plots=false"])
    train(half)
    (runs / "projection_b5-seed0" / "summary.json").unlink()
    shutil.rmtree(runs / "projection_b5-seed1")  # a run never started
    shutil.rmtree(measured / "projection_b5-seed1")
    killed = _Counting(fr.train, _trained, fail_on=2)
    monkeypatch.setattr(fr, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        frontier(config)
    assert killed.calls == [("projection_b5-seed0", True), ("projection_b5-seed1", False)]
    assert (runs / "projection_b5-seed0" / "summary.json").is_file()
    assert not (measured / "projection_b5-seed0").exists()  # removed before its agent was trained again
    trained = _Counting(train, _trained)
    measured_now = _Counting(measure, _measured)
    monkeypatch.setattr(fr, "train", trained)
    monkeypatch.setattr(fr, "measure", measured_now)
    report = frontier(config)
    assert trained.calls == [("projection_b5-seed1", False)]
    assert measured_now.calls == ["none-seed0", "projection_b5-seed0", "projection_b5-seed1"]
    assert _numbers(report) == _numbers(original)  # the resumed run ends where the uninterrupted one did
    runs_now = {(m, k): r for m, s in report["methods"].items() for k, r in s["runs"].items()}
    assert runs_now["projection_b5", "0"]["trained"] == "earlier"  # resumed by the killed command
    assert runs_now["projection_b5", "1"]["trained"] == "now"
    assert runs_now["none", "1"]["trained"] == "earlier"
    assert not runs_now["none", "1"]["measured"]["env"]["measured_now"]
    assert not list(measured.glob(".*.partial"))


def test_a_run_or_measurement_of_another_config_is_refused_before_anything_runs(small_frontier, tmp_path,
                                                                                monkeypatch):
    config, out = _copy(small_frontier, tmp_path)
    monkeypatch.setattr(fr, "train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(fr, "measure", lambda *a, **k: pytest.fail("measured"))
    other = load_frontier_config(None, [*SMALL, "train_overrides=[env.num_envs=4,ppo.num_steps=16,"
                                        "ppo.num_minibatches=2,ppo.update_epochs=2,ppo.total_timesteps=256,"
                                        "\"ppo.hidden_sizes=[16,16]\",ppo.lr=0.01]", f"output={out}"])
    with pytest.raises(ConfigError, match=r"none-seed0 was trained with another config \(ppo.lr: saved 0.001, "
                                          r"now 0.01\)"):
        frontier(other)
    with pytest.raises(ConfigError, match=r"none-seed0 was measured with another config \(seed: 0 there, 3 here\)"):
        frontier(load_frontier_config(None, [*SMALL, "measure.seed=3", f"output={out}"]))


def test_the_command_prints_the_frontier_read_back(small_frontier, tmp_path, monkeypatch, capsys):
    _, out = _copy(small_frontier, tmp_path)
    monkeypatch.setattr(fr, "train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(fr, "measure", lambda *a, **k: pytest.fail("measured"))
    assert main(["frontier", *SMALL, f"output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "[1/4] none seed 0: trained earlier" in printed and "| projection_b5 |" in printed
    assert f"{out}/frontier.json, {out}/frontier.md, {out}/frontier.png" in printed
    assert json.loads((out / "frontier.json").read_text())["command"].startswith("aligned-rl frontier train=")


# ------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def bare_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bare") / "bare.yaml"
    path.write_text("env:\n  name: Gridworld-IslandNavigation\n")  # constitution.name: none
    return str(path)


@pytest.mark.parametrize("overrides,message", [
    (["train={bare}"], "trains with constitution.name=none"),
    (["methods={none: [alignment.divergence=none, alignment.beta=1.0], bad: [alignment.bogus=1]}"],
     "method bad: .*unknown config key 'alignment.bogus'"),
    (["methods={none: [alignment.divergence=none], p: []}"], "method none: alignment.beta=5.0 has no effect"),
    (["methods={none: [alignment.divergence=none, alignment.beta=1.0, seed=3]}"],
     "method none sets seed, which has no effect"),
    (["methods={none: [alignment.divergence=none, alignment.beta=1.0, run.dir=x]}"], "method none sets run.dir"),
    (["unaligned=plain"], "unaligned=plain is not among the methods"),
    (["methods={}"], "methods is empty"),
    (["methods={a/b: []}"], "'a/b' is not usable as a directory name"),
    (["seeds=[]"], "seeds is empty"),
    (["seeds=[0,1,0]"], "seeds lists 0 more than once"),
    (["measure.env=CartPole-v1"], "measure.env=CartPole-v1 differs from the training config's env"),
    (["measure.constitution=no_water_at_all"], "measure.constitution=no_water_at_all differs"),
    (["measure.sampling=stratified"], "measure.sampling must be simple"),
    (["measure.agent=random"], "measure.agent has no effect"),
    (["measure.episode_length=50"], "episode_length=50 has no effect: Gridworld-IslandNavigation is episodic"),
    (["measure.antithetic=true"], "does not adapt to the rewards"),
    (["train_overrides=[constitution.params.safety_margin=2.0]"],
     r"trains with other rules than the measurement judges with \(constitution.params.safety_margin=2"),
    (["train=configs/no_such.yaml"], "does not exist"),
    (["bogus=1"], "unknown key 'bogus'"),
])
def test_bad_input_is_refused_naming_the_fix(overrides, message, bare_config):
    overrides = [o.replace("{bare}", bare_config) for o in overrides]
    # an override of methods replaces the small frontier's (merged dictionaries keep their keys)
    small = [o for o in SMALL if not (o.startswith("methods=") and any(k.startswith("methods=") for k in overrides))]
    with pytest.raises(ConfigError, match=message):
        load_frontier_config(None, [*small, *overrides])


def test_the_command_refuses_with_exit_code_2(capsys):
    assert main(["frontier", *SMALL, "seeds=[]"]) == 2
    assert "seeds is empty" in capsys.readouterr().err
    assert main(["frontier", *SMALL, "measure.sampling=stratified"]) == 2
    assert "measure.sampling must be simple" in capsys.readouterr().err
    assert main(["frontier", "seeds=[0]"]) == 2
    assert "train is not given" in capsys.readouterr().err


METHOD_NAMES = ["none", "projection_b0.1", "projection_b1", "projection_b10", "tv_b1", "tv_b0.1", "js_b1", "js_b0.1",
                "kl_sigma_pi_b1", "kl_sigma_pi_b0.1", "kl_pi_sigma_b1", "kl_pi_sigma_b0.1", "shaped_w0.5", "shield",
                "shield_projection_b1", "lagrange", "pid_lagrange", "saute"]


@pytest.mark.parametrize("family,env", [("cartpole", "CartPole-v1"), ("gridworld", "Gridworld-IslandNavigation"),
                                        ("programs", "BF-programs")])
def test_the_shipped_configs_load_with_every_method(family, env, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_frontier_config(str(REPO / "configs" / f"frontier_{family}.yaml"))
    assert list(config.methods) == METHOD_NAMES and config.seeds == [0, 1, 2] and config.unaligned == "none"
    assert config.measure.env == env and config.output == f"measurements/frontier-{family}"
    runs, antithetic = fr.check_frontier_config(config)
    assert len(runs) == 54 and antithetic is False
    by_name = {r.name: r.config for r in runs}
    assert by_name["none-seed0"].alignment.divergence == "none"
    assert by_name["projection_b10-seed2"].alignment.beta == 10.0 and by_name["projection_b10-seed2"].seed == 2
    assert by_name["kl_pi_sigma_b1-seed0"].constitution.eps == 0.01
    assert by_name["pid_lagrange-seed0"].alignment.lagrange.kp > 0
    assert by_name["saute-seed0"].alignment.saute.enabled and by_name["saute-seed0"].alignment.divergence == "none"
