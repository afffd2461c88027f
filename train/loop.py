"""The host loop: build a run, compile its chunk once, train chunk by chunk, save, log, resume.

Between jitted chunks of ``run.updates_per_chunk`` PPO updates the host writes a line of
metrics.jsonl, TensorBoard scalars and the progress bar, and every ``run.checkpoint_every``
updates (rounded up to whole chunks) saves the whole TrainState with orbax.  Compile time is
measured apart (ahead-of-time ``lower().compile()``) and excluded from steps per second.

A resumed run rebuilds everything from the saved config, restores the TrainState of the
latest complete checkpoint and continues on the same chunk boundaries, so it ends bit for
bit where an uninterrupted run would have ended.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import aligned_rl.envs as envs
from aligned_rl.constitution import Constitution
from aligned_rl.envs.macros import with_macros
from aligned_rl.train import checkpoint, devices, plots
from aligned_rl.train.compiled import CompiledCache
from aligned_rl.train.curriculum import Curriculum, check_curriculum, curriculum_pool
from aligned_rl.train.config import (CONFIG_FILE, ConfigError, TrainConfig, check_constitution, from_dict,
                                    load_run_config, run_seeds, to_dict, to_yaml)
from aligned_rl.train.ppo import AlignedPPO, TrainState
from aligned_rl.train.run_log import RunLog, chunk_record, non_finite_keys, truncate_metrics

SUMMARY_FILE = "summary.json"
# Keys a resumed run may change: they affect I/O, never the numbers.
RESUMABLE_CHANGES = (
    "run.dir", "run.progress", "run.tensorboard", "run.plots", "run.checkpoint_every", "run.updates_per_chunk",
    "run.stop_at_update",
)


class TrainingDiverged(RuntimeError):
    """A loss or metric became NaN/inf; the run stopped without saving the bad state."""


class ResumeMismatch(ValueError):
    """A resume whose config or constitution does not match the saved run."""


@dataclasses.dataclass
class Setup:
    """Everything static about a run, built from its config."""

    config: TrainConfig
    env: Any
    constitution: Constitution
    algo: AlignedPPO
    env_params: Any  # [N] batch (with a curriculum, the curriculum.Pool its levels come from)
    cparams: Any
    mesh: Mesh | None


def build_constitution(config: TrainConfig) -> Constitution:
    cons = envs.constitution(config.env.name, config.constitution.name)
    if config.constitution.params:
        cons = cons.with_params(**{k: jnp.float32(v) for k, v in config.constitution.params.items()})
    return dataclasses.replace(
        cons,
        eps=config.constitution.eps,
        lookahead_samples=config.constitution.lookahead_samples,
        lookahead_threshold=config.constitution.lookahead_threshold,
    )


def macro_env(config: TrainConfig, env: Any, constitution: Constitution) -> tuple[Any, Constitution]:
    """``env`` and ``constitution`` with the run's tools (``env.macros``) added to the action set
    (``envs/macros.py``); unchanged without any.  The fingerprint stays the constitution's."""
    try:
        return with_macros(env, constitution, config.env.macros)
    except ValueError as err:
        raise ConfigError(f"env.macros: {err}") from err


