"""labelkit.review: confirmation by a second source, the review budget, and judge() on hand-made probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import evidence, noise, review

OPTS = dict(filter_by="prune_by_noise_rate", rank_by="self_confidence")


def test_confirmation_is_kappa_like():
    flags = np.array([True, True, False, False, False, False])
    assert review.confirmation(flags, flags) == 1.0
    assert review.confirmation(np.zeros(6, bool), flags) == 1.0  # nothing flagged: nothing to doubt
    # other flags a third of the rows, and half of ours: (1/2 - 1/3) / (1 - 1/3) = 0.25
    assert review.confirmation(flags, np.array([True, False, True, False, False, False])) == pytest.approx(0.25)
    assert review.confirmation(flags, np.ones(6, bool)) == 1.0  # flags everything: p_e = 1


def test_within_budget_keeps_the_confirmed_best_ranked_label_flags_and_other_types():
    q = evidence.LabelQuality(np.zeros(5), np.zeros(5, int), np.array([True, True, True, True, False]),
                              np.array(["label", "label", "label", "duplicate", None], dtype=object), np.array([2, 1, 3, 4, 5]))
    also = np.array([True, True, True, False, False])
    assert review.within_budget(q, also, budget=2).tolist() == [True, True, False, True, False]
    assert review.within_budget(q, np.zeros(5, bool), budget=5).tolist() == [False, False, False, True, False]


def _flipped(n=120, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), y] = 0.9
    probs /= probs.sum(axis=1, keepdims=True)
    given = y.copy()
    flip = rng.choice(n, 10, replace=False)
    given[flip] = (y[flip] + 1) % k
    return given, probs, flip


def test_judge_flags_the_flipped_labels_and_matches_confident_learning():
    given, probs, flip = _flipped()
    j = review.judge(given, probs, second=probs, min_consensus=0.5, review_budget=0.05, **OPTS)
    assert set(np.flatnonzero(j.quality.is_issue)) == set(flip)
    assert j.consensus == 1.0 and not j.weak and j.n_candidates == 10
    assert j.accuracy == pytest.approx(110 / 120)
    assert np.array_equal(j.cl.joint, noise.estimate_joint(given, probs))


def test_judge_under_weak_evidence_keeps_only_confirmed_flags_within_budget():
    given, probs, flip = _flipped()
    unsure = np.full_like(probs, 1 / 3)
    unsure[flip[:2]] = probs[flip[:2]]  # the second opinion confirms two flags, far below chance-corrected 0.5
    j = review.judge(given, probs, second=unsure, min_consensus=0.5, review_budget=0.01, **OPTS)
    assert j.weak and j.consensus < 0.5
    kept = np.flatnonzero(j.quality.is_issue)
    assert len(kept) <= int(np.ceil(0.01 * len(given))) and set(kept) <= set(flip[:2])
    alone = review.judge(given, probs, min_consensus=0.5, review_budget=0.01, **OPTS)  # no second opinion (--pred-probs)
    assert alone.consensus is None and not alone.weak and alone.quality.is_issue.sum() == 10
