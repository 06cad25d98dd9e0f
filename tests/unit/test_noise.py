"""labelkit.noise: confident learning against hand-made answers and the cleanlab 2.9 oracle,
and streaming == in-memory."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from labelkit import noise
from labelkit.errors import BadInputError

FILTERS = [m.value for m in noise.FilterMethod]
SCORES = [m.value for m in noise.QualityScore]
LABEL_ERRORS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cleanlab-label-errors"


def _noisy(seed: int, n: int, k: int, *, dtype=np.float32, missing: int | None = None, quantise: float | None = None):
    """Softmax of Gaussian logits around a true class, 15% of labels flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 1.5
    logits[np.arange(n), true] += 3.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if quantise:  # coarse values: many exact ties in thresholds, margins and scores
        p = np.round(p / quantise) * quantise + 1e-9
        p /= p.sum(axis=1, keepdims=True)
    labels = true.copy()
    flip = rng.random(n) < 0.15
    labels[flip] = rng.integers(0, k, flip.sum())
    if missing is not None:
        labels[labels == missing] = (missing + 1) % k
    return labels, p.astype(dtype)


@pytest.fixture
def cl():
    pytest.importorskip("cleanlab")
    import cleanlab.count
    import cleanlab.filter
    import cleanlab.rank

    with warnings.catch_warnings():  # cleanlab warns about small classes; not under test here
        warnings.simplefilter("ignore")
        yield cleanlab


# ----------------------------------------------------------------------------- hand-made answers


def test_thresholds_are_class_means_and_an_empty_class_is_unreachable():
    labels = np.array([0, 0, 1])
    probs = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    np.testing.assert_allclose(noise.confident_thresholds(labels, probs), [0.7, 0.7, 2.0])


def test_confident_joint_counts_by_hand():
    # t = [0.7, 0.7]; row 1 (label 0) has p_1 = 0.75 >= t_1 only -> counted at C[0][1]
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.25, 0.75], [0.95, 0.05], [0.1, 0.9], [0.5, 0.5]])
    cj = noise.confident_joint(labels, probs, calibrate=False)
    np.testing.assert_array_equal(cj, [[2, 1], [0, 1]])
    assert noise.num_label_issues(labels, probs) == 1
    assert noise.find_label_issues(labels, probs, method="confident_learning").tolist() == [False, True, False, False, False]


def test_label_within_1e6_of_the_argmax_is_never_an_issue():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    for method in FILTERS:
        assert not noise.find_label_issues(labels, probs, method=method)[0]


def test_unlabeled_rows_are_left_out_and_scored_nan():
    labels = np.array([0, -1, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.95, 0.05], [0.95, 0.05], [0.3, 0.7]])
    res = noise.detect_label_issues(labels, probs)
    assert res.is_issue.tolist() == [False, False, False, True, False, False]
    assert np.isnan(res.label_quality[1]) and res.label_quality[3] == pytest.approx(0.05)
    assert res.ranked.tolist() == [3]


