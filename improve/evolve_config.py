"""The config of ``aligned-rl evolve``: the ancestor, the budget, the edits and their settings,
parent selection, the gate, the measurement and the baselines.  Every key is documented beside
its default; :func:`load_evolve_config` refuses bad values before anything is trained."""

from __future__ import annotations

import dataclasses
from typing import Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aligned_rl import baselines
from aligned_rl.gate import GateConfig
from aligned_rl.train.aiq_table import given_measure_keys
from aligned_rl.train.config import ConfigError, TrainConfig, check_ranges, load_config, merge_layers
from aligned_rl.train.measure_config import MeasureConfig, check_measure_config

RULES = ("score", "thompson")


@dataclasses.dataclass
class EditWeights:
    # the probability of each edit kind is its weight over the sum of the weights of the kinds that
    # apply to the chosen parent (0 switches a kind off)
    hyper: float = 1.0  # population-based-training explore: lr, entropy, clip perturbed; the parent's weights kept
    widen: float = 1.0  # function-preserving widening of a feed-forward network (improve/growth.py)
    deepen: float = 1.0  # function-preserving new layer (ReLU networks only)
    distil: float = 1.0  # a smaller feed-forward child distilled from the parent, then trained
    tool: float = 0.0  # macro-actions mined from the parent's successful episodes (episodic families)
    new_agent: float = 1.0  # the parent configures and trains an agent of another kind (RL^2), from scratch
    # the control: the parent itself, trained child_steps more (every edit that keeps the parent's weights also
    # trains on; this says how much of its gain the extra training alone brings)
    more_steps: float = 0.0
    curriculum: float = 0.0  # the child trains on with a curriculum (train/curriculum.py) its parent did not have


EDITS = tuple(f.name for f in dataclasses.fields(EditWeights))  # the edit kinds


@dataclasses.dataclass
class EditSettings:
    perturb: list[float] = dataclasses.field(default_factory=lambda: [0.8, 1.25])  # hyper: factors drawn per value
    widen_factor: float = 2.0  # widen: every trunk layer times this
    max_width: int = 256  # widen: no layer wider than this
    max_depth: int = 4  # deepen: no more trunk layers than this
    distil_factor: float = 0.5  # distil: every trunk layer times this (at least 8 units)
    distil_steps: int = 400  # distil: gradient steps of supervised distillation
    distil_rollout: int = 64  # distil, tool: steps of the parent's own rollout that give its states
    tool_count: int = 2  # tool: macros added per edit
    tool_max_len: int = 3  # tool: longest macro
    max_tools: int = 4  # tool: an agent holds at most this many macros
    memory_size: int = 64  # new_agent: the RL^2 child's memory


@dataclasses.dataclass
class SelectionConfig:
    # "score": P(parent) ~ (Upsilon - lowest admitted Upsilon + floor) / (1 + children already made);
    # "thompson": the parent whose clade's productivity, drawn from Beta(1 + improvements, 1 + other
    # children) over all its descendants, is highest
    rule: str = "score"
    floor: float = 0.05  # score: the weight of the lowest admitted agent (before the children penalty)


@dataclasses.dataclass
class EvolveGateConfig:
    delta: float = 0.05  # level of the one-sided bounds (aligned_rl.gate)
    budget: float = 0.02  # forbidden-action rate bound a child must stay within
    margin: float = 0.02  # ... and no worse than its parent's by more than this
    num_envs: int = 128  # fresh environments, drawn anew for every child, on which child and parent are compared


@dataclasses.dataclass
class EvolveConfig:
    train: str = MISSING  # the ancestor's training config (YAML), e.g. configs/programs.yaml
    train_overrides: list[str] = dataclasses.field(default_factory=list)  # key=value applied to the ancestor
    ancestor_steps: int = 0  # environment steps of the ancestor; 0: the training config's ppo.total_timesteps
    child_steps: int = 262_144  # environment steps every child trains for
    new_agent_steps: int = 0  # ... a child of another kind, trained from scratch; 0: child_steps
    generations: int = 4
    children: int = 4  # children per generation
    budget_steps: int = 0  # environment steps the whole run may spend (0: no limit)
    edits: EditWeights = dataclasses.field(default_factory=EditWeights)
    edit: EditSettings = dataclasses.field(default_factory=EditSettings)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    gate: EvolveGateConfig = dataclasses.field(default_factory=EvolveGateConfig)
    # how every agent's Upsilon and Sigma are measured (the same environments and random numbers for all);
    # env and constitution default to the training config's; antithetic must be true or false for all
    measure: MeasureConfig = dataclasses.field(default_factory=lambda: MeasureConfig(
        num_envs=256, antithetic=False, progress=False))
    baselines: list[str] = dataclasses.field(default_factory=list)  # AIQ baselines measured on the same environments
    credit_discount: float = 0.5  # lineage credit: a descendant k generations down counts discount^k
    seed: int = 0
    output: Optional[str] = None  # the archive's directory; default measurements/evolve-<env>
    progress: bool = True


