"""The curriculum (train/curriculum.py): the level buffer against a plain-Python reference,
PLR's replay distribution, the scores, mutations after replays, error analysis's conditioned
draws, a curriculum run that resumes bit for bit with its buffer, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.envs.family import CurriculumSpec
from aligned_rl.train import curriculum as C
from aligned_rl.train import loop
from aligned_rl.train.config import ConfigError, load_config
from tests.conftest import REPO, TINY, run_cli

ISLAND = str(REPO / "configs" / "gridworld_island.yaml")


def _config(*overrides, num_envs=4, antithetic=False):
    base = ["curriculum.enabled=true", "curriculum.pool_size=64", "curriculum.buffer_size=8"]
    cfg = load_config(None, [*TINY, f"env.num_envs={num_envs}", *base, *overrides])
    cfg.env.antithetic = antithetic  # the toy levels below need no policy that reads rewards
    return cfg


def _pool(size=64, groups=4) -> C.Pool:
    """Levels that are just their ids; level i is in group i % groups."""
    group = np.arange(size) % groups
    order = np.argsort(group, kind="stable")
    count = np.bincount(group, minlength=groups)
    return C.Pool({"id": jnp.arange(size)}, jnp.asarray(group, jnp.int32), jnp.asarray(order, jnp.int32),
                  jnp.asarray(np.cumsum(count) - count, jnp.int32), jnp.asarray(count, jnp.int32))


def _group_of_id(params):
    return (params["id"] % 4).astype(jnp.int32)


def _curriculum(cfg, spec=None, groups=("g0", "g1", "g2", "g3"), updates=100, episodic=True):
    return C.Curriculum(cfg, spec, groups, updates, episodic)


SPEC = CurriculumSpec(groups=("g0", "g1", "g2", "g3"), group=_group_of_id,
                      mutate=lambda key, p, edits: {"id": p["id"] + 1000 * edits})


# ------------------------------------------------------------------ the reference buffer
class ReferenceBuffer:
    """The buffer's rules in plain Python: replayed entries are rescored; every other level goes
    into the first free entry, or replaces the lowest-scored entry (the first of equals) when its
    score is higher, one level at a time in slot order."""

    def __init__(self, size):
        self.entries = [None] * size  # (id, score, last, replays)

    def finish(self, ids, entries, scores, switch):
        for i, (level, entry, score) in enumerate(zip(ids, entries, scores)):
            if entry >= 0:
                _, _, _, replays = self.entries[entry]
                self.entries[entry] = (self.entries[entry][0], score, switch, replays + 1)
        for level, entry, score in zip(ids, entries, scores):
            if entry >= 0:
                continue
            free = [j for j, e in enumerate(self.entries) if e is None]
            if free:
                self.entries[free[0]] = (level, score, switch, 0)
                continue
            lowest = min(range(len(self.entries)), key=lambda j: (self.entries[j][1], j))
            if score > self.entries[lowest][1]:
                self.entries[lowest] = (level, score, switch, 0)


class FakeSteps(NamedTuple):
    done: jax.Array
    finished_return: jax.Array
    paid: jax.Array
    violated: jax.Array


def _fake_rollout(rng, n, t=5):
    """[T, N] steps with random advantages, values, episode ends and returns."""
    done = rng.random((t, n)) < 0.3
    steps = FakeSteps(
        done=jnp.asarray(done),
        finished_return=jnp.asarray(np.where(done, rng.normal(size=(t, n)), 0.0), jnp.float32),
        paid=jnp.asarray(rng.normal(size=(t, n)), jnp.float32),
        violated=jnp.asarray(rng.random((t, n)) < 0.1),
    )
    value = jnp.asarray(rng.normal(size=(t, n)), jnp.float32)
    advantages = jnp.asarray(rng.normal(size=(t, n)), jnp.float32)
    return steps, value, advantages


@pytest.mark.parametrize("score", ["value_loss", "learnability", "max_mc"])
def test_buffer_follows_the_plain_python_reference(score):
    cfg = _config(f"curriculum.score={score}", "curriculum.replay_prob=0.5")
    cur = _curriculum(cfg)
    pool = _pool()
    cs = cur.init(jax.random.PRNGKey(0), pool)
    ref = ReferenceBuffer(cfg.curriculum.buffer_size)
    rng = np.random.default_rng(0)
    choose, accumulate, finish = jax.jit(cur.choose), jax.jit(cur.accumulate), jax.jit(cur.finish)
    kinds = []
    for switch in range(12):
        cs = choose(cs, pool)
        kinds.append(int(cs.kind))
        ids, entries = np.asarray(cs.slots["id"]), np.asarray(cs.slot_entry)
        if int(cs.kind) == C.REPLAY:  # replayed levels are distinct buffer entries holding those levels
            assert len(set(entries.tolist())) == len(entries)
            assert [ref.entries[e][0] for e in entries] == ids.tolist()
        else:
            assert (entries == -1).all()
        steps, value, adv = _fake_rollout(rng, 4)
        cs = accumulate(cs, steps, value, adv, None)
        scores, failure, best = (np.asarray(x) for x in cur.scores(cs))
        # the scores, recomputed in numpy
        a, v, d, r = (np.asarray(x) for x in (adv, value, steps.done, steps.finished_return))
        p = (d * (r > 0)).sum(0) / np.maximum(d.sum(0), 1)
        assert np.allclose(failure, np.where(d.sum(0) > 0, 1 - p, 1.0))
        if score == "value_loss":
            assert np.allclose(scores, np.maximum(a, 0).mean(0), atol=1e-6)
        elif score == "learnability":
            assert np.allclose(scores, np.where(d.sum(0) > 0, p * (1 - p), 0.0), atol=1e-6)
        else:
            stored = np.full(len(ids), -np.inf)
            rollout_best = np.max(np.where(d, r, -np.inf), axis=0)
            if int(cs.kind) == C.REPLAY:
                stored = np.asarray(cs.max_return)[entries]
            want_best = np.maximum(stored, rollout_best)
            assert np.allclose(best, want_best)
            want = np.where(np.isfinite(want_best), want_best - v.mean(0), np.maximum(a, 0).mean(0))
            assert np.allclose(scores, want, atol=1e-5)
        ref.finish(ids.tolist(), entries.tolist(), scores.tolist(), switch)
        cs = finish(cs)
        got = [(int(i), float(s), int(last), int(n)) if ok else None for i, s, last, n, ok in
               zip(np.asarray(cs.levels["id"]), np.asarray(cs.score), np.asarray(cs.last), np.asarray(cs.replays),
                   np.asarray(cs.valid))]
        for g, w in zip(got, ref.entries):
            assert (g is None) == (w is None)
            if g is not None:
                assert g[0] == w[0] and math.isclose(g[1], w[1], rel_tol=1e-6, abs_tol=1e-7) and g[2:] == w[2:]
    assert C.REPLAY in kinds and C.NEW in kinds
    assert int(cs.switches) == 12


def test_replay_distribution_is_prioritised_level_replay():
    cfg = _config("curriculum.temperature=0.5", "curriculum.staleness_coef=0.25")
    score = jnp.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.0], jnp.float32)
    last = jnp.array([1, 4, 0, 2, 5, 0], jnp.int32)
    valid = jnp.array([True, True, True, True, True, False])
    p = np.asarray(C.replay_probabilities(cfg.curriculum, score, last, valid, jnp.int32(6)))
    # plain Python: ranks among the valid entries, h = (1 / rank)^(1 / T); staleness now - last
    valid_scores = sorted([(s, i) for i, s in enumerate([0.3, 0.9, 0.1, 0.5, 0.7])], reverse=True)
    rank = {i: r + 1 for r, (_, i) in enumerate(valid_scores)}
    h = [(1 / rank[i]) ** 2 for i in range(5)]
    stale = [6 - x for x in [1, 4, 0, 2, 5]]
    want = [0.75 * h[i] / sum(h) + 0.25 * stale[i] / sum(stale) for i in range(5)] + [0.0]
    assert np.allclose(p, want, atol=1e-6)
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-6)
    # the first level a replay draws follows it
    cur = _curriculum(dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_envs=1)))
    cs = cur.init(jax.random.PRNGKey(0), _pool())
    cs = cs.replace(score=jnp.concatenate([score, jnp.zeros(2)]), last=jnp.concatenate([last, jnp.zeros(2, jnp.int32)]),
                    valid=jnp.concatenate([valid, jnp.zeros(2, bool)]), switches=jnp.int32(6))
    draws = jax.vmap(lambda k: cur._replayed(cs, k)[0])(jax.random.split(jax.random.PRNGKey(1), 20000))
    freq = np.bincount(np.asarray(draws), minlength=8)[:6] / 20000
    assert np.allclose(freq, want, atol=0.015)


def test_mutations_follow_replays_and_new_levels_come_from_the_pool_in_order():
    cfg = _config("curriculum.mutate=true", "curriculum.replay_prob=1.0", "curriculum.edits=2")
    cur = _curriculum(cfg, SPEC)
    pool = _pool()
    cs = cur.init(jax.random.PRNGKey(0), pool)
    choose, finish = jax.jit(cur.choose), jax.jit(cur.finish)
    seen = []
    for _ in range(6):
        cs = choose(cs, pool)
        seen.append((int(cs.kind), np.asarray(cs.slots["id"]).tolist()))
        cs = finish(cs)
    # new levels until the buffer holds a batch, then replay and mutation alternate
    assert seen[0] == (C.NEW, [0, 1, 2, 3])
    assert [k for k, _ in seen[1:]] == [C.REPLAY, C.MUTATE, C.REPLAY, C.MUTATE, C.REPLAY]
    assert sorted(seen[1][1]) == [0, 1, 2, 3]
    assert seen[2][1] == [i + 2000 for i in seen[1][1]]  # 2 edits of each replayed level
    assert seen[4][1] == [i + 2000 for i in seen[3][1]]
    assert np.asarray(cs.counts).tolist() == [1, 3, 2]


def test_error_analysis_draws_half_the_new_levels_from_the_failing_groups():
    cfg = _config("curriculum.error_analysis=true", num_envs=8)  # the buffer is empty: new levels
    cur = _curriculum(cfg, SPEC)
    pool = _pool()
    cs = cur.init(jax.random.PRNGKey(0), pool)
    cs = cs.replace(group_failure=jnp.array([0.0, 0.0, 0.9, 0.0]))
    cs = jax.jit(cur.choose)(cs, pool)
    ids = np.asarray(cs.slots["id"])
    assert ids[:4].tolist() == [0, 1, 2, 3]  # the prior, in order
    assert (ids[4:] % 4 == 2).all()  # the prior conditioned on the failing group
    assert np.asarray(cs.slot_group).tolist() == (ids % 4).tolist()
    # the groups' failure rates move toward what the levels showed
    cs = cs.replace(acc={**cs.acc, "trials": jnp.ones(8), "successes": jnp.zeros(8), "steps": jnp.ones(8)})
    after = jax.jit(cur.finish)(cs)
    fail = np.asarray(after.group_failure)
    assert np.allclose(fail, [0.1, 0.1, 0.9 * 0.9 + 0.1, 0.1])  # every level failed: 0.9 old + 0.1 * 1


def test_twins_share_their_level_and_their_counts():
    cfg = _config(num_envs=4, antithetic=True)
    cur = _curriculum(cfg)
    pool = _pool()
    cs = jax.jit(cur.choose)(cur.init(jax.random.PRNGKey(0), pool), pool)
    assert np.asarray(cs.slots["id"]).tolist() == [0, 1, 0, 1]
    steps, value, adv = _fake_rollout(np.random.default_rng(1), 4)
    cs = cur.accumulate(cs, steps, value, adv, None)
    d = np.asarray(steps.done, np.float32).sum(0)
    assert np.asarray(cs.acc["trials"]).tolist() == (d[:2] + d[2:]).tolist()


# ------------------------------------------------------------------ the learner
def _island(tmp_path, name, *extra):
    return load_config(ISLAND, [*TINY, "env.num_envs=8", "ppo.num_steps=8", "ppo.total_timesteps=512",
                                "curriculum.enabled=true", "curriculum.pool_size=64", "curriculum.buffer_size=16",
                                "curriculum.level_updates=2", f"run.dir={tmp_path / name}", *extra])


FULL = ("curriculum.score=learnability", "curriculum.mutate=true", "curriculum.error_analysis=true",
        "curriculum.teacher.enabled=true", "curriculum.teacher.failure=0.0", "curriculum.replay_prob=1.0")


def test_a_curriculum_run_resumes_bit_for_bit_with_its_buffer(tmp_path):
    # every part at once: learnability, mutations, error analysis, the teacher
    whole = _island(tmp_path, "whole", *FULL)
    loop.train(whole)
    split = _island(tmp_path, "split", *FULL, "run.stop_at_update=4")
    loop.train(split)
    split.run.stop_at_update = 0
    loop.train(split, resume=True)
    _, a, _ = loop.load_run(tmp_path / "whole")
    _, b, _ = loop.load_run(tmp_path / "split")
    assert int(a.curriculum.switches) == int(b.curriculum.switches) == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    report = C.curriculum_report(a.curriculum, loop.build(whole).algo.curriculum.group_names)
    assert report["choices"] == {"new": 1.0, "replay": 2.0, "mutate": 1.0}
    assert report["buffer_filled"] == 1.0 and report["teacher_queries"] > 0
    assert sum(g["levels"] for g in report["groups"]) == 4 * 8
    # the teacher's demonstrations reached the loss
    records = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["teacher/queries"] > 0 and records[-1]["teacher/demonstrated"] > 0
    assert any(r["loss/imitation"] > 0 for r in records)


def test_the_levels_change_only_every_level_updates(tmp_path):
    cfg = _island(tmp_path, "run")
    setup = loop.build(cfg)
    state = loop.initial_state(setup)
    update = jax.jit(setup.algo.update)
    seen = []
    for _ in range(4):
        state, _ = update(state, setup.env_params, setup.cparams)
        seen.append(np.asarray(state.curriculum.slots.grid))
    assert (seen[0] == seen[1]).all() and (seen[2] == seen[3]).all() and not (seen[1] == seen[2]).all()


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("overrides, message", [
    (["curriculum.buffer_size=2"], "smaller than a batch"),
    (["curriculum.pool_size=2"], "smaller than a batch"),
    (["curriculum.score=nope"], "curriculum.score must be one of"),
    (["curriculum.replay_prob=0", "curriculum.mutate=true"], "nothing is ever replayed"),
    (["curriculum.replay_prob=0", "curriculum.score=learnability"], "nothing is replayed"),
    (["curriculum.edits=3"], "mutations are off"),
    (["curriculum.teacher.weight=2"], "the teacher is off"),
])
def test_bad_curriculum_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(*overrides)


def test_a_curriculum_key_without_the_curriculum_is_refused():
    with pytest.raises(ConfigError, match="the curriculum is off"):
        load_config(None, [*TINY, "curriculum.buffer_size=64"])


@pytest.mark.parametrize("overrides, message", [
    (["curriculum.mutate=true"], "cannot be mutated"),
    (["curriculum.teacher.enabled=true"], "has no teacher"),
    (["curriculum.score=learnability"], "declares no curriculum spec"),
    (["curriculum.error_analysis=true"], "declares no curriculum spec"),
])
def test_what_a_family_cannot_do_is_refused_before_compiling(overrides, message):
    cfg = _config(*overrides)  # CartPole: no curriculum spec
    with pytest.raises(ConfigError, match=message):
        loop.build(cfg)


def test_the_cli_refuses_with_exit_code_2(tmp_path):
    r = run_cli("train", "--config", str(REPO / "configs" / "programs.yaml"), *TINY, "curriculum.enabled=true",
                "curriculum.pool_size=64", "curriculum.mutate=true", f"run.dir={tmp_path / 'x'}")
    assert r.returncode == 2 and "cannot be mutated" in r.stderr
    assert not (tmp_path / "x").exists()


def test_the_teacher_labels_only_demonstrated_levels_and_never_a_forbidden_action(tmp_path):
    cfg = _island(tmp_path, "teach", "curriculum.teacher.enabled=true", "curriculum.teacher.failure=0.0")
    setup = loop.build(cfg)
    algo, state = setup.algo, loop.initial_state(setup)
    cs = state.curriculum.replace(slot_taught=jnp.arange(8) % 2 == 0)  # every other level demonstrated
    _, steps = jax.jit(lambda s, c: algo.rollout(s.params).run(c.slots, setup.cparams, s.rollout, 32))(state, cs)
    labels = np.asarray(jax.jit(algo.curriculum.demonstrations)(cs, steps.obs, steps.verdict.allowed,
                                                                 steps.verdict.all_forbidden))
    allowed, nothing = np.asarray(steps.verdict.allowed), np.asarray(steps.verdict.all_forbidden)
    assert (labels[:, 1::2] == -1).all() and (labels[nothing] == -1).all()
    shown = labels >= 0
    assert shown.sum() > 100
    assert np.take_along_axis(allowed, np.maximum(labels, 0)[..., None], -1)[..., 0][shown].all()
    # the labels are the teacher's own actions on those observations
    spec = algo.curriculum.spec
    plans = jax.vmap(spec.teacher.plan)(cs.slots)
    want = jax.vmap(jax.vmap(spec.teacher.act), in_axes=(None, 0, 0))(plans, steps.obs, steps.verdict.allowed)
    np.testing.assert_array_equal(labels[shown], np.asarray(want)[shown])


def test_measure_breaks_its_estimates_down_by_the_familys_groups():
    from aligned_rl.train.measure import measure
    from aligned_rl.train.measure_config import MeasureConfig
    from aligned_rl.train.measure_report import format_estimates

    config = MeasureConfig(agent="random", env="Gridworld-IslandNavigation", constitution="no_water", num_envs=64,
                           episodes=1, antithetic=False, progress=False)
    m = measure(config)
    spec = envs.spec("Gridworld-IslandNavigation").curriculum
    _, batch = envs.sample("Gridworld-IslandNavigation", jax.random.PRNGKey(config.seed), 64)
    group = np.asarray(jax.vmap(spec.group)(batch.params))
    np.testing.assert_array_equal(m.per_env["group"], group)
    rows = {r["group"]: r for r in m.report["groups"]}
    assert sum(r["environments"] for r in rows.values()) == 64
    for g, name in enumerate(spec.groups):
        members = group == g
        if not members.any():
            assert name not in rows
            continue
        for estimate, key in (("upsilon_episode_value", "episode_value"), ("forbidden_rate", "forbidden_rate")):
            assert math.isclose(rows[name]["estimates"][estimate]["mean"], float(m.per_env[key][members].mean()),
                                rel_tol=1e-9, abs_tol=1e-12)
    assert "by group" in format_estimates(m.report)
