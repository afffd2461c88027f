"""The measurement config (``aligned-rl measure``): a typed schema, loaded and checked.

Every key is documented beside its default; :func:`load_measure_config` merges defaults, a
YAML file and ``key=value`` overrides and refuses values out of range and flags that would
change nothing (a key that differs from its default without any effect), naming the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from omegaconf import OmegaConf

from aligned_rl.train.config import ConfigError, check_ranges, merge_layers


@dataclasses.dataclass
class MeasureConfig:
    # an AIQ baseline name, one in AIQ's spelling (HLQ_l,0,0,0.95,0.04,0.7), or a trained PPO agent's run directory
    agent: str = "q_lambda"
    # baselines: overrides of the paper's preset for episode_length (aligned_rl/baselines.py)
    agent_params: dict[str, float] = dataclasses.field(default_factory=dict)
    agent_reward_scale: float = 100.0  # baselines are paid r * scale (AIQ's rewards are 100 (s - m) / m)
    env: str = "BF-programs"
    num_envs: int = 4096  # environments run (antithetic pairs with antithetic)
    episode_length: int = 1000  # continuing families: steps per environment (AIQ's episode length)
    episodes: int = 1  # episodic families: episodes per environment (the run lasts as long as they can)
    gamma: float = 0.99  # for the discounted value
    # with twins whose rewards are negated; default (null): on for an agent that adapts to rewards, off
    # for one that does not (a fixed policy acts the same in both twins: every pair would average 0)
    antithetic: Optional[bool] = None
    constitution: str = "none"  # a constitution of the family, for V', V^C and the forbidden rate
    paid_reward: str = "env"  # what the agent is paid: "env" (r) or "constrained" (r^C, -1 for a forbidden action)
    alignment_weight: float = 0.5  # w in V' = (1 - w) r + w 2^-D
    seed: int = 0
    # "auto": the asynchronous engine where it can run (an AIQ baseline on BF-programs, no constitution,
    # one device: measure_async.py), else the lockstep one; "lockstep" or "async" to choose
    engine: str = "auto"
    chunk_steps: int = 100  # steps per compiled chunk (the progress bar moves between chunks)
    buckets: int = 1  # run environments in this many batches of similar cost (see measure())
    sampling: str = "simple"  # "simple" or "stratified" (two-phase, Neyman allocation; see stratified.py)
    pool_factor: float = 4.0  # stratified: the phase-1 pool holds ceil(pool_factor * num_envs) environments
    pilot_fraction: float = 0.25  # stratified: share of num_envs run as the pilot that estimates s_h
    devices: int = 0  # devices of the "envs" mesh: 0 = all (of all processes), k = the first k
    coordinator_address: Optional[str] = None  # host:port of process 0: run over several processes/hosts
    num_processes: int = 1
    process_id: int = 0
    output: Optional[str] = None  # directory for report.json and plots; default measurements/<agent>-<time>
    progress: bool = True


def without_effect(config: MeasureConfig) -> list[tuple[str, str]]:
    """(key, reason) for every key that differs from its default and changes nothing here."""
    default = MeasureConfig()
    found = []

    def check(key: str, idle: bool, reason: str) -> None:
        if idle and getattr(config, key) != getattr(default, key):
            found.append((key, reason))

    no_rules = config.constitution == "none"
    check("alignment_weight", no_rules, "V' is estimated only with a constitution")
    check("paid_reward", no_rules, "without a constitution r^C equals r")
    simple = config.sampling == "simple"
    check("pool_factor", simple, "it sizes the phase-1 pool of sampling=stratified")
    check("pilot_fraction", simple, "it sizes the pilot of sampling=stratified")
    alone = not config.coordinator_address
    check("num_processes", alone, "a run over several processes needs coordinator_address")
    check("process_id", alone, "a run over several processes needs coordinator_address")
    return found


def check_measure_config(config: MeasureConfig, what: str = "measure") -> None:
    """Ranges, consistency and keys without effect (``what`` names the config in messages)."""
    check_ranges(what, config, (
        ("num_envs", config.num_envs >= 2), ("episode_length", config.episode_length >= 1),
        ("episodes", config.episodes >= 1),
        ("chunk_steps", config.chunk_steps >= 1), ("gamma", 0 < config.gamma < 1),
        ("buckets", 1 <= config.buckets <= config.num_envs),
        ("alignment_weight", 0 <= config.alignment_weight <= 1),
        ("paid_reward", config.paid_reward in ("env", "constrained")),
        ("sampling", config.sampling in ("simple", "stratified")),
        ("engine", config.engine in ("auto", "lockstep", "async")),
        ("pool_factor", config.pool_factor >= 1),
        ("pilot_fraction", 0 < config.pilot_fraction < 1),
        ("devices", config.devices >= 0),
        ("num_processes", config.num_processes >= 1),
        ("process_id", 0 <= config.process_id < config.num_processes)))
    if config.num_processes > 1 and not config.coordinator_address:
        raise ConfigError(f"{what} config: num_processes={config.num_processes} needs coordinator_address")
    for key, reason in without_effect(config):
        raise ConfigError(f"{what} config: {key}={getattr(config, key)!r} has no effect: {reason}; "
                          f"remove it (its default is {getattr(MeasureConfig(), key)!r})")


def load_measure_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> MeasureConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, checked."""
    merged = merge_layers(MeasureConfig, "measure", path, overrides, example="agent=q_lambda num_envs=1024")
    config: MeasureConfig = OmegaConf.to_object(merged)
    check_measure_config(config)
    return config
