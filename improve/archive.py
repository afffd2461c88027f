"""The archive of an evolution: every candidate agent, admitted or not, and how it came to be.

An archive is a lineage (:mod:`aligned_rl.improve.lineage`), so it survives ``kill -9`` at any
moment: a node's directory (its training run) appears only complete, every event is fsynced
before the call returns, and the pointer ``deployed.json`` names the best admitted agent (the
champion).  Its ``lineage.json`` holds the constitution's name and fingerprint and the
archive's protected settings (the ancestor's protected training settings, the gate's thresholds,
the measurement); an archive refuses to open under other ones.

The nodes are rebuilt from the events:

* ``version``: a node was made: its id (``v0001`` ...), parent, the edit that made it, its
  genome, generation and slot, the environment steps it trained;
* ``measured``: its Upsilon, Sigma and forbidden rate over the archive's measurement
  environments (``values/<id>.npz`` holds the per-environment values);
* ``decided``: admitted or rejected, the reasons, and the gate's record;
* ``refused``: an edit refused before anything was trained (no node directory), with the reason;
* ``baseline``: an AIQ baseline measured on the same environments.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aligned_rl.improve.genome import setting_differences
from aligned_rl.improve.lineage import Lineage, LineageError, _fsync_dir
from aligned_rl.train.config import ConfigError


class ArchiveError(ConfigError):
    """An archive that cannot be used as asked (another constitution, other protected settings)."""


@dataclasses.dataclass
class Node:
    """One candidate agent of the archive."""

    id: str
    parent: str | None
    edit: str
    genome: dict
    generation: int
    slot: int
    env_steps: int
    detail: dict = dataclasses.field(default_factory=dict)  # what the edit did (sizes, tools, distillation)
    measured: dict | None = None  # estimates over the archive's environments
    status: str = "pending"  # "admitted", "rejected" or "pending" (made, not yet decided)
    reasons: list[str] = dataclasses.field(default_factory=list)
    gate: dict | None = None

    @property
    def admitted(self) -> bool:
        return self.status == "admitted"

    def upsilon(self) -> float:
        return float(self.measured["upsilon"]["mean"])


class Archive:
    """Nodes, decisions and the champion of one evolution (see the module docstring)."""

    def __init__(self, lineage: Lineage):
        self.lineage = lineage
        self.directory = lineage.directory

    @classmethod
    def open_or_create(cls, directory: str | Path, constitution: str, fingerprint: str, settings: dict) -> "Archive":
        """The archive in ``directory`` (resumed), or a new one there; refused under another
        constitution or other protected ``settings`` (plain JSON data)."""
        directory = Path(directory)
        if (directory / "lineage.json").is_file():
            try:
                lineage = Lineage.open(directory, fingerprint)
            except LineageError as err:
                raise ArchiveError(f"the archive {err}") from err
            found = setting_differences(lineage.info.get("settings"), settings)
            if found:
                raise ArchiveError(
                    f"{directory} is the archive of another evolution: its protected settings differ (in the archive -> now: "
                    + "; ".join(found[:6]) + "). The constitution, the alignment of the learner, the gate and the "
                    "measurement are fixed for an archive's life; resume with its own settings or choose another "
                    "output directory")
            return cls(lineage)
        if directory.exists() and any(directory.iterdir()):
            raise ArchiveError(f"{directory} exists and is not an archive; choose another output directory")
        return cls(Lineage.create(directory, constitution, fingerprint, settings=settings))

    # ------------------------------------------------------------------ reading
    def events(self) -> list[dict]:
        return self.lineage.events()

    def nodes(self) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        for event in self.events():
            d = event["data"]
            if event["kind"] == "version":
                nodes[d["version"]] = Node(d["version"], d["parent"], d["edit"], d["genome"], d["generation"],
                                           d["slot"], d["env_steps"], d.get("detail", {}))
            elif event["kind"] == "measured":
                nodes[d["node"]].measured = d["estimates"]
            elif event["kind"] == "decided":
                node = nodes[d["node"]]
                node.status = "admitted" if d["admitted"] else "rejected"
                node.reasons, node.gate = d["reasons"], d.get("gate")
        return nodes

    def refused(self) -> list[dict]:
        return [e["data"] for e in self.events() if e["kind"] == "refused"]

    def baselines(self) -> dict[str, dict]:
        return {e["data"]["name"]: e["data"]["estimates"] for e in self.events() if e["kind"] == "baseline"}

    def slot_done(self, generation: int, slot: int) -> Node | dict | None:
        """What a generation's slot already holds: its node, its refused edit, or None."""
        for node in self.nodes().values():
            if (node.generation, node.slot) == (generation, slot):
                return node
        for refused in self.refused():
            if (refused["generation"], refused["slot"]) == (generation, slot):
                return refused
        return None

    def node_dir(self, node_id: str) -> Path:
        return self.lineage.version_dir(node_id)

    def run_dir(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "run"

    def champion(self) -> str | None:
        return self.lineage.deployed()

    def values(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.directory / "values" / f"{name}.npz") as f:
            return {k: f[k] for k in f.files}

    # ------------------------------------------------------------------ writing
    def add_node(self, write: Callable[[Path], int], parent: str | None, edit: str, genome: dict, generation: int,
                 slot: int, detail: dict) -> str:
        """A node whose directory ``write(directory)`` fills (it returns the environment steps it
        trained); the directory appears whole or not at all."""
        return self.lineage.add_version(lambda directory: {"env_steps": int(write(directory))}, parent=parent,
                                        edit=edit, genome=genome, generation=generation, slot=slot, detail=detail)

    def record_values(self, name: str, per_env: dict[str, np.ndarray]) -> None:
        """Per-environment values of a node or baseline, written atomically."""
        directory = self.directory / "values"
        directory.mkdir(exist_ok=True)
        tmp = directory / f".tmp-{name}-{os.getpid()}.npz"
        np.savez(tmp, **per_env)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, directory / f"{name}.npz")
        _fsync_dir(directory)

    def record(self, kind: str, **data: Any) -> None:
        self.lineage.record(kind, **data)

    def promote(self, node_id: str, **why: Any) -> None:
        self.lineage.promote(node_id, **why)

