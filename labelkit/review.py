"""Judging the given labels: confident learning once, the evidence combined, and a second model
family's confirmation that decides whether the flags are strong evidence or only a review queue.

Numpy in, numpy out (labelkit.noise, labelkit.evidence underneath).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from labelkit import evidence, noise


class Judgement(NamedTuple):
    """What :func:`judge` returns."""

    quality: evidence.LabelQuality  # per row: label quality, is_issue, issue type, rank, suggested label
    cl: noise.ConfidentLearning  # the one confident-learning analysis (joint and noise matrices too)
    accuracy: float  # the chosen probabilities' accuracy on the given labels
    n_candidates: int  # label flags before the confirmation
    consensus: float | None  # confirmation of the label flags by the second opinion (None without one)
    weak: bool  # consensus below the minimum: only confirmed flags within the budget stay issues


def judge(labels: np.ndarray, probs: np.ndarray, *, second: np.ndarray | None = None, duplicates=None, outliers=None, dynamics=None,
          filter_by: str, rank_by: str, min_consensus: float, review_budget: float) -> Judgement:
    """Confident learning on ``probs`` (once), the evidence combined, and the second opinion's say.

    Parameters
    ----------
    labels : ndarray of shape (n,)
    probs : ndarray of shape (n, K)
        Out-of-sample probabilities.
    second : ndarray of shape (n, K), optional
        Another model family's out-of-sample probabilities; none for the user's own probabilities.
    duplicates, outliers, dynamics : optional evidence (labelkit.evidence, labelkit.cartography)
    filter_by, rank_by : str
        Confident learning's filter and score methods (the detect-noise config's ``filter_by``, ``rank_by``).
    min_consensus : float
        Below this confirmation the evidence is weak (config ``min_consensus``).
    review_budget : float
        Share of the rows that may stay flagged when the evidence is weak (config ``review_budget``).
    """
    cl = noise.confident_learning(labels, probs, method=filter_by, score_method=rank_by)
    # Confident learning doubts a label when the row falls off the diagonal of the confident joint,
    # C[y][j], j != y (another class clears its threshold t_j; Northcutt et al. 2021, eq. 1): only
    # such outliers are issues. Measured on digits, an outlier alone was a flipped label 0-19% of the time.
    q = evidence.combine_evidence(labels, probs=probs, label_issues=cl.issues.is_issue, duplicates=duplicates, outliers=outliers,
                                  dynamics=dynamics, doubted=cl.off_diagonal)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    label_flags = q.is_issue & (q.issue_type == "label")
    # A wrong label is contradicted by any good model; a weak model's own errors are idiosyncratic.
    # So when the other model family (linear probe vs kNN vote) confirms few of the chosen source's
    # label flags beyond chance, most flags are the models' errors, not the labels': weak evidence.
    # Measured: digits with 10% flipped 0.73, synthetic clusters with 20% flipped 0.83; CIFAR-10 on
    # EfficientNet-Lite0 features (0.5% wrong labels) 0.23; random vectors 0.
    consensus = weak = None
    if second is not None:
        also = noise.detect_label_issues(labels, second, method=filter_by, score_method=rank_by).is_issue
        consensus = confirmation(label_flags, also)
        weak = consensus < min_consensus
        if weak:
            q = q._replace(is_issue=within_budget(q, also, budget=int(np.ceil(review_budget * len(labels)))))
    return Judgement(q, cl, accuracy, int(label_flags.sum()), consensus, bool(weak))


def confirmation(flags: np.ndarray, other: np.ndarray) -> float:
    """How far a second source's flags ``other`` confirm ``flags`` beyond chance, in [-1, 1] (kappa-like):
    (p_o - p_e) / (1 - p_e), with p_o the share of ``flags`` that ``other`` also flags and p_e the
    share of all rows ``other`` flags. 1 when none is flagged (nothing to doubt).

    >>> confirmation(np.array([True, True, False, False]), np.array([True, True, False, False]))
    1.0
    >>> confirmation(np.array([True, True, True, True]), np.array([True, True, False, False]))
    0.0
    """
    if not flags.any():
        return 1.0
    p_o = float((flags & other).sum() / flags.sum())
    p_e = float(other.mean())
    return 1.0 if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def within_budget(q: evidence.LabelQuality, also: np.ndarray, *, budget: int) -> np.ndarray:
    """``is_issue`` keeping only the label flags that the second source ``also`` flags, at most the
    ``budget`` most likely (by rank); other issue types kept.

    >>> q = evidence.LabelQuality(np.zeros(4), np.zeros(4, int), np.array([True, True, True, True]),
    ...                           np.array(["label", "label", "label", "outlier"], dtype=object), np.array([3, 1, 2, 4]))
    >>> within_budget(q, np.array([True, True, False, False]), budget=1).tolist()
    [False, True, False, True]
    """
    label = q.is_issue & (q.issue_type == "label")
    out = q.is_issue & ~(label & ~also)
    flagged = np.flatnonzero(label & also)
    out[flagged[np.argsort(q.rank[flagged], kind="stable")][budget:]] = False
    return out