def build(config: TrainConfig, env_params: Any = None) -> Setup:
    """Environment, constitution, learner and the env-param batch for ``config`` (drawn from the
    family's prior with the config's seed, unless ``env_params`` gives the batch)."""
    try:
        spec = envs.spec(config.env.name)
        constitution = build_constitution(config)
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err.args[0] if err.args else err)) from err
    check_constitution(config, constitution)
    env = spec.make()
    cur = config.curriculum
    if cur.enabled:
        check_curriculum(config, spec)
        if env_params is not None:
            raise ConfigError("a run with curriculum.enabled=true draws its own levels; it cannot be given "
                              "environments to train on")
    if env_params is None:
        params_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
        drawn = config.env.num_envs // 2 if config.env.antithetic else config.env.num_envs
        env_params = spec.sample_params(env, params_key, cur.pool_size if cur.enabled else drawn).params
        if config.env.antithetic and not cur.enabled:  # the twins: the same environments again (the learner negates their rewards)
            env_params = jax.tree.map(lambda x: jnp.concatenate([x, x]), env_params)
    elif jax.tree.leaves(env_params)[0].shape[0] != config.env.num_envs:
        raise ConfigError(f"the given environments number {jax.tree.leaves(env_params)[0].shape[0]}, "
                          f"but env.num_envs={config.env.num_envs}")
    if config.env.episode_length:
        limit = getattr(env_params, "max_steps_in_episode", None)
        if limit is None:
            raise ConfigError(f"env.episode_length: {config.env.name!r} has no max_steps_in_episode to set; leave it 0")
        env_params = env_params.replace(max_steps_in_episode=jnp.full_like(limit, config.env.episode_length))
    curriculum = None
    if cur.enabled:  # the pool the curriculum's new levels come from, in the place of the batch
        env_params = curriculum_pool(spec, env_params)
        curriculum = Curriculum.for_family(config, spec)
    env, constitution = macro_env(config, env, constitution)  # after the draw: samplers take the family's own env
    algo = AlignedPPO(config, env, env.default_params, constitution, curriculum)
    mesh = devices.device_mesh(config.run.devices, "run.devices", num_envs=config.env.num_envs)
    if mesh is not None and cur.enabled:
        raise ConfigError(f"the curriculum chooses every environment's level on one device, and run.devices="
                          f"{config.run.devices} splits the environments over {mesh.devices.size}; set run.devices=1")
    setup = Setup(config, env, constitution, algo, env_params, constitution.params, mesh)
    if mesh is not None:
        setup.env_params = jax.device_put(env_params, devices.split_over(mesh))
    return setup


def state_shardings(setup: Setup, state: TrainState) -> Any:
    """The rollout's per-environment fields split over the mesh's 'envs' axis; the rest replicated."""
    repl = devices.replicated(setup.mesh)
    per_env = jax.tree.map(lambda _: devices.split_over(setup.mesh), state.rollout).replace(rng=repl, t=repl)
    return jax.tree.map(lambda _: repl, state).replace(rollout=per_env)


def initial_state(setup: Setup) -> TrainState:
    state = jax.jit(setup.algo.init)(jax.random.PRNGKey(setup.config.seed), setup.env_params)
    if setup.mesh is not None:
        state = jax.device_put(state, state_shardings(setup, state))
    return state


# Compiled chunks of every learner built in this process, by what decides the program: the config
# without its seed and I/O keys, and the devices.  Runs of one learner on other environments, from
# other parameters or seeds (a series of fine-tunes) compile once.
_COMPILED: dict[str, CompiledCache] = {}


def _learner_key(setup: Setup) -> str:
    data = to_dict(setup.config)
    data.pop("run")
    data.pop("seed")
    mesh = None if setup.mesh is None else [str(d) for d in setup.mesh.devices.flat]
    return json.dumps({"config": data, "mesh": mesh}, sort_keys=True)


