"""labelkit/seeds.py: which seeds confident learning drops, on hand-made held-out probabilities."""

from __future__ import annotations

import numpy as np

from labelkit import seeds


def test_drop_doubted_drops_the_seed_its_held_out_scores_contradict():
    labels = np.array([0, 0, 0, 1, 1, 1, -1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.1, 0.9], [0.2, 0.8], [0.15, 0.85]])  # row 2 looks like class 1
    cleaned, dropped = seeds.drop_doubted(labels, np.arange(6), probs)
    assert dropped.tolist() == [False, False, True, False, False, False, False]
    assert cleaned.tolist() == [0, 0, -1, 1, 1, 1, -1]


def test_drop_doubted_never_empties_a_class():
    labels = np.array([0, 1, 1, 1])
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.2, 0.8], [0.1, 0.9]])  # class 0's only seed looks like class 1
    cleaned, dropped = seeds.drop_doubted(labels, np.arange(4), probs)
    assert not dropped.any() and cleaned.tolist() == labels.tolist()


def test_can_clean_needs_two_seeds_per_fold():
    assert seeds.can_clean(np.array([0, 1] * 5 + [-1]), 5)
    assert not seeds.can_clean(np.array([0, 1] * 4 + [-1]), 5)
    assert not seeds.can_clean(np.array([0, 1] * 5), 1)
