"""Label spreading's solver: one conjugate-gradient solve over a real kNN graph, split by part.

Run from the project root: ``python benchmarks/propagation.py [--n 200000] [--dim 128] [--classes 100]``.

The data are those of benchmarks/pseudolabel_scale.py (``--classes`` Gaussian clusters in ``--dim``
dimensions, unit-normalised, 1% labeled); the graph is labelkit's own (``knn.knn_graph``, k = 10,
HNSW past 50,000 rows) and its normalised affinity (``propagation.Spreader``, renumbered for
locality as the pipeline does). One solve is what seed cleaning runs ten times and the final pass
twice: ``(I - alpha S) F = (1 - alpha) Y`` for one column per class, alpha and tolerance the
pipeline's. The table gives the best of ``--repeat`` solves, the iterations, and the part of a
solve that is the sparse product ``S p`` (timed alone, times the iterations): the rest is the
dense updates and column dots. The machine's load average is printed beside the times.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from pseudolabel_scale import clustered  # the same data (benchmarks/ is on the path of a script run from it)

from labelkit import knn
from labelkit import propagation as pg
from labelkit.config import defaults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--labeled", type=float, default=0.01)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    stage = defaults("pseudolabel")
    rng = np.random.default_rng(a.seed)
    x, y = clustered(rng, a.n, a.dim, a.classes)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    sims, idx = knn.knn_graph(x, stage.k)
    graph_s = time.perf_counter() - t
    spreader = pg.Spreader(pg.knn_affinity(sims, idx))
    seeded = np.flatnonzero(rng.random(a.n) < a.labeled)
    seeds = np.zeros((a.n, a.classes), np.float32)
    seeds[seeded, y[seeded]] = 1.0
    seeds /= np.maximum(seeds.sum(axis=0), 1.0)

    iterations = []
    real_cg = pg._conjugate_gradients

    def counted(product, b, alpha, tol, max_iter):  # the solver as the pipeline calls it, its products counted
        calls = [0]

        def counting(v, out):
            calls[0] += 1
            product(v, out)

        x_ = real_cg(counting, b, alpha, tol, max_iter)
        iterations.append(calls[0])
        return x_

    pg._conjugate_gradients = counted
    solves = []
    try:
        for _ in range(a.repeat):
            t = time.perf_counter()
            spreader.solve(seeds, stage.alpha)
            solves.append(time.perf_counter() - t)
    finally:
        pg._conjugate_gradients = real_cg
    product = spreader._product(a.classes)
    v, out = np.ascontiguousarray(seeds[spreader.order] if spreader.order is not None else seeds), np.empty_like(seeds)
    products = []
    for _ in range(max(a.repeat, 3)):
        t = time.perf_counter()
        product(v, out)
        products.append(time.perf_counter() - t)
    best, per_product = min(solves), min(products)
    load = os.getloadavg()[0]
    print(f"Graph: {a.n:,} x {a.dim} ({a.classes} classes), k = {stage.k}, built in {graph_s:.1f} s; {spreader._scipy.nnz:,} edges.\n")
    print(f"| n | classes | iterations | solve s (best of {a.repeat}) | s / iteration | sparse product s / iteration | dense updates share | load avg |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    its = iterations[solves.index(best)]
    dense = max(0.0, 1.0 - per_product * its / best)
    print(f"| {a.n:,} | {a.classes} | {its} | {best:.2f} | {best / its:.3f} | {per_product:.3f} | {dense:.2f} | {load:.1f} |")


if __name__ == "__main__":
    main()
