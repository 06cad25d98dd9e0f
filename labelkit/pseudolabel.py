"""Pseudo-labels from embeddings: the scores, and the pipeline that calibrates and thresholds them.

Numpy in, numpy out. The kNN graph (``sims``, ``idx``) and the prototype vectors are inputs:
this module never builds an index. Four scores give ``probs`` (N, K) for every sample:

- ``prototype``: softmax of the cosine to each class's nearest prototype over a temperature.
- ``knn``: similarity-weighted vote of the labeled neighbours.
- ``propagation``: label spreading (Zhou et al. 2004) over the kNN graph with edge weights
  ``sims ** gamma`` (Iscen et al. 2019) and one-way edges down-weighted (mutual kNN), optionally
  with class-name anchor nodes (ZLaP); then one certainty-weighted refinement round, and a
  prior that shrinks samples that no label reaches toward uniform (:mod:`labelkit.propagation`).
- ``ensemble`` (default): a weighted average of the calibrated scores above, where the
  prototype score uses prototypes re-estimated transductively from the propagated labels.

:func:`pseudolabel` runs one of them, calibrates it on the labeled samples by K-fold held-out
scoring (:mod:`labelkit.calibration`), corrects the class priors if asked, applies a threshold
rule (:mod:`labelkit.thresholds`) and returns a :class:`PseudolabelResult`. The defaults are
those benchmarks/pseudolabel.py measured best. (N, K) arrays are float32 and the work on them is
done in row chunks or column blocks: the propagation's one (N, K) array is solved, refined and
finally overwritten by the calibrated mixture in place, and the other scores exist one row chunk
at a time, so memory stays about one (N, K) array at any N, plus the held-out scores of the
labeled rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum

import numpy as np
import scipy.sparse as sp

from labelkit._probability import ROW_CHUNK, check_positive, log_probs, margin, softmax
from labelkit._validation import check_embeddings, check_labels, check_probs, l2_normalize, unit_embeddings
from labelkit.calibration import Calibration, _em_prior_impl, calibrate
from labelkit.config import PseudolabelConfig, defaults, validate_options
from labelkit.errors import BadInputError
from labelkit.neighbours import check_graph, vote
from labelkit.propagation import Spreader, _affinity_impl, propagate
from labelkit.thresholds import ThresholdRule, accept_scores

_STAGE = defaults("pseudolabel")  # the pseudolabel stage's config: the options' defaults are declared there, once

#: Softmax temperature of the prototype score inside the pipeline; the calibration rescales it.
PROTOTYPE_TEMPERATURE = 0.1


class ScoreMethod(str, Enum):
    """How scores are computed (see the module docstring)."""

    PROTOTYPE = "prototype"
    KNN = "knn"
    PROPAGATION = "propagation"
    ENSEMBLE = "ensemble"


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_prototypes(vectors, classes, n_classes: int, dim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    vectors = check_embeddings(vectors, name=name)
    if vectors.shape[1] != dim:
        raise BadInputError(f"'{name}' must have dimension {dim} like the embeddings. Got {vectors.shape[1]} instead.")
    classes = check_labels(classes, n_classes=n_classes, allow_unlabeled=False, name=f"{name} classes")
    if classes.shape[0] != vectors.shape[0]:
        raise BadInputError(f"'{name}' has {vectors.shape[0]} vectors but {classes.shape[0]} classes.")
    return l2_normalize(vectors), classes


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------


def _prototype_probs(x, vectors, classes, n_classes, temperature, rows=None, dtype=np.float32) -> np.ndarray:
    """softmax over classes of (max cosine to a prototype of the class) / temperature, at ``rows``.

    Classes without a prototype get the logit -2 (below any cosine).
    """
    order = np.argsort(classes, kind="stable")
    cls, vec = classes[order], vectors[order]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    rows = np.arange(x.shape[0]) if rows is None else rows
    out = np.full((rows.size, n_classes), -2.0, dtype=dtype)
    for lo in range(0, rows.size, ROW_CHUNK):
        cos = x[rows[lo : lo + ROW_CHUNK]] @ vec.T
        out[lo : lo + ROW_CHUNK, cls[starts]] = np.maximum.reduceat(cos, starts, axis=1)
        out[lo : lo + ROW_CHUNK] = softmax(out[lo : lo + ROW_CHUNK] / dtype(temperature))
    return out


def prototype_scores(embeddings, prototypes, prototype_classes, n_classes: int, *, temperature: float = 0.1) -> np.ndarray:
    """Class probabilities from the cosine to the nearest prototype of each class.

    ``p_ic = softmax_c(max_{v in prototypes of c} cos(x_i, v) / temperature)``. A class with
    several prototypes (sub-prototypes) scores by its best one.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    prototypes : ndarray of shape (n_prototypes, dim)
    prototype_classes : ndarray of shape (n_prototypes,)
        Class of each prototype, in ``[0, n_classes)``.
    n_classes : int
    temperature : float, default=0.1
        Softmax temperature on the cosines (> 0).

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        float64. Classes without a prototype get (numerically) zero probability.

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    >>> prototype_scores(x, np.eye(2), np.array([0, 1]), 2, temperature=0.1).argmax(axis=1)
    array([0, 1, 1])
    """
    x = unit_embeddings(embeddings)
    check_positive("temperature", temperature)
    v, c = _check_prototypes(prototypes, prototype_classes, n_classes, x.shape[1], "prototypes")
    return _prototype_probs(x, v, c, n_classes, temperature, dtype=np.float64)


def knn_vote_scores(labels, sims, idx, n_classes: int, *, gamma: float = _STAGE.gamma) -> np.ndarray:
    """Similarity-weighted vote of each sample's labeled neighbours.

    ``p_ic ∝ sum_{j in N(i), y_j = c} max(s_ij, 0) ** gamma``; a sample with no labeled
    neighbour (or only zero weights) gets the uniform distribution.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    sims, idx : ndarray of shape (n_samples, k)
        kNN graph: cosine similarities and neighbour rows (-1 = missing), self excluded.
    n_classes : int
    gamma : float, default: the pseudolabel stage's ``gamma``
        Power on the similarities (>= 0); 1 is a plain similarity-weighted vote.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        float64.

    References
    ----------
    Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018 (weighted kNN classifier on embeddings).

    Examples
    --------
    >>> idx = np.array([[1, 2], [0, 2], [0, 1]])
    >>> sims = np.array([[0.9, 0.1], [0.9, 0.2], [0.1, 0.2]], dtype=np.float32)
    >>> knn_vote_scores(np.array([0, 1, -1]), sims, idx, 2).round(2)
    array([[0.  , 1.  ],
           [1.  , 0.  ],
           [0.11, 0.89]])
    """
    labels = check_labels(labels, n_classes=n_classes)
    sims, idx, _ = check_graph(sims, idx, labels.shape[0])
    check_positive("gamma", gamma, strict=False)
    return vote(labels, sims, idx, None, n_classes, power=gamma, dtype=np.float64)


def label_spreading_scores(
    labels,
    sims,
    idx,
    n_classes: int,
    *,
    alpha: float = _STAGE.alpha,
    gamma: float = _STAGE.gamma,
    anchors=None,
    embeddings=None,
) -> np.ndarray:
    """Class probabilities by label spreading over the kNN graph.

    Seeds are class-balanced (``Y_ic = 1 / n_c`` for the ``n_c`` samples labeled ``c``, so
    every class injects the same mass); the graph is :func:`labelkit.propagation.knn_affinity`
    (mutual edges favoured, ``one_way_weight``); the spread scores are divided by their class's total mass
    (class-mass normalisation, Zhou et al.), then normalised per row. This assumes equal class
    priors; see :func:`labelkit.calibration.em_prior_shift` to re-estimate them.
    :func:`pseudolabel` adds a refinement round and a reach prior.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        -1 = unlabeled.
    sims, idx : ndarray of shape (n_samples, k)
        The kNN graph (cosine, self excluded, -1 = missing).
    n_classes : int
    alpha, gamma : float, default: the pseudolabel stage's ``alpha`` and ``gamma``
    anchors : tuple (vectors (T, dim), classes (T,)), optional
        Class-name (text) embeddings added as extra labeled nodes (ZLaP). Each sample links to
        its most similar anchor with weight ``cos ** gamma``. Needs ``embeddings``.
    embeddings : ndarray of shape (n_samples, dim), optional
        Only used with ``anchors``.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        float32. Samples connected to no seed get the uniform distribution.

    References
    ----------
    Zhou et al., "Learning with Local and Global Consistency", NeurIPS 2004. Iscen et al.,
    "Label Propagation for Deep Semi-supervised Learning", CVPR 2019. Stojnić, Kalantidis,
    Tolias, "Label Propagation for Zero-shot Classification with Vision-Language Models",
    CVPR 2024 (ZLaP: class names as graph nodes).

    Examples
    --------
    >>> idx = np.array([[1], [0], [3], [2]])
    >>> sims = np.ones((4, 1), dtype=np.float32)
    >>> label_spreading_scores(np.array([0, -1, 1, -1]), sims, idx, 2).argmax(axis=1).tolist()
    [0, 0, 1, 1]
    """
    labels = check_labels(labels, n_classes=n_classes)
    sims, idx, _ = check_graph(sims, idx, labels.shape[0])
    x = None
    if anchors is not None:
        if embeddings is None:
            raise BadInputError("'embeddings' are needed to link 'anchors' into the graph.")
        x = unit_embeddings(embeddings)
        anchors = _as_prototypes(anchors, n_classes, x.shape[1], "anchors")
    opts = PseudolabelOptions(method=ScoreMethod.PROPAGATION, alpha=alpha, gamma=gamma, refine=False, reach_prior=0.0)
    ctx = _Context(x, sims, idx, n_classes, None, anchors)
    return _propagate(labels, _graph(ctx, opts), ctx, opts)


def soft_labels(probs, *, top_k: int = 3, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k soft labels: sharpen ``p ** (1 / temperature)``, keep the k best, renormalise.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    top_k : int, default=3
        Clipped to ``n_classes``.
    temperature : float, default=1.0
        ``< 1`` sharpens, ``> 1`` flattens (MixMatch's sharpening).

    Returns
    -------
    top_labels : ndarray of shape (n_samples, top_k), int64
        Classes by decreasing probability (ties: lower class first).
    top_probs : ndarray of shape (n_samples, top_k)
        Their probabilities, in the dtype of ``probs``; each row sums to one.

    References
    ----------
    Berthelot et al., "MixMatch: A Holistic Approach to Semi-Supervised Learning", NeurIPS 2019.

    Examples
    --------
    >>> labels, probs = soft_labels(np.array([[0.5, 0.3, 0.2]]), top_k=2)
    >>> labels.tolist(), probs.round(3).tolist()
    ([[0, 1]], [[0.625, 0.375]])
    """
    probs = check_probs(probs)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise BadInputError(f"'top_k' must be an integer >= 1. Got {top_k!r} instead.")
    check_positive("temperature", temperature)
    return _soft_labels_impl(probs, int(top_k), float(temperature))


