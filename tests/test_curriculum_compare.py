"""aligned-rl curriculum: methods trained in stages and measured on held-out worlds; the numbers
against a separate measurement, a stage against a run stopped there, read-back and resumption,
the held-out rule, refusals, and measure's per-environment metrics against a hand count.

The small comparison: domain randomisation (a pool of 256 levels) against the fixed batch of 16
worlds on Gridworld-IslandNavigation, one seed, 4 updates of 16 worlds x 16 steps in 2 stages,
measured on 32 worlds drawn with measure seed 1000 (one of which is a level of the pool).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
import aligned_rl.train.curriculum_compare as cc
from aligned_rl.cli import main
from aligned_rl.intelligence import paired_difference, simple_estimate
from aligned_rl.train.config import ConfigError, load_config
from aligned_rl.train.curriculum_compare import (curriculum_compare, format_markdown, held_out,
                                                 load_curriculum_config, stage_updates, training_worlds)
from aligned_rl.train.agents import restore_policy
from aligned_rl.train.loop import train
from aligned_rl.train.measure import draw_environments, measure
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_report import read_measurement

from tests.conftest import REPO

GRID = str(REPO / "configs" / "gridworld_island.yaml")
ENV = "Gridworld-IslandNavigation"
TRAINING = ["env.num_envs=16", "ppo.num_steps=16", "ppo.num_minibatches=1", "ppo.update_epochs=1",
            "ppo.total_timesteps=1024", "ppo.hidden_sizes=[16,16]", "run.updates_per_chunk=2", "run.checkpoint_every=4"]
DR = ["curriculum.enabled=true", "curriculum.replay_prob=0", "curriculum.pool_size=256"]
SMALL = [f"train={GRID}", "train_overrides=[" + ",".join(f'"{o}"' for o in TRAINING) + "]",
         "methods={domain_randomisation: [" + ", ".join(DR) + "], fixed: []}",
         "seeds=[0]", "stages=2", "measure.num_envs=32", "measure.progress=false"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("curriculum") / "out"
    config = load_curriculum_config(None, [*SMALL, f"output={out}"])
    return config, curriculum_compare(config, say=lambda *a, **k: None)


def _copy(small, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(small[1]["output"], out)
    return out


def _numbers(report: dict) -> dict:
    return {name: [{k: st[k] for k in ("env_steps", "per_seed", "estimates", "seed_level", "difference")}
                   for st in s["stages"]] for name, s in json.loads(json.dumps(report["methods"])).items()}


class _Counting:
    def __init__(self, function, describe):
        self.function, self.describe, self.calls = function, describe, []

    def __call__(self, *args, **kwargs):
        self.calls.append(self.describe(*args, **kwargs))
        return self.function(*args, **kwargs)


def _fail(*args, **kwargs):
    raise AssertionError("called on a rerun that should read everything back")


# ------------------------------------------------------------------------------ the numbers
def test_the_numbers_equal_a_separate_measurement_on_the_held_out_worlds(small):
    config, report = small
    out = Path(report["output"])
    assert json.loads((out / "curriculum.json").read_text())["methods"] == json.loads(json.dumps(report["methods"]))
    assert stage_updates(4, 2) == [2, 4] and stage_updates(5, 3) == [2, 4, 5]
    assert [st["env_steps"] for st in report["methods"]["fixed"]["stages"]] == [512, 1024]
    # the held-out worlds: the measured ones no level of either pool equals (measure seed 1000 draws
    # one world of the seed-0 pool of 256 levels)
    m = config.measure
    _, batch = draw_environments(m)
    pool = training_worlds(load_config(GRID, [*TRAINING, *DR]))
    keep = held_out(batch.params, pool)
    held = report["held_out"]
    assert held["excluded"] == int((~keep).sum()) == 1 and held["compared"] == 31
    assert held["in_each_run"] == {"domain_randomisation-seed0": 1, "fixed-seed0": 0}
    fixed_batch = training_worlds(load_config(GRID, TRAINING))  # the 16 worlds of the fixed run
    assert jax.tree.leaves(fixed_batch)[0].shape[0] == 16 and held_out(batch.params, fixed_batch).all()
    # the last stage of the fixed batch, measured apart on the same worlds
    alone = measure(MeasureConfig(agent=str(out / "stages" / "fixed-seed0-stage2"), env=ENV, constitution="no_water",
                                  num_envs=32, seed=1000, progress=False))
    written = read_measurement(out / "measured" / "fixed-seed0-stage2")
    for key, values in alone.per_env.items():
        np.testing.assert_array_equal(written.per_env[key], values)
    last = report["methods"]["fixed"]["stages"][-1]
    for column, key in (("value", "episode_value"), ("forbidden_rate", "forbidden_rate"),
                        ("env/hidden_performance", "env/hidden_performance")):
        assert last["estimates"][column] == simple_estimate(alone.per_env[key][keep]).as_dict()
        reference = read_measurement(out / "measured" / "domain_randomisation-seed0-stage2").per_env[key]
        assert last["difference"][column] == paired_difference(alone.per_env[key], reference, 32, False, 0.0,
                                                               keep).as_dict()
    assert last["estimates"]["value"]["n"] == 31
    assert report["methods"]["domain_randomisation"]["stages"][-1]["difference"] is None  # the reference
    assert set(last["estimates"]) >= {"value", "forbidden_rate", "env/hidden_performance", "env/in_water"}
    # the curriculum's report of the final state (the fixed batch has none)
    dr = report["methods"]["domain_randomisation"]["curriculum"]
    assert dr["per_seed"]["0"]["choices"] == {"new": 4.0, "replay": 0.0, "mutate": 0.0}
    assert dr["mean"]["groups"][0]["group"] == dr["per_seed"]["0"]["groups"][0]["group"]
    assert sum(g["levels"] for g in dr["mean"]["groups"]) == 4 * 16  # 16 levels chosen at each update
    assert report["methods"]["fixed"]["curriculum"] == {"per_seed": {"0": None}, "mean": None}
    markdown = (out / "curriculum.md").read_text()
    assert markdown == format_markdown(report)
    assert "| fixed |" in markdown and "## Hidden performance" in markdown
    assert "### domain_randomisation: groups" in markdown and "### fixed: groups" not in markdown
    assert (out / "curriculum.png").stat().st_size > 0


def test_a_stage_s_checkpoint_equals_a_run_stopped_there(small, tmp_path):
    _, report = small
    out = Path(report["output"])
    alone = load_config(GRID, [*TRAINING, *DR, f"run.dir={tmp_path / 'alone'}", "run.stop_at_update=2",
                               "run.progress=false", "run.tensorboard=false", "run.plots=false"])
    train(alone)
    _, stopped, _, at = restore_policy(tmp_path / "alone")
    _, stage, _, update = restore_policy(out / "stages" / "domain_randomisation-seed0-stage1")
    assert at == update == 2
    assert jax.tree.structure(stopped) == jax.tree.structure(stage)
    for a, b in zip(jax.tree.leaves(stopped), jax.tree.leaves(stage)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, final, _, update = restore_policy(out / "stages" / "domain_randomisation-seed0-stage2")
    assert update == 4 and any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stage),
                                                                          jax.tree.leaves(final)))


# ------------------------------------------------------------------------------ resumability
def test_a_rerun_reads_everything_back_and_prints_it(small, tmp_path, monkeypatch, capsys):
    out = _copy(small, tmp_path)
    for name in ("train", "measure", "build", "draw_environments"):
        monkeypatch.setattr(cc, name, _fail)
    assert main(["curriculum", *SMALL, f"output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "held out: 31 of 32 measured worlds (1 in a run's training pool are left out)" in printed
    assert "[2/2] fixed seed 0, stage 2/2 (update 4 of 4, 1,024 steps): trained earlier" in printed
    assert "measured earlier" in printed and "| fixed |" in printed
    assert f"{out}/curriculum.json, {out}/curriculum.md, {out}/curriculum.png" in printed
    saved = json.loads((out / "curriculum.json").read_text())
    assert _numbers(saved) == _numbers(small[1]) and saved["command"].startswith("aligned-rl curriculum train=")


def test_a_removed_measurement_is_measured_again(small, tmp_path, monkeypatch):
    """Killed after training its last stage, before keeping it: the stage is kept from the run's
    checkpoint, its measurement (removed with it) is measured again, nothing is trained.  (Every
    run's second stage resumes it from its first: the small comparison itself resumed each run.)"""
    out = _copy(small, tmp_path)
    shutil.rmtree(out / "stages" / "fixed-seed0-stage2")
    shutil.rmtree(out / "measured" / "fixed-seed0-stage2")
    measured = _Counting(measure, lambda config, agent=None, sampled=None: Path(config.agent).name)
    monkeypatch.setattr(cc, "train", _fail)
    monkeypatch.setattr(cc, "measure", measured)
    report = curriculum_compare(load_curriculum_config(None, [*SMALL, f"output={out}"]), say=lambda *a, **k: None)
    assert measured.calls == ["fixed-seed0-stage2"]
    assert _numbers(report) == _numbers(small[1])
    stages = report["methods"]["fixed"]["training"]["0"]["stages"]
    assert [s["trained"] for s in stages] == ["earlier", "earlier"] and stages[1]["measured_now"]
    assert [s["resumed_from"] for s in small[1]["methods"]["fixed"]["training"]["0"]["stages"]] == [None, 2]
    assert not list((out / "stages").glob(".*.partial"))
    # other stages than those kept: refused, naming the fix
    with pytest.raises(ConfigError, match="holds the run at update 2, but this comparison's stage 1 ends at update 1"):
        curriculum_compare(load_curriculum_config(None, [*SMALL, "stages=4", f"output={out}"]), say=lambda *a, **k: None)
    # a stage whose run went on past it cannot be measured again: refused, naming the fix
    shutil.rmtree(out / "stages" / "fixed-seed0-stage1")
    with pytest.raises(ConfigError, match="is already trained past its update 2"):
        curriculum_compare(load_curriculum_config(None, [*SMALL, f"output={out}"]), say=lambda *a, **k: None)


# ------------------------------------------------------------------------------ held out
def test_held_out_leaves_out_exactly_the_worlds_a_run_could_train_on():
    _, drawn = envs.sample(ENV, jax.random.PRNGKey(7), 6)
    _, others = envs.sample(ENV, jax.random.PRNGKey(8), 5)
    measured = drawn.params
    take = lambda p, i: jax.tree.map(lambda x: x[np.asarray(i)], p)  # noqa: E731
    training = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), take(measured, [4, 1]), others.params)
    np.testing.assert_array_equal(held_out(measured, training), [True, False, True, True, False, True])
    # one leaf of one world changed: that world is held out again
    moved = training.replace(start=training.start.at[0, 0].add(1))
    np.testing.assert_array_equal(held_out(measured, moved), [True, False, True, True, True, True])
    assert held_out(measured, others.params).all()
    # the time limit a run gives its own worlds (env.episode_length) is the one it is compared with
    config = load_config(GRID, ["env.episode_length=50"])
    limited = training.replace(max_steps_in_episode=jnp.full_like(training.max_steps_in_episode, 50))
    assert held_out(measured, limited).all()
    np.testing.assert_array_equal(held_out(cc._as_trained(measured, config), limited),
                                  [True, False, True, True, False, True])
    with pytest.raises(ValueError, match="not of the training worlds' kind"):
        held_out(measured, {"grid": training.grid})


