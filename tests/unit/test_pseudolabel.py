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


def _five_node_affinity():
    # A weighted path 0-1-2-3-4 plus a chord 1-3.
    a = np.zeros((5, 5))
    for i, j, w in [(0, 1, 1.0), (1, 2, 0.5), (2, 3, 0.5), (3, 4, 1.0), (1, 3, 0.2)]:
        a[i, j] = a[j, i] = w
    return a


# ------------------------------------------------------------------ label spreading


def test_spread_labels_matches_closed_form_on_five_nodes():
    a = _five_node_affinity()
    y = np.zeros((5, 2))
    y[0, 0] = y[4, 1] = 1.0
    alpha = 0.8
    d = a.sum(axis=1)
    s = a / np.sqrt(np.outer(d, d))
    closed = (1 - alpha) * np.linalg.inv(np.eye(5) - alpha * s) @ y
    f = pl.spread_labels(a, y, alpha=alpha, tol=1e-10)
    np.testing.assert_allclose(f, closed, atol=1e-8)
    assert f[:2].argmax(axis=1).tolist() == [0, 0] and f[3:].argmax(axis=1).tolist() == [1, 1]
    np.testing.assert_allclose(f[2, 0], f[2, 1], atol=1e-12)  # the middle node is symmetric


def test_spread_labels_is_the_limit_of_the_iteration():
    a = _five_node_affinity()
    y = np.eye(5)[:, :3]
    alpha = 0.9
    d = a.sum(axis=1)
    s = a / np.sqrt(np.outer(d, d))
    f = np.zeros_like(y)
    for _ in range(2000):  # F <- alpha S F + (1 - alpha) Y (Zhou et al. 2004)
        f = alpha * s @ f + (1 - alpha) * y
    np.testing.assert_allclose(pl.spread_labels(a, y, alpha=alpha, tol=1e-12), f, atol=1e-9)


def test_spread_labels_rejects_asymmetric_affinity():
    a = _five_node_affinity()
    a[0, 4] = 1.0
    with pytest.raises(BadInputError, match="symmetric"):
        pl.spread_labels(a, np.zeros((5, 2)))


def test_knn_affinity_is_symmetric_powered_and_down_weights_one_way_edges():
    sims = np.array([[0.5, 0.2], [0.5, -0.3], [0.4, 0.0]], dtype=np.float32)
    idx = np.array([[1, 2], [0, 2], [1, -1]])
    a = pl.knn_affinity(sims, idx, gamma=2.0, one_way_weight=0.1).toarray()
    np.testing.assert_allclose(a, a.T)
    assert a[0, 1] == pytest.approx(0.25)  # mutual: 0 -> 1 and 1 -> 0
    assert a[0, 2] == pytest.approx(0.1 * 0.04)  # one-way 0 -> 2
    assert a[1, 2] == pytest.approx(0.1 * 0.16)  # one-way 2 -> 1 (1 -> 2 has a negative cosine: weight 0)
    assert np.all(np.diag(a) == 0)
    mutual_only = pl.knn_affinity(sims, idx, gamma=2.0, one_way_weight=0.0).toarray()
    assert np.count_nonzero(mutual_only) == 2


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
    plain = pl._propagate(labels, ctx, pl.PseudolabelOptions(reach_prior=0.0, refine=False))[1]
    shrunk = pl._propagate(labels, ctx, pl.PseudolabelOptions(reach_prior=0.3, refine=False))[1]
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


# ------------------------------------------------------------------ thresholds


PROBS = np.array(
    [
        [0.97, 0.02, 0.01],  # 0: class 0, very confident
        [0.96, 0.03, 0.01],  # 1: class 0
        [0.90, 0.05, 0.05],  # 2: class 0, below 0.95
        [0.10, 0.80, 0.10],  # 3: class 1
        [0.05, 0.15, 0.80],  # 4: class 2
        [0.40, 0.35, 0.25],  # 5: class 0, ambiguous
    ]
)


def test_threshold_fixed():
    assert pl.threshold_fixed(PROBS, tau=0.95).tolist() == [True, True, False, False, False, False]
    assert pl.threshold_fixed(PROBS, tau=0.8).tolist() == [True, True, True, True, True, False]


