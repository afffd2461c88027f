"""Several seeds vmapped in one program (``seed`` a list): each seed's run equals the run it
would be alone, has a run directory of its own, and the seeds resume together."""

import json
import shutil

import jax
import numpy as np
import pytest

from aligned_rl.train.config import ConfigError, load_config, load_run_config
from aligned_rl.train.loop import load_run, train
from tests.conftest import CARTPOLE, TINY, run_cli

SEEDS = [0, 3]
RUN = [*TINY, "ppo.total_timesteps=256"]  # 4 updates, chunks of 2, a checkpoint after each chunk


def _config(run_dir, *extra):
    return load_config(CARTPOLE, [*RUN, f"run.dir={run_dir}", *extra])


def _seeds(run_dir, *extra):
    return _config(run_dir, f"seed=[{','.join(map(str, SEEDS))}]", *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two seeds vmapped, and seed 3 alone."""
    root = tmp_path_factory.mktemp("seeds")
    vmapped = train(_seeds(root / "vmapped"))
    alone = train(_config(root / "alone", "seed=3"))
    return root, vmapped, alone


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_each_vmapped_seed_is_the_run_it_would_be_alone(runs):
    """Equal to float32 rounding, not bit for bit: vmapped, the networks' matrix products are
    batched over the seeds, and a batched product may sum in another order."""
    root, _, _ = runs
    _, vmapped, _ = load_run(root / "vmapped" / "seed-3")
    _, alone, _ = load_run(root / "alone")
    assert int(vmapped.update) == int(alone.update) == 4
    for a, b in zip(_leaves(vmapped), _leaves(alone)):
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:  # environment counters, keys, the update: exactly the same
            np.testing.assert_array_equal(a, b)
    # the first seed is not the second: each member has its own environments and parameters
    _, other, _ = load_run(root / "vmapped" / "seed-0")
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(vmapped.params)[0])
    mine = [json.loads(x) for x in (root / "vmapped" / "seed-3" / "metrics.jsonl").read_text().splitlines()]
    its = [json.loads(x) for x in (root / "alone" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in mine] == [r["update"] for r in its] == [2, 4]
    for a, b in zip(mine, its):
        assert a["episodes"] == b["episodes"]
        assert a["forbidden_rate"] == pytest.approx(b["forbidden_rate"], abs=1e-6)
        assert a["loss/value"] == pytest.approx(b["loss/value"], rel=1e-4)


def test_every_seed_has_a_run_directory_of_its_own(runs):
    root, summary, _ = runs
    top = root / "vmapped"
    assert summary["seeds"] == SEEDS and summary["env_steps"] == 2 * 256
    for seed in SEEDS:
        member = top / f"seed-{seed}"
        assert load_run_config(member).seed == seed
        assert json.loads((member / "summary.json").read_text())["vmapped_with"] == SEEDS
        assert str(member) == summary["members"][str(seed)]["run_dir"]
    # the top directory's metrics are the seeds' averaged
    per_seed = [[json.loads(x) for x in (top / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()] for s in SEEDS]
    mean = [json.loads(x) for x in (top / "metrics.jsonl").read_text().splitlines()]
    assert mean[-1]["forbidden_rate"] == pytest.approx(np.mean([p[-1]["forbidden_rate"] for p in per_seed]))
    # a directory of seeds holds no single agent: refused with the directories to use
    with pytest.raises(ConfigError, match="seed-0"):
        load_run(top)
    r = run_cli("eval", str(top), "--episodes", "2")
    assert r.returncode == 2 and "seed-0" in r.stderr


def test_seeds_resume_together_after_a_kill_between_their_saves(runs, tmp_path):
    """Seed 0 saved update 4 and seed 3 did not (killed in between): the resumed run goes back
    to update 2 for both and ends exactly where the uninterrupted run ended."""
    root, _, _ = runs
    run_dir = tmp_path / "killed"
    shutil.copytree(root / "vmapped", run_dir)
    shutil.rmtree(run_dir / "seed-3" / "checkpoints" / "4")
    config = load_run_config(run_dir, seeds_ok=True)
    summary = train(config, resume=True)
    assert summary["updates"] == 4
    for seed in SEEDS:
        _, resumed, _ = load_run(run_dir / f"seed-{seed}")
        _, whole, _ = load_run(root / "vmapped" / f"seed-{seed}")
        for a, b in zip(_leaves(resumed), _leaves(whole)):
            np.testing.assert_array_equal(a, b)
        lines = (run_dir / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["update"] for x in lines] == [2, 4]


@pytest.mark.parametrize("seed, message", [
    ("[]", "non-empty list"),
    ("[1,1]", "more than once"),
    ("[0,x]", "list of ints"),
    ("1.5", "an int or a list"),
])
def test_bad_seed_lists_are_refused(seed, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CARTPOLE, [*RUN, f"seed={seed}"])


def test_bad_seed_list_exits_2_and_writes_nothing(tmp_path):
    r = run_cli("train", "--config", CARTPOLE, *RUN, "seed=[2,2]", f"run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "more than once" in r.stderr
    assert not (tmp_path / "run").exists()


def test_seeds_cannot_fine_tune_from_given_parameters(tmp_path):
    with pytest.raises(ConfigError, match="one seed at a time"):
        train(_seeds(tmp_path / "run"), start_from={"actor": {}})
