"""labelkit.multilabel: one-vs-rest heads, held-out probabilities, per-class thresholds (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import multilabel as ml
from labelkit.errors import BadInputError


def _blobs(seed: int, n: int = 240):
    """Two independent classes, each a direction in 4-D: class k present <=> x_k shifted by +2."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.4).astype(np.int8)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, :2] += 2.0 * y
    return x, y


def test_held_out_probs_separate_independent_classes():
    x, y = _blobs(0)
    p, c = ml.cross_val_multilabel_probs(x, y, seed=0)
    assert c in ml.C_GRID
    assert p.shape == y.shape and p.dtype == np.float32
    # each class is read from its own feature: held-out accuracy per class well above chance
    acc = ((p >= 0.5) == (y == 1)).mean(axis=0)
    assert (acc > 0.8).all()


def test_unlabeled_rows_get_the_full_fit_and_labeled_rows_stay_held_out():
    x, y = _blobs(1)
    y_unl = y.copy()
    y_unl[-40:] = -1
    p, c = ml.cross_val_multilabel_probs(x, y_unl, seed=3, C=1.0)
    full = ml.sigmoid_heads_probs(x[:-40], y[:-40], C=1.0)
    np.testing.assert_allclose(p[-40:], ml.sigmoid_heads_probs(x, y_unl, rows=np.arange(200, 240), C=1.0), atol=1e-6)
    # held-out probabilities are not the in-sample fit
    assert not np.allclose(p[:200], full)


def test_zero_weight_labels_do_not_move_the_fit():
    x, y = _blobs(2)
    w = np.ones(y.shape)
    corrupt = y.copy()
    corrupt[:60, 0] = 1 - corrupt[:60, 0]  # wrong labels, given no weight
    w[:60, 0] = 0.0
    a = ml.sigmoid_heads_probs(x, y, C=1.0, weights=w)
    b = ml.sigmoid_heads_probs(x, corrupt, C=1.0, weights=w)
    np.testing.assert_allclose(a, b, atol=1e-4)
    c = ml.sigmoid_heads_probs(x, corrupt, C=1.0)  # the same wrong labels, trusted, do move it
    assert np.abs(c[:, 0] - a[:, 0]).max() > 0.05


def test_thresholds_f1_peak_and_target_precision():
    y = np.array([[1], [1], [0], [1], [0], [0]])
    p = np.array([[0.9], [0.8], [0.7], [0.6], [0.3], [0.1]])
    t = ml.choose_thresholds(y, p, rule="f1")
    # cuts: 0.9 (P1 R1/3), 0.8 (1, 2/3, F1 .8), 0.7 (2/3, 2/3), 0.6 (3/4, 1, F1 .857) -> 0.6
    assert t.value.tolist() == [0.6] and t.reached.tolist() == [True]
    t = ml.choose_thresholds(y, p, target_precision=0.95)
    assert t.value.tolist() == [0.8] and t.precision.tolist() == [1.0]
    t = ml.choose_thresholds(np.array([[0], [1]]), np.array([[0.9], [0.1]]), target_precision=0.9)
    assert t.reached.tolist() == [False] and t.value.tolist() == [0.9]


def test_expected_f1_cut_reads_the_probabilities_not_the_labels():
    p = np.array([[0.9], [0.6], [0.4], [0.1]])
    # E[F1] of predicting the top n: 2 sum_{i<=n} p_i / (n + 2.0) = .60, .75, .76, .67 -> the top 3
    for y in (np.array([[1], [1], [0], [0]]), np.array([[0], [0], [1], [1]])):
        assert ml.choose_thresholds(y, p).value.tolist() == [0.4]
    t = ml.choose_thresholds(np.array([[1], [1], [0], [0]]), p)
    assert t.precision.tolist() == [2 / 3] and t.recall.tolist() == [1.0]  # measured against the labels


def test_a_class_with_no_positives_keeps_the_default_cut():
    t = ml.choose_thresholds(np.array([[0, 1], [0, 0]]), np.array([[0.2, 0.9], [0.1, 0.2]]), rule="f1")
    assert t.value[0] == 0.5 and np.isnan(t.precision[0])


