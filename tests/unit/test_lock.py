"""The workspace lock (issue 14): one writer per workspace, re-entrant, a message for who waits, and a
lock left by a process killed with SIGKILL taken over at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labelkit.errors import WorkspaceBusyError
from labelkit.workspace import LOCK, LOCK_HOLDER, Workspace

ROOT = Path(__file__).resolve().parents[2]

# A separate process that takes the lock, says so on stdout, and holds it until killed.
HOLDER = """
import sys, time
from labelkit.workspace import Workspace
ws = Workspace.open(sys.argv[1])
with ws.lock(command="labelkit run held-by-test"):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold(data: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_is_reentrant_and_leaves_only_the_lock_file(tmp_path):
    ws = Workspace.open(tmp_path)
    ws.out.mkdir()
    with ws.lock():
        assert ws.locked
        with ws.lock(wait=False):  # the same Workspace object: re-entrant (run holds one lock across stages)
            assert ws.locked
        assert ws.locked and ws.path(LOCK_HOLDER).exists()
        holder = json.loads(ws.path(LOCK_HOLDER).read_text())
        assert holder["pid"] == os.getpid() and holder["started"]
    assert not ws.locked
    assert sorted(p.name for p in ws.out.iterdir()) == [LOCK]  # the holder's sidecar goes with the lock


def test_a_workspace_the_lock_made_and_nothing_wrote_is_removed(tmp_path):
    ws = Workspace.open(tmp_path)
    with ws.lock():
        assert ws.out.is_dir()
    assert not ws.out.exists()  # a command that failed before writing leaves nothing behind
    with ws.lock():
        ws.path("manifest.json").write_text("{}")
    assert sorted(p.name for p in ws.out.iterdir()) == [LOCK, "manifest.json"]


def test_second_holder_in_another_object_is_refused_without_waiting(tmp_path):
    a, b = Workspace.open(tmp_path), Workspace.open(tmp_path)
    with a.lock(command="labelkit run first"):
        started = time.perf_counter()
        with pytest.raises(WorkspaceBusyError, match=r"is in use by another labelkit run \(pid \d+, 'labelkit run first', started \d\d:\d\d:\d\d\); wait for it"):
            with b.lock(wait=False):
                pass
        assert time.perf_counter() - started < 1
    with b.lock(wait=False):  # free again
        assert b.locked


def test_a_waiter_says_once_what_it_waits_for_then_gets_the_lock(tmp_path):
    a, b = Workspace.open(tmp_path), Workspace.open(tmp_path)
    said: list[str] = []
    got = threading.Event()

    def second():
        with b.lock(on_wait=said.append):
            got.set()

    with a.lock(command="labelkit embed data"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert not got.is_set()
    t.join(10)
    assert got.is_set()
    assert len(said) == 1
    assert said[0].startswith("waiting for another labelkit run (pid ") and f"on {tmp_path / '.labelkit'} ..." in said[0]


def test_lock_of_a_process_killed_with_sigkill_is_taken_over(tmp_path):
    p = hold(tmp_path)
    try:
        with pytest.raises(WorkspaceBusyError, match=rf"pid {p.pid}, 'labelkit run held-by-test'"):
            with Workspace.open(tmp_path).lock(wait=False):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert p.returncode == -signal.SIGKILL
    assert (tmp_path / ".labelkit" / LOCK_HOLDER).exists()  # its sidecar is left behind, the lock is not
    ws = Workspace.open(tmp_path)
    with ws.lock(wait=False):  # the OS released the dead holder's flock: no stale lock to break
        assert json.loads(ws.path(LOCK_HOLDER).read_text())["pid"] == os.getpid()


def test_lock_on_an_unwritable_workspace_is_one_line(tmp_path):
    (tmp_path / "blocker").write_text("a file where the workspace folder would go")
    ws = Workspace(data=tmp_path, out=tmp_path / "blocker" / "ws")
    with pytest.raises(Exception, match=r"ws: cannot create the workspace folder \(Not a directory\); pass --out DIR to write the artifacts elsewhere") as e:
        with ws.lock():
            pass
    assert type(e.value).__name__ == "BadInputError"


def test_taking_the_lock_removes_temporary_files_of_killed_writes(tmp_path):
    # A SIGKILLed atomic write leaves '.NAME.*.tmp' behind; the next holder removes it (issue 14).
    ws = Workspace.open(tmp_path, None)
    (ws.out / "student").mkdir(parents=True)
    orphans = [ws.out / ".prototypes.parquet.abc123.tmp", ws.out / "student" / ".model.safetensors.x.tmp"]
    for p in orphans:
        p.write_bytes(b"half")
    (ws.out / "prototypes.parquet.tmp-not-ours").write_bytes(b"kept")
    with ws.lock(wait=False):
        assert not any(p.exists() for p in orphans)
    assert (ws.out / "prototypes.parquet.tmp-not-ours").exists()