def gate_config(config: EvolveConfig) -> GateConfig:
    return GateConfig(delta=config.gate.delta, budget=config.gate.budget, margin=config.gate.margin)


def base_config(config: EvolveConfig) -> TrainConfig:
    """The ancestor's training config."""
    try:
        base = load_config(config.train, config.train_overrides)
    except ConfigError as err:
        raise ConfigError(f"evolve config: train={config.train} with train_overrides: {err}") from err
    if config.ancestor_steps:
        base.ppo.total_timesteps = config.ancestor_steps
    return base


def steps_of_generation(config: EvolveConfig) -> int:
    """The most environment steps one generation's children can take."""
    return config.children * max(config.child_steps, config.new_agent_steps or config.child_steps)


def load_evolve_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> EvolveConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, checked before anything is trained."""
    merged = merge_layers(EvolveConfig, "evolve", path, overrides, example="train=configs/programs.yaml")
    try:
        if OmegaConf.is_missing(merged, "train"):
            raise ConfigError("evolve config: train is not given; name the ancestor's training config, e.g. "
                              "train=configs/programs.yaml")
        config: EvolveConfig = OmegaConf.to_object(merged)
        given = given_measure_keys(path, overrides)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "")
        raise ConfigError(f"evolve config: bad or unknown key '{key}': {str(err).splitlines()[0]}") from err
    base = base_config(config)
    if "env" not in given:
        config.measure.env = base.env.name
    if "constitution" not in given:
        config.measure.constitution = base.constitution.name
    check_evolve_config(config, base)
    return config


def check_evolve_config(config: EvolveConfig, base: TrainConfig) -> None:
    check_ranges("evolve", config, (
        ("child_steps", config.child_steps >= base.steps_per_update),
        ("new_agent_steps", config.new_agent_steps == 0 or config.new_agent_steps >= base.steps_per_update),
        ("generations", config.generations >= 1), ("children", config.children >= 1),
        ("budget_steps", config.budget_steps >= 0),
        ("credit_discount", 0.0 <= config.credit_discount <= 1.0)))
    weights = dataclasses.asdict(config.edits)
    bad = [k for k, w in weights.items() if not w >= 0.0]
    if bad or sum(weights.values()) <= 0.0:
        raise ConfigError(f"evolve config: edits {weights} must be weights >= 0, at least one of them > 0")
    e = config.edit
    check_ranges("evolve edit", e, (
        ("perturb", len(e.perturb) >= 1 and all(f > 0 for f in e.perturb)), ("widen_factor", e.widen_factor > 1.0),
        ("max_width", e.max_width >= 8), ("max_depth", e.max_depth >= 1),
        ("distil_factor", 0.0 < e.distil_factor < 1.0), ("distil_steps", e.distil_steps >= 1),
        ("distil_rollout", e.distil_rollout >= 1), ("tool_count", e.tool_count >= 1),
        ("tool_max_len", 2 <= e.tool_max_len <= 16), ("max_tools", e.max_tools >= 1),
        ("memory_size", e.memory_size >= 1)))
    check_ranges("evolve selection", config.selection, (
        ("rule", config.selection.rule in RULES), ("floor", config.selection.floor > 0.0)))
    check_ranges("evolve gate", config.gate, (("num_envs", config.gate.num_envs >= 2),))
    try:
        gate_config(config)
    except ValueError as err:
        raise ConfigError(f"evolve config: {err}") from err
    if config.measure.antithetic is None:
        raise ConfigError("evolve config: measure.antithetic must be true or false: every agent of the archive is "
                          "measured the same way (true: AIQ's reward-negated twins, on which a feed-forward agent "
                          "scores 0 by construction; false: the prior as drawn)")
    if config.measure.agent != MeasureConfig().agent or config.measure.agent_params:
        raise ConfigError("evolve config: measure.agent and measure.agent_params have no effect: evolve measures "
                          "its own agents; list AIQ baselines under baselines=[...]")
    check_measure_config(config.measure, "evolve measure")
    unknown = [b for b in config.baselines if b not in baselines.BASELINES]
    if unknown:
        raise ConfigError(f"evolve config: baselines {unknown} are not AIQ baselines ({sorted(baselines.BASELINES)})")
    if config.measure.env != base.env.name:
        raise ConfigError(f"evolve config: measure.env={config.measure.env} but the agents train on "
                          f"{base.env.name}; evolve measures them on their own family")
    if config.measure.constitution != base.constitution.name:
        raise ConfigError(f"evolve config: measure.constitution={config.measure.constitution} but the agents are "
                          f"held to {base.constitution.name}; the archive measures them under their own")
    generation = steps_of_generation(config)
    if config.budget_steps and config.budget_steps < base.ppo.total_timesteps + generation:
        raise ConfigError(
            f"evolve config: budget_steps={config.budget_steps:,} cannot fit one generation: the ancestor takes "
            f"{base.ppo.total_timesteps:,} steps and a generation of {config.children} children up to "
            f"{generation:,}; raise budget_steps to at least {base.ppo.total_timesteps + generation:,} or lower "
            "children / child_steps")
