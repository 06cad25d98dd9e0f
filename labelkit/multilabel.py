"""Multi-label scores: one-vs-rest sigmoid heads, their out-of-sample probabilities, per-class
thresholds and label sets (numpy in, numpy out; the heads are fitted with torch's L-BFGS).

Vocabulary: ``labels`` is an (n_samples, n_classes) 0/1 indicator matrix whose unlabeled rows are
all -1 (:func:`labelkit.multilabel_noise.check_multilabels`); ``probs`` (n_samples, n_classes)
holds the probability that a sample carries each class (rows need not sum to one).

The heads are K independent logistic regressions on standardised embeddings sharing one L2
strength, chosen by held-out binary cross-entropy on the folds. Per-class thresholds are chosen
on those held-out probabilities, so that the pseudo-labels of unlabeled samples are cut where
each class's expected F1 on held-out probabilities peaks, or where its held-out precision first
reaches a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from labelkit._validation import check_embeddings, check_l2_head
from labelkit.errors import BadInputError
from labelkit.multilabel_noise import check_multilabels

if TYPE_CHECKING:  # torch is imported where a head is fitted: the stages import this module at start-up
    import torch

__all__ = ["HeadConfig", "C_GRID", "sigmoid_heads_probs", "cross_val_multilabel_probs", "Thresholds",
           "choose_thresholds", "label_sets", "MultilabelPseudolabels", "multilabel_pseudolabels",
           "multilabel_label_issues", "class_prototypes", "unlabeled_folds", "jaccard_distance", "set_confidence",
           "certify_label_sets"]

#: L2 strengths tried by :func:`cross_val_multilabel_probs` when ``C`` is not given (the one with
#: the lowest held-out binary cross-entropy is kept).
C_GRID = (0.1, 1.0, 10.0)
#: Most labeled rows one fit of the heads uses (a fixed-seed random subset beyond it), as the probe.
MAX_TRAIN = 50_000


@dataclass(frozen=True)
class HeadConfig:
    """One-vs-rest logistic heads (full-batch L-BFGS).

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 strength as in scikit-learn: sum_i,k BCE_ik + ||W||^2 / (2 C) (bias free).
    max_iter : int, default=200
    standardize : bool, default=True
        Standardise features with the training rows' mean and std.
    """

    C: float = 1.0
    max_iter: int = 200
    standardize: bool = True

    def __post_init__(self):
        check_l2_head(self.C, self.max_iter)


def _fit_heads(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, config: HeadConfig):
    """K logistic regressions at once; ``w`` (n, K) weighs each (sample, class) term (0 = ignore)."""
    import torch
    import torch.nn.functional as F
    n, d = x.shape
    k = y.shape[1]
    if config.standardize:
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros(d, dtype=x.dtype), torch.ones(d, dtype=x.dtype)
    xs = (x - mean) / std
    # Start each bias at the class's log-odds: a class with (almost) no positives stays rare.
    pos = (y * w).sum(dim=0)
    tot = w.sum(dim=0).clamp_min(1e-12)
    rate = ((pos + 0.5) / (tot + 1.0)).clamp(1e-6, 1 - 1e-6)
    b = torch.log(rate / (1 - rate)).clone().requires_grad_(True)
    weights = torch.zeros(d, k, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([weights, b], lr=1.0, max_iter=config.max_iter, history_size=10,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    scale = 1.0 / n  # sum BCE + ||W||^2/(2C), divided by n for the optimiser's tolerances

    def closure():
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(xs @ weights + b, y, weight=w, reduction="sum")
                + 0.5 / config.C * (weights * weights).sum()) * scale
        loss.backward()
        return loss

    opt.step(closure)
    weights, b = weights.detach(), b.detach()

    def predict(xq: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((xq - mean) / std) @ weights + b)

    return predict


def _predict(predict, x: torch.Tensor, rows: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
    import torch
    with torch.no_grad():
        for lo in range(0, rows.size, 65536):
            out[dest[lo:lo + 65536]] = predict(x[torch.from_numpy(rows[lo:lo + 65536])].double()).numpy()


def _fit_on(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, rows: np.ndarray, config: HeadConfig):
    """The heads fitted on ``rows`` (at most MAX_TRAIN of them, drawn with a fixed seed), in float64."""
    import torch
    if rows.size > MAX_TRAIN:  # full-batch L-BFGS cost grows with the rows; K linear heads need far fewer
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_TRAIN, replace=False))
    t = torch.from_numpy(rows)
    return _fit_heads(x[t].double(), y[t], w[t], config)


def _tensors(embeddings: np.ndarray, labels: np.ndarray, weights: np.ndarray | None):
    import torch
    x = torch.from_numpy(embeddings if embeddings.flags.writeable else embeddings.copy())  # float32; fits copy their rows to float64
    y = torch.from_numpy(np.clip(labels, 0, 1).astype(np.float64))
    w = torch.ones_like(y) if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float64))
    return x, y, w


def _folds(n: int, n_folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % n_folds


def unlabeled_folds(n: int, n_folds: int, seed: int) -> np.ndarray:
    """The fold whose heads score each of ``n`` unlabeled rows: one each, uniformly at random
    (a stream of its own, seeded by ``seed``), as each labeled row is scored by one fold's heads."""
    return np.random.default_rng([seed, 1]).integers(0, n_folds, size=n)


