"""Narrow self-improvement: deployed agents that notice drift, fine-tune themselves, and are
promoted only through the gate, compared with agents that never change, that retrain on a
schedule, and that promote every fine-tune.

A deployment runs ``envs_per_deployment`` environments of the drift's family.  Each round,
every environment plays one episode (its params: the deployment's own batch from the family's
prior, moved by the drift schedule at deployment step t = the round) with the deployed
version, and the episodes' values (the family's value in [-1, 1], ``measure``'s definition)
and violations are recorded.  Strategies:

* ``frozen``: the trained agent, never changed;
* ``periodic``: a fine-tune every ``finetune.periodic_every`` rounds, through the gate;
* ``monitored``: a change detector (``aligned_rl.detectors``) on the episode values; when it
  fires, a fine-tune through the gate;
* ``ungated``: the same monitor, every fine-tune promoted (what the gate prevents).

A fine-tune is the one PPO learner (``train.loop.train``) started from the deployed version's
parameters, for ``finetune.updates`` updates on the environments the deployment meets now,
under the deployment's constitution (never the candidate's).  The gate (``aligned_rl.gate``)
measures candidate and deployed version on fresh environments from the current distribution,
the same environments and random numbers for both.  Every version, trigger, candidate and
decision goes into the deployment's lineage (``improve.lineage``), whose events also let a
killed run resume at the last finished round.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import aligned_rl.envs as envs
from aligned_rl.envs import drift as drift_module
from aligned_rl.gate import Evidence, decide
from aligned_rl.improve.config import ImproveConfig, gate_config, make_detector
from aligned_rl.improve.lineage import Lineage, LineageError
from aligned_rl.train.agents import PolicyAgent, restore_policy
from aligned_rl.train.config import ConfigError, load_run_config
from aligned_rl.train.loop import build_constitution, macro_env, train
from aligned_rl.train.rollout import Rollout

# ------------------------------------------------------------------------------ playing episodes
def episode_values(agent: PolicyAgent, env: Any, constitution: Any, value: Any, params: Any, key: jax.Array,
                   steps: int) -> dict[str, jax.Array]:
    """One episode in every environment of ``params`` [N]: its value in [-1, 1] (the family's
    definition), its violations and its steps (jittable; ``steps`` static, at least the longest
    episode)."""
    n = jax.tree.leaves(params)[0].shape[0]
    k_reset, k_run = jax.random.split(key)
    keys = jax.random.split(k_reset, n)
    num_actions = int(env.action_space(env.default_params).n)
    rollout = Rollout(agent, env, constitution, num_actions, restart_memory=False,
                      saute=getattr(agent, "saute", None))
    carry = rollout.start(params, keys, keys, k_run)
    zeros = jnp.zeros((n,), jnp.float32)

    def accumulate(acc, step, _):
        ret, violations, length, active = acc
        w = active.astype(jnp.float32)
        return (ret + w * step.reward, violations + w * step.violated, length + w, active & ~step.done)

    _, (ret, violations, length, _) = rollout.run(params, constitution.params, carry, steps, accumulate,
                                                  (zeros, zeros, zeros, jnp.ones((n,), bool)))
    lo, hi = jax.vmap(value.return_bounds)(params)
    return {"value": (2.0 * ret - hi - lo) / (hi - lo), "violations": violations, "steps": length}


@dataclasses.dataclass
class Family:
    """The drift's family as a deployment uses it: environment, constitution, value, schedule."""

    name: str
    env: Any
    constitution: Any
    value: Any
    schedule: Any
    steps: int  # the longest episode any environment allows

    def draw(self, key: jax.Array, n: int) -> tuple[Any, Any, jax.Array]:
        """(base, target, uniforms) of ``n`` environments: the prior, the drift's target prior, the switches."""
        k_base, k_target, k_u = jax.random.split(key, 3)
        base = envs.spec(self.name).sample_params(self.env, k_base, n).params
        target = drift_module.draw_target(self.schedule, self.env, k_target, n)
        return base, None if target is None else target.params, drift_module.draw_uniforms(k_u, n)

    def at(self, drawn: tuple[Any, Any, jax.Array], t: int) -> Any:
        base, target, u = drawn
        return drift_module.drifted(self.schedule, base, target, u, t)


