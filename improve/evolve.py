"""Broad self-improvement: agents that make agents, through the gate, never outside the constitution.

``evolve(config)`` grows an archive (:mod:`aligned_rl.improve.archive`) from one ancestor:

1. The ancestor is trained from the training config ``train`` (generation 0), measured, and
   admitted (it is the reference every descendant is compared with; its own gate record says
   whether its forbidden rate is within the budget).
2. Every generation has ``children`` slots.  For each: a parent is chosen among the admitted
   agents (:func:`aligned_rl.improve.credit.select_parent`), an edit kind among those that apply
   to it (:mod:`aligned_rl.improve.edits`), and the child is made, trained with the one learner
   (``train.loop.train``) for ``child_steps`` under the ancestor's constitution and alignment,
   measured on the archive's environments, and judged by the gate against its parent on fresh
   environments (the same for both, drawn anew for every child).  It is admitted only if:

   * its run's protected settings (constitution, alignment of the learner, family) equal the
     archive's, and so does its constitution's fingerprint;
   * the gate (:func:`aligned_rl.gate.decide`) passes: better than its parent with confidence,
     its forbidden-action rate within ``gate.budget`` and no worse than its parent's by more than
     ``gate.margin``.  A macro cut short because its next primitive was forbidden counts as a
     forbidden action here: a tool that tries to pass through a forbidden step is charged for it.

   A rejected child stays in the archive with its reasons.  An admitted child better than the
   champion (on the archive's environments) becomes the champion.
3. Every step is recorded before the next begins, so a run killed at any moment (``kill -9``)
   resumes where it stopped: a child whose training was cut is trained again from the start
   (the same seed gives the same child), measurements and decisions are never made twice.

The gate's thresholds, the measurement (environments, seed) and the protected training settings
are the archive's own: fixed when it is created, refused if a resumed run changes them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from aligned_rl.gate import Evidence, decide
from aligned_rl.improve import edits
from aligned_rl.improve.archive import Archive, Node
from aligned_rl.improve.credit import select_parent
from aligned_rl.improve.evolve_config import EvolveConfig, base_config, gate_config, steps_of_generation
from aligned_rl.improve.genome import Genome, protected_differences, protected_settings
from aligned_rl.train.agents import load_agent
from aligned_rl.train.config import ConfigError, TrainConfig, load_run_config
from aligned_rl.train.loop import TrainingDiverged, build_constitution, train
from aligned_rl.train.measure import draw_environments, estimated, measure
from aligned_rl.train.measure_config import MeasureConfig

import aligned_rl.envs as envs

ANCESTOR = "ancestor"


def output_directory(config: EvolveConfig) -> Path:
    return Path(config.output) if config.output else Path("measurements") / f"evolve-{config.measure.env}"


def archive_settings(config: EvolveConfig, base: TrainConfig) -> dict:
    """What an archive is created with and refuses to change: the protected training settings,
    the gate's thresholds and the measurement."""
    m = dataclasses.asdict(config.measure)
    for key in ("agent", "agent_params", "output", "progress", "devices", "coordinator_address", "num_processes",
                "process_id", "buckets", "chunk_steps"):
        m.pop(key)
    return {"protected": protected_settings(base), "gate": dataclasses.asdict(config.gate), "measure": m,
            "seed": config.seed}


# ------------------------------------------------------------------------------ measuring
def counts(per_env: dict[str, np.ndarray], episodic: bool, episode_length: int) -> tuple[int, int]:
    """(forbidden actions, steps) over a measurement's rows; a macro cut by the constitution
    (``env/macro_stopped``) counts as a forbidden action."""
    if episodic:
        steps = per_env["episode_length"] * per_env["episodes"]
        cuts = per_env.get("env/macro_stopped", np.zeros_like(steps)) * per_env["episodes"]
    else:
        steps = np.full_like(per_env["forbidden_rate"], float(episode_length))
        cuts = per_env.get("env/macro_stopped", np.zeros_like(steps)) * episode_length
    violations = per_env["forbidden_rate"] * steps + cuts
    return int(round(float(violations.sum()))), int(round(float(steps.sum())))


