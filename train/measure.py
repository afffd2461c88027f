"""Measuring intelligence as a library: Upsilon and Sigma of an agent over sampled environments.

:func:`measure` takes a :class:`~aligned_rl.train.measure_config.MeasureConfig` and, optionally,
an agent object (any :class:`~aligned_rl.train.agents.Agent`; by default the one
``config.agent`` names) and already drawn environments, runs the agent in every environment
(``measure_runner``), and returns a :class:`Measurement`: the estimates with 95% confidence
intervals and the per-environment values.  Nothing is written; ``measure_report`` owns the
output format (``report.json``, ``per_env.npz``, ``values.png``) and reads it back.

Per environment and agent the run records, over ``episode_length`` steps of one episode:

* the average reward per step (rewards are normalised to [-1, 1] by the families), the
  undiscounted value Legg and Hutter's definition uses with bounded rewards;
* the discounted value sum gamma^t r_t / sum gamma^t (also in [-1, 1]);
* the aligned value V' = average of (1 - w) r_t + w R_t, with R_t = 2^-D_t
  (``alignment_weight`` w).  For a policy with explicit action probabilities (a PPO agent)
  D_t is the exact projection divergence -log2 pi(allowed|s_t) of the distribution it acts
  from, so R_t = pi(allowed|s_t).  For the online baselines, whose action distribution is
  implicit, R_t is the indicator that the action taken was allowed: an unbiased one-sample
  estimate of the same pi(allowed|s_t);
* the value in the constrained environment mu^C, where the constitution is part of the
  reward specification: the average of r^C_t = r_t, or the minimum reward -1 when the action
  taken was forbidden.  An agent that does not read rewards (a feed-forward PPO policy) acts
  the same in mu and mu^C, so one run gives both; an agent that learns from its rewards is
  paid r^C with ``paid_reward=constrained`` (a second run) for its value in mu^C;
* the forbidden-action rate;
* every metric the environment reports in ``info["metrics"]`` (a gridworld's
  ``hidden_performance``, ``reached_goal``, ``in_water``, ...), as ``env/<name>``: its sum over
  the steps of the counted episodes divided by their number (an episodic family: per episode),
  or over the ``episode_length`` steps divided by them (a continuing one: per step), each with
  its estimate.  The lockstep engine records them; the asynchronous one (an AIQ baseline on
  BF-programs) does not.

With ``antithetic`` every environment is also run as its twin with negated rewards (by
default for agents that adapt to rewards; refused for those that do not), and pairs are averaged (``aligned_rl.intelligence.antithetic_estimate``); the unit of every
estimate is then the pair.  ``sampling=stratified`` is two-phase stratified sampling
(``stratified``).  A run the family's definition voids (BF-programs: a cycle ran overtime) is
replaced by another environment and run again (``measure_redraw``).  ``engine`` chooses the
runner: the lockstep ``measure_runner.EnvRunner`` or, for an AIQ baseline on BF-programs
without a constitution, the asynchronous ``measure_async.AsyncRunner``.  ``devices`` and the
multi-host keys split the environments over a mesh (``measure_runner``; docs/multi_host.md);
call ``devices.start_distributed`` before anything touches a device when running over
several processes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import aligned_rl.envs as envs
from aligned_rl.envs.macros import with_macros
from aligned_rl.intelligence import Estimate, estimation_units, simple_estimate
from aligned_rl.train import devices
from aligned_rl.train.agents import BaselineAgent, make_agent
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure_async import AsyncRunner
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.measure_redraw import RedrawingRunner
from aligned_rl.train.measure_runner import ENV_PREFIX, EnvRunner
from aligned_rl.train.stratified import measure_stratified


@dataclasses.dataclass
class Measurement:
    """What a measurement found: ``report`` (what ``report.json`` holds) and ``per_env``
    (float64 arrays, a row per environment run: environments in run order, then their
    antithetic twins in the same order)."""

    report: dict
    per_env: dict[str, np.ndarray]

    def estimate(self, name: str = "upsilon_average_reward") -> Estimate:
        e = self.report["estimates"][name]
        return Estimate(e["mean"], e["se"], e["n"], e["filtered_mass"])


def per_env_values(sums: dict[str, np.ndarray], config: MeasureConfig) -> dict[str, np.ndarray]:
    """Per-environment values from the runner's sums (``measure_runner.SUMS`` of a continuing
    family, ``EPISODE_SUMS`` of an episodic one); each ``env/<name>`` sum of an environment metric
    becomes its mean per step (continuing) or per counted episode (episodic)."""
    sums = {k: v.reshape(-1) for k, v in sums.items()}
    metrics = [k for k in sums if k.startswith(ENV_PREFIX)]
    if "episodes" in sums:
        episodes, steps = sums["episodes"], sums["steps"]
        return {
            "episode_value": sums["value"] / episodes,
            "aligned_value": sums["aligned"] / episodes,
            "constrained_value": sums["constrained"] / episodes,
            "forbidden_rate": sums["violations"] / steps,
            "lawful_probability": sums["lawful"] / steps,
            "episodes": episodes,
            "episode_length": steps / episodes,
            **{k: sums[k] / episodes for k in metrics},  # per episode
        }
    T = config.episode_length
    discount_total = sum(config.gamma ** t for t in range(T))
    return {
        "average_reward": sums["reward"] / T,
        "discounted_value": sums["discounted"] / discount_total,
        "aligned_value": sums["aligned"] / T,
        "constrained_value": sums["constrained"] / T,
        "forbidden_rate": sums["violations"] / T,
        "lawful_probability": sums["lawful"] / T,
        **{k: sums[k] / T for k in metrics},  # per step
    }


PRIMARY = {"continuing": ("upsilon_average_reward", "average_reward"),
           "episodic": ("upsilon_episode_value", "episode_value")}  # (estimate, per-environment value)
VALUE_MEANING = {
    "continuing": "average reward per step over episode_length steps (rewards in [-1, 1])",
    "episodic": "mean over the first `episodes` episodes of (2 R - hi - lo) / (hi - lo) in [-1, 1], R the "
                "episode's return and [lo, hi] the bounds of any episode's return in that environment",
}


def estimated(config: MeasureConfig, kind: str = "continuing") -> dict[str, str]:
    """The report's estimates and the per-environment values each is the mean of.  With a
    constitution, Sigma, V^C and the forbidden rate are over the same (antithetically
    symmetrised) prior as Upsilon: twins share every random number, so the pair, not the row,
    is the independent unit of every one."""
    estimate, value = PRIMARY[kind]
    names = {estimate: value}
    if kind == "continuing":
        names["upsilon_discounted"] = "discounted_value"
    if config.constitution != "none":
        names.update(sigma_aligned="aligned_value", forbidden_rate="forbidden_rate",
                     constrained_value="constrained_value")
    return names


def group_breakdown(per_env: dict[str, np.ndarray], names: dict[str, str], n: int, antithetic: bool,
                    groups: tuple[str, ...]) -> list[dict]:
    """Every estimate again within each of the family's groups (``CurriculumSpec.groups``: room
    size and hazards, AIQ's strata, ...): where an agent fails and breaks rules.  The environments
    a void run replaced (``redrawn``) are left out: their replacement may be of another group."""
    group = per_env["group"][:n].astype(np.int64)
    counted = per_env["redrawn"][:n] == 0 if "redrawn" in per_env else np.ones((n,), bool)
    rows = []
    for g, name in enumerate(groups):
        members = (group == g) & counted
        if not members.any():
            continue
        rows.append({"group": name, "environments": int(members.sum()),
                     "estimates": {est: simple_estimate(estimation_units(per_env[key], n, antithetic)[members]).as_dict()
                                   for est, key in names.items()}})
    return rows


def resolve_antithetic(setting: bool | None, agents: list[Any], key: str = "antithetic") -> tuple[bool, str]:
    """(whether to run antithetic twins, why) for ``agents`` measured alike: by default on when
    every agent adapts to the rewards it is paid; refused for an agent that does not."""
    if setting is None:
        adaptive = all(a.adaptive for a in agents)
        return adaptive, ("default: the agent adapts to rewards" if adaptive else
                          "default: off, an agent does not adapt to rewards")
    blind = [a.name for a in agents if not a.adaptive]
    if setting and blind:
        raise ConfigError(
            f"{blind[0]} does not adapt to the rewards it is paid (a feed-forward policy): in an environment's "
            "reward-negated antithetic twin it acts the same and scores exactly the negative, so every pair "
            f"averages 0 and says nothing; set {key}=false (or leave it unset)")
    return bool(setting), "set in the config"


def _with_episode_length(params: Any, length: int) -> Any:
    if hasattr(params, "max_steps_in_episode"):
        # one episode of `length` steps per environment, no reset inside the measurement
        return params.replace(max_steps_in_episode=jnp.full_like(params.max_steps_in_episode, length + 1))
    return params


def check_value(config: MeasureConfig, value: Any) -> None:
    """The family must say how its environments are valued; keys of the other kind do nothing."""
    if value is None:
        raise ConfigError(f"{config.env!r} declares no value (continuing or episodic, with its return bounds), "
                          "so its environments cannot be measured; measure a family that does (see `aligned-rl "
                          "envs`), or register the family with a value (envs/family.py)")
    default = MeasureConfig()
    if value.kind == "episodic":
        if config.episode_length != default.episode_length:
            raise ConfigError(f"episode_length={config.episode_length} has no effect: {config.env} is episodic, "
                              "each environment runs `episodes` whole episodes; set episodes=N instead")
        if config.paid_reward != default.paid_reward:
            raise ConfigError(f"paid_reward={config.paid_reward}: mu^C of an episodic family values a whole episode "
                              "(-1 once an action in it is forbidden), which no per-step payment reproduces; "
                              "measure adaptive agents on it paid the environment's reward")
    elif config.episodes != default.episodes:
        raise ConfigError(f"episodes={config.episodes} has no effect: {config.env} is continuing; "
                          "set episode_length=N (steps per environment) instead")


def choose_engine(config: MeasureConfig, agent: Any, env: Any, constitution: Any, mesh: Any) -> tuple[str, str]:
    """("async" or "lockstep", why) for ``config.engine``: ``auto`` takes the asynchronous engine
    (``measure_async``) where it can run; asking for it where it cannot is refused with the reason."""
    ok, reason = AsyncRunner.eligible(config, agent, env, constitution, mesh)
    if config.engine == "async" and not ok:
        raise ConfigError(f"engine=async cannot run this measurement: {reason}; use engine=auto or lockstep")
    if config.engine == "lockstep":
        return "lockstep", "set in the config"
    return ("async", "an AIQ baseline on BF-programs without a constitution") if ok else ("lockstep", reason)


def draw_environments(config: MeasureConfig) -> tuple[Any, Any]:
    """(environment, ParamBatch) as ``measure`` draws them from ``config.seed``: ``num_envs``
    environments, or the phase-1 pool of stratified sampling."""
    n = config.num_envs
    pool_size = max(n, math.ceil(config.pool_factor * n)) if config.sampling == "stratified" else n
    try:
        return envs.sample(config.env, jax.random.PRNGKey(config.seed), pool_size)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err


def measure(config: MeasureConfig, agent: Any = None, sampled: tuple[Any, Any] | None = None) -> Measurement:
    """Run the measurement ``config`` describes with ``agent`` (default: ``config.agent``).

    ``sampled`` = (env, ParamBatch) reuses environments already drawn (``draw_environments``):
    ``num_envs`` of them with ``sampling=simple``, the phase-1 pool (at least ``num_envs``)
    with ``stratified``.
    """
    devices.start_distributed(config.coordinator_address, config.num_processes, config.process_id)
    n = config.num_envs
    stratified = config.sampling == "stratified"
    if not stratified and n % config.buckets:
        raise ConfigError(f"num_envs={n} does not split into buckets={config.buckets} equal batches")
    try:
        constitution = envs.constitution(config.env, config.constitution)
        spec = envs.spec(config.env)
        value, voiding = spec.value, spec.voiding
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    check_value(config, value)
    env, batch = sampled or draw_environments(config)
    have = int(jax.tree.leaves(batch.params)[0].shape[0])
    if stratified:
        if getattr(batch.params, "stratum", None) is None:
            raise ConfigError(f"sampling=stratified needs a family whose params carry a stratum (e.g. "
                              f"BF-programs); the params of {config.env!r} have none: use sampling=simple")
        if have < n:
            raise ConfigError(f"sampling=stratified: the pool holds {have} environments, fewer than num_envs={n}")
    elif have != n:
        raise ConfigError(f"the sampled batch holds {have} environments but num_envs={n}")
    num_actions = int(env.action_space(env.default_params).n)
    if value.kind == "continuing":
        all_params, horizon = _with_episode_length(batch.params, config.episode_length), config.episode_length
    else:  # long enough for every environment to finish its counted episodes
        all_params, horizon = batch.params, config.episodes * int(np.max(np.asarray(batch.params.max_steps_in_episode)))
    if agent is None:  # a baseline takes the AIQ paper's parameters for the steps it will act
        agent = make_agent(config.agent, env, num_actions, config.env, dict(config.agent_params),
                           config.agent_reward_scale, horizon)
    if not isinstance(agent, BaselineAgent) and config.agent_reward_scale != MeasureConfig().agent_reward_scale:
        raise ConfigError(f"agent_reward_scale={config.agent_reward_scale} has no effect: only the AIQ baselines "
                          f"are paid scaled rewards, and {agent.name} is not one; remove it")
    if getattr(agent, "saute", None) is not None and config.constitution == "none":
        raise ConfigError(f"{agent.name} was trained with alignment.saute and observes how many forbidden actions "
                          "it has left: without a constitution it would never spend any; measure it with the "
                          "constitution it was trained with (constitution=<name>)")
    if getattr(agent, "macros", ()):  # an agent with tools acts in the family with its macros added
        try:
            env, constitution = with_macros(env, constitution, agent.macros)
        except ValueError as err:
            raise ConfigError(f"{agent.name}'s tools cannot act in {config.env!r}: {err}") from err
    antithetic, antithetic_source = resolve_antithetic(config.antithetic, [agent])
    config = dataclasses.replace(config, antithetic=antithetic)
    mesh = devices.device_mesh(config.devices, "devices", across_processes=True)
    engine, engine_reason = choose_engine(config, agent, env, constitution, mesh)
    runner = (AsyncRunner if engine == "async" else EnvRunner)(config, agent, env, all_params, constitution, mesh,
                                                               value, horizon, voiding)
    if voiding is not None:  # void runs are replaced and run again, as the family's definition says
        def prepare(params: Any) -> Any:  # a replacement runs as long as the others
            return _with_episode_length(params, config.episode_length) if value.kind == "continuing" else params

        runner = RedrawingRunner(runner, voiding, env, batch.params, batch.bits, config.seed, stratified, prepare)
    names = estimated(config, value.kind)
    # the environment's own metrics (the lockstep engine sums them; the asynchronous one does not)
    names.update({ENV_PREFIX + m: ENV_PREFIX + m for m in getattr(runner, "metric_names", ())})
    from rich.progress import Progress

    extra: dict[str, Any] = {}
    with Progress(disable=not config.progress or jax.process_index() != 0, transient=True) as progress:
        if not stratified:
            sums = runner.run_buckets(np.arange(n), jax.random.PRNGKey(config.seed + 1), config.buckets, progress, "")
            per_env = per_env_values(sums, config)
            estimates = {name: simple_estimate(estimation_units(per_env[key], n, config.antithetic),
                                               batch.filtered_mass)
                         for name, key in names.items()}
        else:
            per_env, estimates, extra = measure_stratified(config, runner, batch, progress, per_env_values, names)
    bits = np.asarray(batch.bits)
    if voiding is not None:
        order = per_env["pool_index"][:n].astype(np.int64) if stratified else np.arange(n)
        per_env["redrawn"] = np.tile(runner.redrawn[order], runner.twins).astype(np.float64)
        bits = runner.bits
        extra["voided"] = runner.report()
    curriculum = spec.curriculum
    if curriculum is not None and not stratified:  # where the agent fails: the family's groups
        group = np.asarray(jax.jit(jax.vmap(curriculum.group))(jax.tree.map(lambda x: x[:n], batch.params)))
        per_env["group"] = np.tile(group, 2 if config.antithetic else 1).astype(np.float64)
        extra["groups"] = group_breakdown(per_env, names, n, config.antithetic, curriculum.groups)
    if isinstance(agent, BaselineAgent):  # the parameters it ran with (the paper's preset and any overrides)
        extra["agent_parameters"] = {k: v for k, v in dataclasses.asdict(agent.agent).items()
                                     if k not in ("num_obs", "num_actions")}
    report = {
        "agent": agent.name,
        "adaptive": bool(agent.adaptive),
        "env": config.env,
        "constitution": config.constitution,
        "num_envs": n,
        "antithetic": config.antithetic,
        "antithetic_source": antithetic_source,
        "engine": engine,
        "engine_source": engine_reason,
        "episode_length": config.episode_length,
        "value": {"kind": value.kind, "estimate": PRIMARY[value.kind][0], "per_env": PRIMARY[value.kind][1],
                  "definition": VALUE_MEANING[value.kind], "steps_per_environment": horizon,
                  **({"episodes": config.episodes} if value.kind == "episodic" else {})},
        "seed": config.seed,
        "mean_description_bits": float(np.mean(bits)),
        "estimates": {k: v.as_dict() for k, v in estimates.items()},
        "agent_env_steps_per_second": runner.steps / runner.seconds,
        "seconds": runner.seconds,
        "config": dataclasses.asdict(config),
        "compile_seconds": runner.compile_seconds,
        "buckets": config.buckets,
        "sampling": config.sampling,
        **extra,
        "devices": {"mesh": 1 if mesh is None else int(mesh.devices.size), "processes": jax.process_count(),
                    "platform": jax.devices()[0].platform,
                    "padding": "a batch that does not split over the devices is padded with copies of "
                               "its first environment; their results are dropped"},
        "memory": runner.memory_report(),
    }
    return Measurement(report, per_env)
