"""Acceptance rules: which pseudo-labels are trusted enough to use (numpy in, numpy out).

Every rule looks only at each row's confidence ``max_c p_ic``, predicted class and margin, so
:func:`accept` works on any number of rows with O(N) extra memory.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from labelkit._probability import ROW_CHUNK, check_unit, margin
from labelkit._validation import check_probs
from labelkit.config import defaults
from labelkit.errors import BadInputError

_TAU = defaults("pseudolabel").threshold  # tau defaults to the pseudolabel stage's --threshold


class ThresholdRule(str, Enum):
    """Which rule decides that a pseudo-label is accepted."""

    FIXED = "fixed"  # confidence >= value (FixMatch: 0.95)
    FLEXMATCH = "flexmatch"  # per-class value * M(beta_c) (FlexMatch)
    TOP_PER_CLASS = "top_per_class"  # the `value` most confident samples of each predicted class
    MARGIN = "margin"  # top1 - top2 >= value


def _confidence_and_class(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row max and argmax, by row chunks."""
    conf = np.empty(probs.shape[0], dtype=probs.dtype)
    pred = np.empty(probs.shape[0], dtype=np.int64)
    for lo in range(0, probs.shape[0], ROW_CHUNK):
        blk = probs[lo : lo + ROW_CHUNK]
        pred[lo : lo + ROW_CHUNK] = blk.argmax(axis=1)
        conf[lo : lo + ROW_CHUNK] = np.take_along_axis(blk, pred[lo : lo + ROW_CHUNK, None], axis=1)[:, 0]
    return conf, pred


def threshold_fixed(probs, *, tau: float = _TAU) -> np.ndarray:
    """Accept the samples whose confidence ``max_c p_ic`` is at least ``tau``.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    tau : float, default: the pseudolabel stage's ``threshold``

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
    Confidence", NeurIPS 2020.

    Examples
    --------
    >>> threshold_fixed(np.array([[0.96, 0.04], [0.6, 0.4], [0.05, 0.95]])).tolist()
    [True, False, True]
    """
    probs = check_probs(probs)
    check_unit("tau", tau)
    return _confidence_and_class(probs)[0] >= tau


def threshold_flexmatch(probs, *, tau: float = _TAU, warmup: bool = True) -> np.ndarray:
    """Class-adaptive thresholds scaled by each class's learning status (FlexMatch).

    ``sigma_c`` counts the samples predicted ``c`` with confidence ``>= tau``;
    ``beta_c = sigma_c / max(max_c sigma_c, n_unused)`` with warm-up (``n_unused`` = samples
    confident for no class), else ``sigma_c / max_c sigma_c``; the threshold of class ``c`` is
    ``M(beta_c) tau`` with the convex mapping ``M(x) = x / (2 - x)``. A sample is accepted when
    its confidence reaches the threshold of its predicted class. Classes that few samples are
    confident about get lower thresholds; with no confident sample at all, every threshold is 0.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    tau : float, default: the pseudolabel stage's ``threshold``
    warmup : bool, default=True

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Zhang et al., "FlexMatch: Boosting Semi-Supervised Learning with Curriculum Pseudo
    Labeling", NeurIPS 2021.

    Examples
    --------
    >>> p = np.array([[0.97, 0.03], [0.96, 0.04], [0.9, 0.1], [0.2, 0.8]])
    >>> threshold_flexmatch(p, warmup=False).tolist()  # class 1 has sigma 0: threshold 0
    [True, True, False, True]
    """
    probs = check_probs(probs)
    check_unit("tau", tau)
    conf, pred = _confidence_and_class(probs)
    return _flexmatch_impl(conf, pred, probs.shape[1], tau, bool(warmup))


def _flexmatch_impl(conf, pred, n_classes, tau, warmup) -> np.ndarray:
    sigma = np.bincount(pred[conf >= tau], minlength=n_classes)
    return conf >= flexmatch_class_thresholds(sigma, conf.shape[0] - int(sigma.sum()), tau, warmup)[pred]


def flexmatch_class_thresholds(sigma: np.ndarray, n_unused: int, tau: float, warmup: bool = True) -> np.ndarray:
    """FlexMatch's per-class thresholds ``M(beta_c) tau`` from ``sigma`` (n_classes,), the count of
    samples confidently predicted as each class, and ``n_unused``, those confident for none.
    Unchecked: the training loop calls it every step."""
    sigma = np.asarray(sigma, dtype=np.float64)
    norm = max(sigma.max(initial=0.0), float(n_unused)) if warmup else sigma.max(initial=0.0)
    beta = sigma / norm if norm > 0 else np.zeros_like(sigma)
    return beta / (2.0 - beta) * tau


