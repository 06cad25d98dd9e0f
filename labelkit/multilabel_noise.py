"""Label issues in multi-label data: one-vs-rest confident learning with a pooled label quality.

Numpy in, numpy out. Each class k is a binary task (does the sample carry k or not?) with
probabilities ``[1 - p_ik, p_ik]``; confident learning (:mod:`labelkit.noise`, Northcutt et al.
2021) runs on each, and a sample is an issue when any of its K binary labels is. Per class, a
flagged positive is a label likely wrong (to remove) and a flagged negative a label likely
missing (to add). Each sample's per-class label qualities are pooled into one score by an
exponential moving average over the scores sorted from best to worst, which weighs the worst
classes most (Thyagarajan et al. 2023). The masks, scores and orderings equal cleanlab 2.9's
``multilabel_classification.filter.find_label_issues`` and ``multilabel_classification.rank``
on the same inputs (the test oracle; it is never imported here).

Labels are an indicator matrix ``(n_samples, n_classes)`` of 0/1; a row of -1 marks an
unlabeled sample, which is left out of every count and gets NaN scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from labelkit import noise
from labelkit.errors import BadInputError

__all__ = [
    "DEFAULT_METHOD", "Pooling", "MultilabelIssues", "check_multilabels", "class_label_quality", "pool_scores",
    "multilabel_quality_scores", "detect_multilabel_issues", "find_multilabel_issues",
]

#: The filter labelkit uses by default on multi-label data: the samples with the lowest pooled
#: self-confidence, as many as one-vs-rest confident learning counts (Thyagarajan et al. 2023 rank
#: by the pooled score; on benchmarks/multilabel.py it beats per-class pruning, docs/performance.md).
DEFAULT_METHOD = noise.FilterMethod.LOW_SELF_CONFIDENCE
#: Forgetting factor of the exponential moving average (Thyagarajan et al. 2023 use 0.8).
EMA_ALPHA = 0.8
#: Temperature of the softmin pooling.
SOFTMIN_TEMPERATURE = 0.1


class Pooling(str, Enum):
    """How the K per-class label qualities of a sample become one score."""

    EXPONENTIAL_MOVING_AVERAGE = "exponential_moving_average"
    SOFTMIN = "softmin"


@dataclass(frozen=True)
class MultilabelIssues:
    """Output of :func:`detect_multilabel_issues`. N counts every row, unlabeled ones included.

    Attributes: ``is_issue`` (N,) bool, some class of the sample is likely mislabeled;
    ``to_add`` (N, K) bool, classes likely missing from the sample's labels; ``to_remove``
    (N, K) bool, classes it carries that are likely wrong; ``label_quality`` (N,) float64 pooled
    score (low = likely wrong, NaN where unlabeled); ``class_quality`` (N, K) float64 per-class
    scores; ``ranked`` (n_issues,) int64 rows of the issues, lowest pooled quality first;
    ``thresholds`` (K, 2) the binary confident thresholds [t_absent, t_present] of each class;
    ``num_label_issues`` the number of samples with an issue.
    """

    is_issue: np.ndarray
    to_add: np.ndarray
    to_remove: np.ndarray
    label_quality: np.ndarray
    class_quality: np.ndarray
    ranked: np.ndarray
    thresholds: np.ndarray
    num_label_issues: int


# ----------------------------------------------------------------------------- validation


def check_multilabels(labels, *, n_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int8 (N, K) indicator matrix; rows of -1 are unlabeled.

    Raises BadInputError for anything else (a row mixing -1 with 0/1, values other than -1/0/1).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise BadInputError(f"'{name}' must be a 2-D indicator matrix (n_samples, n_classes). Got shape {arr.shape} instead.")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise BadInputError(f"'{name}' must have {n_classes} columns. Got {arr.shape[1]} instead.")
    if arr.size and not np.isin(arr, (-1, 0, 1)).all():
        raise BadInputError(f"'{name}' must hold 0/1 (and -1 rows for unlabeled samples). Got values {np.unique(arr)[:5].tolist()} instead.")
    out = arr.astype(np.int8)
    unl = (out < 0)
    if (unl.any(axis=1) & ~unl.all(axis=1)).any():
        row = int(np.flatnonzero(unl.any(axis=1) & ~unl.all(axis=1))[0])
        raise BadInputError(f"'{name}' row {row} mixes -1 with 0/1; an unlabeled sample is a whole row of -1.")
    return out


def _check_scores(probs, n: int, k: int) -> np.ndarray:
    arr = np.asarray(probs)
    if arr.ndim != 2 or arr.shape != (n, k):
        raise BadInputError(f"'probs' must have shape ({n}, {k}). Got {arr.shape} instead.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadInputError("'probs' contains NaN or infinite values.")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise BadInputError(f"'probs' must lie in [0, 1]. Got range [{arr.min():.4g}, {arr.max():.4g}] instead.")
    return arr


def _checked(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    y = check_multilabels(labels)
    if y.shape[0] == 0 or y.shape[1] == 0:
        raise BadInputError(f"'labels' must have at least one row and one class. Got shape {y.shape} instead.")
    return y, _check_scores(probs, *y.shape)


def _two_columns(p: np.ndarray) -> np.ndarray:
    """[1 - p, p]: class k as a two-class problem (column 1 = carries k)."""
    return np.stack((1 - p, p), axis=1)


# ----------------------------------------------------------------------------- scores


def _class_quality_impl(y: np.ndarray, p: np.ndarray, method: noise.QualityScore) -> np.ndarray:
    out = np.zeros(y.shape, dtype=np.float64)  # float64 whatever the probabilities' dtype, as the reference
    rows = np.arange(y.shape[0])
    for k in range(y.shape[1]):
        yk = y[:, k].astype(np.int64)
        pk = _two_columns(p[:, k])
        out[:, k] = noise._score_chunk(method, yk, pk, pk[rows, yk])
    return out


def _pool_impl(scores: np.ndarray, pooling: Pooling, alpha: float, temperature: float) -> np.ndarray:
    if pooling is Pooling.SOFTMIN:
        x = (1 - scores) / max(temperature, 1e-16)
        x = x - np.max(x, axis=1, keepdims=True)
        w = np.exp(x)
        w = w / np.sum(w, axis=1, keepdims=True)
        return np.einsum("ij,ij->i", scores, w)
    # EMA_1 = the best score, EMA_t = alpha s_t + (1 - alpha) EMA_{t-1} down to the worst
    ordered = np.sort(scores, axis=1)[:, ::-1].T
    ema = ordered[0]
    for s in ordered[1:]:
        ema = alpha * s + (1 - alpha) * ema
    return ema


def _pooling(pooling, alpha, temperature) -> Pooling:
    pooling = noise._enum(Pooling, pooling, "pooling")
    if not 0 <= alpha <= 1:
        raise BadInputError(f"'alpha' must be in [0, 1]. Got {alpha!r} instead.")
    if not temperature > 0:
        raise BadInputError(f"'temperature' must be > 0. Got {temperature!r} instead.")
    return pooling


def class_label_quality(labels, probs, *, method: noise.QualityScore | str = noise.QualityScore.SELF_CONFIDENCE) -> np.ndarray:
    """Per-class label quality (n_samples, n_classes) float64: the binary score of each class.

    Self-confidence is ``p_ik`` where the sample carries k and ``1 - p_ik`` where it does not.
    Unlabeled rows are NaN.

    Parameters
    ----------
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix; a row of -1 is unlabeled.
    probs : ndarray of shape (n_samples, n_classes)
        Per-class probabilities (rows need not sum to one), out of sample.
    method : QualityScore or str, default="self_confidence"

    References
    ----------
    Thyagarajan, Snorrason, Northcutt, Mueller, "Identifying Incorrect Annotations in
    Multi-Label Classification Data", ICLR 2023 workshop (arXiv:2211.13895).

    Examples
    --------
    >>> class_label_quality(np.array([[0, 1], [1, 1]]), np.array([[0.2, 0.9], [0.4, 0.7]])).round(2)
    array([[0.8, 0.9],
           [0.4, 0.7]])
    """
    y, p = _checked(labels, probs)
    method = noise._enum(noise.QualityScore, method, "method")
    out = np.full(y.shape, np.nan)
    rows = y[:, 0] >= 0
    out[rows] = _class_quality_impl(y[rows], p[rows], method)
    return out


def pool_scores(scores, *, pooling: Pooling | str = Pooling.EXPONENTIAL_MOVING_AVERAGE,
                alpha: float = EMA_ALPHA, temperature: float = SOFTMIN_TEMPERATURE) -> np.ndarray:
    """One score per sample (n_samples,) from per-class scores (n_samples, n_classes).

    ``exponential_moving_average``: sort a row's scores from highest to lowest, EMA_1 = the
    highest, EMA_t = alpha s_t + (1 - alpha) EMA_{t-1}; the last EMA is the score, dominated by
    the worst classes. ``softmin``: sum_k s_k softmax((1 - s)/temperature)_k.

    Parameters
    ----------
    scores : ndarray of shape (n_samples, n_classes)
    pooling : Pooling or str, default="exponential_moving_average"
    alpha : float, default=0.8
        EMA forgetting factor in [0, 1].
    temperature : float, default=0.1
        Softmin temperature, > 0.

    References
    ----------
    Thyagarajan et al., arXiv:2211.13895, section 3 (pooled label quality).

    Examples
    --------
    >>> pool_scores(np.array([[0.9, 0.9, 0.3], [0.4, 0.9, 0.6]])).round(3)
    array([0.42 , 0.452])
    """
    pooling = _pooling(pooling, alpha, temperature)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise BadInputError(f"'scores' must be 2-D (n_samples, n_classes). Got shape {s.shape} instead.")
    return _pool_impl(s, pooling, float(alpha), float(temperature))


def multilabel_quality_scores(labels, probs, *, method: noise.QualityScore | str = noise.QualityScore.SELF_CONFIDENCE,
                              pooling: Pooling | str = Pooling.EXPONENTIAL_MOVING_AVERAGE,
                              alpha: float = EMA_ALPHA, temperature: float = SOFTMIN_TEMPERATURE) -> np.ndarray:
    """Pooled label quality per sample (n_samples,), low = likely wrong; NaN where unlabeled.

    :func:`class_label_quality` pooled by :func:`pool_scores`. Equals cleanlab 2.9's
    ``multilabel_classification.rank.get_label_quality_scores``.

    References
    ----------
    Thyagarajan et al., arXiv:2211.13895.

    Examples
    --------
    >>> multilabel_quality_scores(np.array([[0, 1, 0], [1, 0, 1]]), np.array([[0.1, 0.9, 0.1], [0.4, 0.1, 0.9]])).round(3)
    array([0.9, 0.5])
    """
    y, p = _checked(labels, probs)
    method = noise._enum(noise.QualityScore, method, "method")
    pooling = _pooling(pooling, alpha, temperature)
    out = np.full(len(y), np.nan)
    rows = y[:, 0] >= 0
    out[rows] = _pool_impl(_class_quality_impl(y[rows], p[rows], method), pooling, float(alpha), float(temperature))
    return out


# ----------------------------------------------------------------------------- confident learning


def _per_class_issues(y: np.ndarray, p: np.ndarray, spec: noise._Spec) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) mask of the binary issues of every class, and the (K, 2) thresholds."""
    n, k = y.shape
    flags = np.zeros((n, k), dtype=bool)
    thresholds = np.zeros((k, 2))
    for c in range(k):
        remove = None if spec.num_to_remove is None else np.array([spec.num_to_remove[c], 0])
        sub = noise._Spec(spec.method, spec.score, spec.frac_noise, remove, spec.min_examples)
        res = noise._detect_impl(noise._array_source(y[:, c].astype(np.int64), _two_columns(p[:, c])), sub)
        flags[:, c] = res.is_issue
        thresholds[c] = res.thresholds
    return flags, thresholds


