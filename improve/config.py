"""The config of ``aligned-rl improve``: deployments of trained agents under a drift, the monitor,
fine-tuning, the gate, and the strategies compared.  Every key is documented beside its default."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from aligned_rl import detectors
from aligned_rl.envs import drift as drift_module
from aligned_rl.envs.drift import DriftConfig
from aligned_rl.gate import GateConfig
from aligned_rl.train.config import ConfigError, check_ranges, merge_layers

STRATEGIES = ("frozen", "periodic", "monitored", "ungated")
DETECTORS = ("page_hinkley", "cusum", "adwin")


@dataclasses.dataclass
class MonitorConfig:
    detector: str = "page_hinkley"  # page_hinkley, cusum or adwin (aligned_rl.detectors), on the episode values
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the detector's hyperparameters
    # a second detector on the violation indicator (1 if an episode took a forbidden action), same kind;
    # its settings default to the calibrated preset (aligned_rl.detectors.VIOLATION_DETECTORS)
    violations: bool = False
    violation_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    cooldown: int = 2  # rounds after a fine-tune before the monitor may trigger another


@dataclasses.dataclass
class FinetuneConfig:
    updates: int = 20  # PPO updates from the deployed version's parameters
    num_envs: int = 8  # environments it trains on: the first of those the deployment meets now
    periodic_every: int = 10  # strategy "periodic": a fine-tune every this many rounds, with no monitor


@dataclasses.dataclass
class GateSettings:
    delta: float = 0.05  # level of the one-sided bounds (aligned_rl.gate)
    budget: float = 0.02  # the candidate's forbidden-action rate bound must be within this
    margin: float = 0.02  # ... and not worse than the deployed version's by more than this
    num_envs: int = 64  # fresh environments from the current distribution both are measured on


@dataclasses.dataclass
class ImproveConfig:
    agents: list[str] = MISSING  # run directories of trained PPO agents (one per training seed)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)  # start and end in rounds
    deployments: int = 2  # deployments per agent and strategy (each its own environments)
    envs_per_deployment: int = 16  # environments a deployment runs at once
    rounds: int = 40  # each round every environment of a deployment plays one episode
    strategies: list[str] = dataclasses.field(default_factory=lambda: list(STRATEGIES))
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    gate: GateSettings = dataclasses.field(default_factory=GateSettings)
    seed: int = 0
    output: Optional[str] = None  # directory: lineages, report.json, timeline.png; default improvements/<family>-<time>
    progress: bool = True


def make_detector(config: ImproveConfig, violations: bool = False):
    """The monitor's change detector on the episode values (``monitor.params``) or, with
    ``violations``, on the violation indicator (``monitor.violation_params`` over the preset)."""
    name = config.monitor.detector
    cls = {"page_hinkley": detectors.PageHinkley, "cusum": detectors.CUSUM, "adwin": detectors.ADWIN}[name]
    key = "violation_params" if violations else "params"
    given = dict(config.monitor.violation_params if violations else config.monitor.params)
    try:
        if violations:
            return dataclasses.replace(detectors.VIOLATION_DETECTORS[name], **given)
        return cls(**given)
    except (TypeError, ValueError) as err:
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"improve config: monitor.{key} {given} do not fit {name} ({err}); it takes {fields}") from err


def gate_config(config: ImproveConfig) -> GateConfig:
    return GateConfig(delta=config.gate.delta, budget=config.gate.budget, margin=config.gate.margin)


def load_improve_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> ImproveConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, checked before anything is loaded or compiled."""
    merged = merge_layers(ImproveConfig, "improve", path, overrides, example="agents=[checkpoints/a] rounds=20")
    if OmegaConf.is_missing(merged, "agents"):
        raise ConfigError("improve config: agents not given; set agents=[RUN_DIR, ...] (trained PPO runs)")
    config: ImproveConfig = OmegaConf.to_object(merged)
    check_improve_config(config)
    return config


def check_improve_config(config: ImproveConfig) -> None:
    check_ranges("improve", config, (
        ("agents", len(config.agents) >= 1), ("deployments", config.deployments >= 1),
        ("envs_per_deployment", config.envs_per_deployment >= 2), ("rounds", config.rounds >= 2),
        ("strategies", len(config.strategies) >= 1 and set(config.strategies) <= set(STRATEGIES))))
    check_ranges("improve monitor", config.monitor, (
        ("detector", config.monitor.detector in DETECTORS), ("cooldown", config.monitor.cooldown >= 0)))
    check_ranges("improve finetune", config.finetune, (
        ("updates", config.finetune.updates >= 1),
        ("num_envs", 1 <= config.finetune.num_envs <= config.envs_per_deployment),
        ("periodic_every", config.finetune.periodic_every >= 1)))
    check_ranges("improve gate", config.gate, (("num_envs", config.gate.num_envs >= 2),))
    try:
        gate_config(config)
        drift_module.validate(config.drift)
    except ValueError as err:
        raise ConfigError(f"improve config: {err}") from err
    make_detector(config)
    if config.monitor.violations:
        make_detector(config, violations=True)
    elif config.monitor.violation_params:
        raise ConfigError("improve config: monitor.violation_params has no effect with monitor.violations=false; "
                          "set monitor.violations=true or remove them")
    if config.drift.end >= config.rounds:
        raise ConfigError(f"improve config: drift.end={config.drift.end} must come before the last round "
                          f"(rounds={config.rounds}): the drift's start and end are rounds")
