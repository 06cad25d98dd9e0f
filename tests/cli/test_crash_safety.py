"""kill -9 at random points in every stage, then a rerun: the workspace stays consistent (issue 14).

Each stage runs as ``python -m labelkit STAGE DATA`` in a subprocess and is killed with SIGKILL
(its whole process group, DataLoader workers included) after a delay drawn from a seeded generator
within the stage's measured run time, or the moment a marker appears (embed: its first finished
part in ``embeddings.parts/``; later stages: the temporary file of their atomic write). The stage is
then rerun to completion, and the test checks that

- every Parquet file in the workspace is readable, right after the kill and after the rerun;
- ``labelkit status`` reports the stage and everything upstream of it as done;
- the outputs equal those of an unkilled run on an identical copy (same ids in the same order,
  vectors within 1e-6, same labels and flags).

The data is a subset of examples/digits (every labeled image and 300 unlabeled ones) embedded with
``pixels:8``; detect-noise uses ``--probs knn`` and distill 5 epochs of the mlp student, so the
whole module runs in well under a minute. The helpers here are shared with test_determinism.py
and test_concurrency.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import DIGITS

STAGES = ["embed", "prototype", "pseudolabel", "detect-noise", "distill"]
# What each stage writes (relative to the workspace); what the comparison reads.
OUTPUTS = {
    "embed": ["samples.parquet", "embeddings.parquet"],
    "prototype": ["prototypes.parquet"],
    "pseudolabel": ["pseudolabels.parquet", "knn.parquet"],
    "detect-noise": ["label_issues.parquet"],
    "distill": ["student/model.safetensors", "student/metrics.json", "student/config.json", "student/dynamics.parquet"],
}
# The artifact whose atomic write marks "the stage is writing its result now".
WRITES = {"embed": "embeddings.parquet", "prototype": "prototypes.parquet", "pseudolabel": "pseudolabels.parquet",
          "detect-noise": "label_issues.parquet", "distill": "student"}
CONFIG = """\
[embed]
model = "pixels:8"
batch_size = 16
row_group_size = 64

[detect-noise]
probs = "knn"

[distill]
epochs = 5
student = "mlp"
folds = 2
"""
N_UNLABELED = 300
ATOL = 1e-6
# Keys whose values are timings, paths or clocks: they differ between identical runs by design.
VOLATILE = {"seconds", "wall_time_s", "model_dir", "created_at", "finished_at", "elapsed_s"}


# -- data and commands ----------------------------------------------------------------------


def make_subset(dst: Path, n_unlabeled: int = N_UNLABELED, src: Path = DIGITS) -> Path:
    """Every labeled digit and the first ``n_unlabeled`` unlabeled ones, copied to ``dst``."""
    dst.mkdir(parents=True)
    for d in sorted(src.iterdir()):
        if d.name.startswith("."):
            continue
        if d.name == "unlabeled":
            (dst / d.name).mkdir()
            for f in sorted(d.iterdir())[:n_unlabeled]:
                shutil.copy2(f, dst / d.name / f.name)
        else:
            shutil.copytree(d, dst / d.name)
    return dst


def write_config(folder: Path, text: str = CONFIG) -> Path:
    path = folder / "labelkit.toml"
    path.write_text(text)
    return path


def labelkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "labelkit", *map(str, args)]


def lk(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m labelkit ARGS`` to completion."""
    return subprocess.run(labelkit_cmd(*args), capture_output=True, text=True, timeout=timeout)


def lk_ok(*args: str) -> subprocess.CompletedProcess:
    r = lk(*args)
    assert r.returncode == 0, f"labelkit {' '.join(map(str, args))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@dataclass
class Kill:
    killed: bool  # False: the process ended on its own before the kill came
    at_s: float  # seconds after the start when it was killed (or ended)
    marked_s: float | None  # seconds after the start when the marker appeared
    returncode: int
    stderr: str


Marker = Callable[[int], bool]  # pid -> has the moment come


def kill_during(cmd: list[str], *, marker: Marker | None = None, then_s: float = 0.0, log: Path,
                timeout: float = 300, poll_s: float = 0.002) -> Kill:
    """Start ``cmd`` in its own process group; SIGKILL the group ``then_s`` after ``marker(pid)`` is true."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        t0 = time.monotonic()
        marked = None if marker is not None else 0.0
        try:
            while proc.poll() is None:
                el = time.monotonic() - t0
                if marked is None and marker(proc.pid):
                    marked = el
                if marked is not None and el >= marked + then_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return Kill(True, el, marked, proc.returncode, log.read_text())
                if el > timeout:
                    raise AssertionError(f"{cmd} still running after {timeout} s")
                time.sleep(poll_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return Kill(False, time.monotonic() - t0, marked, proc.returncode, log.read_text())


def tmp_write_marker(ws: Path, artifact: str) -> Marker:
    """True once the temporary file of ``artifact``'s atomic write exists (the stage is writing its result)."""
    where, prefix = (ws / "student", ".") if artifact == "student" else (ws, f".{artifact}.")

    def seen(pid: int) -> bool:
        try:
            return any(n.startswith(prefix) and n.endswith(".tmp") for n in os.listdir(where))
        except FileNotFoundError:
            return False

    return seen


