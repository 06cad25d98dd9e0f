"""Scale: a synthetic clustered set of N x 512 float16 vectors through embed -> prototype -> pseudolabel -> detect-noise.

    python benchmarks/scale.py --n 100000            # one size
    python benchmarks/scale.py --n 100000,1000000    # several, smallest first

The dataset: ``labels.parquet`` with ``id``, ``label`` (10% of the rows labeled, 5% of those
flipped to another class) and ``embedding`` (float16 list of 512), the vectors of
benchmarks/knn.py (N/1000 clusters in random 8-d subspaces), one class per cluster group of 10
(N/10000 classes, between 2 and 100: a label set does not grow with the data). The embed stage
stores float16 (``--dtype float16``), which the later stages read memory-mapped as float16;
``--memory-budget`` is passed to pseudolabel and detect-noise (IVF-PQ when the size-chosen index
would not fit). Each stage runs as its own ``labelkit`` process under ``/usr/bin/time -v``: wall
seconds, CPU seconds and peak RSS per stage. The machine may be shared; the table says what the
load average was. Run it from a checkout nothing edits meanwhile (a ``git worktree``): a stage
imports some modules lazily, and an edit mid-run mixes two versions.

    python benchmarks/scale.py --n 1000000 --memory-budget 2GB --workdir /data/scale
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


def write_dataset(folder: Path, n: int, seed: int = 0) -> dict:
    """labels.parquet for ``n`` samples (see the module docstring); returns its summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from knn import clustered

    rng = np.random.default_rng(seed)
    per_cluster = 1000
    x = clustered(n, 512, per_cluster=per_cluster, seed=seed).astype(np.float16)
    # The row's cluster, drawn as clustered() draws it (same seed: the centres first, then the rows).
    n_clusters = max(1, n // per_cluster)
    draw = np.random.default_rng(seed)
    draw.standard_normal((n_clusters, 512), dtype=np.float32)
    cluster = draw.integers(0, n_clusters, n)
    n_classes = min(MAX_CLASSES, max(2, n_clusters // 10))
    true = cluster % n_classes
    labeled = rng.random(n) < 0.10
    flipped = labeled & (rng.random(n) < 0.05)
    given = true.copy()
    given[flipped] = (given[flipped] + rng.integers(1, n_classes, int(flipped.sum()))) % n_classes
    names = pa.array([f"c{j:04d}" for j in range(n_classes)]).take(pa.array(given))
    label = pa.array(np.where(labeled, names.to_numpy(zero_copy_only=False), None), type=pa.string())
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 512)
    ids = pa.array(np.char.add("s", np.arange(n).astype(f"U{len(str(n))}")))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "label": label, "embedding": emb}), folder / "labels.parquet", row_group_size=65_536)
    return {"n": n, "classes": n_classes, "labeled": int(labeled.sum()), "flipped": int(flipped.sum())}


def run_stage(stage: str, data: Path, extra: list[str]) -> dict:
    """One stage in its own process under /usr/bin/time -v: wall s, CPU s, peak RSS GB."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "labelkit", stage, str(data), "--json", *extra]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t
    if out.returncode not in (0, 3):
        raise SystemExit(f"labelkit {stage} failed ({out.returncode}): {out.stderr.strip()[-3000:]}")
    def field(name: str) -> float:
        return float(re.search(rf"{name}: ([\d.]+)", out.stderr).group(1))

    summary = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
    return {"wall": wall, "cpu": field("User time \\(seconds\\)") + field("System time \\(seconds\\)"),
            "peak_gb": field("Maximum resident set size \\(kbytes\\)") / 1024**2, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000", help="comma-separated sizes")
    ap.add_argument("--workdir", type=Path, help="keep the datasets here (default: a temporary folder)")
    ap.add_argument("--memory-budget", help="passed to pseudolabel and detect-noise, e.g. 2GB")
    args = ap.parse_args(argv)
    print("| N x 512 (float16) | stage | wall s | CPU s | peak RSS GB | notes |")
    print("| ---: | --- | ---: | ---: | ---: | --- |", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale_") as tmp:
        for n in (int(v) for v in args.n.split(",")):
            data = (args.workdir or Path(tmp)) / f"n{n}"
            t = time.perf_counter()
            info = write_dataset(data, n) if not (data / "labels.parquet").is_file() else {"n": n}
            print(f"| {n:,} | (write dataset) | {time.perf_counter() - t:.0f} | | | {info} |", flush=True)
            budget = ["--memory-budget", args.memory_budget] if args.memory_budget else []
            for stage in STAGES:
                r = run_stage(stage, data, ["--dtype", "float16"] if stage == "embed" else budget)
                s = r["summary"]
                note = ", ".join(f"{k}={s[k]}" for k in ("n_accepted", "n_issues", "probs") if k in s)
                if isinstance(s.get("knn"), dict):
                    note += f", knn={s['knn'].get('method')}"
                if isinstance(s.get("timings_s"), dict):
                    note += ", " + " ".join(f"{k} {v:.0f}s" for k, v in s["timings_s"].items() if isinstance(v, (int, float)))
                print(f"| {n:,} | {stage} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['peak_gb']:.2f} | {note}; load {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
