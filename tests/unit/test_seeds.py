"""labelkit/seeds.py: which seeds confident learning drops, on hand-made held-out probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import seeds
from labelkit.errors import BadInputError


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


def test_drop_doubted_keeps_a_flagged_seed_unless_the_odds_against_its_label_reach_the_bar():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # Rows 2 and 3 both look like class 1 once hidden; row 3 keeps a fair share on its own label
    # (3:1 against it) - the pattern of a correct seed that is alone in its part of the class.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.05, 0.95], [0.25, 0.75]] + [[0.3, 0.7]] * 4)
    assert np.flatnonzero(seeds.drop_doubted(labels, np.arange(8), probs, odds=1)[1]).tolist() == [2, 3]
    assert np.flatnonzero(seeds.drop_doubted(labels, np.arange(8), probs)[1]).tolist() == [2]  # 19:1 >= 5, 3:1 < 5
    assert not seeds.drop_doubted(labels, np.arange(8), probs, odds=20)[1].any()


def test_drop_doubted_rejects_odds_below_one():
    with pytest.raises(BadInputError, match="'odds' must be >= 1"):
        seeds.drop_doubted(np.array([0, 1]), np.arange(2), np.eye(2), odds=0.5)
