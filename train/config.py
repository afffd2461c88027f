"""The training config: a typed schema (OmegaConf structured config), loaded from YAML plus
dotted ``key=value`` overrides, validated before anything compiles.

``load_config(path, overrides)`` raises :class:`ConfigError` with a message that names the
offending key and what would fix it: unknown keys, wrong types, values that are out of
range or inconsistent (e.g. a batch that does not split into minibatches), and keys set away
from their default where the rest of the config leaves them without effect (e.g.
``ppo.memory_size`` with ``ppo.network=mlp``).  ``check_constitution`` does the checks that
need the built constitution (e.g. lookahead settings for one without state rules).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aligned_rl.divergence import DIVERGENCES
from aligned_rl.train.policies import POLICIES


class ConfigError(ValueError):
    """A config that cannot be used, with the reason and the fix."""


@dataclasses.dataclass
class EnvConfig:
    name: str = "CartPole-v1"  # a registered family or any gymnax environment name
    num_envs: int = 64  # environments stepped in parallel; their params may all differ
    episode_length: int = 0  # steps before an episode is truncated; 0 keeps the family's own limit
    # train on num_envs / 2 environments and their reward-negated twins (the second half pays -r), as
    # measure's antithetic pairs do; for a policy that reads its rewards (ppo.network=rl2)
    antithetic: bool = False
    # tools: macro-actions, each a sequence of >= 2 primitive actions (e.g. [[3, 3], [1, 1]]), added to the action
    # set by envs/macros.py (action A + m runs macro m); the constitution judges every primitive step of a macro
    macros: list[list[int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConstitutionConfig:
    name: str = "none"  # a constitution shipped with the environment, or "none"
    eps: float = 0.0  # floor of sigma on forbidden actions (kl_pi_sigma needs eps > 0)
    lookahead_samples: int = 1  # keys per action for the one-step lookahead of state rules
    lookahead_threshold: float = 0.0  # forbid an action when P(forbidden next state) > this
    params: dict[str, float] = dataclasses.field(default_factory=dict)  # overrides of rule params


@dataclasses.dataclass
class LagrangeConfig:
    enabled: bool = False
    target: str = "forbidden_rate"  # "forbidden_rate" or "divergence"
    budget: float = 0.01  # keep the target under this
    lr: float = 0.5  # beta <- max(0, beta + lr * (measured - budget)) after every update (the integral gain)
    beta_max: float = 100.0
    # a PID-controlled multiplier (Stooke et al. 2020) when either gain is > 0: beta = kp * (measured - budget)
    # + lr * integral + kd * max(0, measured - previous measured), clipped to [0, beta_max]
    kp: float = 0.0  # proportional gain
    kd: float = 0.0  # derivative gain (on rises of the measured constraint only)


@dataclasses.dataclass
class SauteConfig:
    # safety-state augmentation (Sootla et al. 2022): the policy observes the fraction of its violation
    # budget left in the episode, and once the budget is spent every reward is replaced by -penalty
    enabled: bool = False
    budget: float = 10.0  # forbidden actions allowed per episode
    penalty: float = 1.0  # the reward of every step after the budget is spent is -penalty


@dataclasses.dataclass
class AlignmentConfig:
    divergence: str = "projection"  # one of aligned_rl.DIVERGENCES, or "none" (nothing in the loss)
    beta: float = 1.0  # weight of E_s[D(sigma, pi)] in the loss (initial value under Lagrange)
    reward_weight: float = 0.0  # w in (1 - w) r + w 2^-D; 0 leaves the reward alone
    reward_mode: str = "additive"  # "additive": (1-w) r + w 2^-D; "multiplicative": r * 2^-D
    shield: bool = False  # mask forbidden actions when acting
    lagrange: LagrangeConfig = dataclasses.field(default_factory=LagrangeConfig)
    saute: SauteConfig = dataclasses.field(default_factory=SauteConfig)


@dataclasses.dataclass
class PPOConfig:
    total_timesteps: int = 500_000
    num_steps: int = 128  # steps per environment per rollout
    update_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden_sizes: list[int] = dataclasses.field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # "tanh" or "relu"
    network: str = "mlp"  # "mlp": actor and critic MLPs; "rl2": recurrent (GRU) agent fed the previous action and reward
    memory_size: int = 128  # GRU width of the rl2 network


@dataclasses.dataclass
class TeacherConfig:
    # demonstrations from the family's teacher on replayed levels where the agent keeps failing
    enabled: bool = False
    weight: float = 1.0  # weight of the imitation term (cross-entropy against the teacher's action) in the loss
    failure: float = 0.5  # ask when a replayed level's failure rate is above this ...
    after_replays: int = 1  # ... after this many replays


@dataclasses.dataclass
class CurriculumConfig:
    # which environments the learner trains on (train/curriculum.py); off: the num_envs drawn once for the run
    enabled: bool = False
    pool_size: int = 16384  # levels drawn from the family's prior up front; new levels are taken from it in order
    buffer_size: int = 1024  # levels the buffer keeps with their scores
    level_updates: int = 1  # updates each environment keeps its level before the curriculum chooses again
    replay_prob: float = 0.5  # probability of replaying buffered levels (0: domain randomisation, always new)
    score: str = "value_loss"  # "value_loss" (positive GAE), "max_mc" (best return - value), "learnability" (p(1-p))
    temperature: float = 0.3  # rank prioritisation: P ~ (1/rank)^(1/temperature)
    staleness_coef: float = 0.3  # weight of staleness in the replay distribution
    mutate: bool = False  # ACCEL: after every replay, train on mutations of the replayed levels
    edits: int = 4  # edits per mutation
    error_analysis: bool = False  # half of the new levels from the groups where the agent fails
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)


@dataclasses.dataclass
class RunConfig:
    dir: Optional[str] = None  # run directory; default checkpoints/<env>-<constitution>-<seed>-<time>
    updates_per_chunk: int = 10  # jitted updates between host-side logging/checkpointing
    checkpoint_every: int = 20  # save every this many updates (rounded up to whole chunks)
    progress: bool = True  # progress bar
    tensorboard: bool = True
    plots: bool = True
    devices: int = 0  # shard the env batch over this many local devices; 0 = all of them
    stop_at_update: int = 0  # stop after this update with a checkpoint (resume later); 0 = run to the end


@dataclasses.dataclass
class TrainConfig:
    # an int, or a list of distinct ints: the seeds' runs vmapped in one program, each with its own
    # run directory <run.dir>/seed-<s> (checkpoints, metrics), resumable together
    seed: Any = 0
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    constitution: ConstitutionConfig = dataclasses.field(default_factory=ConstitutionConfig)
    alignment: AlignmentConfig = dataclasses.field(default_factory=AlignmentConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    @property
    def steps_per_update(self) -> int:
        return self.env.num_envs * self.ppo.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, self.ppo.total_timesteps // self.steps_per_update)


def _explain(err: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    kind = type(err).__name__
    if kind in ("ConfigKeyError", "ConfigAttributeError"):
        return ConfigError(f"{where}: unknown config key '{key}'. {msg}. Run `aligned-rl config` to see every key.")
    return ConfigError(f"{where}: bad value for '{key}': {msg}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Schema defaults <- YAML file <- dotted overrides, validated; returns a TrainConfig."""
    schema = OmegaConf.structured(TrainConfig)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as err:  # YAML syntax errors and the like
            raise ConfigError(f"{path}: cannot parse YAML: {err}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. ppo.lr=1e-3)")
    if overrides:
        try:
            layers.append(("command-line override", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as err:
            raise _explain(err, "command-line override") from err
    merged = schema
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise _explain(err, where) from err
    config: TrainConfig = OmegaConf.to_object(merged)
    validate(config)
    return config


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a plain nested dict (as saved in a run directory), validated."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(data))
    except OmegaConfBaseException as err:
        raise _explain(err, "saved config") from err
    config: TrainConfig = OmegaConf.to_object(merged)
    validate(config)
    return config


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def merge_layers(schema: type, what: str, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                 example: str = "ppo.lr=1e-3") -> Any:
    """``schema``'s structured defaults <- YAML file <- dotted ``key=value`` overrides (an OmegaConf
    object; types checked).  A missing file, a malformed override, an unknown key or a wrong
    type raises :class:`ConfigError` naming ``what`` config and the key.  Used by the commands
    whose configs are flat (measure, tax); the training config reports each layer apart."""
    merged = OmegaConf.structured(schema)
    try:
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. {example})")
        return OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "")
        raise ConfigError(f"{what} config: bad or unknown key '{key}': {str(err).splitlines()[0]}") from err