def _soft_labels_impl(probs, top_k, temperature):
    # Sharpening is monotone and the top-k renormalisation cancels the softmax denominator, so
    # only the k kept entries are sharpened: p_j ** (1/T) / sum_{top k} p ** (1/T).
    k = min(top_k, probs.shape[1])
    labels = np.empty((probs.shape[0], k), dtype=np.int64)
    out = np.empty((probs.shape[0], k), dtype=probs.dtype)
    for lo in range(0, probs.shape[0], ROW_CHUNK):
        blk = probs[lo : lo + ROW_CHUNK]
        top = np.argsort(-blk, axis=1, kind="stable")[:, :k]
        z = log_probs(np.take_along_axis(blk, top, axis=1).astype(np.float64)) / temperature
        labels[lo : lo + ROW_CHUNK], out[lo : lo + ROW_CHUNK] = top, softmax(z)
    return labels, out


# --------------------------------------------------------------------------------------------
# the pipeline: component scores, K-fold held-out calibration, ensemble
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """The inputs every score needs, already validated."""

    x: np.ndarray  # (N, D) unit-norm
    sims: np.ndarray
    idx: np.ndarray
    n_classes: int
    prototypes: tuple[np.ndarray, np.ndarray] | None
    anchors: tuple[np.ndarray, np.ndarray] | None