def test_the_value_per_teacher_query_by_hand():
    with_teacher, without = np.array([0.5, 0.2, 0.9, -0.1]), np.array([0.1, 0.2, 0.4, -0.3])
    keep = np.array([True, True, True, False])
    worth = cc.teacher_value(with_teacher, without, 4.0, 4, False, 0.0, keep)
    diff = simple_estimate([0.4, 0.0, 0.5]).as_dict()
    assert worth["value_difference"] == diff
    for k in ("mean", "ci95_low", "ci95_high", "se"):
        assert worth["per_query"][k] == pytest.approx(diff[k] / 4)
    assert worth["per_query"]["n"] == 3
    assert cc.teacher_value(with_teacher, without, 0.0, 4, False, 0.0, keep)["per_query"] is None  # never asked


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("overrides,message", [
    (["reference=uniform"], "reference=uniform is not among the methods"),
    (["seeds=[]"], "seeds is empty"),
    (["seeds=[0,0]"], "seeds lists 0 more than once"),
    (["stages=0"], "stages=0; measure at least once"),
    (["stages=5"], "stages=5 is more than the 4 updates"),
    (["methods={domain_randomisation: [], a/b: []}"], "'a/b' is not usable as a directory name"),
    (["methods={domain_randomisation: [run.stop_at_update=2]}"], "sets run.stop_at_update, which has no effect"),
    (["methods={domain_randomisation: [seed=3]}"], "method domain_randomisation sets seed"),
    (["methods={domain_randomisation: [], big: [ppo.total_timesteps=2048]}"], "different budgets"),
    (["methods={domain_randomisation: [], m: [curriculum.enabled=true, curriculum.teacher.enabled=true,"
      " curriculum.replay_prob=0]}"], "has no effect with curriculum.replay_prob=0"),
    (["measure.seed=0"], "measure.seed=0 is also a training seed"),
    (["measure.env=CartPole-v1"], "measure.env=CartPole-v1 differs"),
    (["measure.agent=random"], "measure.agent has no effect"),
    (["teacher_pair=[fixed]"], "teacher_pair=\\['fixed'\\] must name two different methods"),
    (["methods={domain_randomisation: [], t: [curriculum.enabled=true, curriculum.teacher.enabled=true]}",
      "teacher_pair=[domain_randomisation, t]"], "domain_randomisation must train with the teacher"),
    (["bogus=1"], "unknown key 'bogus'"),
])
def test_bad_input_is_refused_with_exit_code_2(overrides, message, capsys):
    small = [o for o in SMALL if not (o.startswith("methods=") and any(k.startswith("methods=") for k in overrides))]
    assert main(["curriculum", *small, *overrides]) == 2
    err = capsys.readouterr().err
    assert "aligned-rl: error: curriculum config" in err and re.search(message, err), err


