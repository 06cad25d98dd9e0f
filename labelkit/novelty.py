"""Open-set scores: how far each sample lies from every labeled class (numpy in, numpy out).

Two distances to the known classes, each measured for a labeled sample without that sample (so
the labeled samples give their held-out distribution):

- ``prototype``: one minus the cosine to the nearest class prototype, the class mean of the
  labeled embeddings (re-normalised), the sample's own class mean computed without it
  (prototypical networks; ProtoGCD's "far from every prototype").
- ``knn``: one minus the mean cosine to the ``k`` nearest labeled samples, the sample itself
  excluded (deep nearest-neighbour OOD detection, Sun et al. 2022).
- ``confidence`` (when given): one minus the classifier's confidence in its best class, the
  maximum-softmax-probability score (Hendrycks and Gimpel 2017); for the labeled samples it must
  be held out (the pseudolabel stage passes its calibration folds' out-of-fold confidence and
  calibrates on those rows only, ``reference``). Distances alone miss unseen classes that sit
  between known ones (CIFAR-10's animals); a classifier's doubt alone misses tight far-away
  clusters it labels confidently; benchmarks/openset.py measures the mix.

Each is put on the scale of its distribution over the labeled samples (a robust z-score: minus the
median, over 1.4826 times the median absolute deviation), and ``novelty`` is the mean of the two:
0 for a typical labeled sample, 3 for one three labeled spreads farther than typical (higher =
farther from every known class; unbounded, so it keeps ranking past the farthest labeled sample).
A sample is judged novel when its conformal p-value against the labeled samples,
``p_i = (1 + #{labeled j != i: s_j >= s_i}) / (L + 1)``, is at most ``reject_rate``: equivalently,
when ``novelty`` reaches the ``ceil((1 - reject_rate) (L + 1))``-th smallest labeled score. By
exchangeability, a new sample of a known class is then wrongly judged novel with probability at
most ``reject_rate`` (Vovk, Gammerman, Shafer 2005; Bates et al. 2023 for conformal outlier
detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelkit._progress import NULL, Progress
from labelkit._validation import check_labels, l2_normalize, unit_embeddings
from labelkit.config import defaults
from labelkit.errors import BadInputError

_NOVELTY_RATE = defaults("pseudolabel").novelty_rate  # the stage's --novelty-rate

ROW_CHUNK = 4096
QUERY_BLOCK = 262_144  # rows searched at once for their nearest labeled rows: their (rows, k + 1) results, not (n_samples, k + 1)


@dataclass(frozen=True, eq=False)
class Novelty:
    """What :func:`novelty_scores` returns.

    Attributes
    ----------
    score : ndarray of shape (n_samples,), float32
        Mean robust z-score of the two distances: higher = farther from every known class. For
        labeled rows, computed without the row itself.
    p_value : ndarray of shape (n_samples,), float64
        Conformal p-value against the labeled samples (small = unlike every labeled sample).
    novel : ndarray of shape (n_samples,), bool
        ``p_value <= reject_rate`` (labeled rows included, for reference).
    threshold : float
        The smallest ``score`` an unlabeled sample needs to be judged novel (inf when
        ``reject_rate < 1 / (L + 1)``: nothing can be).
    reject_rate : float
    components : dict of str to ndarray of shape (n_samples,)
        Raw distances (``prototype``, ``knn``) before calibration.
    n_reference : int
        Labeled samples the scores are calibrated on.
    knn : dict
        The nearest-labeled-neighbour search of the ``knn`` distance: ``method``, ``pq_m``,
        ``memory_budget``, ``estimate_bytes`` and ``reason`` (:func:`labelkit.knn.choose_method`),
        and ``tuned`` (the efSearch or nprobe tuning picked and its recall on the tuning sample,
        ``sample_recall`` against ``target_recall``; None for exact search).
    """

    score: np.ndarray
    p_value: np.ndarray
    novel: np.ndarray
    threshold: float
    reject_rate: float
    components: dict
    n_reference: int
    knn: dict


def novelty_scores(embeddings, labels, n_classes: int, *, k: int = 10, reject_rate: float = _NOVELTY_RATE, confidence=None, reference=None,
                   device: str = "cpu", memory_budget: int | None = None, auto_budget: bool = False, progress: Progress = NULL) -> Novelty:
    """Per-sample open-set score, calibrated on the labeled samples, and the rule that marks novel ones.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Normalised here if they are not unit-norm.
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled. At least two labeled samples are needed.
    n_classes : int
    k : int, default=10
        Labeled neighbours averaged by the ``knn`` distance (fewer when fewer exist).
    reject_rate : float, default=0.05
        In (0, 1): the share of known-class samples that may be wrongly judged novel.
    confidence : ndarray of shape (n_samples,), optional
        A classifier's confidence in its best class, out-of-sample for the ``reference`` rows;
        adds the ``confidence`` component.
    reference : ndarray of shape (n_samples,), bool, optional
        Labeled rows to calibrate on (default: every labeled row). With ``confidence``, pass the
        rows whose confidence was computed without their own label.
    device : str, default="cpu"
        For the nearest-labeled-neighbour search (:func:`labelkit.knn.search`).
    memory_budget : int or None, default=None
        Bytes that search may take beyond the embeddings (its index over the labeled rows, scratch
        and results; :func:`labelkit.knn.memory_estimate`); over it, the cells method or an IVF-PQ index
        (:func:`labelkit.knn.choose_method`), re-ranked by exact cosine. None or 0: no budget. The
        copy of the labeled rows the index is built from (``n_labeled * dim`` in the embeddings'
        dtype) is not counted.
    auto_budget : bool, default=False
        ``memory_budget`` is ``--memory-budget auto``'s (:func:`labelkit.knn.choose_method`).
    progress : Progress, default=NULL
        The search's progress, a query block of :data:`QUERY_BLOCK` rows at a time.

    Returns
    -------
    Novelty

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017. Sun, Ming,
    Zhu, Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022. Ma et al.,
    "ProtoGCD: Unified and Unbiased Prototype Learning for Generalized Category Discovery", 2025.
    Bates, Candès, Lei, Romano, Sesia, "Testing for Outliers with Conformal p-values", Ann.
    Statist. 2023. Hendrycks, Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017.

    Examples
    --------
    >>> x = np.array([[1, 0, 0], [0.99, 0.1, 0], [0.98, 0.2, 0], [0, 1, 0], [0.1, 0.99, 0],
    ...               [0.2, 0.98, 0], [0.97, 0.25, 0], [0, 0, 1]], np.float32)
    >>> r = novelty_scores(x, np.array([0, 0, 0, 1, 1, 1, -1, -1]), 2, k=2, reject_rate=0.2)
    >>> r.novel[6:].tolist(), bool(r.score[7] > r.score[6])
    ([False, True], True)
    """
    x = unit_embeddings(embeddings)
    labels = check_labels(labels, n_classes=n_classes)
    if labels.shape[0] != x.shape[0]:
        raise BadInputError(f"'labels' must have one entry per embedding ({x.shape[0]}). Got {labels.shape[0]} instead.")
    if (labels >= 0).sum() < 2:
        raise BadInputError("novelty needs at least two labeled samples to calibrate on. Label a few samples per class.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadInputError(f"'k' must be an integer >= 1. Got {k!r} instead.")
    if not (isinstance(reject_rate, (int, float, np.floating)) and 0 < reject_rate < 1):
        raise BadInputError(f"'reject_rate' must be in (0, 1). Got {reject_rate!r} instead.")
    if confidence is not None:
        confidence = np.asarray(confidence, np.float64)
        if confidence.shape != labels.shape or not np.all(np.isfinite(confidence)):
            raise BadInputError(f"'confidence' must be finite with one entry per sample ({labels.shape[0]}). Got shape {confidence.shape} instead.")
    ref = labels >= 0
    if reference is not None:
        reference = np.asarray(reference, bool)
        if reference.shape != labels.shape:
            raise BadInputError(f"'reference' must be a boolean mask of shape {labels.shape}. Got {reference.shape} instead.")
        ref &= reference
    if ref.sum() < 2:
        raise BadInputError("novelty needs at least two labeled reference samples to calibrate on. Label a few samples per class.")
    budget = (memory_budget or None, bool(auto_budget))
    return _novelty_impl(x, labels, n_classes, int(k), float(reject_rate), confidence, ref, device, budget, progress)


def _novelty_impl(x, labels, n_classes, k, reject_rate, confidence, ref_mask, device, budget, progress) -> Novelty:
    lab = np.flatnonzero(labels >= 0)
    knn_dist, searched = _knn_distance(x, lab, k, device, budget, progress)
    comps = {"prototype": _prototype_distance(x, labels, n_classes), "knn": knn_dist}
    if confidence is not None:
        comps["confidence"] = 1.0 - confidence
    lab = np.flatnonzero(ref_mask)  # the rows calibrated on
    # Each distance on the scale of its labeled distribution; their mean, judged by a conformal p-value.
    score = np.mean([_robust_z(d[lab], d) for d in comps.values()], axis=0).astype(np.float32)
    p = _conformal_p(score[lab], score, ref_mask)
    ref = np.sort(score[lab])
    rank = int(np.ceil((1 - reject_rate) * (lab.size + 1)))  # p <= rate  <=>  score >= ref[rank - 1]
    threshold = float(ref[rank - 1]) if rank <= lab.size else float("inf")
    return Novelty(score, p, p <= reject_rate, threshold, reject_rate, {n: d.astype(np.float32) for n, d in comps.items()}, int(lab.size),
                   searched)


def _robust_z(ref, values) -> np.ndarray:
    """(values - median(ref)) / (1.4826 MAD(ref)); the scale falls back to the std, then 1, when zero."""
    med = np.median(ref)
    scale = 1.4826 * np.median(np.abs(ref - med))
    if not scale > 1e-12:
        scale = ref.std() if ref.std() > 1e-12 else 1.0
    return (values - med) / scale


def _conformal_p(ref, values, is_ref) -> np.ndarray:
    """(1 + #{ref >= v}) / (n_ref + 1), a reference row not counting itself."""
    ref = np.sort(ref)
    at_least = ref.size - np.searchsorted(ref, values, side="left")
    at_least = at_least - is_ref.astype(np.int64)  # a labeled row is not its own reference
    return (1.0 + at_least) / (ref.size + 1.0)


def _prototype_distance(x, labels, n_classes) -> np.ndarray:
    """1 - max_c cos(x_i, class mean of c); a labeled sample's own class mean leaves it out."""
    lab = labels >= 0
    sums = np.zeros((n_classes, x.shape[1]), np.float64)
    np.add.at(sums, labels[lab], x[lab])
    counts = np.bincount(labels[lab], minlength=n_classes)
    means = l2_normalize(sums.astype(np.float32))
    present = counts > 0
    out = np.empty(x.shape[0], np.float64)
    for lo in range(0, x.shape[0], ROW_CHUNK):
        xs = x[lo : lo + ROW_CHUNK]
        cos = np.where(present, xs @ means.T, -np.inf)
        y = labels[lo : lo + ROW_CHUNK]
        own = np.flatnonzero(y >= 0)
        if own.size:  # leave-one-out class mean: (sum - x_i) / |sum - x_i|
            c = y[own]
            loo = sums[c] - xs[own]
            norm = np.linalg.norm(loo, axis=1)
            cos_loo = np.where(norm > 1e-9, np.einsum("ij,ij->i", loo, xs[own]) / np.maximum(norm, 1e-12), -np.inf)
            cos[own, c] = np.where(counts[c] > 1, cos_loo, -np.inf)
        best = cos.max(axis=1)
        out[lo : lo + ROW_CHUNK] = 1.0 - np.where(np.isfinite(best), best, -1.0)
    return out


def _knn_distance(x, lab, k, device, budget, progress) -> tuple[np.ndarray, dict]:
    """1 - mean cosine to the k nearest labeled samples (self excluded), and the search used (``Novelty.knn``)."""
    from labelkit import knn

    kk = min(k + 1, lab.size)
    block = min(x.shape[0], QUERY_BLOCK)
    # knn.search's choice (exact for few pairs, else HNSW; the cells method or IVF-PQ over the budget), kept to be reported; the
    # results held at once are one query block's, reduced to a distance before the next block is searched.
    try:
        choice = knn.choose_method(lab.size, x.shape[1], kk, memory_budget=budget[0], n_queries=x.shape[0], device=device,
                                   result_rows=block, auto_budget=budget[1])
    except BadInputError as e:  # its message names "a kNN graph" of the labeled rows: say which search
        raise BadInputError(f"novelty's search of the labeled rows for every row's nearest ones: {e}") from None
    index = knn.KnnIndex(choice.method, device=device, ann=choice.ann()).build(x[lab], progress=progress)
    index.tune_search(x, kk, progress=progress)  # one knob for every block, tuned on a sample of all rows
    out = np.empty(x.shape[0], np.float64)
    with progress.task("novelty: nearest labeled rows", total=x.shape[0]) as task:
        for start in range(0, x.shape[0], block):
            sims, idx = index.search(x[start : start + block], kk)
            out[start : start + len(idx)] = _mean_kept_distance(sims, idx, lab, start, k)
            task.advance(len(idx))
            del sims, idx
    tuned = index.tuning(kk)
    del index
    return out, {**choice.to_dict(), "tuned": tuned}


def _mean_kept_distance(sims, idx, lab, start, k) -> np.ndarray:
    """1 - mean cosine of each row's first k neighbours other than itself; rows ``start + i``, neighbours index ``lab``."""
    out = np.empty(idx.shape[0], np.float64)
    for lo in range(0, idx.shape[0], ROW_CHUNK):  # the (n, k) temporaries a chunk at a time
        i = idx[lo : lo + ROW_CHUNK]
        rows = lab[np.maximum(i, 0)]
        self_hit = (rows == np.arange(start + lo, start + lo + i.shape[0])[:, None]) & (i >= 0)
        keep = (i >= 0) & ~self_hit
        # The first k kept neighbours of each row (a labeled row drops itself; others drop the last).
        keep &= np.cumsum(keep, axis=1) <= min(k, lab.size - 1)
        out[lo : lo + i.shape[0]] = 1.0 - np.where(keep, sims[lo : lo + ROW_CHUNK], 0.0).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)
    return out
