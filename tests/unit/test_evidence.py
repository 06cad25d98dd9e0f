"""labelkit.evidence: the kNN vote, conflicting near-duplicates, outliers and their combination,
on hand-made graphs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import cartography, evidence, noise
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


def test_conflicting_duplicates_flag_only_the_less_supported_member():
    # issue 4: one of two conflicting labels is right, so flagging both halves the precision
    labels = np.array([0, 1, 1, 0, 0])
    idx = np.array([[1, 2], [0, 2], [1, 0], [4, 0], [3, 0]])
    sims = np.array([[0.99, 0.5], [0.99, 0.9], [0.99, 0.5], [0.99, 0.1], [0.99, 0.1]], dtype=np.float32)
    labels[4] = 1  # 3-4 is a second conflicting pair, tied below
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5], [0.4, 0.6], [0.6, 0.4]])
    res = evidence.find_conflicting_duplicates(labels, sims, idx, probs=probs)
    # 0 (p=.8) vs 1 (p=.7): 1 is flagged; 1-2 same label; 3 (p=.4) vs 4 (p=.4): a tie flags both
    assert res.is_issue.tolist() == [False, True, False, True, True]
    assert res.partner.tolist() == [-1, 0, -1, 4, 3]
    both = evidence.find_conflicting_duplicates(labels, sims, idx)
    assert both.is_issue.tolist() == [True, True, False, True, True]
    with pytest.raises(BadInputError, match=r"'probs' must have shape \(5, n_classes > max label\)"):
        evidence.find_conflicting_duplicates(labels, sims, idx, probs=probs[:4])


def test_choose_probs_scores_and_rules():
    labels = np.array([0, 0, 1, 1, -1])
    sharp = np.array([[0.99, 0.01], [0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.5, 0.5]])  # 3/4 right, one confident miss
    soft = np.array([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.4, 0.6], [0.5, 0.5]])  # 3/4 right, never sure
    by_acc = evidence.choose_probs(labels, {"sharp": sharp, "soft": soft})
    assert by_acc.by == "accuracy" and by_acc.chosen == "soft"  # tie at 0.75: the likelihood breaks it
    assert evidence.choose_probs(labels, {"soft": soft, "sharp": sharp}).chosen == "soft"  # whatever the order
    assert evidence.choose_probs(labels, {"a": soft, "b": soft.copy()}).chosen == "a"  # a full tie: the first
    assert by_acc.scores["sharp"]["accuracy"] == by_acc.scores["soft"]["accuracy"] == 0.75
    ll_sharp = (3 * np.log(0.99) + np.log(0.01)) / 4
    ll_soft = (3 * np.log(0.6) + np.log(0.4)) / 4
    assert by_acc.scores["sharp"]["log_likelihood"] == pytest.approx(ll_sharp)
    assert by_acc.scores["soft"]["log_likelihood"] == pytest.approx(ll_soft)
    assert evidence.choose_probs(labels, {"sharp": sharp, "soft": soft}, by="log_likelihood").chosen == "soft"
    zero = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])  # an exact 0 is clipped at 1e-6
    assert evidence.choose_probs(labels, {"zero": zero}).scores["zero"]["log_likelihood"] == pytest.approx(np.log(1e-6) / 4)
    with pytest.raises(BadInputError, match="'by' must be one of 'accuracy', 'log_likelihood'"):
        evidence.choose_probs(labels, {"sharp": sharp}, by="f1")
    with pytest.raises(BadInputError, match="'candidates' must hold at least one"):
        evidence.choose_probs(labels, {})


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


def test_combine_scored_from_confident_learning_equals_combine_evidence_on_the_probs():
    labels = np.array([0, 0, 1, 1, 0, -1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.8, 0.2], [0.4, 0.6]])
    flags = np.array([False, True, False, True, False, False])
    cl = noise.confident_learning(labels, probs)
    predicted = np.where(cl.predicted >= 0, cl.predicted, probs.argmax(axis=1))  # the unlabeled row's suggestion too
    got = evidence.combine_scored(labels, cl.self_confidence, predicted, label_issues=flags)
    want = evidence.combine_evidence(labels, probs=probs, label_issues=flags)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert got.suggested_label.tolist() == [0, 1, 1, 0, 0, 1] and got.rank.tolist() == [5, 1, 3, 2, 4, -1]
    with pytest.raises(BadInputError, match="'self_confidence' and 'predicted' must have 6 rows"):
        evidence.combine_scored(labels, cl.self_confidence[:5], predicted)


def test_combine_evidence_without_probs_keeps_the_given_label():
    res = evidence.combine_evidence(np.array([0, 1]), label_issues=np.array([False, True]))
    assert res.suggested_label.tolist() == [0, 1] and res.rank.tolist() == [2, 1]
    np.testing.assert_allclose(res.label_quality, [1.0, 1.0])
    with pytest.raises(BadInputError, match="'label' evidence must have 2 rows"):
        evidence.combine_evidence(np.array([0, 1]), label_issues=np.array([True]))


def test_combine_evidence_with_dynamics_and_doubted_outliers():
    # issue 4: outliers count only when the label is doubted; hard-to-learn dynamics are issues
    labels = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7]])
    dyn = cartography.dynamics_evidence(np.array([0.9, 0.05, 0.9, np.nan, 0.9, 0.9]),
                                        np.array([0.1, 0.02, 0.1, np.nan, 0.1, 0.1]))
    # score of row 1 = (1 - 0.05) * (1 - 0.02 / 0.5) = 0.912; rows 0, 2, 4, 5: 0.1 * 0.8 = 0.08
    out = evidence.Outliers(np.zeros(6, np.float32), np.array([0, 0, 0, 0.6, 0.7, 0], np.float32),
                            np.array([False, False, False, True, True, False]))
    res = evidence.combine_evidence(labels, probs=probs, label_issues=np.array([False, False, False, False, False, True]),
                                    outliers=out, dynamics=dyn, doubted=np.array([False, False, False, True, False, False]))
    np.testing.assert_allclose(res.label_quality, [0.9, 0.088, 0.8, 0.4, 0.3, 0.7], rtol=1e-5)
    assert res.issue_type.tolist() == [None, "dynamics", None, "outlier", "outlier", "label"]
    assert res.is_issue.tolist() == [False, True, False, True, False, True]  # row 4: an outlier alone
    assert res.rank.tolist() == [6, 1, 5, 2, 4, 3]
    plain = evidence.combine_evidence(labels, probs=probs, outliers=out)  # no doubt given: no outlier is an issue
    assert not plain.is_issue.any() and plain.issue_type.tolist()[3:5] == ["outlier", "outlier"]
    with pytest.raises(BadInputError, match="'doubted' must have 6 rows"):
        evidence.combine_evidence(labels, outliers=out, doubted=np.array([True]))