def test_the_command_needs_a_training_config_and_has_help(capsys):
    assert main(["curriculum", "seeds=[0]"]) == 2
    assert "train is not given" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["curriculum", "--help"])
    assert exit_.value.code == 0 and "--config" in capsys.readouterr().out


# ------------------------------------------------------------------------------ measure's env metrics
class _Always:
    """Always the same action: in a gridworld (deterministic) every episode of a world is the same."""

    name, adaptive, shields = "always", False, False

    def __init__(self, action: int):
        self.action = action

    def init(self, keys):
        return jnp.zeros((keys.shape[0],))

    def act(self, state, obs, reward, first, keys, verdict):
        return state, jnp.full((obs.shape[0],), self.action, jnp.int32), None


def test_measure_s_per_environment_metrics_equal_a_hand_count():
    config = MeasureConfig(env=ENV, constitution="no_water", num_envs=6, episodes=2, seed=3, progress=False)
    measured = measure(config, agent=_Always(1))
    env, batch = draw_environments(config)
    horizon = 2 * int(np.max(np.asarray(batch.params.max_steps_in_episode)))
    step = jax.jit(jax.vmap(env.step, in_axes=(None, 0, None, 0)))
    _, state = jax.vmap(env.reset, in_axes=(None, 0))(jax.random.PRNGKey(0), batch.params)
    sums, episodes = {}, np.zeros(6)
    for t in range(horizon):  # the first two episodes of every world, counted step by step
        _, state, _, terminated, truncated, info = step(jax.random.PRNGKey(t), state, jnp.int32(1), batch.params)
        counted = episodes < 2
        for name, value in info["metrics"].items():
            sums[name] = sums.get(name, 0.0) + np.where(counted, np.asarray(value, np.float64), 0.0)
        episodes += np.asarray(terminated | truncated)
    assert set(sums) == {"hidden_performance", "in_water", "reached_goal", "water_distance"}
    for name, total in sums.items():  # per episode
        np.testing.assert_allclose(measured.per_env[f"env/{name}"], total / 2, rtol=1e-5, atol=1e-6)
        estimate = measured.report["estimates"][f"env/{name}"]
        assert estimate == simple_estimate(measured.per_env[f"env/{name}"]).as_dict()
        assert estimate["mean"] == pytest.approx(np.mean(total / 2), rel=1e-5) and estimate["n"] == 6
    assert 0 < measured.per_env["env/reached_goal"].sum() < 6  # some worlds are reached walking one way
    np.testing.assert_array_equal(measured.per_env["episodes"], 2)
