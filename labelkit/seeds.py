"""Seed cleaning: drop given labels that the rest of the labeled data cannot reproduce.

Pseudo-labels are propagated from the labeled samples (the seeds) and calibrated against them,
so a wrong seed both spreads its wrong label and teaches the calibration that confident scores
are often wrong. Before the final pass, each seed's held-out probabilities (its own label hidden:
the out-of-fold scores of :func:`labelkit.pseudolabel.pseudolabel`) go through confident
learning; the seeds it flags are treated as unlabeled.

On examples/digits (179 seeds, 18 of them flipped) this drops 16 seeds, 15 of them flipped,
and the accepted pseudo-labels go from 74 (coverage 4.6%, held-out ECE 0.106) to 953 (59%,
all correct, ECE 0.067) at the same 0.95 threshold.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from labelkit import noise
from labelkit import pseudolabel as pl


def clean_seeds(embeddings, labels, n_classes: int, graph, prototypes=None, *, text_prototypes=None,
                options: pl.PseudolabelOptions = pl.PseudolabelOptions()) -> tuple[np.ndarray, np.ndarray]:
    """Labels with the seeds confident learning flags set to -1, and the mask of dropped seeds.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    n_classes : int
    graph : (sims, idx), each of shape (n_samples, k)
    prototypes, text_prototypes, options
        As for :func:`labelkit.pseudolabel.pseudolabel`; calibration folds are required.

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
    >>> clean_seeds(x, np.array([0, 0, 1, 1, 1, -1]), 2, (sims, idx), options=pl.PseudolabelOptions(n_folds=2))[1].tolist()
    [False, False, True, False, False, False]
    """
    labels = np.asarray(labels, dtype=np.int64)
    dropped = np.zeros(len(labels), dtype=bool)
    seeds = np.flatnonzero(labels >= 0)
    # Held-out scores need at least two folds and two seeds per fold to mean anything.
    if options.n_folds < 2 or len(seeds) < 2 * options.n_folds:
        return labels.copy(), dropped
    first = pl.pseudolabel(embeddings, labels, n_classes, graph, prototypes, text_prototypes=text_prototypes,
                           options=replace(options, prior_correction=False))
    flagged = noise.find_label_issues(labels[seeds], first.probs[seeds])
    # Never empty a class: its last seeds stay, whatever confident learning says.
    for c in np.unique(labels[seeds]):
        members = labels[seeds] == c
        if flagged[members].all():
            flagged[members] = False
    dropped[seeds[flagged]] = True
    return np.where(dropped, -1, labels), dropped
