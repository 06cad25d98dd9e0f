"""Label-issue detection by confident learning, in memory or streamed.

Numpy in, numpy out. Confident learning follows Northcutt, Jiang & Chuang (JAIR 2021) and gives
the same masks, counts and orderings as cleanlab 2.9 on the same inputs (the test oracle; it is
never imported here). The core makes one pass over the rows for the per-class thresholds and
one for the confident joint, chunk by chunk, so its memory is O(N) plus the rows the model
disagrees with, never another (N, K) array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import numpy as np

from labelkit._validation import check_labels, check_probs
from labelkit.errors import BadInputError

__all__ = [
    "FilterMethod", "QualityScore", "LabelIssues", "NoiseEstimates",
    "confident_thresholds", "confident_joint", "estimate_joint", "estimate_noise_matrices",
    "num_label_issues", "label_quality_scores", "find_label_issues", "rank_label_issues",
    "detect_label_issues", "detect_label_issues_streaming", "confident_learning", "ConfidentLearning",
]

_FP = 1e-6  # fuzzy comparison used by the reference implementation
_THRESHOLD_FLOOR = 2e-6  # t_j is clipped from below by this
_NO_SAMPLES = 2  # t_j of a class with no samples: no probability reaches it
_TINY = 1e-100
_CHUNK_BYTES = 4 << 20  # rows per in-memory chunk: ~4 MB of probabilities

ChunkSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


class FilterMethod(str, Enum):
    """How confident learning turns the confident joint into a set of issues."""

    PRUNE_BY_NOISE_RATE = "prune_by_noise_rate"  # per (y, j): the C[y][j] largest p_j - p_y
    PRUNE_BY_CLASS = "prune_by_class"  # per y: the n_y - C[y][y] lowest p_y
    BOTH = "both"  # both of the above
    CONFIDENT_LEARNING = "confident_learning"  # the off-diagonal entries of C
    PREDICTED_NEQ_GIVEN = "predicted_neq_given"  # argmax p != y
    LOW_SELF_CONFIDENCE = "low_self_confidence"  # the num_label_issues lowest p_y
    LOW_NORMALIZED_MARGIN = "low_normalized_margin"  # the num_label_issues lowest margins


class QualityScore(str, Enum):
    """Per-sample label quality score (low = likely wrong)."""

    SELF_CONFIDENCE = "self_confidence"
    NORMALIZED_MARGIN = "normalized_margin"
    CONFIDENCE_WEIGHTED_ENTROPY = "confidence_weighted_entropy"


def _enum(cls, value, name: str):
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise BadInputError(f"'{name}' must be one of {allowed}. Got {value!r} instead.") from None


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LabelIssues:
    """Output of confident learning. N counts every row, unlabeled (-1) ones included.

    Attributes: ``is_issue`` (N,) bool; ``label_quality`` (N,) float (NaN where unlabeled);
    ``ranked`` (n_issues,) int64 row indices of the issues, most likely wrong first;
    ``thresholds`` (K,) t_j; ``confident_joint`` (K, K) int64, C[y][j] before calibration (diagonal >= 1);
    ``num_label_issues`` the off-diagonal count (cleanlab's ``num_label_issues``).
    """

    is_issue: np.ndarray
    label_quality: np.ndarray
    ranked: np.ndarray
    thresholds: np.ndarray
    confident_joint: np.ndarray
    num_label_issues: int


class NoiseEstimates(NamedTuple):
    """Latent estimates: p(y*) ``py`` (K,), ``noise_matrix`` P(y|y*) and
    ``inverse_noise_matrix`` P(y*|y) (K, K), and the calibrated ``confident_joint``."""

    py: np.ndarray
    noise_matrix: np.ndarray
    inverse_noise_matrix: np.ndarray
    confident_joint: np.ndarray


@dataclass(frozen=True)
class _Spec:
    method: FilterMethod
    score: QualityScore
    frac_noise: float
    num_to_remove: np.ndarray | None
    min_examples: int


class _Stats:
    """What pass 1 learns about the source: the labels of every chunk, dtype and K."""

    def __init__(self, *, check: bool = True) -> None:
        self.labels: list[np.ndarray] = []
        self.dtype = None
        self.n_classes = 0
        self.check = check  # False: the caller has checked the values (shapes are still checked)


# ----------------------------------------------------------------------------- sources


class _ArraySource:
    """Chunks of in-memory arrays; the whole ``probs`` stays at hand, so the rows that pruning
    looks at again are gathered from it rather than copied aside during the joint pass."""

    def __init__(self, labels: np.ndarray, probs: np.ndarray) -> None:
        self.labels, self.probs = labels, probs
        self.rows = max(1024, _CHUNK_BYTES // max(1, probs.shape[1] * probs.itemsize))

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return ((self.labels[s:s + self.rows], self.probs[s:s + self.rows]) for s in range(0, len(self.labels), self.rows))


def _array_source(labels: np.ndarray, probs: np.ndarray) -> ChunkSource:
    return _ArraySource(labels, probs)


def _labeled_chunks(source: ChunkSource, stats: _Stats, first: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (labels, probs) of the labeled rows of each chunk; on the first pass also validate."""
    seen = 0
    for lab, pr in source():
        if first:
            pr = check_probs(pr) if stats.check else np.asarray(pr)
            if stats.dtype is None:
                stats.dtype = np.dtype(np.float32) if pr.dtype.itemsize < 4 else pr.dtype
                stats.n_classes = pr.shape[1]
            elif pr.shape[1] != stats.n_classes:
                raise BadInputError(f"'probs' chunks must all have {stats.n_classes} columns. Got {pr.shape[1]} instead.")
            lab = check_labels(lab, n_classes=stats.n_classes) if stats.check else np.asarray(lab, dtype=np.int64)
            if len(lab) != len(pr):
                raise BadInputError(f"'labels' and 'probs' chunks must have the same length. Got {len(lab)} and {len(pr)} instead.")
            stats.labels.append(lab)
        else:
            expected = stats.labels[seen] if seen < len(stats.labels) else None
            if expected is None or len(lab) != len(expected) or not np.array_equal(lab, expected):
                raise BadInputError("'chunks' must yield the same data on every call. Got a different chunk on a later pass instead.")
            lab = expected  # already validated, int64
            seen += 1
        pr = np.asarray(pr, dtype=stats.dtype)
        keep = lab >= 0
        if not keep.all():
            lab, pr = lab[keep], pr[keep]
        yield lab, pr
    if not first and seen != len(stats.labels):
        raise BadInputError(f"'chunks' must yield the same data on every call. Got {seen} chunks instead of {len(stats.labels)}.")


# ----------------------------------------------------------------------------- thresholds


def _thresholds(y: np.ndarray, selfconf: np.ndarray, n_classes: int) -> np.ndarray:
    """t_j = mean of p_ij over rows labeled j (Northcutt et al. 2021, eq. 2), clipped below."""
    small = y.astype(np.int16 if n_classes < 2**15 else np.int32)
    order = np.argsort(small, kind="stable")  # keeps row order inside a class: same sum order
    sorted_conf = selfconf[order]
    ends = np.cumsum(np.bincount(y, minlength=n_classes))
    starts = ends - np.bincount(y, minlength=n_classes)
    # np.mean in the probabilities' own precision, like the reference; a class with no samples
    # gets an unreachable threshold (and makes the array float64, which the comparison follows).
    means = [np.mean(sorted_conf[s:e]) if e > s else _NO_SAMPLES for s, e in zip(starts, ends)]
    return np.clip(np.asarray(means), _THRESHOLD_FLOOR, None)


# ----------------------------------------------------------------------------- the joint pass


class _Joint(NamedTuple):
    counts: np.ndarray  # (K*K,) C[y][j] counts, flattened
    off_diagonal: np.ndarray  # (n,) bool: confidently counted off the diagonal
    candidate: np.ndarray  # (n,) bool: argmax differs from the label (beyond _FP)
    candidate_rows: np.ndarray | None  # (n_candidates, K) their probability rows
    bound: float  # every non-candidate has p_j - p_y <= bound
    scores: dict
    predicted: np.ndarray  # (n,) int64: argmax_j p_ij of each row


def _joint_chunk(y, pr, thr_cmp, n_classes):
    """C[y][j] for one chunk: j = the only confident class, or the argmax when several are."""
    r = np.arange(len(y))
    conf = np.greater_equal(pr, thr_cmp)  # p_ij >= t_j - eps
    n_conf = conf.view(np.uint8).sum(axis=1, dtype=np.uint16 if n_classes < 2**16 else np.int64)
    top_idx = pr.argmax(axis=1)
    top = pr[r, top_idx]
    guess = top_idx.copy()
    fix = (n_conf == 1) & ~conf[r, top_idx]  # a single confident class that is not the argmax
    if fix.any():
        guess[fix] = conf[fix].argmax(axis=1)
    has = n_conf > 0
    codes = y[has] * n_classes + guess[has]
    if n_classes**2 <= 8 * len(codes) + 4096:
        counts = np.bincount(codes, minlength=n_classes * n_classes)
    else:  # many classes, small chunk: do not zero K*K bins per chunk
        counts = np.zeros(n_classes * n_classes, dtype=np.int64)
        np.add.at(counts, codes, 1)
    selfconf = pr[r, y]
    bumped = selfconf + _FP  # the given label wins ties within _FP (argmax takes the first max)
    agrees = (top_idx == y) | (bumped > top) | ((bumped == top) & (y < top_idx))
    return counts, has & (guess != y), ~agrees, float((bumped - selfconf).max(initial=0.0)), selfconf, top_idx


def _joint_pass(source, stats, thresholds, *, keep_rows: bool, scores=()) -> _Joint:
    k = stats.n_classes
    thr_cmp = thresholds - _FP
    counts = np.zeros(k * k, dtype=np.int64)
    off, cand, rows, pred, bound = [], [], [], [], 0.0
    parts = {s: [] for s in scores}
    for y, pr in _labeled_chunks(source, stats, first=False):
        c, o, m, b, sc, top_idx = _joint_chunk(y, pr, thr_cmp, k)
        counts += c
        off.append(o)
        cand.append(m)
        pred.append(top_idx)
        bound = max(bound, b)
        if keep_rows:
            rows.append(pr[m])
        for s in scores:
            parts[s].append(_score_chunk(s, y, pr, sc))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    cand_rows = np.concatenate(rows) if rows else np.zeros((0, k), stats.dtype)
    return _Joint(counts, cat(off, bool), cat(cand, bool), cand_rows if keep_rows else None,
                  bound, {s: cat(v, stats.dtype) for s, v in parts.items()}, cat(pred, np.int64).astype(np.int64, copy=False))


# ----------------------------------------------------------------------------- scores


def _score_chunk(method: QualityScore, y, pr, selfconf) -> np.ndarray:
    """Label quality of one chunk (Northcutt et al. 2021; Kuan & Mueller 2022)."""
    if method is QualityScore.SELF_CONFIDENCE:
        return selfconf
    if method is QualityScore.NORMALIZED_MARGIN:
        others = pr.copy()
        others[np.arange(len(y)), y] = -np.inf
        best_other = others.max(axis=1) if pr.shape[1] > 1 else np.zeros_like(selfconf)
        return (selfconf - best_other + 1) / 2
    # confidence-weighted entropy: log(1 + H/p_y) / (H/p_y), H the normalised entropy
    from scipy.special import xlogy  # p log p with 0 log 0 = 0, computed as the reference computes it (to the ulp)

    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = xlogy(pr, pr).astype(pr.dtype, copy=False)
        entropy = -np.sum(plogp, axis=1) / np.log(pr.shape[1])
        ratio = entropy / np.clip(selfconf, 1e-6, None)
        return np.log(ratio + 1) / np.clip(ratio, 1e-6, None)


# ----------------------------------------------------------------------------- count algebra


def _round_rows(mat: np.ndarray) -> np.ndarray:
    """Round each row to integers keeping its rounded sum: largest remainders go up."""
    out = np.empty(mat.shape, dtype=np.int64)
    for i, row in enumerate(np.asarray(mat, dtype=float)):
        ints = row.round()
        target, total = np.sum(row).round(), np.sum(ints).round()
        while abs(total - target) > _FP:
            diff = np.round(target - total)
            step = -1 if diff < 0 else 1
            picks = np.argsort(row - ints)[::-step][: min(int(abs(diff)), len(row))]
            ints[picks] += step
            total = np.sum(ints).round()
        out[i] = ints
    return out


def _calibrate(cj: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Scale each row of C to the count of its label, then the whole to N (paper, eq. 3)."""
    cal = (cj.T / np.clip(cj.sum(axis=1), _TINY, None) * label_counts).T
    cal = cal / np.clip(np.sum(cal), _TINY, None) * label_counts.sum()
    return _round_rows(cal)


def _prune_counts(cal_cj: np.ndarray, label_counts, spec: _Spec) -> np.ndarray:
    """How many to prune per (j, y): C^T with at least ``min_examples`` kept per class, scaled
    by ``frac_noise`` (or set from ``num_to_remove_per_class``)."""
    pcm = cal_cj.T
    diag = np.diagonal(pcm)
    new_diag = np.maximum(diag, spec.min_examples)
    per_col = np.maximum(np.count_nonzero(pcm, axis=0) - 1.0, 1.0)
    mat = pcm - (new_diag - diag) / per_col
    mat[mat < 0] = 0
    np.fill_diagonal(mat, new_diag)
    scaled = mat * spec.frac_noise  # the mass taken off a column goes back to its diagonal
    np.fill_diagonal(scaled, mat.diagonal())
    np.fill_diagonal(scaled, mat.diagonal() + np.sum(mat - scaled, axis=0))
    pcm = _round_rows(scaled.astype(int))
    if spec.num_to_remove is not None:
        psy = pcm / np.sum(pcm, axis=1)
        noise_per_s = psy.sum(axis=1) - psy.diagonal()
        tmp = (psy.T * spec.num_to_remove / noise_per_s).T
        np.fill_diagonal(tmp, label_counts - spec.num_to_remove)
        pcm = _round_rows(tmp)
    return pcm


def _clip_noise_rates(mat: np.ndarray) -> np.ndarray:
    diag = np.diagonal(mat).copy()
    mat = np.clip(mat, 0, 0.9999)
    np.fill_diagonal(mat, diag)
    return mat / np.clip(mat.sum(axis=0), _TINY, None)


def _clip_to_simplex(x: np.ndarray, low: float) -> np.ndarray:
    x = np.clip(x, low, 1.0)
    return x * 1.0 / np.clip(np.sum(x), _TINY, None)


def _latent(cal_cj: np.ndarray, label_counts: np.ndarray, converge: bool) -> NoiseEstimates:
    """p(y*), P(y|y*) and P(y*|y) from the calibrated joint (paper, section 3.2)."""
    ps = label_counts / float(label_counts.sum())
    nm = cal_cj / np.clip(cal_cj.sum(axis=0).astype(float), _TINY, None)
    inv = cal_cj.T / np.clip(cal_cj.sum(axis=1).astype(float), _TINY, None)

    def py_from(nm, inv):
        return _clip_to_simplex(inv.diagonal() / np.clip(nm.diagonal(), _TINY, None) * ps, 1e-6)

    py = py_from(nm, inv)
    nm, inv = _clip_noise_rates(nm), _clip_noise_rates(inv)
    if converge:  # alternate the two Bayes inversions until they agree
        for _ in range(3):
            for _ in range(5):
                inv = _clip_noise_rates((nm * py).T / np.clip(ps, _TINY, None))
                py = py_from(nm, inv)
            nm = _clip_noise_rates((inv * ps).T / np.clip(py, _TINY, None))
        py = _clip_to_simplex(py, 1e-5)
        nm, inv = _clip_noise_rates(nm), _clip_noise_rates(inv)
    return NoiseEstimates(py, nm, inv, cal_cj)


# ----------------------------------------------------------------------------- pruning


def _smallest(x: np.ndarray, k: int) -> np.ndarray:
    """Mask of ``np.argsort(x)[:k]``: by selection, unless the k-th value is tied across the cut,
    where numpy's default sort order decides (as it does in the reference)."""
    mask = np.zeros(x.size, dtype=bool)
    if k >= x.size:
        mask[:] = True
        return mask
    if k <= 0:
        return mask
    v = np.partition(x, k - 1)[k - 1]
    below, ties = x < v, x == v
    if np.count_nonzero(below) + np.count_nonzero(ties) == k:
        return below | ties
    mask[np.argsort(x)[:k]] = True
    return mask


def _groups(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted by class (row order kept inside a class) and the class end offsets."""
    order = np.argsort(y.astype(np.int32), kind="stable")
    return order, np.cumsum(np.bincount(y, minlength=n_classes))


def _prune_by_class(a: _Analysis, pcm: np.ndarray, spec: _Spec) -> np.ndarray:
    """Per class y: flag the n_y - C[y][y] rows with the lowest p_y."""
    mask = np.zeros(len(a.y), dtype=bool)
    order, ends = _groups(a.y, a.k)
    for k in range(a.k):
        pos = order[ends[k] - a.counts[k]:ends[k]]
        num = a.counts[k] - pcm[k, k]
        if a.counts[k] > spec.min_examples and num >= 1:
            mask[pos[_smallest(a.selfconf[pos], num)]] = True
    return mask


def _prune_by_noise_rate(a: _Analysis, pcm: np.ndarray, spec: _Spec, source, stats) -> np.ndarray:
    """Per class y and j != y: flag the pcm[j, y] rows with the largest p_j - p_y.

    Only rows whose argmax differs from the label (candidates) can end up flagged. Every other
    row has p_j - p_y <= ``bound`` for all j, so whenever the pcm[j, y] largest margins all exceed
    the bound, the candidates alone decide; the other (y, j) pairs re-read their full column.
    """
    mask = np.zeros(len(a.y), dtype=bool)
    cand_pos = np.flatnonzero(a.joint.candidate)
    c_order, c_ends = _groups(a.y[cand_pos], a.k)
    c_starts = c_ends - np.bincount(a.y[cand_pos], minlength=a.k)
    pending: dict[int, list[int]] = {}
    # The candidates' rows: kept aside by the joint pass, or (in-memory source) gathered from probs by row.
    in_probs = None if a.joint.candidate_rows is not None else np.flatnonzero(a.labels >= 0)[cand_pos]
    for k in np.flatnonzero(a.counts > spec.min_examples):
        m = pcm[:, k].copy()
        m[k] = 0
        js = np.flatnonzero(m > 0)
        sel = c_order[c_starts[k]:c_ends[k]]
        if js.size and sel.size:
            if in_probs is None:
                probs_j = a.joint.candidate_rows[sel][:, js]
            else:
                probs_j = np.asarray(source.probs[in_probs[sel]], dtype=stats.dtype)[:, js]
            picked, undecided = _top_margins(a.selfconf[cand_pos[sel]], probs_j, m[js], a.joint.bound)
            mask[cand_pos[sel[picked]]] = True
            if undecided.any():
                pending[int(k)] = list(js[undecided])
    if pending:
        order, ends = _groups(a.y, a.k)
        for k, cols in _fetch_columns(source, stats, pending).items():
            pos = order[ends[k] - a.counts[k]:ends[k]]
            for col, j in zip(cols.T, pending[k]):
                mask[pos[_smallest(np.ascontiguousarray(col), int(pcm[j, k]))]] = True
    return mask


def _top_margins(selfconf: np.ndarray, probs_j: np.ndarray, m: np.ndarray, bound: float):
    """Candidates only: per column j, the rows with the m_j largest p_j - p_y. A column is
    decided when its m_j-th margin exceeds ``bound`` and is not tied with the next one.
    Returns (picked row indices, undecided column mask)."""
    n = len(selfconf)
    neg = selfconf[None, :] - probs_j.T  # -(p_j - p_y), (J, n)
    block = min(int(m.max()) + 1, n)
    vals = np.partition(neg, block - 1, axis=1)[:, :block] if block < n else neg.copy()
    vals.sort(axis=1)
    mc, r = np.minimum(m, n), np.arange(len(m))
    v = vals[r, mc - 1]
    nxt = np.where(mc < block, vals[r, np.minimum(mc, block - 1)], np.inf)
    decided = (m <= n) & (v < -bound) & (nxt > v)
    picked = np.flatnonzero((neg[decided] <= v[decided, None]).any(axis=0))
    return picked, ~decided


def _fetch_columns(source, stats, pending: dict[int, list[int]]) -> dict[int, np.ndarray]:
    """One more pass: p_y - p_j over every row labeled y, for the pending (y, j) pairs."""
    keys = np.array(sorted(pending))
    parts: dict[int, list[np.ndarray]] = {k: [] for k in pending}
    for y, pr in _labeled_chunks(source, stats, first=False):
        idx = np.flatnonzero(np.isin(y, keys))
        idx = idx[np.argsort(y[idx], kind="stable")]
        bounds = np.searchsorted(y[idx], keys, side="right")
        for k, lo, hi in zip(keys, np.r_[0, bounds[:-1]], bounds):
            if hi > lo:
                rows = pr[idx[lo:hi]]
                parts[k].append(rows[:, [k]] - rows[:, pending[k]])
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def _issue_mask(a: _Analysis, spec: _Spec, source, stats) -> np.ndarray:
    m = spec.method
    if m in (FilterMethod.LOW_SELF_CONFIDENCE, FilterMethod.LOW_NORMALIZED_MARGIN):
        return _smallest(a.joint.scores[QualityScore(m.value[4:])], a.num_issues)
    if m is FilterMethod.CONFIDENT_LEARNING:
        mask = a.joint.off_diagonal.copy()
    elif m is FilterMethod.PREDICTED_NEQ_GIVEN:
        mask = np.ones(len(a.y), dtype=bool)
    else:
        pcm = _prune_counts(_calibrate(a.cj, a.counts), a.counts, spec)
        mask = np.ones(len(a.y), dtype=bool)
        if m in (FilterMethod.PRUNE_BY_CLASS, FilterMethod.BOTH):
            mask &= _prune_by_class(a, pcm, spec)
        if m in (FilterMethod.PRUNE_BY_NOISE_RATE, FilterMethod.BOTH):
            mask &= _prune_by_noise_rate(a, pcm, spec, source, stats)
    return mask & a.joint.candidate  # a row whose label is (within 1e-6) the argmax is never flagged


# ----------------------------------------------------------------------------- driver


@dataclass
class _Analysis:
    labels: np.ndarray  # (N,) every row
    y: np.ndarray  # (n,) labeled rows only
    selfconf: np.ndarray
    thresholds: np.ndarray
    joint: _Joint
    k: int
    counts: np.ndarray  # (K,) n_y

    @property
    def cj(self) -> np.ndarray:
        cj = self.joint.counts.reshape(self.k, self.k).copy()
        np.fill_diagonal(cj, cj.diagonal().clip(min=1))
        return cj

    @property
    def num_issues(self) -> int:
        return int(np.count_nonzero(self.joint.off_diagonal & self.joint.candidate))


def _analyse(source: ChunkSource, stats: _Stats, *, keep_rows=False, scores=()) -> _Analysis:
    """Pass 1: p_y per labeled row and the thresholds t_j; pass 2: the confident joint."""
    conf = [pr[np.arange(len(y)), y] for y, pr in _labeled_chunks(source, stats, first=True)]
    if stats.dtype is None:
        raise BadInputError("'chunks' must yield at least one (labels, probs) chunk. Got none instead.")
    if isinstance(source, _ArraySource) and source.labels.dtype == np.int64:
        labels = source.labels  # the chunks are views of it: no concatenated copy
    else:
        labels = np.concatenate(stats.labels)
    labeled = labels >= 0
    y = labels if labeled.all() else labels[labeled]
    selfconf = np.concatenate(conf) if conf else np.zeros(0, stats.dtype)
    thresholds = _thresholds(y, selfconf, stats.n_classes)
    joint = _joint_pass(source, stats, thresholds, keep_rows=keep_rows, scores=scores)
    return _Analysis(labels, y, selfconf, thresholds, joint, stats.n_classes, np.bincount(y, minlength=stats.n_classes))


def _detect_impl(source: ChunkSource, spec: _Spec) -> LabelIssues:
    return _detect_analysed(*_analysed(source, spec), source, spec)


def _analysed(source: ChunkSource, spec: _Spec, *, check: bool = True) -> tuple[_Analysis, _Stats]:
    stats = _Stats(check=check)
    scores = {spec.score}
    if spec.method.value.startswith("low_"):
        scores.add(QualityScore(spec.method.value[4:]))
    # pruning by noise rate looks at the candidates' rows again: kept aside unless the source is in memory
    keep = spec.method in (FilterMethod.PRUNE_BY_NOISE_RATE, FilterMethod.BOTH) and not isinstance(source, _ArraySource)
    return _analyse(source, stats, keep_rows=keep, scores=tuple(scores)), stats


def _detect_analysed(a: _Analysis, stats: _Stats, source: ChunkSource, spec: _Spec) -> LabelIssues:
    if spec.num_to_remove is not None and len(spec.num_to_remove) != a.k:
        raise BadInputError(f"'num_to_remove_per_class' must have {a.k} entries. Got {len(spec.num_to_remove)} instead.")
    mask = _issue_mask(a, spec, source, stats)
    quality = a.joint.scores[spec.score]
    rows = np.flatnonzero(a.labels >= 0)
    issues = np.flatnonzero(mask)
    is_issue = np.zeros(len(a.labels), dtype=bool)
    is_issue[rows[mask]] = True
    full = np.full(len(a.labels), np.nan, dtype=np.result_type(quality.dtype, np.float32))
    full[rows] = quality
    ranked = rows[issues[np.argsort(quality[mask])]]  # the reference's order: default argsort
    return LabelIssues(is_issue, full, ranked.astype(np.int64), a.thresholds, a.cj, a.num_issues)


def _spec(method, score_method, frac_noise, num_to_remove_per_class, min_examples_per_class) -> _Spec:
    method = _enum(FilterMethod, method, "method")
    score = _enum(QualityScore, score_method, "score_method")
    pruning = method in (FilterMethod.PRUNE_BY_NOISE_RATE, FilterMethod.PRUNE_BY_CLASS, FilterMethod.BOTH)
    if not 0 < frac_noise <= 1:
        raise BadInputError(f"'frac_noise' must be in (0, 1]. Got {frac_noise!r} instead.")
    if int(min_examples_per_class) != min_examples_per_class or min_examples_per_class < 0:
        raise BadInputError(f"'min_examples_per_class' must be an integer >= 0. Got {min_examples_per_class!r} instead.")
    remove = None
    if num_to_remove_per_class is not None:
        remove = np.asarray(num_to_remove_per_class)
        if remove.ndim != 1 or not np.issubdtype(remove.dtype, np.integer) or (remove < 0).any():
            raise BadInputError(f"'num_to_remove_per_class' must be a 1-D array of integers >= 0. Got {num_to_remove_per_class!r} instead.")
    if not pruning and (frac_noise != 1 or remove is not None):
        raise BadInputError(f"'frac_noise' and 'num_to_remove_per_class' apply only to the pruning methods. Got method={method.value!r} instead.")
    return _Spec(method, score, float(frac_noise), remove, int(min_examples_per_class))


def _checked_source(labels, probs) -> ChunkSource:
    labels = check_labels(labels)
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise BadInputError(f"'probs' must have shape ({len(labels)}, n_classes). Got {probs.shape} instead.")
    if len(labels) == 0:
        raise BadInputError("'labels' must not be empty. Got 0 rows instead.")
    return _array_source(labels, probs)


# ----------------------------------------------------------------------------- public: confident learning

def detect_label_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    method: FilterMethod | str = FilterMethod.PRUNE_BY_NOISE_RATE,
    score_method: QualityScore | str = QualityScore.SELF_CONFIDENCE,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
) -> LabelIssues:
    """Find label issues by confident learning, with scores, ranking and the confident joint.

    Per-class thresholds t_j = mean p_ij over rows labeled j; the confident joint C[y][j] counts
    rows labeled y whose p_ij >= t_j (the argmax when several classes pass); C is calibrated to
    the label counts; ``method`` then picks the issues. Rows whose given label is the argmax
    (within 1e-6) are never issues. Same results as cleanlab 2.9 ``filter.find_label_issues``.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, int; -1 marks an unlabeled row, which is left out.
    probs : ndarray of shape (n_samples, n_classes)
        Out-of-sample predicted probabilities (e.g. cross-validated), float32 or float64.
    method : FilterMethod or str, default="prune_by_noise_rate"
    score_method : QualityScore or str, default="self_confidence"
        The score in ``label_quality`` and the order of ``ranked``.
    frac_noise : float, default=1.0
        Fraction of the estimated noise to prune (pruning methods only).
    num_to_remove_per_class : ndarray of shape (n_classes,), default=None
        Prune exactly this many per given class instead (pruning methods only).
    min_examples_per_class : int, default=1
        Classes with at most this many rows are not pruned, and keep at least this many.

    Returns
    -------
    LabelIssues

    References
    ----------
    Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
    JAIR 70, 2021.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05]])
    >>> detect_label_issues(np.array([0, 0, 1, 1, 1]), p).is_issue.tolist()
    [False, False, False, False, True]
    """
    spec = _spec(method, score_method, frac_noise, num_to_remove_per_class, min_examples_per_class)
    return _detect_impl(_checked_source(labels, probs), spec)


class ConfidentLearning(NamedTuple):
    """Everything one confident-learning analysis gives (see :func:`confident_learning`)."""

    issues: LabelIssues  # by the requested filter and score methods
    off_diagonal: np.ndarray  # (n_samples,) bool: the 'confident_learning' filter's issues (C[y][j], j != y)
    joint: np.ndarray  # (K, K) estimated joint p(y, y*), as estimate_joint
    estimates: NoiseEstimates  # as estimate_noise_matrices (converged)
    self_confidence: np.ndarray  # (n_samples,) float64 p_{i, y_i}; NaN where unlabeled
    predicted: np.ndarray  # (n_samples,) int64 argmax_j p_ij; -1 where unlabeled (not analysed)


def confident_learning(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    method: FilterMethod | str = FilterMethod.PRUNE_BY_NOISE_RATE,
    score_method: QualityScore | str = QualityScore.SELF_CONFIDENCE,
    check_input: bool = True,
) -> ConfidentLearning:
    """:func:`detect_label_issues`, the off-diagonal issues, :func:`estimate_joint` and
    :func:`estimate_noise_matrices` from one analysis of ``probs`` (the thresholds and the
    confident joint are computed once, not once per result), with each labeled row's
    self-confidence p_{i, y_i} and argmax, which the analysis computes anyway.

    ``check_input=False`` skips the checks of the values (probabilities in [0, 1] with rows that
    sum to one, labels in range; shapes are still checked) for a caller that has made them, as
    scikit-learn's ``check_input``: they cost three passes over (N, K) (docs/performance.md).
    ``probs`` must then be a float array and ``labels`` integers in [-1, K).

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05]])
    >>> cl = confident_learning(np.array([0, 0, 1, 1, 1]), p)
    >>> cl.issues.is_issue.tolist(), cl.off_diagonal.tolist()
    ([False, False, False, False, True], [False, False, False, False, True])
    """
    spec = _spec(method, score_method, 1.0, None, 1)
    source = _checked_source(labels, probs)
    a, stats = _analysed(source, spec, check=check_input)
    issues = _detect_analysed(a, stats, source, spec)
    off = np.zeros(len(a.labels), dtype=bool)
    off[np.flatnonzero(a.labels >= 0)] = a.joint.off_diagonal & a.joint.candidate
    cal = _calibrate(a.cj, a.counts)
    rows = np.flatnonzero(a.labels >= 0)
    selfconf = np.full(len(a.labels), np.nan)
    selfconf[rows] = a.selfconf
    predicted = np.full(len(a.labels), -1, dtype=np.int64)
    predicted[rows] = a.joint.predicted
    return ConfidentLearning(issues, off, cal / np.clip(float(np.sum(cal)), _TINY, None), _latent(cal, a.counts, True), selfconf, predicted)


def detect_label_issues_streaming(
    chunks: ChunkSource,
    *,
    method: FilterMethod | str = FilterMethod.PRUNE_BY_NOISE_RATE,
    score_method: QualityScore | str = QualityScore.SELF_CONFIDENCE,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
) -> LabelIssues:
    """:func:`detect_label_issues` over data larger than memory, read as chunks of rows.

    ``chunks()`` must return a fresh iterable of ``(labels_chunk, probs_chunk)`` with the same
    rows in the same order on every call (e.g. Parquet row groups). It is called twice (pass 1:
    p_y and the thresholds; pass 2: the confident joint, scores and candidate rows), and a third
    time for ``prune_by_noise_rate``/``both`` only when a (y, j) pair needs its full column of
    margins. Memory: O(N) per-row vectors, plus the rows whose argmax is not the given label,
    plus those columns. Results equal the in-memory ones (same code path).

    Parameters
    ----------
    chunks : callable returning an iterable of (ndarray (n_i,), ndarray (n_i, n_classes))
    method, score_method, frac_noise, num_to_remove_per_class, min_examples_per_class
        As in :func:`detect_label_issues`.

    Returns
    -------
    LabelIssues
        Indices count rows across chunks, in order.

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021.
    """
    if not callable(chunks):
        raise BadInputError(f"'chunks' must be a callable returning an iterable of chunks. Got {type(chunks).__name__} instead.")
    spec = _spec(method, score_method, frac_noise, num_to_remove_per_class, min_examples_per_class)
    return _detect_impl(chunks, spec)


def find_label_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    method: FilterMethod | str = FilterMethod.PRUNE_BY_NOISE_RATE,
    frac_noise: float = 1.0,
    num_to_remove_per_class: np.ndarray | None = None,
    min_examples_per_class: int = 1,
) -> np.ndarray:
    """Boolean mask (n_samples,) of label issues; see :func:`detect_label_issues`.

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021.
    """
    return detect_label_issues(labels, probs, method=method, frac_noise=frac_noise,
                               num_to_remove_per_class=num_to_remove_per_class,
                               min_examples_per_class=min_examples_per_class).is_issue


def _analysis(labels, probs, *, scores=()) -> _Analysis:
    return _analyse(_checked_source(labels, probs), _Stats(), scores=scores)


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-class thresholds t_j (n_classes,): mean p_ij over rows labeled j (2.0 if none).

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021, eq. 2.
    """
    return _analysis(labels, probs).thresholds


