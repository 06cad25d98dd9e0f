"""labelkit.projection: the report's 2-D map on small hand-made arrays."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from labelkit import projection as proj
from labelkit.errors import BadInputError


def _two_clusters(rng: np.random.Generator, n_each: int = 30, d: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Two tight Gaussian blobs 10 apart along one axis, in ``d`` dimensions, unit spread 0.3."""
    centre = np.zeros(d)
    centre[0] = 10.0
    x = np.concatenate([rng.normal(scale=0.3, size=(n_each, d)), centre + rng.normal(scale=0.3, size=(n_each, d))])
    return x, np.repeat([0, 1], n_each)


def _separated(xy: np.ndarray, y: np.ndarray) -> bool:
    """The two groups' discs (centroid, farthest member) do not overlap, and every point's 2-D neighbour is its own kind."""
    c = [xy[y == k].mean(axis=0) for k in (0, 1)]
    r = [np.linalg.norm(xy[y == k] - c[k], axis=1).max() for k in (0, 1)]
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return bool(np.linalg.norm(c[0] - c[1]) > r[0] + r[1] and (y[d.argmin(axis=1)] == y).all())


def test_subsample_keeps_priority_rows_and_is_seeded():
    keep = np.zeros(100, bool)
    keep[[3, 50, 97]] = True
    rows = proj.subsample(100, 10, keep=keep, seed=1)
    assert len(rows) == 10 and np.all(np.diff(rows) > 0)
    assert {3, 50, 97} <= set(rows.tolist())
    assert np.array_equal(rows, proj.subsample(100, 10, keep=keep, seed=1))
    assert np.array_equal(proj.subsample(5, 10), np.arange(5))
    # More priority rows than room: a subset of them only.
    assert set(proj.subsample(100, 2, keep=keep).tolist()) <= {3, 50, 97}


def test_subsample_rejects_nonpositive_max_points():
    with pytest.raises(BadInputError, match="'max_points' must be >= 1. Got 0 instead."):
        proj.subsample(10, 0)


def test_tsne_separates_two_well_separated_clusters(rng):
    x, y = _two_clusters(rng)
    p = proj.project_2d(x, seed=0)
    assert p.method == "t-SNE" and p.fallback is None and p.explained is None
    assert p.xy.shape == (60, 2) and np.isfinite(p.xy).all()
    assert _separated(p.xy, y)
    assert np.array_equal(p.xy, proj.project_2d(x, seed=0).xy)  # seeded


def test_tsne_reduces_wide_inputs_to_50_dimensions_first(rng):
    # 300 dimensions (past TSNE_PCA_DIMS, and min(n, d) = 60 keeps the SVD exact): still two islands.
    x, y = _two_clusters(rng, d=300)
    p = proj.project_2d(x, method="tsne")
    assert p.method == "t-SNE" and _separated(p.xy, y)


def test_too_few_points_fall_back_to_pca_and_say_why(rng):
    x, y = _two_clusters(rng, n_each=10)
    p = proj.project_2d(x)
    assert p.method == "PCA" and p.fallback == "t-SNE needs at least 40 points; there are 20"
    assert _separated(p.xy, y)  # PCA separates blobs that differ along the top axis


def test_missing_scikit_learn_falls_back_to_pca_unless_tsne_is_asked_for(rng, monkeypatch):
    x, _ = _two_clusters(rng)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails
    p = proj.project_2d(x)
    assert p.method == "PCA" and p.fallback == "scikit-learn is not installed"
    with pytest.raises(BadInputError, match="'method' is 'tsne' but scikit-learn is not installed"):
        proj.project_2d(x, method="tsne")


def test_project_rejects_unknown_method_and_non_2d_input():
    with pytest.raises(BadInputError, match="'method' must be one of 'auto', 'tsne', 'pca'. Got 'umap' instead."):
        proj.project_2d(np.zeros((3, 2)), method="umap")
    with pytest.raises(BadInputError, match=r"'x' must be 2-D \(n_samples, n_features\). Got shape \(3,\) instead."):
        proj.project_2d(np.zeros(3))


def test_pca_of_points_on_a_line_is_that_line():
    # Four points along direction (3, 4)/5, offsets on the orthogonal axis uncorrelated with t.
    t = np.array([-3.0, -1.0, 1.0, 3.0])
    d, o = np.array([0.6, 0.8]), np.array([-0.8, 0.6])
    x = 7.0 + t[:, None] * d + np.array([0.01, -0.01, -0.01, 0.01])[:, None] * o
    p = proj.project_2d(x, method="pca")
    assert p.method == "PCA" and p.fallback is None
    # First axis: the positions along the line (sign fixed so the largest loading is positive).
    assert np.allclose(p.xy[:, 0], t, atol=1e-9)
    assert np.allclose(np.abs(p.xy[:, 1]), 0.01, atol=1e-9)
    var_t, var_o = (t**2).sum(), 4 * 0.01**2
    assert p.explained[0] == pytest.approx(var_t / (var_t + var_o))


def test_randomised_pca_of_a_large_input_matches_the_exact_one(rng):
    # 300 x 250 (past EXACT_PCA_MAX): a clear top-2 subspace plus small isotropic noise.
    n, d = 300, 250
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    x = rng.normal(size=(n, 2)) * [5.0, 3.0] @ basis + 0.05 * rng.normal(size=(n, d))
    assert min(n, d) > proj.EXACT_PCA_MAX
    fast = proj.project_2d(x, method="pca")
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    exact = xc @ vt[:2].T
    for j in range(2):
        assert abs(np.corrcoef(fast.xy[:, j], exact[:, j])[0, 1]) > 1 - 1e-6
    assert np.allclose(fast.explained, s[:2] ** 2 / (s**2).sum(), rtol=1e-6)


def test_pca_handles_one_dimension_and_no_rows():
    p = proj.project_2d(np.array([[1.0], [2.0], [4.0]]), method="pca")
    assert p.xy.shape == (3, 2) and np.allclose(p.xy[:, 1], 0)
    assert proj.project_2d(np.zeros((0, 5)), method="pca").xy.shape == (0, 2)
