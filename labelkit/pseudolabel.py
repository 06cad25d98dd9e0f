"""Pseudo-labels from embeddings: scores, calibration, thresholds and soft labels.

Numpy in, numpy out. The kNN graph (``sims``, ``idx``) and the prototype vectors are inputs:
this module never builds an index. Four scores give ``probs`` (N, K) for every sample:

- ``prototype``: softmax of the cosine to each class's nearest prototype over a temperature.
- ``knn``: similarity-weighted vote of the labeled neighbours.
- ``propagation``: label spreading (Zhou et al. 2004) over the kNN graph with edge weights
  ``sims ** gamma`` (Iscen et al. 2019) and one-way edges down-weighted (mutual kNN), optionally
  with class-name anchor nodes (ZLaP); then one certainty-weighted refinement round, and a
  prior that shrinks samples that no label reaches toward uniform.
- ``ensemble`` (default): a weighted average of the calibrated scores above, where the
  prototype score uses prototypes re-estimated transductively from the propagated labels.

:func:`pseudolabel` runs one of them, calibrates it on the labeled samples by K-fold held-out
scoring, corrects the class priors if asked, applies a threshold rule and returns a
:class:`PseudolabelResult`. The defaults are those benchmarks/pseudolabel.py measured best.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import scipy.sparse as sp

from labelkit._validation import check_embeddings, check_labels, check_probs, l2_normalize
from labelkit.errors import BadInputError

_EPS = 1e-12
_LOG_EPS = np.log(1e-12)


class ScoreMethod(str, Enum):
    """How scores are computed (see the module docstring)."""

    PROTOTYPE = "prototype"
    KNN = "knn"
    PROPAGATION = "propagation"
    ENSEMBLE = "ensemble"


class ThresholdRule(str, Enum):
    """Which rule decides that a pseudo-label is accepted."""

    FIXED = "fixed"  # confidence >= value (FixMatch: 0.95)
    FLEXMATCH = "flexmatch"  # per-class value * M(beta_c) (FlexMatch)
    TOP_PER_CLASS = "top_per_class"  # the `value` most confident samples of each predicted class
    MARGIN = "margin"  # top1 - top2 >= value


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_positive(name: str, value, *, strict: bool = True) -> None:
    if not np.isfinite(value) or value < 0 or (strict and value == 0):
        raise BadInputError(f"'{name}' must be {'>' if strict else '>='} 0. Got {value!r} instead.")


def _check_unit(name: str, value, *, closed_high: bool = True) -> None:
    ok = 0 <= value <= 1 if closed_high else 0 <= value < 1
    if not np.isfinite(value) or not ok:
        raise BadInputError(f"'{name}' must be in [0, 1{']' if closed_high else ')'}. Got {value!r} instead.")


def _check_graph(sims, idx, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims, dtype=np.float32)
    idx = np.asarray(idx)
    if sims.ndim != 2 or sims.shape != idx.shape:
        raise BadInputError(f"'sims' and 'idx' must be 2-D of the same shape. Got {sims.shape} and {idx.shape} instead.")
    if sims.shape[0] != n_nodes:
        raise BadInputError(f"'sims' must have one row per sample ({n_nodes}). Got {sims.shape[0]} instead.")
    if not np.issubdtype(idx.dtype, np.integer):
        raise BadInputError(f"'idx' must be integers. Got dtype {idx.dtype} instead.")
    if idx.size and (idx.min() < -1 or idx.max() >= n_nodes):
        raise BadInputError(f"'idx' must be in [-1, {n_nodes}). Got range [{idx.min()}, {idx.max()}] instead.")
    present = idx >= 0
    if not np.all(np.isfinite(sims[present])):
        raise BadInputError("'sims' contains NaN or infinite values at present neighbours.")
    # Missing neighbours (idx -1) may carry any similarity (knn_graph pads with -inf).
    return np.where(present, sims, 0.0).astype(np.float32), idx.astype(np.int64, copy=False)


def _check_prototypes(vectors, classes, n_classes: int, dim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    vectors = check_embeddings(vectors, name=name)
    if vectors.shape[1] != dim:
        raise BadInputError(f"'{name}' must have dimension {dim} like the embeddings. Got {vectors.shape[1]} instead.")
    classes = check_labels(classes, n_classes=n_classes, allow_unlabeled=False, name=f"{name} classes")
    if classes.shape[0] != vectors.shape[0]:
        raise BadInputError(f"'{name}' has {vectors.shape[0]} vectors but {classes.shape[0]} classes.")
    return l2_normalize(vectors), classes


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    """log(p), clipped at log(1e-12) so a zero never makes an infinite logit."""
    return np.maximum(np.log(np.maximum(probs, _EPS)), _LOG_EPS)


def _prototype_logits(embeddings, vectors, classes, n_classes, chunk: int = 16384) -> np.ndarray:
    """max cosine to a prototype of each class; classes without a prototype get -2 (below any cosine)."""
    order = np.argsort(classes, kind="stable")
    cls = classes[order]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    out = np.full((embeddings.shape[0], n_classes), -2.0, dtype=np.float64)
    for lo in range(0, embeddings.shape[0], chunk):
        cos = embeddings[lo : lo + chunk] @ vectors[order].T
        out[lo : lo + chunk, cls[starts]] = np.maximum.reduceat(cos, starts, axis=1)
    return out


def prototype_scores(embeddings, prototypes, prototype_classes, n_classes: int, *, temperature: float = 0.1) -> np.ndarray:
    """Class probabilities from the cosine to the nearest prototype of each class.

    ``p_ic = softmax_c(max_{v in prototypes of c} cos(x_i, v) / temperature)``. A class with
    several prototypes (sub-prototypes) scores by its best one.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    prototypes : ndarray of shape (n_prototypes, dim)
    prototype_classes : ndarray of shape (n_prototypes,)
        Class of each prototype, in ``[0, n_classes)``.
    n_classes : int
    temperature : float, default=0.1
        Softmax temperature on the cosines (> 0).

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        Classes without a prototype get (numerically) zero probability.

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    >>> prototype_scores(x, np.eye(2), np.array([0, 1]), 2, temperature=0.1).argmax(axis=1)
    array([0, 1, 1])
    """
    x = l2_normalize(check_embeddings(embeddings))
    _check_positive("temperature", temperature)
    v, c = _check_prototypes(prototypes, prototype_classes, n_classes, x.shape[1], "prototypes")
    return _softmax(_prototype_logits(x, v, c, n_classes) / temperature)


def knn_vote_scores(labels, sims, idx, n_classes: int, *, gamma: float = 1.0) -> np.ndarray:
    """Similarity-weighted vote of each sample's labeled neighbours.

    ``p_ic ∝ sum_{j in N(i), y_j = c} max(s_ij, 0) ** gamma``; a sample with no labeled
    neighbour (or only zero weights) gets the uniform distribution.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    sims, idx : ndarray of shape (n_samples, k)
        kNN graph: cosine similarities and neighbour rows (-1 = missing), self excluded.
    n_classes : int
    gamma : float, default=1.0
        Power on the similarities (>= 0).

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)

    References
    ----------
    Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018 (weighted kNN classifier on embeddings).

    Examples
    --------
    >>> idx = np.array([[1, 2], [0, 2], [0, 1]])
    >>> sims = np.array([[0.9, 0.1], [0.9, 0.2], [0.1, 0.2]], dtype=np.float32)
    >>> knn_vote_scores(np.array([0, 1, -1]), sims, idx, 2).round(2)
    array([[0.  , 1.  ],
           [1.  , 0.  ],
           [0.33, 0.67]])
    """
    labels = check_labels(labels, n_classes=n_classes)
    sims, idx = _check_graph(sims, idx, labels.shape[0])
    _check_positive("gamma", gamma, strict=False)
    return _knn_vote_impl(labels, sims, idx, n_classes, gamma)


def _knn_vote_impl(labels, sims, idx, n_classes, gamma) -> np.ndarray:
    n = labels.shape[0]
    nb = np.where(idx >= 0, labels[np.maximum(idx, 0)], -1)
    w = np.where(nb >= 0, np.maximum(sims, 0.0).astype(np.float64) ** gamma, 0.0)
    rows = np.repeat(np.arange(n), idx.shape[1])
    ok = nb.ravel() >= 0
    flat = rows[ok] * n_classes + nb.ravel()[ok]
    votes = np.bincount(flat, weights=w.ravel()[ok], minlength=n * n_classes).reshape(n, n_classes)
    return _normalize_rows(votes)


def _normalize_rows(f: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one; all-zero rows become uniform."""
    s = f.sum(axis=1, keepdims=True)
    return np.divide(f, s, out=np.full_like(f, 1.0 / f.shape[1]), where=s > 0)