class ChunkRunner:
    """Ahead-of-time compiled chunks of PPO updates, one executable per chunk length."""

    def __init__(self, setup: Setup, example: TrainState, vmapped: bool = False):
        self.setup = setup
        key = _learner_key(setup) + (" vmapped over seeds" if vmapped else "")
        if key not in _COMPILED:
            kwargs = {"donate_argnums": 0}
            if setup.mesh is not None:
                kwargs["out_shardings"] = (state_shardings(setup, example), devices.replicated(setup.mesh))
            fn = setup.algo.run_updates
            if vmapped:  # one run per seed: its state and environments along the first axis
                algo = setup.algo
                fn = lambda state, env_params, cparams, n: jax.vmap(  # noqa: E731
                    lambda s, e: algo.run_updates(s, e, cparams, n))(state, env_params)
            _COMPILED[key] = CompiledCache(fn, static_argnums=(3,), **kwargs)
        self.cache = _COMPILED[key]
        self._compiled_before = self.cache.compile_seconds

    @property
    def compile_seconds(self) -> float:
        """Seconds this run spent compiling (0 when an earlier run of the same learner did)."""
        return self.cache.compile_seconds - self._compiled_before

    def __call__(self, state: TrainState, num_updates: int) -> tuple[TrainState, dict[str, np.ndarray], float]:
        s = self.setup
        run = self.cache.executable(state, s.env_params, s.cparams, num_updates)  # compiled outside the timing
        start = time.perf_counter()
        state, metrics = run(state, s.env_params, s.cparams)
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - start
        return state, jax.tree.map(np.asarray, metrics), seconds


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seeds = run_seeds(config)
    seed = f"s{config.seed}" if seeds is None else "s" + "+".join(map(str, seeds))
    return Path("checkpoints") / f"{config.env.name}-{config.constitution.name}-{seed}-{stamp}"


def _meta(setup: Setup, update: int, episode_return: float | None, best_return: float | None) -> dict:
    return {
        "episode_return": episode_return,
        "config": to_dict(setup.config),
        "constitution": {"name": setup.constitution.name, "fingerprint": setup.constitution.fingerprint()},
        "versions": checkpoint.package_versions(),
        "update": update,
        "env_steps": update * setup.config.steps_per_update,
        "best_return": best_return,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(current))
    return [
        f"{k}: saved {a.get(k)!r}, now {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES
    ]


def load_run(run_dir: str | Path, which: str = "latest") -> tuple[Setup, TrainState, int]:
    """(setup, TrainState, update) of the ``which`` ('latest' or 'best') checkpoint of a run,
    rebuilt from its saved config on one device."""
    setup = build(load_run_config(run_dir, ["run.devices=1"]))
    # the state's shapes alone (nothing is computed): what the checkpoint is restored into
    like = jax.eval_shape(setup.algo.init, jax.random.PRNGKey(setup.config.seed), setup.env_params)
    mngr = checkpoint.manager(run_dir, read_only=True)
    try:
        step = checkpoint.find_step(mngr, which)
        state = checkpoint.restore_state(mngr, step, like=like)
    finally:
        mngr.close()
    return setup, state, step


@dataclasses.dataclass
class Member:
    """One seed's run: its own config (an int seed), directory, checkpoints and metrics."""

    setup: Setup
    run_dir: Path
    mngr: Any = None
    log: RunLog | None = None
    best_return: float | None = None
    last_return: float | None = None

    @property
    def config(self) -> TrainConfig:
        return self.setup.config


def seed_configs(config: TrainConfig) -> list[TrainConfig]:
    """The runs of ``config``'s seeds: each its own config, with an int seed and the directory
    ``<run.dir>/seed-<s>``, so that each is a run directory like any other."""
    out = []
    for seed in run_seeds(config):
        member = from_dict(to_dict(config) | {"seed": int(seed)})
        member.run.dir = str(Path(config.run.dir) / f"seed-{seed}")
        out.append(member)
    return out


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _row(tree: Any, i: int, vmapped: bool = True) -> Any:
    """Seed ``i``'s part of a tree the seeds' program returned (the tree itself for one seed)."""
    return jax.tree.map(lambda x: x[i], tree) if vmapped else tree


