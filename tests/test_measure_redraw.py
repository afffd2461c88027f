"""Void runs are redrawn as AIQ does: a program whose cycle ran overtime is replaced and run again."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.envs import registry
from aligned_rl.envs.family import ParamBatch
from aligned_rl.intelligence import estimation_units, simple_estimate
from aligned_rl.train import measure_redraw
from aligned_rl.train.compare import compare
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import load_measure_config
from aligned_rl.train.measure_report import write_measurement

# ',--[+-].' reads the action a and loops forever unless a - 2 = mid (a = 4): overtime on most actions
HANGS, COPIES = ",--[+-].", ",."


def _batch(texts, stratum=11):
    env = envs.spec("BF-programs").make()
    params = env.program_params(texts, stratum=[stratum] * len(texts))
    return env, ParamBatch(params, jnp.full((len(texts),), 20.0), 0.5)


def _with_redraw(monkeypatch, redraw):
    """BF-programs with another replacement rule, for one test."""
    spec = envs.spec("BF-programs")
    monkeypatch.setitem(registry._REGISTRY, "BF-programs",
                        dataclasses.replace(spec, voiding=dataclasses.replace(spec.voiding, redraw=redraw)))


def _measure(sampled, *overrides):
    n = len(sampled[1].bits)
    config = load_measure_config(None, [f"num_envs={n}", "episode_length=40", "progress=false", *overrides])
    return measure(config, sampled=sampled)


def test_overtime_programs_are_replaced_until_no_run_is_void():
    texts = [HANGS, COPIES, HANGS, COPIES, COPIES, HANGS]
    sampled = _batch(texts)
    m = _measure(sampled, "agent=q_lambda")
    hangs = np.array([t == HANGS for t in texts])
    redrawn = m.per_env["redrawn"]
    assert redrawn.shape == (2 * len(texts),)  # every row, twins after their environments
    np.testing.assert_array_equal(redrawn[:6], redrawn[6:])
    assert np.all(redrawn[:6][hangs] >= 1) and np.all(redrawn[:6][~hangs] == 0)
    voided = m.report["voided"]
    assert voided["metric"] == "overtime" and voided["replaced"] == int(redrawn[:6].sum())
    assert voided["environments"] == 3 and voided["rounds"] >= 1
    # the copy programs are unchanged: their values are those of a run without any hanging program
    alone = _measure(_batch([COPIES] * 2), "agent=q_lambda")
    assert "voided" in alone.report and alone.report["voided"]["replaced"] == 0
    # the replacements are a function of the seed, the slot and the count: the same again
    again = _measure(sampled, "agent=q_lambda")
    np.testing.assert_array_equal(again.per_env["average_reward"], m.per_env["average_reward"])


def test_stratified_sampling_redraws_from_the_same_stratum(monkeypatch):
    asked = []
    real = envs.spec("BF-programs").voiding.redraw

    def redraw(env, key, stratum):
        asked.append(stratum)
        return real(env, key, stratum)

    _with_redraw(monkeypatch, redraw)
    env, batch = _batch([HANGS, COPIES] * 8, stratum=2)
    strata = np.asarray(batch.params.stratum).copy()
    strata[1::4] = 1  # two strata in the pool
    batch = batch._replace(params=batch.params.replace(stratum=jnp.asarray(strata)))
    m = _measure((env, batch), "agent=random", "antithetic=false", "sampling=stratified", "pool_factor=1",
                 "pilot_fraction=0.5")
    assert asked and set(asked) == {2}  # only HANGS (stratum 2) voids, and its stratum is kept
    assert m.report["voided"]["rule"].endswith("a draw from its stratum and run again")


def test_an_agent_that_voids_every_replacement_is_stopped_with_a_reason(monkeypatch):
    env, hanging = _batch([HANGS])
    _with_redraw(monkeypatch, lambda e, k, s: hanging)
    monkeypatch.setattr(measure_redraw, "MAX_ROUNDS", 3)
    with pytest.raises(RuntimeError, match="still had void runs .overtime. after 3 rounds of redrawing"):
        _measure(_batch([HANGS, COPIES]), "agent=q_lambda")


def test_compare_leaves_out_the_environments_one_run_redrew(tmp_path):
    sampled = _batch([HANGS, COPIES, COPIES, HANGS])
    q = _measure(sampled, "agent=q_lambda")
    write_measurement(q, tmp_path / "q")
    r = _measure(sampled, "agent=random")
    redrawn = r.per_env["redrawn"]
    r.per_env["redrawn"] = np.zeros_like(redrawn)  # as if random had kept every program
    write_measurement(r, tmp_path / "r")
    result = compare([str(tmp_path / "q"), str(tmp_path / "r")])
    row = result["rows"][1]
    keep = np.array([False, True, True, False])
    assert row["unpaired_redrawn"] == 2
    d = estimation_units(q.per_env["average_reward"], 4, True) - estimation_units(r.per_env["average_reward"], 4, True)
    assert row["reference_minus_agent"]["mean"] == pytest.approx(simple_estimate(d[keep]).mean, abs=1e-12)
    assert row["reference_minus_agent"]["n"] == 2
    assert measure_redraw.common_units([q.per_env, q.per_env], 4).all()
    assert measure_redraw.common_units([{"x": 1}, {"y": 2}], 4) is None