def check_ranges(what: str, config: Any, checks: tuple[tuple[str, bool], ...]) -> None:
    """Raise :class:`ConfigError` for the first ``(name, ok)`` whose value is out of range."""
    for name, ok in checks:
        if not ok:
            raise ConfigError(f"{what} config: {name}={getattr(config, name)!r} is out of range")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def run_seeds(config: TrainConfig) -> list[int] | None:
    """The seeds of a run that trains several vmapped (``seed`` given as a list), else None."""
    return list(config.seed) if isinstance(config.seed, (list, tuple)) else None


def repeated(items: list) -> list:
    """The values ``items`` lists more than once, sorted."""
    return sorted({x for x in items if list(items).count(x) > 1})


def _check_seed(seed: Any) -> None:
    is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
    if isinstance(seed, (list, tuple)):
        _require(len(seed) >= 1 and all(is_int(s) for s in seed),
                 f"seed must be an int or a non-empty list of ints (one run per seed, vmapped), got {list(seed)!r}")
        twice = repeated(seed)
        _require(not twice, f"seed lists {twice} more than once; each seed's run has its own directory seed-<s>, "
                            "so give distinct seeds")
    else:
        _require(is_int(seed), f"seed must be an int or a list of ints (e.g. seed=[0,1,2]), got {seed!r}")