def test_threshold_flexmatch_lowers_thresholds_of_unlearned_classes():
    # sigma = [2, 0, 0]: without warm-up beta = [1, 0, 0], thresholds [0.95, 0, 0].
    assert pl.threshold_flexmatch(PROBS, tau=0.95, warmup=False).tolist() == [True, True, False, True, True, False]
    # With warm-up the 4 unconfident samples normalise: beta_0 = 2/4, M = 0.5/1.5, threshold 0.3167.
    assert pl.threshold_flexmatch(PROBS, tau=0.95, warmup=True).tolist() == [True, True, True, True, True, True]
    p = PROBS.copy()
    p[5] = [0.30, 0.40, 0.30]  # now class 1, conf 0.4 >= threshold 0
    assert pl.threshold_flexmatch(p, tau=0.95, warmup=True)[5]


def test_threshold_flexmatch_mapping_value():
    # 3 confident of class 0, 1 of class 1, 0 unused: beta = [1, 1/3], threshold_1 = (1/3)/(5/3) tau = 0.2 tau.
    p = np.array([[0.99, 0.01]] * 3 + [[0.01, 0.99], [0.21, 0.79], [0.81, 0.19]])
    tau = 0.99
    # Row 4: class 1 with conf 0.79 >= 0.198; row 5: class 0, 0.81 < 0.99.
    assert pl.threshold_flexmatch(p, tau=tau, warmup=False).tolist() == [True, True, True, True, True, False]


def test_threshold_top_per_class():
    assert pl.threshold_top_per_class(PROBS, n_per_class=1).tolist() == [True, False, False, True, True, False]
    assert pl.threshold_top_per_class(PROBS, n_per_class=2).tolist() == [True, True, False, True, True, False]
    assert pl.threshold_top_per_class(PROBS, n_per_class=0).sum() == 0


def test_threshold_margin():
    # margins: 0.95, 0.93, 0.85, 0.70, 0.65, 0.05
    assert pl.threshold_margin(PROBS, min_margin=0.8).tolist() == [True, True, True, False, False, False]
    assert pl.threshold_margin(PROBS, min_margin=0.0).all()


def test_accept_dispatches_on_rule():
    assert pl.accept(PROBS, rule="top_per_class", value=1).tolist() == pl.threshold_top_per_class(PROBS, n_per_class=1).tolist()
    assert pl.accept(PROBS, rule=pl.ThresholdRule.MARGIN, value=0.8).tolist() == pl.threshold_margin(PROBS, min_margin=0.8).tolist()


def test_accept_rejects_unknown_rule():
    with pytest.raises(BadInputError, match="'rule' must be one of"):
        pl.accept(PROBS, rule="entropy", value=0.5)


def test_threshold_rejects_bad_tau():
    with pytest.raises(BadInputError, match=r"'tau' must be in \[0, 1\]. Got 1.5 instead."):
        pl.threshold_fixed(PROBS, tau=1.5)


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


# ------------------------------------------------------------------ calibration


def test_ece_hand_computed():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    # bins of width 0.1: {0.9, 0.9}: acc 0.5 gap 0.4; {0.6}: gap 0.4; {0.8}: gap 0.2.
    assert pl.expected_calibration_error(p, y, n_bins=10) == pytest.approx((2 * 0.4 + 0.4 + 0.2) / 4)
    assert pl.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def _sample_from(logits, rng):
    p = pl._softmax(logits)
    return np.array([rng.choice(p.shape[1], p=row) for row in p])


def test_fit_temperature_recovers_the_true_temperature(rng):
    z = rng.normal(scale=2.0, size=(4000, 5))
    y = _sample_from(z, rng)  # labels drawn from softmax(z): the true temperature of 3 z is 3
    assert pl.fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.08)


def test_calibration_reduces_ece_on_an_overconfident_toy(rng):
    z = rng.normal(scale=2.0, size=(3000, 4))
    y = _sample_from(z, rng)
    over = 4.0 * z  # overconfident scores
    fit, test = slice(0, 1500), slice(1500, None)
    t = pl.fit_temperature(over[fit], y[fit])
    before = pl.expected_calibration_error(pl._softmax(over[test]), y[test])
    after = pl.expected_calibration_error(pl._softmax(over[test] / t), y[test])
    assert t > 2.5 and before > 0.15 and after < 0.05


