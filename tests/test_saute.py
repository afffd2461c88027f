"""Saute: the violation budget in the observation, the penalty once it is spent, the whole way through."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from aligned_rl.train.agents import load_agent
from aligned_rl.train.config import ConfigError, load_config
from aligned_rl.train.loop import build, initial_state, train
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import MeasureConfig

from tests.conftest import REPO, TINY

ISLAND = str(REPO / "configs" / "gridworld_island.yaml")
PROGRAMS = str(REPO / "configs" / "programs.yaml")
SAUTE = ["alignment.divergence=none", "alignment.beta=1.0", "alignment.saute.enabled=true", "alignment.saute.budget=2",
         "alignment.saute.penalty=0.5"]


@pytest.fixture(scope="module")
def rollout_steps():
    """64 steps of an untrained Saute policy in 16 programs, episodes of 20 steps (it writes the
    forbidden symbol often, and a violation does not end its episode)."""
    setup = build(load_config(PROGRAMS, [*TINY, "env.num_envs=16", "env.episode_length=20", "run.devices=1",
                                         *SAUTE]))
    state = initial_state(setup)
    rollout = setup.algo.rollout(state.params)
    _, steps = jax.jit(lambda c: rollout.run(setup.env_params, setup.cparams, c, 64))(state.rollout)
    return setup, state, jax.tree.map(np.asarray, steps)


def expected_budgets(violated: np.ndarray, done: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """Per step, the budget left before and after it, counted in plain numpy."""
    before, after = np.zeros(violated.shape), np.zeros(violated.shape)
    left = np.full(violated.shape[1], budget)
    for t in range(violated.shape[0]):
        before[t] = left
        left = left - violated[t]
        after[t] = left
        left = np.where(done[t], budget, left)
    return before, after


def test_the_agent_observes_the_fraction_of_its_budget_left(rollout_steps):
    setup, state, steps = rollout_steps
    before, after = expected_budgets(steps.violated.astype(np.float64), steps.done, 2.0)
    assert steps.violated.sum() > 0 and (after < 0).any() and steps.done.any()  # the test sees every case
    np.testing.assert_allclose(steps.obs[..., -1], before / 2.0)
    np.testing.assert_allclose(steps.final_obs[..., -1], after / 2.0)
    plain = jax.vmap(setup.env.reset)(jax.random.split(jax.random.PRNGKey(0), 16), setup.env_params)[0]
    flat = plain.reshape(16, -1).shape[1]
    assert steps.obs.shape[-1] == flat + 1  # the observation, flattened, then the budget
    assert jax.tree.leaves(state.params["actor"])[-1].shape[0] == flat + 1 or \
        any(leaf.shape[0] == flat + 1 for leaf in jax.tree.leaves(state.params["actor"]) if leaf.ndim == 2)


def test_the_learner_pays_the_penalty_for_every_step_after_the_budget_is_spent(rollout_steps):
    setup, state, steps = rollout_steps
    traj = setup.algo._complete(state.params, setup.cparams, jax.tree.map(jax.numpy.asarray, steps),
                                state.rollout.agent_state)
    _, after = expected_budgets(steps.violated.astype(np.float64), steps.done, 2.0)
    np.testing.assert_allclose(np.asarray(traj.reward), np.where(after < 0, -0.5, steps.paid))


def test_a_saute_run_resumes_bit_for_bit_and_its_agent_is_measured_with_its_budget(tmp_path):
    overrides = [*TINY, *SAUTE, "alignment.lagrange.enabled=false"]
    straight = tmp_path / "straight"
    train(load_config(ISLAND, [*overrides, f"run.dir={straight}"]))
    split = tmp_path / "split"
    train(load_config(ISLAND, [*overrides, f"run.dir={split}", "run.stop_at_update=4"]))
    train(load_config(ISLAND, [*overrides, f"run.dir={split}"]), resume=True)
    read = lambda d: (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert [json.loads(x)["episode_return"] for x in read(straight)] == \
        [json.loads(x)["episode_return"] for x in read(split)]
    agent = load_agent(straight)
    assert agent.saute is not None and agent.saute.budget == 2.0
    config = MeasureConfig(env="Gridworld-IslandNavigation", constitution="no_water", num_envs=8, progress=False)
    measured = measure(config, agent=agent)
    assert 0 <= measured.report["estimates"]["forbidden_rate"]["mean"] <= 1
    with pytest.raises(ConfigError, match="trained with alignment.saute"):
        measure(MeasureConfig(env="Gridworld-IslandNavigation", num_envs=8, progress=False), agent=agent)


@pytest.mark.parametrize("config,overrides,message", [
    (ISLAND, ["alignment.saute.budget=3"], "alignment.saute.budget=3.0 has no effect: safety-state augmentation is off"),
    (ISLAND, ["alignment.saute.enabled=true", "alignment.saute.budget=0"], "alignment.saute.budget must be > 0"),
    (ISLAND, ["alignment.saute.enabled=true", "alignment.saute.penalty=-1"], "penalty must be a finite number >= 0"),
    (None, ["alignment.saute.enabled=true"], "constitution.name=none forbids no action, so the violation budget"),
])
def test_a_saute_budget_that_does_nothing_is_refused(config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config, overrides)