def validate(config: TrainConfig) -> None:
    """Range and consistency checks that a schema cannot express."""
    ppo, env, align, cons, run = config.ppo, config.env, config.alignment, config.constitution, config.run
    _check_seed(config.seed)
    _require(env.num_envs >= 1, f"env.num_envs must be >= 1, got {env.num_envs}")
    _require(ppo.num_steps >= 1, f"ppo.num_steps must be >= 1, got {ppo.num_steps}")
    _require(ppo.num_minibatches >= 1, f"ppo.num_minibatches must be >= 1, got {ppo.num_minibatches}")
    _require(
        config.steps_per_update % ppo.num_minibatches == 0,
        f"env.num_envs * ppo.num_steps = {config.steps_per_update} does not split into "
        f"ppo.num_minibatches = {ppo.num_minibatches} equal minibatches; choose a divisor.",
    )
    _require(
        ppo.total_timesteps >= config.steps_per_update,
        f"ppo.total_timesteps = {ppo.total_timesteps} is less than one update "
        f"(env.num_envs * ppo.num_steps = {config.steps_per_update})",
    )
    _require(ppo.update_epochs >= 1, f"ppo.update_epochs must be >= 1, got {ppo.update_epochs}")
    _require(ppo.lr > 0, f"ppo.lr must be > 0, got {ppo.lr}")
    _require(0 < ppo.gamma <= 1, f"ppo.gamma must be in (0, 1], got {ppo.gamma}")
    _require(0 <= ppo.gae_lambda <= 1, f"ppo.gae_lambda must be in [0, 1], got {ppo.gae_lambda}")
    _require(len(ppo.hidden_sizes) >= 1 and all(h > 0 for h in ppo.hidden_sizes),
             f"ppo.hidden_sizes must be a non-empty list of positive widths, got {ppo.hidden_sizes}")
    _require(ppo.activation in ("tanh", "relu"), f"ppo.activation must be 'tanh' or 'relu', got {ppo.activation!r}")
    _require(ppo.network in POLICIES, f"ppo.network must be one of {sorted(POLICIES)}, got {ppo.network!r}")
    _require(ppo.memory_size >= 1, f"ppo.memory_size must be >= 1, got {ppo.memory_size}")
    _require(not env.antithetic or POLICIES[ppo.network].adaptive,
             f"env.antithetic=true trains on reward-negated twins, which ppo.network={ppo.network} cannot tell "
             "apart (it does not read its rewards): both twins would pull it in opposite directions; use "
             "ppo.network=rl2 or set env.antithetic=false")
    _require(not env.antithetic or env.num_envs % 2 == 0,
             f"env.antithetic=true pairs every environment with its twin: env.num_envs={env.num_envs} must be even")
    _require(
        not POLICIES[ppo.network].needs_sequences or env.num_envs % ppo.num_minibatches == 0,
        f"ppo.network={ppo.network} learns from whole sequences, so minibatches split the environments: "
        f"env.num_envs = {env.num_envs} does not split into ppo.num_minibatches = {ppo.num_minibatches}; "
        "choose a divisor.",
    )
    from aligned_rl.envs.macros import check_macros  # here: importing the families touches the devices

    try:
        check_macros(env.macros, None)  # the primitive actions' range needs the family: checked in loop.build
    except ValueError as err:
        raise ConfigError(f"env.macros: {err}") from err
    _require(not (env.macros and config.curriculum.teacher.enabled),
             "env.macros with curriculum.teacher.enabled=true: the teacher demonstrates primitive actions in the "
             "inner environment's states, which a tool-using agent does not act in; set "
             "curriculum.teacher.enabled=false, or remove env.macros")
    _require(env.episode_length >= 0, f"env.episode_length must be >= 0 (0 = the family's own), got {env.episode_length}")
    names = ("none",) + DIVERGENCES
    _require(align.divergence in names, f"alignment.divergence must be one of {names}, got {align.divergence!r}")
    _require(align.beta >= 0, f"alignment.beta must be >= 0, got {align.beta}")
    _require(0 <= align.reward_weight <= 1, f"alignment.reward_weight must be in [0, 1], got {align.reward_weight}")
    _require(align.reward_mode in ("additive", "multiplicative"),
             f"alignment.reward_mode must be 'additive' or 'multiplicative', got {align.reward_mode!r}")
    _require(align.lagrange.target in ("forbidden_rate", "divergence"),
             f"alignment.lagrange.target must be 'forbidden_rate' or 'divergence', got {align.lagrange.target!r}")
    _require(align.lagrange.budget >= 0, f"alignment.lagrange.budget must be >= 0, got {align.lagrange.budget}")
    _require(align.lagrange.lr > 0, f"alignment.lagrange.lr must be > 0, got {align.lagrange.lr}")
    _require(
        not (align.divergence == "kl_pi_sigma" and cons.eps <= 0 and cons.name != "none"),
        "alignment.divergence=kl_pi_sigma is infinite wherever sigma is 0; set constitution.eps > 0 "
        "(e.g. constitution.eps=0.01) or choose another divergence (projection, tv, js, kl_sigma_pi).",
    )
    _require(align.lagrange.beta_max >= 0, f"alignment.lagrange.beta_max must be >= 0, got {align.lagrange.beta_max}")
    for gain in ("kp", "kd"):
        value = getattr(align.lagrange, gain)
        _require(math.isfinite(value) and value >= 0,
                 f"alignment.lagrange.{gain} must be a finite number >= 0 (a gain of the PID multiplier), got {value}")
    _require(math.isfinite(align.saute.budget) and align.saute.budget > 0,
             f"alignment.saute.budget must be > 0 (forbidden actions allowed per episode), got {align.saute.budget}")
    _require(math.isfinite(align.saute.penalty) and align.saute.penalty >= 0,
             f"alignment.saute.penalty must be a finite number >= 0, got {align.saute.penalty}")
    _require(math.isfinite(cons.eps) and cons.eps >= 0, f"constitution.eps must be a finite number >= 0, got {cons.eps}")
    _require(cons.lookahead_samples >= 1, f"constitution.lookahead_samples must be >= 1, got {cons.lookahead_samples}")
    _require(0 <= cons.lookahead_threshold < 1,
             f"constitution.lookahead_threshold must be in [0, 1), got {cons.lookahead_threshold}")
    _require(run.updates_per_chunk >= 1, f"run.updates_per_chunk must be >= 1, got {run.updates_per_chunk}")
    _require(run.checkpoint_every >= 1, f"run.checkpoint_every must be >= 1, got {run.checkpoint_every}")
    _require(run.stop_at_update >= 0, f"run.stop_at_update must be >= 0, got {run.stop_at_update}")
    _require(run.devices >= 0, f"run.devices must be >= 0, got {run.devices}")
    _check_curriculum(config)
    _check_effects(config)