def _build_members(config: TrainConfig, start_from: Any, env_params: Any) -> tuple[Setup, list[Member], bool]:
    """(the setup the chunks run, one Member per seed, whether the seeds are vmapped)."""
    if run_seeds(config) is None:
        setup = build(config, env_params)
        return setup, [Member(setup, Path(config.run.dir))], False
    if start_from is not None or env_params is not None:
        raise ConfigError("a run of several seeds (seed given as a list) draws each seed's environments and "
                          "parameters itself; fine-tune one seed at a time")
    members = [Member(build(c), Path(c.run.dir)) for c in seed_configs(config)]
    first = members[0].setup
    if first.mesh is not None:
        raise ConfigError(f"seed={run_seeds(config)} vmaps the seeds' runs on one device, and run.devices="
                          f"{config.run.devices} splits the environments over {first.mesh.devices.size}; "
                          "set run.devices=1")
    setup = dataclasses.replace(first, config=config, env_params=_stack([m.setup.env_params for m in members]))
    return setup, members, True


def _initial_states(setup: Setup, members: list[Member], vmapped: bool) -> TrainState:
    if not vmapped:
        return initial_state(setup)
    # one seed at a time, as each would start alone: under vmap the orthogonal initialisers' QR
    # becomes a batched QR, which on the CPU backend splits its batch over the thread pool it
    # runs on, and can wait forever for it (seen with jaxlib 0.10 on 2 cores)
    init = jax.jit(setup.algo.init)
    return _stack([init(jax.random.PRNGKey(m.config.seed), m.setup.env_params) for m in members])