def first_part_marker(ws: Path) -> Marker:
    """True once embed has finished its first resumable part in embeddings.parts/."""
    parts = ws / "embeddings.parts"
    return lambda pid: parts.is_dir() and any(True for _ in parts.glob("*/part-*.parquet"))


def started_marker(ws: Path, stage: str) -> Marker:
    """True once the stage has read its inputs and is at work.

    embed: it has written samples.parquet. The others: their process has memory-mapped the
    embeddings cache (Linux /proc; elsewhere, from the start).
    """
    if stage == "embed":
        return lambda pid: (ws / "samples.parquet").exists()
    cache = str(ws / "embeddings.arrow")

    def mapped(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/maps") as f:
                return cache in f.read()
        except FileNotFoundError:
            return not Path("/proc/self/maps").exists()

    return mapped


# -- checking a workspace -------------------------------------------------------------------


def parquet_files(ws: Path) -> list[Path]:
    """Every Parquet file of the workspace (temporary files of interrupted writes are not artifacts)."""
    return sorted(p for p in ws.rglob("*.parquet") if not p.name.startswith("."))


def assert_all_readable(ws: Path) -> None:
    files = parquet_files(ws)
    assert files, f"no Parquet file in {ws}"
    for p in files:
        try:
            pq.read_table(p)
        except Exception as e:  # any failure to read is the finding; name the file
            raise AssertionError(f"{p.relative_to(ws)} is not readable: {type(e).__name__}: {e}") from None


def lk_here(*args: str) -> str:
    """Run a labelkit command in this process (no start-up cost); its stdout."""
    from typer.testing import CliRunner

    from labelkit.cli import app

    r = CliRunner().invoke(app, list(map(str, args)))
    assert r.exit_code == 0, f"labelkit {' '.join(map(str, args))} exited {r.exit_code}\n{r.output[-3000:]}"
    return r.stdout


def status(data: Path, config: Path) -> dict[str, str]:
    out = lk_here("status", data, "--config", config, "--json")
    return {s["stage"]: s["state"] + (f" ({s['reason']})" if s.get("reason") else "") for s in json.loads(out)["stages"]}


def assert_done_through(data: Path, config: Path, stage: str) -> None:
    st = status(data, config)
    upto = STAGES[: STAGES.index(stage) + 1]
    assert {s: st[s] for s in upto} == {s: "done" for s in upto}, st


def _close(a: Any, b: Any, where: str, atol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        ka, kb = set(a) - VOLATILE, set(b) - VOLATILE
        assert ka == kb, f"{where}: keys differ: {sorted(ka ^ kb)}"
        for k in sorted(ka):
            _close(a[k], b[k], f"{where}.{k}", atol)
    elif isinstance(a, (list, tuple, np.ndarray)) and isinstance(b, (list, tuple, np.ndarray)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        if len(a) and all(isinstance(x, (float, int)) and not isinstance(x, bool) for x in a) and \
                all(isinstance(x, (float, int)) and not isinstance(x, bool) for x in b):
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=atol, err_msg=where)
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _close(x, y, f"{where}[{i}]", atol)
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), f"{where}: {a!r} != {b!r}"
        else:
            assert abs(a - b) <= atol, f"{where}: {a!r} != {b!r} (tolerance {atol})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def table_contents(path: Path) -> dict[str, list]:
    """A Parquet file's contents, column by column, in row order (its metadata, which holds timings, aside)."""
    t = pq.read_table(path)
    return {name: t.column(name).to_pylist() for name in t.column_names}


def safetensors_contents(path: Path) -> dict[str, list]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64).ravel().tolist() for k, v in load_file(str(path)).items()}


