"""A lineage that loses nothing: every version of an agent, every event, and which one is deployed.

A lineage is a directory::

    lineage.json     what it belongs to: the constitution's name and fingerprint, the family
    events.jsonl     append-only: one JSON object per line (seq, time, kind, data), flushed and
                     fsynced before a call returns
    versions/<id>/   one directory per version (a checkpoint, a run directory: the caller's files)
    deployed.json    the pointer: which version is deployed, replaced atomically

Every change is made so that killing the process at any moment (``kill -9``) leaves a lineage
that opens: a version directory appears only complete (it is written under ``versions/.tmp-*``
and renamed into place), the pointer is replaced with ``os.replace`` after the file is fsynced
(it names the old version or the new one, never neither), and a last event line cut short by a
kill is dropped when the lineage is opened.  A promotion records its event after the pointer
moved, so after a crash the pointer is the truth and :meth:`Lineage.open` appends the missing
``promote`` event (``recovered``: true).  A lineage refuses to open under another constitution.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

INFO_FILE = "lineage.json"
EVENTS_FILE = "events.jsonl"
POINTER_FILE = "deployed.json"
VERSIONS = "versions"


class LineageError(ValueError):
    """A lineage that cannot be used as asked (another constitution, an unknown version, not a lineage)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Lineage:
    """Versions, events and the deployed pointer of one agent's lineage (see the module docstring)."""

    def __init__(self, directory: Path, info: dict):
        self.directory, self.info = directory, info

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, directory: str | Path, constitution: str, fingerprint: str, **meta: Any) -> "Lineage":
        """A new, empty lineage; refuses a directory that already holds one."""
        directory = Path(directory)
        if (directory / INFO_FILE).exists():
            raise LineageError(f"{directory} already holds a lineage; open it (resume) or choose another directory")
        (directory / VERSIONS).mkdir(parents=True, exist_ok=True)
        info = {"constitution": constitution, "fingerprint": fingerprint, "created": time.time(), **meta}
        _write_atomic(directory / INFO_FILE, info)
        lineage = cls(directory, info)
        lineage.record("created", **info)
        return lineage

    @classmethod
    def open(cls, directory: str | Path, fingerprint: str | None = None) -> "Lineage":
        """The lineage in ``directory``, repaired after a crash; refused under another constitution
        (``fingerprint``: the constitution the caller deploys; None: the lineage's own)."""
        directory = Path(directory)
        if not (directory / INFO_FILE).is_file():
            raise LineageError(f"{directory} is not a lineage ({INFO_FILE} is missing)")
        info = json.loads((directory / INFO_FILE).read_text())
        if fingerprint is not None and info["fingerprint"] != fingerprint:
            raise LineageError(
                f"{directory} belongs to constitution {info['constitution']}@{info['fingerprint']}, not to the one "
                f"given (@{fingerprint}): an improvement may never change the constitution; resume with the "
                "lineage's own constitution or start a new lineage")
        lineage = cls(directory, info)
        lineage._repair()
        return lineage

    def _repair(self) -> None:
        """Drop a torn last event line, remove unfinished version directories, and record a
        promotion whose pointer moved before its event was written."""
        path = self.directory / EVENTS_FILE
        if path.is_file():
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if complete != raw:
                with open(path, "r+b") as f:
                    f.truncate(len(complete))
                    f.flush()
                    os.fsync(f.fileno())
        for tmp in (self.directory / VERSIONS).glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        for tmp in self.directory.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        deployed = self.deployed()
        promoted = [e["data"]["version"] for e in self.events() if e["kind"] in ("promote", "rollback")]
        if deployed is not None and (not promoted or promoted[-1] != deployed):
            self.record("promote", version=deployed, recovered=True)

    # ------------------------------------------------------------------ events
    def events(self) -> list[dict]:
        path = self.directory / EVENTS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def record(self, kind: str, **data: Any) -> dict:
        """Append an event (flushed and fsynced before returning)."""
        path = self.directory / EVENTS_FILE
        seq = sum(1 for _ in open(path)) if path.is_file() else 0
        event = {"seq": seq, "time": time.time(), "kind": kind, "data": data}
        with open(path, "a") as f:
            f.write(json.dumps(event, sort_keys=True, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return event

    # ------------------------------------------------------------------ versions
    def versions(self) -> list[str]:
        return sorted(p.name for p in (self.directory / VERSIONS).iterdir() if not p.name.startswith("."))

    def version_dir(self, version: str) -> Path:
        path = self.directory / VERSIONS / version
        if not path.is_dir():
            raise LineageError(f"{self.directory} has no version {version!r}; it has {self.versions()}")
        return path

    def add_version(self, write: Callable[[Path], dict | None], parent: str | None = None, **data: Any) -> str:
        """A new version: ``write(directory)`` fills a fresh directory, which then appears whole
        under ``versions/`` (or not at all, if the process dies first); what ``write`` returns
        (a dict, or None) is recorded in the version's event with ``data``."""
        if parent is not None:
            self.version_dir(parent)
        version = f"v{len(self.versions()) + 1:04d}"
        tmp = self.directory / VERSIONS / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        found = write(tmp) or {}
        os.rename(tmp, self.directory / VERSIONS / version)
        _fsync_dir(self.directory / VERSIONS)
        self.record("version", version=version, parent=parent, **data, **found)
        return version

    # ------------------------------------------------------------------ the pointer
    def deployed(self) -> str | None:
        path = self.directory / POINTER_FILE
        return json.loads(path.read_text())["version"] if path.is_file() else None

    def promote(self, version: str, **decision: Any) -> None:
        """Deploy ``version``: the pointer moves atomically, then the event is recorded."""
        self.version_dir(version)
        _write_atomic(self.directory / POINTER_FILE, {"version": version})
        self.record("promote", version=version, **decision)

    def rollback(self, version: str) -> None:
        """Deploy an earlier version again."""
        self.version_dir(version)
        previous = self.deployed()
        _write_atomic(self.directory / POINTER_FILE, {"version": version})
        self.record("rollback", version=version, previous=previous)