def _graph(ctx: _Context, opts: PseudolabelOptions) -> Spreader:
    """The propagation graph (kNN affinity, plus anchor nodes), built once for every fold."""
    n = ctx.sims.shape[0]
    a = _affinity_impl(ctx.sims, ctx.idx, opts.gamma, opts.one_way_weight)
    if ctx.anchors is not None:  # ZLaP: anchors are extra nodes; each sample links to its nearest one
        vec, _ = ctx.anchors
        best, cos = np.empty(n, np.int64), np.empty(n, np.float64)
        for lo in range(0, n, ROW_CHUNK):
            c = ctx.x[lo : lo + ROW_CHUNK] @ vec.T
            best[lo : lo + ROW_CHUNK] = c.argmax(axis=1)
            cos[lo : lo + ROW_CHUNK] = c[np.arange(c.shape[0]), best[lo : lo + ROW_CHUNK]]
        b = sp.csr_matrix((np.maximum(cos, 0.0) ** opts.gamma, (np.arange(n), best)), shape=(n, len(vec)))
        a = sp.bmat([[a, b], [b.T, None]], format="csr")
    return Spreader(a)


def _propagate(labels, spreader: Spreader, ctx: _Context, opts: PseudolabelOptions, with_first=None) -> np.ndarray:
    """Final spreading probabilities of the samples, float32 (N, K); ``with_first`` sees the first round's."""
    node_labels = labels if ctx.anchors is None else np.concatenate([labels, ctx.anchors[1]])
    return propagate(spreader, node_labels, labels.shape[0], ctx.n_classes, alpha=opts.alpha, refine=opts.refine,
                     reach_prior=opts.reach_prior, with_first=with_first)


