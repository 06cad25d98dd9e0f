"""Classification metrics for held-out evaluation (numpy in, float or array out).

``expected_calibration_error`` lives in :mod:`labelkit.calibration` (the pseudo-label stage
reports it too) and is re-exported here so every evaluation metric has one import path.
"""

from __future__ import annotations

import numpy as np

from labelkit._validation import check_labels
from labelkit.calibration import expected_calibration_error
from labelkit.errors import BadInputError

__all__ = ["accuracy", "macro_f1", "per_class_accuracy", "expected_calibration_error"]


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = check_labels(y_true, allow_unlabeled=False, name="y_true")
    p = check_labels(y_pred, allow_unlabeled=False, name="y_pred")
    if t.shape != p.shape:
        raise BadInputError(f"'y_true' and 'y_pred' must have the same length. Got {t.shape[0]} and {p.shape[0]}.")
    if t.size == 0:
        raise BadInputError("'y_true' is empty.")
    return t, p


def accuracy(y_true, y_pred) -> float:
    """Fraction of ``y_pred`` equal to ``y_true`` (both (n_samples,) int).

    >>> round(accuracy([0, 1, 1], [0, 1, 0]), 3)
    0.667
    """
    t, p = _check_pair(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean over classes (those in ``y_true`` or ``y_pred``) of per-class F1.

    A class with no true and no correct prediction has F1 0, as in scikit-learn's ``f1_score(average="macro")``.

    >>> round(macro_f1([0, 0, 1, 1], [0, 0, 1, 0]), 3)
    0.733
    """
    t, p = _check_pair(y_true, y_pred)
    classes = np.union1d(t, p)
    tp = np.array([np.sum((t == c) & (p == c)) for c in classes], dtype=np.float64)
    fp = np.array([np.sum((t != c) & (p == c)) for c in classes], dtype=np.float64)
    fn = np.array([np.sum((t == c) & (p != c)) for c in classes], dtype=np.float64)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def per_class_accuracy(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Per-class recall: fraction of class-c samples predicted c; shape (n_classes,), NaN for absent classes.

    >>> per_class_accuracy([0, 0, 1], [0, 1, 1], 3).tolist()
    [0.5, 1.0, nan]
    """
    t, p = _check_pair(y_true, y_pred)
    if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 1) or t.max() >= n_classes:
        raise BadInputError(f"'n_classes' must be an int > max(y_true)={int(t.max())}. Got {n_classes!r} instead.")
    total = np.bincount(t, minlength=n_classes).astype(np.float64)
    hit = np.bincount(t[t == p], minlength=n_classes).astype(np.float64)
    return np.divide(hit, total, out=np.full(n_classes, np.nan), where=total > 0)
