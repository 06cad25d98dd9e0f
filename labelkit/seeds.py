"""Seed cleaning: drop given labels that the rest of the labeled data cannot reproduce.

Pseudo-labels are propagated from the labeled samples (the seeds) and calibrated against them,
so a wrong seed both spreads its wrong label and teaches the calibration that confident scores
are often wrong. Before the final pass, each seed's held-out probabilities (its own label hidden:
the out-of-fold scores of :func:`labelkit.pseudolabel.heldout_calibration`) go through confident
learning; a seed it flags is treated as unlabeled when those probabilities also favour another
class at least ``odds`` to 1 over its label.

The odds matter with few seeds per class: a correct seed that is the only one in its part of the
class (a writing style, a sub-topic) is predicted wrongly once hidden, so confident learning
flags it too, and dropping it takes the labels of that whole region with it. Such seeds keep
some probability on their label, flipped ones almost none: on the distill benchmark's splits
(digits and MNIST-4k, 5 seeds each, 4-10 seeds per class) plain confident learning dropped 46
correct seeds (median probability of their label 0.16) and 59 flipped ones (median 0.008). At
odds 5, 15 and 58: the pseudo-labels gain 1.7 points (digits) and 2.2 (MNIST-4k).
"""

from __future__ import annotations

import numpy as np

from labelkit import noise
from labelkit import pseudolabel as pl
from labelkit.config import defaults
from labelkit.errors import BadInputError

DEFAULT_ODDS = defaults("pseudolabel").clean_seeds_odds  # declared once, in labelkit.config


def clean_seeds(embeddings, labels, n_classes: int, graph, prototypes=None, *, text_prototypes=None,
                options: pl.PseudolabelOptions = pl.PseudolabelOptions(), odds: float = DEFAULT_ODDS) -> tuple[np.ndarray, np.ndarray]:
    """Labels with the doubted seeds set to -1 (see :func:`drop_doubted`), and the mask of dropped seeds.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    n_classes : int
    graph : (sims, idx), each of shape (n_samples, k)
    prototypes, text_prototypes, options
        As for :func:`labelkit.pseudolabel.pseudolabel`; calibration folds are required, and
        every fold is scored whatever ``options.calibration_samples`` says.
    odds : float, default=5
        See :func:`drop_doubted`.

    Returns
    -------
    cleaned : ndarray of shape (n_samples,), int64
    dropped : ndarray of shape (n_samples,), bool

    References
    ----------
    Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
    JAIR 2021 (prune by noise rate on out-of-sample probabilities).

    Examples
    --------
    >>> x = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0, 1], [0.14, 0.99], [0.2, 0.98]], np.float32)
    >>> idx = np.array([[1, 2], [0, 2], [1, 0], [4, 5], [3, 5], [4, 3]])
    >>> sims = np.take_along_axis(x @ x.T, idx, axis=1)
    >>> given, opts = np.array([0, 0, 1, 1, 1, -1]), pl.PseudolabelOptions(n_folds=2)
    >>> clean_seeds(x, given, 2, (sims, idx), options=opts, odds=1)[1].tolist()  # plain confident learning
    [False, False, True, False, False, False]
    >>> clean_seeds(x, given, 2, (sims, idx), options=opts)[1].tolist()  # held out, row 2 favours class 0 only ~4 to 1
    [False, False, False, False, False, False]
    """
    return clean_and_calibrate(embeddings, labels, n_classes, graph, prototypes, text_prototypes=text_prototypes,
                               options=options, odds=odds)[:2]


def clean_and_calibrate(embeddings, labels, n_classes: int, graph, prototypes=None, *, text_prototypes=None,
                        options: pl.PseudolabelOptions = pl.PseudolabelOptions(), odds: float = DEFAULT_ODDS):
    """:func:`clean_seeds`, plus the held-out calibration it judged the seeds on (None when
    :func:`can_clean` says the seeds are too few): the final pass can reuse it when no seed was
    dropped (same labels, same folds)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not can_clean(labels, options.n_folds):
        return labels.copy(), np.zeros(len(labels), dtype=bool), None
    cal = pl.heldout_calibration(embeddings, labels, n_classes, graph, prototypes, text_prototypes=text_prototypes, options=options)
    return (*drop_doubted(labels, cal.rows, cal.probs, odds=odds), cal)


def can_clean(labels: np.ndarray, n_folds: int) -> bool:
    """Whether held-out scores can judge the seeds: at least two folds and two seeds per fold."""
    return n_folds >= 2 and int((np.asarray(labels) >= 0).sum()) >= 2 * n_folds


def drop_doubted(labels, rows, probs, *, odds: float = DEFAULT_ODDS) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` with the seeds that confident learning flags on their held-out ``probs``, and
    whose ``probs`` favour another class at least ``odds`` to 1, set to -1.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
    rows : ndarray of shape (n_heldout,)
        Labeled rows with held-out probabilities (``Calibration.rows``).
    probs : ndarray of shape (n_heldout, n_classes)
    odds : float, default=5
        >= 1. A flagged seed is dropped only if ``max_k p_k >= odds * p_label``; 1 drops every
        flagged seed (plain confident learning).

    Returns
    -------
    cleaned : ndarray of shape (n_samples,), int64
    dropped : ndarray of shape (n_samples,), bool

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021 (prune by noise rate).

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    >>> drop_doubted(np.array([0, 0, 1, 1, 1, -1]), np.arange(5), p)[1].tolist()
    [False, False, True, False, False, False]
    >>> drop_doubted(np.array([0, 0, 1, 1, 1, -1]), np.arange(5), p, odds=10)[1].tolist()
    [False, False, False, False, False, False]
    """
    if not odds >= 1:  # also rejects nan
        raise BadInputError(f"'odds' must be >= 1. Got {odds!r} instead.")
    labels = np.asarray(labels, dtype=np.int64)
    dropped = np.zeros(len(labels), dtype=bool)
    if len(rows) == 0:
        return labels.copy(), dropped
    given = labels[rows]
    flagged = noise.find_label_issues(given, probs)
    flagged &= probs.max(axis=1) >= odds * probs[np.arange(len(rows)), given]
    # Never empty a class: its last seeds stay, whatever confident learning says.
    for c in np.unique(given):
        members = given == c
        if flagged[members].all():
            flagged[members] = False
    dropped[rows[flagged]] = True
    return np.where(dropped, -1, labels), dropped
