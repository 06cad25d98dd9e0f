"""labelkit.prototypes: class means, k-means sub-prototypes, clean-sample selection, text fusion,
transductive refinement, scores and diagnostics, on hand-made vectors with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit.errors import BadInputError
from labelkit.knn import knn_graph
from labelkit.prototypes import (
    Prototypes,
    class_prototypes,
    class_scores,
    class_spread,
    confusable_pairs,
    fuse_text,
    knn_agreement,
    refine_transductive,
    select_clean,
    text_prototypes,
)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _protos(vectors, classes, n_classes, support=None, kind="visual"):
    v = _unit(vectors)
    support = np.ones(len(v), np.int64) if support is None else support
    return Prototypes(v, np.array(classes), np.array(support), np.array([kind] * len(v)), n_classes)


def _blob(centre, n, rng, noise=0.05):
    return _unit(np.asarray(centre, float) + noise * rng.standard_normal((n, len(centre))))


def test_two_clusters_give_their_renormalised_means():
    x = _unit([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8], [0.3, 0.3]])
    labels = np.array([0, 0, 1, 1, -1])  # the unlabeled row is ignored
    p = class_prototypes(x, labels, 2)
    np.testing.assert_allclose(p.vectors[0], _unit([1.8, 0.6]), atol=1e-6)
    np.testing.assert_allclose(p.vectors[1], _unit([-0.6, 1.8]), atol=1e-6)
    assert p.classes.tolist() == [0, 1] and p.support.tolist() == [2, 2]
    assert p.kind.tolist() == ["visual", "visual"] and p.n_classes == 2


def test_unnormalised_embeddings_are_normalised_first():
    x = np.array([[10, 0], [0, 1]], np.float32)  # as if (1, 0) and (0, 1)
    p = class_prototypes(x, np.array([0, 0]), 1)
    np.testing.assert_allclose(p.vectors[0], _unit([1, 1]), atol=1e-6)


def test_class_without_labeled_samples_has_no_prototype():
    x = _unit([[1, 0], [0, 1]])
    p = class_prototypes(x, np.array([0, 2]), 3)
    assert p.classes.tolist() == [0, 2]
    assert class_scores(x, p)[0, 1] == -np.inf


def test_kmeans_splits_a_bimodal_class():
    rng = np.random.default_rng(0)
    left, right = _blob([1, 0, 0], 12, rng), _blob([0, 1, 0], 8, rng)
    other = _blob([0, 0, 1], 5, rng)
    x = np.concatenate([left, right, other])
    labels = np.array([0] * 20 + [1] * 5)
    p = class_prototypes(x, labels, 2, n_per_class=2, seed=1)
    c0 = p.classes == 0
    assert p.support[c0].tolist() == [12, 8]  # by decreasing support
    np.testing.assert_allclose(p.vectors[c0][0], _unit(left.mean(0)), atol=1e-5)
    np.testing.assert_allclose(p.vectors[c0][1], _unit(right.mean(0)), atol=1e-5)
    assert p.support[~c0].sum() == 5 and (~c0).sum() == 2
    assert p.index_within_class.tolist() == [0, 1, 0, 1]


def test_class_smaller_than_n_per_class_gets_fewer_prototypes():
    x = _unit([[1, 0], [0, 1], [0.1, 1]])
    p = class_prototypes(x, np.array([0, 1, 1]), 2, n_per_class=3)
    assert (p.classes == 0).sum() == 1 and (p.classes == 1).sum() == 2
    assert p.support.tolist() == [1, 1, 1]


def _two_clusters_with_a_mislabel(rng):
    a, b = _blob([1, 0, 0], 15, rng), _blob([0, 1, 0], 15, rng)
    x = np.concatenate([a, b])
    labels = np.array([0] * 15 + [1] * 15)
    labels[3] = 1  # a sample of the first cluster labeled as the second class
    return x, labels


def test_select_clean_drops_the_mislabeled_point():
    x, labels = _two_clusters_with_a_mislabel(np.random.default_rng(1))
    keep = select_clean(x, labels, k=5)
    assert keep.tolist() == [i != 3 for i in range(30)]


def test_select_clean_uses_a_given_graph():
    x, labels = _two_clusters_with_a_mislabel(np.random.default_rng(2))
    sims, idx = knn_graph(x, 5, device="cpu")
    keep = select_clean(x, labels, sims=sims, idx=idx)
    assert np.flatnonzero(~keep).tolist() == [3]
    agreement = knn_agreement(labels, idx)
    assert agreement[3] == 0 and agreement[0] >= 0.8


def test_select_clean_cuts_a_far_sample_by_distance():
    rng = np.random.default_rng(3)
    x = np.concatenate([_blob([1, 0, 0], 10, rng), _unit([[0.5, 0, 1]]), _blob([0, 1, 0], 10, rng)])
    labels = np.array([0] * 11 + [1] * 10)
    # its labeled neighbours all agree (class 0 is the nearest), so only the distance cut drops it
    assert select_clean(x, labels, k=3, max_mad=None)[10]
    keep = select_clean(x, labels, k=3, max_mad=3.0)
    assert np.flatnonzero(~keep).tolist() == [10]


def test_select_clean_never_drops_a_whole_class():
    rng = np.random.default_rng(4)
    x = np.concatenate([_blob([1, 0], 10, rng), _blob([1, 0], 1, rng)])
    labels = np.array([0] * 10 + [1])  # class 1's only sample sits inside class 0
    keep = select_clean(x, labels, k=3)
    assert keep[10] and keep[:10].all()


def test_select_clean_ignores_unlabeled_rows():
    x = _unit([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])
    keep = select_clean(x, np.array([0, -1, 1, -1]), k=1)
    assert keep.tolist() == [True, False, True, False]


def test_fuse_text_weighted_sum_renormalised():
    p = _protos([[1, 0, 0], [0, 0, 1]], [0, 0], 2, support=[4, 2])
    t = _unit([[0, 1, 0], [-1, 0, 0]])
    f = fuse_text(p, t, weight=0.25)
    np.testing.assert_allclose(f.vectors[0], _unit([0.75, 0.25, 0]), atol=1e-6)
    np.testing.assert_allclose(f.vectors[1], _unit([0, 0.25, 0.75]), atol=1e-6)
    np.testing.assert_allclose(f.vectors[2], t[1], atol=1e-6)  # class 1 had no visual prototype
    assert f.kind.tolist() == ["fused", "fused", "text"] and f.support.tolist() == [4, 2, 0]
    assert f.classes.tolist() == [0, 0, 1]


def test_fuse_text_extreme_weights():
    p = _protos([[1, 0], [0.8, 0.6]], [0, 0], 1, support=[3, 2])
    t = _unit([[0, 1]])
    same = fuse_text(p, t, weight=0.0)
    np.testing.assert_array_equal(same.vectors, p.vectors)
    assert same.kind.tolist() == ["visual", "visual"]
    text = fuse_text(p, t, weight=1.0)
    assert len(text) == 1 and text.kind.tolist() == ["text"] and text.support.tolist() == [5]


def test_zero_shot_when_no_labeled_samples():
    t = _unit([[1, 0], [0, 1], [-1, -1]])
    x = _unit([[0.9, 0.1], [0.2, 0.8]])
    empty = class_prototypes(x, np.array([-1, -1]), 3)
    assert len(empty) == 0
    p = fuse_text(empty, t, weight=0.5)
    q = text_prototypes(t)
    for r in (p, q):
        np.testing.assert_allclose(r.vectors, t, atol=1e-6)
        assert r.kind.tolist() == ["text"] * 3 and r.support.tolist() == [0, 0, 0]
    assert class_scores(x, p).argmax(axis=1).tolist() == [0, 1]


def test_refinement_moves_a_biased_prototype_to_the_unlabeled_cluster():
    rng = np.random.default_rng(5)
    unlabeled = np.concatenate([_blob([1, 0.3, 0], 200, rng), _blob([0, 0, 1], 200, rng)])
    true_centre = _unit(unlabeled[:200].mean(0))
    # class 0's prototype comes from one labeled sample, off the cluster centre
    p = _protos([[1, -0.3, 0], [0, 0, 1]], [0, 1], 2, support=[1, 1])
    before = float(p.vectors[0] @ true_centre)
    q, n_iter = refine_transductive(p, unlabeled, temperature=0.05, min_confidence=0.8, max_iter=50, tol=1e-6)
    after = float(q.vectors[0] @ true_centre)
    assert after > before + 0.05 and after > 0.99
    assert 1 <= n_iter < 50  # converged before the cap
    np.testing.assert_allclose(np.linalg.norm(q.vectors, axis=1), 1, atol=1e-5)
    assert q.support.tolist() == [1, 1] and q.classes.tolist() == [0, 1]


def test_refinement_ignores_unconfident_samples():
    p = _protos([[1, 0], [0, 1]], [0, 1], 2)
    midway = _unit([[1, 1]] * 10)  # 50/50 between the classes
    q, n_iter = refine_transductive(p, midway, temperature=0.1, min_confidence=0.9)
    np.testing.assert_array_equal(q.vectors, p.vectors)
    assert n_iter == 1


def test_refinement_turns_a_text_prototype_fused():
    t = text_prototypes(_unit([[1, 0.2], [0, 1]]))
    q, _ = refine_transductive(t, _unit([[1, 0]] * 99), temperature=0.05, min_confidence=0.5)
    # the text prototype counts as one sample against 99 confident unlabeled ones
    np.testing.assert_allclose(q.vectors[0], _unit([99 + _unit([1, 0.2])[0], _unit([1, 0.2])[1]]), atol=1e-5)
    np.testing.assert_array_equal(q.vectors[1], t.vectors[1])  # nothing confident for class 1
    assert q.kind.tolist() == ["fused", "text"]


def test_class_scores_take_the_best_prototype_of_each_class():
    p = _protos([[1, 0], [0, 1], [-1, 0]], [1, 1, 0], 3)
    x = _unit([[0.6, 0.8], [-1, 0]])
    s = class_scores(x, p)
    assert s.dtype == np.float32 and s.shape == (2, 3)
    np.testing.assert_allclose(s[:, :2], [[-0.6, 0.8], [1, 0]], atol=1e-6)
    assert np.all(np.isneginf(s[:, 2]))
    assert class_scores(x, p, 4).shape == (2, 4)


def test_class_spread_and_confusable_pairs():
    p = _protos([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 0.6, 0.8]], [0, 1, 2, 2], 4)
    x = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]])
    spread = class_spread(x, np.array([0, 0, 2, 2]), p)
    np.testing.assert_allclose(spread[[0, 2]], [(0 + 1) / 2, (0 + 0.4) / 2], atol=1e-6)
    assert np.isnan(spread[1]) and np.isnan(spread[3])  # no labeled samples / no prototype
    pairs = confusable_pairs(p, top=5)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (1, 2), (0, 2)]
    np.testing.assert_allclose([c for *_, c in pairs], [0.6, 0.48, 0.0], atol=1e-6)
    assert len(confusable_pairs(p, top=1)) == 1


def test_prototypes_validate_their_fields():
    with pytest.raises(BadInputError, match="'classes' must lie in"):
        _protos([[1, 0]], [2], 2)
    with pytest.raises(BadInputError, match="'kind' must be one of"):
        _protos([[1, 0]], [0], 1, kind="image")
    with pytest.raises(BadInputError, match="entries like 'vectors'"):
        Prototypes(np.ones((2, 2)), np.array([0]), np.array([1]), np.array(["text"]), 1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, p: class_prototypes(x, np.array([0, 1]), 2), "'labels' must have 3 entries"),
        (lambda x, p: class_prototypes(x, np.array([0, 1, 5]), 2), "must be < n_classes=2"),
        (lambda x, p: class_prototypes(x, np.array([0, 1, 1]), 2, n_per_class=0), "'n_per_class' must be"),
        (lambda x, p: select_clean(x, np.array([0, 1, 1]), min_agreement=2), "'min_agreement' must be in"),
        (lambda x, p: select_clean(x, np.array([0, 1, 1]), sims=np.ones((3, 1))), "without 'idx'"),
        (lambda x, p: fuse_text(p, x[:1], weight=0.5), r"must have shape \(2, 2\)"),
        (lambda x, p: fuse_text(p, x[:2], weight=1.5), "'weight' must be in"),
        (lambda x, p: refine_transductive(p, x, temperature=0), "'temperature' must be > 0. Got 0 instead."),
        (lambda x, p: class_scores(x[:, :1], p), "must have dim 2"),
        (lambda x, p: class_scores(x, "protos"), "must be a Prototypes"),
    ],
)
def test_bad_input_raises(call, match):
    x = _unit([[1, 0], [0, 1], [1, 1]])
    p = _protos([[1, 0], [0, 1]], [0, 1], 2)
    with pytest.raises(BadInputError, match=match):
        call(x, p)


def test_refining_on_rows_of_all_embeddings_equals_refining_on_those_rows_gathered(rng):
    # Issue 17 (10M rows): the stage passes every embedding and the unlabeled rows, read a block at a time, not gathered.
    from labelkit.prototypes import Prototypes, refine_transductive

    x = rng.standard_normal((3000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = Prototypes(x[:3].copy(), np.array([0, 1, 2]), np.array([5, 5, 5]), np.array(["visual"] * 3), 3)
    rows = np.flatnonzero(rng.random(3000) < 0.6)
    a, n_a = refine_transductive(p, x[rows], temperature=0.1, min_confidence=0.5)
    b, n_b = refine_transductive(p, x.astype(np.float16), rows=rows, temperature=0.1, min_confidence=0.5)
    assert n_a == n_b > 0 and (a.kind == b.kind).all()
    np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-2)  # float16 storage: a few samples cross min_confidence
    c, _ = refine_transductive(p, x, rows=rows, temperature=0.1, min_confidence=0.5)
    np.testing.assert_allclose(c.vectors, a.vectors, atol=1e-6)
    with pytest.raises(BadInputError, match="'rows' must index"):
        refine_transductive(p, x, rows=[3000])
