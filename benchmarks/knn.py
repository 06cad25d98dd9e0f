"""Benchmark labelkit.knn: a k=10 kNN graph over N x 512 clustered vectors (default N = 1M).

    python benchmarks/knn.py                       # 1M graph + exact-vs-HNSW at 50k and 100k
    python benchmarks/knn.py --n 100000 --compare 50000
    python benchmarks/knn.py --sweep 100000x128,512                   # the HNSW trade-off curve
    python benchmarks/knn.py --sweep 100000x128,512 --index ivfpq     # the IVF-PQ curve (nprobe)
    python benchmarks/knn.py --sweep 1000000x512 --index cells --nprobes 8,32,128,256   # the cells method's curve

Prints markdown tables of wall time, CPU time (user + sys), peak memory (ru_maxrss of a fresh
process per measurement) and recall@10 against exact search, and exits non-zero if recall@10 is
below 0.95. Each measurement runs in its own spawned process so peak memory is its own.

The data: N unit vectors in 512-d around N/1000 random centres; each cluster varies in its own
random 8-d subspace (spread 0.5) plus isotropic noise (0.1). Nearest-neighbour cosines are ~0.89
(top-1) and ~0.76 (10th), in the range of real CLIP image embeddings. On unstructured data (i.i.d.
Gaussian vectors) no approximate index reaches this recall: knn warns, and method="exact" is the
answer there. The machine may be shared: timings are noisy, CPU time less so.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

RECALL_BAR = 0.95
DIM = 512


def clustered(n: int, d: int = DIM, *, per_cluster: int = 1000, latent_dim: int = 8, spread: float = 0.5,
              noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit vectors with cluster structure (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // per_cluster)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, n_clusters, n)
    out = np.empty((n, d), np.float32)
    for c in range(n_clusters):
        rows = np.flatnonzero(y == c)
        basis = rng.standard_normal((latent_dim, d), dtype=np.float32) / np.sqrt(d)
        z = rng.standard_normal((len(rows), latent_dim), dtype=np.float32) * (spread * np.sqrt(d / latent_dim))
        x = centres[c] + z @ basis
        x += rng.standard_normal((len(rows), d), dtype=np.float32) * (noise / np.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[rows] = x
    return out


class _LogProgress:
    """Progress on stderr: one line when each task starts and ends."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @contextmanager
    def task(self, description, total=None):
        start = time.perf_counter()
        print(f"[{start - self.t0:7.1f}s] {description} ({total} rows)", file=sys.stderr, flush=True)

        class _Task:
            def advance(self, n=1):
                pass

            def update(self, **fields):
                pass

        yield _Task()
        print(f"[{time.perf_counter() - self.t0:7.1f}s]   done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)

    def log(self, message):
        print(message, file=sys.stderr, flush=True)


def _status_kb(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux); returns that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _exact_without_self(x, rows, k):
    """Exact top-k of x[rows] over x, each query's own row removed (by index)."""
    from labelkit import knn

    _, idx = knn.search(x, x[rows], k + 1, method="exact", device="cpu")
    keep = idx != rows[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, axis=1)


def _graph_job(n: int, k: int, n_check: int, method: str, out) -> None:
    """One process: generate, build, graph, check recall on a sample; report through ``out``."""
    from labelkit import knn

    x = clustered(n)
    data_gb = x.nbytes / 1024**3
    progress = _LogProgress()
    c0, t0 = _cpu(), time.perf_counter()
    index = knn.KnnIndex(method, device="cpu").build(x, progress=progress)
    t_build = time.perf_counter() - t0
    sims, idx = index.graph(k, progress=progress)
    t_total = time.perf_counter() - t0
    cpu = _cpu() - c0
    peak = _peak_gb()
    rows = np.sort(np.random.default_rng(123).choice(n, min(n_check, n), replace=False))
    recall = knn.recall_at_k(idx[rows], _exact_without_self(x, rows, k))
    out.put(dict(n=n, method=index.method_, knob=index.tuned_.get(k + 1), build=t_build, search=t_total - t_build,
                 total=t_total, cpu=cpu, peak=peak, data=data_gb, recall=recall, n_check=len(rows)))


def _sweep_job(n: int, d: int, m: int, ef_construction: int, efs: tuple[int, ...], k: int, n_check: int, out) -> None:
    """One process: build HNSW(M, efConstruction) over n x d, then for each efSearch the recall@k and
    search seconds on ``n_check`` sampled rows (a whole graph's search is n / n_check times that)."""
    import faiss

    from labelkit import knn

    x = clustered(n, d)
    rows = np.sort(np.random.default_rng(123).choice(n, min(n_check, n), replace=False))
    exact = _exact_without_self(x, rows, k)
    c0, t0 = _cpu(), time.perf_counter()
    index = knn.KnnIndex("hnsw", device="cpu", ann=knn.AnnParams(hnsw_m=m, ef_construction=ef_construction)).build(x)
    build, build_cpu = time.perf_counter() - t0, _cpu() - c0
    curve = []
    for ef in efs:
        c1, t1 = _cpu(), time.perf_counter()
        _, idx = index._index.search(x[rows], k + 1, params=faiss.SearchParametersHNSW(efSearch=max(ef, k + 1)))
        wall, cpu = time.perf_counter() - t1, _cpu() - c1
        keep = idx != rows[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        curve.append((ef, knn.recall_at_k(np.take_along_axis(idx, order, axis=1), exact), wall * n / len(rows), cpu * n / len(rows)))
    out.put({"build": build, "build_cpu": build_cpu, "peak": _peak_gb(), "index_gb": (x.nbytes + n * 2 * m * 4) / 1024**3, "curve": curve})


def _budget_job(n: int, d: int, method: str, knobs: tuple[int, ...], pq_m: int | None, k: int, n_check: int, out) -> None:
    """One process: build ``method`` over n x d; per nprobe (IVF, IVF-PQ) or efSearch (HNSW) the recall@k and search
    seconds on ``n_check`` sampled rows; then the whole graph with the tuned knob, and the peak memory that
    building and searching added to the embeddings (VmHWM reset after the data and the exact check) against
    knn.memory_estimate."""
    from labelkit import knn
    from labelkit._progress import NULL

    x = clustered(n, d)
    rows = np.sort(np.random.default_rng(123).choice(n, min(n_check, n), replace=False))
    exact = _exact_without_self(x, rows, k)
    ann = knn.AnnParams(pq_m=pq_m)
    import faiss  # noqa: F401  (its libraries' pages are not the index's memory)

    base_kb = _reset_peak()
    c0, t0 = _cpu(), time.perf_counter()
    index = knn.KnnIndex(method, device="cpu", ann=ann).build(x)
    build, build_cpu = time.perf_counter() - t0, _cpu() - c0
    curve = []
    for knob in knobs if method != "exact" else ():
        c1, t1 = _cpu(), time.perf_counter()
        if method == "cells":  # searched as the graph searches them: grouped by cell, exact within the probed cells
            s, i = index._cells_search(x[rows], k + 1, knob, NULL, None)
        else:
            s, i = index._ann_search(x[rows], k + 1, index._search_params(knob))
        wall, cpu = time.perf_counter() - t1, _cpu() - c1
        _, i = knn._drop_self(s, i, rows)
        curve.append((knob, knn.recall_at_k(i[:, :k], exact), wall * n / len(rows), cpu * n / len(rows)))
    c2, t2 = _cpu(), time.perf_counter()
    _, idx = index.graph(k)
    graph, graph_cpu = time.perf_counter() - t2, _cpu() - c2
    code = index._index.pq.M if method == "ivfpq" else None
    out.put({"build": build, "build_cpu": build_cpu, "curve": curve, "graph": graph, "graph_cpu": graph_cpu, "pq_m": code,
             "knob": index.tuned_.get(k + 1), "recall": knn.recall_at_k(idx[rows], exact),
             "peak_gb": (_status_kb("VmHWM") - base_kb) / 1024**2,
             "estimate_gb": knn.memory_estimate(method, n, d, k, ann=knn.AnnParams(pq_m=code)) / 1024**3})


def budget_sweep(sizes: list[int], dims: list[int], method: str, knobs: tuple[int, ...], pq_m: int | None, k: int, n_check: int) -> None:
    """Print the curve of one index (IVF-PQ by default) with the kNN layer's measured peak memory and its estimate."""
    knob_name = "efSearch" if method == "hnsw" else "nprobe"
    print(f"| n x d | index | build s (CPU s) | {knob_name} | recall@10 | graph search s, extrapolated (CPU s) | "
          "whole graph: search s (CPU s), tuned knob, recall@10 | kNN peak GB measured (estimate) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for n in sizes:
        for d in dims:
            r = _in_child(_budget_job, n, d, method, knobs, pq_m, k, n_check)
            name = f"IVF-PQ {r['pq_m']} B/row, rerank 8" if method == "ivfpq" else method
            whole = f"{r['graph']:.0f} ({r['graph_cpu']:.0f}), {r['knob']}, {r['recall']:.4f}"
            for knob, recall, wall, cpu in r["curve"] or [("", float("nan"), 0.0, 0.0)]:
                print(f"| {n:,} x {d} | {name} | {r['build']:.0f} ({r['build_cpu']:.0f}) | {knob} | {recall:.4f} | {wall:.0f} ({cpu:.0f}) | "
                      f"{whole} | {r['peak_gb']:.3f} ({r['estimate_gb']:.3f}) |", flush=True)


def sweep(sizes: list[int], dims: list[int], configs: list[tuple[int, int]], efs: tuple[int, ...], k: int, n_check: int) -> None:
    """Print the HNSW trade-off curve: build time, search time, recall@k and memory per (n, d, M, efConstruction, efSearch)."""
    for n in sizes:
        for d in dims:
            for m, efc in configs:
                r = _in_child(_sweep_job, n, d, m, efc, efs, k, n_check)
                for ef, recall, wall, cpu in r["curve"]:
                    print(f"| {n:,} x {d} | {m} | {efc} | {r['build']:.0f} ({r['build_cpu']:.0f}) | {ef} | {recall:.4f} | "
                          f"{wall:.0f} ({cpu:.0f}) | {r['build'] + wall:.0f} | {r['peak']:.2f} ({r['index_gb']:.2f}) |", flush=True)


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def _row(r: dict, k: int) -> str:
    knob = "" if r["knob"] is None else f"efSearch={r['knob']}" if r["method"] == "hnsw" else f"nprobe={r['knob']}"
    return (f"| {r['n']:,} | {r['method']} {knob} | {r['build']:.1f} | {r['search']:.1f} | {r['total']:.1f} | "
            f"{r['cpu']:.1f} | {r['peak']:.2f} ({r['data']:.2f} data) | {r['recall']:.4f} ({r['n_check']} q) |")


HEADER_SWEEP = ("| n x d | M | efConstruction | build s (CPU s) | efSearch | recall@10 | graph search s, extrapolated (CPU s) "
                "| build + search s | peak RSS GB (index GB) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
HEADER = ("| n | method | build s | search s | total s | CPU s | peak RSS GB | recall@{k} |\n"
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the main graph (default 1M)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--check", type=int, default=1000, help="queries checked against exact search")
    ap.add_argument("--compare", default="50000,100000",
                    help="comma-separated sizes for exact vs HNSW ('' to skip)")
    ap.add_argument("--sweep", help="HNSW trade-off curve instead: sizes x dims, e.g. '100000,300000x128,512'")
    ap.add_argument("--configs", default="32:64,32:160", help="with --sweep: M:efConstruction pairs")
    ap.add_argument("--efs", default="16,32,64,128,256,512", help="with --sweep: efSearch values")
    ap.add_argument("--index", default="hnsw", choices=("hnsw", "ivfpq", "ivf", "cells", "exact"),
                    help="with --sweep: hnsw = the HNSW build/search curve (--configs, --efs); ivfpq, ivf, cells, exact (or hnsw with --peak) = "
                         "one build per size with its --nprobes (--efs) curve, the whole graph and the measured peak memory against "
                         "knn.memory_estimate")
    ap.add_argument("--peak", action="store_true", help="with --sweep --index hnsw: the whole graph and its peak memory, as for ivfpq")
    ap.add_argument("--nprobes", default="4,8,16,32,64", help="with --sweep --index ivfpq/ivf/cells: nprobe values")
    ap.add_argument("--pq-m", type=int, default=None, help="with --index ivfpq: code bytes per row (default knn.default_pq_m)")
    args = ap.parse_args(argv)
    k = args.k
    if args.sweep and (args.index != "hnsw" or args.peak):
        sizes, dims = (list(map(int, part.split(","))) for part in args.sweep.split("x"))
        knobs = args.efs if args.index == "hnsw" else args.nprobes
        budget_sweep(sizes, dims, args.index, tuple(map(int, knobs.split(","))), args.pq_m, k, args.check)
        return 0
    if args.sweep:
        sizes, dims = (list(map(int, part.split(","))) for part in args.sweep.split("x"))
        configs = [tuple(map(int, c.split(":"))) for c in args.configs.split(",")]
        print(HEADER_SWEEP)
        sweep(sizes, dims, configs, tuple(map(int, args.efs.split(","))), k, args.check)
        return 0
    from labelkit import knn

    failures = []
    sizes = [int(s) for s in args.compare.split(",") if s.strip()]
    if sizes:
        print(f"## exact vs HNSW (auto threshold: exact up to {knn.EXACT_MAX_ROWS:,} rows)\n")
        print(HEADER.format(k=k), flush=True)
        for n in sizes:
            for method in ("exact", "hnsw"):
                r = _in_child(_graph_job, n, k, args.check, method)
                print(_row(r, k), flush=True)
                if r["recall"] < RECALL_BAR:
                    failures.append(f"{method} at n={n:,}: recall@{k} {r['recall']:.4f}")
        print()
    print(f"## kNN graph, k={k}, {args.n:,} x {DIM} clustered float32, method=auto\n")
    print(HEADER.format(k=k), flush=True)
    r = _in_child(_graph_job, args.n, k, args.check, "auto")
    print(_row(r, k), flush=True)
    if r["recall"] < RECALL_BAR:
        failures.append(f"auto at n={args.n:,}: recall@{k} {r['recall']:.4f}")
    if failures:
        print(f"\nFAIL: recall below {RECALL_BAR}: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"\nOK: recall@{k} >= {RECALL_BAR} everywhere.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
