"""The genome: what an evolving agent may change about itself, and what it may not.

A :class:`Genome` is a typed record of every setting an edit may touch, each the value of one
key of the training config (``GENES``):

* the network: ``ppo.network`` (``mlp`` or ``rl2``), ``ppo.hidden_sizes``, ``ppo.activation``,
  ``ppo.memory_size`` (the RL^2 memory);
* the learner's hyperparameters: ``ppo.lr``, ``ppo.ent_coef``, ``ppo.clip_eps``,
  ``ppo.update_epochs``, ``ppo.gae_lambda``, ``ppo.max_grad_norm``;
* its tools: ``env.macros`` (macro-actions, ``aligned_rl.envs.macros``);
* its curriculum: ``curriculum.enabled``, ``curriculum.score``, ``curriculum.replay_prob``.

Everything else is not in the genome and cannot be edited: the constitution (its name, rules'
parameters, eps, lookahead), the alignment of the learner (the divergence and its weight beta,
the shield, the shaped reward, Lagrange and Saute), the environment family and its batch, the
gate and its thresholds, and the measurement (its environments and seed).  An edit that names
anything outside the genome is refused by :meth:`Genome.edit` with :class:`GenomeError`, before
anything is trained; a candidate made some other way is refused at admission when its run's
protected settings (:func:`protected_settings`) differ from the archive's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aligned_rl.train.config import ConfigError, TrainConfig, from_dict

# genome field -> the training config key it sets
GENES = {
    "network": "ppo.network",
    "hidden_sizes": "ppo.hidden_sizes",
    "activation": "ppo.activation",
    "memory_size": "ppo.memory_size",
    "lr": "ppo.lr",
    "ent_coef": "ppo.ent_coef",
    "clip_eps": "ppo.clip_eps",
    "update_epochs": "ppo.update_epochs",
    "gae_lambda": "ppo.gae_lambda",
    "max_grad_norm": "ppo.max_grad_norm",
    "macros": "env.macros",
    "curriculum": "curriculum.enabled",
    "curriculum_score": "curriculum.score",
    "replay_prob": "curriculum.replay_prob",
}
# the training config's sections an agent may never change (compared whole at admission)
PROTECTED_SECTIONS = ("constitution", "alignment")
PROTECTED_KEYS = ("env.name", "env.episode_length", "env.antithetic")


class GenomeError(ConfigError):
    """An edit outside the genome, or a genome the training config refuses."""


@dataclasses.dataclass(frozen=True)
class Genome:
    """Every editable setting of an agent (see the module docstring); tuples, so it is hashable."""

    network: str
    hidden_sizes: tuple[int, ...]
    activation: str
    memory_size: int
    lr: float
    ent_coef: float
    clip_eps: float
    update_epochs: int
    gae_lambda: float
    max_grad_norm: float
    macros: tuple[tuple[int, ...], ...]
    curriculum: bool
    curriculum_score: str
    replay_prob: float

    @classmethod
    def of(cls, config: TrainConfig) -> "Genome":
        """The genome a training config carries."""
        values = {}
        for name, key in GENES.items():
            section, field = key.split(".")
            value = getattr(getattr(config, section), field)
            if name == "hidden_sizes":
                value = tuple(int(w) for w in value)
            elif name == "macros":
                value = tuple(tuple(int(a) for a in m) for m in value)
            values[name] = value
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {k: [list(m) for m in v] if k == "macros" else list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Genome":
        data = dict(data)
        data["hidden_sizes"] = tuple(data["hidden_sizes"])
        data["macros"] = tuple(tuple(m) for m in data["macros"])
        return cls(**data)

    def edit(self, **changes: Any) -> "Genome":
        """A child genome with ``changes`` (genome field -> value, or a training config key such as
        ``ppo.lr``); anything outside the genome is refused."""
        by_key = {key: name for name, key in GENES.items()}
        named = {}
        for what, value in changes.items():
            name = what if what in GENES else by_key.get(what)
            if name is None:
                raise GenomeError(
                    f"the edit changes {what!r}, which is not in the genome: an agent may edit only "
                    f"{', '.join(GENES)} ({', '.join(GENES.values())}); the constitution, the alignment of its "
                    "learner, the environment, the gate and the measurement are not its to change")
            named[name] = value
        data = {**self.as_dict(), **named}
        return Genome.from_dict(data)

    def overrides(self) -> list[str]:
        """``key=value`` overrides that give a training config this genome."""
        out = []
        for name, key in GENES.items():
            value = getattr(self, name)
            if name == "hidden_sizes":
                value = "[" + ",".join(map(str, value)) + "]"
            elif name == "macros":
                value = "[" + ",".join("[" + ",".join(map(str, m)) + "]" for m in value) + "]"
            out.append(f"{key}={value}")
        return out

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this genome (validated: a genome the training config refuses raises)."""
        data = dataclasses.asdict(config)
        for name, key in GENES.items():
            section, field = key.split(".")
            value = getattr(self, name)
            data[section][field] = ([list(m) for m in value] if name == "macros"
                                    else list(value) if name == "hidden_sizes" else value)
        try:
            return from_dict(data)
        except ConfigError as err:
            raise GenomeError(f"the genome {self.describe()} does not make a training config: {err}") from err

    def describe(self) -> str:
        net = (f"rl2(memory {self.memory_size}, {list(self.hidden_sizes)})" if self.network == "rl2"
               else f"mlp{list(self.hidden_sizes)} {self.activation}")
        tools = f", {len(self.macros)} tools" if self.macros else ""
        cur = f", curriculum {self.curriculum_score}" if self.curriculum else ""
        return f"{net}, lr {self.lr:.2g}, ent {self.ent_coef:.2g}, clip {self.clip_eps:.2g}{tools}{cur}"


def protected_settings(config: TrainConfig) -> dict[str, Any]:
    """What no edit may change, as plain data: the constitution and alignment sections whole,
    and the environment's family, episode length and twins."""
    data = dataclasses.asdict(config)
    out = {section: data[section] for section in PROTECTED_SECTIONS}
    for key in PROTECTED_KEYS:
        section, field = key.split(".")
        out[key] = data[section][field]
    return out


def setting_differences(saved: Any, found: Any, path: str = "") -> list[str]:
    """Where two nested settings (plain JSON data) differ: ``key: saved -> found`` per leaf."""
    if isinstance(saved, dict) and isinstance(found, dict):
        return [d for k in sorted(set(saved) | set(found))
                for d in setting_differences(saved.get(k), found.get(k), f"{path}.{k}" if path else k)]
    return [] if saved == found else [f"{path}: {saved!r} -> {found!r}"]


def protected_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The protected settings of ``config`` that differ from ``saved`` (``key: saved -> found``)."""
    return setting_differences(saved, protected_settings(config))
