"""2-D maps of embeddings for the report: numpy in, numpy out (no files, no HTML).

t-SNE (scikit-learn's Barnes-Hut implementation, after a PCA to 50 dimensions) is the map: it
keeps neighbourhoods, so classes that the embedder separates appear as separate islands. PCA is
the fallback, used when scikit-learn is missing or the points are too few for t-SNE's
neighbourhoods; :class:`Projection` says which method drew the map and why.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from labelkit.errors import BadInputError

METHODS = ("auto", "tsne", "pca")
TSNE_MIN_POINTS = 40  # below this a perplexity-(n-1)/3 t-SNE has too few neighbours to mean much
TSNE_PERPLEXITY = 30.0
TSNE_PCA_DIMS = 50  # van der Maaten & Hinton 2008: reduce to ~50 dimensions before t-SNE
# 250 iterations of early exaggeration then 250 more: half scikit-learn's default, where the map
# has settled into its islands (the rest refines distances within them); halves the time.
TSNE_ITERATIONS = 500
EXACT_PCA_MAX = 200  # min(n, d) up to which PCA is a full SVD; past it, a randomised one


class Projection(NamedTuple):
    """A 2-D map: ``xy`` (n, 2), the method that drew it, PCA's explained variance ratios, and why
    PCA was used when t-SNE was wanted (``fallback``; None otherwise)."""

    xy: np.ndarray
    method: str
    explained: tuple[float, float] | None = None
    fallback: str | None = None


def subsample(n: int, max_points: int, *, keep: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``max_points`` of ``n`` rows; rows where ``keep`` is true go first.

    Parameters
    ----------
    n : int
        Number of rows.
    max_points : int
        Largest number of rows returned (``>= 1``).
    keep : ndarray of shape (n,), dtype bool, default=None
        Rows chosen before any other (e.g. label issues, so the map shows them all).
    seed : int, default=0
        Seed of the uniform draw among the other rows.

    Examples
    --------
    >>> subsample(3, 10).tolist()
    [0, 1, 2]
    """
    if max_points < 1:
        raise BadInputError(f"'max_points' must be >= 1. Got {max_points!r} instead.")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = np.zeros(n, bool) if keep is None else np.asarray(keep, bool)
    first = np.flatnonzero(keep)
    if len(first) >= max_points:
        return np.sort(rng.choice(first, max_points, replace=False))
    rest = rng.choice(np.flatnonzero(~keep), max_points - len(first), replace=False)
    return np.sort(np.concatenate([first, rest]))


def project_2d(x: np.ndarray, *, method: str = "auto", seed: int = 0) -> Projection:
    """Project rows of ``x`` to 2-D: t-SNE when it can, else PCA.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
        Embeddings (unit-norm ones: Euclidean distance then ranks neighbours as cosine does).
    method : {"auto", "tsne", "pca"}, default="auto"
        ``auto`` = t-SNE when scikit-learn is importable and there are at least
        ``TSNE_MIN_POINTS`` rows, else PCA. ``tsne`` raises when scikit-learn is missing.
    seed : int, default=0
        Random state of t-SNE and of the randomised PCA.

    Returns
    -------
    Projection
        ``xy`` of shape (n_samples, 2), float64.

    References
    ----------
    van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008; van der Maaten,
    "Accelerating t-SNE using Tree-Based Algorithms", JMLR 2014 (Barnes-Hut); Pearson, "On lines
    and planes of closest fit", 1901 (PCA); Halko, Martinsson & Tropp, "Finding structure with
    randomness", SIAM Review 2011 (randomised SVD).

    Examples
    --------
    >>> p = project_2d(np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))
    >>> p.method, p.xy.shape, p.fallback
    ('PCA', (3, 2), 't-SNE needs at least 40 points; there are 3')
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise BadInputError(f"'x' must be 2-D (n_samples, n_features). Got shape {x.shape!r} instead.")
    if method not in METHODS:
        raise BadInputError(f"'method' must be one of {', '.join(map(repr, METHODS))}. Got {method!r} instead.")
    if method == "pca":
        return _pca(x, seed=seed)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        if method == "tsne":
            raise BadInputError("'method' is 'tsne' but scikit-learn is not installed (pip install scikit-learn)") from None
        return _pca(x, seed=seed)._replace(fallback="scikit-learn is not installed")
    if len(x) < TSNE_MIN_POINTS:
        return _pca(x, seed=seed)._replace(fallback=f"t-SNE needs at least {TSNE_MIN_POINTS} points; there are {len(x)}")
    return _tsne_impl(x, TSNE, seed=seed)


def _tsne_impl(x: np.ndarray, tsne_cls, *, seed: int) -> Projection:
    """PCA to at most ``TSNE_PCA_DIMS`` dimensions (denoises, and makes the kNN search cheap), then t-SNE."""
    n, d = x.shape
    if d > TSNE_PCA_DIMS:
        x = _principal_components(x, TSNE_PCA_DIMS, seed=seed)
    perplexity = min(TSNE_PERPLEXITY, (n - 1) / 3)
    xy = tsne_cls(n_components=2, perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS, random_state=seed).fit_transform(x)
    return Projection(np.asarray(xy, dtype=np.float64), "t-SNE")


def _top_svd(xc: np.ndarray, k: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right vectors of the centred ``xc``: exact up to ``EXACT_PCA_MAX``, else the top ``k``.

    The randomised SVD (Halko, Martinsson & Tropp, SIAM Review 2011) takes a (k + 10)-column range
    with 4 power iterations, then the SVD of the small projection: a full SVD of 5000 x 1280 takes
    about a minute on two busy cores, this a second.
    """
    n, d = xc.shape
    if min(n, d) <= EXACT_PCA_MAX:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        return s, vt
    rng = np.random.default_rng(seed)
    q = xc @ rng.standard_normal((d, min(k + 10, d)))
    for _ in range(4):  # power iterations sharpen the leading subspace
        q, _ = np.linalg.qr(q)
        q = xc @ (xc.T @ q)
    q, _ = np.linalg.qr(q)
    _, s, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
    return s, vt


def _principal_components(x: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """Scores of the rows of ``x`` on its top ``k`` principal components."""
    xc = x - x.mean(axis=0)
    _, vt = _top_svd(xc, k, seed=seed)
    return xc @ vt[:k].T


def _pca(x: np.ndarray, *, seed: int = 0) -> Projection:
    """Top-2 principal components with their explained variance (signs fixed for determinism)."""
    n, d = x.shape
    if n == 0:
        return Projection(np.zeros((0, 2)), "PCA", (0.0, 0.0))
    xc = x - x.mean(axis=0)
    total = float(np.einsum("ij,ij->", xc, xc))
    s, vt = _top_svd(xc, 2, seed=seed)
    comps = np.zeros((2, d))
    m = min(2, vt.shape[0])
    comps[:m] = vt[:m]
    # Sign of each component: its largest-magnitude loading is positive.
    signs = np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1, signs)[:, None]
    var = s**2
    ratio = [float(var[i] / total) if i < len(var) and total > 0 else 0.0 for i in range(2)]
    return Projection(xc @ comps.T, "PCA", (ratio[0], ratio[1]))
