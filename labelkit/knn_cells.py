"""Exact neighbours within each query's nearest k-means cells, computed cell by cell as matrix products.

The ``"cells"`` method of :mod:`labelkit.knn`. The rows are split into ``nlist`` spherical k-means
cells, and each query is compared exactly with every row of the ``n_probe`` cells whose centroids
are nearest to it, as in an inverted file (IVF). The scan runs cell-major: each cell's rows are
gathered once and multiplied with every query that probes it (one BLAS product), and the top-k of
each query is merged as cells are scanned. A query-major IVF scan does the same dot products one
query at a time; grouped, a kNN graph of all rows runs at matrix-product speed. No copy of the rows
is held: the index is the cell of each row, the rows by cell, each row's ``GRAPH_MAX_PROBE``
nearest cells (48 bytes a row in all) and the centroids, and rows are read
from the array the index was built from (memory-mapped float16 stays float16 until a cell is
gathered).

Because the search is exact within the probed cells, its recall on a sample of queries is known
without searching: the fraction of their exact neighbours whose cell is among the probed ones
(:func:`probe_recall`). Tuning picks the smallest ``n_probe`` that reaches the target.

Inverted file: Jegou, Douze, Schmid, "Product quantization for nearest neighbor search", IEEE
TPAMI 2011; the cell-major (batched) scan is how GPU IVF search is organised (Johnson, Douze,
Jegou, IEEE TBD 2019).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from labelkit._progress import NULL

QUERY_CHUNK = 1_024  # queries of one cell multiplied at once
CANDIDATE_BLOCK = 8_192  # rows of one cell gathered at once (more only in an unbalanced cell)
ASSIGN_SCRATCH_BYTES = 64 << 20  # (rows, nlist) similarity tile while assigning rows to cells
TRAIN_ROWS_PER_CELL = 32  # k-means sample per cell: 10 iterations assign 320 rows a cell, 1.3 passes over 1M rows, 0.4 over 10M
TRAIN_ITERATIONS = 10
MAX_PROBE = 256
GRAPH_MAX_PROBE = 16  # a graph's probes stop here when they miss the target: refinement (below) closes the gap for less
REFINE_ROUNDS = 3  # at most; each stops early once the tuning sample reaches the target or stops improving
REFINE_MIN_GAIN = 0.002  # sample recall a round must add for another
PROBE_BLOCK_BYTES = 1 << 30  # a block of queries: float32 rows, probe lists sorted by cell, each probe's top-k slot; each probed cell is gathered once a block


def probe_ladder(nlist: int) -> list[int]:
    """Candidate ``n_probe`` values, about sqrt(2) apart (work grows linearly with ``n_probe``), up to
    ``min(nlist, MAX_PROBE)``.

    >>> probe_ladder(10)
    [1, 2, 3, 4, 6, 8, 10]
    """
    top = min(nlist, MAX_PROBE)
    steps = sorted({min(top, max(1, round(2 ** (j / 2)))) for j in range(2 * int(math.log2(max(top, 1))) + 3)})
    return [p for p in steps if p <= top]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


@contextmanager
def _one_torch_thread():
    """torch's top-k on one thread between BLAS products: its OpenMP threads keep spinning after each
    top-k and take the cores from the next product (the scan ran 3.6x slower with 2 threads on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def merge_topk(a_s, a_i, b_s, b_i, k: int):
    """The top-``k`` (torch tensors, descending) of two candidate lists per row: similarities and their ids."""
    import torch

    v, pos = torch.topk(torch.cat([a_s, b_s], dim=1), min(k, a_s.shape[1] + b_s.shape[1]), dim=1, sorted=True)
    return v, torch.gather(torch.cat([a_i, b_i], dim=1), 1, pos)


def assign(x: np.ndarray, centroids: np.ndarray, *, task=None) -> np.ndarray:
    """Nearest centroid (largest inner product) of each row of ``x``: int64 of shape (n,)."""
    return probes(x, centroids, 1, task=task)[:, 0].astype(np.int64)


def train_centroids(base: np.ndarray, nlist: int, *, seed: int = 0, n_iter: int = TRAIN_ITERATIONS, progress=NULL) -> np.ndarray:
    """Spherical k-means (Lloyd, unit centroids) on a sample of ``TRAIN_ROWS_PER_CELL * nlist`` rows.

    numpy's BLAS does the products (faiss's bundled one is ~3x slower here: see labelkit.knn). A cell
    that empties is re-seeded with a random sample row, so every centroid stays a unit vector."""
    n, d = base.shape
    rng = np.random.default_rng(seed)
    n_train = min(n, max(nlist, TRAIN_ROWS_PER_CELL * nlist))
    rows = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
    sample = _f32(base[rows])
    centroids = sample[np.sort(rng.choice(n_train, nlist, replace=False))].copy()
    with progress.task("knn: train cells (k-means)", total=n_iter) as task:
        for _ in range(n_iter):
            cell = assign(sample, centroids)
            sums = np.zeros((nlist, d), np.float32)  # only their directions matter
            _sum_by(sums, cell, sample)
            norms = np.linalg.norm(sums, axis=1)
            empty = norms == 0
            if empty.any():
                sums[empty] = sample[rng.choice(n_train, int(empty.sum()), replace=False)]
                norms[empty] = np.linalg.norm(sums[empty], axis=1)
            centroids = sums / norms[:, None]
            task.advance(1)
    return centroids


def _sum_by(out: np.ndarray, cell: np.ndarray, x: np.ndarray) -> None:
    """``out[c] += sum of x[cell == c]``, by sorting once (np.add.at is row-by-row slow)."""
    order = np.argsort(cell, kind="stable")
    c = cell[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    out[c[starts]] += np.add.reduceat(x[order], starts, axis=0)


def cell_lists(cell_of: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets): ``order[offsets[c]:offsets[c + 1]]`` are cell ``c``'s rows, ascending."""
    order = np.argsort(cell_of, kind="stable")
    offsets = np.zeros(nlist + 1, np.int64)
    np.cumsum(np.bincount(cell_of, minlength=nlist), out=offsets[1:])
    return order, offsets


def cell_dtype(nlist: int):
    """The smallest integer type that numbers ``nlist`` cells (int16 up to 32,767: half the memory of kept probe lists)."""
    return np.int16 if nlist <= np.iinfo(np.int16).max else np.int32


def probes(x: np.ndarray, centroids: np.ndarray, n_probe: int, *, task=None, dtype=np.int32) -> np.ndarray:
    """The ``n_probe`` cells whose centroids are nearest each row of ``x``, nearest first: ``dtype`` (n, n_probe)."""
    import torch

    n, nlist = len(x), len(centroids)
    p = min(n_probe, nlist)
    out = np.empty((n, p), dtype)
    rows = int(max(64, min(65_536, ASSIGN_SCRATCH_BYTES // max(1, 4 * nlist))))
    scratch = np.empty(min(rows, max(n, 1)) * nlist, np.float32)
    with _one_torch_thread():
        for s in range(0, n, rows):
            q = _f32(x[s : s + rows])
            sim = scratch[: len(q) * nlist].reshape(len(q), nlist)
            np.matmul(q, centroids.T, out=sim)
            out[s : s + len(q)] = sim.argmax(axis=1)[:, None] if p == 1 else torch.topk(torch.from_numpy(sim), p, dim=1)[1].numpy()
            if task is not None:
                task.advance(len(q))
    return out


def probe_recall(exact_idx: np.ndarray, query_probes: np.ndarray, cell_of: np.ndarray, probes_: list[int]) -> list[float]:
    """Recall@k that probing each ``n_probe`` in ``probes_`` cells gives queries whose exact neighbours
    are ``exact_idx`` (-1: none) and whose nearest cells are ``query_probes`` (nearest first): the
    search is exact within the probed cells, so a neighbour is found exactly when its cell is probed.

    >>> cell_of = np.array([0, 0, 1, 2])
    >>> probe_recall(np.array([[1, 2], [3, 0]]), np.array([[0, 1, 2], [1, 2, 0]]), cell_of, [1, 2, 3])
    [0.25, 0.75, 1.0]
    """
    nq = len(exact_idx)
    valid = exact_idx >= 0
    if nq == 0 or not valid.any():
        return [1.0 for _ in probes_]
    nlist = int(max(cell_of.max(initial=0), query_probes.max(initial=0))) + 1
    rank = np.full((nq, nlist), np.iinfo(np.int32).max, np.int32)  # rank of each cell among a query's probes
    rank[np.arange(nq)[:, None], query_probes] = np.arange(query_probes.shape[1], dtype=np.int32)
    pos = rank[np.arange(nq)[:, None], cell_of[np.maximum(exact_idx, 0)]]
    total = int(valid.sum())
    return [float(((pos < p) & valid).sum()) / total for p in probes_]


def search(base: np.ndarray, queries: np.ndarray, query_probes: np.ndarray, k: int, *, order: np.ndarray, offsets: np.ndarray,
           task=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product of each query among the rows of the cells it probes.

    ``query_probes`` (nq, n_probe): the cells each query probes. Each cell's rows are gathered once
    and multiplied with every query probing it; the cell's top-k of each query goes to that query's
    slot for the cell, and one top-k over its slots ends each query (so the scan does no per-pair
    merging: ``nq * n_probe * k * 12`` bytes of slots). Returns (sims, idx) of shape (nq, k),
    descending, padded with -inf / -1 where the probed cells hold fewer rows. ``task`` advances by
    queries, ``1 / n_probe`` per scanned query-cell pair.
    """
    import torch

    nq, n_probe = query_probes.shape
    slot_s = torch.full((nq * n_probe, k), -math.inf, dtype=torch.float32)  # row q * n_probe + j: query q's j-th probed cell
    slot_i = torch.full((nq * n_probe, k), -1, dtype=torch.int64)
    flat = query_probes.reshape(-1)
    by_cell = np.argsort(flat, kind="stable")  # slot rows, grouped by cell
    starts = np.searchsorted(flat[by_cell], np.arange(len(offsets)))
    slots = torch.from_numpy(by_cell)
    query_of = by_cell // max(n_probe, 1)  # ascending within each cell
    del flat
    with _one_torch_thread():
        _scan(base, queries, k, order, offsets, starts, slots, query_of, n_probe, slot_s, slot_i, task)
    sims, pos = torch.topk(slot_s.reshape(nq, -1), min(k, n_probe * k), dim=1, sorted=True)
    idx = torch.gather(slot_i.reshape(nq, -1), 1, pos)
    return sims.numpy(), idx.numpy()


def _scan(base, queries, k, order, offsets, starts, slots, query_of, n_probe, slot_s, slot_i, task) -> None:
    """Fill each probe's slot with the top-k of its cell (:func:`search`)."""
    import torch

    done = 0.0
    for c in range(len(offsets) - 1):
        a, b = int(starts[c]), int(starts[c + 1])
        rows = order[offsets[c] : offsets[c + 1]]
        if b > a and len(rows):
            for rb in range(0, len(rows), CANDIDATE_BLOCK):  # one block unless a cell outgrows CANDIDATE_BLOCK rows
                r = rows[rb : rb + CANDIDATE_BLOCK]
                x = _f32(base[r])
                for qa in range(a, b, QUERY_CHUNK):
                    qb = min(b, qa + QUERY_CHUNK)
                    v, i = torch.topk(torch.from_numpy(_f32(queries[query_of[qa:qb]]) @ x.T), min(k, len(r)), dim=1, sorted=True)
                    i = torch.from_numpy(r[i.numpy()])
                    sl = slots[qa:qb]
                    if rb:  # a later block of the same cell: merge with the slot
                        v, i = merge_topk(slot_s[sl], slot_i[sl], v, i, k)
                    if v.shape[1] < k:  # a cell of fewer than k rows
                        v = torch.nn.functional.pad(v, (0, k - v.shape[1]), value=-math.inf)
                        i = torch.nn.functional.pad(i, (0, k - i.shape[1]), value=-1)
                    slot_s.index_copy_(0, sl, v)
                    slot_i.index_copy_(0, sl, i)
        if task is not None:
            done += (b - a) / max(n_probe, 1)
            task.advance(int(done))
            done -= int(done)


def refine(base: np.ndarray, sims: np.ndarray, idx: np.ndarray, *, order: np.ndarray, task=None) -> None:
    """One round of kNN-graph refinement, in place: each row's neighbours become the exact top-k of its
    neighbours and their neighbours (Dong, Charikar, Li, "Efficient k-nearest neighbor graph
    construction for generic similarity measures", WWW 2011, without the sampling).

    Rows go in ``order`` (by cell) in chunks of QUERY_CHUNK: a chunk of neighbouring rows shares most
    of its candidates, so the union of theirs is gathered once and multiplied with the whole chunk,
    and each row keeps the top-k of that union (a superset of its own candidates), its own row left
    out. A row never loses a neighbour it had: the union holds them. Later chunks read the rows
    refined before them, which only helps."""
    import torch

    n, k = idx.shape
    with _one_torch_thread():
        for a in range(0, n, QUERY_CHUNK):
            rows = order[a : a + QUERY_CHUNK]
            first = idx[rows]
            second = idx[np.maximum(first, 0)].reshape(len(rows), -1)
            second[np.repeat(first < 0, k, axis=1)] = -1
            cand = np.unique(np.concatenate([first.reshape(-1), second.reshape(-1)]))
            cand = cand[cand >= 0]
            q = _f32(base[rows])
            best_s = best_i = None
            for cs in range(0, len(cand), CANDIDATE_BLOCK):
                c = cand[cs : cs + CANDIDATE_BLOCK]
                sim = q @ _f32(base[c]).T
                pos = np.minimum(np.searchsorted(c, rows), len(c) - 1)
                own = np.flatnonzero(c[pos] == rows)
                sim[own, pos[own]] = -np.inf  # a row is not its own neighbour
                v, i = torch.topk(torch.from_numpy(sim), min(k, len(c)), dim=1, sorted=True)
                i = torch.from_numpy(c)[i]
                if best_s is not None:
                    v, i = merge_topk(best_s, best_i, v, i, k)
                best_s, best_i = v, i
            if best_s is not None:
                w = best_s.shape[1]
                found = torch.isfinite(best_s).numpy()
                sims[rows, :w] = np.where(found, best_s.numpy(), -np.inf)
                idx[rows, :w] = np.where(found, best_i.numpy(), -1)
            if task is not None:
                task.advance(len(rows))