def _detect_impl(y, p, spec: noise._Spec, pooling: Pooling, alpha: float, temperature: float) -> MultilabelIssues:
    n_all, k = y.shape
    rows = np.flatnonzero(y[:, 0] >= 0)
    y, p = y[rows], p[rows]
    ranking = _class_quality_impl(y, p, spec.score)
    quality = _pool_impl(ranking, pooling, alpha, temperature)
    if spec.method in (noise.FilterMethod.LOW_SELF_CONFIDENCE, noise.FilterMethod.LOW_NORMALIZED_MARGIN):
        # As many samples as one-vs-rest confident learning finds, the lowest pooled
        # self-confidence first (the reference pools self-confidence here, whatever the method).
        cl = noise._Spec(noise.FilterMethod.CONFIDENT_LEARNING, spec.score, 1.0, None, 1)
        cl_flags, thresholds = _per_class_issues(y, p, cl)
        count = int(cl_flags.any(axis=1).sum())
        sc = _pool_impl(_class_quality_impl(y, p, noise.QualityScore.SELF_CONFIDENCE), Pooling.EXPONENTIAL_MOVING_AVERAGE, EMA_ALPHA, SOFTMIN_TEMPERATURE)
        chosen = np.argsort(sc)[:count]
        mask = np.zeros(len(y), dtype=bool)
        mask[chosen] = True
        ranked = chosen[np.argsort(quality[chosen])]
        # Per class: the confidently mislabeled classes of each chosen sample, else its worst class.
        flags = cl_flags & mask[:, None]
        bare = mask & ~flags.any(axis=1)
        flags[np.flatnonzero(bare), np.argmin(ranking[bare], axis=1)] = True
    else:
        flags, thresholds = _per_class_issues(y, p, spec)
        mask = flags.any(axis=1)
        idx = np.flatnonzero(mask)
        ranked = idx[np.argsort(quality[idx])]  # the reference's order: default argsort
    def full(a: np.ndarray, fill) -> np.ndarray:  # back to every row, unlabeled ones as ``fill``
        out = np.full((n_all,) + a.shape[1:], fill, dtype=a.dtype)
        out[rows] = a
        return out

    return MultilabelIssues(
        is_issue=full(mask, False), to_add=full(flags & (y == 0), False), to_remove=full(flags & (y == 1), False),
        label_quality=full(quality, np.nan), class_quality=full(ranking, np.nan),
        ranked=rows[ranked].astype(np.int64), thresholds=thresholds, num_label_issues=int(mask.sum()),
    )


