"""Edits: operators from a parent agent to a child, each a new genome and where its training starts.

* ``hyper`` (population-based training's explore step): the learning rate, entropy coefficient
  and clip range each multiplied by a factor drawn from ``edit.perturb``; the child keeps the
  parent's weights and trains on.
* ``widen``: every trunk layer of a feed-forward network ``edit.widen_factor`` times wider, by
  function-preserving growth (:func:`aligned_rl.improve.growth.widen`): the child starts computing
  exactly what the parent computes.
* ``deepen``: a new trunk layer initialised to the identity (ReLU networks only,
  :func:`aligned_rl.improve.growth.deepen`), again starting where the parent is.
* ``distil``: a child ``edit.distil_factor`` times narrower, distilled from the parent on the
  states of the parent's own rollout (:func:`aligned_rl.improve.growth.distil`), then trained.
* ``tool``: macro-actions mined from the parent's successful episodes
  (:mod:`aligned_rl.improve.tools`) join its action set; the actor's head gets a column per
  new action (zero weights, a bias of ``TOOL_BIAS`` below the primitives' mean, so each starts
  rarely chosen), everything else is kept.
* ``more_steps``: the control, the parent itself trained ``child_steps`` more: every edit that
  keeps the parent's weights also trains on, and this says how much the training alone brings.
* ``curriculum``: the child trains on with a curriculum (``train/curriculum.py``: prioritised level
  replay, scored by the positive value loss, or by learnability where the family says what success is).
* ``new_agent``: the parent configures an agent of another kind, an RL^2 agent with
  ``edit.memory_size`` units of memory, the parent's first trunk width and learning rate, and
  its tools; the child is trained from scratch.

Every edit goes through :meth:`Genome.edit`, so none can touch what is not in the genome.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import aligned_rl.envs as envs
from aligned_rl.improve import growth, tools
from aligned_rl.improve.evolve_config import EDITS, EvolveConfig
from aligned_rl.improve.genome import Genome, GenomeError
from aligned_rl.train.agents import PolicyAgent, restore_policy
from aligned_rl.train.config import TrainConfig
from aligned_rl.train.loop import build
from aligned_rl.train.policies import make_policy

TOOL_BIAS = 2.0


@dataclasses.dataclass
class Child:
    """What an edit makes: the genome, the parameters its training starts from (None: from
    scratch), the environment steps it trains for, and what the edit did."""

    genome: Genome
    start: Any
    steps: int
    detail: dict


def applicable(genome: Genome, config: EvolveConfig, episodic: bool) -> list[str]:
    """The edit kinds with weight > 0 that can apply to a parent with ``genome``."""
    e, mlp = config.edit, genome.network == "mlp"
    ok = {
        "hyper": True,
        "widen": mlp and min(genome.hidden_sizes) * e.widen_factor <= e.max_width,
        "deepen": mlp and genome.activation == "relu" and len(genome.hidden_sizes) < e.max_depth,
        "distil": mlp and min(genome.hidden_sizes) * e.distil_factor >= 8,
        "tool": mlp and episodic and len(genome.macros) + e.tool_count <= e.max_tools,
        "new_agent": mlp,
        "more_steps": True,
        "curriculum": not genome.curriculum and not genome.macros,  # a tool agent acts in states the teacher does not
    }
    return [k for k, w in dataclasses.asdict(config.edits).items() if w > 0 and ok[k]]


def choose_edit(genome: Genome, config: EvolveConfig, episodic: bool, rng: np.random.Generator) -> str | None:
    kinds = applicable(genome, config, episodic)
    if not kinds:
        return None
    weights = np.array([getattr(config.edits, k) for k in kinds])
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def _parent_setup(run_config: TrainConfig, seed: int):
    """The parent's environment, constitution and a batch of environments from its prior."""
    config = dataclasses.replace(run_config, seed=seed)
    setup = build(config)
    return setup.env, setup.constitution, setup.env_params


