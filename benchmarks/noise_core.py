"""Confident-learning core: labelkit vs cleanlab 2.9 on 1M x 100 float32, and on real label errors.

Run from the project root: ``python benchmarks/noise_core.py [--rows N] [--classes K]``.

Table 1 (synthetic): wall time (best of ``--repeat``), CPU time of this process, and peak extra
memory measured with ``tracemalloc`` (numpy reports its buffers to it; the peak over the call,
minus what was allocated before it). cleanlab's time is for its defaults (``n_jobs=None``: a
process pool, whose CPU and memory this process cannot see), its memory for ``n_jobs=1`` so that
every allocation is in this process. The script asserts that the masks are equal.

Table 0 (``--command``): the whole command ``labelkit detect-noise DATA --pred-probs probs.parquet``
on the same synthetic arrays, written once into a temporary folder (DATA/labels.parquet with ``id``
and ``label``; probs.parquet with ``id`` and one float32 column per class), run in a subprocess
(interpreter start, imports, read, validate, compute, write), against cleanlab's
``find_label_issues`` alone on the in-memory arrays, timed in the same run. The command runs once
untimed first, as a user's rerun would find things: bytecode cached (as an installed package has
it), the files in the page cache, and probs.parquet's content fingerprint in the stat-keyed cache
(labelkit.workspace.file_fingerprint; a first run over a new file hashes it, 0.45 s of CPU at 460
MB, in a thread beside discovery). CPU is user + system (getrusage), for the command and cleanlab.
``--profile`` also runs the command under cProfile and prints its top entries by cumulative and
by own time.

Table 2 (real): labelkit's default filter on the cleanlab-label-errors arrays (``../shared/data``),
with the validated label errors of Northcutt, Athalye & Mueller (2021); skipped when absent. It
asserts the counts equal cleanlab's (SOURCE.md lists them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

from labelkit import noise

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cleanlab-label-errors"
# (flagged, validated errors recalled, validated errors) with prune_by_noise_rate, from SOURCE.md
REFERENCE = {"mnist": (15, 7, 15), "cifar10": (284, 49, 54), "20news": (95, 55, 82), "imdb": (1309, 725, 725)}


def synthetic(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of Gaussian logits peaked at a true class (~91% top-1 at K=100), 10% labels flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    probs = rng.standard_normal((n, k), dtype=np.float32)
    probs *= np.float32(1.5)
    probs[np.arange(n), true] += np.float32(6.0)
    probs -= probs.max(axis=1, keepdims=True)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = true.copy()
    flip = rng.random(n) < 0.10
    labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    return labels, probs


def timed(fn, repeat: int):
    """(result, best wall seconds, CPU seconds of that run)."""
    best = (None, np.inf, np.inf)
    for _ in range(repeat):
        gc.collect()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        w, c = time.perf_counter() - w, time.process_time() - c
        if w < best[1]:
            best = (out, w, c)
    return best


def peak_mb(fn) -> float:
    """Peak extra memory (MB) that tracemalloc sees during ``fn()``."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def bench_synthetic(n: int, k: int, repeat: int) -> list[str]:
    from cleanlab.filter import find_label_issues as cl_find

    labels, probs = synthetic(n, k)
    in_mb = probs.nbytes / 2**20
    rows = 65536  # e.g. Parquet row groups
    chunks = lambda: ((labels[s:s + rows], probs[s:s + rows]) for s in range(0, n, rows))  # noqa: E731
    runs = {
        "labelkit `find_label_issues`": (lambda: noise.find_label_issues(labels, probs), repeat),
        "labelkit streaming (64k-row chunks)": (lambda: noise.detect_label_issues_streaming(chunks).is_issue, repeat),
        "cleanlab 2.9 `find_label_issues` (defaults)": (lambda: cl_find(labels, probs), 1),
    }
    results, lines = {}, []
    for name, (fn, rep) in runs.items():
        mask, wall, cpu = timed(fn, rep)
        results[name] = mask
        single = "cleanlab" not in name
        mem = peak_mb(fn if single else (lambda: cl_find(labels, probs, n_jobs=1)))
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f}{'' if single else ' (parent only)'} | {mem:.0f} ({mem / in_mb:.2f}x) | {int(mask.sum())} |")
    ref = results["cleanlab 2.9 `find_label_issues` (defaults)"]
    for name, mask in results.items():
        assert np.array_equal(mask, ref), f"{name}: mask differs from cleanlab's"
    cl_mask = cl_find(labels, probs, filter_by="confident_learning", n_jobs=1)
    assert np.array_equal(noise.find_label_issues(labels, probs, method="confident_learning"), cl_mask)
    head = [f"### Confident-learning core, {n:,} x {k} float32 ({in_mb:.0f} MB), prune_by_noise_rate",
            "", "| implementation | wall s (best) | CPU s | peak extra MB (x input) | flagged |", "|---|---|---|---|---|"]
    return head + lines + ["", "Masks equal to cleanlab's: yes (also for confident_learning)."]