def test_scores_by_hand():
    labels = np.array([0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(noise.label_quality_scores(labels, probs), [0.7, 0.3])
    np.testing.assert_allclose(noise.label_quality_scores(labels, probs, method="normalized_margin"), [0.75, 0.35])
    h = -(probs * np.log(probs)).sum(axis=1) / np.log(3)
    r = h / probs[[0, 1], labels]
    np.testing.assert_allclose(noise.label_quality_scores(labels, probs, method="confidence_weighted_entropy"), np.log1p(r) / r, rtol=1e-6)


def test_rank_label_issues_orders_by_score():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.3, 0.7], [0.1, 0.9], [0.6, 0.4], [0.2, 0.8]])
    assert noise.rank_label_issues(np.array([True, True, True, False]), labels, probs).tolist() == [1, 0, 2]


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "prune_by_magic"}, "'method' must be one of"),
    ({"score_method": "entropy"}, "'score_method' must be one of"),
    ({"frac_noise": 0.0}, r"'frac_noise' must be in \(0, 1\]"),
    ({"min_examples_per_class": -1}, "'min_examples_per_class' must be an integer >= 0"),
    ({"method": "confident_learning", "num_to_remove_per_class": [1, 1]}, "apply only to the pruning methods"),
    ({"num_to_remove_per_class": [1, 1, 1]}, "'num_to_remove_per_class' must have 2 entries"),
])
def test_bad_options_raise(kwargs, match):
    labels, probs = np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    with pytest.raises(BadInputError, match=match):
        noise.detect_label_issues(labels, probs, **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(BadInputError, match="'labels' must be < n_classes=2. Got 2"):
        noise.find_label_issues(np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(BadInputError, match=r"'probs' must have shape \(3, n_classes\)"):
        noise.find_label_issues(np.array([0, 1, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(BadInputError, match="rows must sum to 1"):
        noise.find_label_issues(np.array([0, 1]), np.array([[0.9, 0.9], [0.5, 0.5]]))


def test_single_class_has_no_issues():
    probs = np.ones((5, 1))
    res = noise.detect_label_issues(np.zeros(5, dtype=int), probs)
    assert not res.is_issue.any() and res.ranked.size == 0
    np.testing.assert_array_equal(res.confident_joint, [[5]])


# ----------------------------------------------------------------------------- cleanlab oracle

CASES = [  # seed, n, k, dtype, missing class, quantisation
    (0, 3000, 5, np.float32, None, None),
    (1, 3000, 5, np.float64, 2, None),
    (2, 2000, 2, np.float32, None, None),
    (3, 4000, 10, np.float32, 3, None),
    (4, 3000, 8, np.float32, None, 0.05),
    (5, 3000, 3, np.float64, 0, 0.1),
]


def _assert_same_as_cleanlab(cl, labels, probs, methods=FILTERS):
    assert np.array_equal(noise.confident_thresholds(labels, probs), cl.count.get_confident_thresholds(labels, probs))
    for calibrate in (True, False):
        ours = noise.confident_joint(labels, probs, calibrate=calibrate)
        np.testing.assert_array_equal(ours, cl.count.compute_confident_joint(labels, probs, calibrate=calibrate))
    assert noise.num_label_issues(labels, probs) == cl.count.num_label_issues(labels, probs)
    for method in methods:
        expected = cl.filter.find_label_issues(labels, probs, filter_by=method, n_jobs=1)
        np.testing.assert_array_equal(noise.find_label_issues(labels, probs, method=method), expected, err_msg=method)


@pytest.mark.parametrize("seed, n, k, dtype, missing, quantise", CASES)
def test_same_as_cleanlab_on_random_inputs(cl, seed, n, k, dtype, missing, quantise):
    labels, probs = _noisy(seed, n, k, dtype=dtype, missing=missing, quantise=quantise)
    _assert_same_as_cleanlab(cl, labels, probs)
    np.testing.assert_array_equal(noise.estimate_joint(labels, probs), cl.count.estimate_joint(labels, probs))
    ours = noise.estimate_noise_matrices(labels, probs)
    theirs = cl.count.estimate_py_and_noise_matrices_from_probabilities(labels, probs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed, n, k, dtype, missing, quantise", CASES)
def test_scores_and_ranking_same_as_cleanlab(cl, seed, n, k, dtype, missing, quantise):
    labels, probs = _noisy(seed, n, k, dtype=dtype, missing=missing, quantise=quantise)
    for method in SCORES:
        expected = cl.rank.get_label_quality_scores(labels, probs, method=method)
        ours = noise.label_quality_scores(labels, probs, method=method)
        ranked = noise.detect_label_issues(labels, probs, score_method=method).ranked
        theirs = cl.filter.find_label_issues(labels, probs, return_indices_ranked_by=method, n_jobs=1)
        if method == "confidence_weighted_entropy" and dtype == np.float32:
            # the reference's float32 log is glibc's logf; ours differs by an ulp at most
            np.testing.assert_allclose(ours, expected, rtol=1e-5)
            assert np.array_equal(np.sort(ranked), np.sort(theirs))
            assert np.all(np.diff(expected[ranked]) >= -1e-5)
        else:
            assert ours.dtype == expected.dtype
            np.testing.assert_array_equal(ours, expected)
            np.testing.assert_array_equal(ranked, theirs)


def test_single_class_same_as_cleanlab(cl):
    labels, probs = np.zeros(6, dtype=int), np.ones((6, 1))
    for method in ["prune_by_noise_rate", "prune_by_class", "both", "confident_learning"]:
        expected = cl.filter.find_label_issues(labels, probs, filter_by=method, n_jobs=1)
        np.testing.assert_array_equal(noise.find_label_issues(labels, probs, method=method), expected)


def test_same_as_cleanlab_with_1000_classes(cl):
    labels, probs = _noisy(7, 5000, 1000)
    _assert_same_as_cleanlab(cl, labels, probs, methods=["prune_by_noise_rate", "prune_by_class", "both", "confident_learning"])


@pytest.mark.parametrize("kwargs", [
    {"frac_noise": 0.5},
    {"min_examples_per_class": 300},
    {"num_to_remove_per_class": [40, 10, 0, 25, 5]},
    {"method": "both", "frac_noise": 0.3},
    {"method": "prune_by_class", "num_to_remove_per_class": [5, 5, 5, 5, 5]},
])
def test_pruning_options_same_as_cleanlab(cl, kwargs):
    labels, probs = _noisy(11, 2500, 5)
    kw = dict(kwargs)
    method = kw.pop("method", "prune_by_noise_rate")
    cl_kw = {"min_examples_per_class" if k == "min_examples_per_class" else k: v for k, v in kw.items()}
    expected = cl.filter.find_label_issues(labels, probs, filter_by=method, n_jobs=1, **cl_kw)
    np.testing.assert_array_equal(noise.find_label_issues(labels, probs, method=method, **kw), expected)


def test_unlabeled_rows_match_cleanlab_on_the_labeled_subset(cl):
    labels, probs = _noisy(12, 2000, 4)
    given = labels.copy()
    given[::7] = -1
    res = noise.detect_label_issues(given, probs)
    keep = given >= 0
    expected = cl.filter.find_label_issues(labels[keep], probs[keep], n_jobs=1)
    np.testing.assert_array_equal(res.is_issue[keep], expected)
    assert not res.is_issue[~keep].any()
    ranked = cl.filter.find_label_issues(labels[keep], probs[keep], n_jobs=1, return_indices_ranked_by="self_confidence")
    np.testing.assert_array_equal(res.ranked, np.flatnonzero(keep)[ranked])


def _real(name: str):
    d = LABEL_ERRORS / "cross_validated_predicted_probabilities"
    path = d / f"{name}_test_set_pyx.npy"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    probs = np.load(path)
    labels = np.load(LABEL_ERRORS / "original_test_labels" / f"{name}_test_set_original_labels.npy").astype(np.int64)
    if name == "imdb":  # a few entries are 1.00001: clip and renormalise (see SOURCE.md)
        probs = np.clip(probs, 0, 1)
        probs /= probs.sum(axis=1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("name", ["mnist", "cifar10", "20news", "imdb"])
def test_same_as_cleanlab_on_real_label_errors(cl, name):
    labels, probs = _real(name)
    _assert_same_as_cleanlab(cl, labels, probs)
    for method in SCORES:
        expected = cl.filter.find_label_issues(labels, probs, return_indices_ranked_by=method, n_jobs=1)
        np.testing.assert_array_equal(noise.detect_label_issues(labels, probs, score_method=method).ranked, expected)


def test_real_mnist_recovers_the_validated_errors_reported_in_source_md():
    labels, probs = _real("mnist")
    validated = json.loads((LABEL_ERRORS / "validated_label_errors.json").read_text())["mnist_test_set"]
    flagged = noise.find_label_issues(labels, probs)
    assert flagged.sum() == 15
    assert np.isin(validated["validated_error_indices"], np.flatnonzero(flagged)).sum() == 7


# ----------------------------------------------------------------------------- streaming


def _chunks(labels, probs, sizes):
    bounds = np.cumsum([0, *sizes])
    return lambda: ((labels[a:b], probs[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("method", FILTERS)
@pytest.mark.parametrize("sizes", [[1000] * 3, [1, 7, 992, 1500, 500], [3000]])
def test_streaming_equals_in_memory(method, sizes):
    labels, probs = _noisy(21, 3000, 6, quantise=0.05 if method == "both" else None)
    labels[::11] = -1
    ref = noise.detect_label_issues(labels, probs, method=method, score_method="normalized_margin")
    got = noise.detect_label_issues_streaming(_chunks(labels, probs, sizes), method=method, score_method="normalized_margin")
    for field in ("is_issue", "label_quality", "ranked", "thresholds", "confident_joint"):
        np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
    assert got.num_label_issues == ref.num_label_issues


def test_streaming_rejects_a_source_that_changes_between_passes():
    labels, probs = _noisy(22, 100, 3)
    calls = []

    def chunks():
        calls.append(1)
        lab = labels if len(calls) == 1 else labels[::-1]
        return iter([(lab, probs)])

    with pytest.raises(BadInputError, match="'chunks' must yield the same data on every call"):
        noise.detect_label_issues_streaming(chunks)
    with pytest.raises(BadInputError, match="'chunks' must be a callable"):
        noise.detect_label_issues_streaming([(labels, probs)])
    with pytest.raises(BadInputError, match="at least one"):
        noise.detect_label_issues_streaming(lambda: iter([]))


def test_streaming_reads_the_data_at_most_three_times():
    labels, probs = _noisy(23, 2000, 5, quantise=0.05)
    calls = []

    def chunks():
        calls.append(1)
        return _chunks(labels, probs, [500] * 4)()

    noise.detect_label_issues_streaming(chunks)
    assert 2 <= len(calls) <= 3
    calls.clear()
    noise.detect_label_issues_streaming(chunks, method="confident_learning")
    assert len(calls) == 2


def test_issue17_check_input_false_skips_only_the_value_checks():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 2.0 * np.eye(3)[labels]
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    labels[rng.random(200) < 0.1] = -1
    checked, unchecked = noise.confident_learning(labels, probs), noise.confident_learning(labels, probs, check_input=False)
    assert checked.issues.is_issue.sum() > 0
    for a, b in zip(checked, unchecked):  # every result equal
        if isinstance(a, noise.LabelIssues):
            assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(vars(a).values(), vars(b).values()))
        elif isinstance(a, tuple):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        else:
            assert np.array_equal(a, b, equal_nan=True)
    bad = probs * 0.5  # rows summing to 0.5: refused when checked, not looked at when not
    with pytest.raises(BadInputError, match="rows must sum to 1"):
        noise.confident_learning(labels, bad)
    noise.confident_learning(labels, bad, check_input=False)
    with pytest.raises(BadInputError, match=r"'probs' must have shape \(200, n_classes\)"):  # shapes are still checked
        noise.confident_learning(labels, probs[:-1], check_input=False)


def test_confident_learning_once_equals_each_result_computed_apart():
    """Issue 15: one analysis gives detect-noise's four confident-learning results, unchanged."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2.5 * np.eye(4)[labels]
    flip = rng.random(300) < 0.15
    labels[flip] = rng.integers(0, 4, int(flip.sum()))  # noisy given labels
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels[:5] = -1
    for method, score in (("prune_by_noise_rate", "self_confidence"), ("both", "normalized_margin")):
        cl = noise.confident_learning(labels, probs, method=method, score_method=score)
        apart = noise.detect_label_issues(labels, probs, method=method, score_method=score)
        assert np.array_equal(cl.issues.is_issue, apart.is_issue) and np.array_equal(cl.issues.ranked, apart.ranked)
        assert np.array_equal(cl.issues.label_quality, apart.label_quality, equal_nan=True)
        assert np.array_equal(cl.off_diagonal, noise.detect_label_issues(labels, probs, method="confident_learning").is_issue)
        assert np.array_equal(cl.joint, noise.estimate_joint(labels, probs))
        est = noise.estimate_noise_matrices(labels, probs)
        assert all(np.array_equal(a, b) for a, b in zip(cl.estimates, est))
        # p_{i, y_i} and the argmax of each labeled row, from the same pass; unlabeled rows: NaN, -1
        assert np.array_equal(cl.predicted[5:], probs[5:].argmax(axis=1)) and (cl.predicted[:5] == -1).all()
        assert np.array_equal(cl.self_confidence[5:], probs[np.arange(5, 300), labels[5:]]) and np.isnan(cl.self_confidence[:5]).all()
    assert cl.off_diagonal.sum() > 0 and not cl.off_diagonal[:5].any()