def make_child(kind: str, parent_run: str, config: EvolveConfig, seed: int) -> Child:
    """The child the edit ``kind`` makes of the agent trained in ``parent_run``."""
    policy, params, run_config, _ = restore_policy(parent_run)
    genome = Genome.of(run_config)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    e = config.edit
    steps = config.child_steps
    if kind == "hyper":
        factors = {name: float(rng.choice(e.perturb)) for name in ("lr", "ent_coef", "clip_eps")}
        child = genome.edit(lr=genome.lr * factors["lr"], ent_coef=genome.ent_coef * factors["ent_coef"],
                            clip_eps=min(0.5, genome.clip_eps * factors["clip_eps"]))
        return Child(child, params, steps, {"factors": factors})
    if kind == "widen":
        sizes = tuple(min(e.max_width, int(round(w * e.widen_factor))) for w in genome.hidden_sizes)
        grown = growth.widen(params, genome.hidden_sizes, sizes, key)
        return Child(genome.edit(hidden_sizes=sizes), grown, steps, {"from": list(genome.hidden_sizes),
                                                                     "to": list(sizes)})
    if kind == "deepen":
        grown, sizes = growth.deepen(params, genome.hidden_sizes, genome.activation, key)
        return Child(genome.edit(hidden_sizes=tuple(sizes)), grown, steps,
                     {"from": list(genome.hidden_sizes), "to": list(sizes)})
    if kind == "distil":
        sizes = tuple(max(8, int(round(w * e.distil_factor))) for w in genome.hidden_sizes)
        child_genome = genome.edit(hidden_sizes=sizes)
        env, constitution, env_params = _parent_setup(run_config, seed)
        child_config = child_genome.apply(run_config)
        child_policy = make_policy(child_config.ppo, policy.num_actions)
        k_obs, k_init, k_fit = jax.random.split(key, 3)
        agent = PolicyAgent(policy, params, shields=run_config.alignment.shield, macros=genome.macros)
        observations = growth.collect_observations(agent, env, constitution, env_params, k_obs, e.distil_rollout)
        child_params = child_policy.init(jax.random.split(k_init), observations[:1])
        child_params, report = growth.distil(policy, params, child_policy, child_params, observations,
                                             e.distil_steps, 1e-3, k_fit)
        return Child(child_genome, child_params, steps, {"from": list(genome.hidden_sizes), "to": list(sizes),
                                                         "distillation": report})
    if kind == "tool":
        env, constitution, env_params = _parent_setup(run_config, seed)
        agent = PolicyAgent(policy, params, shields=run_config.alignment.shield, macros=genome.macros)
        actions, starts, success = tools.trajectories(agent, env, constitution, env_params, key,
                                                      8 * e.distil_rollout, family=run_config.env.name)
        primitives = policy.num_actions - len(genome.macros)
        # the parent's own macros are never parts of a new one, and one it holds is not new
        mined = tools.mine_macros(np.asarray(actions), np.asarray(starts), np.asarray(success),
                                  max_len=e.tool_max_len, count=e.tool_count + len(genome.macros),
                                  num_primitives=primitives)
        new = [m for m in mined if tuple(m) not in genome.macros][: e.tool_count]
        if not new:
            raise GenomeError("no tool to add: the parent's successful episodes hold no frequent action "
                              "sequence it does not have already")
        child = genome.edit(macros=genome.macros + tuple(tuple(m) for m in new))
        return Child(child, add_actions(params, len(new)), steps, {"tools": [list(m) for m in new]})
    if kind == "more_steps":
        return Child(genome, params, steps, {})
    if kind == "curriculum":  # prioritised replay by a score the family supports
        spec = envs.spec(run_config.env.name).curriculum
        scores = ["value_loss"] + (["learnability"] if spec is not None else [])
        score = str(rng.choice(scores))
        return Child(genome.edit(curriculum=True, curriculum_score=score), params, steps, {"score": score})
    if kind == "new_agent":
        child = genome.edit(network="rl2", memory_size=e.memory_size, hidden_sizes=genome.hidden_sizes[:1])
        return Child(child, None, config.new_agent_steps or steps, {"kind": "rl2", "memory_size": e.memory_size})
    raise GenomeError(f"unknown edit {kind!r}; the edits are {', '.join(EDITS)}")


def add_actions(params: Any, count: int) -> Any:
    """A feed-forward policy's parameters with ``count`` more actions: new head columns with zero
    weights and a bias ``TOOL_BIAS`` below the mean bias of the actions it had."""
    actor = jax.tree.map(lambda x: x, params["actor"])
    layers = actor["params"]
    head = max(layers, key=lambda name: int(name.split("_")[-1]))
    kernel, bias = layers[head]["kernel"], layers[head]["bias"]
    layers[head] = {
        "kernel": jnp.concatenate([kernel, jnp.zeros((kernel.shape[0], count), kernel.dtype)], axis=1),
        "bias": jnp.concatenate([bias, jnp.full((count,), jnp.mean(bias) - TOOL_BIAS, bias.dtype)]),
    }
    return {**params, "actor": actor}
