"""labelkit/pseudolabel.py: hand-made arrays with known answers and closed-form oracles."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import pseudolabel as pl
from labelkit.errors import BadInputError


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _brute_knn(x: np.ndarray, k: int):
    """Exact cosine kNN graph, self excluded (the tests do not depend on labelkit.knn)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1).astype(np.float32), idx.astype(np.int64)


def _two_clusters(rng, n=40, spread=0.15):
    """Two tight blobs around orthogonal directions in 8-d; half the points of each per blob."""
    centers = np.zeros((2, 8), dtype=np.float32)
    centers[0, 0] = centers[1, 1] = 1.0
    y = np.repeat([0, 1], n // 2)
    x = centers[y] + spread * rng.standard_normal((n, 8)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


# ------------------------------------------------------------------ label spreading scores


def test_label_spreading_scores_two_components():
    # Two 3-node cliques, one seed each: every node takes its clique's class.
    idx = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    sims = np.full(idx.shape, 0.9, dtype=np.float32)
    p = pl.label_spreading_scores(np.array([0, -1, -1, -1, 1, -1]), sims, idx, 2)
    assert p.argmax(axis=1).tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_label_spreading_node_without_seed_path_is_uniform():
    idx = np.array([[1], [0], [-1]])
    sims = np.array([[0.9], [0.9], [-np.inf]], dtype=np.float32)  # knn_graph pads with -inf
    p = pl.label_spreading_scores(np.array([0, -1, -1]), sims, idx, 3)
    np.testing.assert_allclose(p[2], [1 / 3] * 3)
    assert p[1].argmax() == 0


def _clique_graph():
    """Three 4-cliques A (0-3), B (4-7), C (8-11); B hangs off A by one weak edge 3-4."""
    n, k = 12, 4
    idx = np.full((n, k), -1)
    sims = np.zeros((n, k), dtype=np.float32)
    for start in (0, 4, 8):
        members = list(range(start, start + 4))
        for i in members:
            others = [j for j in members if j != i]
            idx[i, :3], sims[i, :3] = others, 0.9
    idx[3, 3] = 4
    idx[4, 3] = 3
    sims[3, 3] = sims[4, 3] = 0.5
    return sims, idx


def test_reach_prior_demotes_a_cluster_no_label_reaches():
    sims, idx = _clique_graph()
    labels = np.full(12, -1)
    labels[[0, 8]] = [0, 1]  # A and C labeled; B has no label of its own
    ctx = pl._Context(np.eye(12, dtype=np.float32), sims, idx, 2, None, None)
    opts = {r: pl.PseudolabelOptions(reach_prior=r, refine=False) for r in (0.0, 0.3)}
    plain = pl._propagate(labels, pl._graph(ctx, opts[0.0]), ctx, opts[0.0])
    shrunk = pl._propagate(labels, pl._graph(ctx, opts[0.3]), ctx, opts[0.3])
    assert (plain[4:8].argmax(axis=1) == 0).all() and plain[4:8, 0].min() > 0.99  # spreading alone: sure of B
    assert (shrunk[4:8].argmax(axis=1) == 0).all()  # same label ...
    assert shrunk[4:8, 0].max() < shrunk[1:4, 0].min()  # ... but less sure than A's own samples
    assert shrunk[6, 0] < 0.7 < shrunk[1:4, 0].min()  # deep inside B: closer to uniform


def test_text_anchor_lets_an_unlabeled_class_be_predicted(rng):
    x, y = _two_clusters(rng)
    labels = np.where(np.arange(y.size) == 0, 0, -1)  # only class 0 has a label
    sims, idx = _brute_knn(x, 5)
    anchors = (np.eye(2, 8, dtype=np.float32), np.array([0, 1]))
    no_anchor = pl.label_spreading_scores(labels, sims, idx, 2)
    with_anchor = pl.label_spreading_scores(labels, sims, idx, 2, anchors=anchors, embeddings=x)
    assert (no_anchor.argmax(axis=1) == 0).all()
    assert (with_anchor.argmax(axis=1) == y).all()


def test_anchors_need_embeddings():
    with pytest.raises(BadInputError, match="'embeddings' are needed"):
        pl.label_spreading_scores(np.array([0, -1]), np.ones((2, 1)), np.array([[1], [0]]), 2, anchors=(np.eye(2), [0, 1]))


# ------------------------------------------------------------------ prototype and kNN scores


def test_prototype_scores_take_the_best_prototype_of_a_class():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    protos = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = pl.prototype_scores(x, protos, np.array([0, 0, 1]), 2, temperature=0.1)
    assert p.argmax(axis=1).tolist() == [0, 1, 0]  # the third point matches class 0's 2nd prototype
    expected = 1 / (1 + np.exp(-10.0))  # cos 1 vs cos 0 at temperature 0.1
    assert p[0, 0] == pytest.approx(expected) and p[2, 0] == pytest.approx(expected)


def test_knn_vote_weights_by_similarity():
    idx = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    sims = np.array([[0.9, 0.3, 0.3], [0.9, 0.1, 0.1], [0.3, 0.1, 0.1], [0.3, 0.1, 0.1]], dtype=np.float32)
    p = pl.knn_vote_scores(np.array([-1, 0, 1, 1]), sims, idx, 2, gamma=1.0)
    np.testing.assert_allclose(p[0], [0.9 / 1.5, 0.6 / 1.5])
    p3 = pl.knn_vote_scores(np.array([-1, 0, 1, 1]), sims, idx, 2, gamma=3.0)
    assert p3[0, 0] > p[0, 0]  # gamma favours the strongest neighbour


# ------------------------------------------------------------------ soft labels


def test_soft_labels_top_k_sum_to_one_and_are_ordered(rng):
    p = rng.dirichlet(np.ones(6), size=20)
    labels, probs = pl.soft_labels(p, top_k=3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert labels.shape == (20, 3) and np.all(np.diff(probs, axis=1) <= 1e-12)
    np.testing.assert_array_equal(labels[:, 0], p.argmax(axis=1))
    expected = np.sort(p, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True))


def test_soft_labels_sharpening():
    p = np.array([[0.6, 0.3, 0.1]])
    _, sharp = pl.soft_labels(p, top_k=2, temperature=0.5)  # p**2 renormalised over the top 2
    np.testing.assert_allclose(sharp, [[0.36 / 0.45, 0.09 / 0.45]])
    _, k_big = pl.soft_labels(p, top_k=10)
    assert k_big.shape == (1, 3)


# ------------------------------------------------------------------ the top level


@pytest.mark.parametrize("method", list(pl.ScoreMethod))
def test_pseudolabel_two_obvious_clusters(rng, method):
    x, y = _two_clusters(rng, n=60)
    labels = np.full(y.size, -1)
    labels[[0, 1, 2, 3, 30, 31, 32, 33]] = y[[0, 1, 2, 3, 30, 31, 32, 33]]
    graph = _brute_knn(x, 6)
    opts = pl.PseudolabelOptions(method=method, weights=(1.0, 0.5, 0.5), n_folds=4)
    r = pl.pseudolabel(x, labels, 2, graph, options=opts)
    unl = labels < 0
    if method is pl.ScoreMethod.KNN:  # only rows with a labeled neighbour get a vote
        voted = (labels[graph[1]] >= 0).any(axis=1)
        assert voted.sum() > 10 and (r.label[voted & unl] == y[voted & unl]).all()
        np.testing.assert_allclose(r.probs[~voted & unl], 0.5)
    else:
        assert (r.label == y).all()
    assert r.method == method.value
    np.testing.assert_allclose(r.probs.sum(axis=1), 1.0)
    assert not r.accepted[~unl].any()
    assert r.n_calibration == 8 and 0.0 <= r.ece <= 1.0
    assert r.confidence_counts.sum() == unl.sum()
    assert r.class_counts.sum() == r.accepted.sum()
    assert r.coverage == pytest.approx(r.accepted.sum() / unl.sum())
    np.testing.assert_allclose(r.top_probs.sum(axis=1), 1.0)


def test_pseudolabel_accepts_prototype_objects_and_text_prototypes(rng):
    x, y = _two_clusters(rng)

    class Protos:  # the shape of labelkit.prototypes.Prototypes
        vectors = np.eye(2, 8, dtype=np.float32)
        classes = np.array([0, 1])

    labels = np.where(np.isin(np.arange(y.size), [0, 20]), y, -1)
    graph = _brute_knn(x, 5)
    r = pl.pseudolabel(x, labels, 2, graph, Protos(), text_prototypes=np.eye(2, 8, dtype=np.float32))
    assert (r.label == y).all()


def test_pseudolabel_labeled_rows_get_out_of_fold_scores(rng):
    x, y = _two_clusters(rng, n=60)
    labels = y.copy()
    labels[::3] = -1
    labels[1] = 1  # a wrong given label inside cluster 0
    r = pl.pseudolabel(x, labels, 2, _brute_knn(x, 6), options=pl.PseudolabelOptions(n_folds=5))
    assert r.label[1] == 0  # its own (wrong) label was hidden when it was scored
    assert (r.label[labels < 0] == y[labels < 0]).all()


def test_unlabeled_by_fold_scores_each_unlabeled_row_by_one_fold_run(rng):
    x, y = _two_clusters(rng, n=60)
    labels = y.copy()
    labels[::3] = -1
    opts = pl.PseudolabelOptions(n_folds=5)
    plain = pl.pseudolabel(x, labels, 2, _brute_knn(x, 6), options=opts)
    by_fold = pl.pseudolabel(x, labels, 2, _brute_knn(x, 6), options=opts, unlabeled_by_fold=True)
    unl = labels < 0
    assert plain.fold_scored is not None and not plain.fold_scored.any()
    assert (by_fold.fold_scored == unl).all()
    assert (by_fold.label[unl] == y[unl]).all()  # still right: each fold run keeps 4/5 of the labels
    # The labeled rows' held-out scores are the same either way; the unlabeled rows' are not.
    np.testing.assert_allclose(by_fold.probs[~unl], plain.probs[~unl], atol=1e-6)
    assert not np.allclose(by_fold.probs[unl], plain.probs[unl])
    # A calibration to reuse is not reused: it has no fold-scored unlabeled rows.
    cal = pl.heldout_calibration(x, labels, 2, _brute_knn(x, 6), options=opts)
    again = pl.pseudolabel(x, labels, 2, _brute_knn(x, 6), options=opts, calibration=cal, unlabeled_by_fold=True)
    np.testing.assert_array_equal(again.probs, by_fold.probs)


def test_pseudolabel_without_enough_labels_skips_calibration(rng):
    x, y = _two_clusters(rng)
    labels = np.where(np.isin(np.arange(y.size), [0, 20]), y, -1)  # one label per class
    r = pl.pseudolabel(x, labels, 2, _brute_knn(x, 5))
    assert r.n_calibration == 0 and np.isnan(r.ece) and r.temperature == 1.0
    assert (r.label[labels < 0] == y[labels < 0]).all()


def test_pseudolabel_threshold_and_prior_correction_options(rng):
    x, y = _two_clusters(rng, n=60)
    labels = np.where(np.arange(y.size) % 6 == 0, y, -1)
    graph = _brute_knn(x, 6)
    r = pl.pseudolabel(x, labels, 2, graph, options=pl.PseudolabelOptions(threshold="top_per_class", threshold_value=5))
    assert r.class_counts.tolist() == [5, 5]
    r = pl.pseudolabel(x, labels, 2, graph, options=pl.PseudolabelOptions(prior_correction=True, top_k=1))
    assert r.priors.sum() == pytest.approx(1.0) and r.priors == pytest.approx([0.5, 0.5], abs=0.05)
    assert r.top_labels.shape == (60, 1) and np.all(r.top_probs == 1.0)


def test_pseudolabel_is_deterministic(rng):
    x, y = _two_clusters(rng)
    labels = np.where(np.arange(y.size) % 4 == 0, y, -1)
    graph = _brute_knn(x, 5)
    a = pl.pseudolabel(x, labels, 2, graph)
    b = pl.pseudolabel(x, labels, 2, graph)
    np.testing.assert_array_equal(a.probs, b.probs)

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.0}, r"'alpha' must be in \[0, 1\)"),
        ({"method": "magic"}, r"'method' must be one of \['prototype', 'knn', 'propagation', 'ensemble'\]. Got 'magic'"),
        ({"weights": (0, 0, 0)}, "'weights' must be 3 non-negative numbers"),
        ({"threshold": "top_per_class", "threshold_value": 2.5}, "'threshold_value' must be an integer"),
        ({"n_neighbors": 0}, "'n_neighbors' must be >= 1. Got 0 instead."),
    ],
)
def test_options_validate(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        pl.PseudolabelOptions(**kwargs)


def test_pseudolabel_validates_inputs(rng):
    x, y = _two_clusters(rng)
    sims, idx = _brute_knn(x, 3)
    with pytest.raises(BadInputError, match="'labels' must be < n_classes=2"):
        pl.pseudolabel(x, np.full(y.size, 2), 2, (sims, idx))
    with pytest.raises(BadInputError, match="'sims' must have one row per sample"):
        pl.pseudolabel(x, y, 2, (sims[:-1], idx[:-1]))
    bad = idx.copy()
    bad[0, 0] = 999
    with pytest.raises(BadInputError, match=r"'idx' must be in \[-1, 39\] \(-1 = missing\)"):  # one graph check (issue 15)
        pl.pseudolabel(x, y, 2, (sims, bad))
    with pytest.raises(BadInputError, match="'prototypes' must have dimension 8"):
        pl.pseudolabel(x, y, 2, (sims, idx), (np.eye(2, 3), np.array([0, 1])))


def test_soft_prototypes_keep_one_prototype_per_given_sub_prototype():
    # Class 0 has two modes (e0, e1), class 1 one (e2); the given prototypes mark both modes.
    x = np.array([[1, 0.1, 0], [1, -0.1, 0], [0.1, 1, 0], [-0.1, 1, 0], [0, 0.1, 1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    given = (np.eye(3, dtype=np.float32), np.array([0, 0, 1]))
    w = pl._onehot(np.array([0, 0, 0, 0, 1]), 2)
    vec, cls = pl._soft_prototypes(x, w, given, None, 2)
    assert cls.tolist() == [0, 0, 1]
    np.testing.assert_allclose(vec, np.vstack([np.eye(3)[:2], x[4]]), atol=1e-6)
    vec1, cls1 = pl._soft_prototypes(x, w, None, None, 2)  # without given prototypes: one mean per class
    assert cls1.tolist() == [0, 1] and vec1[0] @ np.array([1, 1, 0]) / np.sqrt(2) > 0.99
    # Seeded rows weigh one-hot on their label whatever the weights say, with or without weights.
    seeds = np.array([0, 0, 0, 0, 1])
    for weights in (None, np.full((5, 2), 0.5, np.float32)):
        v, c = pl._soft_prototypes(x, weights, given, seeds, 2)
        assert c.tolist() == [0, 0, 1]
        np.testing.assert_allclose(v, vec, atol=1e-6)


def test_soft_prototypes_row_chunks_sum_as_one_pass(monkeypatch):
    # Two rows a chunk: the one-hot substitution and the sums chunk by chunk give the one-pass means.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.dirichlet(np.ones(3), 9).astype(np.float32)
    seeds = np.array([2, -1, -1, 0, -1, -1, -1, 1, -1])
    whole = pl._soft_prototypes(x, w, None, seeds, 3)
    monkeypatch.setattr(pl, "ROW_CHUNK", 2)
    chunked = pl._soft_prototypes(x, w, None, seeds, 3)
    expected = w.astype(np.float64).copy()
    expected[seeds >= 0] = np.eye(3)[seeds[seeds >= 0]]
    expected = expected.T @ x
    np.testing.assert_allclose(chunked[0], expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(chunked[0], whole[0], atol=1e-6)


def test_prototype_method_held_out_prototypes_do_not_see_the_hidden_label(rng):
    x, y = _two_clusters(rng, n=40)
    labels = np.where(np.arange(40) % 2 == 0, y, -1)
    # Given prototypes deliberately wrong-way round: scoring them as given would swap the classes,
    # but held-out scoring re-estimates them from the training folds' labels.
    swapped = (np.eye(2, 8, dtype=np.float32)[::-1].copy(), np.array([0, 1]))
    r = pl.pseudolabel(x, labels, 2, _brute_knn(x, 5), swapped, options=pl.PseudolabelOptions(method="prototype"))
    lab = labels >= 0
    assert (r.label[lab] == y[lab]).all()  # out-of-fold: re-estimated prototypes
    assert (r.label[~lab] != y[~lab]).all()  # unlabeled rows: the given prototypes, as asked


def test_pseudolabel_needs_labels_or_text_prototypes(rng):
    x, y = _two_clusters(rng)
    graph = _brute_knn(x, 5)
    with pytest.raises(BadInputError, match="no labeled sample"):
        pl.pseudolabel(x, np.full(y.size, -1), 2, graph)
    # Zero-shot from class-name anchors alone works.
    r = pl.pseudolabel(x, np.full(y.size, -1), 2, graph, text_prototypes=np.eye(2, 8, dtype=np.float32))
    assert (r.label == y).all() and r.n_calibration == 0


def test_soft_labels_equal_sharpening_every_class_then_keeping_the_top_k(rng):
    p = rng.dirichlet(np.ones(7), size=30).astype(np.float32)
    labels, probs = pl.soft_labels(p, top_k=3, temperature=0.7)
    sharp = p.astype(np.float64) ** (1 / 0.7)
    sharp /= sharp.sum(axis=1, keepdims=True)
    order = np.argsort(-sharp, axis=1, kind="stable")[:, :3]
    top = np.take_along_axis(sharp, order, axis=1)
    np.testing.assert_array_equal(labels, order)
    np.testing.assert_allclose(probs, top / top.sum(axis=1, keepdims=True), rtol=1e-5)


def test_heldout_calibration_covers_every_seed_and_calibration_samples_cap_the_final_pass(rng):
    x, y = _two_clusters(rng, n=60)
    labels = np.where(np.arange(60) % 2 == 0, y, -1)  # 30 seeds, 6 per fold
    graph = _brute_knn(x, 6)
    c = pl.heldout_calibration(x, labels, 2, graph, options=pl.PseudolabelOptions(calibration_samples=1))
    rows, probs = c.rows, c.probs
    assert rows.tolist() == np.flatnonzero(labels >= 0).tolist() and (probs.argmax(axis=1) == y[rows]).all()
    capped = pl.pseudolabel(x, labels, 2, graph, options=pl.PseudolabelOptions(calibration_samples=10))
    full = pl.pseudolabel(x, labels, 2, graph, options=pl.PseudolabelOptions(calibration_samples=None))
    assert capped.heldout.sum() == 12 and full.heldout.sum() == 30  # two folds of 6 reach 10
    assert (capped.label == y).all() and (full.label == y).all()
    unl = labels < 0
    np.testing.assert_allclose(full.probs[full.heldout], probs, atol=1e-6)  # the same out-of-fold scores
    assert capped.probs.dtype == np.float32 and abs(capped.confidence[unl].mean() - full.confidence[unl].mean()) < 0.05


def test_pseudolabel_reusing_a_heldout_calibration_gives_the_same_result(rng):
    x, y = _two_clusters(rng, n=60)
    labels = np.where(np.arange(60) % 2 == 0, y, -1)
    graph = _brute_knn(x, 6)
    opts = pl.PseudolabelOptions(calibration_samples=None)
    cal = pl.heldout_calibration(x, labels, 2, graph, options=opts)
    fresh, reused = pl.pseudolabel(x, labels, 2, graph, options=opts), pl.pseudolabel(x, labels, 2, graph, options=opts, calibration=cal)
    np.testing.assert_allclose(reused.probs, fresh.probs, atol=1e-6)
    assert reused.temperature == fresh.temperature and reused.ece == fresh.ece
    other = labels.copy()
    other[cal.rows[0]] = -1
    with pytest.raises(BadInputError, match="not labeled here"):
        pl.pseudolabel(x, other, 2, graph, options=opts, calibration=cal)


def test_ensemble_without_refinement_keeps_the_propagation_scores_of_labeled_rows(rng):
    # Without refinement the first and final rounds are one array; the ensemble's transductive
    # prototypes set labeled rows one-hot in the first round, which must not leak into the final.
    x, y = _two_clusters(rng, n=40, spread=1.0)  # overlapping: spread scores are never one-hot
    labels = np.where(np.arange(40) % 4 == 0, y, -1)
    opts = pl.PseudolabelOptions(refine=False, reach_prior=0.0)
    ctx = pl._Context(x, *_brute_knn(x, 5), 2, None, None)
    spreader = pl._graph(ctx, opts)
    expected = pl._propagate(labels, spreader, ctx, opts)
    got = pl._components(labels, ctx, spreader, opts, heldout=False)["propagation"]
    np.testing.assert_array_equal(got, expected)
    assert got[labels >= 0].max() < 1.0  # spread scores, not one-hot


@pytest.mark.parametrize("options", [
    {"probe_weights": (1.0,)},  # propagation, prototypes and the probe, in place over the propagation's array
    {"method": "ensemble", "weights": (0.0, 0.5, 1.0), "probe_weights": ()},  # no propagation member: a new array
])
def test_final_pass_by_row_chunks_equals_the_whole_components(rng, monkeypatch, options):
    # Issue 17 (10M rows in 24 GB): the final pass scores a row chunk at a time; the numbers are those of one pass.
    x, y = _two_clusters(rng, n=60, spread=0.6)
    labels = np.where(np.arange(60) % 3 == 0, y, -1)
    opts = pl.PseudolabelOptions(n_folds=2, **options)
    ctx = pl._Context(x, *_brute_knn(x, 5), 2, None, None)
    spreader = pl._spreader(ctx, opts)
    cal = pl._calibration(labels, ctx, spreader, opts, max_samples=None)
    whole = cal.apply(pl._components(labels, ctx, spreader, opts, heldout=False))
    monkeypatch.setattr(pl, "ROW_CHUNK", 7)
    chunked = pl._calibrated_scores(labels, ctx, spreader, opts, cal)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    assert chunked.dtype == np.float32 and not np.allclose(chunked, chunked[:1])


def test_topk_to_dense_adds_renormalises_and_leaves_empty_rows_zero():
    from labelkit._probability import topk_to_dense

    out = topk_to_dense(3, 4, np.array([0, 0, 2, 2, 2]), np.array([1, 3, 0, 0, 2]), np.array([0.6, 0.2, 0.25, 0.25, 0.5]))
    assert np.allclose(out, [[0, 0.75, 0, 0.25], [0, 0, 0, 0], [0.5, 0, 0.5, 0]])