def artifact_contents(path: Path) -> Any:
    if path.suffix == ".parquet":
        return table_contents(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".safetensors":
        return safetensors_contents(path)
    raise ValueError(path)


def assert_same_outputs(ws_a: Path, ws_b: Path, names: list[str], *, atol: float = ATOL) -> None:
    """Same contents (ids and order, labels and flags exactly, floats within ``atol``)."""
    for name in names:
        a, b = ws_a / name, ws_b / name
        assert a.exists(), f"{a} missing"
        assert b.exists(), f"{b} missing"
        _close(artifact_contents(a), artifact_contents(b), name, atol)


# -- the reference: one unkilled run, snapshotted before each stage -------------------------


@dataclass
class Reference:
    root: Path
    config: Path
    data: Path  # the finished reference
    before: dict[str, Path]  # stage -> a copy of the dataset and workspace just before it ran
    work_s: dict[str, float]  # stage -> seconds of work, measured in this process (imports paid)


def timed(f: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    f()
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """The unkilled run, stage by stage in this process, with a copy of the workspace before each stage."""
    root = tmp_path_factory.mktemp("crash")
    config = write_config(root)
    data = make_subset(root / "ref")
    before, work = {}, {}
    for stage in STAGES:
        before[stage] = root / f"before-{stage}"
        shutil.copytree(data, before[stage], symlinks=True)
        work[stage] = timed(lambda: lk_here(stage, data, "--config", config))
    assert_done_through(data, config, "distill")
    return Reference(root, config, data, before, work)


def killed_then_rerun(ref: Reference, tmp_path: Path, stage: str, *, frac: float | None = None, marker: str | None = None,
                      after_kill: Callable[[Path], Any] | None = None) -> tuple[Kill, Path, subprocess.CompletedProcess, Any]:
    """A copy of the workspace just before ``stage``; ``stage`` killed there, then rerun to completion.

    With ``frac``, the kill comes at that fraction of the stage's work after it started
    (``started_marker``); a stage that ends first (a less busy machine than when measured) is tried
    again on a fresh copy, aimed within the time it just took. With ``marker``, the kill comes the
    moment that marker appears.
    """
    data = tmp_path / "data"
    ws = data / ".labelkit"
    then_s = 0.0 if frac is None else frac * ref.work_s[stage]
    use_marker = True
    for _ in range(3):
        if data.exists():
            shutil.rmtree(data)
        shutil.copytree(ref.before[stage], data, symlinks=True)
        mark = {"part": first_part_marker(ws), "write": tmp_write_marker(ws, WRITES[stage]), None: started_marker(ws, stage)}[marker]
        kill = kill_during(labelkit_cmd(stage, data, "--config", ref.config), marker=mark if use_marker else None,
                           then_s=then_s, log=tmp_path / "killed.log")
        if kill.killed:
            assert kill.returncode == -signal.SIGKILL
            break
        assert kill.returncode == 0, kill.stderr
        if frac is None:
            break
        # It ended first: aim by the clock within the time it just took.
        use_marker, then_s = False, frac * kill.at_s
    # Right after the kill: every artifact on disk is whole, and the stages upstream are still done.
    assert_all_readable(ws)
    if stage != "embed":
        assert_done_through(data, ref.config, STAGES[STAGES.index(stage) - 1])
    seen = after_kill(ws) if after_kill else None
    rerun = lk_ok(stage, data, "--config", ref.config, "--json")
    assert "Traceback" not in rerun.stderr
    assert_all_readable(ws)
    assert_done_through(data, ref.config, stage)
    assert_same_outputs(ref.data / ".labelkit", ws, OUTPUTS[stage])
    return kill, ws, rerun, seen


def _frac(stage: str, seed: int) -> float:
    """A seeded random moment, as a fraction of the stage's own work."""
    return float(np.random.default_rng([14, STAGES.index(stage), seed]).uniform(0.05, 0.95))


# -- the tests ------------------------------------------------------------------------------


def test_embed_killed_after_its_first_part_resumes_from_the_parts(reference, tmp_path):
    def rows_in_parts(ws: Path) -> int:
        return sum(pq.read_metadata(p).num_rows for p in (ws / "embeddings.parts").glob("*/part-*.parquet"))

    kill, ws, rerun, in_parts = killed_then_rerun(reference, tmp_path, "embed", marker="part", after_kill=rows_in_parts)
    assert kill.killed, "embed ended before its first part appeared; the kill never happened"
    n = pq.read_metadata(ws / "embeddings.parquet").num_rows
    assert 64 <= in_parts < n
    # The finished parts were reused, not embedded again; the rest was embedded once.
    summary = json.loads(rerun.stdout)
    assert (summary["n_reused"], summary["n_embedded"], summary["n_skipped"]) == (in_parts, n - in_parts, 0)
    assert not (ws / "embeddings.parts").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_at_a_random_moment_reruns_to_the_same_outputs(reference, tmp_path, stage):
    kill, *_ = killed_then_rerun(reference, tmp_path, stage, frac=_frac(stage, 0))
    assert kill.killed, f"{stage} ended after {kill.at_s:.2f} s, before the kill"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("stage", STAGES)
def test_more_random_kill_moments(reference, tmp_path, stage, seed):
    killed_then_rerun(reference, tmp_path, stage, frac=_frac(stage, seed))


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_while_writing_its_result_reruns_to_the_same_outputs(reference, tmp_path, stage):
    """The kill lands inside the atomic write (or just after it); the previous state must survive."""
    killed_then_rerun(reference, tmp_path, stage, marker="write")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["embed", "prototype"])
def test_no_temporary_file_of_a_killed_write_outlives_the_rerun(reference, tmp_path, stage):
    kill, ws, _, _ = killed_then_rerun(reference, tmp_path, stage, marker="write")
    assert kill.killed
    assert [p.name for p in ws.rglob("*.tmp")] == []
