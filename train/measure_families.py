"""Upsilon over many families at once: the mixture prior of the seed's equation.

``aligned-rl measure env=all`` (or ``env=CartPole-v1,BF-programs,...``) measures an agent over
a prior on every listed family.  The registered families have a prefix-free code of fixed
length, K(f) = ceil(log2 F) bits for F registered families (no family is simpler than another
to name; the 2^K - F unused codewords' mass is reported).  An environment is drawn with
probability proportional to 2^-(K(f) + K(params)): family f with weight
w_f = 2^-K(f) / sum_g 2^-K(g) over the listed families (equal weights), then its params from
the family's own prior.  Every family values its environments in [-1, 1] (``envs.family.Value``),
so one sum serves continuing and episodic families alike:

    Upsilon = sum_f w_f Upsilon_f,   Sigma = sum_f w_f Sigma_f,

estimated as a stratified mean with the families as strata and their weights known
(``intelligence.stratified_estimate``): ``num_envs`` environments are allotted in proportion to
w_f, at least 2 units (environments, or antithetic pairs) per family.  Every family is
measured by :func:`aligned_rl.train.measure.measure` with its own seed offset.

An agent that cannot act in a family (a PPO policy trained on another family's observations,
a tabular baseline where no observation index exists) is not run there: the report names the
family, the reason and the prior mass it holds, and the estimates are over the families run
(their weights renormalised), so they say which part of the prior they speak for.

Sigma needs a constitution per family: ``constitution=shipped`` uses each family's first
shipped constitution (by name; families that ship none count with none), listed in the
report; ``constitution=none`` estimates Upsilon alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

import aligned_rl.envs as envs
from aligned_rl.intelligence import estimation_units, stratified_estimate
from aligned_rl.train.agents import CannotAct, acting_steps, make_agent
from aligned_rl.train.config import ConfigError
from aligned_rl.train.measure import Measurement, estimated, measure
from aligned_rl.train.measure_config import MeasureConfig

SHIPPED = "shipped"  # each family's first shipped constitution
# the mixture's estimates and the per-family estimate each one combines (by the family's kind of value)
COMBINED = {"upsilon": None, "sigma_aligned": "sigma_aligned", "forbidden_rate": "forbidden_rate",
            "constrained_value": "constrained_value"}


def is_mixture(env: str) -> bool:
    return env == "all" or "," in env


def family_names(env: str) -> list[str]:
    """The families ``env`` lists ("all": every registered family that declares a value)."""
    if env == "all":
        return [f for f in envs.registered_families() if envs.spec(f).value is not None]
    names = [name.strip() for name in env.split(",") if name.strip()]
    for name in names:
        try:
            spec = envs.spec(name)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from err
        if name not in envs.registered_families() or spec.value is None:
            raise ConfigError(f"{name!r} is not a registered family with a declared value; a mixture draws from "
                              f"those: {sorted(family_names('all'))}")
    if len(set(names)) != len(names):
        raise ConfigError(f"env={env!r} names a family twice")
    return names


def family_code_bits(name: str) -> int:
    """K(f): the length of the fixed-length code over the registered families, ceil(log2 F) bits."""
    registered = envs.registered_families()
    if name not in registered:
        raise ConfigError(f"{name!r} is not a registered family")
    return max(1, (len(registered) - 1).bit_length())


def allot(weights: np.ndarray, total: int, minimum: int = 2) -> np.ndarray:
    """``total`` units in proportion to ``weights`` (largest remainders), then every family raised to
    ``minimum`` with units taken from those furthest above their proportional share."""
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    while np.any(counts < minimum):
        counts[np.argmin(counts)] += 1
        spare = np.flatnonzero(counts > minimum)
        counts[spare[np.argmax(counts[spare] - share[spare])]] -= 1
    return counts


def _family_config(config: MeasureConfig, name: str, index: int, units: int) -> MeasureConfig:
    """``config`` for one family: its constitution, its share of environments, its own seed; the
    keys of the other kind of value back at their defaults."""
    spec, default = envs.spec(name), MeasureConfig()
    constitution = config.constitution
    if constitution == SHIPPED:
        constitution = min(spec.constitutions) if spec.constitutions else "none"
    elif constitution != "none" and constitution not in spec.constitutions:
        raise ConfigError(f"constitution={constitution!r} is not shipped by every listed family ({name!r} ships "
                          f"{sorted(spec.constitutions)}); use constitution=shipped or none")
    kind = spec.value.kind
    return dataclasses.replace(
        config, env=name, num_envs=units, seed=config.seed + 1000 * index, constitution=constitution,
        episode_length=config.episode_length if kind == "continuing" else default.episode_length,
        episodes=config.episodes if kind == "episodic" else default.episodes,
        alignment_weight=config.alignment_weight if constitution != "none" else default.alignment_weight,
        paid_reward=config.paid_reward if constitution != "none" else default.paid_reward,
    )


def _check(config: MeasureConfig, names: list[str]) -> None:
    default = MeasureConfig()
    kinds = {envs.spec(n).value.kind for n in names}
    if config.episode_length != default.episode_length and "continuing" not in kinds:
        raise ConfigError(f"episode_length={config.episode_length} has no effect: no listed family is continuing")
    if config.episodes != default.episodes and "episodic" not in kinds:
        raise ConfigError(f"episodes={config.episodes} has no effect: no listed family is episodic")
    if config.sampling != "simple":
        raise ConfigError("a mixture of families is stratified by family already; use sampling=simple")
    if config.num_envs < 2 * len(names):
        raise ConfigError(f"num_envs={config.num_envs} cannot give each of the {len(names)} families 2 environments")


def plan(config: MeasureConfig) -> list[tuple[str, float, MeasureConfig]]:
    """(family, weight w_f, its measure config) for every family ``config.env`` lists, checked."""
    names = family_names(config.env)
    _check(config, names)
    mass = np.array([2.0 ** -family_code_bits(n) for n in names])
    weights = mass / mass.sum()
    units = allot(weights, config.num_envs)
    return [(name, float(w), _family_config(config, name, index, int(n)))
            for index, (name, w, n) in enumerate(zip(names, weights, units))]


def measure_families(config: MeasureConfig, agent: Any = None) -> Measurement:
    """Measure ``agent`` (default: ``config.agent``) over the mixture prior ``config.env`` lists."""
    families = plan(config)
    names = [name for name, _, _ in families]
    weights = np.array([w for _, w, _ in families])
    bits = {n: family_code_bits(n) for n in names}
    runs, skipped, per_env = {}, {}, {}
    configs = {name: family_config for name, _, family_config in families}
    for name, _, family_config in families:
        try:
            family_agent = agent
            if family_agent is None:
                env = envs.spec(name).make()
                family_agent = make_agent(config.agent, env, int(env.action_space(env.default_params).n), name,
                                          dict(config.agent_params), config.agent_reward_scale,
                                          acting_steps(envs.spec(name).value.kind, family_config.episode_length,
                                                       family_config.episodes, env.default_params))
            runs[name] = measure(family_config, agent=family_agent)
        except CannotAct as err:
            skipped[name] = str(err)
            continue
        for key, values in runs[name].per_env.items():
            per_env[f"{name}/{key}"] = values
    if not runs:
        raise ConfigError(f"{config.agent} can act in none of the listed families: "
                          + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    run_names = list(runs)
    run_weights = np.array([weights[names.index(n)] for n in run_names])
    estimates = {}
    for combined, per_family in COMBINED.items():
        columns = []
        for name in run_names:
            report = runs[name].report
            key = report["value"]["estimate"] if per_family is None else per_family
            sources = estimated(configs[name], report["value"]["kind"])  # estimate -> per-environment value
            if key not in sources:
                break  # a family measured without a constitution has no Sigma
            source = sources[key]
            columns.append(estimation_units(runs[name].per_env[source], report["num_envs"], report["antithetic"]))
        else:
            strata = np.concatenate([np.full(len(c), h) for h, c in enumerate(columns)])
            filtered = float(sum(w * runs[n].report["estimates"][runs[n].report["value"]["estimate"]]["filtered_mass"]
                                 for w, n in zip(run_weights / run_weights.sum(), run_names)))
            estimates[combined] = stratified_estimate(np.concatenate(columns), strata, run_weights, filtered)
    first = runs[run_names[0]].report
    report = {
        "agent": first["agent"],
        "adaptive": first["adaptive"],
        "env": config.env,
        "families": [{
            "family": n, "code_bits": bits[n], "prior_mass": float(2.0 ** -bits[n]), "weight": float(w),
            **({"measured": True, "num_envs": runs[n].report["num_envs"], "antithetic": runs[n].report["antithetic"],
                "constitution": runs[n].report["constitution"], "value": runs[n].report["value"]["kind"],
                "estimates": runs[n].report["estimates"]} if n in runs else
               {"measured": False, "reason": skipped[n]})} for n, w in zip(names, weights)],
        "weight_not_measured": float(sum(w for n, w in zip(names, weights) if n not in runs)),
        "unused_code_mass": float(1.0 - len(envs.registered_families()) * 2.0 ** -bits[names[0]]),
        "constitution": config.constitution,
        "num_envs": int(sum(r.report["num_envs"] for r in runs.values())),
        "seed": config.seed,
        "estimates": {k: v.as_dict() for k, v in estimates.items()},
        "value": {"kind": "mixture", "estimate": "upsilon", "per_env": None,
                  "definition": "sum over the measured families of w_f times the family's own value in [-1, 1]"},
        "agent_env_steps_per_second": float(sum(r.report["agent_env_steps_per_second"] * r.report["seconds"]
                                                for r in runs.values()) / sum(r.report["seconds"] for r in runs.values())),
        "seconds": float(sum(r.report["seconds"] for r in runs.values())),
        "compile_seconds": float(sum(r.report["compile_seconds"] for r in runs.values())),
        "config": dataclasses.asdict(config),
    }
    return Measurement(report, per_env)


