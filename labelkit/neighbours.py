"""A kNN graph as arrays: the one check every consumer runs, and the one vote of the neighbours' labels.

A graph is ``(sims, idx)``, each of shape (n_samples, k): cosine similarities and neighbour rows,
-1 for a missing neighbour (whose similarity may be anything; labelkit.knn pads with -inf).
Numpy in, numpy out; labelkit.pseudolabel (the kNN-vote score) and labelkit.evidence (the
leave-one-out vote detect-noise uses) both vote through :func:`vote`.
"""

from __future__ import annotations

import numpy as np

from labelkit.errors import BadInputError

_BLOCK_ENTRIES = 1 << 22  # class-count entries per block of rows: memory O(block * K)


def check_graph(sims, idx, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sims float32 with missing neighbours' set to 0, idx int64, mask of present non-self edges).

    ``n``: the number of rows the graph must have (default: its own row count).

    >>> s, i, ok = check_graph([[0.9, -np.inf], [0.5, 0.9]], [[1, -1], [1, 0]])
    >>> s.tolist(), ok.tolist()
    ([[0.8999999761581421, 0.0], [0.5, 0.8999999761581421]], [[True, False], [False, True]])
    """
    sims = np.asarray(sims, dtype=np.float32)
    idx = np.asarray(idx)
    if sims.ndim != 2 or sims.shape != idx.shape:
        raise BadInputError(f"'sims' and 'idx' must both have shape ({n if n is not None else 'n_samples'}, k). Got {sims.shape} and {idx.shape} instead.")
    n = len(idx) if n is None else n
    if sims.shape[0] != n:
        raise BadInputError(f"'sims' must have one row per sample ({n}). Got {sims.shape[0]} instead.")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise BadInputError(f"'idx' must be integers. Got dtype {idx.dtype} instead.")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.max() >= n or idx.min() < -1):
        raise BadInputError(f"'idx' must be in [-1, {n - 1}] (-1 = missing). Got range [{idx.min()}, {idx.max()}] instead.")
    present = idx >= 0
    if not np.isfinite(sims[present]).all():
        raise BadInputError("'sims' contains NaN or infinite values at present neighbours.")
    return np.where(present, sims, np.float32(0.0)), idx, present & (idx != np.arange(n)[:, None])


def vote(labels: np.ndarray, sims: np.ndarray, idx: np.ndarray, edges: np.ndarray | None, n_classes: int, *, power: float = 1.0,
         smoothing: float = 0.0, rows: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Each row's class distribution from its neighbours' labels (unchecked: see :func:`check_graph`).

    ``p_ic = (sum_{j in N(i), y_j = c, edge ij} max(s_ij, 0) ** power + smoothing / K) / (that sum over c + smoothing)``;
    ``power`` 0 weighs every neighbour 1; a row with no weight is uniform. ``edges`` masks the
    edges that vote (a leave-one-out vote leaves out self-loops; None: every present one); unlabeled neighbours (-1) never vote.

    >>> s, i, ok = check_graph([[0.9, 0.1], [0.9, 0.2], [0.1, 0.2]], [[1, 2], [0, 2], [0, 1]])
    >>> vote(np.array([0, 1, -1]), s, i, ok, 2, dtype=np.float64).round(2).tolist()
    [[0.0, 1.0], [1.0, 0.0], [0.33, 0.67]]
    """
    rows = np.arange(labels.shape[0]) if rows is None else rows
    out = np.empty((rows.size, n_classes), dtype=dtype)
    step = max(1, _BLOCK_ENTRIES // n_classes)
    for lo in range(0, rows.size, step):
        r = rows[lo:lo + step]
        nb = np.where(idx[r] >= 0 if edges is None else edges[r], labels[np.maximum(idx[r], 0)], -1)
        ok = nb >= 0
        w = np.maximum(sims[r][ok], 0).astype(np.float64) ** power
        at = np.broadcast_to(np.arange(r.size)[:, None], ok.shape)[ok]
        votes = np.bincount(at * n_classes + nb[ok], weights=w, minlength=r.size * n_classes).reshape(r.size, n_classes)
        votes = votes + smoothing / n_classes
        total = votes.sum(axis=1, keepdims=True)
        out[lo:lo + step] = np.divide(votes, total, out=np.full_like(votes, 1.0 / n_classes), where=total > 0)
    return out