def _family(config: ImproveConfig, run_config: Any) -> Family:
    name = config.drift.family
    if run_config.env.name != name:
        raise ConfigError(f"the agents were trained on {run_config.env.name!r} but the drift is of {name!r}")
    spec = envs.spec(name)
    env = spec.make()
    sample = spec.sample_params(env, jax.random.PRNGKey(0), 2).params
    steps = int(np.max(np.asarray(sample.max_steps_in_episode)))
    env, constitution = macro_env(run_config, env, build_constitution(run_config))  # the agents' tools, if any
    return Family(name, env, constitution, spec.value, drift_module.schedule(config.drift), steps)


# ------------------------------------------------------------------------------ one deployment
class Deployment:
    """One deployment of one strategy: its lineage, its environments, its monitor."""

    def __init__(self, config: ImproveConfig, family: Family, agent_dir: str, strategy: str, index: int,
                 directory: Path, runner):
        self.config, self.family, self.strategy, self.directory, self.runner = config, family, strategy, directory, runner
        self.agent_dir, self.index = agent_dir, index
        self.run_config = load_run_config(agent_dir)
        self.fingerprint = family.constitution.fingerprint()
        self.key = jax.random.fold_in(jax.random.PRNGKey(config.seed), index)  # the same worlds for every strategy
        self.drawn = family.draw(self.key, config.envs_per_deployment)
        self.detector = make_detector(config)
        self.violation_detector = make_detector(config, violations=True) if config.monitor.violations else None
        self.policy, params, _, _ = restore_policy(agent_dir)
        self._like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        self._params: dict[str, Any] = {}
        if (directory / "lineage.json").is_file():
            self.lineage = Lineage.open(directory, self.fingerprint)
        else:
            self.lineage = Lineage.create(directory, family.constitution.name, self.fingerprint, family=family.name,
                                          strategy=strategy, agent=agent_dir)
            version = self.lineage.add_version(lambda d: _save_params(d, params), source=agent_dir)
            self.lineage.promote(version, reason="the trained agent")

    def params_of(self, version: str) -> Any:
        """A version's parameters (read once per version: versions never change)."""
        if version not in self._params:
            self._params[version] = _load_params(self.lineage.version_dir(version), self._like)
        return self._params[version]

    def agent(self, version: str) -> PolicyAgent:
        return PolicyAgent(self.policy, self.params_of(version), shields=self.run_config.alignment.shield)

    def resume_point(self) -> tuple[int, Any, int]:
        """(next round, detector state, round of the last fine-tune) from the lineage's events."""
        rounds = [e for e in self.lineage.events() if e["kind"] == "round"]
        if not rounds:
            return 0, self._initial(), -10**9
        last = rounds[-1]["data"]
        return last["round"] + 1, self._restore(last["detector_state"]), last["last_finetune"]

    def play(self, round_: int) -> dict[str, np.ndarray]:
        key = jax.random.fold_in(jax.random.fold_in(self.key, 1), round_)
        params = self.family.at(self.drawn, round_)
        out = self.runner(self.agent(self.lineage.deployed()), params, key)
        return {k: np.asarray(v) for k, v in out.items()}

    def finetune(self, round_: int, trigger: str) -> tuple[bool, dict]:
        """Fine-tune the deployed version, gate the candidate, promote or not; returns (promoted, record)."""
        incumbent = self.lineage.deployed()
        cfg = self.config
        params = self.family.at(self.drawn, round_)
        train_params = jax.tree.map(lambda x: x[: cfg.finetune.num_envs], params)
        run_config = load_run_config(self.agent_dir, [
            f"env.num_envs={cfg.finetune.num_envs}", "run.devices=1", "run.progress=false", "run.tensorboard=false",
            "run.plots=false", f"seed={cfg.seed * 7919 + self.index * 101 + round_}"])
        run_config.ppo.total_timesteps = cfg.finetune.updates * run_config.steps_per_update
        run_config.ppo.num_minibatches = math.gcd(run_config.ppo.num_minibatches, run_config.steps_per_update)
        start = self.params_of(incumbent)
        summary = {}

        def write(directory: Path) -> None:
            run_config.run.dir = str(directory / "run")
            summary.update(train(run_config, start_from=start, env_params=train_params))
            _save_params(directory, restore_policy(directory / "run")[1])

        candidate = self.lineage.add_version(write, parent=incumbent, trigger=trigger, round=round_,
                                             env_steps=summary.get("env_steps"))
        # the gate: fresh environments from the current distribution, the same for both
        k_gate = jax.random.fold_in(jax.random.fold_in(self.key, 2), round_)
        fresh = self.family.at(self.family.draw(k_gate, cfg.gate.num_envs), round_)
        k_play = jax.random.fold_in(k_gate, 1)
        measured = {v: {k: np.asarray(x) for k, x in self.runner(self.agent(v), fresh, k_play).items()}
                    for v in (candidate, incumbent)}
        # the candidate's constitution as its own run recorded it: a tampered one never matches
        fingerprints = {candidate: _fingerprint(self.lineage.version_dir(candidate) / "run"),
                        incumbent: self.fingerprint}
        evidence = {v: Evidence(m["value"], int(m["violations"].sum()), int(m["steps"].sum()), fingerprints[v])
                    for v, m in measured.items()}
        decision = decide(gate_config(cfg), evidence[candidate], evidence[incumbent])
        self.lineage.record("gate", candidate=candidate, incumbent=incumbent, round=round_, **decision.as_dict())
        # ungated: every fine-tune is promoted, but never one under another constitution
        promote = decision.promote or (self.strategy == "ungated" and fingerprints[candidate] == self.fingerprint)
        if promote:
            self.lineage.promote(candidate, round=round_, gated=decision.promote)
        return promote, {"candidate": candidate, "promoted": promote, "gate_passed": decision.promote,
                         "env_steps": int(summary.get("env_steps") or 0)}

    def _event(self, kind: str, round_: int) -> dict | None:
        """The last event of ``kind`` recorded for ``round_`` (what a killed run had finished of it)."""
        found = [e["data"] for e in self.lineage.events() if e["kind"] == kind and e["data"].get("round") == round_]
        return found[-1] if found else None

    def _initial(self) -> tuple:
        """The monitor's state: the value detector's and, if it watches violations, that one's."""
        return (self.detector.init(),) + ((self.violation_detector.init(),) if self.violation_detector else ())

    def _restore(self, saved: list) -> tuple:
        return tuple(type(like)(*(jnp.asarray(x, dtype=getattr(s, "dtype", None)) for x, s in zip(part, like)))
                     for part, like in zip(saved, self._initial()))

    @staticmethod
    def _saved(state: tuple) -> list:
        return [[np.asarray(x).tolist() for x in part] for part in state]

    def _decided(self, round_: int, gate: dict) -> tuple[bool, dict]:
        """The outcome of a fine-tune whose gate decision a killed run had recorded; the promotion
        it called for is made now if the kill came first."""
        candidate = gate["candidate"]
        promote = gate["promote"] or (self.strategy == "ungated" and gate["checks"]["same_constitution"])
        if promote and self.lineage.deployed() != candidate:
            self.lineage.promote(candidate, round=round_, gated=gate["promote"])
        steps = [e["data"].get("env_steps") for e in self.lineage.events()
                 if e["kind"] == "version" and e["data"]["version"] == candidate]
        return promote, {"candidate": candidate, "promoted": promote, "gate_passed": gate["promote"],
                         "env_steps": int(steps[-1] or 0) if steps else 0}

    def run(self, progress=None, task=None) -> None:
        """Play the rounds left.  Each round's episodes are recorded (``played``) before any
        fine-tune, and the round (``round``) once all of it is done, so a run killed anywhere
        resumes with the same values, the same fine-tunes and the same decisions."""
        cfg = self.config
        round_, state, last_finetune = self.resume_point()
        updates = [jax.jit(self.detector.update)]
        if self.violation_detector is not None:
            updates.append(jax.jit(self.violation_detector.update))
        while round_ < cfg.rounds:
            record = self._event("played", round_)
            if record is None:
                out = self.play(round_)
                signals = [out["value"], (out["violations"] > 0).astype(np.float32)][:len(updates)]
                fired, parts = [], []
                for update, part, xs in zip(updates, state, signals):
                    hit = False
                    for x in xs:
                        part, drift = update(part, jnp.float32(x))
                        hit |= bool(drift)
                    fired.append(hit)
                    parts.append(part)
                state = tuple(parts)
                record = {"round": round_, "value": float(out["value"].mean()),
                          "forbidden_rate": float(out["violations"].sum() / out["steps"].sum()),
                          "version": self.lineage.deployed(), "fired": any(fired),
                          "fired_on": [name for name, hit in zip(("value", "violations"), fired) if hit],
                          "drift": float(drift_module.fraction(self.family.schedule, round_)),
                          "detector_state": self._saved(state)}
                self.lineage.record("played", **record)
            state = self._restore(record["detector_state"])
            trigger = None
            if (self.strategy in ("monitored", "ungated") and record["fired"]
                    and round_ - last_finetune > cfg.monitor.cooldown):
                trigger = "monitor"
            elif self.strategy == "periodic" and (round_ + 1) % cfg.finetune.periodic_every == 0:
                trigger = "schedule"
            if trigger is not None:
                gate = self._event("gate", round_)
                if gate is None:
                    self.lineage.record("trigger", round=round_, cause=trigger)
                    promoted, outcome = self.finetune(round_, trigger)
                else:
                    promoted, outcome = self._decided(round_, gate)
                record = {**record, "trigger": trigger, **outcome}
                last_finetune = round_
                if promoted:
                    state = self._initial()  # a new version: the monitor starts over
            record.update(last_finetune=last_finetune, detector_state=self._saved(state))
            self.lineage.record("round", **record)
            round_ += 1
            if progress is not None:
                progress.advance(task)


