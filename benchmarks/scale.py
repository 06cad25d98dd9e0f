"""Scale: a synthetic clustered set of N x 512 float16 vectors through embed -> prototype -> pseudolabel -> detect-noise.

    python benchmarks/scale.py --n 100000            # one size
    python benchmarks/scale.py --n 100000,1000000    # several, smallest first

The dataset: ``labels.parquet`` with ``id``, ``label`` (10% of the rows labeled, 5% of those
flipped to another class) and ``embedding`` (float16 list of 512), the vectors of
benchmarks/knn.py (N/1000 clusters in random 8-d subspaces), one class per cluster group of 10
(N/10000 classes, between 2 and 100: a label set does not grow with the data). The embed stage
stores float16 (``--dtype float16``), which the later stages read memory-mapped as float16;
``--memory-budget`` is passed to pseudolabel and detect-noise (without it they take their default,
``auto``: half the memory available; the kNN graphs are the cells method from 200k rows, and a
search that would not fit takes the cells method, else IVF-PQ). Each stage runs as its own ``labelkit`` process: wall seconds, CPU seconds, peak
RSS (which counts the memory-mapped Parquet and cache pages, which the kernel can drop) and peak
anonymous memory (RssAnon, sampled every 0.2 s: what has to fit in RAM) per stage. The machine may be shared; the table says what the
load average was. Run it from a checkout nothing edits meanwhile (a ``git worktree``): a stage
imports some modules lazily, and an edit mid-run mixes two versions.

    python benchmarks/scale.py --n 1000000 --memory-budget 2GB --workdir /data/scale
    python benchmarks/scale.py --n 10000000 --stages embed,prototype --workdir /data/scale

The dataset is drawn and written a row group at a time (10M x 512 needs about 10 GB of disk for
labels.parquet and as much again for the embed stage's float16 cache, not 20 GB of memory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("embed", "prototype", "pseudolabel", "detect-noise")  # prototype too: a rerun with new embeddings must not reuse stale prototypes
MAX_CLASSES = 100


def clustered_chunks(n: int, d: int = 512, *, per_cluster: int = 1000, latent_dim: int = 8, spread: float = 0.5, noise: float = 0.1,
                     seed: int = 0, chunk: int = 65_536):
    """benchmarks/knn.py's clustered vectors drawn a row chunk at a time: yields (rows, cluster of each).

    The same model (N/per_cluster random unit centres, each cluster varying in its own random
    ``latent_dim``-d subspace plus isotropic noise), drawn in row order so that 10M x 512 never
    needs its 20 GB of float32 at once; not the same draws as ``clustered`` (rows of a cluster
    are not generated together)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // per_cluster)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.standard_normal((n_clusters, latent_dim, d), dtype=np.float32) / np.float32(np.sqrt(d))
    cluster = rng.integers(0, n_clusters, n)
    scale = np.float32(spread * np.sqrt(d / latent_dim))
    sub = 2048  # rows whose (latent_dim, d) bases are gathered at once (32 MB)
    for lo in range(0, n, chunk):
        c = cluster[lo : lo + chunk]
        x = centres[c]
        for s in range(0, len(c), sub):
            z = rng.standard_normal((len(c[s : s + sub]), latent_dim), dtype=np.float32) * scale
            x[s : s + sub] += np.einsum("ij,ijk->ik", z, basis[c[s : s + sub]])
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise / np.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x, c