def _soft_prototypes(x, weights, given, seeds, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes as weighted class means, ``v_c ∝ sum_i w_ic x_i`` (one soft k-means step).

    Rows labeled in ``seeds`` (>= 0) weigh one-hot on their label, whatever ``weights`` says
    (None: the other rows weigh nothing); the substitution is made a row chunk at a time, never
    as an (N, K) copy. With given prototypes, a class that has several keeps one per given
    prototype, averaged over the samples nearest to it; classes with no weight get none.
    """
    k = n_classes
    cls_of = np.arange(k)
    if given is not None:
        vec, cls = given
        if (np.bincount(cls, minlength=k) > 1).any():  # sub-prototypes: one weight column per prototype
            weights = _with_seeds(weights, seeds, k, slice(None))
            groups, owners = [], []
            for c in range(k):
                cols = np.flatnonzero(cls == c)
                if cols.size <= 1:
                    groups.append(weights[:, c])
                    owners.append(c)
                    continue
                nearest = (x @ vec[cols].T).argmax(axis=1)
                for j in range(cols.size):
                    groups.append(np.where(nearest == j, weights[:, c], 0.0))
                    owners.append(c)
            weights, seeds, cls_of = np.stack(groups, axis=1), None, np.asarray(owners)
    sums = np.zeros((cls_of.size, x.shape[1]))
    mass = np.zeros(cls_of.size)
    for lo in range(0, x.shape[0], ROW_CHUNK):  # float32 BLAS per chunk, float64 accumulation
        w = _with_seeds(weights, seeds, k, slice(lo, lo + ROW_CHUNK))
        sums += w.T @ x[lo : lo + ROW_CHUNK]
        mass += w.sum(axis=0, dtype=np.float64)
    keep = mass > 0
    return l2_normalize(sums[keep].astype(np.float32)), cls_of[keep].astype(np.int64)


def _with_seeds(weights, seeds, n_classes: int, rows: slice) -> np.ndarray:
    """float32 ``weights[rows]`` (zeros when None), the rows labeled in ``seeds`` one-hot; a new array."""
    y = None if seeds is None else seeds[rows]
    if weights is None:
        return _onehot(y, n_classes)
    w = weights[rows].astype(np.float32)
    if y is not None:
        at = np.flatnonzero(y >= 0)
        w[at] = _onehot(y[at], n_classes)
    return w


def _onehot(labels, n_classes) -> np.ndarray:
    return (labels[:, None] == np.arange(n_classes)).astype(np.float32)


def _component_weights(opts: PseudolabelOptions) -> dict[str, float]:
    w = {ScoreMethod.PROPAGATION: (1.0, 0.0, 0.0), ScoreMethod.PROTOTYPE: (0.0, 1.0, 0.0), ScoreMethod.KNN: (0.0, 0.0, 1.0)}
    values = w.get(opts.method, opts.weights)
    out = {n: v for n, v in zip(("propagation", "prototype", "knn"), values) if v > 0}
    if opts.method is ScoreMethod.ENSEMBLE and opts.probe_weights and opts.n_folds >= 2:
        out["probe"] = 0.0  # its weight is chosen on the held-out folds (_probe_alternatives)
    return out


def _probe_alternatives(opts: PseudolabelOptions) -> list[dict[str, float]]:
    base = _component_weights(opts)
    return [{**base, "probe": w} for w in opts.probe_weights] if "probe" in base else []


def _components(labels, ctx: _Context, spreader, opts: PseudolabelOptions, rows=None, *, heldout: bool,
                without: frozenset = frozenset()) -> dict[str, np.ndarray]:
    """Each score the method needs at ``rows`` (None = all), from ``labels`` alone (held-out folds pass fewer);
    the names in ``without`` are not computed (a member the held-out folds gave no weight)."""
    at = np.arange(labels.shape[0]) if rows is None else rows
    return {n: score(at) for n, score in _scorers(labels, ctx, spreader, opts, heldout=heldout, without=without)[1].items()}


def _scorers(labels, ctx: _Context, spreader, opts: PseudolabelOptions, *, heldout: bool,
             without: frozenset = frozenset()) -> tuple[np.ndarray | None, dict[str, Callable[[np.ndarray], np.ndarray]]]:
    """(the propagation's scores, each score the method needs as a function of rows), fitted on ``labels``.

    The propagation is solved here, once, for every row: its float32 (N, K) scores (None when it
    is not a member) are the only (N, K) array kept. The other functions compute float32
    (len(rows), K) scores for the rows asked, so a caller that asks a row chunk at a time holds
    one chunk of them.
    """
    weights, out = {n: w for n, w in _component_weights(opts).items() if n not in without}, {}
    transductive = opts.method is ScoreMethod.ENSEMBLE and "prototype" in weights
    proto, made, with_first = None, [], None
    if transductive:  # first-round propagated probabilities as weights, given labels one-hot
        def with_first(first):
            made.append(_soft_prototypes(ctx.x, first, ctx.prototypes, labels, ctx.n_classes))
    elif "prototype" in weights and (ctx.prototypes is None or heldout):
        # Held out, the given prototypes saw the hidden labels: re-estimate them without.
        proto = _soft_prototypes(ctx.x, None, ctx.prototypes, labels, ctx.n_classes)
    elif "prototype" in weights:
        proto = ctx.prototypes
    final = None
    if "propagation" in weights or transductive:
        final = _propagate(labels, spreader, ctx, opts, with_first=with_first)
        proto = made[0] if transductive else proto
        if "propagation" in weights:
            out["propagation"] = lambda rows: final[rows]
        else:
            final = None
    if "prototype" in weights:
        vec, cls = proto
        out["prototype"] = lambda rows: _prototype_probs(ctx.x, vec, cls, ctx.n_classes, PROTOTYPE_TEMPERATURE, rows)
    if "knn" in weights:
        out["knn"] = lambda rows: vote(labels, ctx.sims, ctx.idx, None, ctx.n_classes, power=opts.gamma, rows=rows)
    if "probe" in weights:
        from labelkit.probe import probe_predictor

        out["probe"] = probe_predictor(ctx.x, labels, ctx.n_classes)
    return final, out


def _calibrated_scores(labels, ctx: _Context, spreader, opts: PseudolabelOptions, cal: Calibration,
                       without: frozenset = frozenset()) -> np.ndarray:
    """``cal.apply`` of every score of every row, float32 (N, K), a row chunk at a time: the other
    scores exist one chunk at a time and the result is written over the propagation's array."""
    spread, scorers = _scorers(labels, ctx, spreader, opts, heldout=False, without=without)
    n = labels.shape[0]
    out = spread if spread is not None else np.empty((n, ctx.n_classes), dtype=np.float32)
    for lo in range(0, n, ROW_CHUNK):  # the chunks cal.apply and the scores use: the same numbers as one call
        rows = np.arange(lo, min(lo + ROW_CHUNK, n))
        out[lo : lo + ROW_CHUNK] = cal.apply({name: score(rows) for name, score in scorers.items()})
    return out


# --------------------------------------------------------------------------------------------
# the top level
# --------------------------------------------------------------------------------------------


# Compute argument -> the config key it is (the others share their name).
_CONFIG_KEYS = {"n_neighbors": "k", "threshold": "threshold_rule", "threshold_value": "threshold", "n_folds": "calibration_folds"}
_METHOD, _RULE = ScoreMethod(_STAGE.method), ThresholdRule(_STAGE.threshold_rule)


@dataclass(frozen=True)
class PseudolabelOptions:
    """Options of :func:`pseudolabel`: the fields of the pseudolabel stage's config
    (:class:`labelkit.config.PseudolabelConfig`; every key, default and bound in docs/options.md) under
    the compute layer's names, with the defaults, bounds and checks declared there once. The defaults
    are those benchmarks/pseudolabel.py found best. :meth:`from_config` builds one from a config.

    Attributes
    ----------
    method : ScoreMethod
        Config key ``method``.
    n_neighbors : int
        Config key ``k``: neighbours used from the graph (its first columns); the graph may hold more.
    alpha : float
        Label spreading: weight of the neighbours against the seeds.
    gamma : float
        Edge weight ``max(sim, 0) ** gamma`` (propagation and kNN vote).
    one_way_weight : float
        Weight of a kNN edge that is not mutual, relative to a mutual one (see
        :func:`labelkit.propagation.knn_affinity`).
    reach_prior : float
        Shrinks each sample's propagated distribution toward uniform by the weight
        ``r / (r + reach_prior * mean(r))``, where ``r`` is the probability that a random walk
        with restart from the sample stops at a labeled one: samples far from every label
        (e.g. a sub-cluster with no labeled member, which spreading alone would label
        confidently from a neighbouring class) lose confidence. 0 disables it.
    refine : bool
        One transductive round (Iscen et al. 2019): spread again with every sample's
        pseudo-label as a seed weighted by its certainty ``1 - H(p) / log K``.
    weights : (float, float, float)
        Ensemble weights of the calibrated propagation, prototype and kNN-vote scores.
    probe_weights : tuple of float
        Ensemble only: weights to try for a fourth member, a linear softmax probe fitted on the
        labeled samples (multinomial logistic regression, :mod:`labelkit.probe`); the held-out
        folds keep the weight (or none, 0) whose calibrated mixture has the lowest held-out
        negative log-likelihood. With hundreds of labels on features whose classes are closer to
        linearly separable than clustered (CIFAR-10 photos), a linear model is the better teacher;
        with ten labels a class the graph is. Empty: no probe.
    threshold : ThresholdRule
        Config key ``threshold_rule``.
    threshold_value : float
        Config key ``threshold``: tau (fixed, flexmatch), n_per_class (top_per_class) or
        min_margin (margin).
    top_k : int
        Classes kept in the soft label.
    sharpen : float
        Temperature of the soft label (``< 1`` sharpens).
    n_folds : int
        Config key ``calibration_folds``: folds of labeled samples for held-out calibration; 0 or
        1 disables calibration.
    calibration_samples : int or None
        Held-out samples to calibrate on: whole folds are scored until this many are held out
        (every fold when None or 0). Each fold costs a full propagation; past a few thousand
        samples more only refine the three temperatures. Labeled rows outside the scored
        folds get in-sample scores (see ``PseudolabelResult.heldout``).
    prior_correction : bool
        Re-estimate the class priors of the unlabeled samples by EM (Saerens et al. 2002).
    seed : int
        Seeds the fold split.
    """

    method: ScoreMethod = _METHOD
    n_neighbors: int = _STAGE.k
    alpha: float = _STAGE.alpha
    gamma: float = _STAGE.gamma
    one_way_weight: float = _STAGE.one_way_weight
    reach_prior: float = _STAGE.reach_prior
    refine: bool = _STAGE.refine
    weights: tuple[float, float, float] = _STAGE.weights
    probe_weights: tuple[float, ...] = _STAGE.probe_weights
    threshold: ThresholdRule = _RULE
    threshold_value: float = _STAGE.threshold
    top_k: int = _STAGE.top_k
    sharpen: float = _STAGE.sharpen
    n_folds: int = _STAGE.calibration_folds
    calibration_samples: int | None = _STAGE.calibration_samples or None
    prior_correction: bool = _STAGE.prior_correction
    seed: int = _STAGE.seed

    def __post_init__(self) -> None:
        for name, enum in (("method", ScoreMethod), ("threshold", ThresholdRule)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise BadInputError(f"'{name}' must be one of {[m.value for m in enum]}. Got {getattr(self, name)!r} instead.") from None
        # Every other check is the config's (labelkit.config.PseudolabelConfig), in these names.
        values = {_CONFIG_KEYS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}
        values.update(method=self.method.value, threshold_rule=self.threshold.value, calibration_samples=self.calibration_samples or 0)
        cfg = validate_options("pseudolabel", values, names={key: name for name, key in _CONFIG_KEYS.items()})
        object.__setattr__(self, "weights", tuple(float(v) for v in cfg.weights))
        object.__setattr__(self, "probe_weights", tuple(float(v) for v in cfg.probe_weights))
        object.__setattr__(self, "calibration_samples", cfg.calibration_samples or None)

    @classmethod
    def from_config(cls, cfg: PseudolabelConfig, **changes) -> PseudolabelOptions:
        """The options a pseudolabel config gives (``changes``: compute names overriding some of them)."""
        values = {name: getattr(cfg, _CONFIG_KEYS.get(name, name)) for name in (f.name for f in fields(cls))}
        return cls(**{**values, **changes})


@dataclass(frozen=True, eq=False)
class PseudolabelResult:
    """What :func:`pseudolabel` returns.

    Labeled rows in the scored calibration folds (``heldout``) get their out-of-fold scores,
    useful to spot label errors; no labeled row is ever ``accepted``; the diagnostics describe
    the unlabeled rows.

    Attributes
    ----------
    probs : ndarray of shape (n_samples, n_classes), float32
        Calibrated class probabilities (None after :meth:`without_probs`).
    label, confidence, margin : ndarray of shape (n_samples,)
        Best class (always set), its probability, and top-1 minus top-2 probability.
    accepted : ndarray of shape (n_samples,), bool
        Unlabeled rows (``accept_rows``, default all) that pass the threshold rule.
    top_labels, top_probs : ndarray of shape (n_samples, top_k)
        Soft label: best classes and renormalised (sharpened) probabilities.
    heldout : ndarray of shape (n_samples,), bool
        Labeled rows whose ``probs`` are out-of-fold.
    temperature : float
        Final calibration temperature (1.0 when not calibrated).
    ece, ece_uncalibrated : float
        Expected calibration error (15 bins) of the held-out labeled samples after and before
        calibration; the temperature applied to a fold is fitted on the other folds. NaN
        when not calibrated.
    n_calibration : int
        Held-out labeled samples used to calibrate.
    priors : ndarray of shape (n_classes,)
        Class priors of the unlabeled rows: the EM estimate with ``prior_correction``, else
        the mean of their probabilities.
    coverage : float
        Accepted share of the rows accepted among (NaN if there are none).
    class_counts : ndarray of shape (n_classes,)
        Accepted rows per class.
    confidence_counts : ndarray of shape (10,)
        Histogram of the unlabeled rows' confidence over ten equal bins of [0, 1].
    method : str
    weights : dict of str to float
        The ensemble's mixture weights as used (the probe's chosen on the held-out folds).
    fold_scored : ndarray of shape (n_samples,), bool
        Unlabeled rows scored by one calibration fold's run instead of the run on every label
        (``unlabeled_by_fold``): exchangeable with the held-out rows. None on results built by hand.
    """

    probs: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    accepted: np.ndarray
    top_labels: np.ndarray
    top_probs: np.ndarray
    heldout: np.ndarray
    temperature: float
    ece: float
    ece_uncalibrated: float
    n_calibration: int
    priors: np.ndarray
    coverage: float
    class_counts: np.ndarray
    confidence_counts: np.ndarray
    method: str
    weights: dict | None = None
    fold_scored: np.ndarray | None = None

    def without_probs(self) -> PseudolabelResult:
        """This result with ``probs`` None: every per-row result a writer needs, one (N, K) array lighter."""
        return replace(self, probs=None)


def _as_prototypes(obj, n_classes: int, dim: int, name: str):
    """(vectors, classes) from a Prototypes-like object, a (vectors, classes) pair, or a (K, D) array."""
    if obj is None:
        return None
    if hasattr(obj, "vectors") and hasattr(obj, "classes"):
        vectors, classes = obj.vectors, obj.classes
    elif isinstance(obj, tuple) and len(obj) == 2:
        vectors, classes = obj
    else:
        vectors = np.asarray(obj)
        if vectors.ndim != 2 or vectors.shape[0] != n_classes:
            raise BadInputError(f"'{name}' as an array must have one row per class ({n_classes}). Got shape {vectors.shape} instead.")
        classes = np.arange(n_classes)
    if len(vectors) == 0:
        raise BadInputError(f"'{name}' is empty; pass None instead.")
    return _check_prototypes(vectors, classes, n_classes, dim, name)


def _validated(embeddings, labels, n_classes, graph, prototypes, text_prototypes, options) -> tuple[np.ndarray, _Context]:
    """Checked labels and the scoring context (the public functions' shared edge)."""
    x = unit_embeddings(embeddings)
    labels = check_labels(labels, n_classes=n_classes)
    if labels.shape[0] != x.shape[0]:
        raise BadInputError(f"'labels' must have one entry per embedding ({x.shape[0]}). Got {labels.shape[0]} instead.")
    if not isinstance(options, PseudolabelOptions):
        raise BadInputError(f"'options' must be a PseudolabelOptions. Got {type(options).__name__} instead.")
    if not (isinstance(graph, tuple) and len(graph) == 2):
        raise BadInputError("'graph' must be a (sims, idx) pair.")
    sims, idx, _ = check_graph(graph[0], graph[1], x.shape[0])
    k = min(options.n_neighbors, sims.shape[1])
    ctx = _Context(
        x, np.ascontiguousarray(sims[:, :k]), np.ascontiguousarray(idx[:, :k]), n_classes,
        _as_prototypes(prototypes, n_classes, x.shape[1], "prototypes"),
        _as_prototypes(text_prototypes, n_classes, x.shape[1], "text_prototypes"),
    )
    if not (labels >= 0).any() and ctx.anchors is None and (options.method is not ScoreMethod.PROTOTYPE or ctx.prototypes is None):
        raise BadInputError(
            "no labeled sample (every label is -1) and no text prototypes: nothing to pseudo-label from. "
            "Label a few samples per class, or pass text_prototypes."
        )
    return labels, ctx


def pseudolabel(
    embeddings,
    labels,
    n_classes: int,
    graph: tuple[np.ndarray, np.ndarray],
    prototypes=None,
    *,
    text_prototypes=None,
    options: PseudolabelOptions = PseudolabelOptions(),
    calibration: Calibration | None = None,
    accept_rows: np.ndarray | None = None,
    unlabeled_by_fold: bool = False,
) -> PseudolabelResult:
    """Pseudo-label every sample: score, calibrate, correct priors, threshold, soft-label.

    1. Scores (``options.method``): label spreading over the kNN graph (plus one certainty-
       weighted refinement round and the reach prior), prototype scores, a kNN vote, or their
       weighted average (default: propagation, and prototypes re-estimated from the
       propagated labels, weights 1 : 0.5).
    2. Calibration: the labeled samples are split into ``n_folds`` stratified folds; each
       fold's labels are hidden and the scores recomputed, giving held-out scores (until
       ``calibration_samples`` are held out). A temperature per score, then one for their
       mixture, minimise the held-out NLL (with Laplace label smoothing). Unlabeled rows use
       the scores from all labels.
    3. Optional EM re-estimation of the class priors of the unlabeled rows, from the equal
       priors the scores assume.
    4. The threshold rule on the unlabeled rows, and top-k soft labels.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Normalised here if they are not unit-norm.
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    n_classes : int
    graph : (sims, idx), each of shape (n_samples, k)
        kNN graph of ``embeddings`` (e.g. ``labelkit.knn.knn_graph``): cosine similarities,
        descending, and neighbour rows (-1 = missing), self excluded.
    prototypes : Prototypes, (vectors, classes) or ndarray of shape (n_classes, dim), optional
        Class prototypes (several per class allowed). The prototype score uses them as given
        (re-estimated from the training folds' labels when held out); the ensemble uses them
        to split each class into sub-prototypes. Default: class means of the labeled samples.
    text_prototypes : same forms as ``prototypes``, optional
        Class-name embeddings, added to the propagation graph as labeled anchor nodes (ZLaP);
        a class with no labeled sample can then still be predicted.
    options : PseudolabelOptions
    calibration : Calibration, optional
        What :func:`heldout_calibration` returned for the same inputs, labels and options: step
        2 reuses it instead of scoring the folds again (the stage does this when seed cleaning
        dropped nothing).
    accept_rows : ndarray of int, optional
        Unlabeled rows the threshold rule accepts among (a relative rule, ``top_per_class`` or
        ``flexmatch``, depends on which): default every unlabeled row. The stage passes the rows
        it writes (seeds that seed cleaning set aside are scored as unlabeled, never written).
    unlabeled_by_fold : bool, default=False
        Score each unlabeled row the way a held-out labeled row is: by one calibration fold's run
        (chosen at random), calibrated by that fold's cross-fitted temperatures, without prior
        correction. Held-out and unlabeled rows are then exchangeable (when the labeled rows are
        a random sample of the pool), which an error guarantee certified on the held-out rows
        needs (:func:`labelkit.guarantee.accept_pseudolabels`). Each row is scored from
        (n_folds - 1) / n_folds of the labels, so accuracy is a little lower; ``calibration``
        is not reused.

    Returns
    -------
    PseudolabelResult

    References
    ----------
    Zhou et al., NeurIPS 2004; Iscen et al., CVPR 2019; Guo et al., ICML 2017 (temperature
    scaling); Saerens et al., Neural Computation 2002; Sohn et al. (FixMatch), NeurIPS 2020.

    Examples
    --------
    >>> x = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0, 1], [0.14, 0.99], [0.2, 0.98]], np.float32)
    >>> idx = np.array([[1, 2], [0, 2], [1, 0], [4, 5], [3, 5], [4, 3]])
    >>> sims = np.take_along_axis(x @ x.T, idx, axis=1)
    >>> r = pseudolabel(x, np.array([0, -1, -1, 1, -1, -1]), 2, (sims, idx))
    >>> r.label.tolist()
    [0, 0, 0, 1, 1, 1]
    """
    labels, ctx = _validated(embeddings, labels, n_classes, graph, prototypes, text_prototypes, options)
    if calibration is not None:
        _check_calibration(calibration, labels, n_classes, options)
    if accept_rows is not None:
        accept_rows = np.asarray(accept_rows, dtype=np.int64)
        if accept_rows.size and (accept_rows.min() < 0 or accept_rows.max() >= labels.shape[0] or (labels[accept_rows] >= 0).any()):
            raise BadInputError("'accept_rows' must be rows of unlabeled samples.")
    return _pseudolabel_impl(labels, ctx, options, calibration, accept_rows, unlabeled_by_fold)


def _check_calibration(cal, labels, n_classes: int, options: PseudolabelOptions) -> None:
    if not isinstance(cal, Calibration):
        raise BadInputError(f"'calibration' must be a Calibration from heldout_calibration. Got {type(cal).__name__} instead.")
    if set(cal.weights) != set(_component_weights(options)) or cal.probs.shape != (cal.rows.size, n_classes):
        raise BadInputError("'calibration' was made with other options or classes; compute it with the same options.")
    if cal.rows.size and (cal.rows.max() >= labels.shape[0] or (labels[cal.rows] < 0).any()):
        raise BadInputError("'calibration' holds rows that are not labeled here; compute it with the same labels.")


def heldout_calibration(
    embeddings,
    labels,
    n_classes: int,
    graph: tuple[np.ndarray, np.ndarray],
    prototypes=None,
    *,
    text_prototypes=None,
    options: PseudolabelOptions = PseudolabelOptions(),
) -> Calibration:
    """Held-out calibration over every fold, with every labeled sample's out-of-fold probabilities.

    Step 2 of :func:`pseudolabel` alone.

    Every fold is scored (``options.calibration_samples`` is ignored), and nothing else: this
    is what confident learning on the seeds needs (:func:`labelkit.seeds.clean_seeds`).

    Parameters
    ----------
    embeddings, labels, n_classes, graph, prototypes, text_prototypes, options
        As for :func:`pseudolabel`.

    Returns
    -------
    Calibration
        ``rows``: the labeled rows scored held out (all of them when ``options.n_folds >= 2``
        and at least two are labeled; none otherwise); ``probs``: their calibrated
        out-of-fold probabilities; the temperatures, which :func:`pseudolabel` can reuse.

    References
    ----------
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.

    Examples
    --------
    >>> x = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0, 1], [0.14, 0.99], [0.2, 0.98]], np.float32)
    >>> idx = np.array([[1, 2], [0, 2], [1, 0], [4, 5], [3, 5], [4, 3]])
    >>> sims = np.take_along_axis(x @ x.T, idx, axis=1)
    >>> c = heldout_calibration(x, np.array([0, 0, -1, 1, 1, -1]), 2, (sims, idx), options=PseudolabelOptions(n_folds=2))
    >>> c.rows.tolist(), c.probs.argmax(axis=1).tolist()
    ([0, 1, 3, 4], [0, 0, 1, 1])
    """
    labels, ctx = _validated(embeddings, labels, n_classes, graph, prototypes, text_prototypes, options)
    return _calibration(labels, ctx, _spreader(ctx, options), options, max_samples=None)


def _spreader(ctx: _Context, opts: PseudolabelOptions) -> Spreader | None:
    needs = opts.method in (ScoreMethod.PROPAGATION, ScoreMethod.ENSEMBLE) and (
        "propagation" in _component_weights(opts) or "prototype" in _component_weights(opts))
    return _graph(ctx, opts) if needs else None


def _calibration(labels, ctx: _Context, spreader, opts: PseudolabelOptions, *, max_samples, extra_rows=None) -> Calibration:
    def score(train, rows):
        return _components(train, ctx, spreader, opts, rows, heldout=True)

    return calibrate(labels, score, _component_weights(opts), ctx.n_classes, n_folds=opts.n_folds, seed=opts.seed,
                     max_samples=max_samples, alternatives=_probe_alternatives(opts), extra_rows=extra_rows)


def _pseudolabel_impl(labels, ctx: _Context, opts: PseudolabelOptions, cal: Calibration | None = None, accept_rows=None,
                      unlabeled_by_fold: bool = False) -> PseudolabelResult:
    spreader = _spreader(ctx, opts)
    unl = np.flatnonzero(labels < 0)
    if cal is None or unlabeled_by_fold:
        cal = _calibration(labels, ctx, spreader, opts, max_samples=opts.calibration_samples, extra_rows=unl if unlabeled_by_fold else None)
    unused = frozenset(n for n, w in cal.weights.items() if w == 0 and n == "probe")  # the folds gave it no weight
    probs = _calibrated_scores(labels, ctx, spreader, opts, cal, without=unused)
    probs[cal.rows] = cal.probs
    heldout = np.zeros(labels.shape[0], dtype=bool)
    heldout[cal.rows] = True
    by_fold = np.zeros(labels.shape[0], dtype=bool)
    if cal.extra_probs is not None:  # scored exactly as a held-out row is: no prior correction either
        probs[cal.extra_rows] = cal.extra_probs
        by_fold[cal.extra_rows] = True
    if opts.prior_correction and unl.size and not by_fold.any():
        uniform = np.full(ctx.n_classes, 1.0 / ctx.n_classes)
        probs[unl], priors = _em_prior_impl(probs[unl], uniform, 100, 1e-6)
    else:
        priors = _column_means(probs, unl) if unl.size else np.full(ctx.n_classes, np.nan)
    label = np.empty(labels.shape[0], dtype=np.int64)
    conf = np.empty(labels.shape[0], dtype=probs.dtype)
    for lo in range(0, labels.shape[0], ROW_CHUNK):
        label[lo : lo + ROW_CHUNK] = probs[lo : lo + ROW_CHUNK].argmax(axis=1)
        conf[lo : lo + ROW_CHUNK] = np.take_along_axis(probs[lo : lo + ROW_CHUNK], label[lo : lo + ROW_CHUNK, None], axis=1)[:, 0]
    margins = margin(probs)
    accepted = np.zeros(labels.shape[0], dtype=bool)
    among = unl if accept_rows is None else accept_rows
    if among.size:  # the rule reads confidence, class and margin: no copy of probs[among]
        accepted[among] = accept_scores(conf[among], label[among], margins[among], ctx.n_classes, opts.threshold, opts.threshold_value)
    top_labels, top_probs = _soft_labels_impl(probs, opts.top_k, opts.sharpen)
    return PseudolabelResult(
        probs=probs,
        label=label,
        confidence=conf,
        margin=margins,
        accepted=accepted,
        top_labels=top_labels,
        top_probs=top_probs,
        heldout=heldout,
        fold_scored=by_fold,
        temperature=float(next(iter(cal.temperatures.values())) if len(cal.temperatures) == 1 else cal.temperature),
        ece=cal.ece,
        ece_uncalibrated=cal.ece_uncalibrated,
        n_calibration=cal.n_calibration,
        priors=priors,
        coverage=float(accepted.sum() / among.size) if among.size else float("nan"),
        class_counts=np.bincount(label[accepted], minlength=ctx.n_classes),
        confidence_counts=np.histogram(conf[unl], bins=10, range=(0.0, 1.0))[0],
        method=opts.method.value,
        weights=dict(cal.weights),
    )


def _column_means(probs, rows) -> np.ndarray:
    total = np.zeros(probs.shape[1])
    for lo in range(0, rows.size, ROW_CHUNK):
        total += probs[rows[lo : lo + ROW_CHUNK]].sum(axis=0, dtype=np.float64)
    return total / rows.size