def _check_curriculum(config: TrainConfig) -> None:
    cur, teacher = config.curriculum, config.curriculum.teacher
    if not cur.enabled:
        names = [f.name for f in dataclasses.fields(CurriculumConfig) if f.name not in ("enabled", "teacher")]
        for name in names + [f"teacher.{f.name}" for f in dataclasses.fields(TeacherConfig)]:
            _unused(config, f"curriculum.{name}", "the curriculum is off (curriculum.enabled=false)",
                    f"set curriculum.enabled=true, or remove curriculum.{name}")
        return
    chosen = config.env.num_envs // 2 if config.env.antithetic else config.env.num_envs
    pairs = " (one per twin pair)" if config.env.antithetic else ""
    _require(cur.pool_size >= chosen,
             f"curriculum.pool_size={cur.pool_size} is smaller than a batch of {chosen} new levels{pairs}")
    _require(cur.level_updates >= 1, f"curriculum.level_updates must be >= 1, got {cur.level_updates}")
    _require(0 <= cur.replay_prob <= 1, f"curriculum.replay_prob must be in [0, 1], got {cur.replay_prob}")
    scores = ("value_loss", "max_mc", "learnability")
    _require(cur.score in scores, f"curriculum.score must be one of {scores}, got {cur.score!r}")
    _require(math.isfinite(cur.temperature) and cur.temperature > 0,
             f"curriculum.temperature must be > 0, got {cur.temperature}")
    _require(0 <= cur.staleness_coef <= 1, f"curriculum.staleness_coef must be in [0, 1], got {cur.staleness_coef}")
    _require(cur.edits >= 1, f"curriculum.edits must be >= 1, got {cur.edits}")
    if cur.replay_prob == 0:
        for on, name, what in ((cur.mutate, "mutate", "mutations are made of replayed levels"),
                               (teacher.enabled, "teacher.enabled", "the teacher is asked on replayed levels")):
            _require(not on, f"curriculum.{name}=true has no effect with curriculum.replay_prob=0: {what}, and "
                             f"nothing is ever replayed; raise curriculum.replay_prob (e.g. 0.5), or set "
                             f"curriculum.{name}=false")
        for name in ("score", "temperature", "staleness_coef", "buffer_size"):
            _unused(config, f"curriculum.{name}", "with curriculum.replay_prob=0 nothing is replayed from the buffer "
                    "(domain randomisation)", f"raise curriculum.replay_prob, or remove curriculum.{name}")
    else:
        _require(cur.buffer_size >= chosen,
                 f"curriculum.buffer_size={cur.buffer_size} is smaller than a batch: every replay draws {chosen} "
                 f"levels{pairs}, so the buffer must hold at least {chosen}")
    if not cur.mutate:
        _unused(config, "curriculum.edits", "mutations are off (curriculum.mutate=false)",
                "set curriculum.mutate=true, or remove curriculum.edits")
    if not teacher.enabled:
        for name in ("weight", "failure", "after_replays"):
            _unused(config, f"curriculum.teacher.{name}", "the teacher is off (curriculum.teacher.enabled=false)",
                    f"set curriculum.teacher.enabled=true, or remove curriculum.teacher.{name}")
    else:
        _require(math.isfinite(teacher.weight) and teacher.weight > 0,
                 f"curriculum.teacher.weight must be > 0, got {teacher.weight}")
        _require(0 <= teacher.failure < 1, f"curriculum.teacher.failure must be in [0, 1), got {teacher.failure}")
        _require(teacher.after_replays >= 1,
                 f"curriculum.teacher.after_replays must be >= 1, got {teacher.after_replays}")