def _fingerprint(run_dir: Path) -> str:
    """The fingerprint of the constitution a run was trained under; a run whose saved config no
    longer loads (a tampered one) gets a fingerprint no constitution has."""
    try:
        return build_constitution(load_run_config(run_dir)).fingerprint()
    except (ConfigError, KeyError, ValueError) as err:
        return f"unreadable: {str(err).splitlines()[0][:200]}"


def _save_params(directory: Path, params: Any) -> None:
    leaves, _ = jax.tree.flatten(params)
    np.savez(directory / "params.npz", *[np.asarray(x) for x in leaves])


def _load_params(directory: Path, like: Any) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    with np.load(directory / "params.npz") as data:
        values = [jnp.asarray(data[f"arr_{i}"], leaf.dtype) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, values)


# ------------------------------------------------------------------------------ the command
def improve(config: ImproveConfig) -> dict:
    """Run every strategy's deployments (resuming any already begun in ``config.output``) and
    return (and write) the report."""
    first = load_run_config(config.agents[0])
    family = _family(config, first)
    for agent_dir in config.agents[1:]:
        if load_run_config(agent_dir).env.name != first.env.name:
            raise ConfigError(f"{agent_dir} was trained on another family than {config.agents[0]}")
    out = Path(config.output) if config.output else Path("improvements") / (
        f"{family.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    runner = jax.jit(lambda agent, params, key: episode_values(agent, family.env, family.constitution, family.value,
                                                               params, key, family.steps))
    from rich.progress import Progress

    jobs = [(s, a, d) for s in config.strategies for a in range(len(config.agents)) for d in range(config.deployments)]
    with Progress(disable=not config.progress, transient=True) as progress:
        task = progress.add_task(f"deploying on {family.name}", total=len(jobs) * config.rounds)
        for strategy, a, d in jobs:
            directory = out / strategy / f"agent{a}-deployment{d}"
            try:
                deployment = Deployment(config, family, config.agents[a], strategy, a * config.deployments + d,
                                        directory, runner)
            except LineageError as err:
                raise ConfigError(str(err)) from err
            progress.advance(task, deployment.resume_point()[0])
            deployment.run(progress, task)
    from aligned_rl.improve.report import summarise

    report = summarise(config, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
