"""Runs end to end: bit-exact resume, crash safety, refusals, NaN stops, sharding, eval."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import aligned_rl.envs as envs
from aligned_rl.envs.registry import EnvSpec
from aligned_rl.train import checkpoint
from aligned_rl.train.config import load_config
from aligned_rl.train.loop import TrainingDiverged, load_run, train
from tests.conftest import CARTPOLE, REPO, TINY, run_cli


def _restore_final(run_dir: Path):
    return load_run(run_dir)[1]


def _assert_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_exact(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    # 8 updates in one process ...
    r = run_cli("train", "--config", CARTPOLE, *TINY, f"run.dir={whole}")
    assert r.returncode == 0, r.stderr
    # ... against 4 updates, then a new process that resumes for 4 more
    r = run_cli("train", "--config", CARTPOLE, *TINY, f"run.dir={split}", "run.stop_at_update=4")
    assert r.returncode == 0, r.stderr
    assert json.loads((split / "summary.json").read_text())["updates"] == 4
    r = run_cli("train", "--resume", str(split), "run.stop_at_update=0")
    assert r.returncode == 0, r.stderr
    a, b = _restore_final(whole), _restore_final(split)
    assert int(a.update) == int(b.update) == 8
    _assert_identical(a.params, b.params)
    _assert_identical(a.opt_state, b.opt_state)
    _assert_identical(a, b)  # env states, rng, beta, counters too
    lines = (split / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["update"] for x in lines] == [2, 4, 6, 8]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "ppo.total_timesteps=400000", "run.updates_per_chunk=50", "run.checkpoint_every=50",
            f"run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "aligned_rl.cli", "train", "--config", CARTPOLE, *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline and not any(p.name.isdigit() for p in ckpt.glob("*")):
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into the middle of the next chunk or save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    r = run_cli("train", "--resume", str(run_dir), "run.stop_at_update=300")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates"] == 300
    updates = [json.loads(x)["update"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert updates == sorted(set(updates))  # no duplicated lines from the killed process


@pytest.mark.slow
def test_resume_refuses_a_changed_constitution_or_config_unless_forced(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("train", "--config", CARTPOLE, *TINY, f"run.dir={run_dir}", "run.stop_at_update=2").returncode == 0
    r = run_cli("train", "--resume", str(run_dir), "constitution.params.zone_low=0.3")
    assert r.returncode == 2 and "constitution differs" in r.stderr and "--force" in r.stderr
    r = run_cli("train", "--resume", str(run_dir), "ppo.lr=0.1")
    assert r.returncode == 2 and "ppo.lr: saved 0.00025, now 0.1" in r.stderr
    r = run_cli("train", "--config", CARTPOLE, *TINY, f"run.dir={run_dir}")
    assert r.returncode == 2 and "already holds checkpoints" in r.stderr
    r = run_cli("train", "--resume", str(run_dir), "--force", "ppo.lr=0.001", "run.stop_at_update=4")
    assert r.returncode == 0, r.stderr


@struct.dataclass
class _NanState(environment.EnvState):
    time: int


@struct.dataclass
class _NanParams(environment.EnvParams):
    nan_after: int = 100
    max_steps_in_episode: int = 1000


class NaNRewardEnv(environment.Environment):
    """Reward 1 per step, then NaN from step ``nan_after`` of an episode."""

    @property
    def default_params(self):
        return _NanParams()

    def step_env(self, key, state, action, params):
        state = _NanState(time=state.time + 1)
        reward = jnp.where(state.time > params.nan_after, jnp.nan, 1.0)
        return self.get_obs(state), state, reward, jnp.array(False), {}

    def reset_env(self, key, params):
        state = _NanState(time=0)
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jnp.array([state.time / 100.0], jnp.float32)

    @property
    def num_actions(self):
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    if "NaNReward-test" not in envs.list_envs():
        envs.register(EnvSpec(name="NaNReward-test", make=NaNRewardEnv))
    run_dir = tmp_path / "run"
    # 16 steps per update: the first NaN reward arrives in update 7; checkpoints at 2, 4, 6
    overrides = [*TINY, "env.name=NaNReward-test", "constitution.name=none", "ppo.total_timesteps=1024",
                 f"run.dir={run_dir}"]
    from aligned_rl.cli import main

    config_file = tmp_path / "nan.yaml"
    config_file.write_text("env:\n  name: NaNReward-test\n")
    assert main(["train", "--config", str(config_file), *overrides]) == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and "non-finite" in err and "update 6" in err
    mngr = checkpoint.manager(run_dir, read_only=True)
    assert mngr.latest_step() == 6
    mngr.close()
    state = _restore_final(run_dir)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))
    with pytest.raises(TrainingDiverged):
        train(load_config(config_file, [*overrides[:-1], f"run.dir={tmp_path / 'again'}"]))


_SHARDING_SCRIPT = r"""
import json, sys, jax, numpy as np
from aligned_rl.train.config import load_config
from aligned_rl.train.loop import build, initial_state
assert len(jax.devices()) == 4, jax.devices()
out = {}
for devices in (1, 4):
    setup = build(load_config(sys.argv[1], sys.argv[2:] + [f"run.devices={devices}"]))
    state = initial_state(setup)
    state, metrics = jax.jit(setup.algo.run_updates, static_argnums=3)(state, setup.env_params, setup.cparams, 3)
    out[devices] = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    if devices == 4:
        shard_devices = {d for d in state.rollout.obs.sharding.device_set}
        assert len(shard_devices) == 4, state.rollout.obs.sharding
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(out[1], out[4]))
print(json.dumps({"max_abs_diff": diff}))
"""


@pytest.mark.slow
def test_env_batch_sharded_over_four_devices_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT, CARTPOLE, *TINY, "env.num_envs=8"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_train_writes_the_run_directory_and_eval_prints_metrics(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("train", "--config", CARTPOLE, *TINY, "run.plots=true", "run.tensorboard=true", f"run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.name for p in (run_dir / "plots").glob("*.png")} == {"return.png", "divergence.png", "forbidden_rate.png"}
    summary = json.loads((run_dir / "summary.json").read_text())
    # 8 updates of 4 environments x 16 steps, over the seconds of training (compile excluded)
    assert summary["updates"] == 8 and summary["env_steps"] == summary["env_steps_this_process"] == 8 * 4 * 16
    assert summary["sps"] == pytest.approx(8 * 4 * 16 / summary["train_seconds"], rel=1e-9)
    assert summary["compile_seconds"] > 0
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("env_steps", "episode_return", "episode_length", "divergence", "forbidden_rate",
                "forbidden_state_rate", "alignment_reward", "beta", "sps"):
        assert key in record
    r = run_cli("eval", str(run_dir), "--episodes", "16")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["episodes"] == 16 and result["checkpoint_update"] == 8
    # CartPole pays 1 on every step of an episode, so each episode's return is its length, counted
    # separately: the two intervals are the same numbers, over the 16 episodes
    assert result["episode_return"] == result["episode_length"] and result["episode_length"]["n"] == 16
    steps = 16 * result["episode_length"]["mean"]
    assert steps == pytest.approx(round(steps), abs=1e-6) and 16 <= round(steps) <= 16 * 500
    # the forbidden rate is a count of forbidden actions over those steps (a float32 ratio)
    violations = result["forbidden_rate"] * round(steps)
    assert violations == pytest.approx(round(violations), abs=1e-3)
    r = run_cli("eval", str(run_dir), "--episodes", "4", "--best")
    assert r.returncode == 0, r.stderr
    best = json.loads(r.stdout)["checkpoint_update"]
    mngr = checkpoint.manager(run_dir, read_only=True)
    returns = {s: checkpoint.restore_meta(mngr, s)["episode_return"] for s in mngr.all_steps()}
    mngr.close()
    assert returns[best] == max(v for v in returns.values() if v is not None)
