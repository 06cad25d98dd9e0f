"""What a student trains on: trusted labels, pseudo-labels and the held-out split, as arrays.

Rows are positions in the samples table (``codes``: each row's given label code, -1 = unlabeled).
The distill stage reads the artifacts and calls these; they know nothing of files.

:func:`split_trusted`
    The trusted rows (given labels minus the flagged issues) and the held-out part.
:func:`select_pseudolabels`
    Which pseudo-labeled rows are trained on.
:func:`assemble`
    A :class:`TrainingSet`: targets for :func:`~labelkit.distill.fit_student` from both.
:func:`self_training_set`
    The next self-training round's set, with the student's probabilities as the pseudo-labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from labelkit.config import defaults
from labelkit.errors import BadInputError

__all__ = [
    "DEFAULT_ACCEPT",
    "MIN_HELD_OUT",
    "Frame",
    "PseudoLabels",
    "TrainingSet",
    "acceptance_threshold",
    "assemble",
    "min_held_out",
    "select_pseudolabels",
    "self_training_set",
    "split_trusted",
    "take_pseudolabels",
]

DEFAULT_ACCEPT = defaults("pseudolabel").threshold  # self-training acceptance when pseudolabels.parquet records no confidence threshold
MIN_HELD_OUT = 20  # fewer held-out labels than this (or 2 per class): no hold-out, no early stopping


@dataclass(frozen=True)
class Frame:
    """What stays fixed across self-training rounds and cross-fitting folds."""

    codes: np.ndarray  # (N,) given label codes of every samples row, -1 = unlabeled
    val_rows: np.ndarray  # (m,) held-out trusted rows
    unlabeled_rows: np.ndarray  # every unlabeled row with an input: self-training candidates
    n_dropped_issues: int
    threshold: float  # confidence a self-training round accepts at

    @property
    def val_labels(self) -> np.ndarray:
        return self.codes[self.val_rows]


@dataclass(frozen=True)
class PseudoLabels:
    """Pseudo-labels of some samples rows: (m,) rows, (m, n_classes) soft labels, (m,) confidences,
    and (m,) whether each passed its teacher's threshold (None: not said)."""

    rows: np.ndarray
    soft: np.ndarray
    confidence: np.ndarray
    accepted: np.ndarray | None = None

    @classmethod
    def none(cls, n_classes: int) -> PseudoLabels:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, n_classes)), np.zeros(0))


@dataclass(frozen=True)
class TrainingSet:
    """Rows (positions in samples order) and targets for fit_student, plus the held-out part."""

    train_rows: np.ndarray  # (n,) samples rows trained on: the trusted ones first
    hard: np.ndarray  # (n,) int64: trusted label; for pseudo-labeled rows -1 (soft) or their label (--hard)
    soft: np.ndarray  # (n, n_classes) soft targets, zero rows = none
    weight: np.ndarray | None  # (n,) sample weights (hard pseudo-labels weighted by confidence)
    is_pseudo: np.ndarray  # (n,) bool
    frame: Frame

    @property
    def n_trusted(self) -> int:
        return int((~self.is_pseudo).sum())

    @property
    def trusted_rows(self) -> np.ndarray:
        return self.train_rows[: self.n_trusted]

    @property
    def n_classes(self) -> int:
        return self.soft.shape[1]

    def without(self, drop: np.ndarray) -> TrainingSet:
        """This set minus the training rows where ``drop`` (n,) is True (trusted rows stay first)."""
        keep = ~drop
        return replace(self, train_rows=self.train_rows[keep], hard=self.hard[keep], soft=self.soft[keep],
                       weight=None if self.weight is None else self.weight[keep], is_pseudo=self.is_pseudo[keep])


def acceptance_threshold(metadata: dict[str, Any]) -> float:
    """The confidence a self-training round accepts at: the pseudolabel stage's own, else its default.

    pseudolabels.parquet's ``params`` hold ``threshold_rule`` and ``threshold``; the value is a
    confidence for the ``fixed`` and ``flexmatch`` rules (flexmatch's per-class scaling is not
    replayed: its base tau is used). A ``margin`` or a ``top_per_class`` count is not a
    confidence, so those rules give the pseudolabel stage's default ``threshold``.
    """
    params = metadata.get("params")
    if isinstance(params, dict):
        rule, value = params.get("threshold_rule", defaults("pseudolabel").threshold_rule), params.get("threshold")
        if rule in ("fixed", "flexmatch") and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return DEFAULT_ACCEPT


def min_held_out(n_classes: int) -> int:
    """Fewest held-out labels worth early stopping on: 20, and 2 per class."""
    return max(MIN_HELD_OUT, 2 * n_classes)