def confident_joint(labels: np.ndarray, probs: np.ndarray, *, calibrate: bool = True) -> np.ndarray:
    """Confident joint C[y][j] (n_classes, n_classes) int64, calibrated to the label counts
    by default (diagonal at least 1 before calibration).

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021, eqs. 1 and 3.
    """
    a = _analysis(labels, probs)
    return _calibrate(a.cj, a.counts) if calibrate else a.cj


def estimate_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Estimated joint p(y, y*) (n_classes, n_classes): the calibrated C over its sum.

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021, eq. 3.
    """
    cal = confident_joint(labels, probs)
    return cal / np.clip(float(np.sum(cal)), _TINY, None)


def estimate_noise_matrices(labels: np.ndarray, probs: np.ndarray, *, converge: bool = True) -> NoiseEstimates:
    """Priors ``py`` and the noise matrices P(y|y*), P(y*|y) from the calibrated joint.

    ``converge`` alternates the two Bayes inversions a few times (cleanlab's
    ``estimate_py_and_noise_matrices_from_probabilities`` defaults).

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021, section 3.
    """
    a = _analysis(labels, probs)
    return _latent(_calibrate(a.cj, a.counts), a.counts, converge)


def num_label_issues(labels: np.ndarray, probs: np.ndarray) -> int:
    """Number of label issues: off-diagonal entries of C whose label is not the argmax.

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021.
    """
    return _analysis(labels, probs).num_issues


def label_quality_scores(labels: np.ndarray, probs: np.ndarray, *,
                         method: QualityScore | str = QualityScore.SELF_CONFIDENCE) -> np.ndarray:
    """Label quality per row (n_samples,), low = likely wrong; NaN for unlabeled rows.

    ``self_confidence`` p_y; ``normalized_margin`` (p_y - max_{j!=y} p_j + 1) / 2;
    ``confidence_weighted_entropy`` log(1 + H/p_y) / (H/p_y), H the normalised entropy (this one
    matches the reference to float32 rounding, not bit for bit: its log differs by an ulp).

    References
    ----------
    Kuan & Mueller, "Model-Agnostic Label Quality Scoring to Detect Real-World Label Errors",
    ICML DataPerf workshop 2022.
    """
    method = _enum(QualityScore, method, "method")
    a = _analysis(labels, probs, scores=(method,))
    out = np.full(len(a.labels), np.nan, dtype=np.result_type(a.joint.scores[method], np.float32))
    out[a.labels >= 0] = a.joint.scores[method]
    return out


def rank_label_issues(is_issue: np.ndarray, labels: np.ndarray, probs: np.ndarray, *,
                      method: QualityScore | str = QualityScore.SELF_CONFIDENCE) -> np.ndarray:
    """Row indices of the issues, lowest label quality first (int64, (n_issues,)).

    References
    ----------
    Northcutt, Jiang & Chuang, JAIR 2021.
    """
    scores = label_quality_scores(labels, probs, method=method)
    is_issue = np.asarray(is_issue, dtype=bool)
    if is_issue.shape != scores.shape:
        raise BadInputError(f"'is_issue' must have shape {scores.shape}. Got {is_issue.shape} instead.")
    if np.isnan(scores[is_issue]).any():
        raise BadInputError("'is_issue' must not flag unlabeled rows. Got a flagged row with label -1 instead.")
    idx = np.flatnonzero(is_issue)
    return idx[np.argsort(scores[is_issue])].astype(np.int64)