def _cross_val_impl(x, y, w, labeled: np.ndarray, n_folds: int, seed: int, config: HeadConfig,
                    extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of the labeled rows (each from the heads fitted without its fold),
    and of the ``extra`` rows, each from the heads of its fold (:func:`unlabeled_folds`)."""
    out = np.zeros((labeled.size, y.shape[1]), dtype=np.float32)
    extra = np.zeros(0, np.int64) if extra is None else extra
    out_extra = np.zeros((extra.size, y.shape[1]), dtype=np.float32)
    fold = _folds(labeled.size, n_folds, seed)
    extra_fold = unlabeled_folds(extra.size, n_folds, seed)
    for f in range(n_folds):
        tr, te = labeled[fold != f], np.flatnonzero(fold == f)
        heads = _fit_on(x, y, w, tr, config)
        _predict(heads, x, labeled[te], out, te)
        mine = np.flatnonzero(extra_fold == f)
        if mine.size:
            _predict(heads, x, extra[mine], out_extra, mine)
    return out, out_extra


def _bce(p: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(loss, weights=w) if w is not None else loss.mean())


def cross_val_multilabel_probs(
    embeddings,
    labels,
    *,
    n_folds: int = 5,
    seed: int = 0,
    C: float | None = None,
    weights=None,
    unlabeled_by_fold: bool = False,
) -> tuple[np.ndarray, float]:
    """Out-of-sample per-class probabilities from one-vs-rest logistic heads.

    Each labeled row's probabilities come from heads fitted on the other folds (what confident
    learning and the threshold choice need); unlabeled rows get the heads fitted on every labeled
    row, or, with ``unlabeled_by_fold``, the heads of one fold each, chosen at random
    (:func:`unlabeled_folds`): scored exactly as a held-out row of that fold is, so the two are
    exchangeable (what an error guarantee certified on the held-out rows needs,
    :mod:`labelkit.guarantee`). ``C=None`` tries :data:`C_GRID` and keeps the strength with the
    lowest held-out binary cross-entropy on the given labels.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix; rows of -1 are unlabeled.
    n_folds : int, default=5
    seed : int, default=0
        Fold assignment.
    C : float, default=None
        Inverse L2 strength; None chooses it from :data:`C_GRID` on the folds.
    weights : ndarray of shape (n_samples, n_classes), default=None
        Weight of each (sample, class) label in the fits (0 = do not trust it); the held-out
        probabilities of every labeled row are returned whatever its weights.
    unlabeled_by_fold : bool, default=False
        Score each unlabeled row by one fold's heads instead of the heads fitted on every label.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes), float32
    C : float
        The strength used.

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021 (out-of-sample probabilities by K-fold cross-validation);
    Read, Pfahringer, Holmes, Frank, "Classifier Chains for Multi-label Classification", 2011
    (binary relevance, the one-vs-rest reduction used here).

    Examples
    --------
    >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 1], [0.9, 1]], dtype=np.float32)
    >>> y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [-1, -1]])
    >>> p, _ = cross_val_multilabel_probs(x, y, n_folds=2, C=10.0)
    >>> (p[-1] > 0.5).tolist()
    [True, True]
    """
    x = check_embeddings(embeddings)
    y = check_multilabels(labels)
    if len(y) != len(x):
        raise BadInputError(f"'labels' must have one row per embedding ({len(x)}). Got {len(y)} instead.")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise BadInputError(f"'n_folds' must be an int >= 2. Got {n_folds!r} instead.")
    labeled = np.flatnonzero(y[:, 0] >= 0)
    if labeled.size < n_folds:
        raise BadInputError(f"cross-validation needs at least n_folds={n_folds} labeled rows. Got {labeled.size} instead.")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != y.shape or not np.all(np.isfinite(weights)) or (weights < 0).any():
            raise BadInputError(f"'weights' must be a non-negative array of shape {y.shape}.")
    if C is not None:
        HeadConfig(C=C)  # validates
    xt, yt, wt = _tensors(x, y, weights)
    grid = C_GRID if C is None else (float(C),)
    unl = np.flatnonzero(y[:, 0] < 0)
    extra = unl if unlabeled_by_fold else None
    best = None
    for c in grid:
        held, held_extra = _cross_val_impl(xt, yt, wt, labeled, n_folds, seed, HeadConfig(C=c), extra)
        loss = _bce(held, np.clip(y[labeled], 0, 1), None if weights is None else weights[labeled])
        if best is None or loss < best[0]:
            best = (loss, c, held, held_extra)
    _, c, held, held_extra = best
    out = np.zeros(y.shape, dtype=np.float32)
    out[labeled] = held
    if unlabeled_by_fold:
        out[unl] = held_extra
    elif unl.size:
        _predict(_fit_on(xt, yt, wt, labeled, HeadConfig(C=c)), xt, unl, out, unl)
    return out, c


def sigmoid_heads_probs(embeddings, labels, rows=None, *, C: float = 1.0, weights=None) -> np.ndarray:
    """Per-class probabilities at ``rows`` (None = all) from heads fitted on every labeled row.

    Parameters as in :func:`cross_val_multilabel_probs`. Returns float32 (len(rows), n_classes).
    """
    x = check_embeddings(embeddings)
    y = check_multilabels(labels)
    labeled = np.flatnonzero(y[:, 0] >= 0)
    if labeled.size == 0:
        raise BadInputError("'labels' must have at least one labeled row. Got only rows of -1 instead.")
    want = np.arange(len(y)) if rows is None else np.asarray(rows, dtype=np.int64)
    xt, yt, wt = _tensors(x, y, weights)
    out = np.zeros((want.size, y.shape[1]), dtype=np.float32)
    _predict(_fit_on(xt, yt, wt, labeled, HeadConfig(C=C)), xt, want, out, np.arange(want.size))
    return out


# ----------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """Per-class thresholds chosen on held-out probabilities.

    Attributes: ``value`` (K,) cut of each class (carry k when p_k >= value_k); ``precision``,
    ``recall`` (K,) held-out at that cut (NaN for a class with no positives); ``reached`` (K,)
    bool, the target precision was reached (always True without a target).
    """

    value: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    reached: np.ndarray


def _one_threshold(p: np.ndarray, y: np.ndarray, target: float | None, default: float, rule: str) -> tuple[float, float, float, bool]:
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    k = np.arange(1, len(ys) + 1)
    last = np.r_[ps[1:] != ps[:-1], True]  # a cut can only fall between distinct values
    pos = int(y.sum())
    if target is None and rule == "expected_f1":
        # E[F1] of predicting the top n, the probabilities taken as calibrated:
        # 2 sum_{i<=n} p_i / (n + sum_i p_i) (Nan et al. 2012; Lipton et al. 2014). No labels used.
        ef1 = 2 * np.cumsum(ps)[last] / (k[last] + ps.sum())
        if ps.size == 0 or ef1.max() <= 0:
            return default, math.nan, math.nan, True
        i = int(np.argmax(ef1))
        cut = float(ps[last][i])
        tp, n = int(ys[ps >= cut].sum()), int((ps >= cut).sum())
        return cut, (tp / n if n else math.nan), (tp / pos if pos else math.nan), True
    if pos == 0 or pos == len(y):
        return default, math.nan, math.nan, target is None
    tp = np.cumsum(ys)
    tp, k, cut = tp[last], k[last], ps[last]
    prec, rec = tp / k, tp / pos
    if target is None:
        f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
        i = int(np.argmax(f1))
        return float(cut[i]), float(prec[i]), float(rec[i]), True
    ok = np.flatnonzero(prec >= target)
    if ok.size == 0:  # never reached: the strictest cut, said in ``reached``
        return float(cut[0]), float(prec[0]), float(rec[0]), False
    i = int(ok[-1])  # the lowest cut (most recall) whose precision still reaches the target
    return float(cut[i]), float(prec[i]), float(rec[i]), True


#: How :func:`choose_thresholds` cuts a class without a target precision.
THRESHOLD_RULES = ("expected_f1", "f1")


def choose_thresholds(labels, probs, *, target_precision: float | None = None, rule: str = "expected_f1",
                      default: float = 0.5) -> Thresholds:
    """Per-class thresholds on held-out probabilities: the cut with the highest expected F1, or
    the F1-best cut against the labels, or the lowest cut whose precision reaches
    ``target_precision``.

    ``expected_f1`` (the default) reads only the held-out probabilities: predicting the n most
    probable samples has expected F1 ``2 sum_{i<=n} p_i / (n + sum_i p_i)`` when they are
    calibrated, and the best n sets the cut. With noisy labels it is steadier than ``f1``, the
    empirical F1 peak against the labels: on benchmarks/multilabel.py, pseudo-label micro-F1 0.634
    vs 0.587 (rate 0.1) and 0.621 vs 0.597 (0.2), and within 0.011 across fold seeds where ``f1``
    moved by 0.13 on one run (docs/performance.md).

    Parameters
    ----------
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix of the held-out rows (rows of -1 are ignored).
    probs : ndarray of shape (n_samples, n_classes)
        Their out-of-sample probabilities.
    target_precision : float, default=None
        In (0, 1]. A class that never reaches it gets its strictest cut and ``reached`` False.
    rule : {"expected_f1", "f1"}, default="expected_f1"
        The cut without a target. ``precision`` and ``recall`` are measured against the labels
        either way.
    default : float, default=0.5
        The cut of a class whose held-out rows are all positive or all negative.

    Returns
    -------
    Thresholds

    References
    ----------
    Lipton, Elkan, Naryanaswamy, "Optimal Thresholding of Classifiers to Maximize F1 Measure",
    ECML PKDD 2014; Nan, Chai, Lee, Chieu, "Optimizing F-measure: A Tale of Two Approaches",
    ICML 2012 (the decision-theoretic, expected-F1 cut); CDUL (Abdelfattah et al., ICCV 2023) for
    per-class thresholds on per-class scores.

    Examples
    --------
    >>> y = np.array([[1], [1], [0], [0]])
    >>> choose_thresholds(y, np.array([[0.9], [0.6], [0.4], [0.1]]), rule="f1").value.tolist()
    [0.6]
    >>> choose_thresholds(y, np.array([[0.9], [0.6], [0.4], [0.1]])).value.tolist()  # E[F1] of the top 1-4: .60 .75 .76 .67
    [0.4]
    """
    y = check_multilabels(labels)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != y.shape:
        raise BadInputError(f"'probs' must have shape {y.shape}. Got {p.shape} instead.")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise BadInputError(f"'target_precision' must be in (0, 1]. Got {target_precision!r} instead.")
    if rule not in THRESHOLD_RULES:
        raise BadInputError(f"'rule' must be one of {', '.join(map(repr, THRESHOLD_RULES))}. Got {rule!r} instead.")
    rows = y[:, 0] >= 0
    y, p = y[rows], p[rows]
    res = [_one_threshold(p[:, k], y[:, k], target_precision, default, rule) for k in range(y.shape[1])]
    v, pr, rc, ok = (np.array(c) for c in zip(*res)) if res else (np.zeros(0),) * 4
    return Thresholds(v.astype(np.float64), pr.astype(np.float64), rc.astype(np.float64), ok.astype(bool))


def label_sets(probs, thresholds) -> np.ndarray:
    """(n_samples, n_classes) bool: the classes whose probability reaches their threshold.

    Examples
    --------
    >>> label_sets(np.array([[0.7, 0.2], [0.4, 0.9]]), np.array([0.5, 0.3])).tolist()
    [[True, False], [False, True]]
    """
    p = np.asarray(probs)
    t = np.asarray(thresholds, dtype=np.float64)
    if p.ndim != 2 or t.shape != (p.shape[1],):
        raise BadInputError(f"'thresholds' must have one value per class of 'probs' {p.shape}. Got {t.shape} instead.")
    return p >= t[None, :]


# ----------------------------------------------------------------------------- the stages' defaults


@dataclass(frozen=True)
class MultilabelPseudolabels:
    """Output of :func:`multilabel_pseudolabels`.

    Attributes: ``probs`` (N, K) float32, held-out for labeled rows and from the heads fitted on
    every trusted label for unlabeled rows (or, when ``fold_scored``, from one fold's heads each);
    ``label_sets`` (N, K) bool, probs >= thresholds; ``accepted`` (N,) bool, every class in the
    sample's set has a threshold that reached the target precision (all True without a target);
    ``thresholds`` :class:`Thresholds`; ``C``; ``fold_scored`` (bool) the unlabeled rows were
    scored like held-out rows (``unlabeled_by_fold``).
    """

    probs: np.ndarray
    label_sets: np.ndarray
    accepted: np.ndarray
    thresholds: Thresholds
    C: float
    fold_scored: bool = False


def multilabel_pseudolabels(embeddings, labels, *, trust=None, target_precision: float | None = None,
                            n_folds: int = 5, seed: int = 0, C: float | None = None,
                            unlabeled_by_fold: bool = False) -> MultilabelPseudolabels:
    """Label sets with per-class probabilities for every sample, from one-vs-rest heads.

    The heads are fitted on the labeled rows, each (sample, class) label weighted by ``trust``
    (detect-noise's flagged labels get 0); per-class thresholds are chosen on the held-out
    probabilities (:func:`choose_thresholds`: the expected-F1 peak; with ``target_precision``, the
    lowest cut whose held-out precision against the given labels reaches it; noisy labels make
    that estimate conservative).

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix; rows of -1 are unlabeled.
    trust : ndarray of shape (n_samples, n_classes), default=None
        In [0, 1]: the weight of each given label in the fits (detect-noise's doubted labels: 0).
    target_precision : float, default=None
    n_folds, seed, C, unlabeled_by_fold
        As in :func:`cross_val_multilabel_probs` (``unlabeled_by_fold`` for
        :func:`certify_label_sets`).

    Returns
    -------
    MultilabelPseudolabels

    References
    ----------
    Abdelfattah et al., "CDUL: CLIP-Driven Unsupervised Learning for Multi-Label Image
    Classification", ICCV 2023 (per-class thresholds on per-class scores); Northcutt et al.,
    JAIR 2021 (training on the labels confident learning keeps).
    """
    y = check_multilabels(labels)
    weights = None
    if trust is not None:
        t = np.asarray(trust, dtype=np.float64)
        if t.shape != y.shape or not np.all((t >= 0) & (t <= 1)):
            raise BadInputError(f"'trust' must be an array of shape {y.shape} with values in [0, 1].")
        weights = np.where(y >= 0, t, 1.0)
    probs, c = cross_val_multilabel_probs(embeddings, y, n_folds=n_folds, seed=seed, C=C, weights=weights,
                                          unlabeled_by_fold=unlabeled_by_fold)
    labeled = y[:, 0] >= 0
    # Precision against the given labels as they are: correcting the doubted ones with the same
    # model's probabilities made every class reach even 0.99 (the check agreed with itself).
    thr = choose_thresholds(y[labeled], probs[labeled], target_precision=target_precision)
    sets = label_sets(probs, thr.value)
    accepted = ~(sets & ~thr.reached[None, :]).any(axis=1)
    return MultilabelPseudolabels(probs, sets, accepted, thr, c, bool(unlabeled_by_fold))


# ----------------------------------------------------------------------------- the error guarantee


def jaccard_distance(predicted, given) -> np.ndarray:
    """Per sample, the share of wrong labels: ``|A xor B| / |A or B|`` of the predicted set A and
    the given set B (0 when both are empty, 1 when they share no class).

    Parameters
    ----------
    predicted, given : ndarray of shape (n_samples, n_classes), bool or 0/1

    Returns
    -------
    ndarray of shape (n_samples,), float64, in [0, 1]

    Examples
    --------
    >>> jaccard_distance(np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]]), np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])).tolist()
    [0.5, 0.0, 1.0]
    """
    a, b = np.asarray(predicted).astype(bool), np.asarray(given).astype(bool)
    if a.shape != b.shape or a.ndim != 2:
        raise BadInputError(f"'predicted' and 'given' must be 2-D of the same shape. Got {a.shape} and {b.shape} instead.")
    union = (a | b).sum(axis=1)
    return np.where(union > 0, (a ^ b).sum(axis=1) / np.maximum(union, 1), 0.0)


def set_confidence(probs, sets) -> np.ndarray:
    """Per sample, one minus the expected Jaccard distance of its label set to the truth, the
    classes drawn independently with the given probabilities: the expected share of right labels.

    With calibrated, independent probabilities it is the expectation of ``1 - loss`` for the very
    loss the guarantee bounds, so ranking by it accepts first the sets expected to carry the
    fewest wrong labels. (The probability that the whole set is right ranks an empty set among
    small probabilities first, though one missed class makes its loss 1.) Exact: with ``a`` the
    set's size, ``X`` the set's classes the truth carries and ``Y`` the others it carries (two
    independent Poisson-binomial counts, by dynamic programming over the classes), the distance
    is ``(a - X + Y) / (a + Y)``, 0 when ``a + Y = 0``; O(n_samples * n_classes^2).

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    sets : ndarray of shape (n_samples, n_classes), bool

    Returns
    -------
    ndarray of shape (n_samples,), float64, in [0, 1]

    Examples
    --------
    >>> set_confidence(np.array([[0.9], [0.8]]), np.array([[True], [False]])).round(3).tolist()
    [0.9, 0.2]
    >>> set_confidence(np.array([[0.8, 0.3], [0.1, 0.2]]), np.array([[True, False], [False, False]])).round(3).tolist()
    [0.68, 0.72]
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    s = np.asarray(sets, dtype=bool)
    if p.shape != s.shape or p.ndim != 2:
        raise BadInputError(f"'probs' and 'sets' must be 2-D of the same shape. Got {p.shape} and {s.shape} instead.")
    out = np.empty(p.shape[0], dtype=np.float64)
    step = max(1, 2_000_000 // max(1, (p.shape[1] + 1) ** 2))  # rows a chunk: (rows, K + 1) arrays, K + 1 of them
    for lo in range(0, p.shape[0], step):
        out[lo:lo + step] = 1.0 - _expected_jaccard(p[lo:lo + step], s[lo:lo + step])
    return out


def _poisson_binomial(q: np.ndarray) -> np.ndarray:
    """(n, K + 1) pmf of the number of successes of K independent Bernoulli(q[:, k]) per row."""
    n, k = q.shape
    pmf = np.zeros((n, k + 1))
    pmf[:, 0] = 1.0
    for j in range(k):
        pmf[:, 1:] = pmf[:, 1:] * (1 - q[:, j:j + 1]) + pmf[:, :-1] * q[:, j:j + 1]
        pmf[:, 0] *= 1 - q[:, j]
    return pmf


def _expected_jaccard(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """E[(a - X + Y) / (a + Y)] (0 when a + Y = 0) for X, Y the truth's classes inside and outside the set."""
    a = s.sum(axis=1).astype(np.float64)[:, None]
    px, py = _poisson_binomial(np.where(s, p, 0.0)), _poisson_binomial(np.where(s, 0.0, p))
    x = np.arange(p.shape[1] + 1, dtype=np.float64)[None, :]
    e = np.zeros(p.shape[0])
    for y in range(p.shape[1] + 1):
        denom = a + y
        dist = np.where(denom > 0, np.maximum(a - x + y, 0.0) / np.maximum(denom, 1.0), 0.0)  # x > a has no mass
        e += py[:, y] * (px * dist).sum(axis=1)
    return np.clip(e, 0.0, 1.0)


def certify_label_sets(labels, result: MultilabelPseudolabels, rows, *, max_error: float, error_confidence: float):
    """Which label sets of ``rows`` to accept so that, with confidence ``error_confidence``, their
    mean Jaccard distance to the truth (the share of wrong labels) is at most ``max_error``.

    Learn then Test on the labeled rows (each scored by heads fitted without its fold): score
    :func:`set_confidence` of its set (the expected share of right labels), loss
    :func:`jaccard_distance` to its given set; then
    :func:`labelkit.guarantee.certify_threshold` with ``pool`` the unlabeled rows' scores, so the
    bound is on the realised error of the sets accepted among ``rows``. Needs ``result`` made with
    ``unlabeled_by_fold=True``: then each unlabeled row is scored as a held-out row of a random
    fold is, and the two are exchangeable. Per-class thresholds are those of ``result``: the
    expected-F1 peak reads no label, so no row's own label chooses its cut.

    Parameters
    ----------
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix; rows of -1 are unlabeled.
    result : MultilabelPseudolabels
        From :func:`multilabel_pseudolabels` with ``unlabeled_by_fold=True``.
    rows : ndarray of int
        The unlabeled rows to decide for.
    max_error : float
        In (0, 1).
    error_confidence : float
        In (0, 1): ``1 - delta``.

    Returns
    -------
    accepted : ndarray of shape (n_rows,), bool
    reason : ndarray of shape (n_rows,), object
        None when accepted, else ``"below_threshold"`` or ``"uncertified"``.
    scores : ndarray of shape (n_rows,), float64
        :func:`set_confidence` of each row's set (accepted when at least the certified threshold).
    certificate : labelkit.guarantee.Certificate

    References
    ----------
    Angelopoulos et al., "Learn then Test", 2021; Bates et al., JACM 2021 (Hoeffding-Bentkus for
    fractional losses).
    """
    from labelkit import guarantee

    y = check_multilabels(labels)
    if y.shape != result.probs.shape:
        raise BadInputError(f"'labels' must have the shape of the result's probabilities {result.probs.shape}. Got {y.shape} instead.")
    if not result.fold_scored:
        raise BadInputError("certify_label_sets needs the unlabeled rows scored like held-out rows: "
                            "call multilabel_pseudolabels(..., unlabeled_by_fold=True)")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (y[rows, 0] >= 0).any():
        raise BadInputError("'rows' must be rows of unlabeled samples.")
    if not 0 < error_confidence < 1:
        raise BadInputError(f"'error_confidence' must be in (0, 1). Got {error_confidence!r} instead.")
    held = np.flatnonzero(y[:, 0] >= 0)
    h_scores = set_confidence(result.probs[held], result.label_sets[held])
    losses = jaccard_distance(result.label_sets[held], y[held] == 1)
    scores = set_confidence(result.probs[rows], result.label_sets[rows])
    cert = guarantee.certify_threshold(h_scores, losses, target=max_error, delta=1.0 - error_confidence, pool=scores)
    none = np.zeros(rows.size, bool)
    accepted, reason = guarantee.acceptance(scores, none, none, reject_novel=False, certificate=cert)
    return accepted, reason, scores, cert


def multilabel_label_issues(embeddings, labels, *, n_folds: int = 5, seed: int = 0, C: float | None = None,
                            method=None):
    """detect-noise's default on multi-label data: held-out probabilities of one-vs-rest heads,
    then :func:`labelkit.multilabel_noise.detect_multilabel_issues` (``method`` default
    :data:`labelkit.multilabel_noise.DEFAULT_METHOD`). Returns (MultilabelIssues, probs, C).

    References
    ----------
    Thyagarajan et al., arXiv:2211.13895.
    """
    from labelkit import multilabel_noise as mln

    probs, c = cross_val_multilabel_probs(embeddings, labels, n_folds=n_folds, seed=seed, C=C)
    issues = mln.detect_multilabel_issues(labels, probs, method=method or mln.DEFAULT_METHOD)
    return issues, probs, c


def class_prototypes(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
    """One prototype per class from every sample carrying it: the mean of their unit-norm
    embeddings, re-normalised (prototypical networks; a sample counts for each of its classes).

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples, n_classes)
        0/1 indicator matrix; rows of -1 are unlabeled.

    Returns
    -------
    vectors : ndarray of shape (n_classes, dim), float32
        Zero for a class no sample carries.
    support : ndarray of shape (n_classes,), int64

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

    Examples
    --------
    >>> v, n = class_prototypes(np.array([[1, 0], [0, 1]], dtype=np.float32), np.array([[1, 1], [0, 1]]))
    >>> v.astype(float).round(3).tolist(), n.tolist()
    ([[1.0, 0.0], [0.707, 0.707]], [1, 2])
    """
    from labelkit._validation import l2_normalize

    x = l2_normalize(check_embeddings(embeddings))
    y = check_multilabels(labels)
    if len(y) != len(x):
        raise BadInputError(f"'labels' must have one row per embedding ({len(x)}). Got {len(y)} instead.")
    member = np.clip(y, 0, 1).astype(np.float32)  # unlabeled rows (-1) carry no class
    sums = member.T @ x
    support = member.sum(axis=0).astype(np.int64)
    return l2_normalize(sums), support