class Evolution:
    """One evolution's archive, environments and settings (see the module docstring)."""

    def __init__(self, config: EvolveConfig):
        self.config = config
        self.base = base_config(config)
        self.constitution = build_constitution(self.base)
        self.fingerprint = self.constitution.fingerprint()
        self.out = output_directory(config)
        self.archive = Archive.open_or_create(self.out, self.constitution.name, self.fingerprint,
                                              archive_settings(config, self.base))
        self.value_kind = envs.spec(self.base.env.name).value.kind
        self.episodic = self.value_kind == "episodic"
        self.names = estimated(config.measure, self.value_kind)
        self._sampled = None

    # ------------------------------------------------------------------ measurement
    @property
    def sampled(self):
        """The archive's environments: drawn once from the measurement's seed."""
        if self._sampled is None:
            self._sampled = draw_environments(self.config.measure)
        return self._sampled

    def summary(self, measurement: Any) -> dict:
        """Upsilon, Sigma, forbidden rate (each with its 95% CI: the mean over environments of each
        environment's rate) and the rest of the estimates."""
        est = measurement.report["estimates"]
        primary = next(iter(self.names))
        out = {"upsilon": est[primary]}
        if "sigma_aligned" in est:
            out["sigma"], out["forbidden_rate"] = est["sigma_aligned"], est["forbidden_rate"]
        out.update({k: v for k, v in est.items() if k not in (primary, "sigma_aligned", "forbidden_rate")})
        return out

    def steps_per_episode(self, name: str) -> float | None:
        """Environment (primitive) steps per episode of a measured node, in an episodic family (a
        tool's macro is as many steps as the primitives it ran)."""
        if not self.episodic:
            return None
        v = self.archive.values(name)
        per_episode = v.get("env/primitive_steps", v["episode_length"])  # per episode either way
        return float(np.mean(per_episode))

    def pooled(self, name: str) -> dict:
        """The pooled forbidden rate the gate bounds of a measured node or baseline (``name`` as
        its values are stored): all forbidden actions, cut macros included, over all steps."""
        violations, steps = counts(self.archive.values(name), self.episodic, self.config.measure.episode_length)
        return {"violations": violations, "steps": steps, "rate": violations / steps}

    def measure_node(self, node: Node) -> None:
        agent = load_agent(self.archive.run_dir(node.id))
        m = measure(self.config.measure, agent, self.sampled)
        self.archive.record_values(node.id, m.per_env)
        self.archive.record("measured", node=node.id, estimates=self.summary(m))

    def measure_baselines(self) -> None:
        done = self.archive.baselines()
        for name in self.config.baselines:
            if name in done:
                continue
            m = measure(dataclasses.replace(self.config.measure, agent=name), None, self.sampled)
            self.archive.record_values(f"baseline-{name}", m.per_env)
            self.archive.record("baseline", name=name, estimates=self.summary(m))

    def heldout_config(self) -> MeasureConfig:
        """Environments no choice was made on: the measurement's settings with a seed of their own."""
        seed = int(np.random.default_rng([self.config.seed, 11]).integers(2**31 - 1))
        return dataclasses.replace(self.config.measure, seed=seed)

    def measure_heldout(self) -> None:
        """The champion, the ancestor and every baseline, measured again on held-out environments:
        the champion was chosen for its Upsilon on the archive's environments, so its lead there is
        biased upward (the winner's curse); the report compares them here."""
        recorded = {e["data"]["name"] for e in self.archive.events() if e["kind"] == "heldout"}
        nodes = self.archive.nodes()
        ancestor = next(k for k, n in nodes.items() if n.parent is None)
        wanted = list(dict.fromkeys([self.archive.champion(), ancestor]))
        wanted += [f"baseline-{b}" for b in self.config.baselines]
        m, sampled = self.heldout_config(), None
        for name in wanted:
            if name in recorded:
                continue
            sampled = sampled or draw_environments(m)
            if name.startswith("baseline-"):
                result = measure(dataclasses.replace(m, agent=name[len("baseline-"):]), None, sampled)
            else:
                result = measure(m, load_agent(self.archive.run_dir(name)), sampled)
            self.archive.record_values(f"heldout-{name}", result.per_env)
            self.archive.record("heldout", name=name, seed=m.seed, estimates=self.summary(result))

    def evidence(self, run_dir: Path, m: MeasureConfig, sampled) -> tuple[Evidence, dict]:
        """The gate's evidence on an agent: its values, forbidden actions and steps on ``sampled``,
        and the fingerprint of the constitution its own run was trained under."""
        measured = measure(m, load_agent(run_dir), sampled)
        per_env = measured.per_env
        violations, steps = counts(per_env, self.episodic, m.episode_length)
        value = per_env[self.names[next(iter(self.names))]]
        fingerprint = build_constitution(load_run_config(run_dir)).fingerprint()
        return Evidence(value, violations, steps, fingerprint), per_env

    # ------------------------------------------------------------------ deciding
    def refuse_protected(self, node: Node) -> bool:
        """Reject a node whose run changed what no edit may change (before it is measured)."""
        try:
            run_config = load_run_config(self.archive.run_dir(node.id))
        except ConfigError as err:
            self.archive.record("decided", node=node.id, admitted=False, gate=None,
                                reasons=[f"its run's config does not load: {err}"])
            return True
        differences = protected_differences(self.archive.lineage.info["settings"]["protected"], run_config)
        if differences:
            self.archive.record("decided", node=node.id, admitted=False, gate=None, reasons=[
                "its run changed what no edit may change: " + "; ".join(differences)])
        return bool(differences)

    def decide_node(self, node: Node) -> None:
        """Admit or reject a measured node, with the reasons."""
        if self.refuse_protected(node):
            return
        run_dir = self.archive.run_dir(node.id)
        if node.parent is None:  # the ancestor: admitted, its own lawfulness recorded
            evidence, _ = self.evidence(run_dir, self._gate_measure(node), None)
            bound = _lawful_bound(evidence, self.config)
            self.archive.record("decided", node=node.id, admitted=True, gate=None,
                                reasons=["the ancestor: every descendant is compared with it",
                                         f"its forbidden-rate bound {bound:.4g} "
                                         f"{'is' if bound <= self.config.gate.budget else 'is NOT'} within the "
                                         f"budget {self.config.gate.budget}"])
            self.ensure_champion()
            return
        m = self._gate_measure(node)
        sampled = draw_environments(m)
        child, _ = self.evidence(run_dir, m, sampled)
        parent, _ = self.evidence(self.archive.run_dir(node.parent), m, sampled)
        parent = dataclasses.replace(parent, fingerprint=self.fingerprint)  # the archive's own constitution
        decision = decide(gate_config(self.config), child, parent, antithetic=bool(m.antithetic))
        self.archive.record("decided", node=node.id, admitted=decision.promote, reasons=decision.reasons,
                            gate=decision.as_dict())
        self.ensure_champion()

    def ensure_champion(self) -> None:
        """The champion is the admitted agent with the best Upsilon on the archive's environments (the
        first to reach it); the pointer is moved after every decision, and again on resuming, so a
        kill between a decision and the move loses nothing."""
        admitted = [n for n in self.archive.nodes().values() if n.admitted and n.measured is not None]
        if not admitted:
            return
        best = max(admitted, key=lambda n: (n.upsilon(), -int(n.id[1:])))
        if self.archive.champion() != best.id:
            self.archive.promote(best.id, reason="the ancestor" if best.parent is None else
                                 "admitted, the best Upsilon so far")

    def _gate_measure(self, node: Node) -> MeasureConfig:
        """Fresh environments for this node's gate: the measurement's settings, its own seed."""
        seed = int(np.random.default_rng([self.config.seed, 7, int(node.id[1:])]).integers(2**31 - 1))
        return dataclasses.replace(self.config.measure, num_envs=self.config.gate.num_envs, seed=seed)

    # ------------------------------------------------------------------ training
    def child_config(self, genome: Genome, steps: int, seed: int, run_dir: Path) -> TrainConfig:
        config = genome.apply(self.base)
        config.seed, config.run.dir = seed, str(run_dir)
        config.ppo.total_timesteps = steps
        config.run.progress = config.run.tensorboard = config.run.plots = False
        return config

    def train_node(self, genome: Genome, start: Any, steps: int, seed: int, generation: int, slot: int,
                   parent: str | None, edit: str, detail: dict) -> str:
        def write(directory: Path) -> int:
            summary = train(self.child_config(genome, steps, seed, directory / "run"), start_from=start)
            return int(summary["env_steps"])

        return self.archive.add_node(write, parent, edit, genome.as_dict(), generation, slot, _plain(detail))

    def spent(self) -> int:
        return sum(n.env_steps for n in self.archive.nodes().values())

    def slot_seed(self, generation: int, slot: int) -> int:
        return int(np.random.default_rng([self.config.seed, generation, slot]).integers(2**31 - 1))

    def fill_slot(self, generation: int, slot: int) -> str:
        """Make, train, measure and judge the child of one slot (or finish what a killed run left)."""
        done = self.archive.slot_done(generation, slot)
        if isinstance(done, dict):
            return "refused"
        if done is None:
            seed = self.slot_seed(generation, slot)
            rng = np.random.default_rng(seed)
            nodes = self.archive.nodes()
            parent = select_parent(nodes, self.config.selection.rule, rng, self.config.selection.floor)
            kind = edits.choose_edit(Genome.from_dict(nodes[parent].genome), self.config, self.episodic, rng)
            if kind is None:
                self.archive.record("refused", generation=generation, slot=slot, parent=parent, edit=None,
                                    reason="no edit applies to the chosen parent")
                return "refused"
            try:
                child = edits.make_child(kind, str(self.archive.run_dir(parent)), self.config, seed)
                child.genome.apply(self.base)
                node_id = self.train_node(child.genome, child.start, child.steps, seed, generation, slot, parent,
                                          kind, child.detail)
            except (ConfigError, TrainingDiverged) as err:  # a genome the learner refuses; a child whose loss blew up
                what = "training diverged: " if isinstance(err, TrainingDiverged) else ""
                self.archive.record("refused", generation=generation, slot=slot, parent=parent, edit=kind,
                                    reason=what + str(err))
                return "refused"
            done = self.archive.nodes()[node_id]
        if done.status == "pending" and done.measured is None and not self.refuse_protected(done):
            self.measure_node(done)
        done = self.archive.nodes()[done.id]
        if done.status == "pending":
            self.decide_node(done)
            done = self.archive.nodes()[done.id]
        return done.status

    def ancestor(self) -> None:
        done = self.archive.slot_done(0, 0)
        if done is None:
            genome = Genome.of(self.base)
            self.train_node(genome, None, self.base.ppo.total_timesteps, self.base.seed, 0, 0, None, ANCESTOR, {})
        self.fill_slot(0, 0)

    def run(self, command: str = "") -> dict:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from aligned_rl.improve.evolve_report import write_report

        started = time.perf_counter()
        config = self.config
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not config.progress) as progress:
            task = progress.add_task("baselines and the ancestor", total=1)
            self.measure_baselines()
            self.ancestor()
            self.ensure_champion()
            progress.update(task, completed=1)
            for generation in range(1, config.generations + 1):
                if self.archive.slot_done(generation, 0) is None and config.budget_steps and \
                        self.spent() + steps_of_generation(config) > config.budget_steps:
                    self.archive.record("budget", generation=generation, spent=self.spent(),
                                        budget=config.budget_steps)
                    break
                task = progress.add_task(f"generation {generation}", total=config.children)
                outcomes = []
                for slot in range(config.children):
                    outcomes.append(self.fill_slot(generation, slot))
                    champion = self.archive.champion()
                    u = self.archive.nodes()[champion].upsilon()
                    progress.update(task, advance=1, description=(
                        f"generation {generation}: {outcomes.count('admitted')} admitted, "
                        f"{outcomes.count('rejected')} rejected, {outcomes.count('refused')} refused; "
                        f"champion {champion} Upsilon {u:.4f}"))
            task = progress.add_task("the champion, the ancestor and the baselines on held-out environments", total=1)
            self.measure_heldout()
            progress.update(task, completed=1)
        return write_report(self, time.perf_counter() - started, command)


def _lawful_bound(evidence: Evidence, config: EvolveConfig) -> float:
    from aligned_rl.gate import clopper_pearson_upper

    return float(clopper_pearson_upper(evidence.violations, evidence.steps, config.gate.delta))


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=lambda x: np.asarray(x).tolist()))


def evolve(config: EvolveConfig, command: str = "") -> dict:
    """Run (or resume) the evolution ``config`` describes; returns its report (``command``: the
    command line that started it, recorded in the report)."""
    return Evolution(config).run(command)