def detect_multilabel_issues(
    labels,
    probs,
    *,
    method: noise.FilterMethod | str = noise.FilterMethod.PRUNE_BY_NOISE_RATE,
    score_method: noise.QualityScore | str = noise.QualityScore.SELF_CONFIDENCE,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
    pooling: Pooling | str = Pooling.EXPONENTIAL_MOVING_AVERAGE,
    alpha: float = EMA_ALPHA,
) -> MultilabelIssues:
    """Find multi-label annotation errors: which samples, and which of their classes.

    For each class k, confident learning on the binary task "carries k" with probabilities
    ``[1 - p_k, p_k]`` (:func:`labelkit.noise.detect_label_issues` with ``method`` and its
    options) flags the samples whose k-label looks wrong; a flagged sample that carries k has k
    to remove, one that does not has k to add. A sample is an issue when any class is flagged.
    ``label_quality`` pools the per-class ``score_method`` scores (EMA with ``alpha``, or softmin)
    and orders ``ranked``. For ``low_self_confidence``/``low_normalized_margin`` the samples are
    the n lowest by pooled self-confidence, n = the number one-vs-rest ``confident_learning``
    flags, and their classes are the confidently flagged ones (else the lowest-scoring one).
    Same ``is_issue`` and ``ranked`` as cleanlab 2.9
    ``multilabel_classification.filter.find_label_issues``.

    Parameters
    ----------
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix of the given label sets (an all-zero row is a sample with no
        class); a row of -1 is unlabeled and left out.
    probs : ndarray of shape (n_samples, n_classes)
        Out-of-sample probability that each sample carries each class; rows need not sum to 1.
    method : FilterMethod or str, default="prune_by_noise_rate"
    score_method : QualityScore or str, default="self_confidence"
    frac_noise : float, default=1.0
    num_to_remove_per_class : ndarray of shape (n_classes,), default=None
        Per class, how many positive labels to flag (the pruning methods only).
    min_examples_per_class : int, default=1
    pooling : Pooling or str, default="exponential_moving_average"
    alpha : float, default=0.8
        EMA forgetting factor.

    Returns
    -------
    MultilabelIssues

    References
    ----------
    Thyagarajan, Snorrason, Northcutt, Mueller, "Identifying Incorrect Annotations in
    Multi-Label Classification Data", arXiv:2211.13895, 2023. Northcutt, Jiang, Chuang,
    "Confident Learning", JAIR 2021.

    Examples
    --------
    >>> y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [0, 1]])
    >>> p = np.array([[.9, .1], [.8, .2], [.1, .9], [.2, .8], [.1, .9], [.2, .9]])
    >>> r = detect_multilabel_issues(y, p)
    >>> r.is_issue.tolist(), np.flatnonzero(r.to_add[4]).tolist(), np.flatnonzero(r.to_remove[4]).tolist()
    ([False, False, False, False, True, False], [1], [0])
    """
    y, p = _checked(labels, probs)
    pooling = _pooling(pooling, alpha, SOFTMIN_TEMPERATURE)
    spec = noise._spec(method, score_method, frac_noise, num_to_remove_per_class, min_examples_per_class)
    if spec.num_to_remove is not None and len(spec.num_to_remove) != y.shape[1]:
        raise BadInputError(f"'num_to_remove_per_class' must have {y.shape[1]} entries. Got {len(spec.num_to_remove)} instead.")
    if not (y[:, 0] >= 0).any():
        raise BadInputError("'labels' must have at least one labeled row. Got only rows of -1 instead.")
    return _detect_impl(y, p, spec, pooling, float(alpha), SOFTMIN_TEMPERATURE)


def find_multilabel_issues(labels, probs, *, method: noise.FilterMethod | str = noise.FilterMethod.PRUNE_BY_NOISE_RATE,
                           frac_noise: float = 1.0, num_to_remove_per_class: np.ndarray | None = None,
                           min_examples_per_class: int = 1) -> np.ndarray:
    """Boolean mask (n_samples,) of samples with some label issue; see :func:`detect_multilabel_issues`.

    References
    ----------
    Thyagarajan et al., arXiv:2211.13895.
    """
    return detect_multilabel_issues(labels, probs, method=method, frac_noise=frac_noise,
                                    num_to_remove_per_class=num_to_remove_per_class,
                                    min_examples_per_class=min_examples_per_class).is_issue
