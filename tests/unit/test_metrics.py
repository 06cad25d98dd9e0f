"""Tests for labelkit.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import calibration
from labelkit.errors import BadInputError
from labelkit.metrics import accuracy, expected_calibration_error, macro_f1, per_class_accuracy

# --- metrics -------------------------------------------------------------------------------------


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 50)
    p = np.where(rng.random(50) < 0.7, t, rng.integers(0, 5, 50))
    assert accuracy(t, p) == pytest.approx(accuracy_score(t, p))
    assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro"))
    pca = per_class_accuracy(t, p, 6)
    np.testing.assert_allclose(pca[:4], recall_score(t, p, average=None, labels=[0, 1, 2, 3]))
    assert np.isnan(pca[4:]).all()
    with pytest.raises(BadInputError, match="same length"):
        accuracy([0, 1], [0])


def test_per_class_accuracy_checks_n_classes():
    with pytest.raises(BadInputError, match="'n_classes' must be an int > max\\(y_true\\)=2"):
        per_class_accuracy([0, 2], [0, 2], 2)


def test_macro_f1_counts_predicted_only_classes():
    # Class 2 is predicted but never true: its F1 is 0 and it counts in the mean (scikit-learn's rule).
    assert macro_f1([0, 1], [0, 2]) == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_expected_calibration_error_is_the_calibration_one():
    assert expected_calibration_error is calibration.expected_calibration_error
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    # Bins (10): {0.9, 0.9} acc 1/2 -> |0.5 - 0.9| * 2/3; {0.6} acc 1 -> |1 - 0.6| * 1/3.
    assert expected_calibration_error(p, np.array([0, 1, 0]), n_bins=10) == pytest.approx(0.4)