def threshold_top_per_class(probs, *, n_per_class: int) -> np.ndarray:
    """Accept, for each predicted class, its ``n_per_class`` most confident samples.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    n_per_class : int
        ``>= 0``; a class predicted for fewer samples keeps them all. Ties are broken by row
        order.

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Class-balanced selection as in curriculum/self-training pseudo-labelling, e.g. Zou et al.,
    "Unsupervised Domain Adaptation for Semantic Segmentation via Class-Balanced Self-Training",
    ECCV 2018.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> threshold_top_per_class(p, n_per_class=1).tolist()
    [True, False, True, False]
    """
    probs = check_probs(probs)
    _check_count(n_per_class)
    conf, pred = _confidence_and_class(probs)
    return _top_per_class_impl(conf, pred, int(n_per_class))


def _check_count(n_per_class) -> None:
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 0:
        raise BadInputError(f"'n_per_class' must be an integer >= 0. Got {n_per_class!r} instead.")


def _top_per_class_impl(conf, pred, n_per_class) -> np.ndarray:
    order = np.lexsort((np.arange(conf.size), -conf, pred))  # by class, then confidence, then row
    sorted_pred = pred[order]
    starts = np.searchsorted(sorted_pred, sorted_pred, side="left")
    rank = np.arange(order.size) - starts
    accepted = np.zeros(conf.size, dtype=bool)
    accepted[order[rank < n_per_class]] = True
    return accepted


def threshold_margin(probs, *, min_margin: float = 0.5) -> np.ndarray:
    """Accept the samples whose top-1 minus top-2 probability is at least ``min_margin``.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    min_margin : float, default=0.5

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    References
    ----------
    Scheffer, Decomain, Wrobel, "Active Hidden Markov Models for Information Extraction",
    IDA 2001 (margin of the two most probable classes).

    Examples
    --------
    >>> threshold_margin(np.array([[0.7, 0.2, 0.1], [0.45, 0.4, 0.15]]), min_margin=0.3).tolist()
    [True, False]
    """
    probs = check_probs(probs)
    check_unit("min_margin", min_margin)
    return margin(probs) >= min_margin


def accept(probs, rule: ThresholdRule | str, value: float) -> np.ndarray:
    """Apply the threshold ``rule`` with its parameter ``value`` (tau, tau, n_per_class, min_margin).

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    rule : ThresholdRule or str
    value : float

    Returns
    -------
    accepted : ndarray of shape (n_samples,), bool

    Examples
    --------
    >>> accept(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]), "fixed", 0.8).tolist()
    [True, False, True]
    """
    rule = _rule(rule)
    probs = check_probs(probs)
    conf, pred = _confidence_and_class(probs)
    return accept_scores(conf, pred, margin(probs) if rule is ThresholdRule.MARGIN else None, probs.shape[1], rule, value)


def accept_scores(confidence, label, margins, n_classes: int, rule: ThresholdRule | str, value: float) -> np.ndarray:
    """:func:`accept` from what the rules read, each of shape (n_samples,): ``confidence`` (the top
    probability), ``label`` (the best class) and ``margins`` (top-1 minus top-2; None unless the
    rule is ``margin``). A caller that has them already needs no (N, K) copy of the
    probabilities. Returns the (n_samples,) bool mask :func:`accept` returns.

    >>> accept_scores(np.array([0.9, 0.6]), np.array([0, 0]), None, 2, "top_per_class", 1).tolist()
    [True, False]
    """
    rule = _rule(rule)
    conf, pred = np.asarray(confidence), np.asarray(label, dtype=np.int64)
    if rule is ThresholdRule.MARGIN:
        check_unit("min_margin", value)
        return np.asarray(margins) >= value
    if rule is ThresholdRule.TOP_PER_CLASS:
        _check_count(int(value))
        return _top_per_class_impl(conf, pred, int(value))
    check_unit("tau", value)
    return conf >= value if rule is ThresholdRule.FIXED else _flexmatch_impl(conf, pred, n_classes, value, True)


def _rule(rule) -> ThresholdRule:
    try:
        return ThresholdRule(rule)
    except ValueError:
        raise BadInputError(f"'rule' must be one of {[r.value for r in ThresholdRule]}. Got {rule!r} instead.") from None
