"""labelkit/propagation.py: the affinity and the spreading solver against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from labelkit import propagation as pg
from labelkit.errors import BadInputError


def _five_node_affinity():
    # A weighted path 0-1-2-3-4 plus a chord 1-3.
    a = np.zeros((5, 5))
    for i, j, w in [(0, 1, 1.0), (1, 2, 0.5), (2, 3, 0.5), (3, 4, 1.0), (1, 3, 0.2)]:
        a[i, j] = a[j, i] = w
    return a


def test_spread_labels_matches_closed_form_on_five_nodes():
    a = _five_node_affinity()
    y = np.zeros((5, 2))
    y[0, 0] = y[4, 1] = 1.0
    alpha = 0.8
    d = a.sum(axis=1)
    s = a / np.sqrt(np.outer(d, d))
    closed = (1 - alpha) * np.linalg.inv(np.eye(5) - alpha * s) @ y
    f = pg.spread_labels(a, y, alpha=alpha, tol=1e-10)
    np.testing.assert_allclose(f, closed, atol=1e-8)
    assert f[:2].argmax(axis=1).tolist() == [0, 0] and f[3:].argmax(axis=1).tolist() == [1, 1]
    np.testing.assert_allclose(f[2, 0], f[2, 1], atol=1e-12)  # the middle node is symmetric


def test_spread_labels_is_the_limit_of_the_iteration():
    a = _five_node_affinity()
    y = np.eye(5)[:, :3]
    alpha = 0.9
    d = a.sum(axis=1)
    s = a / np.sqrt(np.outer(d, d))
    f = np.zeros_like(y)
    for _ in range(2000):  # F <- alpha S F + (1 - alpha) Y (Zhou et al. 2004)
        f = alpha * s @ f + (1 - alpha) * y
    np.testing.assert_allclose(pg.spread_labels(a, y, alpha=alpha, tol=1e-12), f, atol=1e-9)


def test_spread_labels_rejects_asymmetric_affinity():
    a = _five_node_affinity()
    a[0, 4] = 1.0
    with pytest.raises(BadInputError, match="symmetric"):
        pg.spread_labels(a, np.zeros((5, 2)))


def test_knn_affinity_is_symmetric_powered_and_down_weights_one_way_edges():
    sims = np.array([[0.5, 0.2], [0.5, -0.3], [0.4, 0.0]], dtype=np.float32)
    idx = np.array([[1, 2], [0, 2], [1, -1]])
    a = pg.knn_affinity(sims, idx, gamma=2.0, one_way_weight=0.1).toarray()
    np.testing.assert_allclose(a, a.T)
    assert a[0, 1] == pytest.approx(0.25)  # mutual: 0 -> 1 and 1 -> 0
    assert a[0, 2] == pytest.approx(0.1 * 0.04)  # one-way 0 -> 2
    assert a[1, 2] == pytest.approx(0.1 * 0.16)  # one-way 2 -> 1 (1 -> 2 has a negative cosine: weight 0)
    assert np.all(np.diag(a) == 0)
    mutual_only = pg.knn_affinity(sims, idx, gamma=2.0, one_way_weight=0.0).toarray()
    assert np.count_nonzero(mutual_only) == 2


def _closed_form(a, y, alpha):
    d = a.sum(axis=1)
    s = a / np.sqrt(np.outer(d, d))
    return (1 - alpha) * np.linalg.inv(np.eye(a.shape[0]) - alpha * s) @ y


def test_float32_spreading_matches_the_closed_form():
    a = _five_node_affinity()
    y = np.zeros((5, 2), dtype=np.float32)
    y[0, 0] = y[4, 1] = 1.0
    f = pg.spread_labels(a, y, alpha=0.8)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, _closed_form(a, y.astype(np.float64), 0.8), atol=1e-6)


def test_column_blocks_and_renumbering_do_not_change_the_solution(monkeypatch):
    # Force one column per block, the reverse Cuthill-McKee renumbering and torch's sparse product.
    monkeypatch.setattr(pg, "BLOCK_ELEMENTS", 5)
    monkeypatch.setattr(pg, "REORDER_ABOVE", 0)
    monkeypatch.setattr(pg, "TORCH_ABOVE", 0)
    a = _five_node_affinity()
    y = np.eye(5, 3, dtype=np.float32)
    spreader = pg.Spreader(a)
    assert spreader.order is not None and sorted(spreader.order.tolist()) == list(range(5))
    np.testing.assert_allclose(spreader.solve(y, 0.9), _closed_form(a, y.astype(np.float64), 0.9), atol=1e-6)


def test_affinity_is_the_max_min_formula_exactly():
    # Issue 17: built as CSR with temporaries let go; the same matrix as mutual + w (union - mutual).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :6]  # column 0 is self: dropped
    sims = np.take_along_axis(s, idx, axis=1)
    idx[rng.random(idx.shape) < 0.1] = -1  # missing neighbours
    got = pg.knn_affinity(sims, idx, gamma=3.0, one_way_weight=0.1)
    rows = np.repeat(np.arange(60), 6)
    w = np.maximum(sims.ravel().astype(np.float64), 0.0) ** 3.0
    keep = (idx.ravel() >= 0) & (idx.ravel() != rows) & (w > 0)
    a = sp.csr_matrix((w[keep], (rows[keep], idx.ravel()[keep])), shape=(60, 60))
    union, mutual = a.maximum(a.T), a.minimum(a.T)
    expected = (mutual + 0.1 * (union - mutual)).tocsr()
    for f in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(got, f), getattr(expected, f))
    np.testing.assert_array_equal(got.toarray(), got.T.toarray())  # symmetric
    assert (union != mutual).nnz > 0  # one-way edges present: the weight is exercised


def test_spreader_leaves_the_callers_affinity_alone():
    a = sp.csr_matrix(_five_node_affinity())
    before = a.copy()
    pg.Spreader(a)
    np.testing.assert_array_equal(a.toarray(), before.toarray())


def test_propagate_first_round_is_class_mass_normalised_spreading():
    # No refinement, no reach prior: rows of max(F, 0) / column mass, renormalised (Zhou et al.).
    a = _five_node_affinity()
    labels = np.array([0, -1, -1, -1, 1])
    seen = []
    final = pg.propagate(pg.Spreader(a), labels, 5, 2, alpha=0.8, refine=False, reach_prior=0.0, with_first=lambda f: seen.append(f.copy()))
    f = _closed_form(a, np.eye(2)[[0, 1]][[0, 0, 0, 0, 1]] * (labels >= 0)[:, None], 0.8)
    f = f / f.sum(axis=0)
    np.testing.assert_allclose(seen[0], f / f.sum(axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(seen[0], final)


def test_propagate_refines_in_place_as_from_certainty_seeds():
    # The refinement round reuses the first round's array: the same as spreading certainty_seeds anew.
    a = _five_node_affinity()
    labels = np.array([0, -1, -1, -1, 1])
    spreader = pg.Spreader(a)
    seen = []
    final = pg.propagate(spreader, labels, 5, 2, alpha=0.8, refine=True, reach_prior=0.0, with_first=lambda f: seen.append(f.copy()))
    y = pg.certainty_seeds(labels, seen[0])
    y /= y.sum(axis=0)
    f = np.maximum(spreader.solve(y, 0.8), 0.0)
    f /= f.sum(axis=0)
    np.testing.assert_allclose(final, f / f.sum(axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(final, seen[0], atol=1e-3)  # the second round moved the scores


def test_solve_in_place_matches_a_new_array(monkeypatch):
    monkeypatch.setattr(pg, "BLOCK_ELEMENTS", 5)  # one column a block
    monkeypatch.setattr(pg, "REORDER_ABOVE", 0)
    spreader = pg.Spreader(_five_node_affinity())
    y = np.eye(5, 3, dtype=np.float32)
    fresh = spreader.solve(y, 0.9)
    same = y.copy()
    assert spreader.solve(same, 0.9, overwrite=True) is same
    np.testing.assert_array_equal(same, fresh)
    with pytest.raises(BadInputError, match="writeable C-contiguous float32"):
        spreader.solve(y.astype(np.float64), 0.9, overwrite=True)


def test_certainty_seeds_weight_the_argmax_by_one_minus_normalised_entropy():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    y = pg.certainty_seeds(np.array([-1, -1, 1]), probs)
    np.testing.assert_allclose(y, [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], atol=1e-6)  # row 2 is labeled 1


@pytest.mark.parametrize("n", [0, 3, 8, 9, 20])
def test_column_dots_sum_blocks_and_the_rows_past_the_last_block(n):
    import torch

    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 3)).astype(np.float32)
    got = pg._col_dot(torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, 3), block=4)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, (a.astype(np.float64) * b).sum(axis=0), rtol=1e-6, atol=1e-6)


def test_importing_the_numpy_compute_does_not_import_torch():
    """labelkit.pseudolabel is numpy in, numpy out: torch loads only when a solve runs."""
    import subprocess
    import sys

    code = "import sys, labelkit.pseudolabel, labelkit.seeds, labelkit.propagation; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
