"""labelkit.teacher: the pseudo-labeling recipe as an estimator, on small hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import knn, thresholds
from labelkit.config import PrototypeConfig, PseudolabelConfig
from labelkit.errors import BadInputError
from labelkit.teacher import Relabeler, Teacher, build_prototypes, prototypes_from_columns, teach

FAST = PseudolabelConfig(k=3, calibration_folds=0, probe_weights=(), clean_seeds=False)


def _blobs(n_per: int = 8, seed: int = 0):
    """Three tight clusters on the unit sphere, a quarter of each labeled."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 6, dtype=np.float32)
    y = np.repeat(np.arange(3), n_per)
    x = centres[y] + 0.05 * rng.normal(size=(len(y), 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.where(np.arange(len(y)) % 4 == 0, y, -1)
    return x, y, labels


def test_fit_predict_proba_labels_the_clusters():
    x, y, labels = _blobs()
    t = Teacher(pseudolabel=FAST).fit(x, labels, n_classes=3)
    p = t.predict_proba()
    assert p.shape == (24, 3) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert (p.argmax(axis=1) == y).all()
    assert t.prototypes_.vectors.shape == (3, 6) and sorted(t.prototypes_.classes.tolist()) == [0, 1, 2]
    assert not t.seeds_dropped_.any()
    assert set(t.timings_) == {"knn_graph", "clean_seeds", "score"}


def test_accepted_among_the_unlabeled_rows_only_computed_by_the_rule():
    x, _, labels = _blobs()
    t = Teacher(pseudolabel=FAST.model_copy(update={"threshold_rule": "top_per_class", "threshold": 2})).fit(x, labels, n_classes=3)
    unl = np.flatnonzero(labels < 0)
    assert not t.result_.accepted[labels >= 0].any()
    # the same rule applied by hand to the unlabeled rows: 2 per class
    expected = thresholds.accept(t.result_.probs[unl], "top_per_class", 2)
    assert (t.result_.accepted[unl] == expected).all() and expected.sum() == 6


def test_same_result_as_the_recipe_in_steps():
    """fit = build_prototypes then teach, as the two stages run them."""
    x, _, labels = _blobs()
    graph = knn.knn_graph(x, 3, exclude_self=True)
    protos = build_prototypes(x, labels, 3, PrototypeConfig(), None).protos
    r, dropped = teach(x, labels, 3, graph, protos, None, FAST)
    t = Teacher(pseudolabel=FAST).fit(x, labels, n_classes=3, graph=graph)
    assert np.array_equal(t.predict_proba(), r.probs) and np.array_equal(t.seeds_dropped_, dropped)


def test_soft_labels_dense_and_renormalised():
    x, _, labels = _blobs()
    t = Teacher(pseudolabel=FAST.model_copy(update={"top_k": 2})).fit(x, labels, n_classes=3)
    soft = t.soft_labels(np.array([1, 2]))
    assert soft.shape == (2, 3) and np.allclose(soft.sum(axis=1), 1) and ((soft > 0).sum(axis=1) <= 2).all()


def test_relabeler_hides_labels_and_scores_those_rows():
    x, y, labels = _blobs()
    ids = [f"s{i}" for i in range(len(y))]
    graph = knn.knn_graph(x, 3, exclude_self=True)
    relabel = Relabeler(x, labels, ids, 3, graph=graph, text=None, pseudolabel=FAST, prototype=PrototypeConfig())
    out = relabel(["s0", "s4", "nope"])  # two labeled rows hidden; an unknown id is ignored
    assert "s0" in out.ids and "s4" in out.ids and len(out.ids) == int((labels < 0).sum()) + 2
    at = [out.ids.index("s0"), out.ids.index("s4")]
    assert out.probs[at].argmax(axis=1).tolist() == [y[0], y[4]]
    assert out.soft.shape == (len(out.ids), 3) and out.accepted.dtype == bool


def test_bad_inputs_are_one_line_errors():
    x, _, labels = _blobs()
    with pytest.raises(BadInputError, match="'n_classes' must be given"):
        Teacher().fit(x, np.full(len(x), -1))
    with pytest.raises(BadInputError, match="one row per label"):
        Teacher().fit(x, labels[:-1])
    with pytest.raises(BadInputError, match="no sample is labeled and model 'm' has no text tower"):
        build_prototypes(x, np.full(len(x), -1), 3, PrototypeConfig(), None, model="m")


def test_prototypes_from_columns_maps_names_to_codes():
    p = prototypes_from_columns(["b", "a"], np.eye(2, 3), np.array([4, 5]), np.array(["visual", "visual"]), ["a", "b"])
    assert p.classes.tolist() == [1, 0] and p.vectors.dtype == np.float32 and p.n_classes == 2