# ------------------------------------------------------------------ flags without effect
# A key set to a value other than its schema default must change what the run does; a
# key that the rest of the config makes inert is refused, with the reason and the fix.
# A key that merely equals its default is never refused.

def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _show(value: Any) -> str:
    """A value as it is written in a config (true, additive, 0.5)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def _unused(config: TrainConfig, key: str, why: str, fix: str) -> None:
    """Refuse ``key`` if it differs from the schema default: ``why`` it has no effect, ``fix``."""
    value = _get(config, key)
    default = _get(TrainConfig(), key)
    _require(value == default, f"{key}={_show(value)} has no effect: {why}. {fix[0].upper()}{fix[1:]} "
                               f"({key} defaults to {_show(default)}).")


def _divergence_used(config: TrainConfig) -> str:
    """The D that the learner computes (loss, shaped reward, metrics): with
    ``alignment.divergence=none`` nothing enters the loss, and D is the projection."""
    return "projection" if config.alignment.divergence == "none" else config.alignment.divergence


def _check_effects(config: TrainConfig) -> None:
    """Refuse flags that the rest of the config leaves without effect (see train/ppo.py)."""
    align, lag, cons = config.alignment, config.alignment.lagrange, config.constitution
    if config.ppo.network != "rl2":
        _unused(config, "ppo.memory_size", f"it is the GRU width of ppo.network=rl2, and "
                f"ppo.network={config.ppo.network} has no memory",
                "set ppo.network=rl2, or remove ppo.memory_size")
    if not lag.enabled:
        for name in ("target", "budget", "lr", "beta_max", "kp", "kd"):
            _unused(config, f"alignment.lagrange.{name}", "the Lagrange rule is off (alignment.lagrange.enabled=false)",
                    f"set alignment.lagrange.enabled=true, or remove alignment.lagrange.{name}")
    if not align.saute.enabled:
        for name in ("budget", "penalty"):
            _unused(config, f"alignment.saute.{name}", "safety-state augmentation is off (alignment.saute.enabled=false)",
                    f"set alignment.saute.enabled=true, or remove alignment.saute.{name}")
    if align.reward_mode == "multiplicative":
        _unused(config, "alignment.reward_weight",
                "with alignment.reward_mode=multiplicative the learner's reward is r * 2^-D, which has no weight",
                "remove alignment.reward_weight, or set alignment.reward_mode=additive for (1 - w) r + w 2^-D")
    if align.divergence == "none":
        _unused(config, "alignment.beta",
                "alignment.divergence=none puts nothing in the loss for beta to weigh (neither D nor the "
                "constitution's invariance term D_cf)",
                "choose a divergence (e.g. alignment.divergence=projection), or remove alignment.beta")
        _require(not lag.enabled,
                 "alignment.lagrange.enabled=true has no effect: the Lagrange rule adapts beta, and "
                 "alignment.divergence=none puts nothing in the loss for beta to weigh. Choose a divergence "
                 "(e.g. alignment.divergence=projection), or set alignment.lagrange.enabled=false.")
    if _divergence_used(config) == "projection":
        which = " (with alignment.divergence=none, D is the projection)" if align.divergence == "none" else ""
        _unused(config, "constitution.eps",
                f"eps is sigma's floor on forbidden actions, and the projection divergence -log2 pi(allowed|s) "
                f"reads only which actions are allowed, never sigma{which}",
                "choose a divergence that compares pi with sigma (kl_pi_sigma, kl_sigma_pi, tv, js), "
                "or remove constitution.eps")
    if cons.lookahead_samples == 1:
        _unused(config, "constitution.lookahead_threshold",
                "with constitution.lookahead_samples=1 the sampled probability of a forbidden next state is 0 or 1, "
                "so every threshold in [0, 1) forbids the same actions",
                "raise constitution.lookahead_samples (e.g. 16) for a stochastic step, or remove "
                "constitution.lookahead_threshold")
    if cons.name == "none":
        _unused(config, "constitution.params", "constitution.name=none has no rules, so no parameters",
                "choose a constitution (`aligned-rl envs` lists them), or remove constitution.params")
        _check_rules(config, "constitution.name=none", can_forbid=False, state_rules=False, invariances=False)


def _check_rules(config: TrainConfig, who: str, can_forbid: bool, state_rules: bool, invariances: bool) -> None:
    """Refuse flags that a constitution (named by ``who``) gives nothing to act on."""
    lag = config.alignment.lagrange
    if not state_rules:
        for name in ("lookahead_samples", "lookahead_threshold"):
            _unused(config, f"constitution.{name}",
                    f"{who} has no state rules, and the one-step lookahead serves only state rules",
                    f"remove constitution.{name}")
    if can_forbid:
        return
    nothing = f"{who} forbids no action"
    _require(not config.alignment.saute.enabled,
             f"alignment.saute.enabled=true has no effect: {nothing}, so the violation budget is never spent and the "
             "reward never turns into the penalty. Choose a constitution with rules (`aligned-rl envs` lists them), "
             "or set alignment.saute.enabled=false.")
    _unused(config, "alignment.shield", f"{nothing}, so the shield masks nothing",
            "choose a constitution with rules, or remove alignment.shield")
    _unused(config, "constitution.eps", f"{nothing}, so sigma has no forbidden action to put a floor on",
            "choose a constitution with rules, or remove constitution.eps")
    _require(
        not (lag.enabled and lag.target == "forbidden_rate"),
        f"alignment.lagrange.enabled=true has no effect but to lower beta to 0: {nothing}, so the "
        "forbidden-action rate it keeps under alignment.lagrange.budget is always 0. Choose a constitution "
        "with rules, or set alignment.lagrange.enabled=false.",
    )
    if _divergence_used(config) != "projection":
        return  # sigma is uniform: D(sigma, pi) still pulls pi toward spreading its mass
    zero = f"{nothing}: D = -log2 pi(allowed|s) = 0 in every state"
    choose = "choose a constitution with rules or a divergence that compares pi with the uniform sigma " \
             "(kl_pi_sigma, kl_sigma_pi, tv, js)"
    if not invariances:
        _unused(config, "alignment.beta", f"{zero} and beta weighs nothing", f"{choose}, or remove alignment.beta")
    _require(not lag.enabled,
             f"alignment.lagrange.enabled=true has no effect but to lower beta to 0: {zero}, and so is the "
             f"mean D it keeps under alignment.lagrange.budget. "
             f"{choose[0].upper()}{choose[1:]}, or set alignment.lagrange.enabled=false.")
    _unused(config, "alignment.reward_mode", f"{zero}, so 2^-D = 1 and r * 2^-D = r",
            f"{choose}, or remove alignment.reward_mode")
    _unused(config, "alignment.reward_weight",
            f"{zero}, so 2^-D = 1 and (1 - w) r + w 2^-D only rescales r and adds w to every step: "
            "no alignment signal",
            f"{choose}, or remove alignment.reward_weight")


def check_constitution(config: TrainConfig, constitution: Any) -> None:
    """The checks that need the built constitution (its rules are known only once it is
    built): refuse constitution and alignment flags that its rules give nothing to act on,
    e.g. lookahead settings for a constitution without state rules.  Raises ConfigError."""
    _check_rules(
        config,
        f"constitution {constitution.name!r}",
        can_forbid=bool(constitution.action_rules or constitution.state_rules),
        state_rules=bool(constitution.state_rules),
        invariances=bool(constitution.invariances),
    )


CONFIG_FILE = "config.yaml"  # the resolved config a run directory holds


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    seeds_ok: bool = False) -> TrainConfig:
    """The config saved in ``run_dir`` with ``overrides`` applied (validated).  A directory of
    vmapped seeds holds no single agent: unless ``seeds_ok``, it is refused with the seed
    directories to use instead."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    data = OmegaConf.to_container(OmegaConf.load(path))
    merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides)))
    config = from_dict(OmegaConf.to_container(merged))
    config.run.dir = str(run_dir)
    seeds = run_seeds(config)
    if seeds is not None and not seeds_ok:
        dirs = ", ".join(str(Path(run_dir) / f"seed-{s}") for s in seeds[:3]) + (", ..." if len(seeds) > 3 else "")
        raise ConfigError(f"{run_dir} trained {len(seeds)} seeds vmapped ({seeds}); each seed's agent is in a run "
                          f"directory of its own: give one of {dirs}")
    return config
