"""Label propagation over a kNN graph: the affinity, its normalisation, and the spreading solver.

Numpy in, numpy out (large sparse products run in torch, whose CSR-times-dense product is faster
than scipy's and uses every core; small ones in scipy; the conjugate gradients' dense updates are
torch's fused in-place ops on the same memory). :class:`Spreader` holds one normalised graph ``S = D^-1/2 A D^-1/2`` and
solves ``(I - alpha S) F = (1 - alpha) Y`` by conjugate gradients for many right-hand sides, so
the graph is built once and reused by every held-out fold. The work is in float32 (float64 for
:func:`spread_labels`), column block by column block, with at most ``BLOCK_ELEMENTS`` values
per block array; large graphs are renumbered (reverse Cuthill-McKee) so that neighbours sit
close in memory, which makes the sparse products cache-friendly.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from labelkit._probability import EPS, ROW_CHUNK, check_positive, check_unit, log_probs, normalize_rows_
from labelkit.config import defaults
from labelkit.errors import BadInputError

#: Relative residual at which conjugate gradients stop (per column) in the pipeline. 1e-5 takes 18
#: iterations where 1e-6 took 23 (alpha 0.9), with the same pseudo-labels, acceptances and seeds
#: dropped on four real sets x 2 label fractions x 3 seeds (docs/performance.md); 1e-4 moved some.
CG_TOL = 1e-5
#: Iteration cap of conjugate gradients (``I - alpha S`` has condition number <= (1+alpha)/(1-alpha)).
CG_MAX_ITER = 1000
#: Largest n_nodes x columns block solved at once: five float32 arrays of this size are live.
BLOCK_ELEMENTS = 2**25
#: Graphs with more nodes than this are renumbered for memory locality before solving.
REORDER_ABOVE = 50_000
#: Sparse products with fewer multiply-adds (nnz x columns) than this run in scipy: torch's
#: threaded product costs tens of milliseconds of start-up on a busy machine, whatever the size.
TORCH_ABOVE = 2**24
_STAGE = defaults("pseudolabel")  # gamma, one_way_weight and alpha default to the pseudolabel stage's (docs/options.md)


def knn_affinity(sims, idx, *, gamma: float = _STAGE.gamma, one_way_weight: float = _STAGE.one_way_weight) -> sp.csr_matrix:
    """Symmetric sparse affinity of a kNN graph that favours mutual neighbours.

    ``W_ij = max(s_ij, 0) ** gamma`` for each listed neighbour ``j`` of ``i``; the affinity
    keeps every edge in either direction, ``A_ij = max(W_ij, W_ji)``, scaled by
    ``one_way_weight`` unless ``i`` and ``j`` list each other (mutual neighbours). One-way edges
    are where clusters leak into each other through hubs; a small weight instead of none keeps
    every sample connected (a pure mutual kNN graph isolates many).

    Parameters
    ----------
    sims, idx : ndarray of shape (n_samples, k)
        Cosine similarities and neighbour indices (-1 = missing).
    gamma : float, default: the pseudolabel stage's ``gamma``
        Power on the similarities; larger values keep only the strongest edges (Iscen et al.
        use 3).
    one_way_weight : float, default: the pseudolabel stage's ``one_way_weight``
        In [0, 1]: 1 gives the plain symmetrised graph ``max(W, W^T)``, 0 the mutual kNN graph.

    Returns
    -------
    affinity : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        Zero diagonal.

    References
    ----------
    Iscen, Tolias, Avrithis, Chum, "Label Propagation for Deep Semi-supervised Learning",
    CVPR 2019. Ozaki, Shimbo, Komachi, Matsumoto, "Using the Mutual k-Nearest Neighbor Graphs
    for Semi-supervised Classification of Natural Language Data", CoNLL 2011.

    Examples
    --------
    >>> idx = np.array([[1], [0], [0]])  # 0 and 1 are mutual; 2 -> 0 is one-way
    >>> knn_affinity(np.ones((3, 1)), idx, one_way_weight=0.5).toarray()
    array([[0. , 1. , 0.5],
           [1. , 0. , 0. ],
           [0.5, 0. , 0. ]])
    """
    check_positive("gamma", gamma, strict=False)
    check_unit("one_way_weight", one_way_weight)
    return _affinity_impl(np.asarray(sims), np.asarray(idx, dtype=np.int64), gamma, one_way_weight)


def _affinity_impl(sims, idx, gamma, one_way_weight) -> sp.csr_matrix:
    # Built as CSR straight from the (n, k) rows, and each sparse temporary let go once used: the
    # peak is a few copies of the edges, not the dozen a COO build and one expression make.
    n = sims.shape[0]
    w = np.maximum(sims.reshape(-1).astype(np.float64), 0.0) ** gamma
    keep = ((idx >= 0) & (idx != np.arange(n)[:, None])).reshape(-1) & (w > 0)
    indptr = np.r_[0, np.cumsum(keep.reshape(n, -1).sum(axis=1))]
    index = np.int32 if n < 2**31 and indptr[-1] < 2**31 else np.int64
    a = sp.csr_matrix((w[keep], idx.reshape(-1)[keep].astype(index), indptr.astype(index)), shape=(n, n))
    del w, keep
    a.sum_duplicates()
    at = a.T.tocsr()
    union, mutual = a.maximum(at), a.minimum(at)
    del a, at
    union -= mutual
    union *= one_way_weight  # one-way edges (and the mutual ones' excess) at one_way_weight
    union += mutual
    return union.tocsr()


def spread_labels(affinity, seeds, *, alpha: float = _STAGE.alpha, tol: float = 1e-6, max_iter: int = 1000) -> np.ndarray:
    """Label spreading: the fixed point of ``F <- alpha S F + (1 - alpha) Y``.

    ``S = D^-1/2 A D^-1/2`` is the symmetrically normalised affinity. The fixed point
    ``F* = (1 - alpha) (I - alpha S)^-1 Y`` is found by conjugate gradients on
    ``(I - alpha S) F = (1 - alpha) Y`` (the matrix is symmetric positive definite), each
    column with its own step sizes; this reaches the limit of the iteration in far fewer steps.

    Parameters
    ----------
    affinity : sparse or dense array of shape (n_nodes, n_nodes)
        Symmetric, non-negative; the diagonal is ignored.
    seeds : ndarray of shape (n_nodes, n_classes)
        ``Y``: one row per node, zero for unlabeled nodes. float32 seeds are solved in float32
        (half the memory, relative accuracy about 1e-6), anything else in float64.
    alpha : float, default: the pseudolabel stage's ``alpha``
        In [0, 1): weight of the neighbours against the seeds (Zhou et al. use 0.99).
    tol : float, default=1e-6
        Stop when every column's residual norm is below ``tol`` times its right-hand side's.
    max_iter : int, default=1000

    Returns
    -------
    scores : ndarray of shape (n_nodes, n_classes)
        ``F*``, not normalised, in the dtype it was solved in.

    References
    ----------
    Zhou, Bousquet, Lal, Weston, Schölkopf, "Learning with Local and Global Consistency",
    NeurIPS 2004. Iscen, Tolias, Avrithis, Chum, "Label Propagation for Deep Semi-supervised
    Learning", CVPR 2019 (conjugate-gradient solver).

    Examples
    --------
    >>> a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float)
    >>> spread_labels(a, np.array([[1, 0], [0, 0], [0, 1]]), alpha=0.5).round(3)
    array([[0.583, 0.083],
           [0.236, 0.236],
           [0.083, 0.583]])
    """
    check_unit("alpha", alpha, closed_high=False)
    check_positive("tol", tol)
    a = sp.csr_matrix(affinity, dtype=np.float64)
    y = np.asarray(seeds)
    y = y if y.dtype == np.float32 else y.astype(np.float64)
    if a.shape[0] != a.shape[1] or y.ndim != 2 or y.shape[0] != a.shape[0]:
        raise BadInputError(f"'affinity' must be square and 'seeds' have one row per node. Got {a.shape} and {y.shape} instead.")
    if a.nnz and (a.data.min() < 0 or abs(a - a.T).max() > 1e-8 * max(1.0, abs(a).max())):
        raise BadInputError("'affinity' must be symmetric and non-negative.")
    return Spreader(a, dtype=y.dtype).solve(y, alpha, tol=tol, max_iter=max_iter)


class Spreader:
    """The normalised graph ``S`` of one affinity, ready to solve ``(I - alpha S) F = (1 - alpha) Y``.

    Parameters
    ----------
    affinity : scipy.sparse matrix of shape (n_nodes, n_nodes)
        Symmetric, non-negative; the diagonal is ignored.
    dtype : numpy dtype, default=float32
        Precision of the solve.
    """

    def __init__(self, affinity: sp.spmatrix, *, dtype=np.float32) -> None:
        s = sp.csr_matrix(affinity, dtype=np.float64, copy=True)  # scaled in place below: never the caller's arrays
        if s.diagonal().any():  # setdiag restructures the whole matrix: only when there is a diagonal to clear
            s.setdiag(0.0)
        s.eliminate_zeros()
        d = np.asarray(s.sum(axis=1)).ravel()
        self.sqrt_degree = np.sqrt(d)
        inv = np.divide(1.0, self.sqrt_degree, out=np.zeros_like(d), where=d > 0)
        # S = D^-1/2 A D^-1/2 entry by entry, in place: (a_ij inv_i) inv_j, as the two diagonal products round it.
        s.data *= np.repeat(inv, np.diff(s.indptr))
        s.data *= inv[s.indices]
        self.n_nodes = s.shape[0]
        self.dtype = np.dtype(dtype)
        self.order = None
        if self.n_nodes > REORDER_ABOVE:
            self.order = reverse_cuthill_mckee(s, symmetric_mode=True).astype(np.int64)
            s = s[self.order][:, self.order].tocsr()
        s.sort_indices()
        self._scipy = s.astype(self.dtype)
        self._torch = None  # the same matrix as a torch CSR tensor, made on the first large product

    def _torch_matrix(self):
        import torch  # only for large graphs: importing torch costs seconds

        if self._torch is None:
            s = self._scipy
            index = np.int32 if s.nnz < 2**31 and self.n_nodes < 2**31 else np.int64
            with warnings.catch_warnings():  # torch calls CSR support "beta"; labelkit's tests pin the results
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
                self._torch = torch.sparse_csr_tensor(
                    torch.from_numpy(s.indptr.astype(index)), torch.from_numpy(s.indices.astype(index)),
                    torch.from_numpy(s.data), size=s.shape, check_invariants=False,
                )
        return self._torch

    def solve(self, y: np.ndarray, alpha: float, *, tol: float = CG_TOL, max_iter: int = CG_MAX_ITER,
              overwrite: bool = False) -> np.ndarray:
        """``F = (1 - alpha) (I - alpha S)^-1 Y`` for ``y`` of shape (n_nodes, c), in column blocks.

        ``overwrite``: write ``F`` into ``y`` (of this solver's dtype, C-contiguous) and return it:
        no second (n_nodes, c) array. Each block is copied out of ``y`` before it is solved.
        """
        n, c = y.shape
        if overwrite and not (y.dtype == self.dtype and y.flags.c_contiguous and y.flags.writeable):
            raise BadInputError(f"'y' must be a writeable C-contiguous {self.dtype} array to be overwritten.")
        out = y if overwrite else np.empty((n, c), dtype=self.dtype)
        width = max(1, min(c, BLOCK_ELEMENTS // max(n, 1)))
        n_blocks = -(-c // width)
        for cols in np.array_split(np.arange(c), n_blocks):
            block = slice(int(cols[0]), int(cols[-1]) + 1)  # array_split keeps the columns contiguous
            rows = self.order if self.order is not None else slice(None)
            b = np.array(y[rows, block], dtype=self.dtype, order="C")  # a copy of one block: CG overwrites it
            b *= 1.0 - alpha
            f = _conjugate_gradients(self._product(b.shape[1]), b, alpha, tol, max_iter)
            out[rows, block] = f
        return out

    def _product(self, n_columns: int):
        """``out[:] = S @ p`` for (n_nodes, n_columns) arrays: torch for large products, scipy for small."""
        if self._scipy.nnz * n_columns < TORCH_ABOVE:
            def product(p: np.ndarray, out: np.ndarray) -> None:
                out[...] = self._scipy @ p
        else:
            import torch

            matrix = self._torch_matrix()

            def product(p: np.ndarray, out: np.ndarray) -> None:
                torch.mm(matrix, torch.from_numpy(p), out=torch.from_numpy(out))
        return product


def _conjugate_gradients(product, b: np.ndarray, alpha: float, tol: float, max_iter: int) -> np.ndarray:
    """CG on (I - alpha S) X = B, each column with its own steps; ``b`` becomes the residual.

    ``product(p, out)`` writes ``S p`` (numpy arrays). The dense updates run as torch's fused
    in-place ops on the same memory (``x += p * step`` is one pass, not numpy's multiply then
    add), with preallocated buffers: no (N, c) temporaries. They were 0.71 of a solve's time in
    numpy; torch's take 0.38 of that time at 200k x 100 (benchmarks/propagation.py).
    """
    import torch  # the pipeline has it loaded already (the probe, the embedders)

    x = np.zeros_like(b)
    p = b.copy()
    q = np.empty_like(b)
    tx, tp, tq, tr = (torch.from_numpy(a) for a in (x, p, q, b))
    tmp = torch.empty_like(tr)
    rs = _col_dot(tr, tr, tmp)
    stop = (tol**2) * np.maximum(rs, EPS**2)
    for _ in range(max_iter):
        if np.all(rs <= stop):
            break
        product(p, q)
        torch.add(tp, tq, alpha=-alpha, out=tq)  # q = (I - alpha S) p
        pap = _col_dot(tp, tq, tmp)
        step = _ratio(rs, pap, b.dtype)
        tx.addcmul_(tp, step)
        tr.addcmul_(tq, step, value=-1)
        rs_new = _col_dot(tr, tr, tmp)
        torch.addcmul(tr, tp, _ratio(rs_new, rs, b.dtype), out=tp)  # p = r + beta p
        rs = rs_new
    return x


def _ratio(num: np.ndarray, den: np.ndarray, dtype):
    """``num / den`` per column (0 where ``den`` is not positive), as a torch vector of ``dtype``."""
    import torch

    return torch.from_numpy(np.divide(num, den, out=np.zeros_like(num), where=den > 0).astype(dtype))


def _col_dot(a, b, tmp, block: int = 1024) -> np.ndarray:
    """Column-wise dot products of two torch (N, c) tensors, float64: float32 sums of ``block``
    rows, then float64 across blocks (accurate to about 1e-8 at a million rows, and twice as fast
    as one sum over all rows, which torch runs serially down the long axis)."""
    import torch

    prod = torch.mul(a, b, out=tmp)
    whole = (prod.shape[0] // block) * block
    out = prod[:whole].view(-1, block, prod.shape[1]).sum(dim=1).double().sum(dim=0).numpy()
    if whole < prod.shape[0]:
        out += prod[whole:].sum(dim=0).double().numpy()
    return out


def certainty_seeds(node_labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Seeds of the refinement round: given labels one-hot, plus argmax weighted by 1 - H(p)/log K.

    ``probs`` covers the first ``len(probs)`` nodes; the rest (anchors) must be labeled.
    """
    y = np.zeros((node_labels.shape[0], probs.shape[1]), dtype=probs.dtype)
    y[: probs.shape[0]] = probs
    return _certainty_seeds_(node_labels, y, probs.shape[0])


def _certainty_seeds_(node_labels: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """:func:`certainty_seeds` in place: ``y`` holds the probabilities of its first ``n`` rows."""
    k = y.shape[1]
    for lo in range(0, n, ROW_CHUNK):
        p = y[lo : min(lo + ROW_CHUNK, n)]
        ent = -(p * log_probs(p)).sum(axis=1) / np.log(k) if k > 1 else np.zeros(p.shape[0])
        best = p.argmax(axis=1)
        p[...] = 0.0
        p[np.arange(p.shape[0]), best] = np.clip(1.0 - ent, 0.0, 1.0)
    y[n:] = 0.0
    seeded = np.flatnonzero(node_labels >= 0)
    y[seeded] = 0.0
    y[seeded, node_labels[seeded]] = 1.0
    return y


def propagate(spreader: Spreader, node_labels: np.ndarray, n_samples: int, n_classes: int, *,
              alpha: float, refine: bool, reach_prior: float, with_first=None) -> np.ndarray:
    """Final label-spreading probabilities of the first ``n_samples`` nodes, float32 (n_samples, K).

    Seeds are class-balanced (every class injects unit mass) and the spread scores get
    class-mass normalisation, then row normalisation (Zhou et al. 2004). ``refine`` spreads
    again from :func:`certainty_seeds` (Iscen et al. 2019); ``reach_prior`` > 0 shrinks each
    sample toward uniform by ``r / (r + reach_prior mean(r))``, ``r`` the probability that a
    random walk with restart from it stops at a labeled node.

    ``with_first``, when given, is called with the first-round probabilities (n_samples, K), before
    the refinement round and the reach prior; it must not keep or change them: the refinement
    seeds and the final scores are then made in the same array, so one (n_nodes, K) array is
    live besides the solver's column block.
    """
    seeded = node_labels >= 0
    y = np.zeros((node_labels.shape[0], n_classes), dtype=spreader.dtype)
    y[np.flatnonzero(seeded), node_labels[seeded]] = 1.0
    for rnd in range(2 if refine else 1):
        if rnd:  # refinement round: every sample seeds its pseudo-label, weighted by certainty
            _certainty_seeds_(node_labels, y, n_samples)
        y /= np.maximum(y.sum(axis=0), EPS)
        spreader.solve(y, alpha, overwrite=True)
        f = y[:n_samples]
        np.maximum(f, 0.0, out=f)
        f /= np.maximum(f.sum(axis=0), EPS)
        normalize_rows_(f)
        if rnd == 0 and with_first is not None:
            with_first(f)
    final = y[:n_samples]
    if reach_prior > 0:
        # (I - alpha P)^-1 = D^-1/2 (I - alpha S)^-1 D^1/2 with P = D^-1 A, restart 1 - alpha.
        d = spreader.sqrt_degree
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        r = np.maximum(inv * spreader.solve((d * seeded)[:, None].astype(spreader.dtype), alpha)[:, 0], 0.0)[:n_samples]
        prior = reach_prior * r.mean()
        w = np.divide(r, r + prior, out=np.zeros_like(r), where=r + prior > 0).astype(final.dtype)[:, None]
        final *= w
        final += (1.0 - w) / n_classes  # shrink samples far from every label toward uniform
    return final
