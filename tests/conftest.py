"""Shared helpers: tiny configs that compile and train in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A run small enough for tests: 4 envs x 16 steps per update, 8 updates.
TINY = [
    "env.num_envs=4",
    "ppo.num_steps=16",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "ppo.total_timesteps=512",
    "ppo.hidden_sizes=[16,16]",
    "run.updates_per_chunk=2",
    "run.checkpoint_every=2",
    "run.progress=false",
    "run.tensorboard=false",
    "run.plots=false",
]
CARTPOLE = str(REPO / "configs" / "cartpole.yaml")


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``aligned-rl ARGS`` in a fresh Python process."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "aligned_rl.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


@pytest.fixture
def tiny_overrides():
    return list(TINY)
