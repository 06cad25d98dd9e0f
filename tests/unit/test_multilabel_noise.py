"""labelkit.multilabel_noise: one-vs-rest confident learning against hand-made answers and the
cleanlab 2.9 multilabel oracle (issue 16)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from labelkit import multilabel_noise as mln
from labelkit import noise
from labelkit.errors import BadInputError

FILTERS = [m.value for m in noise.FilterMethod]
SCORES = [m.value for m in noise.QualityScore]


def _noisy(seed: int, n: int, k: int, *, dtype=np.float64, quantise: float | None = None, empty_class: bool = False):
    """Sigmoids of logits around a true label set; 8% of the n*k binary labels flipped."""
    rng = np.random.default_rng(seed)
    true = (rng.random((n, k)) < 0.3).astype(np.int8)
    logits = rng.normal(size=(n, k)) * 1.5 + np.where(true == 1, 1.5, -1.5)
    p = 1 / (1 + np.exp(-logits))
    if quantise:  # coarse values: many exact ties in thresholds and scores
        p = np.round(p / quantise) * quantise
    y = true.copy()
    flip = rng.random((n, k)) < 0.08
    y[flip] = 1 - y[flip]
    if empty_class:  # a class nobody carries
        y[:, -1] = 0
    return y, p.astype(dtype)


def _as_lists(y: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(r).tolist() for r in y]


@pytest.fixture
def cl():
    pytest.importorskip("cleanlab")
    from cleanlab.multilabel_classification import filter as ml_filter
    from cleanlab.multilabel_classification import rank as ml_rank

    with warnings.catch_warnings():  # cleanlab warns about small classes; not under test here
        warnings.simplefilter("ignore")
        yield ml_filter, ml_rank


# ----------------------------------------------------------------------------- hand-made answers


def test_a_flipped_label_is_one_to_add_and_one_to_remove():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [0, 1]])
    p = np.array([[.9, .1], [.8, .2], [.1, .9], [.2, .8], [.1, .9], [.2, .9]])
    r = mln.detect_multilabel_issues(y, p)
    assert r.is_issue.tolist() == [False, False, False, False, True, False]
    assert r.to_add.tolist()[4] == [False, True] and r.to_remove.tolist()[4] == [True, False]
    assert not r.to_add[[0, 1, 2, 3, 5]].any() and not r.to_remove[[0, 1, 2, 3, 5]].any()
    assert r.ranked.tolist() == [4]
    assert r.num_label_issues == 1


def test_a_missing_label_is_to_add_only():
    # Sample 4 carries class 0 but clearly also class 1 (p=0.95) like samples 2 and 3.
    y = np.array([[1, 0], [1, 0], [1, 1], [1, 1], [1, 0], [0, 1], [1, 0]])
    p = np.array([[.9, .1], [.9, .1], [.9, .9], [.8, .9], [.9, .95], [.1, .9], [.9, .2]])
    r = mln.detect_multilabel_issues(y, p)
    assert np.flatnonzero(r.is_issue).tolist() == [4]
    assert r.to_add[4].tolist() == [False, True] and not r.to_remove.any()


def test_class_quality_is_p_where_carried_and_one_minus_p_where_not():
    q = mln.class_label_quality(np.array([[0, 1], [1, 1]]), np.array([[0.2, 0.9], [0.4, 0.7]]))
    np.testing.assert_allclose(q, [[0.8, 0.9], [0.4, 0.7]])


def test_ema_pooling_closed_form():
    # sorted high to low (0.9, 0.9, 0.3): 0.9 -> 0.8*0.9 + 0.2*0.9 = 0.9 -> 0.8*0.3 + 0.2*0.9 = 0.42
    np.testing.assert_allclose(mln.pool_scores(np.array([[0.3, 0.9, 0.9]])), [0.42])
    np.testing.assert_allclose(mln.pool_scores(np.array([[0.3, 0.9, 0.9]]), alpha=0.5), [0.6])
    # softmin weighs the worst class most; all equal -> that value
    np.testing.assert_allclose(mln.pool_scores(np.array([[0.5, 0.5]]), pooling="softmin"), [0.5])
    assert mln.pool_scores(np.array([[0.1, 0.9]]), pooling="softmin")[0] < 0.11


def test_unlabeled_rows_are_left_out_and_scored_nan():
    y, p = _noisy(0, 120, 3)
    y_unl = y.copy()
    y_unl[::4] = -1
    keep = np.flatnonzero(y_unl[:, 0] >= 0)
    r_all = mln.detect_multilabel_issues(y[keep], p[keep])
    r = mln.detect_multilabel_issues(y_unl, p)
    assert np.isnan(r.label_quality[::4]).all() and not r.is_issue[::4].any() and not r.to_add[::4].any()
    np.testing.assert_array_equal(r.is_issue[keep], r_all.is_issue)
    np.testing.assert_array_equal(r.to_add[keep], r_all.to_add)
    np.testing.assert_array_equal(r.ranked, keep[r_all.ranked])


def test_an_empty_label_set_is_a_labeled_sample_with_no_class():
    y = np.array([[0, 0], [1, 0], [0, 1], [1, 0], [0, 1], [0, 0]])
    p = np.array([[.1, .1], [.9, .1], [.1, .9], [.8, .2], [.2, .8], [.9, .1]])
    r = mln.detect_multilabel_issues(y, p)
    assert np.flatnonzero(r.is_issue).tolist() == [5] and r.to_add[5].tolist() == [True, False]


@pytest.mark.parametrize("labels, probs, match", [
    (np.array([0, 1]), np.ones((2, 2)) / 2, "2-D indicator matrix"),
    (np.array([[0, 2]]), np.ones((1, 2)) / 2, "must hold 0/1"),
    (np.array([[-1, 0], [1, 0]]), np.ones((2, 2)) / 2, "row 0 mixes -1 with 0/1"),
    (np.array([[0, 1]]), np.ones((1, 3)) / 2, r"'probs' must have shape \(1, 2\)"),
    (np.array([[0, 1]]), np.array([[0.5, 1.5]]), r"must lie in \[0, 1\]"),
    (np.array([[-1, -1]]), np.ones((1, 2)) / 2, "at least one labeled row"),
])
def test_bad_inputs_are_one_line_errors(labels, probs, match):
    with pytest.raises(BadInputError, match=match):
        mln.detect_multilabel_issues(labels, probs)


def test_bad_options_are_errors():
    y, p = _noisy(1, 50, 2)
    with pytest.raises(BadInputError, match="'method' must be one of"):
        mln.detect_multilabel_issues(y, p, method="nope")
    with pytest.raises(BadInputError, match="'num_to_remove_per_class' must have 2 entries"):
        mln.detect_multilabel_issues(y, p, num_to_remove_per_class=np.array([1, 2, 3]))
    with pytest.raises(BadInputError, match="'alpha' must be in"):
        mln.detect_multilabel_issues(y, p, alpha=2.0)


# ----------------------------------------------------------------------------- the cleanlab oracle


@pytest.mark.parametrize("seed, dtype, quantise, empty", [
    (0, np.float64, None, False), (1, np.float32, None, False), (2, np.float64, 0.05, False), (3, np.float32, 0.1, True),
])
@pytest.mark.parametrize("method", FILTERS)
def test_mask_and_ranking_equal_cleanlab(cl, seed, dtype, quantise, empty, method):
    ml_filter, _ = cl
    y, p = _noisy(seed, 150 + 20 * seed, 3 + seed, dtype=dtype, quantise=quantise, empty_class=empty)
    labels = _as_lists(y)
    if empty and method == "predicted_neq_given":
        # cleanlab refuses a class no sample carries here ("Labels must contain at least 2
        # classes"); labelkit flags the samples that look like they carry it.
        r = mln.detect_multilabel_issues(y, p, method=method)
        np.testing.assert_array_equal(r.to_add[:, -1], p[:, -1] > 0.5 + 1e-6)
        return
    mask = ml_filter.find_label_issues(labels, p, filter_by=method)
    assert mask.sum() > 0
    for score in SCORES:
        ours = mln.detect_multilabel_issues(y, p, method=method, score_method=score)
        np.testing.assert_array_equal(ours.is_issue, mask)
        ref = ml_filter.find_label_issues(labels, p, filter_by=method, return_indices_ranked_by=score)
        if method.startswith("low_"):
            # cleanlab 2.9 pairs the flagged rows' scores (in row order) with the flagged indices
            # in score order, so its ranking there is not sorted by quality; ours is. Same set.
            assert sorted(ref.tolist()) == sorted(ours.ranked.tolist())
            assert np.all(np.diff(ours.label_quality[ours.ranked]) >= 0)
        else:
            np.testing.assert_array_equal(ours.ranked, ref)


def test_per_class_flags_equal_cleanlab(cl):
    ml_filter, _ = cl
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    for seed in range(3):
        y, p = _noisy(10 + seed, 200, 4)
        per_class = find_multilabel_issues_per_class(_as_lists(y), p)
        ours = mln.detect_multilabel_issues(y, p)
        np.testing.assert_array_equal(ours.to_add | ours.to_remove, per_class)  # (N, K) mask
        assert not (ours.to_add & (y == 1)).any() and not (ours.to_remove & (y == 0)).any()


@pytest.mark.parametrize("options", [
    {"frac_noise": 0.5}, {"min_examples_per_class": 40}, {"num_to_remove_per_class": [3, 1, 0, 2]},
])
@pytest.mark.parametrize("method", ["prune_by_noise_rate", "prune_by_class", "both"])
def test_pruning_options_equal_cleanlab(cl, options, method):
    ml_filter, _ = cl
    for seed in (20, 21):
        y, p = _noisy(seed, 200, 4)
        ref = ml_filter.find_label_issues(_as_lists(y), p, filter_by=method, **options)
        ours = mln.find_multilabel_issues(y, p, method=method,
                                          **{k: (np.array(v) if isinstance(v, list) else v) for k, v in options.items()})
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("score", SCORES)
def test_pooled_scores_equal_cleanlab(cl, score):
    _, ml_rank = cl
    for seed, dtype in ((30, np.float64), (31, np.float32)):
        y, p = _noisy(seed, 150, 5, dtype=dtype)
        ref = ml_rank.get_label_quality_scores(_as_lists(y), p, method=score)
        np.testing.assert_array_equal(mln.multilabel_quality_scores(y, p, method=score), ref)
        ref = ml_rank.get_label_quality_scores(_as_lists(y), p, method=score, aggregator_kwargs={"method": "softmin"})
        np.testing.assert_allclose(mln.multilabel_quality_scores(y, p, method=score, pooling="softmin"), ref, rtol=1e-12)
        per = ml_rank.get_label_quality_scores_per_class(_as_lists(y), p, method=score)
        np.testing.assert_array_equal(mln.class_label_quality(y, p, method=score), np.asarray(per).reshape(y.shape))
