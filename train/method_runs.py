"""Methods x seeds trained from a base training config: the config a command such as
``aligned-rl frontier`` or ``aligned-rl curriculum`` reads, and the runs it makes of it.

Such a config has ``train`` (the base training config), ``train_overrides`` (``key=value``
applied to every run), ``methods`` (a name, usable as a directory name -> the training overrides
that make the method, applied after ``train_overrides``), ``seeds`` (every method is trained with
every seed), ``measure`` (a :class:`~aligned_rl.train.measure_config.MeasureConfig`) and
``output``.  Run ``<method>-seed<k>`` is trained in ``<output>/runs/<method>-seed<k>``.

The functions take ``what``, the command's name: its config is named so in messages, and its
output defaults to ``measurements/<what>-<env>``; and ``sets``, the training keys the command sets
for every run (key -> why an override of it would change nothing), refused in the overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from aligned_rl.train.aiq_table import given_measure_keys, machine
from aligned_rl.train.config import ConfigError, TrainConfig, load_config, merge_layers, repeated
from aligned_rl.train.measure import resolve_antithetic
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.policies import POLICIES

METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# training keys every such command sets for every run (key -> why an override of it would change
# nothing); a command adds its own reasons for the others it sets (run.progress, run.tensorboard,
# run.plots) and the keys it sets besides
RUN_SETS = {
    "seed": "the command trains every method with every seed of seeds=[...]",
    "run.dir": "each run is trained in <output>/runs/<method>-seed<k>",
}


@dataclasses.dataclass
class MethodRunsConfig:
    """The keys every such config begins with; a command's config adds its own after them
    (its ``measure`` and ``output`` among them)."""

    train: str = MISSING  # the base training config (YAML) of every run, e.g. configs/cartpole.yaml
    train_overrides: list[str] = dataclasses.field(default_factory=list)  # key=value applied to every run
    # method name (a directory name) -> the training overrides that make it, applied after train_overrides
    methods: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])  # training seeds of every method


@dataclasses.dataclass
class Run:
    """One training run of a command: ``method`` trained with ``seed``."""

    method: str
    seed: int
    config: TrainConfig  # its training config, run.dir set
    adaptive: bool  # its policy adapts to the rewards it is paid (measured a second time paid r^C)

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run.dir)


def run_directory(out: Path, method: str, seed: int) -> Path:
    """Where run ``<method>-seed<seed>`` is trained under the output ``out``."""
    return out / "runs" / f"{method}-seed{seed}"


# ------------------------------------------------------------------------------ the config
def load_method_config(schema: type, what: str, sets: Mapping[str, str], path: str | None,
                       overrides: list[str] | tuple[str, ...], train_example: str) -> Any:
    """Defaults (``schema``), then the YAML file, then ``key=value`` overrides; ``measure.env`` and
    ``measure.constitution`` default to the base training config's env and constitution.  The
    command checks the rest.  ``train_example``: a base training config its messages suggest."""
    merged = merge_layers(schema, what, path, overrides, example=f"train={train_example} seeds=[0,1]")
    try:
        if OmegaConf.is_missing(merged, "train"):
            raise ConfigError(f"{what} config: train is not given; name the base training config, e.g. "
                              f"train={train_example}")
        config = OmegaConf.to_object(merged)
        given = given_measure_keys(path, overrides)
    except MissingMandatoryValue as err:  # pragma: no cover - caught above
        raise ConfigError(f"{what} config: '{getattr(err, 'full_key', '')}' is not given") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "")
        raise ConfigError(f"{what} config: bad or unknown key '{key}': {str(err).splitlines()[0]}") from err
    base = base_config(config, what, sets)
    if "env" not in given:
        config.measure.env = base.env.name
    if "constitution" not in given:
        config.measure.constitution = base.constitution.name
    return config


def override_key(item: str, where: str, what: str) -> str:
    """The key of a ``key=value`` training override."""
    if "=" not in item:
        raise ConfigError(f"{what} config: {where} holds {item!r}, not of the form key=value "
                          "(e.g. alignment.beta=0.1)")
    return item.split("=", 1)[0].strip().lstrip("+~")


def refuse_command_keys(key: str, where: str, sets: Mapping[str, str], what: str) -> None:
    """Refuse an override of a key the command sets itself (``sets``: key -> why)."""
    if key in sets:
        raise ConfigError(f"{what} config: {where} sets {key}, which has no effect: {sets[key]}; remove it")


def base_config(config: Any, what: str, sets: Mapping[str, str]) -> TrainConfig:
    """The training config ``train`` with ``train_overrides``: what every method starts from."""
    for item in config.train_overrides:
        refuse_command_keys(override_key(item, "train_overrides", what), "train_overrides", sets, what)
    try:
        return load_config(config.train, config.train_overrides)
    except ConfigError as err:
        raise ConfigError(f"{what} config: train={config.train} with train_overrides: {err}") from err


def output_directory(config: Any, what: str) -> Path:
    return Path(config.output) if config.output else Path("measurements") / f"{what}-{config.measure.env}"


def check_methods(config: Any, what: str, *, empty: str, name_example: str, reference: str, role: str) -> None:
    """``methods`` and ``seeds``: at least one method, each name usable as a directory name, the
    config's key ``reference`` naming one of them, at least one seed and none twice.  The messages
    end in ``empty`` (no method), ``name_example`` (a usable name) and ``role`` (what the method
    ``reference`` names is for)."""
    if not config.methods:
        raise ConfigError(f"{what} config: methods is empty; {empty}")
    bad = [name for name in config.methods if not METHOD_NAME.fullmatch(name)]
    if bad:
        raise ConfigError(f"{what} config: method name {bad[0]!r} is not usable as a directory name; use "
                          f"letters, digits and . _ + - (starting with a letter or digit), e.g. {name_example}")
    named = getattr(config, reference)
    if named not in config.methods:
        raise ConfigError(f"{what} config: {reference}={named} is not among the methods "
                          f"({', '.join(config.methods)}); name the method {role}")
    if not config.seeds:
        raise ConfigError(f"{what} config: seeds is empty; give at least one training seed, e.g. seeds=[0,1,2]")
    twice = repeated(config.seeds)
    if twice:
        raise ConfigError(f"{what} config: seeds lists {', '.join(map(str, twice))} more than once; "
                          "list each seed once")


# ------------------------------------------------------------------------------ the runs
def method_config(config: Any, method: str, seed: int, out: Path, what: str, sets: Mapping[str, str]) -> TrainConfig:
    """The training config of ``method`` with ``seed`` (``train_overrides``, the method's overrides,
    then the keys the command sets), refused with the method's name if it does not load."""
    for item in config.methods[method]:
        refuse_command_keys(override_key(item, f"method {method}", what), f"method {method}", sets, what)
    overrides = [*config.train_overrides, *config.methods[method], f"seed={seed}",
                 f"run.dir={run_directory(out, method, seed)}", "run.progress=false",
                 "run.tensorboard=false", "run.plots=false"]
    try:
        return load_config(config.train, overrides)
    except ConfigError as err:
        raise ConfigError(f"{what} config: method {method}: {err}") from err