def knn_affinity(sims, idx, *, gamma: float = 3.0, one_way_weight: float = 0.1) -> sp.csr_matrix:
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
    gamma : float, default=3.0
        Power on the similarities; larger values keep only the strongest edges (Iscen et al.
        use 3).
    one_way_weight : float, default=0.1
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
    sims = np.asarray(sims, dtype=np.float64)
    idx = np.asarray(idx, dtype=np.int64)
    _check_positive("gamma", gamma, strict=False)
    _check_unit("one_way_weight", one_way_weight)
    n = sims.shape[0]
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.ravel()
    w = np.maximum(sims.ravel(), 0.0) ** gamma
    keep = (cols >= 0) & (cols != rows) & (w > 0)
    a = sp.csr_matrix((w[keep], (rows[keep], cols[keep])), shape=(n, n))
    a.sum_duplicates()
    union, mutual = a.maximum(a.T), a.minimum(a.T)
    return (mutual + one_way_weight * (union - mutual)).tocsr()


def spread_labels(affinity, seeds, *, alpha: float = 0.9, tol: float = 1e-6, max_iter: int = 1000) -> np.ndarray:
    """Label spreading: the fixed point of ``F <- alpha S F + (1 - alpha) Y``.

    ``S = D^-1/2 A D^-1/2`` is the symmetrically normalised affinity. The fixed point
    ``F* = (1 - alpha) (I - alpha S)^-1 Y`` is found by conjugate gradients on
    ``(I - alpha S) F = (1 - alpha) Y`` (the matrix is symmetric positive definite), one
    column per class at once; this reaches the limit of the iteration in far fewer steps.

    Parameters
    ----------
    affinity : sparse or dense array of shape (n_nodes, n_nodes)
        Symmetric, non-negative; the diagonal is ignored.
    seeds : ndarray of shape (n_nodes, n_classes)
        ``Y``: one row per node, zero for unlabeled nodes.
    alpha : float, default=0.9
        In [0, 1): weight of the neighbours against the seeds (Zhou et al. use 0.99).
    tol : float, default=1e-6
        Stop when every column's residual norm is below ``tol`` times its right-hand side's.
    max_iter : int, default=1000

    Returns
    -------
    scores : ndarray of shape (n_nodes, n_classes)
        ``F*``, not normalised.

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
    _check_unit("alpha", alpha, closed_high=False)
    _check_positive("tol", tol)
    a = sp.csr_matrix(affinity, dtype=np.float64)
    y = np.asarray(seeds, dtype=np.float64)
    if a.shape[0] != a.shape[1] or y.ndim != 2 or y.shape[0] != a.shape[0]:
        raise BadInputError(f"'affinity' must be square and 'seeds' have one row per node. Got {a.shape} and {y.shape} instead.")
    if a.nnz and (a.data.min() < 0 or abs(a - a.T).max() > 1e-8 * max(1.0, abs(a).max())):
        raise BadInputError("'affinity' must be symmetric and non-negative.")
    return _spread_impl(a, y, alpha, tol, max_iter)


def _normalized_affinity(a: sp.csr_matrix) -> sp.csr_matrix:
    """S = D^-1/2 A D^-1/2 with a zero diagonal; isolated nodes keep zero rows."""
    a = (a - sp.diags(a.diagonal())).tocsr()
    a.eliminate_zeros()
    d = np.asarray(a.sum(axis=1)).ravel()
    inv = np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)
    dm = sp.diags(inv)
    return (dm @ a @ dm).tocsr()


def _spread_impl(a: sp.csr_matrix, y: np.ndarray, alpha: float, tol: float, max_iter: int) -> np.ndarray:
    return _spread_normalized(_normalized_affinity(a), y, alpha, tol, max_iter)


def _spread_normalized(s: sp.csr_matrix, y: np.ndarray, alpha: float, tol: float = 1e-6, max_iter: int = 1000) -> np.ndarray:
    """Conjugate gradients on (I - alpha S) F = (1 - alpha) Y, all columns at once."""
    b = (1.0 - alpha) * y
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = (r * r).sum(axis=0)
    stop = (tol**2) * np.maximum(rs, _EPS**2)
    for _ in range(max_iter):
        if np.all(rs <= stop):
            break
        ap = p - alpha * (s @ p)
        pap = (p * ap).sum(axis=0)
        step = np.divide(rs, pap, out=np.zeros_like(rs), where=pap > 0)
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(axis=0)
        beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)
        p = r + beta * p
        rs = rs_new
    return x


def label_spreading_scores(
    labels,
    sims,
    idx,
    n_classes: int,
    *,
    alpha: float = 0.9,
    gamma: float = 3.0,
    anchors=None,
    embeddings=None,
) -> np.ndarray:
    """Class probabilities by label spreading over the kNN graph.

    Seeds are class-balanced (``Y_ic = 1 / n_c`` for the ``n_c`` samples labeled ``c``, so
    every class injects the same mass); the graph is :func:`knn_affinity`; the spread scores
    are divided by their class's total mass (class-mass normalisation, Zhou et al.), then
    normalised per row. This assumes equal class priors; see :func:`em_prior_shift` to
    re-estimate them. :func:`pseudolabel` adds a refinement round and a reach prior.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        -1 = unlabeled.
    sims, idx : ndarray of shape (n_samples, k)
        The kNN graph (cosine, self excluded, -1 = missing).
    n_classes : int
    alpha : float, default=0.9
    gamma : float, default=3.0
    anchors : tuple (vectors (T, dim), classes (T,)), optional
        Class-name (text) embeddings added as extra labeled nodes (ZLaP). Each sample links to
        its most similar anchor with weight ``cos ** gamma``. Needs ``embeddings``.
    embeddings : ndarray of shape (n_samples, dim), optional
        Only used with ``anchors``.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        Samples connected to no seed get the uniform distribution.

    References
    ----------
    Zhou et al., "Learning with Local and Global Consistency", NeurIPS 2004. Iscen et al.,
    "Label Propagation for Deep Semi-supervised Learning", CVPR 2019. Stojnić, Kalantidis,
    Tolias, "Label Propagation for Zero-shot Classification with Vision-Language Models",
    CVPR 2024 (ZLaP: class names as graph nodes).

    Examples
    --------
    >>> idx = np.array([[1], [0], [3], [2]])
    >>> sims = np.ones((4, 1), dtype=np.float32)
    >>> label_spreading_scores(np.array([0, -1, 1, -1]), sims, idx, 2).argmax(axis=1).tolist()
    [0, 0, 1, 1]
    """
    labels = check_labels(labels, n_classes=n_classes)
    sims, idx = _check_graph(sims, idx, labels.shape[0])
    x = None
    if anchors is not None:
        if embeddings is None:
            raise BadInputError("'embeddings' are needed to link 'anchors' into the graph.")
        x = l2_normalize(check_embeddings(embeddings))
        anchors = _as_prototypes(anchors, n_classes, x.shape[1], "anchors")
    opts = PseudolabelOptions(method=ScoreMethod.PROPAGATION, alpha=alpha, gamma=gamma, refine=False, reach_prior=0.0)
    ctx = _Context(x, sims, idx, n_classes, None, anchors)
    return _propagate(labels, ctx, opts)[1]


# --------------------------------------------------------------------------------------------
# calibration and prior shift
# --------------------------------------------------------------------------------------------


def expected_calibration_error(probs, labels, *, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, with equal-width bins.

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` where bin ``b`` holds the samples
    whose confidence lies in ``((b - 1) / n_bins, b / n_bins]`` (zero goes to the first bin).

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    labels : ndarray of shape (n_samples,)
        True classes (no -1).
    n_bins : int, default=15

    Returns
    -------
    ece : float
        In [0, 1]; NaN for zero samples.

    References
    ----------
    Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
    Binning", AAAI 2015. Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural
    Networks", ICML 2017.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    >>> round(expected_calibration_error(p, np.array([0, 1, 0]), n_bins=10), 4)
    0.4
    """
    probs = check_probs(probs)
    labels = check_labels(labels, n_classes=probs.shape[1], allow_unlabeled=False)
    if labels.shape[0] != probs.shape[0]:
        raise BadInputError(f"'labels' must have one entry per row of 'probs' ({probs.shape[0]}). Got {labels.shape[0]} instead.")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise BadInputError(f"'n_bins' must be an integer >= 1. Got {n_bins!r} instead.")
    return _ece_impl(probs, labels, int(n_bins))


