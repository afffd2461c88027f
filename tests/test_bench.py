"""The PPO benchmark's own pieces: the PureJaxRL-style peer at a tiny size, and the bench's argument checks.

rejax and SB3 live in virtual environments of their own (bench/.venvs/), so nothing here needs them."""

from __future__ import annotations

import importlib.util
import json

import jax
import numpy as np
import pytest

from bench import ppo_cartpole
from tests.conftest import REPO

# 2 updates of 4 envs x 8 steps, one epoch of 2 minibatches
TINY = ["--timesteps", "64", "--num-envs", "4", "--num-steps", "8", "--epochs", "1", "--minibatches", "2"]


@pytest.fixture(scope="module")
def purejaxrl():
    spec = importlib.util.spec_from_file_location("purejaxrl_ppo", REPO / "bench" / "peers" / "purejaxrl_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_purejaxrl_vmapped_seeds_report_every_run(purejaxrl, capsys):
    assert purejaxrl.main([*TINY, "--seeds", "2", "--seed", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["name"] == "PureJaxRL-style PPO"
    assert result["seeds"] == 2 and result["updates"] == 2
    assert result["env_steps"] == 2 * 2 * 4 * 8  # counted in the program: both runs' steps
    assert result["sps"] > 0 and result["seconds"] > 0 and result["compile_seconds"] > 0
    assert result["sps"] == pytest.approx(result["env_steps"] / result["seconds"])
    assert len(result["final_returns"]) == len(result["final_return_episodes"]) == 2
    for ret, episodes in zip(result["final_returns"], result["final_return_episodes"]):
        assert (ret is None) == (episodes == 0)
        assert ret is None or 1 <= ret <= 500  # CartPole pays 1 a step, episodes end by 500
    assert set(result["versions"]) >= {"jax", "jaxlib", "flax", "optax", "gymnax"}


def test_purejaxrl_vmapped_run_is_the_single_run(purejaxrl):
    """Run i of ``vmap(train)`` over split keys is ``train`` on key i: the same parameters and steps."""
    settings = purejaxrl.Settings(num_envs=4, num_steps=8, epochs=1, minibatches=2, num_updates=2,
                                  lr=2.5e-4, gamma=0.99, gae_lambda=0.95, ent_coef=0.01)
    train = purejaxrl.make_train(settings)
    keys = jax.random.split(jax.random.key(0), 2)
    together = jax.jit(jax.vmap(train))(keys)
    alone = jax.jit(train)(keys[1])
    assert int(together["env_steps"][1]) == int(alone["env_steps"]) == 2 * 4 * 8
    for a, b in zip(jax.tree.leaves(together["params"]), jax.tree.leaves(alone["params"])):
        np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b), rtol=1e-4, atol=1e-5)
    # and the two runs differ: the keys reach the initialisation and the environments
    first = jax.tree.leaves(together["params"])[0]
    assert not np.allclose(np.asarray(first)[0], np.asarray(first)[1])


def test_purejaxrl_rejects_bad_sizes(purejaxrl, capsys):
    with pytest.raises(SystemExit) as exit_info:
        purejaxrl.main([*TINY, "--seeds", "0"])
    assert exit_info.value.code == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--seeds", "-2"], "--seeds must be >= 1"),
    (["--skip", "rejax,nope"], "--skip: unknown entries ['nope']"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--num-envs", "6", "--minibatches", "4", "--num-steps", "1"], "equal minibatches"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ppo_cartpole.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_skips_an_entry_with_its_seed_entries():
    args = ppo_cartpole.parse_args(["--skip", "rejax, sb3", "--seeds", "4"])
    assert args.skip == {"rejax", "rejax-seeds", "sb3"}
    assert args.seeds == 4
    zoo = ppo_cartpole.parse_args(["--preset", "zoo", "--skip", "ours-sequential"])
    assert zoo.skip == {"rejax", "rejax-seeds", "ours-sequential"}  # the zoo's settings are not rejax's runner's
    assert (zoo.num_envs, zoo.lr) == (8, 1e-3)


def test_ppo_profile_times_every_phase_and_counts_kernels(tmp_path, capsys):
    from bench import ppo_profile

    out = tmp_path / "profile.json"
    assert ppo_profile.main(["--num-envs", "4", "--num-steps", "8", "--epochs", "1", "--minibatches", "2",
                             "--inner", "1", "--repeats", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for name in ("aligned", "alignment off"):
        ms = results[name]["ms"]
        assert all(ms[phase] > 0 for phase in ("rollout", "complete", "shuffle", "grad step", "whole update"))
        assert ms["sum of phases"] == pytest.approx(ms["rollout"] + ms["complete"] + ms["shuffle"] + 2 * ms["grad step"])
        assert results[name]["kernels_per_env_step"] > 10
        assert results[name]["sps"] == pytest.approx(32 / (ms["whole update"] / 1e3))
    # judging the constitution is work: the aligned step runs more kernels than the unaligned one
    assert results["aligned"]["kernels_per_env_step"] > results["alignment off"]["kernels_per_env_step"]
    assert "alignment's cost per update" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ppo_profile.main(["--minibatches", "3", "--num-envs", "4", "--num-steps", "8"])
