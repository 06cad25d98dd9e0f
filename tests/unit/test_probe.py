"""Tests for labelkit.probe (cross-validated softmax probe for confident learning)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelkit.errors import BadInputError
from labelkit.folds import stratified_folds
from labelkit.probe import ProbeConfig, _fit_probe, cross_val_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n_per: int = 40, dim: int = 8, sep: float = 6.0, seed: int = 0):
    """Two well-separated Gaussian blobs: class 0 around -sep/2 e_0, class 1 around +sep/2 e_0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n_per, dim)).astype(np.float32)
    y = np.repeat([0, 1], n_per)
    x[:, 0] += np.where(y == 1, sep / 2, -sep / 2)
    return x, y


# --- cross-validated probabilities -----------------------------------------------------------------


def test_stratified_folds_spread_rare_classes_and_balance_sizes():
    labels = np.array([0] * 12 + [1] * 3 + [2] * 1 + [3] * 7)
    folds = stratified_folds(labels, 5, np.random.default_rng(0))
    assert set(np.unique(folds)) == set(range(5))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c, m in ((0, 12), (1, 3), (2, 1), (3, 7)):
        assert len(np.unique(folds[labels == c])) == min(m, 5)


def test_cross_val_probs_are_out_of_sample():
    # Random labels on random high-dimensional points: any model that saw a point memorises its
    # label (p ~ 1), a model that did not is at chance (p ~ 1/K).
    rng = np.random.default_rng(0)
    n, d, k = 60, 200, 3
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    p = cross_val_probs(x, y, k, n_folds=5, seed=0)
    assert p.shape == (n, k) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    in_sample = _fit_probe(torch.from_numpy(x), torch.from_numpy(y), k, ProbeConfig())(torch.from_numpy(x)).numpy()
    assert in_sample[np.arange(n), y].mean() > 0.9
    assert p[np.arange(n), y].mean() < 0.5


def test_cross_val_probs_rare_classes_and_unlabeled():
    x, y = _blobs(n_per=20, dim=4)
    labels = y.copy()
    labels[0] = 2  # class 2 has one sample: absent from the training folds that predict it
    labels[1:3] = 3  # class 3 has two samples
    labels[-4:] = -1  # unlabeled rows
    p = cross_val_probs(x, labels, 4, n_folds=5, seed=0)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert p[0, 2] == 0.0  # no training fold for row 0 contained class 2
    assert p[1, 3] < 0.5 and p[2, 3] < 0.5  # each was predicted from a model that saw one of the two
    assert np.all(p[-4:].argmax(1) == 1)  # unlabeled rows: mean of the fold models
    with pytest.raises(BadInputError, match="'n_folds' must be an int in \\[2, n_labeled=36\\]"):
        cross_val_probs(x, labels, 4, n_folds=40)


def test_cross_val_probs_matches_logistic_regression_on_digits():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    del sklearn
    x, y = load_digits(return_X_y=True)
    x, y = x[:400], y[:400]
    xs = StandardScaler().fit_transform(x).astype(np.float32)
    folds = stratified_folds(y, 3, np.random.default_rng(0))
    p = cross_val_probs(xs, y, 10, n_folds=3, seed=0, config=ProbeConfig(standardize=False, max_iter=300))
    ref = np.zeros_like(p)
    for f in range(3):
        lr = LogisticRegression(max_iter=2000).fit(xs[folds != f], y[folds != f])
        ref[folds == f] = lr.predict_proba(xs[folds == f])
    assert np.mean(p.argmax(1) == ref.argmax(1)) > 0.99
    assert np.abs(p - ref).mean() < 0.005


def test_probe_probs_fits_on_the_labeled_rows_and_has_no_opinion_without_any():
    from labelkit.probe import probe_probs

    x = np.array([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.1], [0.05, 1.0], [1.0, 0.05]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, -1, -1])
    p = probe_probs(x, y, 2, np.array([4, 5]))
    assert p.shape == (2, 2) and p.argmax(axis=1).tolist() == [0, 1]
    np.testing.assert_allclose(probe_probs(x, np.full(6, -1), 2), 0.5)
    # The training cap draws a subset; predictions stay sensible.
    assert probe_probs(x, y, 2, np.array([4, 5]), max_train=2).shape == (2, 2)