def write_command_inputs(folder: Path, labels: np.ndarray, probs: np.ndarray) -> tuple[Path, Path, list[str]]:
    """DATA/labels.parquet (id, label) and probs.parquet (id, one float32 column per class) for the command."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, k = probs.shape
    classes = [f"c{j:03d}" for j in range(k)]  # zero-padded: sorted order is index order
    ids = pa.array(np.char.add("s", np.arange(n).astype("U7")))
    data = folder / "data"
    data.mkdir(exist_ok=True)
    names = pa.array(classes).take(pa.array(labels))
    pq.write_table(pa.table({"id": ids, "label": names}), data / "labels.parquet")
    cols = {"id": ids, **{c: probs[:, j] for j, c in enumerate(classes)}}
    pq.write_table(pa.table(cols), folder / "probs.parquet")
    return data, folder / "probs.parquet", classes


def run_command(data: Path, probs: Path, *, pycache: Path, profile: Path | None = None) -> tuple[float, tuple[float, float], dict]:
    """Wall and CPU (user, sys) seconds of ``labelkit detect-noise`` in a fresh interpreter, and its --json summary.

    The interpreter caches bytecode in ``pycache`` (PYTHONPYCACHEPREFIX), as an installed package
    has its .pyc files: an environment with PYTHONDONTWRITEBYTECODE=1 and an editable install
    would otherwise compile labelkit's modules from source on every run.
    """
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    cmd = [*prefix, "-m", "labelkit", "detect-noise", str(data), "--pred-probs", str(probs), "--force", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONWARNINGS="ignore", PYTHONPYCACHEPREFIX=str(pycache))
    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"labelkit detect-noise failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime), (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(out.stdout)


def timed_rusage(fn, repeat: int) -> tuple[float, tuple[float, float]]:
    """Best wall seconds of ``fn()`` over ``repeat`` runs, and the (user, sys) CPU seconds of that run (this process)."""
    best = (np.inf, (np.inf, np.inf))
    for _ in range(repeat):
        gc.collect()
        t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        fn()
        w, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
        if w < best[0]:
            best = (w, (r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
    return best


def bench_command(n: int, k: int, repeat: int, *, profile: bool, workdir: Path | None = None) -> list[str]:
    from cleanlab.filter import find_label_issues as cl_find

    labels, probs = synthetic(n, k)
    load_before = os.getloadavg()[0]
    lines = [f"### Whole command vs cleanlab core, {n:,} x {k} (probs.parquet float32)", "",
             "| what | wall s (best) | CPU s, that run: user + sys (total) | runs (wall) |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="noise_core_") as tmp:
        folder = workdir / f"{n}x{k}" if workdir else Path(tmp)
        t = time.perf_counter()
        if not (folder / "probs.parquet").is_file():  # --workdir keeps them for the next run
            folder.mkdir(parents=True, exist_ok=True)
            write_command_inputs(folder, labels, probs)
        data, probs_file = folder / "data", folder / "probs.parquet"
        written = time.perf_counter() - t
        runs, summary, pycache = [], None, folder / "pycache"
        run_command(data, probs_file, pycache=pycache)  # warm-up: bytecode cached, files in the page cache (not counted)
        for _ in range(repeat):
            wall, cpu, summary = run_command(data, probs_file, pycache=pycache)
            runs.append((wall, cpu))
        cl_wall, cl_cpu = timed_rusage(lambda: cl_find(labels, probs), repeat)
        cl1_wall, cl1_cpu = timed_rusage(lambda: cl_find(labels, probs, n_jobs=1), repeat)
        _assert_same_issues(data, cl_find(labels, probs, n_jobs=1))
        cmd_wall, cmd_cpu = min(runs)
        split = lambda c: f"{c[0]:.2f} + {c[1]:.2f} ({sum(c):.2f})"  # noqa: E731
        ratio = (f"Ratio command / cleanlab core: wall {cmd_wall / cl_wall:.2f} (vs its defaults), {cmd_wall / cl1_wall:.2f} (vs n_jobs=1); "
                 f"CPU {sum(cmd_cpu) / sum(cl1_cpu):.2f} (vs n_jobs=1), user CPU {cmd_cpu[0] / cl1_cpu[0]:.2f}. "
                 f"Flagged ids equal cleanlab's: yes. The command ran once untimed first (bytecode cached, as installed). "
                 f"Inputs written (or found) in {written:.1f} s (not timed). "
                 f"Flagged by the command: {summary['n_issues']:,}; by label type {summary['issues_by_type']}. "
                 f"Load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs.")
        command = (f"| `labelkit detect-noise DATA --pred-probs probs.parquet` (subprocess: start, read, validate, compute, write) "
                   f"| {cmd_wall:.2f} | {split(cmd_cpu)} | {', '.join(f'{w:.2f}' for w, _ in runs)} |")
        lines += [command,
                  f"| cleanlab 2.9 `find_label_issues` (defaults: a process pool; arrays in memory) | {cl_wall:.2f} | {split(cl_cpu)} (parent only) | best of {repeat} |",
                  f"| cleanlab 2.9 `find_label_issues(n_jobs=1)` (arrays in memory) | {cl1_wall:.2f} | {split(cl1_cpu)} | best of {repeat} |", "", ratio]
        if profile:
            prof = folder / "detect.prof"
            wall, _, _ = run_command(data, probs_file, pycache=pycache, profile=prof)
            lines += ["", f"Profile (cProfile, {wall:.2f} s under the profiler), top entries by cumulative time:", "```"]
            lines += _top(prof, "cumulative", 25) + ["```", "By own time:", "```"] + _top(prof, "tottime", 15) + ["```"]
    return lines


def _assert_same_issues(data: Path, cl_mask: np.ndarray) -> None:
    """The command's flagged ids (label_issues.parquet) are exactly the rows cleanlab flags (ids 's<row>')."""
    import pyarrow.parquet as pq

    t = pq.read_table(data / ".labelkit" / "label_issues.parquet", columns=["id", "is_issue"]).to_pandas()
    ours = set(t.loc[t["is_issue"], "id"])
    theirs = {f"s{i}" for i in np.flatnonzero(cl_mask)}
    assert ours == theirs, f"the command flags {len(ours)} rows, cleanlab {len(theirs)}; {len(ours ^ theirs)} differ"