def test_fit_temperature_smoothing_keeps_perfect_scores_finite():
    z = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    y = np.array([0, 1] * 10)
    assert pl.fit_temperature(z, y) == pytest.approx(1e-3)  # no prior: T -> lower bound
    eps = pl._laplace_smoothing(20, 2)
    t = pl.fit_temperature(z, y, smoothing=eps)
    conf = pl._softmax(z / t).max(axis=1)
    assert conf.mean() == pytest.approx(21 / 22, abs=1e-3)  # rule of succession (n+1)/(n+2)


# ------------------------------------------------------------------ prior shift


def test_em_prior_shift_recovers_a_known_shift(rng):
    # Two unit-variance Gaussians at -1 and +1; posteriors computed under training priors 0.5/0.5.
    n, pi_new = 20000, np.array([0.8, 0.2])
    y = rng.choice(2, size=n, p=pi_new)
    x = rng.normal(loc=np.where(y == 0, -1.0, 1.0))
    lik = np.stack([np.exp(-0.5 * (x + 1) ** 2), np.exp(-0.5 * (x - 1) ** 2)], axis=1)
    post = lik / lik.sum(axis=1, keepdims=True)
    adjusted, priors = pl.em_prior_shift(post, np.array([0.5, 0.5]), max_iter=1000, tol=1e-8)
    np.testing.assert_allclose(priors, pi_new, atol=0.02)
    true_post = lik * pi_new / (lik * pi_new).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(adjusted, true_post, atol=0.03)
    assert (adjusted.argmax(1) == y).mean() > (post.argmax(1) == y).mean()


def test_em_prior_shift_without_shift_stays_put(rng):
    p = rng.dirichlet(np.ones(3), size=300)
    pri = p.mean(axis=0)
    adjusted, priors = pl.em_prior_shift(p, pri, max_iter=50)
    np.testing.assert_allclose(priors, pri, atol=1e-6)
    np.testing.assert_allclose(adjusted, p, atol=1e-5)


def test_em_prior_shift_rejects_bad_priors():
    with pytest.raises(BadInputError, match="'train_priors' must be 2 positive values summing to 1"):
        pl.em_prior_shift(np.array([[0.5, 0.5]]), np.array([1.0, 0.0]))


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


def test_folds_are_stratified():
    labels = np.array([0] * 10 + [1] * 5 + [-1] * 3)
    fold = pl._folds(labels, 5, seed=0)
    assert (fold[labels < 0] == -1).all()
    for c in (0, 1):
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1


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
    with pytest.raises(BadInputError, match=r"'idx' must be in \[-1, 40\)"):
        pl.pseudolabel(x, y, 2, (sims, bad))
    with pytest.raises(BadInputError, match="'prototypes' must have dimension 8"):
        pl.pseudolabel(x, y, 2, (sims, idx), (np.eye(2, 3), np.array([0, 1])))


def test_soft_prototypes_keep_one_prototype_per_given_sub_prototype():
    # Class 0 has two modes (e0, e1), class 1 one (e2); the given prototypes mark both modes.
    x = np.array([[1, 0.1, 0], [1, -0.1, 0], [0.1, 1, 0], [-0.1, 1, 0], [0, 0.1, 1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    given = (np.eye(3, dtype=np.float32), np.array([0, 0, 1]))
    w = pl._onehot(np.array([0, 0, 0, 0, 1]), 2)
    vec, cls = pl._soft_prototypes(x, w, given)
    assert cls.tolist() == [0, 0, 1]
    np.testing.assert_allclose(vec, np.vstack([np.eye(3)[:2], x[4]]), atol=1e-6)
    vec1, cls1 = pl._soft_prototypes(x, w, None)  # without given prototypes: one mean per class
    assert cls1.tolist() == [0, 1] and vec1[0] @ np.array([1, 1, 0]) / np.sqrt(2) > 0.99


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
