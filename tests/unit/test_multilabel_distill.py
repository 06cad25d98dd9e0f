"""labelkit.distill.multilabel: sigmoid students with BCE on soft targets (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit.distill.multilabel import distil_multilabel, fit_multilabel_student, predict_multilabel_proba
from labelkit.errors import BadInputError


def _data(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(np.int8)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, :3] += 2.5 * y
    return x, y


def test_student_learns_independent_classes_with_sigmoid_outputs():
    x, y = _data()
    model, config = fit_multilabel_student(x[:200], y[:200].astype(np.float32), np.ones((200, 3)), architecture="linear", epochs=60, seed=0)
    p = predict_multilabel_proba(model, x[200:])
    assert config["task"] == "multi-label" and p.shape == (100, 3)
    assert ((p >= 0.5) == (y[200:] == 1)).mean() > 0.8  # logistic regression: 0.89
    assert (p.sum(axis=1) > 1.2).any()  # not a softmax: several classes can be near 1


def test_zero_weight_targets_are_ignored():
    x, y = _data(1)
    wrong = 1 - y.astype(np.float32)
    w = np.ones(y.shape, dtype=np.float32)
    w[:, 0] = 0.0  # class 0's (wrong) targets carry no weight
    a, _ = fit_multilabel_student(x, np.where(w > 0, y, wrong), w, architecture="linear", epochs=20, seed=3)
    b, _ = fit_multilabel_student(x, y.astype(np.float32), w, architecture="linear", epochs=20, seed=3)
    np.testing.assert_allclose(predict_multilabel_proba(a, x), predict_multilabel_proba(b, x), atol=1e-6)


def test_distil_keeps_held_out_thresholds_and_metrics():
    x, y = _data(2)
    y_unl = y.copy()
    y_unl[250:] = -1
    soft = np.zeros(y.shape, dtype=np.float32)
    soft[250:] = y[250:] * 0.9 + 0.05
    weight = np.r_[np.zeros(250), np.ones(50)]
    fit = distil_multilabel(x, y_unl, np.ones(y.shape), soft, weight, architecture="mlp", hidden=16, epochs=40, seed=0)
    assert fit.thresholds.shape == (3,) and ((fit.thresholds > 0) & (fit.thresholds < 1)).all()
    assert fit.metrics["n_val"] == 50 and fit.metrics["val_micro_f1"] > 0.8


def test_pixel_students_are_refused():
    x, y = _data()
    with pytest.raises(BadInputError, match="multi-label students are heads on embeddings"):
        fit_multilabel_student(x, y.astype(np.float32), np.ones(y.shape), architecture="cnn")