def seed_runs(method: str, first: TrainConfig, seeds: Sequence[int], out: Path) -> list[Run]:
    """The runs of ``method``, seed by seed, from its training config with the first seed: the
    seeds of a method differ in their seed and directory only."""
    runs = []
    for seed in seeds:
        train_config = copy.deepcopy(first)
        train_config.seed, train_config.run.dir = int(seed), str(run_directory(out, method, seed))
        runs.append(Run(method, int(seed), train_config, POLICIES[train_config.ppo.network].adaptive))
    return runs


def runs_antithetic(m: MeasureConfig, runs: Sequence[Run]) -> bool:
    """Whether the measurements of ``runs`` run antithetic twins (``measure.antithetic`` resolved
    for their policies)."""
    learners = [SimpleNamespace(name=r.method, adaptive=r.adaptive) for r in runs]
    antithetic, _ = resolve_antithetic(m.antithetic, learners, "measure.antithetic")
    return antithetic


# ------------------------------------------------------------------------------ the report
def write_report(report: dict, out: Path, command: str, started: float, files: tuple[str, str, str],
                 markdown: Callable[[dict], str], plot: Callable[[dict, Path], None]) -> dict:
    """The command's ``report`` with the command that made it, the machine, the output and the wall
    time since ``started`` (``time.perf_counter``), written under ``out``: ``files`` names the
    JSON, the markdown (``markdown(report)``) and the plot (drawn by ``plot``)."""
    report.update(command=command, machine=machine(), output=str(out),
                  wall_seconds_this_run=time.perf_counter() - started)
    json_file, markdown_file, plot_file = files
    out.mkdir(parents=True, exist_ok=True)
    (out / json_file).write_text(json.dumps(report, indent=2) + "\n")
    (out / markdown_file).write_text(markdown(report))
    plot(report, out / plot_file)
    return report
