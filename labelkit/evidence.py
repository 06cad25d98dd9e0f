"""Evidence of label issues: kNN vote, conflicting near-duplicates, outliers, the choice between
probability sources, and the combination (with training dynamics) into one label quality.

Numpy in, numpy out. Every function reads a kNN graph as ``sims`` and ``idx`` of shape
(n_samples, k), self excluded, -1 = missing. :func:`knn_vote_probs` gives out-of-sample
probabilities that :mod:`labelkit.noise` (confident learning) can take as ``probs``;
:func:`choose_probs` keeps whichever of several such sources predicts the given labels better.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import NamedTuple

import numpy as np

from labelkit._validation import check_labels, check_probs
from labelkit.cartography import DynamicsEvidence
from labelkit.config import defaults
from labelkit.errors import BadInputError
from labelkit.neighbours import check_graph, vote
from labelkit.noise import _enum

_DETECT = defaults("detect-noise")  # the duplicate threshold and outlier cut default to the detect-noise stage's

__all__ = [
    "Weighting", "SelectBy", "KnnLabelIssues", "DuplicateConflicts", "Outliers", "ProbsChoice", "LabelQuality",
    "knn_vote_probs", "knn_label_issues", "find_conflicting_duplicates", "find_outliers",
    "choose_probs", "combine_evidence", "combine_scored",
]


class Weighting(str, Enum):
    """How each neighbour's vote is weighted in :func:`knn_vote_probs`."""

    UNIFORM = "uniform"
    SIMILARITY = "similarity"  # max(cosine similarity, 0)


class SelectBy(str, Enum):
    """The out-of-sample score :func:`choose_probs` compares sources by (higher is better)."""

    ACCURACY = "accuracy"  # share of labeled rows whose argmax is the given label
    LOG_LIKELIHOOD = "log_likelihood"  # mean log p[i, y_i], p clipped below at 1e-6


# ----------------------------------------------------------------------------- results


class DuplicateConflicts(NamedTuple):
    """``is_issue`` (N,) bool; ``partner`` (N,) int64, the most similar conflicting duplicate
    (-1 if none); ``similarity`` (N,) float32 to it (NaN if none)."""

    is_issue: np.ndarray
    partner: np.ndarray
    similarity: np.ndarray


class Outliers(NamedTuple):
    """``distance`` (N,) mean cosine distance to the neighbours (NaN if none); ``score`` (N,) in
    [0, 1], 0.5 at the cut; ``is_issue`` (N,) bool."""

    distance: np.ndarray
    score: np.ndarray
    is_issue: np.ndarray


class KnnLabelIssues(NamedTuple):
    """``knn_probs`` (N, K) leave-one-out vote; ``agreement`` (N,) its mass on the given label
    (NaN if unlabeled); ``suggested_label`` (N,) its argmax; ``is_issue`` (N,) bool."""

    knn_probs: np.ndarray
    agreement: np.ndarray
    suggested_label: np.ndarray
    is_issue: np.ndarray


class ProbsChoice(NamedTuple):
    """What :func:`choose_probs` returns: ``chosen`` (the winning key), ``by`` (the rule) and
    ``scores`` {key: {"accuracy": float, "log_likelihood": float}} for every candidate."""

    chosen: str
    by: str
    scores: dict