def test_pseudolabels_follow_trust_and_target():
    x, y = _blobs(4)
    y_unl = y.copy()
    y_unl[-60:] = -1
    r = ml.multilabel_pseudolabels(x, y_unl, seed=0)
    f1 = 2 * (r.label_sets[-60:] & (y[-60:] == 1)).sum() / (r.label_sets[-60:].sum() + (y[-60:] == 1).sum())
    assert f1 > 0.8 and r.accepted.all()
    strict = ml.multilabel_pseudolabels(x, y_unl, seed=0, target_precision=1.0)
    assert (strict.thresholds.value >= r.thresholds.value).all()
    assert strict.accepted.tolist() == (~(strict.label_sets & ~strict.thresholds.reached)).all(axis=1).tolist()


def test_label_issues_find_flipped_labels():
    x, y = _blobs(5, n=300)
    given = y.copy()
    flip = np.zeros(y.shape, bool)
    flip[np.random.default_rng(0).choice(300, 20, replace=False), 0] = True
    given[flip] = 1 - given[flip]
    issues, probs, _ = ml.multilabel_label_issues(x, given, seed=0)
    found = issues.to_add | issues.to_remove
    assert (found & flip).sum() >= 14  # most of the 20 flips
    assert issues.is_issue.sum() < 60


def test_jaccard_distance_is_the_share_of_wrong_labels():
    pred = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    given = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0]])
    # {a,b} vs {a}: 1 of 2; both empty: 0; disjoint: 1; {a,b,c} vs {a,b,d}: 2 of 4; {} vs {c}: 1
    assert ml.jaccard_distance(pred, given).tolist() == [0.5, 0.0, 1.0, 0.5, 1.0]


def test_set_confidence_is_one_minus_the_expected_jaccard_distance():
    import itertools

    p = np.array([[0.8, 0.3], [0.1, 0.2], [1.0, 0.0], [0.5, 0.5]])
    sets = np.array([[1, 0], [0, 0], [1, 0], [1, 1]], dtype=bool)
    # {a} with p (.8, .3): wrong when a is missing (.2, loss 1), half wrong when b is added (.8 * .3 * .5):
    # E = .32; {} with (.1, .2): loss 1 unless the truth is empty (.72); certain; {a,b} at .5: E = 1/4 + 1/4 * 1 = .5
    np.testing.assert_allclose(ml.set_confidence(p, sets), [0.68, 0.72, 1.0, 0.5], atol=1e-12)
    # closed-form oracle: enumerate every truth of 5 classes
    rng = np.random.default_rng(0)
    p = rng.random((6, 5))
    sets = rng.random((6, 5)) < 0.5
    sets[0] = False
    want = np.zeros(6)
    for truth in itertools.product([0, 1], repeat=5):
        t = np.array(truth, dtype=bool)
        w = np.where(t, p, 1 - p).prod(axis=1)
        want += w * ml.jaccard_distance(sets, np.tile(t, (6, 1)))
    np.testing.assert_allclose(ml.set_confidence(p, sets), 1 - want, atol=1e-12)


def test_unlabeled_by_fold_scores_each_unlabeled_row_by_exactly_one_folds_heads():
    x, y = _blobs(6, n=150)
    y[-50:] = -1
    p, c = ml.cross_val_multilabel_probs(x, y, n_folds=3, seed=2, C=1.0, unlabeled_by_fold=True)
    unl, labeled = np.arange(100, 150), np.arange(100)
    fold_of = ml.unlabeled_folds(50, 3, 2)
    assert set(fold_of.tolist()) == {0, 1, 2} and fold_of.tolist() == ml.unlabeled_folds(50, 3, 2).tolist()
    lab_fold = ml._folds(100, 3, 2)
    xt, yt, wt = ml._tensors(x, y, None)
    by_fold = np.zeros((3, 50, 2), np.float32)
    for f in range(3):  # each fold's heads, fitted as the cross-validation fits them
        ml._predict(ml._fit_on(xt, yt, wt, labeled[lab_fold != f], ml.HeadConfig(C=1.0)), xt, unl, by_fold[f], np.arange(50))
    match = np.isclose(p[unl][None], by_fold, atol=1e-6).all(axis=2)  # (fold, row): equals that fold's prediction
    assert (match.argmax(axis=0) == fold_of).all() and match[fold_of, np.arange(50)].all()
    assert not np.allclose(p[unl], ml.sigmoid_heads_probs(x, y, rows=unl, C=1.0), atol=1e-3)  # not the fit on every label


