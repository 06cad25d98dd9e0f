"""labelkit/discovery.py: semi-supervised k-means with the number of new classes estimated."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit.discovery import discover_classes
from labelkit.errors import BadInputError


def _data(rng, n_new=3, n=40, spread=0.15):
    # Two known classes (labeled) and n_new new classes (unlabeled candidates), well apart in 12-d.
    centers = np.eye(12)[: 2 + n_new] * 2
    x = np.concatenate([c + spread * rng.standard_normal((n, 12)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(2 + n_new), n)
    labels = np.where(y < 2, y, -1)
    return x, y, labels


def _purity(cluster, y):
    return all(np.unique(y[cluster == c]).size == 1 for c in np.unique(cluster[cluster >= 0]))


def test_estimates_the_number_of_new_classes_and_finds_them(rng):
    x, y, labels = _data(rng)
    d = discover_classes(x, labels, 2, labels < 0, max_new=8)
    assert d.n_clusters == 3
    new = y >= 2
    assert (d.cluster[new] >= 0).all() and (d.cluster[~new] == -1).all()
    assert _purity(d.cluster, y)
    assert max(d.silhouettes, key=d.silhouettes.get) == 3
    assert np.all((d.confidence[new] > 0.5) & (d.confidence[new] <= 1)) and np.isnan(d.confidence[~new]).all()


def test_candidates_of_a_known_class_join_it_and_get_no_cluster(rng):
    x, y, labels = _data(rng, n_new=1)
    labels = np.where((y == 0) & (np.arange(y.size) % 2 == 0), -1, labels)  # half of class 0 unlabeled
    d = discover_classes(x, labels, 2, labels < 0, max_new=4)
    assert d.n_clusters == 1
    assert (d.cluster[(y == 0) & (labels < 0)] == -1).all()
    assert (d.cluster[y == 2] == 0).all()


def test_nearest_known_class_of_a_new_cluster(rng):
    x, y, labels = _data(rng, n_new=1)
    x[y == 2] += 1.5 * np.eye(12)[1]  # the new class leans toward known class 1
    d = discover_classes(x, labels, 2, labels < 0, n_clusters=1)
    assert d.n_clusters == 1 and d.nearest_class.tolist() == [1]
    assert 0 < d.nearest_similarity[0] < 1


def test_given_count_and_no_candidates(rng):
    x, y, labels = _data(rng)
    d = discover_classes(x, labels, 2, labels < 0, n_clusters=2)
    assert d.n_clusters == 2 and d.silhouettes == {}
    none = discover_classes(x, labels, 2, np.zeros(y.size, bool))
    assert none.n_clusters == 0 and (none.cluster == -1).all() and none.centroids.shape == (0, 12)


def test_bad_inputs(rng):
    x, y, labels = _data(rng)
    with pytest.raises(BadInputError, match="'candidates' must be a boolean mask"):
        discover_classes(x, labels, 2, np.zeros(3, bool))
    with pytest.raises(BadInputError, match="'max_new' must be an integer >= 1"):
        discover_classes(x, labels, 2, labels < 0, max_new=0)
