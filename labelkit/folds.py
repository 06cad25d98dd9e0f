"""Stratified K-fold assignment shared by every held-out estimate (probe, calibration, distill)."""

from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per sample: classes shuffled within, then dealt round-robin in one running sequence.

    Dealing class after class from a running offset keeps every class spread over the folds
    (a class with m samples lands in min(m, n_folds) folds) and fold sizes within one of each
    other, even for classes with fewer samples than folds. ``labels`` holds class ids only (no -1).

    Examples
    --------
    >>> stratified_folds(np.array([0, 0, 1, 1, 1]), 2, np.random.default_rng(0)).tolist()
    [0, 1, 1, 0, 0]
    """
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    folds = np.empty(labels.shape[0], dtype=np.int64)
    folds[order] = np.arange(order.size) % n_folds
    return folds