def write_dataset(folder: Path, n: int, seed: int = 0) -> dict:
    """labels.parquet for ``n`` samples (see the module docstring), written a row group at a time; returns its summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed + 1)
    n_clusters = max(1, n // 1000)
    n_classes = min(MAX_CLASSES, max(2, n_clusters // 10))
    names = pa.array([f"c{j:04d}" for j in range(n_classes)])
    schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("embedding", pa.list_(pa.float16(), 512))])
    width = len(str(n))
    counts = {"labeled": 0, "flipped": 0}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "labels.parquet.part"
    with pq.ParquetWriter(tmp, schema) as writer:
        lo = 0
        for x, cluster in clustered_chunks(n, 512, seed=seed):
            m = len(x)
            true = cluster % n_classes  # one class per group of clusters
            labeled = rng.random(m) < 0.10
            flipped = labeled & (rng.random(m) < 0.05)
            given = true.copy()
            given[flipped] = (given[flipped] + rng.integers(1, n_classes, int(flipped.sum()))) % n_classes
            label = pa.array(np.where(labeled, names.take(pa.array(given)).to_numpy(zero_copy_only=False), None), type=pa.string())
            emb = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).reshape(-1)), 512)
            ids = pa.array(np.char.add("s", np.char.zfill(np.arange(lo, lo + m).astype(str), width)))
            writer.write_table(pa.table({"id": ids, "label": label, "embedding": emb}, schema=schema), row_group_size=65_536)
            counts["labeled"] += int(labeled.sum())
            counts["flipped"] += int(flipped.sum())
            lo += m
    tmp.replace(folder / "labels.parquet")
    return {"n": n, "classes": n_classes, **counts}


def run_stage(stage: str, data: Path, extra: list[str]) -> dict:
    """One stage in its own process: wall s, CPU s (wait4's rusage), peak RSS GB (ru_maxrss: file pages mapped in count too)
    and peak anonymous memory GB (RssAnon of /proc/PID/status, sampled every 0.2 s: what must fit in RAM; the mapped
    Parquet and cache pages can be dropped)."""
    cmd = [sys.executable, "-m", "labelkit", stage, str(data), "--json", *extra]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        anon = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            anon = max(anon, _rss_anon_kb(proc.pid))
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"labelkit {stage} failed ({proc.returncode}): {stderr.strip()[-3000:]}")
    summary = json.loads(stdout) if stdout.strip().startswith("{") else {}
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_gb": usage.ru_maxrss / 1024**2, "anon_gb": anon / 1024**2,
            "summary": summary}


def _rss_anon_kb(pid: int) -> int:
    try:
        return int(re.search(r"RssAnon:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000", help="comma-separated sizes")
    ap.add_argument("--workdir", type=Path, help="keep the datasets here (default: a temporary folder)")
    ap.add_argument("--memory-budget", help="passed to pseudolabel and detect-noise, e.g. 2GB")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order (default {','.join(STAGES)})")
    args = ap.parse_args(argv)
    stages = [v for v in args.stages.split(",") if v]
    if unknown := [v for v in stages if v not in STAGES]:
        ap.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    print("| N x 512 (float16) | stage | wall s | CPU s | peak RSS GB | peak anonymous GB | notes |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale_") as tmp:
        for n in (int(v) for v in args.n.split(",")):
            data = (args.workdir or Path(tmp)) / f"n{n}"
            t = time.perf_counter()
            info = write_dataset(data, n) if not (data / "labels.parquet").is_file() else {"n": n}
            print(f"| {n:,} | (write dataset) | {time.perf_counter() - t:.0f} | | | | {info} |", flush=True)
            budget = ["--memory-budget", args.memory_budget] if args.memory_budget else []
            for stage in stages:
                r = run_stage(stage, data, ["--dtype", "float16"] if stage == "embed" else budget)
                s = r["summary"]
                note = ", ".join(f"{k}={s[k]}" for k in ("n_accepted", "n_issues", "probs") if k in s)
                if isinstance(s.get("knn"), dict):
                    note += f", knn={s['knn'].get('method')}"
                if isinstance(s.get("timings_s"), dict):
                    note += ", " + " ".join(f"{k} {v:.0f}s" for k, v in s["timings_s"].items() if isinstance(v, (int, float)))
                print(f"| {n:,} | {stage} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['peak_gb']:.2f} | {r['anon_gb']:.2f} | {note}; "
                      f"load {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
