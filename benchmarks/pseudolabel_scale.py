"""Pseudolabel end to end at scale: N unlabeled samples x 100 classes through the real CLI.

Builds a bring-your-own-vectors dataset (clustered float32 vectors, 100 classes, 1% labeled),
then times `labelkit pseudolabel DATA` (embed -> prototype -> pseudolabel, kNN graph included)
and reports wall time per stage, the pseudolabel stage's own split (kNN graph, seed cleaning,
scoring, writing), peak memory, and pseudo-label quality against the known clusters: accuracy
of every pseudo-label, accepted count and precision (accuracy of the accepted ones). The
machine's load average is printed next to the times (they are only comparable at equal load).

    python benchmarks/pseudolabel_scale.py [--n 1000000] [--dim 128] [--classes 100] [--labeled 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def clustered(rng: np.random.Generator, n: int, dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): n float32 vectors around k Gaussian centres (spread 0.9), not normalised, and their class."""
    centers = rng.normal(size=(k, dim)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # bounded temporaries
        e = min(n, s + 100_000)
        x[s:e] = centers[y[s:e]] + 0.9 * rng.normal(size=(e - s, dim)).astype(np.float32)
    return x, y


def make_dataset(folder: Path, n: int, dim: int, k: int, labeled_frac: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y = clustered(rng, n, dim, k)
    labeled = rng.random(n) < labeled_frac
    labels = np.where(labeled, y.astype(str).astype(object), None)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
    table = pa.table({"id": pa.array(np.arange(n).astype(str)), "embedding": emb, "label": pa.array(labels, pa.string())})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "labels.parquet", row_group_size=100_000)
    return y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--labeled", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-precision", type=float, default=0.95, help="assert the accepted pseudo-labels are at least this precise")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        y = make_dataset(data, a.n, a.dim, a.classes, a.labeled, a.seed)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "labelkit", "pseudolabel", str(data), "--json"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"labelkit failed: {r.stderr[-2000:]}")
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        out = json.loads(r.stdout)
        pl = pq.read_table(data / ".labelkit" / "pseudolabels.parquet", columns=["id", "label", "accepted"]).to_pandas()
        truth = y[pl["id"].astype(int).to_numpy()].astype(str)
        correct = pl["label"].to_numpy() == truth
        acc_all = correct.mean()
        acc_accepted = correct[pl["accepted"].to_numpy()].mean() if pl["accepted"].any() else float("nan")
        stages = {u["stage"]: u.get("wall_time_s") for u in out.get("upstream", [])}
        laps = out.get("timings_s", {})
        load = f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}"
        n_acc = int(pl["accepted"].sum())
        print("| n | dim | classes | labeled | make data s | embed s | prototype s | pseudolabel s | of which kNN graph s | clean seeds s | score s | accept s | write s | total s | load avg (1 min, before / after) | peak RSS GB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {a.n:,} | {a.dim} | {a.classes} | {a.labeled:.0%} | {t_make:.1f} | {stages.get('embed')} | {stages.get('prototype')} | {out.get('wall_time_s')} | "
              f"{laps.get('knn_graph')} | {laps.get('clean_seeds')} | {laps.get('score')} | {laps.get('accept')} | {laps.get('write')} | {wall:.1f} | {load} | {peak_gb:.2f} |")
        print()
        print("| n | accuracy (all pseudo-labels) | accepted | coverage | precision of accepted | seeds dropped | temperature | held-out ECE |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {a.n:,} | {acc_all:.4f} | {n_acc:,} | {out['coverage']} | {acc_accepted:.4f} | {out['n_seeds_dropped']} | {out['temperature']} | {out['ece']} |")
        print()
        print(f"kNN graph (the stage's `knn` summary): {json.dumps(out.get('knn'))}")
        print(f"Warnings: {[w['code'] for w in out.get('warnings', [])]}")
        assert acc_all > 0.5, "pseudo-labels no better than chance on separable clusters"
        assert n_acc == 0 or acc_accepted >= a.min_precision, f"accepted pseudo-labels only {acc_accepted:.4f} precise"

if __name__ == "__main__":
    main()
