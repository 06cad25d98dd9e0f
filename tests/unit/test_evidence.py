"""labelkit.evidence: the kNN vote, conflicting near-duplicates, outliers and their combination,
on hand-made graphs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import evidence, noise
from labelkit.errors import BadInputError
from tests.unit.test_noise import _noisy

# ----------------------------------------------------------------------------- kNN vote

# 0..3 form a cluster labeled 0 except 3 (labeled 1); 4, 5 are labeled 1 far away; 6 unlabeled
LABELS = np.array([0, 0, 0, 1, 1, 1, -1])
IDX = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [5, 6, -1], [4, 6, -1], [4, 5, -1]])
SIMS = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.6], [0.8, 0.8, 0.5], [0.7, 0.6, 0.5],
                 [0.9, 0.4, 0.0], [0.9, 0.3, 0.0], [0.4, 0.3, 0.0]], dtype=np.float32)


def test_knn_vote_probs_by_hand():
    p = evidence.knn_vote_probs(LABELS, SIMS, IDX, 2, smoothing=0)
    np.testing.assert_allclose(p[0], [1.7 / 2.4, 0.7 / 2.4], rtol=1e-6)
    np.testing.assert_allclose(p[3], [1.0, 0.0])
    np.testing.assert_allclose(p[4], [0.0, 1.0])  # the unlabeled neighbour 6 does not vote
    np.testing.assert_allclose(p[6], [0.0, 1.0])
    uniform = evidence.knn_vote_probs(LABELS, SIMS, IDX, 2, weighting="uniform", smoothing=2.0)
    np.testing.assert_allclose(uniform[0], [3 / 5, 2 / 5])  # (2 + 1) / (3 + 2), (1 + 1) / (3 + 2)
    np.testing.assert_allclose(uniform.sum(axis=1), 1, rtol=1e-6)


def test_knn_vote_probs_ignores_self_and_missing_neighbours():
    labels = np.array([0, 1])
    p = evidence.knn_vote_probs(labels, np.array([[1.0, 0.5], [1.0, 0.0]]), np.array([[0, 1], [1, -1]]), 2, smoothing=0)
    np.testing.assert_allclose(p, [[0.0, 1.0], [0.5, 0.5]])  # row 1 has no vote: uniform


def test_knn_vote_probs_rejects_bad_graphs():
    with pytest.raises(BadInputError, match=r"'idx' must be in \[-1, 6\]"):
        evidence.knn_vote_probs(LABELS, SIMS, IDX + 5, 2)
    with pytest.raises(BadInputError, match="'weighting' must be one of"):
        evidence.knn_vote_probs(LABELS, SIMS, IDX, 2, weighting="gaussian")
    with pytest.raises(BadInputError, match="must both have shape"):
        evidence.knn_vote_probs(LABELS, SIMS[:, :2], IDX, 2)


def test_knn_label_issues_flags_the_odd_one_out():
    res = evidence.knn_label_issues(LABELS, SIMS, IDX, 2, smoothing=0)
    assert res.is_issue.tolist() == [False, False, False, True, False, False, False]
    assert res.suggested_label[3] == 0 and res.agreement[3] == 0.0 and np.isnan(res.agreement[6])
    # with smoothing the majority of row 3 is (1.8 + 0.5) / 2.8 = 0.82: not enough for 0.9
    assert not evidence.knn_label_issues(LABELS, SIMS, IDX, 2, min_agreement=0.9).is_issue.any()


def test_knn_vote_probs_feed_confident_learning():
    labels, _ = _noisy(31, 200, 3)
    rng = np.random.default_rng(31)
    idx = np.stack([rng.choice(np.delete(np.arange(200), i), 5, replace=False) for i in range(200)])
    probs = evidence.knn_vote_probs(labels, rng.random((200, 5)).astype(np.float32), idx, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert noise.find_label_issues(labels, probs).shape == (200,)


def test_conflicting_duplicates_are_symmetric():
    labels = np.array([0, 1, 1, 0, -1])
    idx = np.array([[1, 3], [2, 0], [1, 0], [0, 4], [0, 1]])
    sims = np.array([[0.99, 0.995], [0.99, 0.5], [0.999, 0.1], [0.995, 0.999], [0.999, 0.1]], dtype=np.float32)
    res = evidence.find_conflicting_duplicates(labels, sims, idx, threshold=0.98)
    # 0-1 conflict (only 0 lists it at >= .98; 1 lists 0 at .5 but is flagged too); 0-3 same label;
    # 1-2 same label; 3-4 and 4-0: 4 is unlabeled
    assert res.is_issue.tolist() == [True, True, False, False, False]
    assert res.partner.tolist() == [1, 0, -1, -1, -1]
    np.testing.assert_allclose(res.similarity[:2], [0.99, 0.99])
    assert not evidence.find_conflicting_duplicates(labels, sims, idx, threshold=0.995).is_issue.any()


def test_outliers_by_robust_knn_distance():
    rng = np.random.default_rng(41)
    sims = (0.9 + 0.01 * rng.standard_normal((50, 4))).astype(np.float32)
    sims[7] = 0.2  # far from everything
    idx = np.tile(np.arange(1, 5), (50, 1))
    idx[1:5] = 0
    idx[9] = -1  # no neighbours
    res = evidence.find_outliers(sims, idx)
    assert np.flatnonzero(res.is_issue).tolist() == [7]
    assert res.score[7] > 0.5 and np.nanmax(np.delete(res.score, 7)) < 0.5
    assert np.isnan(res.distance[9]) and np.isnan(res.score[9])
    assert res.distance[7] == pytest.approx(0.8)
    flat = evidence.find_outliers(np.full((5, 2), 0.5, np.float32), np.tile([1, 2], (5, 1)))
    assert not flat.is_issue.any() and np.all(flat.score == 0)


def test_combine_evidence_rule():
    labels = np.array([0, 1, 1, 0, -1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    dup = evidence.DuplicateConflicts(np.array([False, False, True, True, False]), np.array([-1, -1, 3, 2, -1]),
                                   np.array([np.nan, np.nan, 0.99, 0.99, np.nan], dtype=np.float32))
    out = evidence.Outliers(np.zeros(5, np.float32), np.array([0.0, 0.0, 0.0, 0.0, 0.9], np.float32),
                         np.array([False, False, False, False, True]))
    res = evidence.combine_evidence(labels, probs=probs, label_issues=np.array([False, True, False, True, False]),
                                 duplicates=dup, outliers=out)
    np.testing.assert_allclose(res.label_quality[:4], [0.9, 0.2, 0.01, 0.01], rtol=1e-5)
    assert np.isnan(res.label_quality[4])
    assert res.issue_type.tolist() == [None, "label", "duplicate", "label", None]
    assert res.is_issue.tolist() == [False, True, True, True, False]
    assert res.rank.tolist() == [4, 3, 1, 2, -1]
    assert res.suggested_label.tolist() == [0, 0, 1, 0, 0]


def test_combine_evidence_without_probs_keeps_the_given_label():
    res = evidence.combine_evidence(np.array([0, 1]), label_issues=np.array([False, True]))
    assert res.suggested_label.tolist() == [0, 1] and res.rank.tolist() == [2, 1]
    np.testing.assert_allclose(res.label_quality, [1.0, 1.0])
    with pytest.raises(BadInputError, match="'label' evidence must have 2 rows"):
        evidence.combine_evidence(np.array([0, 1]), label_issues=np.array([True]))