def _ece_impl(probs, labels, n_bins: int = 15) -> float:
    if probs.shape[0] == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(b, correct, n_bins) - np.bincount(b, conf, n_bins))
    return float(gap.sum() / probs.shape[0])


def fit_temperature(logits, labels, *, smoothing: float = 0.0, bounds: tuple[float, float] = (1e-3, 1e3)) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, so its derivative ``E_p[z] - z_y`` is monotone and the
    minimum is found by bisection (in log scale) on it.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_classes)
        Logits or log-probabilities (finite). For log-probabilities, ``T`` sharpens
        (``< 1``) or flattens (``> 1``) ``p ** (1 / T)``.
    labels : ndarray of shape (n_samples,)
        True classes of held-out samples (no -1).
    smoothing : float, default=0.0
        Label smoothing ``eps`` in [0, 1) of the targets, ``(1 - eps) onehot + eps / K``: a
        prior that keeps ``T`` finite when every held-out sample is right. :func:`pseudolabel`
        uses ``eps = K / ((K - 1) (n + 2))``, for which a perfect, confident score gets the
        mean confidence of Laplace's rule of succession, ``(n + 1) / (n + 2)``.
    bounds : (float, float), default=(1e-3, 1e3)
        Range searched; a bound is returned when the optimum lies outside it (e.g. every
        sample right gives ``T -> 0``).

    Returns
    -------
    temperature : float

    References
    ----------
    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

    Examples
    --------
    >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    >>> round(fit_temperature(z, np.array([0, 1, 1, 1])), 3)  # 3 of 4 right: p = 0.75
    3.641
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or not np.all(np.isfinite(z)):
        raise BadInputError(f"'logits' must be a finite 2-D array. Got shape {z.shape} instead.")
    labels = check_labels(labels, n_classes=z.shape[1], allow_unlabeled=False)
    if labels.shape[0] != z.shape[0]:
        raise BadInputError(f"'labels' must have one entry per row of 'logits' ({z.shape[0]}). Got {labels.shape[0]} instead.")
    _check_unit("smoothing", smoothing, closed_high=False)
    lo, hi = bounds
    if not 0 < lo < hi:
        raise BadInputError(f"'bounds' must satisfy 0 < low < high. Got {bounds!r} instead.")
    return _fit_temperature_impl(z, labels, smoothing, lo, hi)


def _laplace_smoothing(n: int, n_classes: int) -> float:
    """Label smoothing whose perfect-score optimum is the rule of succession (n + 1) / (n + 2)."""
    return min(0.5, n_classes / ((n_classes - 1) * (n + 2))) if n_classes > 1 else 0.0


