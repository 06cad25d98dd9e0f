"""Two runs at once on the same dataset: the workspace lock serialises them (issue 14).

On a real image dataset (the digits subset, embed writing resumable parts, the stage whose
temporary part files a concurrent run used to delete under the other), three commands start on
one fresh dataset folder:

- A and B: ``labelkit run DATA --until distill --force`` at the same moment; one takes the lock,
  the other says once on stderr what it waits for, then both exit 0;
- C: the same with ``--no-wait`` while one of them holds the lock: it exits 1 at once (before the
  holder ends) with a one-line message;

and, at the same time, S: one run on an identical copy, the reference. Afterwards the contended
workspace is consistent (every Parquet file readable, status done, no temporary files or parts
left) and its outputs equal S's. (``--until distill`` leaves out the report, which adds a t-SNE
but no new locking path.)
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.test_crash_safety import (
    OUTPUTS,
    STAGES,
    assert_all_readable,
    assert_done_through,
    assert_same_outputs,
    labelkit_cmd,
    make_subset,
    write_config,
)

WAITING = "waiting for another labelkit run"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    ended_s: float  # seconds after the start of the scenario


@dataclass
class Contended:
    data: Path
    single: Path
    config: Path
    a: Ran
    b: Ran
    c: Ran
    c_started_s: float
    first_holder_ended_s: float


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(labelkit_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, t0: float) -> Ran:
    out, err = p.communicate(timeout=600)
    return Ran(p.returncode, out, err, time.monotonic() - t0)


@pytest.fixture(scope="module")
def contended(tmp_path_factory) -> Contended:
    root = tmp_path_factory.mktemp("concurrency")
    config = write_config(root)
    data = make_subset(root / "data")
    single = make_subset(root / "single")
    args = ("run", data, "--until", "distill", "--force", "--config", config)
    t0 = time.monotonic()
    s = _start("run", single, "--until", "distill", "--config", config)
    a, b = _start(*args), _start(*args)
    procs = [a, b, s]
    try:
        # C comes once the lock is held (its holder file is written under it) and a run is at work.
        holder = data / ".labelkit" / ".lock.json"
        while not holder.exists():
            assert a.poll() is None or b.poll() is None, "both runs ended before the lock was seen"
            assert time.monotonic() - t0 < 300
            time.sleep(0.01)
        c_started = time.monotonic() - t0
        c = _finish(_start(*args, "--no-wait"), t0)
        ended: dict[int, float] = {}
        # Whichever of A and B ends first was the first holder.
        while len(ended) < 2:
            for p in (a, b):
                if p.pid not in ended and p.poll() is not None:
                    ended[p.pid] = time.monotonic() - t0
            assert time.monotonic() - t0 < 600
            time.sleep(0.05)
        ra, rb, rs = _finish(a, t0), _finish(b, t0), _finish(s, t0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rs.returncode == 0, rs.stderr[-3000:]
    return Contended(data, single, config, ra, rb, c, c_started, min(ended.values()))


def test_both_forced_runs_finish_and_one_waited_saying_for_what(contended):
    a, b = contended.a, contended.b
    assert (a.returncode, b.returncode) == (0, 0), a.stderr[-2000:] + b.stderr[-2000:]
    err = a.stderr + b.stderr
    assert "Traceback" not in err and "internal error" not in err
    assert err.count(WAITING) == 1
    waited = a if WAITING in a.stderr else b
    line = next(ln for ln in waited.stderr.splitlines() if WAITING in ln)
    assert "'labelkit run " in line and f"on {contended.data / '.labelkit'}" in line


def test_no_wait_exits_1_at_once_with_one_line(contended):
    c = contended.c
    assert c.returncode == 1
    lines = [ln for ln in c.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, c.stderr
    assert lines[0].startswith(f"error: {contended.data / '.labelkit'} is in use by another labelkit run (pid ")
    assert "--no-wait" in lines[0]
    assert c.stdout == ""
    # At once: it ended while the run holding the lock was still at work.
    assert contended.c_started_s < c.ended_s < contended.first_holder_ended_s


def test_the_contended_workspace_is_consistent_and_equals_a_single_run(contended):
    ws = contended.data / ".labelkit"
    assert_all_readable(ws)
    assert_done_through(contended.data, contended.config, "distill")
    leftovers = [p.name for p in ws.rglob("*") if p.name.endswith(".tmp") or p.name == "embeddings.parts"]
    assert leftovers == []
    assert not (ws / ".lock.json").exists()  # released by whoever held it last
    assert_same_outputs(contended.single / ".labelkit", ws, [n for s in STAGES for n in OUTPUTS[s]])