def split_trusted(codes: np.ndarray, has_input: np.ndarray, issue: np.ndarray, n_classes: int, *,
                  val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(trusted rows trained on, held-out rows, number of labeled rows dropped as issues).

    Trusted = labeled rows with an input, minus those where ``issue`` is True. A random
    ``val_fraction`` of them (``default_rng(seed)``) is held out, unless that is fewer than
    :func:`min_held_out` or all of them: then none is (the metrics are cross-fitted instead).

    >>> split_trusted(np.array([0, 1, -1, 1]), np.ones(4, bool), np.array([False, True, False, False]), 2, val_fraction=0.1, seed=0)
    (array([0, 3]), array([], dtype=int64), 1)
    """
    labeled = (codes >= 0) & has_input
    dropped = labeled & issue
    trusted = np.flatnonzero(labeled & ~dropped)
    if trusted.size == 0:
        raise BadInputError(f"no trusted labels left: detect-noise flagged all {int(dropped.sum())} labeled samples; use --keep-issues to train on them")
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * trusted.size))
    if n_val < min_held_out(n_classes) or n_val >= trusted.size:
        n_val = 0  # too few to stop on (a handful of possibly noisy labels stops training at random): cross-fit the metrics instead
    perm = rng.permutation(trusted.size)
    return np.sort(trusted[perm[n_val:]]), np.sort(trusted[perm[:n_val]]), int(dropped.sum())


def select_pseudolabels(pos: np.ndarray, taken: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(samples rows trained on, in samples order; the positions of their pseudo-labels).

    ``pos`` (N,) gives each samples row's pseudo-label (-1: none), ``taken`` (m,) whether each
    pseudo-label may be used (accepted, or every one), ``eligible`` (N,) the samples rows that may
    take one (unlabeled, with an input).

    >>> select_pseudolabels(np.array([-1, 1, -1, 0]), np.array([True, True, False]), np.array([False, True, True, True]))
    (array([1, 3]), array([1, 0]))
    """
    chosen = np.zeros(pos.size, dtype=bool)
    chosen[pos >= 0] = taken[pos[pos >= 0]]
    rows = np.flatnonzero(chosen & eligible)
    return rows, pos[rows]


def take_pseudolabels(frame: Frame, pl: PseudoLabels, *, take_all: bool) -> PseudoLabels:
    """The pseudo-labels trained on: on the frame's unlabeled rows, every one (``take_all``) or the
    accepted ones, in samples order. ``pl.rows`` may hold -1 (no samples row): those are skipped."""
    pos = np.full(frame.codes.size, -1, dtype=np.int64)
    known = np.flatnonzero(pl.rows >= 0)
    pos[pl.rows[known]] = known
    eligible = np.zeros(frame.codes.size, dtype=bool)
    eligible[frame.unlabeled_rows] = True
    taken = np.ones(pl.rows.size, bool) if take_all or pl.accepted is None else pl.accepted
    rows, at = select_pseudolabels(pos, taken, eligible)
    return PseudoLabels(rows, pl.soft[at], pl.confidence[at])


def assemble(frame: Frame, trusted: np.ndarray, pseudo: PseudoLabels, *, soft: bool, confidence_weighting: bool) -> TrainingSet:
    """Targets for fit_student: trusted labels (cross-entropy), and soft pseudo-labels (KL) or their
    argmax weighted by confidence (``soft=False``). Trusted rows have no soft label: alpha does not apply.

    >>> f = Frame(np.array([0, -1, -1]), np.zeros(0, np.int64), np.array([1, 2]), 0, 0.95)
    >>> ts = assemble(f, np.array([0]), PseudoLabels(np.array([1, 2]), np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0.9, 0.7])),
    ...               soft=False, confidence_weighting=True)
    >>> ts.hard.tolist(), ts.weight.tolist()
    ([0, 0, 1], [1.0, 0.9, 0.7])
    """
    n_classes = pseudo.soft.shape[1]
    codes = frame.codes
    rows = np.concatenate([trusted, pseudo.rows]).astype(np.int64)
    is_pseudo = np.r_[np.zeros(trusted.size, bool), np.ones(pseudo.rows.size, bool)]
    if soft:
        hard = np.r_[codes[trusted], np.full(pseudo.rows.size, -1)].astype(np.int64)
        targets = np.vstack([np.zeros((trusted.size, n_classes)), pseudo.soft])
        weight = None  # fit_student weights soft-only rows by their confidence (config.confidence_weighting)
    else:
        hard = np.r_[codes[trusted], pseudo.soft.argmax(axis=1) if pseudo.rows.size else []].astype(np.int64)
        targets = np.zeros((rows.size, n_classes))  # none, but it fixes the class count
        weight = np.r_[np.ones(trusted.size), pseudo.confidence] if confidence_weighting else None
    return TrainingSet(rows, hard, targets, weight, is_pseudo, frame)


def self_training_set(ts: TrainingSet, probs: np.ndarray, *, take_all: bool, soft: bool, confidence_weighting: bool) -> TrainingSet:
    """The next round's set: the student's probabilities ``probs`` (one row per
    ``ts.frame.unlabeled_rows``) replace the teacher's pseudo-labels.

    With ``take_all`` every unlabeled row is taken (weighted by the student's confidence), else
    those where it reaches the frame's threshold; the trusted rows and the held-out split stay.
    """
    conf = probs.max(axis=1) if probs.size else np.zeros(0)
    accepted = conf >= (0.0 if take_all else ts.frame.threshold)
    p = probs[accepted].astype(np.float64)
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    pseudo = PseudoLabels(ts.frame.unlabeled_rows[accepted], p, conf[accepted])
    return assemble(ts.frame, ts.trusted_rows, pseudo, soft=soft, confidence_weighting=confidence_weighting)