def _calibrated(rng, n: int, k: int = 3, a: float = 0.1):
    """Per-class probabilities Beta(a, a) (mostly near 0 or 1), the truth drawn from them: calibrated, independent."""
    p = rng.beta(a, a, (n, k))
    return p, (rng.random((n, k)) < p).astype(np.int8)


def test_certified_label_sets_keep_their_error_at_the_stated_rate():
    # Calibrated independent classes: held-out rows and the pool drawn alike, as unlabeled_by_fold
    # makes them. The realised mean Jaccard distance of the accepted pool may exceed the target
    # in at most delta = 10% of the draws (0 of 100 with these settings; 30 here for time).
    rng = np.random.default_rng(0)
    violations = certified = 0
    draws = 30
    for _ in range(draws):
        p, truth = _calibrated(rng, 2000)
        given = truth.copy()
        given[1000:] = -1
        sets = p >= 0.5
        r = ml.MultilabelPseudolabels(p.astype(np.float32), sets, np.ones(2000, bool), None, 1.0, fold_scored=True)
        rows = np.arange(1000, 2000)
        acc, reason, scores, cert = ml.certify_label_sets(given, r, rows, max_error=0.1, error_confidence=0.9)
        assert cert.method == "hoeffding_bentkus"  # fractional losses
        np.testing.assert_allclose(scores, ml.set_confidence(p[rows].astype(np.float32), sets[rows]))
        if cert.certified:
            certified += 1
            assert acc.tolist() == (scores >= cert.threshold).tolist() and 0 < acc.sum() < 1000
            assert set(reason[~acc]) <= {"below_threshold"} and all(v is None for v in reason[acc])
            violations += ml.jaccard_distance(sets[rows][acc], truth[rows][acc]).mean() > 0.1
        else:
            assert not acc.any() and set(reason) == {"uncertified"}
    assert certified >= 0.9 * draws
    assert violations <= 0.1 * draws


def test_certify_label_sets_refuses_rows_scored_by_the_final_fit_and_impossible_targets_accept_nothing():
    rng = np.random.default_rng(1)
    p, truth = _calibrated(rng, 300)
    given = truth.copy()
    given[200:] = -1
    r = ml.MultilabelPseudolabels(p.astype(np.float32), p >= 0.5, np.ones(300, bool), None, 1.0)
    with pytest.raises(BadInputError, match="unlabeled_by_fold=True"):
        ml.certify_label_sets(given, r, np.arange(200, 300), max_error=0.1, error_confidence=0.9)
    r = ml.MultilabelPseudolabels(p.astype(np.float32), p >= 0.5, np.ones(300, bool), None, 1.0, fold_scored=True)
    with pytest.raises(BadInputError, match="rows of unlabeled samples"):
        ml.certify_label_sets(given, r, np.arange(100, 300), max_error=0.1, error_confidence=0.9)
    acc, reason, _, cert = ml.certify_label_sets(given, r, np.arange(200, 300), max_error=0.001, error_confidence=0.9)
    assert not cert.certified and not acc.any() and set(reason) == {"uncertified"}
    assert cert.best_bound > 0.001 and cert.n_calibration == 200


@pytest.mark.parametrize("call, match", [
    (lambda: ml.cross_val_multilabel_probs(np.ones((3, 2)), np.ones((3, 2)), n_folds=5), "at least n_folds=5 labeled rows"),
    (lambda: ml.cross_val_multilabel_probs(np.ones((3, 2)), np.ones((2, 2))), "one row per embedding"),
    (lambda: ml.cross_val_multilabel_probs(np.ones((6, 2)), np.ones((6, 2)), C=-1.0), "'C' must be > 0"),
    (lambda: ml.choose_thresholds(np.ones((2, 1)), np.ones((2, 1)), target_precision=0.0), "'target_precision' must be in"),
    (lambda: ml.label_sets(np.ones((2, 2)), [0.5]), "one value per class"),
    (lambda: ml.choose_thresholds(np.ones((2, 1)), np.ones((2, 1)), rule="mean"), "'rule' must be one of"),
])
def test_bad_inputs(call, match):
    with pytest.raises(BadInputError, match=match):
        call()
