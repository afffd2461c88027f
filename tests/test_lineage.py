"""The lineage survives kill -9 at any moment: versions appear whole, the pointer names a whole
version, events parse, a promotion interrupted between pointer and event is recorded on open."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from aligned_rl.improve.lineage import EVENTS_FILE, Lineage, LineageError
from tests.conftest import REPO

PAYLOAD = 64 * 1024  # bytes written into every version


def _write(version_payload: bytes):
    def write(directory):
        (directory / "weights.bin").write_bytes(version_payload)
        (directory / "sha256").write_text(hashlib.sha256(version_payload).hexdigest())
    return write


def _check_whole(lineage: Lineage) -> None:
    versions = lineage.versions()
    assert versions == [f"v{i:04d}" for i in range(1, len(versions) + 1)]  # no gap, no temporary left
    for v in versions:
        d = lineage.version_dir(v)
        assert hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest() == (d / "sha256").read_text()
    events = lineage.events()
    assert [e["seq"] for e in events] == list(range(len(events)))
    deployed = lineage.deployed()
    if deployed is not None:
        assert deployed in versions
        moves = [e["data"]["version"] for e in events if e["kind"] in ("promote", "rollback")]
        assert moves[-1] == deployed


def test_versions_promotions_and_rollback(tmp_path):
    lineage = Lineage.create(tmp_path / "l", "safe_zone", "abc123", family="CartPole-v1")
    v1 = lineage.add_version(_write(b"one"), trigger="initial")
    v2 = lineage.add_version(_write(b"two"), parent=v1, trigger="drift")
    lineage.promote(v1, reason="initial")
    lineage.promote(v2, lower_bound=0.1)
    lineage.rollback(v1)
    assert lineage.deployed() == v1
    kinds = [e["kind"] for e in lineage.events()]
    assert kinds == ["created", "version", "version", "promote", "promote", "rollback"]
    assert lineage.events()[-1]["data"] == {"version": v1, "previous": v2}
    _check_whole(Lineage.open(tmp_path / "l", "abc123"))
    with pytest.raises(LineageError, match="an improvement may never change the constitution"):
        Lineage.open(tmp_path / "l", "other")
    with pytest.raises(LineageError, match="no version 'v0009'"):
        lineage.promote("v0009")
    with pytest.raises(LineageError, match="already holds a lineage"):
        Lineage.create(tmp_path / "l", "safe_zone", "abc123")
    with pytest.raises(LineageError, match="not a lineage"):
        Lineage.open(tmp_path, "abc123")


def test_a_torn_event_and_an_unrecorded_promotion_are_repaired(tmp_path):
    lineage = Lineage.create(tmp_path, "c", "f")
    v1 = lineage.add_version(_write(b"x"))
    (tmp_path / "deployed.json").write_text(json.dumps({"version": v1}))  # the pointer moved, no event yet
    with open(tmp_path / EVENTS_FILE, "a") as f:
        f.write('{"seq": 2, "kind": "prom')  # a line cut short by a kill
    reopened = Lineage.open(tmp_path, "f")
    events = reopened.events()
    assert events[-1]["kind"] == "promote" and events[-1]["data"] == {"version": v1, "recovered": True}
    _check_whole(reopened)


_WORKER = r"""
import hashlib, os, sys
from aligned_rl.improve.lineage import Lineage
directory = sys.argv[1]
lineage = Lineage.open(directory, "f") if os.path.exists(os.path.join(directory, "lineage.json")) \
    else Lineage.create(directory, "c", "f")
while True:
    payload = os.urandom(65536)
    def write(d):
        (d / "weights.bin").write_bytes(payload)
        (d / "sha256").write_text(hashlib.sha256(payload).hexdigest())
    version = lineage.add_version(write, parent=lineage.deployed())
    lineage.record("gate", version=version, promote=True)
    lineage.promote(version)
"""


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_lineage_that_opens_whole(tmp_path):
    rng = random.Random(0)
    directory = tmp_path / "lineage"
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(directory)], cwd=REPO)
        time.sleep(rng.uniform(1.0, 2.5))  # start-up takes most of a second; then it writes versions
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _check_whole(Lineage.open(directory, "f"))
    assert len(Lineage.open(directory, "f").versions()) > 8  # the workers got that far between kills
