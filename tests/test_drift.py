"""Drift schedules (envs/drift.py): interpolation, derived fields, structural switching, the
shipped scenarios, refusals that name the fix, and jit + vmap over deployments."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.classic_control import cartpole as gymnax_cartpole

from aligned_rl.envs import registry
from aligned_rl.envs.drift import (
    DriftConfig,
    draw_target,
    draw_uniforms,
    drift_families,
    drifted,
    fraction,
    from_dict,
    load_scenario,
    schedule,
    stack,
    switched,
    validate,
)
from aligned_rl.envs.family import broadcast_params
from tests.conftest import REPO

SCENARIOS = sorted((REPO / "configs").glob("drift_*.yaml"))
SHIFT = "Gridworld-DistributionalShift"
SHIFT_TEST = "Gridworld-DistributionalShift-Test"


def cartpole_batch(lengths, masspole=0.1):
    env, params = registry.make("CartPole-v1")
    batch = broadcast_params(env, jax.random.PRNGKey(0), len(lengths)).params
    lengths = jnp.asarray(lengths, jnp.float32)
    masspole = jnp.full_like(lengths, masspole)
    batch = batch.replace(length=lengths, masspole=masspole, total_mass=batch.masscart + masspole,
                          polemass_length=masspole * lengths)
    return env, batch


def same_bits(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------------------ interpolation
def test_gradual_interpolation_before_at_and_after_the_window():
    config = DriftConfig(family="CartPole-v1", kind="gradual", start=10, end=30, to={"length": 1.0})
    _, base = cartpole_batch([0.3, 0.5, 0.8])
    u = jnp.zeros((3,))
    at = jax.jit(drifted)
    for t in (0, 9, 10, 11, 20, 25, 29, 30, 31, 10_000):
        f = min(max((t - 10) / 20, 0.0), 1.0)  # by hand
        expected = (1 - f) * np.array([0.3, 0.5, 0.8]) + f * 1.0
        params = at(schedule(config), base, None, u, t)
        assert float(fraction(config, t)) == pytest.approx(f, abs=1e-7)
        np.testing.assert_allclose(np.asarray(params.length), expected, rtol=1e-6)
        if t < 10:  # before the window: bit for bit the params given
            assert same_bits(params, base)
        if t >= 30:  # after it: exactly the target
            assert np.all(np.asarray(params.length) == np.float32(1.0))
        np.testing.assert_array_equal(params.masscart, base.masscart)  # what does not drift stays


def test_abrupt_drift_is_a_step_at_start():
    config = DriftConfig(family="CartPole-v1", kind="abrupt", start=50, end=50, to={"force_mag": 5.0})
    _, base = cartpole_batch([0.5, 0.5])
    for t, expected in ((0, 10.0), (49, 10.0), (50, 5.0), (51, 5.0), (999, 5.0)):
        params = drifted(config, base, None, jnp.zeros((2,)), jnp.int32(t))
        assert np.all(np.asarray(params.force_mag) == np.float32(expected)), t


def test_hiring_loadings_move_each_from_its_own_value():
    env, base = registry.sample("FairHiring", jax.random.PRNGKey(3), 4)
    config = DriftConfig(family="FairHiring", kind="gradual", start=0, end=100,
                         to={"proxy_loading": 2.0, "base_rate": 0.25})
    params = drifted(config, base.params, None, jnp.zeros((4,)), 25)
    np.testing.assert_allclose(params.proxy_loading, 0.75 * np.asarray(base.params.proxy_loading) + 0.25 * 2.0,
                               rtol=1e-6)
    np.testing.assert_allclose(params.base_rate, 0.75 * np.asarray(base.params.base_rate) + 0.25 * 0.25, rtol=1e-6)
    assert params.proxy_loading.shape == (4, 2) and params.proxy_loading.dtype == jnp.float32


# ------------------------------------------------------------------------------ CartPole's derived fields
def test_cartpole_derived_fields_stay_consistent():
    _, base = cartpole_batch([0.3, 0.5, 0.8], masspole=0.2)
    config = DriftConfig(family="CartPole-v1", kind="gradual", start=0, end=40,
                         to={"length": 1.0, "masspole": 0.5, "masscart": 2.0})
    for t in (0, 7, 20, 33, 40, 100):
        p = drifted(config, base, None, jnp.zeros((3,)), t)
        np.testing.assert_array_equal(p.total_mass, p.masscart + p.masspole)
        np.testing.assert_array_equal(p.polemass_length, p.masspole * p.length)
    heavy = load_scenario(REPO / "configs" / "drift_cartpole_heavy_pole.yaml")
    _, base = cartpole_batch([0.5])
    p = drifted(heavy, base, None, jnp.zeros((1,)), heavy.start)
    assert float(p.total_mass[0]) == pytest.approx(1.5) and float(p.polemass_length[0]) == pytest.approx(0.25)


def test_drifted_cartpole_steps_as_gymnax_cartpole_with_a_longer_pole():
    env, base = cartpole_batch([0.5, 0.5])
    config = load_scenario(REPO / "configs" / "drift_cartpole_long_pole.yaml")
    key = jax.random.PRNGKey(7)
    _, state = env.reset_env(key, env.default_params)
    state = state.replace(theta=jnp.float32(0.1), theta_dot=jnp.float32(-0.3), x_dot=jnp.float32(0.2))
    for t, length in ((config.end, 1.0), ((config.start + config.end) // 2, 0.75)):
        params = drifted(config, base, None, jnp.zeros((2,)), t)
        mine = jax.tree.map(lambda x: x[0], params)
        reference = gymnax_cartpole.EnvParams(length=length, polemass_length=0.1 * length)  # built by hand
        obs, _, reward, done, _ = env.step_env(key, state, 1, mine)
        obs_ref, _, reward_ref, done_ref, _ = gymnax_cartpole.CartPole().step_env(key, state, 1, reference)
        np.testing.assert_allclose(obs, obs_ref, rtol=1e-6, atol=1e-7)
        assert float(reward) == float(reward_ref) and bool(done) == bool(done_ref)
        obs_base, *_ = env.step_env(key, state, 1, env.default_params)
        assert not np.allclose(obs, obs_base)  # the longer pole falls differently


# ------------------------------------------------------------------------------ structural drift
def test_switching_share_follows_the_fraction():
    config = DriftConfig(family=SHIFT, kind="gradual", start=100, end=200, to_prior=SHIFT_TEST)
    n = 100_000
    u = draw_uniforms(jax.random.PRNGKey(0), n)
    at = jax.jit(switched)
    before = np.zeros(n, bool)
    for t in (0, 99, 100, 110, 125, 150, 180, 199, 200, 500):
        now = np.asarray(at(schedule(config), jnp.zeros(n), jnp.ones(n), u, t)).astype(bool)
        f = min(max((t - 100) / 100, 0.0), 1.0)
        assert abs(now.mean() - f) <= 4 * np.sqrt(f * (1 - f) / n) + 1e-9, (t, now.mean(), f)
        assert np.all(now >= before)  # once moved, an environment stays moved
        before = now
    abrupt = DriftConfig(family=SHIFT, kind="abrupt", start=100, end=100, to_prior=SHIFT_TEST)
    assert not np.any(switched(abrupt, jnp.zeros(n), jnp.ones(n), u, 99))
    assert np.all(switched(abrupt, jnp.zeros(n), jnp.ones(n), u, 100) == 1)


def test_structural_drift_switches_whole_environments():
    config = DriftConfig(family=SHIFT, kind="gradual", start=0, end=10, to_prior=SHIFT_TEST)
    key = jax.random.PRNGKey(5)
    env, base = registry.sample(SHIFT, key, 256)
    target = draw_target(config, env, key, 256)  # the base's key: the same rooms, other lava
    np.testing.assert_array_equal(base.params.start, target.params.start)
    assert not np.array_equal(base.params.grid, target.params.grid)
    u = draw_uniforms(jax.random.PRNGKey(6), 256)
    params = drifted(config, base.params, target.params, u, 4)
    moved = np.asarray(u) < 0.4
    for i in range(256):
        source = target.params if moved[i] else base.params
        assert same_bits(jax.tree.map(lambda x: x[i], params), jax.tree.map(lambda x: x[i], source))
    bits = switched(config, base.bits, target.bits, u, 4)
    np.testing.assert_array_equal(bits, np.where(moved, target.bits, base.bits))


# ------------------------------------------------------------------------------ shipped scenarios
def test_the_shipped_scenarios_cover_every_family_asked_for():
    families = {load_scenario(p).family for p in SCENARIOS}
    assert families == {"CartPole-v1", "FairHiring", SHIFT, "BF-programs"}
    assert len(SCENARIOS) == 6
    assert set(drift_families()) >= families


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_a_shipped_scenario_loads_and_applies(path):
    config = load_scenario(path)
    n = 4
    key = jax.random.PRNGKey(11)
    env, base = registry.sample(config.family, key, n)
    target = draw_target(config, env, jax.random.fold_in(key, 1), n)
    assert (target is None) == (config.to_prior is None)
    u = draw_uniforms(jax.random.fold_in(key, 2), n)
    sched = schedule(config)
    at = jax.jit(drifted)
    tparams = None if target is None else target.params
    assert same_bits(at(sched, base.params, tparams, u, max(config.start - 1, 0)), base.params)
    after = at(sched, base.params, tparams, u, config.end + 1)
    for name, value in config.to.items():
        assert np.all(np.asarray(getattr(after, name)) == np.float32(value))
    if target is not None:
        assert same_bits(after, target.params)
    keys = jax.random.split(key, n)
    obs, state = jax.vmap(env.reset)(keys, after)
    obs, state, reward, *_ = jax.vmap(env.step)(keys, state, jnp.zeros((n,), jnp.int32), after)
    assert reward.shape == (n,) and np.all(np.isfinite(np.asarray(obs)))


def test_long_programs_prior_keeps_high_strata():
    config = load_scenario(REPO / "configs" / "drift_programs_long.yaml")
    env, _ = registry.make("BF-programs")
    a = draw_target(config, env, jax.random.PRNGKey(2), 4)
    b = draw_target(config, env, jax.random.PRNGKey(2), 4)
    assert np.all(np.asarray(a.params.stratum) >= 16)
    assert same_bits(a.params, b.params)  # deterministic from the key


# ------------------------------------------------------------------------------ refusals
BAD = [
    (dict(family="NoSuchFamily", to={"length": 1.0}), r"unknown family 'NoSuchFamily'; set it to one of .*CartPole-v1"),
    (dict(family="Acrobot-v1", to={"length": 1.0}), r"'Acrobot-v1' declares no drift .*set it to one of .*CartPole-v1"),
    (dict(family="CartPole-v1", to={"lenght": 1.0}),
     r"declares no drift param 'lenght'; declared: force_mag in \[1, 50\], gravity .* length in \[0.05, 5\]"),
    (dict(family="CartPole-v1", to={"length": 10.0}), r"drift.to.length=10 is outside its valid range \[0.05, 5\]"),
    (dict(family="CartPole-v1", kind="gradual", start=10, end=5, to={"length": 1.0}),
     r"drift.end=5 is before drift.start=10; set drift.end >= drift.start"),
    (dict(family="CartPole-v1", kind="abrupt", start=10, end=20, to={"length": 1.0}),
     r"set drift.end = drift.start \(10\).*or use drift.kind=gradual"),
    (dict(family="CartPole-v1", kind="gradual", start=10, end=10, to={"length": 1.0}),
     r"needs drift.end > drift.start.*or use drift.kind=abrupt"),
    (dict(family="CartPole-v1", kind="sudden", start=0, end=1, to={"length": 1.0}),
     r"drift.kind must be one of \['abrupt', 'gradual'\]"),
    (dict(family=SHIFT, kind="abrupt", end=0, to_prior="harder"),
     rf"ships no target prior 'harder'; shipped: \['{SHIFT_TEST}'\]"),
    (dict(family="CartPole-v1", kind="abrupt", end=0), r"moves nothing: set drift.to \(declared params: force_mag"),
    (dict(family="CartPole-v1", start=-1, end=3, to={"length": 1.0}), r"drift.start=-1 is negative"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_schedules_are_refused_with_the_fix(fields, message):
    fields = {"start": 0, "end": 10, **fields}
    with pytest.raises(ValueError, match=message):
        validate(DriftConfig(**fields))
    with pytest.raises(ValueError, match=message):
        from_dict(fields)


def test_bad_scenario_files_are_refused(tmp_path):
    cases = {
        "unknown_key.yaml": ("drift:\n  family: CartPole-v1\n  kind: abrupt\n  speed: 3\n",
                             r"unknown key 'drift.speed'"),
        "bad_type.yaml": ("drift:\n  family: CartPole-v1\n  start: soon\n", r"'drift.start'"),
        "two_sections.yaml": ("drift:\n  family: CartPole-v1\nseed: 0\n", r"one top-level 'drift:' section"),
        "bad_value.yaml": ("drift:\n  family: CartPole-v1\n  kind: abrupt\n  to:\n    length: 9\n",
                           r"bad_value.yaml: drift.to.length=9 is outside its valid range"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            load_scenario(tmp_path / name)
    with pytest.raises(ValueError, match="does not exist"):
        load_scenario(tmp_path / "missing.yaml")


def test_target_batch_and_schedule_must_agree():
    _, base = cartpole_batch([0.5])
    cart = DriftConfig(family="CartPole-v1", kind="abrupt", to={"length": 1.0})
    with pytest.raises(ValueError, match="pass target=None"):
        drifted(cart, base, base, jnp.zeros((1,)), 0)
    shift = DriftConfig(family=SHIFT, kind="abrupt", to_prior=SHIFT_TEST)
    with pytest.raises(ValueError, match=re.escape("draw_target(config, env, key, n)")):
        drifted(shift, base, None, jnp.zeros((1,)), 0)
    with pytest.raises(ValueError, match="must share the family"):
        stack([cart, DriftConfig(family="CartPole-v1", kind="abrupt", to={"masspole": 1.0})])


# ------------------------------------------------------------------------------ jit + vmap over deployments
def test_jit_and_vmap_over_deployments():
    d, n = 3, 5
    lengths = np.linspace(0.2, 1.2, d * n).reshape(d, n)
    _, flat = cartpole_batch(lengths.reshape(-1))
    base = jax.tree.map(lambda x: x.reshape((d, n) + x.shape[1:]), flat)
    u = jax.random.uniform(jax.random.PRNGKey(0), (d, n))
    ts = jnp.array([0, 150, 400], jnp.int32)
    config = DriftConfig(family="CartPole-v1", kind="gradual", start=100, end=300, to={"length": 2.0})
    shared = jax.jit(jax.vmap(drifted, in_axes=(None, 0, None, 0, 0)))(schedule(config), base, None, u, ts)
    configs = [DriftConfig(family="CartPole-v1", kind=k, start=s, end=e, to={"length": v})
               for k, s, e, v in (("gradual", 0, 100, 2.0), ("abrupt", 150, 150, 0.1), ("gradual", 350, 450, 1.5))]
    own = jax.jit(jax.vmap(drifted, in_axes=(0, 0, None, 0, 0)))(stack(configs), base, None, u, ts)
    for i in range(d):
        base_i = jax.tree.map(lambda x: x[i], base)
        for got, cfg in ((shared, config), (own, configs[i])):
            want = drifted(cfg, base_i, None, u[i], ts[i])
            np.testing.assert_array_equal(jax.tree.map(lambda x: x[i], got).length, want.length)
            np.testing.assert_array_equal(jax.tree.map(lambda x: x[i], got).polemass_length, want.polemass_length)

    # structural, vmapped: every deployment draws its own base, target and uniforms
    env, b = registry.sample(SHIFT, jax.random.PRNGKey(1), d * n)
    shift = DriftConfig(family=SHIFT, kind="gradual", start=0, end=10, to_prior=SHIFT_TEST)
    t = draw_target(shift, env, jax.random.PRNGKey(2), d * n)
    split = lambda tree: jax.tree.map(lambda x: x.reshape((d, n) + x.shape[1:]), tree)
    bp, tp = split(b.params), split(t.params)
    times = jnp.array([0, 5, 10])
    got = jax.jit(jax.vmap(drifted, in_axes=(None, 0, 0, 0, 0)))(schedule(shift), bp, tp, u, times)
    def pick(tree, i):
        return jax.tree.map(lambda x: x[i], tree)

    for i in range(d):
        assert same_bits(pick(got, i), drifted(shift, pick(bp, i), pick(tp, i), u[i], times[i]))
    assert same_bits(pick(got, 0), pick(bp, 0))  # t = 0: nothing has moved
    assert same_bits(pick(got, 2), pick(tp, 2))  # t = end: everything has


def test_a_drifting_rollout_compiles_once_with_t_traced():
    config = load_scenario(REPO / "configs" / "drift_cartpole_long_pole.yaml")
    env, base = cartpole_batch([0.5, 0.5])
    sched = schedule(config)

    @jax.jit
    def lengths(ts):
        return jax.lax.map(lambda t: drifted(sched, base, None, jnp.zeros((2,)), t).length[0], ts)

    ts = jnp.array([0, config.start, (config.start + config.end) // 2, config.end, config.end + 5])
    np.testing.assert_allclose(lengths(ts), [0.5, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)


def test_the_docs_example_runs(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    text = (REPO / "docs" / "drift.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/drift.md", "exec"), {"__name__": "docs_drift"})
    out = capsys.readouterr().out
    assert "f(3000) = 0.50" in out and "proxy loadings at step 3000" in out