def _given_prob(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """probs[i, labels[i]] per row (float64), NaN where unlabeled."""
    out = np.full(len(labels), np.nan)
    lab = np.flatnonzero(labels >= 0)
    out[lab] = probs[lab, labels[lab]]
    return out


def _check_probs_for(labels: np.ndarray, probs, name: str = "probs") -> np.ndarray:
    """Validated probabilities with one row per label and a column for every label."""
    probs = check_probs(probs)
    if len(probs) != len(labels) or labels.max(initial=-1) >= probs.shape[1]:
        raise BadInputError(f"'{name}' must have shape ({len(labels)}, n_classes > max label). Got {probs.shape} instead.")
    return probs


def knn_vote_probs(labels: np.ndarray, sims: np.ndarray, idx: np.ndarray, n_classes: int, *,
                   weighting: Weighting | str = Weighting.SIMILARITY, smoothing: float = 1.0) -> np.ndarray:
    """Leave-one-out class probabilities from the labels of each sample's neighbours.

    probs[i, c] = (sum of w_ij over labeled neighbours j with label c + smoothing / K)
    / (sum of w_ij + smoothing); w_ij = 1 (``uniform``) or max(s_ij, 0) (``similarity``).
    The sample itself never votes, so these are out-of-sample probabilities that confident
    learning can use. A row with no weight and ``smoothing=0`` is uniform.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled (does not vote).
    sims, idx : ndarray of shape (n_samples, k)
        Cosine similarities and row indices of the neighbours (-1 = missing), self excluded.
    n_classes : int
    weighting : Weighting or str, default="similarity"
    smoothing : float, default=1.0
        Additive (Laplace) smoothing mass, spread uniformly over the classes.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes), float32

    References
    ----------
    Zhu, Dong & Liu, "Detecting Corrupted Labels Without Training a Model to Predict",
    ICML 2022 (SimiFeat's local vote).

    Examples
    --------
    >>> knn_vote_probs(np.array([0, 0, 1]), np.ones((3, 1)), np.array([[1], [0], [0]]), 2, smoothing=0)
    array([[1., 0.],
           [1., 0.],
           [1., 0.]], dtype=float32)
    """
    if int(n_classes) != n_classes or n_classes < 1:
        raise BadInputError(f"'n_classes' must be an integer >= 1. Got {n_classes!r} instead.")
    labels = check_labels(labels, n_classes=int(n_classes))
    weighting = _enum(Weighting, weighting, "weighting")
    if not smoothing >= 0:
        raise BadInputError(f"'smoothing' must be >= 0. Got {smoothing!r} instead.")
    sims, idx, valid = check_graph(sims, idx, len(labels))
    return vote(labels, sims, idx, valid, int(n_classes), power=0.0 if weighting is Weighting.UNIFORM else 1.0, smoothing=float(smoothing))


def knn_label_issues(labels: np.ndarray, sims: np.ndarray, idx: np.ndarray, n_classes: int, *,
                     weighting: Weighting | str = Weighting.SIMILARITY, smoothing: float = 1.0,
                     min_agreement: float = 0.5) -> KnnLabelIssues:
    """Flag labeled samples whose neighbours confidently vote for another class.

    A sample is an issue when the argmax c of its leave-one-out vote (:func:`knn_vote_probs`)
    differs from its label, receives strictly more mass than the label, and holds at least
    ``min_agreement`` of the mass.

    Parameters
    ----------
    labels, sims, idx, n_classes, weighting, smoothing
        As in :func:`knn_vote_probs`.
    min_agreement : float, default=0.5
        Vote share the neighbours' majority needs to overrule the label.

    Returns
    -------
    KnnLabelIssues

    References
    ----------
    Zhu, Dong & Liu, "Detecting Corrupted Labels Without Training a Model to Predict",
    ICML 2022.
    """
    if not 0 <= min_agreement <= 1:
        raise BadInputError(f"'min_agreement' must be in [0, 1]. Got {min_agreement!r} instead.")
    probs = knn_vote_probs(labels, sims, idx, n_classes, weighting=weighting, smoothing=smoothing)
    labels = np.asarray(labels, dtype=np.int64)
    agree = _given_prob(labels, probs).astype(np.float32)
    best = probs.argmax(axis=1)
    top = probs[np.arange(len(labels)), best]
    issue = (labels >= 0) & (best != labels) & (top > np.nan_to_num(agree)) & (top >= min_agreement)
    return KnnLabelIssues(probs, agree, best.astype(np.int64), issue)


def find_conflicting_duplicates(labels: np.ndarray, sims: np.ndarray, idx: np.ndarray, *,
                                threshold: float = _DETECT.duplicate_threshold, probs: np.ndarray | None = None) -> DuplicateConflicts:
    """Near-duplicate pairs (cosine similarity >= ``threshold``) whose given labels differ.

    A pair counts whichever of its two members lists the other as a neighbour. At most one of
    two conflicting labels can be right, so with ``probs`` only the member whose given label
    the probabilities support less (lower ``probs[i, y_i]``) is flagged; both are flagged when
    the two are tied, or without ``probs``.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled (never in conflict).
    sims, idx : ndarray of shape (n_samples, k)
        The kNN graph, self excluded.
    threshold : float, default: the detect-noise stage's ``duplicate_threshold``
    probs : ndarray of shape (n_samples, n_classes), default=None
        Out-of-sample probabilities that decide which member of a pair is flagged.

    Returns
    -------
    DuplicateConflicts
        ``partner`` is the most similar duplicate the sample is flagged against.

    References
    ----------
    Northcutt, Athalye & Mueller, "Pervasive Label Errors in Test Sets Destabilize Machine
    Learning Benchmarks", NeurIPS Datasets and Benchmarks 2021 (near-duplicates in test sets).

    Examples
    --------
    >>> find_conflicting_duplicates(np.array([0, 1, 1]), np.array([[.99], [.99], [.5]]), np.array([[1], [0], [0]])).is_issue.tolist()
    [True, True, False]
    >>> p = np.array([[.3, .7], [.2, .8], [.1, .9]])
    >>> find_conflicting_duplicates(np.array([0, 1, 1]), np.array([[.99], [.99], [.5]]), np.array([[1], [0], [0]]), probs=p).is_issue.tolist()
    [True, False, False]
    """
    labels = check_labels(labels)
    if not -1 <= threshold <= 1:
        raise BadInputError(f"'threshold' must be in [-1, 1]. Got {threshold!r} instead.")
    sims, idx, valid = check_graph(sims, idx, len(labels))
    support = np.zeros(len(labels))
    if probs is not None:
        support = _given_prob(labels, _check_probs_for(labels, probs))
    other = labels[np.where(valid, idx, 0)]
    hit = valid & (sims >= threshold) & (labels[:, None] >= 0) & (other >= 0) & (other != labels[:, None])
    a = np.broadcast_to(np.arange(len(labels))[:, None], hit.shape)[hit]
    b, s = idx[hit], sims[hit]
    src, dst, sim = np.r_[a, b], np.r_[b, a], np.r_[s, s]  # symmetric: either end may be flagged
    keep = support[src] <= support[dst]  # the less supported member (both when tied)
    src, dst, sim = src[keep], dst[keep], sim[keep]
    order = np.lexsort((-sim, src))
    first = order[np.r_[True, src[order][1:] != src[order][:-1]]] if order.size else order
    partner = np.full(len(labels), -1, dtype=np.int64)
    similarity = np.full(len(labels), np.nan, dtype=np.float32)
    partner[src[first]], similarity[src[first]] = dst[first], sim[first]
    return DuplicateConflicts(partner >= 0, partner, similarity)


def find_outliers(sims: np.ndarray, idx: np.ndarray, *, cut: float = _DETECT.outlier_cut) -> Outliers:
    """Outliers by mean cosine distance to the k neighbours, with a robust (median/MAD) cut.

    z = 0.6745 (d - median d) / MAD (the modified z-score; MAD falls back to 1.2533 x the mean
    absolute deviation when it is 0); flagged when z > ``cut``; score = z+ / (z+ + cut), so 0 up
    to the median, 0.5 at the cut and towards 1 beyond. Rows without neighbours get NaN and are
    not flagged.

    Parameters
    ----------
    sims, idx : ndarray of shape (n_samples, k)
        The kNN graph, self excluded.
    cut : float, default: the detect-noise stage's ``outlier_cut``

    Returns
    -------
    Outliers

    References
    ----------
    Iglewicz & Hoaglin, "How to Detect and Handle Outliers", ASQC 1993 (modified z-score);
    kNN distance as outlier score: Ramaswamy, Rastogi & Shim, SIGMOD 2000.
    """
    if not cut > 0:
        raise BadInputError(f"'cut' must be > 0. Got {cut!r} instead.")
    sims, idx, valid = check_graph(sims, idx)
    n_valid = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = (np.where(valid, 1.0 - sims.astype(np.float64), 0).sum(axis=1) / n_valid).astype(np.float32)
        ok = n_valid > 0
        med = np.median(dist[ok]) if ok.any() else 0.0
        dev = np.abs(dist[ok] - med)
        scale = np.median(dev) / 0.6745 if dev.size else 0.0
        if scale == 0 and dev.size:
            scale = 1.2533 * dev.mean()
        z = (dist - med) / scale if scale > 0 else np.zeros_like(dist)
    zp = np.where(ok, np.maximum(z, 0), np.nan)
    score = (zp / (zp + cut)).astype(np.float32)
    return Outliers(dist, score, ok & (z > cut))


# ----------------------------------------------------------------------------- choice of probabilities

_LL_FLOOR = 1e-6  # log p is clipped at log(1e-6): one exact 0 must not decide the comparison


def choose_probs(labels: np.ndarray, candidates: Mapping[str, np.ndarray], *,
                 by: SelectBy | str = SelectBy.ACCURACY) -> ProbsChoice:
    """Keep the out-of-sample probability source that predicts the given labels best.

    Both scores are computed for every candidate over the labeled rows: ``accuracy`` (share
    whose argmax is the given label) and ``log_likelihood`` (mean log p[i, y_i], p clipped
    below at 1e-6). ``by`` picks the winner, the other score breaks a tie (then the first
    candidate wins). The given labels
    are noisy, but under noise that flips a label to the other classes uniformly, accuracy
    against the given labels is (1 - eta) acc + eta (1 - acc) / (K - 1), increasing in the
    clean accuracy whenever eta < (K - 1) / K, so it ranks the sources as clean accuracy would.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled (ignored).
    candidates : mapping of str to ndarray of shape (n_samples, n_classes)
        Out-of-sample probabilities (every row's from a model that did not see its label).
    by : SelectBy or str, default="accuracy"

    Returns
    -------
    ProbsChoice

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021 (confident learning needs out-of-sample probabilities;
    a better model finds label errors better, section 6).

    Examples
    --------
    >>> y = np.array([0, 1, 1])
    >>> choose_probs(y, {"a": np.array([[.6, .4], [.6, .4], [.2, .8]]), "b": np.array([[.9, .1], [.4, .6], [.3, .7]])}).chosen
    'b'
    """
    labels = check_labels(labels)
    by = _enum(SelectBy, by, "by")
    if not candidates:
        raise BadInputError("'candidates' must hold at least one probability array. Got none instead.")
    lab = labels >= 0
    if not lab.any():
        raise BadInputError("'labels' must have at least one labeled row (>= 0). Got none instead.")
    scores = {}
    for name, probs in candidates.items():
        probs = _check_probs_for(labels, probs, name)
        given = _given_prob(labels, probs)[lab]
        scores[name] = {
            SelectBy.ACCURACY.value: float(np.mean(probs[lab].argmax(axis=1) == labels[lab])),
            SelectBy.LOG_LIKELIHOOD.value: float(np.mean(np.log(np.maximum(given, _LL_FLOOR)))),
        }
    other = next(m.value for m in SelectBy if m is not by)
    # Accuracy ties often on few labels; then the likelihood still tells the sources apart.
    chosen = max(scores, key=lambda k: (scores[k][by.value], scores[k][other]))  # max keeps the first of equals
    return ProbsChoice(chosen, by.value, scores)


# ----------------------------------------------------------------------------- combination


class LabelQuality(NamedTuple):
    """Per-sample summary (the ``label_issues`` artifact): ``label_quality`` (N,) in [0, 1]
    (NaN if unlabeled), ``suggested_label`` (N,) int64, ``is_issue`` (N,) bool, ``issue_type``
    (N,) object ('label', 'duplicate', 'dynamics', 'outlier' or None), ``rank`` (N,) int64
    (1 = most likely wrong, -1 if unlabeled)."""

    label_quality: np.ndarray
    suggested_label: np.ndarray
    is_issue: np.ndarray
    issue_type: np.ndarray
    rank: np.ndarray


_TYPES = ("label", "duplicate", "dynamics", "outlier")  # issue_type precedence, first wins


def combine_evidence(labels: np.ndarray, *, probs: np.ndarray | None = None,
                     label_issues: np.ndarray | None = None,
                     duplicates: DuplicateConflicts | None = None,
                     outliers: Outliers | None = None,
                     dynamics: DynamicsEvidence | None = None,
                     doubted: np.ndarray | None = None) -> LabelQuality:
    """Combine the evidence into one label-quality score, a suggestion, a type and a rank.

    Rule, per labeled sample (unlabeled rows: NaN, -1, not issues):

    - q_label = probs[i, y_i] (the self-confidence; 1 without ``probs``);
      q_dup = 1 - s for a flagged conflicting duplicate at similarity s, else 1;
      q_dyn = 1 - the training-dynamics score (1 where there are none);
      q_out = 1 - outlier score.
    - ``label_quality`` = min(q_label, q_dup, q_dyn, q_out): the strongest single piece of evidence.
    - ``is_issue`` = label issue or conflicting duplicate or hard-to-learn in the training
      dynamics, or an outlier whose label is also ``doubted``. Being far from every other
      sample says little about the label by itself, so an outlier alone is reported
      (``issue_type`` 'outlier', low quality) but is not an issue.
    - ``issue_type`` is the first that applies of 'label', 'duplicate', 'dynamics', 'outlier',
      None otherwise.
    - ``suggested_label`` = argmax of ``probs`` (the given label without ``probs``).
    - ``rank``: issues first, then the rest, each by ascending quality (ties by row), from 1.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
    probs : ndarray of shape (n_samples, n_classes), default=None
        Out-of-sample probabilities (a model's, or :func:`knn_vote_probs`).
    label_issues : ndarray of shape (n_samples,) bool, default=None
        E.g. :func:`labelkit.noise.find_label_issues` or ``knn_label_issues(...).is_issue``.
    duplicates : DuplicateConflicts, default=None
    outliers : Outliers, default=None
    dynamics : DynamicsEvidence, default=None
        :func:`labelkit.cartography.dynamics_evidence` of a model trained on the given labels.
    doubted : ndarray of shape (n_samples,) bool, default=None
        Rows whose given label the probabilities doubt (e.g. the off-diagonal rows of confident
        learning's confident joint); only these outliers are issues. None: no outlier is one.

    Returns
    -------
    LabelQuality

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021 (self-confidence); Zhu, Dong & Liu, ICML 2022;
    Swayamdipta et al., "Dataset Cartography", EMNLP 2020 (training dynamics).

    Examples
    --------
    >>> r = combine_evidence(np.array([0, 1, -1]), probs=np.array([[.9, .1], [.8, .2], [.5, .5]]), label_issues=np.array([False, True, False]))
    >>> r.issue_type.tolist(), r.rank.tolist()
    ([None, 'label', None], [2, 1, -1])
    """
    labels = check_labels(labels)
    given = suggested = None
    if probs is not None:
        probs = _check_probs_for(labels, probs)
        given, suggested = _given_prob(labels, probs), probs.argmax(axis=1).astype(np.int64)
    masks, doubted = _checked_masks(labels, label_issues, duplicates, dynamics, outliers, doubted)
    return _combine_impl(labels, given, suggested, masks, duplicates, dynamics, outliers, doubted)


def combine_scored(labels: np.ndarray, self_confidence: np.ndarray, predicted: np.ndarray, *,
                   label_issues: np.ndarray | None = None,
                   duplicates: DuplicateConflicts | None = None,
                   outliers: Outliers | None = None,
                   dynamics: DynamicsEvidence | None = None,
                   doubted: np.ndarray | None = None) -> LabelQuality:
    """:func:`combine_evidence` from what it reads of the probabilities, computed by the caller:
    each row's ``self_confidence`` p_{i, y_i} and its ``predicted`` argmax.

    Confident learning computes both in its pass over the probabilities
    (:func:`labelkit.noise.confident_learning`), which also validates them: this spares a second
    validation and an argmax pass over an (n_samples, n_classes) array.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
    self_confidence : ndarray of shape (n_samples,)
        p_{i, y_i} of each labeled row (any value where unlabeled).
    predicted : ndarray of shape (n_samples,)
        argmax_j p_ij of each row: the suggested label.
    label_issues, duplicates, outliers, dynamics, doubted
        As in :func:`combine_evidence`.

    Returns
    -------
    LabelQuality

    Examples
    --------
    >>> r = combine_scored(np.array([0, 1, -1]), np.array([.9, .2, np.nan]), np.array([0, 0, 0]), label_issues=np.array([False, True, False]))
    >>> r.issue_type.tolist(), r.rank.tolist(), r.suggested_label.tolist()
    ([None, 'label', None], [2, 1, -1], [0, 0, 0])
    """
    labels = check_labels(labels)
    n = len(labels)
    given = np.asarray(self_confidence, dtype=np.float64)
    suggested = np.asarray(predicted)
    if given.shape != (n,) or suggested.shape != (n,) or not np.issubdtype(suggested.dtype, np.integer):
        raise BadInputError(f"'self_confidence' and 'predicted' must have {n} rows (predicted: integers). "
                            f"Got shapes {given.shape} and {suggested.shape} instead.")
    masks, doubted = _checked_masks(labels, label_issues, duplicates, dynamics, outliers, doubted)
    return _combine_impl(labels, given, suggested.astype(np.int64, copy=False), masks, duplicates, dynamics, outliers, doubted)


def _checked_masks(labels, label_issues, duplicates, dynamics, outliers, doubted) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each issue type's rows (labeled only) and ``doubted``, with their shapes checked."""
    n = len(labels)
    masks = {}
    for name, ev in zip(_TYPES, (label_issues, duplicates, dynamics, outliers)):
        mask = np.zeros(n, dtype=bool) if ev is None else np.asarray(ev if name == "label" else ev.is_issue, dtype=bool)
        if mask.shape != (n,):
            raise BadInputError(f"'{name}' evidence must have {n} rows. Got shape {mask.shape} instead.")
        masks[name] = mask & (labels >= 0)
    doubted = np.zeros(n, dtype=bool) if doubted is None else np.asarray(doubted, dtype=bool)
    if doubted.shape != (n,):
        raise BadInputError(f"'doubted' must have {n} rows. Got shape {doubted.shape} instead.")
    return masks, doubted


def _combine_impl(labels, given, suggested, masks, duplicates, dynamics, outliers, doubted) -> LabelQuality:
    """:func:`combine_evidence` on checked inputs: ``given`` p_{i, y_i} and ``suggested`` (argmax)
    per row, both None without probabilities; ``masks``: each issue type's rows, labeled only."""
    n = len(labels)
    lab = labels >= 0
    quality = np.ones(n)
    if given is None:
        suggested = labels.copy()
    else:
        quality[lab] = given[lab]
    if duplicates is not None:
        quality = np.minimum(quality, np.where(masks["duplicate"], 1.0 - np.nan_to_num(duplicates.similarity), 1.0))
    if dynamics is not None:
        quality = np.minimum(quality, np.asarray(dynamics.label_quality, dtype=np.float64))
    if outliers is not None:
        quality = np.minimum(quality, 1.0 - np.nan_to_num(outliers.score))
    quality = np.clip(quality, 0.0, 1.0)
    quality[~lab] = np.nan
    issue_type = np.full(n, None, dtype=object)
    for name in reversed(_TYPES):
        issue_type[masks[name]] = name  # later assignments win: the order of _TYPES
    is_issue = masks["label"] | masks["duplicate"] | masks["dynamics"] | (masks["outlier"] & doubted)
    rows = np.flatnonzero(lab)
    order = rows[np.lexsort((rows, quality[rows], ~is_issue[rows]))]
    rank = np.full(n, -1, dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return LabelQuality(quality.astype(np.float32), suggested, is_issue, issue_type, rank)
