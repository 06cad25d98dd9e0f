"""Class prototypes from normalised embeddings: means, sub-prototypes, cleaning, text fusion,
transductive refinement and diagnostics. Numpy in, numpy out.

A prototype set is a :class:`Prototypes`: P unit vectors, each with its class, its support (the
number of labeled samples behind it) and its kind (``"visual"``, ``"text"`` or ``"fused"``). A
class may have several prototypes, or none (it then scores ``-inf`` in :func:`class_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelkit import knn
from labelkit._progress import NULL, Progress
from labelkit._validation import check_embeddings, check_labels, l2_normalize, unit_embeddings
from labelkit.config import defaults
from labelkit.errors import BadInputError

KINDS = ("visual", "text", "fused")
_CHUNK = 16_384  # rows per block when scoring samples against prototypes
_MAD_SCALE = 1.4826  # MAD -> standard deviation under a normal model
_MAD_FLOOR = 0.01  # chord distance; keeps a class of near-identical points from cutting noise
_MIN_CLASS_FOR_CUT = 5  # robust statistics need a few points
_STAGE = defaults("prototype")  # n_per_class, k, min_agreement, text_weight and the refinement's default to the prototype stage's


@dataclass(frozen=True, eq=False)
class Prototypes:
    """A set of class prototypes.

    Attributes
    ----------
    vectors : ndarray of shape (n_prototypes, dim), float32
        Unit-norm prototype vectors.
    classes : ndarray of shape (n_prototypes,), int64
        Class of each prototype, in ``[0, n_classes)``; prototypes are grouped by class.
    support : ndarray of shape (n_prototypes,), int64
        Labeled samples behind each prototype (0 for text-only prototypes).
    kind : ndarray of shape (n_prototypes,), str
        ``"visual"``, ``"text"`` or ``"fused"``.
    n_classes : int
        Number of classes K (some may have no prototype).
    """

    vectors: np.ndarray
    classes: np.ndarray
    support: np.ndarray
    kind: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise BadInputError(f"'vectors' must be 2-D (n_prototypes, dim). Got shape {vectors.shape} instead.")
        p = len(vectors)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        support = np.asarray(self.support, dtype=np.int64).reshape(-1)
        kind = np.asarray(self.kind, dtype="<U6").reshape(-1)
        if not (len(classes) == len(support) == len(kind) == p):
            raise BadInputError(
                f"'classes', 'support' and 'kind' must have {p} entries like 'vectors'. "
                f"Got {len(classes)}, {len(support)} and {len(kind)} instead."
            )
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, (int, np.integer)) or self.n_classes < 1:
            raise BadInputError(f"'n_classes' must be a positive integer. Got {self.n_classes!r} instead.")
        if p and (classes.min() < 0 or classes.max() >= self.n_classes):
            raise BadInputError(f"'classes' must lie in [0, {self.n_classes}). Got range [{classes.min()}, {classes.max()}] instead.")
        bad = sorted(set(kind.tolist()) - set(KINDS))
        if bad:
            raise BadInputError(f"'kind' must be one of {', '.join(KINDS)}. Got {bad[0]!r} instead.")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "support", support)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "n_classes", int(self.n_classes))

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def index_within_class(self) -> np.ndarray:
        """(n_prototypes,) int64: 0, 1, ... numbering the prototypes of each class in order."""
        out = np.zeros(len(self), np.int64)
        for c in np.unique(self.classes):
            rows = np.flatnonzero(self.classes == c)
            out[rows] = np.arange(len(rows))
        return out

    @classmethod
    def empty(cls, n_classes: int, dim: int) -> Prototypes:
        """No prototype for any class (e.g. before zero-shot :func:`fuse_text`)."""
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, "<U6"), n_classes)


def _check_protos(protos) -> Prototypes:
    if not isinstance(protos, Prototypes):
        raise BadInputError(f"'protos' must be a Prototypes. Got {type(protos).__name__} instead.")
    return protos


def _check_pos_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadInputError(f"'{name}' must be a positive integer. Got {value!r} instead.")
    return int(value)


def _class_groups(y: np.ndarray):
    """Yield ``(class, rows)`` for each labeled class present, in class order (one sort, O(N log N))."""
    rows = np.flatnonzero(y >= 0)
    rows = rows[np.argsort(y[rows], kind="stable")]
    if len(rows) == 0:
        return
    cuts = np.flatnonzero(np.diff(y[rows])) + 1
    for group in np.split(rows, cuts):
        yield int(y[group[0]]), group


def _check_same_len(embeddings: np.ndarray, labels: np.ndarray) -> None:
    if len(embeddings) != len(labels):
        raise BadInputError(f"'labels' must have {len(embeddings)} entries like 'embeddings'. Got {len(labels)} instead.")


# ----------------------------------------------------------------------------------------------
# prototypes from labeled samples


def class_prototypes(
    embeddings,
    labels,
    n_classes: int,
    *,
    n_per_class: int = _STAGE.n_per_class,
    n_iter: int = 20,
    seed: int = 0,
) -> Prototypes:
    """Visual prototypes: the re-normalised class mean, or k-means sub-prototypes per class.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Rows are L2-normalised first.
    labels : ndarray of shape (n_samples,), int
        ``-1`` = unlabeled (ignored). To use only clean samples, pass
        ``np.where(select_clean(...), labels, -1)``.
    n_classes : int
    n_per_class : int, default: the prototype stage's ``n_per_class``
        Prototypes per class. Above 1, spherical k-means inside each class splits it; a class
        with fewer samples than ``n_per_class`` gets one prototype per sample at most, and
        clusters left empty are dropped.
    n_iter : int, default=20
        k-means iterations.
    seed : int, default=0

    Returns
    -------
    Prototypes
        Grouped by class; within a class, by decreasing support. Classes without labeled
        samples have no prototype.

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    Lu et al., "Learning with Mixture of Prototypes for Out-of-Distribution Detection", ICLR 2024.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    >>> p = class_prototypes(x, np.array([0, 1, 1]), 2)
    >>> p.vectors.tolist(), p.support.tolist()
    ([[1.0, 0.0], [0.0, 1.0]], [1, 2])
    """
    x = unit_embeddings(embeddings)
    n_classes = _check_pos_int(n_classes, "n_classes")
    y = check_labels(labels, n_classes=n_classes)
    _check_same_len(x, y)
    n_per_class = _check_pos_int(n_per_class, "n_per_class")
    n_iter = _check_pos_int(n_iter, "n_iter")
    return _class_prototypes_impl(x, y, n_classes, n_per_class=n_per_class, n_iter=n_iter, seed=int(seed))


def _class_prototypes_impl(x, y, n_classes, *, n_per_class, n_iter, seed) -> Prototypes:
    vectors, classes, support = [], [], []
    for c, rows in _class_groups(y):
        xc = x[rows]
        m = min(n_per_class, len(xc))
        if m == 1:
            groups = [xc]
        else:
            # sub-prototypes: spherical k-means inside the class (mixture of prototypes)
            _, assign = knn._kmeans_impl(np.ascontiguousarray(xc), m, n_iter=n_iter, seed=seed, spherical=True)
            sizes = np.bincount(assign, minlength=m)
            order = sorted((j for j in range(m) if sizes[j] > 0), key=lambda j: (-sizes[j], j))
            groups = [xc[assign == j] for j in order]
        for g in groups:
            vectors.append(g.mean(axis=0))
            classes.append(c)
            support.append(len(g))
    dim = x.shape[1]
    if not vectors:
        return Prototypes.empty(n_classes, dim)
    return Prototypes(
        l2_normalize(np.stack(vectors)),
        np.array(classes, np.int64),
        np.array(support, np.int64),
        np.full(len(vectors), "visual", "<U6"),
        n_classes,
    )


# ----------------------------------------------------------------------------------------------
# clean-sample selection


def knn_agreement(labels, idx, *, sims=None) -> np.ndarray:
    """Fraction of each labeled sample's labeled neighbours that share its label.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,), int
        ``-1`` = unlabeled.
    idx : ndarray of shape (n_samples, k), int
        Neighbour rows (``-1`` = missing); unlabeled neighbours are ignored.
    sims : ndarray of shape (n_samples, k) or None, default=None
        When given, neighbours are weighted by ``max(sim, 0)`` (uniformly if all are 0).

    Returns
    -------
    ndarray of shape (n_samples,), float64
        Agreement in [0, 1]; NaN for unlabeled samples and for those without a labeled neighbour.

    References
    ----------
    Zhu, Dong, Liu, "Detecting Corrupted Labels Without Training a Model to Predict", ICML 2022.

    Examples
    --------
    >>> knn_agreement(np.array([0, 0, 1]), np.array([[1], [2], [0]])).tolist()
    [1.0, 0.0, 0.0]
    """
    y = check_labels(labels)
    nbr = np.asarray(idx)
    if nbr.ndim != 2 or len(nbr) != len(y):
        raise BadInputError(f"'idx' must have shape ({len(y)}, k). Got {nbr.shape} instead.")
    if not np.issubdtype(nbr.dtype, np.integer):
        raise BadInputError(f"'idx' must be integers. Got dtype {nbr.dtype} instead.")
    if nbr.size and (nbr.min() < -1 or nbr.max() >= len(y)):
        raise BadInputError(f"'idx' must lie in [-1, {len(y)}). Got range [{nbr.min()}, {nbr.max()}] instead.")
    w = None
    if sims is not None:
        w = np.asarray(sims, dtype=np.float64)
        if w.shape != nbr.shape:
            raise BadInputError(f"'sims' must have shape {nbr.shape} like 'idx'. Got {w.shape} instead.")
    return _knn_agreement_impl(y, nbr.astype(np.int64, copy=False), w)


def _knn_agreement_impl(y, idx, sims) -> np.ndarray:
    ny = np.where(idx >= 0, y[np.maximum(idx, 0)], -1)  # neighbour labels, -1 = unlabeled/missing
    valid = (ny >= 0) & (y[:, None] >= 0)
    if sims is None:
        w = valid.astype(np.float64)
    else:
        w = np.where(valid, np.clip(np.nan_to_num(sims, neginf=0.0), 0, None), 0.0)
        zero = (w.sum(axis=1) == 0) & valid.any(axis=1)
        w[zero] = valid[zero]  # all similarities <= 0: fall back to a plain count
    total = w.sum(axis=1)
    agree = (w * (ny == y[:, None])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, agree / total, np.nan)


def select_clean(
    embeddings,
    labels,
    *,
    sims=None,
    idx=None,
    k: int = _STAGE.k,
    min_agreement: float = _STAGE.min_agreement,
    max_mad: float | None = 3.0,
    progress: Progress = NULL,
) -> np.ndarray:
    """Labeled samples clean enough to build prototypes from.

    A labeled sample is dropped when (1) the labels of its nearest labeled neighbours agree with
    its own less than ``min_agreement`` (similarity-weighted when ``sims`` is given), or (2) its
    distance to its class mean (over the samples kept by (1); chord distance
    ``||x - m|| = sqrt(2 - 2 cos)``) exceeds the class median by more than ``max_mad`` scaled MADs
    (classes with at least 5 samples). A class is never emptied:
    if every sample of a class is dropped, its samples with the highest agreement are restored.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples,), int
        ``-1`` = unlabeled (never selected).
    sims, idx : ndarray of shape (n_samples, k') or None, default=None
        A kNN graph over the rows of ``embeddings`` (as from :func:`labelkit.knn.knn_graph`),
        ideally over the labeled rows only. When None, the ``k``-NN graph of the labeled rows is
        computed here.
    k : int, default: the prototype stage's ``k``
        Neighbours when the graph is computed here.
    min_agreement : float, default: the prototype stage's ``min_agreement``
        In [0, 1]. Samples without any labeled neighbour are not judged by this test.
    max_mad : float or None, default=3.0
        Distance cut in MADs (x1.4826); None disables it.
    progress : Progress, optional
        Bars for the kNN graph computed here (minutes at a million labeled rows).

    Returns
    -------
    ndarray of shape (n_samples,), bool
        True for the labeled samples kept.

    References
    ----------
    Qin et al., "CAPro: Webly Supervised Learning with Cross-Modality Aligned Prototypes",
    NeurIPS 2023 (kNN-agreement cleaning before averaging). Hampel, "The influence curve and
    its role in robust estimation", JASA 1974 (median/MAD cut).

    Examples
    --------
    >>> x = np.array([[1, 0], [1, 0.1], [1, -0.1], [1, 0.2], [0, 1], [0.1, 1], [-0.1, 1], [1, 0.05]])
    >>> select_clean(x, np.array([0, 0, 0, 0, 1, 1, 1, 1]), k=3).tolist()
    [True, True, True, True, True, True, True, False]
    """
    x = unit_embeddings(embeddings)
    y = check_labels(labels)
    _check_same_len(x, y)
    k = _check_pos_int(k, "k")
    if not 0 <= min_agreement <= 1:
        raise BadInputError(f"'min_agreement' must be in [0, 1]. Got {min_agreement!r} instead.")
    if max_mad is not None and not max_mad > 0:
        raise BadInputError(f"'max_mad' must be > 0 or None. Got {max_mad!r} instead.")
    if idx is None:
        if sims is not None:
            raise BadInputError("'sims' was given without 'idx'; pass both (a kNN graph) or neither.")
        labeled = np.flatnonzero(y >= 0)
        s_l, i_l = knn.knn_graph(x[labeled], k, progress=progress) if len(labeled) else (np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        agreement = np.full(len(y), np.nan)
        agreement[labeled] = _knn_agreement_impl(y[labeled], i_l, s_l.astype(np.float64))
    else:
        agreement = knn_agreement(y, idx, sims=sims)
    return _select_clean_impl(x, y, agreement, min_agreement=min_agreement, max_mad=max_mad)


def _select_clean_impl(x, y, agreement, *, min_agreement, max_mad) -> np.ndarray:
    keep = (y >= 0) & (np.isnan(agreement) | (agreement >= min_agreement))
    for _, members in _class_groups(y):
        kept = members[keep[members]]
        if max_mad is not None and len(kept) >= _MIN_CLASS_FOR_CUT:
            center = l2_normalize(x[kept].mean(axis=0))
            # chord distance sqrt(2 - 2 cos): far less skewed than 1 - cos, so the MAD cut is fair
            dist = np.sqrt(np.maximum(2.0 - 2.0 * (x[kept] @ center), 0.0))
            med = np.median(dist)
            mad = max(np.median(np.abs(dist - med)), _MAD_FLOOR)
            keep[kept[dist > med + max_mad * _MAD_SCALE * mad]] = False
        if not keep[members].any():
            # never empty a class: restore its most neighbour-consistent samples
            score = np.nan_to_num(agreement[members], nan=1.0)
            keep[members[score == score.max()]] = True
    return keep


# ----------------------------------------------------------------------------------------------
# text prototypes


def fuse_text(protos, text_embeddings, *, weight: float = _STAGE.text_weight) -> Prototypes:
    """Blend each prototype with its class's text embedding; add text prototypes for classes
    that have none (with no visual prototypes at all this is zero-shot).

    ``v_fused = normalize((1 - weight) * v + weight * t_c)``. With ``weight=0`` visual prototypes are
    unchanged; with ``weight=1`` each class gets its text embedding alone (one prototype, with
    the class's total support).

    Parameters
    ----------
    protos : Prototypes
        E.g. from :func:`class_prototypes`, or ``Prototypes.empty(n_classes, dim)``.
    text_embeddings : ndarray of shape (n_classes, dim)
        One class-name embedding per class (from a text tower in the same space).
    weight : float, default: the prototype stage's ``text_weight``
        Text weight in [0, 1].

    Returns
    -------
    Prototypes
        Kinds: ``"fused"`` for blended prototypes, ``"text"`` for text-only ones.

    References
    ----------
    Qin et al., "CAPro: Webly Supervised Learning with Cross-Modality Aligned Prototypes",
    NeurIPS 2023. Ali et al., "DPA: Dual Prototypes Alignment for Unsupervised Adaptation of
    Vision-Language Models", WACV 2025.

    Examples
    --------
    >>> p = Prototypes(np.array([[1.0, 0.0]]), np.array([0]), np.array([3]), np.array(["visual"]), 2)
    >>> f = fuse_text(p, np.array([[0.0, 1.0], [-1.0, 0.0]]), weight=0.5)
    >>> f.vectors.astype(float).round(3).tolist(), f.kind.tolist(), f.support.tolist()
    ([[0.707, 0.707], [-1.0, 0.0]], ['fused', 'text'], [3, 0])
    """
    protos = _check_protos(protos)
    t = check_embeddings(text_embeddings, name="text_embeddings")
    if t.shape != (protos.n_classes, protos.dim):
        raise BadInputError(
            f"'text_embeddings' must have shape ({protos.n_classes}, {protos.dim}) (one row per class). Got {t.shape} instead."
        )
    if not 0 <= weight <= 1:
        raise BadInputError(f"'weight' must be in [0, 1]. Got {weight!r} instead.")
    return _fuse_text_impl(protos, l2_normalize(t), float(weight))


def text_prototypes(text_embeddings) -> Prototypes:
    """Zero-shot prototypes: one text prototype per class (row ``c`` is class ``c``).

    Parameters
    ----------
    text_embeddings : ndarray of shape (n_classes, dim)

    Returns
    -------
    Prototypes
        Kind ``"text"``, support 0.

    References
    ----------
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    ICML 2021 (zero-shot classification with class-name embeddings).

    Examples
    --------
    >>> text_prototypes(np.array([[2.0, 0.0], [0.0, 1.0]])).vectors.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    t = check_embeddings(text_embeddings, name="text_embeddings")
    if len(t) == 0:
        raise BadInputError("'text_embeddings' must have one row per class. Got 0 rows instead.")
    return _fuse_text_impl(Prototypes.empty(len(t), t.shape[1]), l2_normalize(t), 1.0)


def _fuse_text_impl(protos: Prototypes, t: np.ndarray, weight: float) -> Prototypes:
    vectors, classes, support, kind = [], [], [], []
    for c in range(protos.n_classes):
        rows = np.flatnonzero(protos.classes == c)
        if len(rows) == 0 or weight == 1.0:
            vectors.append(t[c])
            classes.append(c)
            support.append(int(protos.support[rows].sum()))
            kind.append("text")
            continue
        for r in rows:
            if weight == 0.0:
                vectors.append(protos.vectors[r])
                kind.append(protos.kind[r])
            else:
                vectors.append(l2_normalize((1 - weight) * protos.vectors[r] + weight * t[c]))
                kind.append("text" if protos.kind[r] == "text" else "fused")
            classes.append(c)
            support.append(int(protos.support[r]))
    return Prototypes(np.stack(vectors), np.array(classes), np.array(support), np.array(kind, "<U6"), protos.n_classes)


# ----------------------------------------------------------------------------------------------
# transductive refinement


def refine_transductive(
    protos,
    embeddings_unlabeled,
    *,
    temperature: float = _STAGE.refine_temperature,
    min_confidence: float = _STAGE.min_confidence,
    max_iter: int = _STAGE.max_iter,
    tol: float = 1e-4,
    rows=None,
) -> tuple[Prototypes, int]:
    """Soft k-means refinement of the prototypes with confident unlabeled samples.

    Each iteration assigns unlabeled samples softly, ``r_jp = softmax_p(cos(x_j, v_p) / T)``,
    keeps the samples whose best class ``c_j`` (``p_jc = sum of r_jp over the class's
    prototypes``) reaches ``min_confidence``, and sets
    ``v_p = normalize(max(s_p, 1) v_p^(0) + sum_{j confident, c_j = class(p)} r_jp x_j)``: the
    initial prototype counted once per labeled sample behind it (its support ``s_p``: labeled
    samples keep weight 1 and their fixed assignment; a text-only prototype counts as one
    sample) plus the confident unlabeled samples of its class. A text-only prototype is thus
    pulled to its unlabeled cluster and becomes ``"fused"``; a prototype that receives nothing
    keeps its vector. Stops when the largest move ``max_p ||v_p^(t+1) - v_p^(t)||`` is below
    ``tol``, or after ``max_iter`` iterations.

    Parameters
    ----------
    protos : Prototypes
    embeddings_unlabeled : ndarray of shape (n_unlabeled, dim)
    temperature : float, default: the prototype stage's ``refine_temperature``
        Softmax temperature T over cosine similarities (> 0).
    min_confidence : float, default: the prototype stage's ``min_confidence``
        In [0, 1]; samples below it do not move the prototypes.
    max_iter : int, default: the prototype stage's ``max_iter``
    tol : float, default=1e-4
    rows : ndarray of int, optional
        Use only these rows of ``embeddings_unlabeled`` (e.g. the unlabeled rows of every
        embedding), read a block at a time: no gathered copy of them (9 GB at 10M x 512 float16).

    Returns
    -------
    protos : Prototypes
        Refined vectors; classes and support unchanged.
    n_iter : int
        Iterations run (0 when there are no unlabeled samples or prototypes).

    References
    ----------
    Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018 (soft
    k-means refinement of prototypes). Boudiaf et al., "Transductive Information Maximization
    for Few-Shot Learning", NeurIPS 2020; Lichtenstein et al., "TAFSSL", ECCV 2020.

    Examples
    --------
    >>> p = Prototypes(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), np.array([1, 1]), np.array(["visual"] * 2), 2)
    >>> u = np.array([[0.8, 0.6]] * 4, dtype=np.float32)
    >>> q, n_iter = refine_transductive(p, u, temperature=0.02)
    >>> bool(q.vectors[0, 1] > 0.3), q.vectors[1].astype(float).round(3).tolist()
    (True, [0.0, 1.0])
    """
    protos = _check_protos(protos)
    u = unit_embeddings(embeddings_unlabeled, name="embeddings_unlabeled")  # float16 unit rows stay as they are; blocks are float32
    rows = np.arange(len(u)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(u)):
        raise BadInputError(f"'rows' must index the {len(u)} rows of 'embeddings_unlabeled'.")
    if u.shape[1] != protos.dim:
        raise BadInputError(f"'embeddings_unlabeled' must have dim {protos.dim} like the prototypes. Got {u.shape[1]} instead.")
    if not temperature > 0:
        raise BadInputError(f"'temperature' must be > 0. Got {temperature!r} instead.")
    if not 0 <= min_confidence <= 1:
        raise BadInputError(f"'min_confidence' must be in [0, 1]. Got {min_confidence!r} instead.")
    max_iter = _check_pos_int(max_iter, "max_iter")
    if not tol >= 0:
        raise BadInputError(f"'tol' must be >= 0. Got {tol!r} instead.")
    return _refine_impl(
        protos,
        u,
        rows,
        temperature=float(temperature),
        min_confidence=float(min_confidence),
        max_iter=max_iter,
        tol=float(tol),
    )


def _class_onehot(protos: Prototypes) -> np.ndarray:
    """(P, K) float32 membership of prototypes in classes."""
    onehot = np.zeros((len(protos), protos.n_classes), np.float32)
    onehot[np.arange(len(protos)), protos.classes] = 1
    return onehot


def _refine_impl(protos, u, rows, *, temperature, min_confidence, max_iter, tol):
    if len(rows) == 0 or len(protos) == 0:
        return protos, 0
    # labeled samples: max(s_p, 1) copies of v_p^(0) (a text prototype counts as one sample)
    anchor = np.maximum(protos.support, 1).astype(np.float64)[:, None] * protos.vectors
    onehot = _class_onehot(protos)
    v = protos.vectors
    received = np.zeros(len(protos))
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        mass = np.zeros_like(anchor)
        received = np.zeros(len(protos))
        for s in range(0, len(rows), _CHUNK):
            xb = u[rows[s : s + _CHUNK]].astype(np.float32, copy=False)
            logits = (xb @ v.T) / temperature
            logits -= logits.max(axis=1, keepdims=True)
            r = np.exp(logits)
            r /= r.sum(axis=1, keepdims=True)
            class_p = r @ onehot
            confident = class_p.max(axis=1) >= min_confidence
            # a confident sample moves only the prototypes of its predicted class
            r = r[confident] * onehot[:, class_p[confident].argmax(axis=1)].T
            mass += r.T.astype(np.float64) @ xb[confident]
            received += r.sum(axis=0)
        total = anchor + mass
        norms = np.linalg.norm(total, axis=1)
        new_v = np.where(norms[:, None] > 0, total / np.maximum(norms, 1e-12)[:, None], v).astype(np.float32)
        shift = float(np.linalg.norm(new_v - v, axis=1).max())
        v = new_v
        if shift < tol:
            break
    kind = np.where((protos.kind == "text") & (received > 0), "fused", protos.kind)
    return Prototypes(v, protos.classes, protos.support, kind, protos.n_classes), n_iter


# ----------------------------------------------------------------------------------------------
# scoring and diagnostics


def class_scores(embeddings, protos, n_classes: int | None = None) -> np.ndarray:
    """Cosine similarity of each sample to each class: the max over the class's prototypes.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    protos : Prototypes
    n_classes : int or None, default=None
        Columns of the result; None uses ``protos.n_classes``.

    Returns
    -------
    ndarray of shape (n_samples, n_classes), float32
        ``-inf`` for classes without a prototype (they get probability 0 under a softmax).

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

    Examples
    --------
    >>> p = Prototypes(np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([1, 1]), np.array([2, 2]), np.array(["visual"] * 2), 2)
    >>> class_scores(np.array([[0.0, 1.0]]), p).tolist()
    [[-inf, 0.800000011920929]]
    """
    protos = _check_protos(protos)
    x = unit_embeddings(embeddings)
    if x.shape[1] != protos.dim:
        raise BadInputError(f"'embeddings' must have dim {protos.dim} like the prototypes. Got {x.shape[1]} instead.")
    if n_classes is None:
        n_classes = protos.n_classes
    n_classes = _check_pos_int(n_classes, "n_classes")
    if n_classes < protos.n_classes:
        raise BadInputError(f"'n_classes' must be >= the prototypes' n_classes={protos.n_classes}. Got {n_classes} instead.")
    return _class_scores_impl(x, protos, n_classes)


def _class_scores_impl(x, protos, n_classes) -> np.ndarray:
    out = np.full((len(x), n_classes), -np.inf, np.float32)
    if len(protos) == 0:
        return out
    order = np.argsort(protos.classes, kind="stable")
    cls = protos.classes[order]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    present = cls[starts]
    vt = np.ascontiguousarray(protos.vectors[order].T)
    for s in range(0, len(x), _CHUNK):
        sims = x[s : s + _CHUNK] @ vt
        out[s : s + _CHUNK, present] = np.maximum.reduceat(sims, starts, axis=1)
    return out


def class_spread(embeddings, labels, protos) -> np.ndarray:
    """Per-class spread: mean cosine distance of a class's labeled samples to its own prototype.

    The distance of a sample is ``1 - max cos`` over its class's prototypes.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples,), int
        ``-1`` = unlabeled (ignored).
    protos : Prototypes

    Returns
    -------
    ndarray of shape (n_classes,), float64
        NaN for classes with no labeled sample or no prototype.

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

    Examples
    --------
    >>> p = Prototypes(np.array([[1.0, 0.0]]), np.array([0]), np.array([2]), np.array(["visual"]), 2)
    >>> class_spread(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), p).tolist()
    [0.5, nan]
    """
    protos = _check_protos(protos)
    x = unit_embeddings(embeddings)
    y = check_labels(labels, n_classes=protos.n_classes)
    _check_same_len(x, y)
    if x.shape[1] != protos.dim:
        raise BadInputError(f"'embeddings' must have dim {protos.dim} like the prototypes. Got {x.shape[1]} instead.")
    return _class_spread_impl(x, y, protos)


def _class_spread_impl(x, y, protos) -> np.ndarray:
    total = np.zeros(protos.n_classes)
    count = np.zeros(protos.n_classes)
    rows = np.flatnonzero(y >= 0)
    for s in range(0, len(rows), _CHUNK):
        r = rows[s : s + _CHUNK]
        sims = x[r] @ protos.vectors.T
        own = np.where(protos.classes[None, :] == y[r][:, None], sims, -np.inf).max(axis=1)
        ok = np.isfinite(own)
        np.add.at(total, y[r][ok], 1.0 - own[ok])
        np.add.at(count, y[r][ok], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def confusable_pairs(protos, top: int = 5) -> list[tuple[int, int, float]]:
    """The class pairs whose prototypes are most similar (most likely to be confused).

    Parameters
    ----------
    protos : Prototypes
    top : int, default=5
        Pairs returned (fewer if there are fewer pairs of classes with prototypes).

    Returns
    -------
    list of (class_a, class_b, cosine)
        ``class_a < class_b``; cosine is the highest between any prototype of ``a`` and any of
        ``b``; sorted by decreasing cosine.

    References
    ----------
    Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

    Examples
    --------
    >>> v = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    >>> p = Prototypes(v, np.array([0, 1, 2]), np.array([1, 1, 1]), np.array(["visual"] * 3), 3)
    >>> [(a, b, round(c, 2)) for a, b, c in confusable_pairs(p, top=2)]
    [(0, 1, 0.8), (1, 2, 0.6)]
    """
    protos = _check_protos(protos)
    top = _check_pos_int(top, "top")
    return _confusable_pairs_impl(protos, top)


def _confusable_pairs_impl(protos, top):
    if len(protos) == 0:
        return []
    order = np.argsort(protos.classes, kind="stable")
    cls = protos.classes[order]
    starts = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    present = cls[starts]
    v = protos.vectors[order]
    sims = v @ v.T
    # class-by-class max over their prototypes
    sims = np.maximum.reduceat(np.maximum.reduceat(sims, starts, axis=0), starts, axis=1)
    a, b = np.triu_indices(len(present), k=1)
    vals = sims[a, b]
    best = np.argsort(-vals, kind="stable")[:top]
    return [(int(present[a[i]]), int(present[b[i]]), float(vals[i])) for i in best]


__all__ = [
    "KINDS",
    "Prototypes",
    "class_prototypes",
    "class_scores",
    "class_spread",
    "confusable_pairs",
    "fuse_text",
    "knn_agreement",
    "refine_transductive",
    "select_clean",
    "text_prototypes",
]
