"""Choosing an embedder on evidence (issue 13): hand-made vectors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit.embedder_choice import loo_knn_accuracy, pick, stratified_sample
from labelkit.errors import BadInputError


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_loo_accuracy_is_one_on_separated_clusters_and_chance_like_on_mixed_ones(rng):
    y = np.repeat([0, 1, 2], 20)
    centers = np.eye(3, 8) * 10
    separated = _unit(centers[y] + rng.normal(size=(60, 8)))
    assert loo_knn_accuracy(separated, y, k=5) == 1.0
    noise = _unit(rng.normal(size=(60, 8)))
    assert loo_knn_accuracy(noise, y, k=5) < 0.6


def test_loo_accuracy_leaves_the_sample_itself_out():
    # Each row's only same-label partner is far away; its neighbour is of the other label.
    x = _unit([[1, 0], [0.95, 0.31], [0, 1], [0.31, 0.95]])
    assert loo_knn_accuracy(x, np.array([0, 1, 1, 0]), k=1) == 0.0
    assert loo_knn_accuracy(x, np.array([0, 0, 1, 1]), k=1) == 1.0


def test_loo_vote_is_similarity_weighted():
    # Rows 0 and 1 (label 0) each see the other at higher similarity than row 2 (label 1): right.
    # Row 2 sees only label-0 rows: wrong. So 2 of 3.
    x = _unit([[1, 0], [0.99, 0.141], [0.98, -0.199]])
    assert loo_knn_accuracy(x, np.array([0, 0, 1]), k=2) == pytest.approx(2 / 3)


def test_loo_accuracy_rejects_bad_input():
    with pytest.raises(BadInputError, match="at least 2 samples"):
        loo_knn_accuracy(np.ones((1, 2)), np.array([0]))
    with pytest.raises(BadInputError, match="labeled rows only"):
        loo_knn_accuracy(np.ones((2, 2)), np.array([0, -1]))


def test_stratified_sample_caps_each_class_and_the_total(rng):
    labels = np.array([0] * 50 + [1] * 5 + [2] * 30 + [-1] * 40)
    rows = stratified_sample(labels, per_class=10, cap=1000, rng=rng)
    assert np.bincount(labels[rows]).tolist() == [10, 5, 10]
    rows = stratified_sample(labels, per_class=10, cap=6, rng=rng)
    assert np.bincount(labels[rows]).tolist() == [2, 2, 2]
    assert stratified_sample(np.full(4, -1), per_class=3, cap=9, rng=rng).size == 0


def test_pick_prefers_the_cheaper_candidate_on_a_near_tie():
    assert pick({"pixels:8": 0.97, "efficientnet-lite0": 0.90}, tie=0.02) == "pixels:8"
    assert pick({"pixels:32": 0.30, "efficientnet-lite0": 0.80}, tie=0.02) == "efficientnet-lite0"
    assert pick({"pixels:32": 0.79, "efficientnet-lite0": 0.80}, tie=0.02) == "pixels:32"
    with pytest.raises(BadInputError):
        pick({}, tie=0.0)