def _mean_record(records: list[dict]) -> dict:
    """The seeds' records of one chunk averaged key by key (episode figures over the seeds where
    episodes finished); the steps per second of all seeds together."""
    out = {"update": records[0]["update"], "env_steps": records[0]["env_steps"]}
    for key in records[0]:
        if key in out or key == "sps":
            continue
        values = [r[key] for r in records if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    out["episodes"] = int(sum(r["episodes"] for r in records))
    out["sps"] = float(sum(r["sps"] for r in records))
    return out


def train(config: TrainConfig, resume: bool = False, force: bool = False, start_from: Any = None,
          env_params: Any = None) -> dict:
    """Train (or resume) the run described by ``config``; returns the summary it writes.

    Fine-tuning: ``start_from`` gives the policy's parameters to start from (the optimiser
    starts afresh), ``env_params`` the batch of environments to train on instead of the one the
    config's seed draws.  Such a run cannot be resumed from its directory alone.

    Several seeds (``seed`` a list): the seeds' runs are vmapped in one compiled program, each
    seed with the environments and parameters its own run would have; each writes a run
    directory ``<run.dir>/seed-<s>`` of its own (config, checkpoints, metrics, summary), and
    ``run.dir`` holds the config, the metrics averaged over the seeds and the summary."""
    run_dir = Path(config.run.dir) if config.run.dir else default_run_dir(config)
    config.run.dir = str(run_dir)
    setup, members, vmapped = _build_members(config, start_from, env_params)
    state = _initial_states(setup, members, vmapped)
    if start_from is not None:
        if resume:
            raise ResumeMismatch("a resumed run continues from its own checkpoint, not from start_from")
        if jax.tree.structure(start_from) != jax.tree.structure(state.params):
            raise ConfigError("start_from does not hold the parameters this config's network has")
        # copied: the chunks donate the training state, and the caller keeps its arrays
        start_from = jax.tree.map(lambda new, like: jnp.array(new, like.dtype, copy=True), start_from, state.params)
        state = state.replace(params=start_from, opt_state=setup.algo.optimizer.init(start_from))
        if setup.mesh is not None:
            state = jax.device_put(state, state_shardings(setup, state))
    for m in members:
        m.mngr = checkpoint.manager(m.run_dir)
    try:
        state, start_update = _resume_or_start(setup, members, state, vmapped, resume, force)
    except BaseException:
        for m in members:
            m.mngr.close()
        raise
    for m in members:
        m.run_dir.mkdir(parents=True, exist_ok=True)
        (m.run_dir / CONFIG_FILE).write_text(to_yaml(m.config))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(to_yaml(config))

    total = config.num_updates
    end = min(total, config.run.stop_at_update) if config.run.stop_at_update else total
    if start_update >= end and (run_dir / SUMMARY_FILE).exists():
        for m in members:
            m.mngr.close()
        return json.loads((run_dir / SUMMARY_FILE).read_text())  # nothing left to do
    chunk = config.run.updates_per_chunk
    save_every = config.run.checkpoint_every
    runner = ChunkRunner(setup, state, vmapped)
    for m in members:  # the progress bar once, on the run's own log
        m.log = RunLog(m.run_dir, total, start_update, config.run.tensorboard, config.run.progress and not vmapped)
    mean_log = RunLog(run_dir, total, start_update, config.run.tensorboard, config.run.progress) if vmapped else None
    run_seconds, steps_run, records = 0.0, 0, [None] * len(members)
    update = start_update
    try:
        while update < end:
            # chunk boundaries are multiples of `chunk` from 0, so a resumed run lines up with a fresh one
            n = min(chunk - update % chunk, end - update)
            state, metrics, seconds = runner(state, n)
            for i, m in enumerate(members):
                bad = non_finite_keys(_row(metrics, i, vmapped))
                if bad:
                    raise TrainingDiverged(
                        f"non-finite values in {bad} during updates {update + 1}..{update + n}"
                        + (f" of seed {m.config.seed}" if vmapped else "") + "; the run stopped "
                        f"and this state was not saved. The last good checkpoint in {m.run_dir / 'checkpoints'} "
                        f"(update {checkpoint.latest_step(m.mngr)}) is intact. Lower ppo.lr or "
                        f"alignment.beta, or check the environment's rewards."
                    )
            previous, update = update, update + n
            run_seconds += seconds
            steps_run += n * config.steps_per_update * len(members)
            saving = update // save_every > previous // save_every or update == end
            for i, m in enumerate(members):
                record = chunk_record(_row(metrics, i, vmapped), update * config.steps_per_update,
                                      update, n * config.steps_per_update / seconds)
                records[i] = record
                m.log.write(record)
                if record["episode_return"] is not None:
                    m.last_return = record["episode_return"]
                    m.best_return = max(m.best_return, m.last_return) if m.best_return is not None else m.last_return
                if saving:
                    checkpoint.save(m.mngr, update, _row(state, i, vmapped),
                                    _meta(m.setup, update, m.last_return, m.best_return),
                                    m.last_return if m.last_return is not None else -np.inf)
            if mean_log is not None:
                mean_log.write(_mean_record(records))
    finally:
        for m in members:
            if m.log is not None:
                m.log.close()
            m.mngr.close()
        if mean_log is not None:
            mean_log.close()
    summaries = [_summary(m, update, total, steps_run // len(members), run_seconds, runner, records[i])
                 for i, m in enumerate(members)]
    if not vmapped:
        summary = summaries[0]
    else:
        for s in summaries:
            s["vmapped_with"] = run_seeds(config)
        for m, s in zip(members, summaries):
            (m.run_dir / SUMMARY_FILE).write_text(json.dumps(s, indent=2) + "\n")
        returns = [s["final_episode_return"] for s in summaries if s["final_episode_return"] is not None]
        summary = {
            "run_dir": str(run_dir),
            "seeds": run_seeds(config),
            "updates": update,
            "total_updates": total,
            "env_steps": update * config.steps_per_update * len(members),  # all seeds together
            "env_steps_this_process": steps_run,
            "train_seconds": run_seconds,
            "compile_seconds": runner.compile_seconds,
            "sps": steps_run / run_seconds if run_seconds > 0 else None,
            "final_episode_return": float(np.mean(returns)) if returns else None,  # the mean over the seeds
            "final": _mean_record(records) if all(r is not None for r in records) else None,
            "members": {str(m.config.seed): {"run_dir": str(m.run_dir), "final_episode_return": s["final_episode_return"],
                                             "best_return": s["best_return"]} for m, s in zip(members, summaries)},
            "devices": summaries[0]["devices"],
            "constitution": summaries[0]["constitution"],
            "versions": summaries[0]["versions"],
        }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if config.run.plots:
        for m in members:
            plots.plot_run(m.run_dir)
        if vmapped:
            plots.plot_run(run_dir)
    return summary


def _summary(m: Member, update: int, total: int, steps_run: int, run_seconds: float, runner: "ChunkRunner",
             record: dict | None) -> dict:
    setup = m.setup
    return {
        "run_dir": str(m.run_dir),
        "updates": update,
        "total_updates": total,
        "env_steps": update * m.config.steps_per_update,
        "env_steps_this_process": steps_run,
        "train_seconds": run_seconds,
        "compile_seconds": runner.compile_seconds,
        "sps": steps_run / run_seconds if run_seconds > 0 else None,
        "best_return": m.best_return,
        "final_episode_return": m.last_return,  # the last chunk in which episodes finished
        "final": record,
        "devices": [str(d) for d in (setup.mesh.devices.flat if setup.mesh is not None else jax.local_devices()[:1])],
        "constitution": {"name": setup.constitution.name, "fingerprint": setup.constitution.fingerprint()},
        "versions": checkpoint.package_versions(),
    }


def _resume_or_start(setup: Setup, members: list[Member], state: TrainState, vmapped: bool, resume: bool,
                     force: bool) -> tuple[TrainState, int]:
    """(the state to continue from, its update): every seed's latest complete checkpoint on a
    resume (the latest step all seeds saved, if a kill fell between their saves), else the
    fresh state, refused where checkpoints already exist."""
    latest = [checkpoint.latest_step(m.mngr) for m in members]
    if not resume:
        held = [(m, s) for m, s in zip(members, latest) if s is not None]
        if held:
            m, step = held[0]
            raise ResumeMismatch(
                f"{m.run_dir} already holds checkpoints (latest at update {step}); resume it with "
                f"`aligned-rl train --resume {setup.config.run.dir}` or choose another run.dir"
            )
        return state, 0
    missing = [m for m, s in zip(members, latest) if s is None]
    if missing:
        raise ResumeMismatch(f"{missing[0].run_dir} has no complete checkpoint to resume from")
    common = [set(m.mngr.all_steps()) for m in members]
    steps = sorted(set.intersection(*common))
    if not steps:
        raise ResumeMismatch(f"the seeds' directories under {setup.config.run.dir} share no checkpoint step "
                             f"(latest: {dict(zip((m.config.seed for m in members), latest))}); they cannot resume together")
    step = steps[-1]
    states = []
    for i, m in enumerate(members):
        meta = checkpoint.restore_meta(m.mngr, step)
        _check_resume(m.setup, meta, force)
        states.append(checkpoint.restore_state(m.mngr, step, like=_row(state, i, vmapped)))
        for later in [s for s in m.mngr.all_steps() if s > step]:  # saved by a seed ahead of the others
            m.mngr.delete(later)
        truncate_metrics(m.run_dir, step)
        m.best_return = meta.get("best_return")
    if vmapped:
        truncate_metrics(Path(setup.config.run.dir), step)
        return _stack(states), int(states[0].update)
    return states[0], int(states[0].update)


def _check_resume(setup: Setup, meta: dict, force: bool) -> None:
    problems = []
    saved_fp = meta.get("constitution", {}).get("fingerprint")
    now_fp = setup.constitution.fingerprint()
    if saved_fp != now_fp:
        problems.append(
            f"the constitution differs from the one the run was trained with "
            f"(saved {meta['constitution'].get('name')}@{saved_fp}, now {setup.constitution.name}@{now_fp})"
        )
    try:
        saved = from_dict(meta["config"])
        problems += config_differences(saved, setup.config)
    except ConfigError as err:
        problems.append(f"the saved config no longer validates: {err}")
    if problems and not force:
        raise ResumeMismatch(
            "refusing to resume: " + "; ".join(problems) + ". Pass --force to resume anyway "
            "(the result will not match an uninterrupted run)."
        )