def _top(prof: Path, key: str, n: int) -> list[str]:
    stats = pstats.Stats(str(prof))
    rows = []
    for (file, line, func), (_, nc, tt, ct, _) in stats.stats.items():
        rows.append((ct if key == "cumulative" else tt, tt, ct, nc, f"{Path(file).name}:{line}({func})"))
    rows.sort(reverse=True)
    return [f"{ct:8.2f} cum {tt:8.2f} own {nc:>9} calls  {name}" for _, tt, ct, nc, name in rows[:n]]


def bench_real() -> list[str]:
    if not DATA.is_dir():
        return ["(real datasets skipped: ../shared/data/cleanlab-label-errors not present)"]
    from cleanlab.filter import find_label_issues as cl_find

    validated = json.loads((DATA / "validated_label_errors.json").read_text())
    lines = ["### Real label errors (cleanlab-label-errors), labelkit default filter (prune_by_noise_rate)", "",
             "| dataset | N x K | flagged | flagged and checked on MTurk | validated errors found | labelkit s | = cleanlab |",
             "|---|---|---|---|---|---|---|"]
    for name in REFERENCE:
        probs = np.load(DATA / "cross_validated_predicted_probabilities" / f"{name}_test_set_pyx.npy")
        labels = np.load(DATA / "original_test_labels" / f"{name}_test_set_original_labels.npy").astype(np.int64)
        if name == "imdb":  # entries up to 1.00001: clip and renormalise (SOURCE.md)
            probs = np.clip(probs, 0, 1)
            probs /= probs.sum(axis=1, keepdims=True)
        mask, wall, _ = timed(lambda: noise.find_label_issues(labels, probs), 3)
        v = validated[f"{name}_test_set"]
        flagged = np.flatnonzero(mask)
        checked = np.isin(flagged, v["checked_indices"]).sum()
        found = np.isin(v["validated_error_indices"], flagged).sum()
        same = np.array_equal(mask, cl_find(labels, probs, n_jobs=1))
        assert same and (len(flagged), found, len(v["validated_error_indices"])) == REFERENCE[name], name
        lines.append(f"| {name} | {len(labels):,} x {probs.shape[1]} | {len(flagged)} | {checked}/{len(v['checked_indices'])} "
                     f"| {found}/{len(v['validated_error_indices'])} | {wall:.3f} | {'yes' if same else 'NO'} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--command", action="store_true", help="only the whole-command table (table 0)")
    parser.add_argument("--profile", action="store_true", help="with --command: also profile the command (cProfile)")
    parser.add_argument("--workdir", type=Path, help="with --command: write the inputs here once and reuse them")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="cleanlab")
    if args.command:
        print("\n".join(bench_command(args.rows, args.classes, args.repeat, profile=args.profile, workdir=args.workdir)))
        return
    print("\n".join(bench_synthetic(args.rows, args.classes, args.repeat)))
    print()
    print("\n".join(bench_real()))


if __name__ == "__main__":
    main()
