"""New-class discovery: cluster the samples judged novel, with the number of new classes estimated.

Semi-supervised k-means (Vaze, Han, Vedaldi, Zisserman, "Generalized Category Discovery", CVPR
2022): the labeled samples stay fixed to their classes, whose centroids start at the class means;
``k`` new centroids start from the candidates by k-means++ seeding; then Lloyd steps under cosine
(spherical k-means) assign each candidate to the nearest centroid, known or new, while the labeled
samples never move. A candidate that ends in a known class's cluster is not new after all
(cluster -1). The number of new classes is the ``k`` in ``1..max_new`` whose clustering of the
candidates has the highest mean silhouette (Rousseeuw 1987; cosine distances, candidates in known
classes' clusters counted as members of those clusters; on a fixed sample of at most
``SILHOUETTE_SAMPLE`` candidates), with 0 new classes when no ``k`` gives a positive one. (The
centroid-based simplified silhouette grows with ``k`` on real embeddings and always chose the
largest ``k`` tried; benchmarks/openset.py.)

Numpy in, numpy out; the seed is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelkit._validation import check_labels, l2_normalize, unit_embeddings
from labelkit.errors import BadInputError

#: Candidates the silhouette is computed on at most (a fixed random sample; it is quadratic).
SILHOUETTE_SAMPLE = 2000

#: Softmax temperature of the per-sample confidence over centroid cosines (as the prototype score's).
CONFIDENCE_TEMPERATURE = 0.1


@dataclass(frozen=True, eq=False)
class Discovery:
    """What :func:`discover_classes` returns.

    Attributes
    ----------
    cluster : ndarray of shape (n_samples,), int64
        New cluster of each candidate (0..n_clusters-1); -1 for samples that are not candidates
        or that joined a known class.
    confidence : ndarray of shape (n_samples,), float32
        Softmax over all centroids (known and new) of ``cos / CONFIDENCE_TEMPERATURE``, at the
        assigned one (NaN for non-candidates).
    n_clusters : int
        Estimated number of new classes (clusters with at least one candidate).
    nearest_class : ndarray of shape (n_clusters,), int64
        Each new cluster's most similar known class (by centroid cosine).
    nearest_similarity : ndarray of shape (n_clusters,), float32
    centroids : ndarray of shape (n_clusters, dim), float32
    silhouettes : dict of int to float
        Mean silhouette of the candidates for each ``k`` tried.
    """

    cluster: np.ndarray
    confidence: np.ndarray
    n_clusters: int
    nearest_class: np.ndarray
    nearest_similarity: np.ndarray
    centroids: np.ndarray
    silhouettes: dict


#: A novel count whose chance p-value is above this is no evidence of a new class.
NO_EVIDENCE_P = 0.05


def novel_by_chance(n_novel: int, n_pool: int, rate: float) -> tuple[float, float]:
    """(expected count, one-sided p-value) of ``n_novel`` samples judged novel among ``n_pool`` if none is new.

    The novelty rule (:mod:`labelkit.novelty`) is conformal: a sample of a known class is judged
    novel with probability at most ``rate``. With no new class in the pool, the count is then at
    most Binomial(n_pool, rate) (approximately: the samples share one calibration set), so a count
    near ``rate * n_pool`` says the "novel" samples are the known classes' own tail, and
    clustering them would invent classes (examples/digits, every class labeled: 59 novel of
    1,618, about 81 expected, clustered into 11 "new classes" before this check).

    >>> exp, p = novel_by_chance(59, 1618, 0.05)
    >>> round(exp, 1), p > 0.99
    (80.9, True)
    >>> novel_by_chance(200, 1618, 0.05)[1] < 1e-6
    True
    """
    from scipy import stats

    if n_pool < 0 or not 0 <= rate <= 1 or n_novel < 0:
        raise BadInputError(f"novel_by_chance needs counts >= 0 and a rate in [0, 1]. Got {n_novel!r}, {n_pool!r}, {rate!r} instead.")
    p = float(stats.binom.sf(n_novel - 1, n_pool, rate)) if n_novel > 0 else 1.0
    return rate * n_pool, p


def discover_classes(embeddings, labels, n_classes: int, candidates, *, max_new: int = 20, n_clusters: int | None = None,
                     n_iter: int = 30, seed: int = 0) -> Discovery:
    """Cluster the candidate samples into new classes by semi-supervised k-means.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Normalised here if they are not unit-norm.
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled; every known class should have a labeled sample.
    n_classes : int
    candidates : ndarray of shape (n_samples,), bool
        Samples to cluster (e.g. ``labelkit.novelty.novelty_scores(...).novel`` on unlabeled rows).
        Labeled rows are never candidates.
    max_new : int, default=20
        Largest number of new classes tried (capped at the number of candidates / 2).
    n_clusters : int, optional
        Use this many new classes instead of estimating it.
    n_iter : int, default=30
        Lloyd iterations at most.
    seed : int, default=0
        Seeds the k-means++ initialisation.

    Returns
    -------
    Discovery

    References
    ----------
    Vaze, Han, Vedaldi, Zisserman, "Generalized Category Discovery", CVPR 2022. Arthur,
    Vassilvitskii, "k-means++", SODA 2007. Rousseeuw, "Silhouettes: a graphical aid to the
    interpretation and validation of cluster analysis", J. Comput. Appl. Math. 1987.

    Examples
    --------
    >>> x = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 0, 1], [0.1, 0, 0.99], [0, 1, 0], [0, 0.99, 0.1]], np.float32)
    >>> d = discover_classes(x, np.array([0, -1, -1, -1, -1, -1]), 1, np.array([0, 0, 1, 1, 1, 1], bool), max_new=2)
    >>> d.n_clusters, bool(d.cluster[2] == d.cluster[3] != d.cluster[4] == d.cluster[5]), int(d.cluster[1])
    (2, True, -1)
    """
    x = unit_embeddings(embeddings)
    labels = check_labels(labels, n_classes=n_classes)
    cand = np.asarray(candidates)
    if cand.shape != labels.shape or cand.dtype != bool:
        raise BadInputError(f"'candidates' must be a boolean mask of shape {labels.shape}. Got {cand.dtype} {cand.shape} instead.")
    if labels.shape[0] != x.shape[0]:
        raise BadInputError(f"'labels' must have one entry per embedding ({x.shape[0]}). Got {labels.shape[0]} instead.")
    for name, v in (("max_new", max_new), ("n_iter", n_iter)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise BadInputError(f"'{name}' must be an integer >= 1. Got {v!r} instead.")
    if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 0):
        raise BadInputError(f"'n_clusters' must be an integer >= 0 or None. Got {n_clusters!r} instead.")
    return _discover_impl(x, labels, n_classes, cand & (labels < 0), int(max_new), n_clusters, int(n_iter), int(seed))


def _discover_impl(x, labels, n_classes, cand, max_new, n_clusters, n_iter, seed) -> Discovery:
    rows = np.flatnonzero(cand)
    known = _class_means(x, labels, n_classes)
    empty = Discovery(np.full(x.shape[0], -1, np.int64), np.full(x.shape[0], np.nan, np.float32), 0,
                      np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, x.shape[1]), np.float32), {})
    if rows.size < 2 or (n_clusters == 0):
        return empty
    xc = x[rows]
    tried = {}
    if n_clusters is None:
        best_s, best_fit = 0.0, None
        sample = np.random.default_rng(seed).permutation(rows.size)[:SILHOUETTE_SAMPLE]
        dist = np.maximum(1.0 - xc[sample] @ xc[sample].T, 0.0)
        for k in range(1, min(max_new, rows.size // 2) + 1):
            fit = _ss_kmeans(xc, known, k, n_iter, seed)
            s = _silhouette(dist, fit[1][sample])
            tried[k] = round(float(s), 4)
            if s > best_s:
                best_s, best_fit = s, fit
        if best_fit is None:
            return Discovery(empty.cluster, empty.confidence, 0, empty.nearest_class, empty.nearest_similarity, empty.centroids, tried)
        new, assign = best_fit
    else:
        new, assign = _ss_kmeans(xc, known, min(n_clusters, rows.size), n_iter, seed)
    centroids = np.vstack([known, new])
    k_known = known.shape[0]
    # Renumber the new clusters that kept a candidate, 0..m-1; a candidate in a known cluster gets -1.
    used = np.unique(assign[assign >= k_known])
    remap = np.full(centroids.shape[0], -1, np.int64)
    remap[used] = np.arange(used.size)
    cluster = np.full(x.shape[0], -1, np.int64)
    cluster[rows] = remap[assign]
    z = (xc @ centroids.T) / CONFIDENCE_TEMPERATURE
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    conf = np.full(x.shape[0], np.nan, np.float32)
    conf[rows] = p[np.arange(rows.size), assign]
    kept = centroids[used]
    present = np.flatnonzero(np.isfinite(known[:, 0]) & (np.abs(known).sum(axis=1) > 0))
    sim = kept @ known[present].T if present.size else np.zeros((used.size, 0))
    nearest = present[sim.argmax(axis=1)] if present.size else np.full(used.size, -1)
    near_sim = sim.max(axis=1) if present.size else np.full(used.size, np.nan)
    return Discovery(cluster, conf, int(used.size), nearest.astype(np.int64), near_sim.astype(np.float32), kept.astype(np.float32), tried)


def _class_means(x, labels, n_classes) -> np.ndarray:
    """(K, D) unit class means of the labeled samples (zero rows for classes with none)."""
    lab = labels >= 0
    sums = np.zeros((n_classes, x.shape[1]), np.float64)
    np.add.at(sums, labels[lab], x[lab])
    return l2_normalize(sums.astype(np.float32))


def _ss_kmeans(xc, known, k, n_iter, seed) -> tuple[np.ndarray, np.ndarray]:
    """(k new unit centroids, assignment of each candidate to a centroid index in [known..., new...]).

    The known centroids are the labeled class means and stay fixed: the labeled samples never
    change cluster, and a candidate joining a known class would move its mean only by its share,
    which we leave out so that known classes stay the labeled ones (GCD's constraint).
    """
    rng = np.random.default_rng(seed)
    new = _kmeanspp(xc, known, k, rng)
    assign = None
    for _ in range(n_iter):
        sims = xc @ np.vstack([known, new]).T
        nxt = sims.argmax(axis=1)
        if assign is not None and np.array_equal(nxt, assign):
            break
        assign = nxt
        for j in range(k):
            members = xc[assign == known.shape[0] + j]
            if members.shape[0]:
                m = members.sum(axis=0)
                new[j] = m / max(np.linalg.norm(m), 1e-12)
    return new, assign


def _kmeanspp(xc, known, k, rng) -> np.ndarray:
    """k-means++ seeding of k new centroids among the candidates, the known centroids counted as chosen."""
    chosen = []
    d = 1.0 - (xc @ known.T).max(axis=1) if known.shape[0] else np.ones(xc.shape[0])
    d = np.maximum(d, 0.0)
    for _ in range(k):
        w = d**2
        i = rng.choice(xc.shape[0], p=w / w.sum()) if w.sum() > 0 else rng.integers(xc.shape[0])
        chosen.append(xc[i])
        d = np.minimum(d, np.maximum(1.0 - xc @ xc[i], 0.0))
    return np.array(chosen, dtype=np.float32)


def _silhouette(dist, assign) -> float:
    """Mean silhouette (b - a) / max(a, b) over a precomputed distance matrix; -1 with fewer than two clusters.

    ``a``: mean distance to the other members of the sample's cluster (0 alone in it, silhouette 0);
    ``b``: the smallest mean distance to another cluster's members.
    """
    labels, inv = np.unique(assign, return_inverse=True)
    if labels.size < 2:
        return -1.0
    onehot = np.zeros((assign.size, labels.size))
    onehot[np.arange(assign.size), inv] = 1.0
    sizes = onehot.sum(axis=0)
    mean_to = (dist @ onehot) / sizes  # (n, n_clusters) mean distance to each cluster
    own = sizes[inv]
    a = np.where(own > 1, mean_to[np.arange(assign.size), inv] * own / np.maximum(own - 1, 1), 0.0)
    mean_to[np.arange(assign.size), inv] = np.inf
    b = mean_to.min(axis=1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())