def _fit_temperature_impl(z, labels, smoothing: float = 0.0, lo: float = 1e-3, hi: float = 1e3) -> float:
    if z.shape[0] == 0:
        return 1.0
    # Target term of the smoothed cross-entropy: (1 - eps) z_y + eps mean_c z_c.
    zy = (1.0 - smoothing) * z[np.arange(z.shape[0]), labels] + smoothing * z.mean(axis=1)

    def grad(beta):  # d/d(beta) of the mean NLL of softmax(beta z): E_p[z] - target, increasing
        p = _softmax(beta * z)
        return float(((p * z).sum(axis=1) - zy).mean())

    # beta = 1 / T; search log(beta) in [log(1/hi), log(1/lo)].
    a, b = np.log(1.0 / hi), np.log(1.0 / lo)
    if grad(np.exp(a)) >= 0:
        return float(hi)
    if grad(np.exp(b)) <= 0:
        return float(lo)
    for _ in range(60):
        m = 0.5 * (a + b)
        if grad(np.exp(m)) > 0:
            b = m
        else:
            a = m
    return float(np.exp(-0.5 * (a + b)))


def em_prior_shift(probs, train_priors, *, max_iter: int = 100, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Adjust posteriors to the unknown class priors of new data by EM.

    E-step: ``p_s(c|x) ∝ (pi_s(c) / pi_t(c)) p_t(c|x)``; M-step: ``pi_{s+1}(c) = mean_x
    p_s(c|x)``; from ``pi_0 = pi_t`` until the priors move less than ``tol``. The posteriors
    should be calibrated for the training priors ``pi_t``.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
        Posteriors ``p_t(c|x)`` of the new (unlabeled) samples under the training priors.
    train_priors : ndarray of shape (n_classes,)
        ``pi_t``, positive, summing to one.
    max_iter : int, default=100
    tol : float, default=1e-6
        Stop when ``max_c |pi_{s+1}(c) - pi_s(c)| < tol``.

    Returns
    -------
    adjusted_probs : ndarray of shape (n_samples, n_classes)
    new_priors : ndarray of shape (n_classes,)

    References
    ----------
    Saerens, Latinne, Decaestecker, "Adjusting the Outputs of a Classifier to New a Priori
    Probabilities: A Simple Procedure", Neural Computation 14(1), 2002.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    >>> adj, pri = em_prior_shift(p, np.array([0.5, 0.5]))
    >>> bool(pri[0] > 0.8)
    True
    """
    probs = check_probs(probs).astype(np.float64)
    pt = np.asarray(train_priors, dtype=np.float64)
    if pt.shape != (probs.shape[1],) or not np.all(pt > 0) or abs(pt.sum() - 1) > 1e-3:
        raise BadInputError(f"'train_priors' must be {probs.shape[1]} positive values summing to 1. Got {train_priors!r} instead.")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise BadInputError(f"'max_iter' must be an integer >= 1. Got {max_iter!r} instead.")
    _check_positive("tol", tol)
    return _em_prior_impl(probs, pt / pt.sum(), int(max_iter), tol)


def _em_prior_impl(probs, pt, max_iter, tol):
    pi = pt.copy()
    adj = probs
    for _ in range(max_iter):
        adj = _normalize_rows(probs * (pi / pt))
        new = adj.mean(axis=0) if adj.shape[0] else pi
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    return _normalize_rows(probs * (pi / pt)), pi


# --------------------------------------------------------------------------------------------
# the pipeline: component scores, K-fold held-out calibration, ensemble
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """The inputs every score needs, already validated."""

    x: np.ndarray  # (N, D) unit-norm
    sims: np.ndarray
    idx: np.ndarray
    n_classes: int
    prototypes: tuple[np.ndarray, np.ndarray] | None
    anchors: tuple[np.ndarray, np.ndarray] | None


def _soft_prototypes(x, weights, given) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes as weighted class means, ``v_c ∝ sum_i w_ic x_i`` (one soft k-means step).

    With given prototypes, a class that has several keeps one per given prototype, averaged
    over the samples nearest to it; classes with no weight get none.
    """
    k = weights.shape[1]
    cls_of = np.arange(k)
    if given is not None:
        vec, cls = given
        if (np.bincount(cls, minlength=k) > 1).any():
            groups, owners = [], []
            for c in range(k):
                cols = np.flatnonzero(cls == c)
                if cols.size <= 1:
                    groups.append(weights[:, c])
                    owners.append(c)
                    continue
                nearest = (x @ vec[cols].T).argmax(axis=1)
                for j in range(cols.size):
                    groups.append(np.where(nearest == j, weights[:, c], 0.0))
                    owners.append(c)
            weights, cls_of = np.stack(groups, axis=1), np.asarray(owners)
    keep = weights.sum(axis=0) > 0
    return l2_normalize((weights[:, keep].T @ x).astype(np.float32)), cls_of[keep].astype(np.int64)


def _folds(labels, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold id of each labeled sample (-1 for unlabeled)."""
    rng = np.random.default_rng(seed)
    fold = np.full(labels.shape[0], -1, dtype=np.int64)
    offset = 0
    for c in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (offset + np.arange(members.size)) % n_folds
        offset += members.size  # continue the cycle so small classes spread over folds
    return fold


# --------------------------------------------------------------------------------------------
# thresholds and soft labels
# --------------------------------------------------------------------------------------------


def threshold_fixed(probs, *, tau: float = 0.95) -> np.ndarray:
    """Accept the samples whose confidence ``max_c p_ic`` is at least ``tau``.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    tau : float, default=0.95

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
    Confidence", NeurIPS 2020.

    Examples
    --------
    >>> threshold_fixed(np.array([[0.96, 0.04], [0.6, 0.4], [0.05, 0.95]])).tolist()
    [True, False, True]
    """
    probs = check_probs(probs)
    _check_unit("tau", tau)
    return probs.max(axis=1) >= tau


def threshold_flexmatch(probs, *, tau: float = 0.95, warmup: bool = True) -> np.ndarray:
    """Class-adaptive thresholds scaled by each class's learning status (FlexMatch).

    ``sigma_c`` counts the samples predicted ``c`` with confidence ``>= tau``;
    ``beta_c = sigma_c / max(max_c sigma_c, n_unused)`` with warm-up (``n_unused`` = samples
    confident for no class), else ``sigma_c / max_c sigma_c``; the threshold of class ``c`` is
    ``M(beta_c) tau`` with the convex mapping ``M(x) = x / (2 - x)``. A sample is accepted when
    its confidence reaches the threshold of its predicted class. Classes that few samples are
    confident about get lower thresholds; with no confident sample at all, every threshold is 0.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    tau : float, default=0.95
    warmup : bool, default=True

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Zhang et al., "FlexMatch: Boosting Semi-Supervised Learning with Curriculum Pseudo
    Labeling", NeurIPS 2021.

    Examples
    --------
    >>> p = np.array([[0.97, 0.03], [0.96, 0.04], [0.9, 0.1], [0.2, 0.8]])
    >>> threshold_flexmatch(p, warmup=False).tolist()  # class 1 has sigma 0: threshold 0
    [True, True, False, True]
    """
    probs = check_probs(probs)
    _check_unit("tau", tau)
    return _flexmatch_impl(probs, tau, bool(warmup))


def _flexmatch_impl(probs, tau, warmup) -> np.ndarray:
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    sigma = np.bincount(pred[conf >= tau], minlength=probs.shape[1]).astype(np.float64)
    norm = max(sigma.max(initial=0.0), probs.shape[0] - sigma.sum()) if warmup else sigma.max(initial=0.0)
    beta = sigma / norm if norm > 0 else np.zeros_like(sigma)
    thresholds = beta / (2.0 - beta) * tau
    return conf >= thresholds[pred]


def threshold_top_per_class(probs, *, n_per_class: int) -> np.ndarray:
    """Accept, for each predicted class, its ``n_per_class`` most confident samples.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    n_per_class : int
        ``>= 0``; a class predicted for fewer samples keeps them all. Ties are broken by row
        order.

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Class-balanced selection as in curriculum/self-training pseudo-labelling, e.g. Zou et al.,
    "Unsupervised Domain Adaptation for Semantic Segmentation via Class-Balanced Self-Training",
    ECCV 2018.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> threshold_top_per_class(p, n_per_class=1).tolist()
    [True, False, True, False]
    """
    probs = check_probs(probs)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 0:
        raise BadInputError(f"'n_per_class' must be an integer >= 0. Got {n_per_class!r} instead.")
    return _top_per_class_impl(probs, int(n_per_class))


def _top_per_class_impl(probs, n_per_class) -> np.ndarray:
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    order = np.lexsort((np.arange(conf.size), -conf, pred))  # by class, then confidence, then row
    sorted_pred = pred[order]
    starts = np.searchsorted(sorted_pred, sorted_pred, side="left")
    rank = np.arange(order.size) - starts
    accepted = np.zeros(conf.size, dtype=bool)
    accepted[order[rank < n_per_class]] = True
    return accepted


def threshold_margin(probs, *, min_margin: float = 0.5) -> np.ndarray:
    """Accept the samples whose top-1 minus top-2 probability is at least ``min_margin``.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    min_margin : float, default=0.5

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Scheffer, Decomain, Wrobel, "Active Hidden Markov Models for Information Extraction",
    IDA 2001 (margin of the two most probable classes).

    Examples
    --------
    >>> threshold_margin(np.array([[0.7, 0.2, 0.1], [0.45, 0.4, 0.15]]), min_margin=0.3).tolist()
    [True, False]
    """
    probs = check_probs(probs)
    _check_unit("min_margin", min_margin)
    return _margin(probs) >= min_margin


def _margin(probs) -> np.ndarray:
    if probs.shape[1] < 2:
        return probs[:, 0].copy() if probs.shape[1] else np.zeros(probs.shape[0])
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def accept(probs, rule: ThresholdRule | str, value: float) -> np.ndarray:
    """Apply the threshold ``rule`` with its parameter ``value`` (tau, tau, n_per_class, min_margin)."""
    try:
        rule = ThresholdRule(rule)
    except ValueError:
        raise BadInputError(f"'rule' must be one of {[r.value for r in ThresholdRule]}. Got {rule!r} instead.") from None
    if rule is ThresholdRule.FIXED:
        return threshold_fixed(probs, tau=value)
    if rule is ThresholdRule.FLEXMATCH:
        return threshold_flexmatch(probs, tau=value)
    if rule is ThresholdRule.TOP_PER_CLASS:
        return threshold_top_per_class(probs, n_per_class=int(value))
    return threshold_margin(probs, min_margin=value)


def soft_labels(probs, *, top_k: int = 3, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k soft labels: sharpen ``p ** (1 / temperature)``, keep the k best, renormalise.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    top_k : int, default=3
        Clipped to ``n_classes``.
    temperature : float, default=1.0
        ``< 1`` sharpens, ``> 1`` flattens (MixMatch's sharpening).

    Returns
    -------
    top_labels : ndarray of shape (n_samples, top_k), int64
        Classes by decreasing probability.
    top_probs : ndarray of shape (n_samples, top_k)
        Their probabilities; each row sums to one.

    References
    ----------
    Berthelot et al., "MixMatch: A Holistic Approach to Semi-Supervised Learning", NeurIPS 2019.

    Examples
    --------
    >>> labels, probs = soft_labels(np.array([[0.5, 0.3, 0.2]]), top_k=2)
    >>> labels.tolist(), probs.round(3).tolist()
    ([[0, 1]], [[0.625, 0.375]])
    """
    probs = check_probs(probs)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise BadInputError(f"'top_k' must be an integer >= 1. Got {top_k!r} instead.")
    _check_positive("temperature", temperature)
    return _soft_labels_impl(probs.astype(np.float64), int(top_k), float(temperature))


def _soft_labels_impl(probs, top_k, temperature):
    k = min(top_k, probs.shape[1])
    sharp = _softmax(_log_probs(probs) / temperature)
    top = np.argsort(-sharp, axis=1, kind="stable")[:, :k]
    tp = np.take_along_axis(sharp, top, axis=1)
    return top.astype(np.int64), _normalize_rows(tp)


# --------------------------------------------------------------------------------------------
# the top level
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PseudolabelOptions:
    """Options of :func:`pseudolabel`. The defaults are those benchmarks/pseudolabel.py found best.

    Attributes
    ----------
    method : ScoreMethod, default="ensemble"
    n_neighbors : int, default=10
        Neighbours used from the graph (its first columns); the graph may hold more.
    alpha : float, default=0.9
        Label spreading: weight of the neighbours against the seeds, in [0, 1).
    gamma : float, default=3.0
        Edge weight ``max(sim, 0) ** gamma`` (propagation and kNN vote).
    one_way_weight : float, default=0.1
        Weight of a kNN edge that is not mutual, relative to a mutual one (see
        :func:`knn_affinity`).
    reach_prior : float, default=0.1
        Shrinks each sample's propagated distribution toward uniform by the weight
        ``r / (r + reach_prior * mean(r))``, where ``r`` is the probability that a random walk
        with restart from the sample stops at a labeled one: samples far from every label
        (e.g. a sub-cluster with no labeled member, which spreading alone would label
        confidently from a neighbouring class) lose confidence. 0 disables it.
    refine : bool, default=True
        One transductive round (Iscen et al. 2019): spread again with every sample's
        pseudo-label as a seed weighted by its certainty ``1 - H(p) / log K``.
    weights : (float, float, float), default=(1.0, 0.5, 0.0)
        Ensemble weights of the calibrated propagation, prototype and kNN-vote scores.
    threshold : ThresholdRule, default="fixed"
    threshold_value : float, default=0.95
        tau (fixed, flexmatch), n_per_class (top_per_class) or min_margin (margin).
    top_k : int, default=3
        Classes kept in the soft label.
    sharpen : float, default=1.0
        Temperature of the soft label (``< 1`` sharpens).
    n_folds : int, default=5
        Folds of labeled samples for held-out calibration; 0 or 1 disables calibration.
    prior_correction : bool, default=False
        Re-estimate the class priors of the unlabeled samples by EM (Saerens et al. 2002).
    seed : int, default=0
        Seeds the fold split.
    """

    method: ScoreMethod = ScoreMethod.ENSEMBLE
    n_neighbors: int = 10
    alpha: float = 0.9
    gamma: float = 3.0
    one_way_weight: float = 0.1
    reach_prior: float = 0.1
    refine: bool = True
    weights: tuple[float, float, float] = (1.0, 0.5, 0.0)
    threshold: ThresholdRule = ThresholdRule.FIXED
    threshold_value: float = 0.95
    top_k: int = 3
    sharpen: float = 1.0
    n_folds: int = 5
    prior_correction: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, enum in (("method", ScoreMethod), ("threshold", ThresholdRule)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise BadInputError(f"'{name}' must be one of {[m.value for m in enum]}. Got {getattr(self, name)!r} instead.") from None
        for name in ("n_neighbors", "top_k"):
            if getattr(self, name) < 1:
                raise BadInputError(f"'{name}' must be >= 1. Got {getattr(self, name)!r} instead.")
        if self.n_folds < 0:
            raise BadInputError(f"'n_folds' must be >= 0. Got {self.n_folds!r} instead.")
        _check_unit("alpha", self.alpha, closed_high=False)
        _check_positive("gamma", self.gamma, strict=False)
        _check_unit("one_way_weight", self.one_way_weight)
        _check_positive("reach_prior", self.reach_prior, strict=False)
        _check_positive("sharpen", self.sharpen)
        w = tuple(float(v) for v in self.weights)
        if len(w) != 3 or min(w) < 0 or sum(w) <= 0:
            raise BadInputError(f"'weights' must be 3 non-negative numbers, not all zero. Got {self.weights!r} instead.")
        object.__setattr__(self, "weights", w)
        if self.threshold is ThresholdRule.TOP_PER_CLASS:
            if self.threshold_value < 0 or self.threshold_value != int(self.threshold_value):
                raise BadInputError(f"'threshold_value' must be an integer >= 0 for top_per_class. Got {self.threshold_value!r} instead.")
        else:
            _check_unit("threshold_value", self.threshold_value)


@dataclass(frozen=True, eq=False)
class PseudolabelResult:
    """What :func:`pseudolabel` returns.

    Labeled rows get their out-of-fold (held-out) scores, useful to spot label errors, and are
    never ``accepted``; the diagnostics describe the unlabeled rows.

    Attributes
    ----------
    probs : ndarray of shape (n_samples, n_classes)
        Calibrated class probabilities.
    label, confidence, margin : ndarray of shape (n_samples,)
        Best class (always set), its probability, and top-1 minus top-2 probability.
    accepted : ndarray of shape (n_samples,), bool
        Unlabeled rows that pass the threshold rule.
    top_labels, top_probs : ndarray of shape (n_samples, top_k)
        Soft label: best classes and renormalised (sharpened) probabilities.
    temperature : float
        Final calibration temperature (1.0 when not calibrated).
    ece, ece_uncalibrated : float
        Expected calibration error (15 bins) of the held-out labeled samples after and before
        calibration; the temperature applied to a fold is fitted on the other folds. NaN
        when not calibrated.
    n_calibration : int
        Held-out labeled samples used to calibrate.
    priors : ndarray of shape (n_classes,)
        Class priors of the unlabeled rows: the EM estimate with ``prior_correction``, else
        the mean of their probabilities.
    coverage : float
        Accepted share of the unlabeled rows (NaN if there are none).
    class_counts : ndarray of shape (n_classes,)
        Accepted rows per class.
    confidence_counts : ndarray of shape (10,)
        Histogram of the unlabeled rows' confidence over ten equal bins of [0, 1].
    method : str
    """

    probs: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    accepted: np.ndarray
    top_labels: np.ndarray
    top_probs: np.ndarray
    temperature: float
    ece: float
    ece_uncalibrated: float
    n_calibration: int
    priors: np.ndarray
    coverage: float
    class_counts: np.ndarray
    confidence_counts: np.ndarray
    method: str


def _as_prototypes(obj, n_classes: int, dim: int, name: str):
    """(vectors, classes) from a Prototypes-like object, a (vectors, classes) pair, or a (K, D) array."""
    if obj is None:
        return None
    if hasattr(obj, "vectors") and hasattr(obj, "classes"):
        vectors, classes = obj.vectors, obj.classes
    elif isinstance(obj, tuple) and len(obj) == 2:
        vectors, classes = obj
    else:
        vectors = np.asarray(obj)
        if vectors.ndim != 2 or vectors.shape[0] != n_classes:
            raise BadInputError(f"'{name}' as an array must have one row per class ({n_classes}). Got shape {vectors.shape} instead.")
        classes = np.arange(n_classes)
    if len(vectors) == 0:
        raise BadInputError(f"'{name}' is empty; pass None instead.")
    return _check_prototypes(vectors, classes, n_classes, dim, name)


def _certainty_seeds(labels, probs) -> np.ndarray:
    """Seeds for the refinement round: given labels, plus argmax weighted by 1 - H(p)/log K."""
    n, k = probs.shape
    ent = -(probs * _log_probs(probs)).sum(axis=1) / np.log(k) if k > 1 else np.zeros(n)
    y = np.zeros((n, k))
    y[np.arange(n), probs.argmax(axis=1)] = np.clip(1.0 - ent, 0.0, 1.0)
    seeded = labels >= 0
    y[seeded] = 0.0
    y[np.flatnonzero(seeded), labels[seeded]] = 1.0
    return y


def _propagate(labels, ctx: _Context, opts: PseudolabelOptions) -> tuple[np.ndarray, np.ndarray]:
    """(first-round, final) spreading probabilities over the kNN graph plus anchor nodes."""
    n, k = labels.shape[0], ctx.n_classes
    a, node_labels = knn_affinity(ctx.sims, ctx.idx, gamma=opts.gamma, one_way_weight=opts.one_way_weight), labels
    if ctx.anchors is not None:  # ZLaP: anchors are extra nodes; each sample links to its nearest one
        vec, cls = ctx.anchors
        cos = ctx.x @ vec.T
        best = cos.argmax(axis=1)
        b = sp.csr_matrix((np.maximum(cos[np.arange(n), best], 0.0) ** opts.gamma, (np.arange(n), best)), shape=(n, len(cls)))
        a = sp.bmat([[a, b], [b.T, None]], format="csr")
        node_labels = np.concatenate([labels, cls])
    m = node_labels.shape[0]
    s = _normalized_affinity(a)
    seeded = node_labels >= 0
    y = np.zeros((m, k))
    y[np.flatnonzero(seeded), node_labels[seeded]] = 1.0
    out = []
    for _ in range(2 if opts.refine else 1):
        if out:  # refinement round: every sample seeds its pseudo-label, weighted by certainty
            y = _certainty_seeds(node_labels, np.vstack([out[0], np.zeros((m - n, k))]))
        # Class-balanced seeds (each class injects unit mass), then class-mass normalisation.
        y = y / np.maximum(y.sum(axis=0), _EPS)
        f = np.maximum(_spread_normalized(s, y, opts.alpha)[:n], 0.0)
        f = f / np.maximum(f.sum(axis=0), _EPS)
        out.append(_normalize_rows(f))
    final = out[-1]
    if opts.reach_prior > 0:
        # r_i: probability that a random walk with restart from i (P = D^-1 A, restart 1 - alpha)
        # stops at a labeled node, via (I - alpha P)^-1 = D^-1/2 (I - alpha S)^-1 D^1/2.
        d = np.sqrt(np.asarray(a.sum(axis=1)).ravel())
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        r = np.maximum(inv * _spread_normalized(s, (d * seeded)[:, None], opts.alpha)[:, 0], 0.0)[:n]
        prior = opts.reach_prior * r.mean()
        w = np.divide(r, r + prior, out=np.zeros_like(r), where=r + prior > 0)[:, None]
        final = w * final + (1.0 - w) / k  # shrink samples far from every label toward uniform
    return out[0], final


def _onehot(labels, n_classes) -> np.ndarray:
    return (labels[:, None] == np.arange(n_classes)).astype(np.float64)


def _component_weights(opts: PseudolabelOptions) -> dict[str, float]:
    w = {ScoreMethod.PROPAGATION: (1.0, 0.0, 0.0), ScoreMethod.PROTOTYPE: (0.0, 1.0, 0.0), ScoreMethod.KNN: (0.0, 0.0, 1.0)}
    values = w.get(opts.method, opts.weights)
    return {n: v for n, v in zip(("propagation", "prototype", "knn"), values) if v > 0}


def _components(labels, ctx: _Context, opts: PseudolabelOptions, *, heldout: bool) -> dict[str, np.ndarray]:
    """Each score the method needs, computed from ``labels`` alone (held-out folds pass fewer)."""
    weights, out = _component_weights(opts), {}
    ensemble = opts.method is ScoreMethod.ENSEMBLE
    if "propagation" in weights or (ensemble and "prototype" in weights):
        first, final = _propagate(labels, ctx, opts)
        if "propagation" in weights:
            out["propagation"] = final
    if "prototype" in weights:
        onehot = _onehot(labels, ctx.n_classes)
        if ensemble:  # transductive: propagated probabilities as weights, given labels one-hot
            w = np.where((labels >= 0)[:, None], onehot, first)
            vec, cls = _soft_prototypes(ctx.x, w, ctx.prototypes)
        elif ctx.prototypes is None or heldout:
            # Held out, the given prototypes saw the hidden labels: re-estimate them without.
            vec, cls = _soft_prototypes(ctx.x, onehot, ctx.prototypes)
        else:
            vec, cls = ctx.prototypes
        out["prototype"] = _softmax(_prototype_logits(ctx.x, vec, cls, ctx.n_classes) / 0.1)
    if "knn" in weights:
        out["knn"] = _knn_vote_impl(labels, ctx.sims, ctx.idx, ctx.n_classes, opts.gamma)
    return out


def _combine(logs: dict, temps: dict, weights: dict) -> np.ndarray:
    """Weighted mean of the temperature-scaled component probabilities."""
    total = sum(weights[n] for n in logs)
    return sum(weights[n] * _softmax(logs[n] / temps[n]) for n in logs) / total


def _fit_combination(logs: dict, y, weights: dict, n_classes: int) -> tuple[dict, float]:
    """Per-component temperatures, then one temperature for their mixture."""
    if y.shape[0] == 0:
        return {n: 1.0 for n in logs}, 1.0
    eps = _laplace_smoothing(y.shape[0], n_classes)
    temps = {n: _fit_temperature_impl(z, y, eps) for n, z in logs.items()}
    if len(logs) == 1:
        return temps, 1.0
    return temps, _fit_temperature_impl(_log_probs(_combine(logs, temps, weights)), y, eps)


def _apply(logs: dict, temps: dict, t: float, weights: dict) -> np.ndarray:
    return _softmax(_log_probs(_combine(logs, temps, weights)) / t)


def _calibrate(labels, ctx: _Context, opts: PseudolabelOptions):
    """K-fold held-out scores of the labeled rows -> temperatures, out-of-fold probs, ECE.

    Each fold's labels are hidden and every score recomputed without them (propagation:
    the fold's samples become unlabeled nodes). A held-out sample calibrates only if its class
    keeps a label outside its fold, as the full run always has one.
    """
    weights = _component_weights(opts)
    lab = np.flatnonzero(labels >= 0)
    k = ctx.n_classes
    fold = _folds(labels, opts.n_folds, opts.seed) if opts.n_folds >= 2 and lab.size >= 2 else np.full(labels.shape, -1)
    held = {n: np.zeros((labels.shape[0], k)) for n in weights}
    eligible = np.zeros(labels.shape[0], dtype=bool)
    for f in np.unique(fold[fold >= 0]):
        rows = np.flatnonzero(fold == f)
        train = labels.copy()
        train[rows] = -1
        for n, p in _components(train, ctx, opts, heldout=True).items():
            held[n][rows] = p[rows]
        eligible[rows] = np.isin(labels[rows], train[train >= 0])
    cal = np.flatnonzero(eligible)
    logs = {n: _log_probs(h) for n, h in held.items()}
    temps, t = _fit_combination({n: z[cal] for n, z in logs.items()}, labels[cal], weights, k)
    oof = np.zeros((labels.shape[0], k))
    for f in np.unique(fold[fold >= 0]):  # cross-fitting: fold f is scaled by the other folds' fit
        rows, fit = np.flatnonzero(fold == f), cal[fold[cal] != f]
        temps_f, t_f = _fit_combination({n: z[fit] for n, z in logs.items()}, labels[fit], weights, k)
        oof[rows] = _apply({n: z[rows] for n, z in logs.items()}, temps_f, t_f, weights)
    ones = {n: 1.0 for n in logs}
    ece = _ece_impl(oof[cal], labels[cal]) if cal.size else float("nan")
    ece_raw = _ece_impl(_combine({n: z[cal] for n, z in logs.items()}, ones, weights), labels[cal]) if cal.size else float("nan")
    return temps, t, oof, ece, ece_raw, cal.size, fold >= 0


def pseudolabel(
    embeddings,
    labels,
    n_classes: int,
    graph: tuple[np.ndarray, np.ndarray],
    prototypes=None,
    *,
    text_prototypes=None,
    options: PseudolabelOptions = PseudolabelOptions(),
) -> PseudolabelResult:
    """Pseudo-label every sample: score, calibrate, correct priors, threshold, soft-label.

    1. Scores (``options.method``): label spreading over the kNN graph (plus one certainty-
       weighted refinement round and the reach prior), prototype scores, a kNN vote, or their
       weighted average (default: propagation, and prototypes re-estimated from the
       propagated labels, weights 1 : 0.5).
    2. Calibration: the labeled samples are split into ``n_folds`` stratified folds; each
       fold's labels are hidden and the scores recomputed, giving held-out scores. A
       temperature per score, then one for their mixture, minimise the held-out NLL (with
       Laplace label smoothing). Unlabeled rows use the scores from all labels.
    3. Optional EM re-estimation of the class priors of the unlabeled rows, from the equal
       priors the scores assume.
    4. The threshold rule on the unlabeled rows, and top-k soft labels.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Normalised here if they are not unit-norm.
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    n_classes : int
    graph : (sims, idx), each of shape (n_samples, k)
        kNN graph of ``embeddings`` (e.g. ``labelkit.knn.knn_graph``): cosine similarities,
        descending, and neighbour rows (-1 = missing), self excluded.
    prototypes : Prototypes, (vectors, classes) or ndarray of shape (n_classes, dim), optional
        Class prototypes (several per class allowed). The prototype score uses them as given
        (re-estimated from the training folds' labels when held out); the ensemble uses them
        to split each class into sub-prototypes. Default: class means of the labeled samples.
    text_prototypes : same forms as ``prototypes``, optional
        Class-name embeddings, added to the propagation graph as labeled anchor nodes (ZLaP);
        a class with no labeled sample can then still be predicted.
    options : PseudolabelOptions

    Returns
    -------
    PseudolabelResult

    References
    ----------
    Zhou et al., NeurIPS 2004; Iscen et al., CVPR 2019; Guo et al., ICML 2017 (temperature
    scaling); Saerens et al., Neural Computation 2002; Sohn et al. (FixMatch), NeurIPS 2020.

    Examples
    --------
    >>> x = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0, 1], [0.14, 0.99], [0.2, 0.98]], np.float32)
    >>> idx = np.array([[1, 2], [0, 2], [1, 0], [4, 5], [3, 5], [4, 3]])
    >>> sims = np.take_along_axis(x @ x.T, idx, axis=1)
    >>> r = pseudolabel(x, np.array([0, -1, -1, 1, -1, -1]), 2, (sims, idx))
    >>> r.label.tolist()
    [0, 0, 0, 1, 1, 1]
    """
    x = l2_normalize(check_embeddings(embeddings))
    labels = check_labels(labels, n_classes=n_classes)
    if labels.shape[0] != x.shape[0]:
        raise BadInputError(f"'labels' must have one entry per embedding ({x.shape[0]}). Got {labels.shape[0]} instead.")
    if not isinstance(options, PseudolabelOptions):
        raise BadInputError(f"'options' must be a PseudolabelOptions. Got {type(options).__name__} instead.")
    if not (isinstance(graph, tuple) and len(graph) == 2):
        raise BadInputError("'graph' must be a (sims, idx) pair.")
    sims, idx = _check_graph(graph[0], graph[1], x.shape[0])
    k = min(options.n_neighbors, sims.shape[1])
    ctx = _Context(
        x, sims[:, :k], idx[:, :k], n_classes,
        _as_prototypes(prototypes, n_classes, x.shape[1], "prototypes"),
        _as_prototypes(text_prototypes, n_classes, x.shape[1], "text_prototypes"),
    )
    if not (labels >= 0).any() and ctx.anchors is None and (options.method is not ScoreMethod.PROTOTYPE or ctx.prototypes is None):
        raise BadInputError(
            "no labeled sample (every label is -1) and no text prototypes: nothing to pseudo-label from. "
            "Label a few samples per class, or pass text_prototypes."
        )
    return _pseudolabel_impl(labels, ctx, options)


def _pseudolabel_impl(labels, ctx: _Context, opts: PseudolabelOptions) -> PseudolabelResult:
    weights = _component_weights(opts)
    temps, t, oof, ece, ece_raw, n_cal, heldout = _calibrate(labels, ctx, opts)
    full = {n: _log_probs(p) for n, p in _components(labels, ctx, opts, heldout=False).items()}
    probs = _apply(full, temps, t, weights)
    probs[heldout] = oof[heldout]
    unl = labels < 0
    if opts.prior_correction and unl.any():
        uniform = np.full(ctx.n_classes, 1.0 / ctx.n_classes)
        probs[unl], priors = _em_prior_impl(probs[unl], uniform, 100, 1e-6)
    else:
        priors = probs[unl].mean(axis=0) if unl.any() else np.full(ctx.n_classes, np.nan)
    accepted = np.zeros(labels.shape[0], dtype=bool)
    if unl.any():
        accepted[unl] = accept(probs[unl], opts.threshold, opts.threshold_value)
    label = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    top_labels, top_probs = _soft_labels_impl(probs, opts.top_k, opts.sharpen)
    return PseudolabelResult(
        probs=probs,
        label=label,
        confidence=conf,
        margin=_margin(probs),
        accepted=accepted,
        top_labels=top_labels,
        top_probs=top_probs,
        temperature=float(next(iter(temps.values())) if len(temps) == 1 else t),
        ece=ece,
        ece_uncalibrated=ece_raw,
        n_calibration=n_cal,
        priors=priors,
        coverage=float(accepted.sum() / unl.sum()) if unl.any() else float("nan"),
        class_counts=np.bincount(label[accepted], minlength=ctx.n_classes),
        confidence_counts=np.histogram(conf[unl], bins=10, range=(0.0, 1.0))[0],
        method=opts.method.value,
    )
