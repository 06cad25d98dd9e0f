"""The distill stage's procedure over arrays: self-training rounds, cross-fitting, held-out metrics.

:func:`distil` is the one call the stage makes: given the inputs ``x`` of every samples row and a
:class:`~labelkit.distill.training_set.TrainingSet`, it trains the student (every round), estimates
its held-out metrics (on the held-out part, or by K-fold cross-fitting when the trusted labels are
too few to hold out) and returns a :class:`Distilled`. A refit ``teacher`` (hidden trusted rows ->
the pseudo-labels recomputed without their labels) keeps the labels the metrics are measured on
from reaching the student through its pseudo-labels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelkit.distill.inference import predict_proba
from labelkit.distill.students import STUDENTS
from labelkit.distill.train_config import TrainConfig
from labelkit.distill.training import FitResult, fit_student
from labelkit.distill.training_set import (
    PseudoLabels,
    TrainingSet,
    assemble,
    self_training_set,
    take_pseudolabels,
)
from labelkit.folds import stratified_folds

__all__ = ["Distilled", "cross_fit", "distil", "fit_rounds", "held_out_metrics", "n_folds", "refit", "torch_threads", "train_config"]

ECE_BINS = 15
Teacher = Callable[[np.ndarray], PseudoLabels]  # hidden trusted rows -> pseudo-labels recomputed without their labels


def train_config(cfg) -> TrainConfig:
    """The fit's hyper-parameters from a :class:`~labelkit.config.DistillConfig` (no validation split:
    the stage holds out its own)."""
    return TrainConfig(
        architecture=cfg.student, hidden=cfg.hidden, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, temperature=cfg.temperature, alpha=cfg.alpha, confidence_weighting=cfg.confidence_weighting,
        soften_below=cfg.soften_below, val_fraction=0.0, patience=cfg.patience, vat=cfg.vat,
        fixmatch=cfg.fixmatch, fixmatch_threshold=cfg.fixmatch_threshold, fixmatch_rule=cfg.fixmatch_rule, label_filter=cfg.label_filter, ema=cfg.ema,
    )


@contextmanager
def torch_threads(student: str, threads: int = 0):
    """CPU threads for the fits: ``threads``, else the architecture's policy (one for mlp/linear,
    torch's default for the pixel students), restored afterwards.

    Measured on the 2-core shared machine: fitting the default mlp on 900 x 64 for 100 epochs took
    11 s with one thread and 56 s with two.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or (before if STUDENTS[student].threads == "torch" else 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_rounds(progress, cfg, ts: TrainingSet, x: np.ndarray, device: str) -> tuple[FitResult, TrainingSet, list[dict[str, Any]]]:
    """Round 1 learns from the teacher; each further round from the previous student (self-training)."""
    tc = train_config(cfg)
    frame = ts.frame
    val = (x[frame.val_rows], frame.val_labels) if frame.val_rows.size else None
    rounds, fit = [], None
    for r in range(cfg.rounds):
        if r > 0:
            unl = frame.unlabeled_rows
            probs = predict_proba(fit.model, x[unl], device=device) if unl.size else np.zeros((0, ts.n_classes))
            ts = self_training_set(ts, probs, take_all=cfg.pseudolabels == "all", soft=cfg.soft, confidence_weighting=cfg.confidence_weighting)
        unlabeled = x[frame.unlabeled_rows] if cfg.fixmatch > 0 else None
        fit = fit_student(x[ts.train_rows], ts.hard, ts.soft, config=tc, sample_weight=ts.weight, val=val, unlabeled=unlabeled,
                          progress=progress, seed=cfg.seed + r, device=device)
        rounds.append(round_record(r, ts, fit))
    return fit, ts, rounds


def _finite(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in a]


def round_record(r: int, ts: TrainingSet, fit: FitResult) -> dict[str, Any]:
    """metrics.json's record of round ``r`` (0-based): counts, epochs and the curves."""
    best_acc = fit.val_acc[fit.best_epoch]
    return {
        "round": r + 1,
        "n_trusted": ts.n_trusted,
        "n_set_aside": int(fit.set_aside.sum()),
        "n_pseudo": int(ts.is_pseudo.sum()),
        "epochs_run": int(fit.train_loss.size),
        "best_epoch": int(fit.best_epoch) + 1,
        "stopped_early": bool(fit.stopped_early),
        "val_accuracy": None if not np.isfinite(best_acc) else round(float(best_acc), 6),
        "curve": {"train_loss": _finite(fit.train_loss), "val_loss": _finite(fit.val_loss), "val_accuracy": _finite(fit.val_acc)},
        "seconds": round(fit.seconds, 2),
    }


def held_out_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE (15 bins) and per-class accuracy of ``probs`` against ``y`` (None without labels).

    >>> held_out_metrics(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]), ["a", "b"])["per_class_accuracy"]
    {'a': 1.0, 'b': 0.5}
    """
    from labelkit.metrics import (
        accuracy,
        expected_calibration_error,
        macro_f1,
        per_class_accuracy,
    )

    if y.size == 0:
        return {"n_val": 0, "accuracy": None, "macro_f1": None, "ece": None, "per_class_accuracy": {}}
    pred = probs.argmax(axis=1)
    pca = per_class_accuracy(y, pred, len(classes))
    return {
        "n_val": int(y.size),
        "accuracy": round(accuracy(y, pred), 6),
        "macro_f1": round(macro_f1(y, pred), 6),
        "ece": round(expected_calibration_error(probs, y, n_bins=ECE_BINS), 6),
        "per_class_accuracy": {c: (None if np.isnan(v) else round(float(v), 6)) for c, v in zip(classes, pca)},
    }


def n_folds(folds: int, ts: TrainingSet) -> int:
    """Cross-fitting folds: only without a held-out part, at most one per trusted label; 0 = none."""
    n = min(folds, ts.n_trusted) if ts.frame.val_rows.size == 0 else 0
    return n if n >= 2 else 0


def refit(ts: TrainingSet, hidden: np.ndarray, teacher: Teacher, cfg) -> TrainingSet:
    """``ts`` minus the trusted rows ``hidden``, with the pseudo-labels ``teacher`` recomputes without their labels."""
    pseudo = take_pseudolabels(ts.frame, teacher(hidden), take_all=cfg.pseudolabels == "all")
    trusted = ts.trusted_rows
    return assemble(ts.frame, trusted[~np.isin(trusted, hidden)], pseudo, soft=cfg.soft, confidence_weighting=cfg.confidence_weighting)


def cross_fit(part, cfg, ts: TrainingSet, x: np.ndarray, device: str, folds: int, teacher: Teacher | None = None):
    """Out-of-fold probabilities (n_trusted, n_classes) of the trusted rows, and per-fold records.

    Fold f's student runs the whole procedure (every self-training round, the fixed epoch budget)
    on the training set minus fold f's trusted rows, so it never sees their labels. Its
    pseudo-labels come from ``teacher(hidden rows)`` (a teacher that did not see them either), or,
    without one, are the shared ones. Folds are stratified by trusted label. ``part(name)`` gives
    the progress each fold's fits report to.
    """
    n = ts.n_trusted
    y = ts.hard[:n]
    fold = stratified_folds(y, folds, np.random.default_rng(cfg.seed))
    oof = np.zeros((n, ts.n_classes))
    records = []
    for f in range(folds):
        held = np.r_[fold == f, np.zeros(ts.train_rows.size - n, bool)]
        hidden = ts.train_rows[held]
        t0 = time.perf_counter()
        if teacher is not None:
            part(f"fold {f + 1}/{folds}: teacher").update()
        fold_set = refit(ts, hidden, teacher, cfg) if teacher is not None else ts.without(held)
        fit, _, _ = fit_rounds(part(f"fold {f + 1}/{folds}"), cfg, fold_set, x, device)
        oof[held[:n]] = predict_proba(fit.model, x[hidden], device=device)
        acc = float(np.mean(oof[held[:n]].argmax(1) == y[held[:n]]))
        records.append({"fold": f + 1, "n_val": int(held.sum()), "accuracy": round(acc, 6), "seconds": round(time.perf_counter() - t0, 2)})
    return oof, records


class FitPart:
    """Progress for one fit inside the stage's single bar: its epochs advance the bar, its fields are tagged with the part."""

    def __init__(self, bar, name: str, epochs: int):
        self._bar, self._name, self._epochs, self._done = bar, name, epochs, 0

    @contextmanager
    def task(self, description: str, total: int | None = None):
        self._done = 0
        yield self
        self._bar.advance(max(0, self._epochs - self._done))  # stopped early: the bar still counts the budget

    def advance(self, n: int = 1) -> None:
        self._done += n
        self._bar.advance(n)

    def update(self, **fields) -> None:
        shown = {key: v for key, v in fields.items() if not (isinstance(v, float) and math.isnan(v))}  # no hold-out: no val_* fields
        self._bar.update(part=self._name, **shown)

    def log(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class Distilled:
    """What :func:`distil` returns: the final fit and set, the rounds' records, the held-out metrics
    (``estimate``: holdout, crossfit or none), the folds' records, and the teacher's pseudo-label count."""

    fit: FitResult
    ts: TrainingSet
    rounds: list[dict[str, Any]]
    held_out: dict[str, Any]
    folds: list[dict[str, Any]]
    n_pseudo_teacher: int

    def counts(self) -> dict[str, Any]:
        """The summary's counts: trusted, pseudo-labeled (last round, and the teacher's), dropped, set aside, evaluated."""
        last = self.rounds[-1]
        return {"n_trusted": last["n_trusted"], "n_pseudo": last["n_pseudo"], "n_pseudo_teacher": self.n_pseudo_teacher,
                "n_dropped_issues": self.ts.frame.n_dropped_issues, "n_set_aside": last["n_set_aside"], "n_val": self.held_out["n_val"],
                "estimate": self.held_out["estimate"], "folds": self.held_out["folds"]}

    def outcome(self) -> dict[str, Any]:
        """The summary's training record: rounds, threshold, epochs and the held-out metrics."""
        last, held = self.rounds[-1], self.held_out
        return {"rounds": len(self.rounds), "accept_threshold": self.ts.frame.threshold, "epochs_run": last["epochs_run"],
                "best_epoch": last["best_epoch"], "stopped_early": last["stopped_early"], "val_accuracy": held["accuracy"],
                "val_macro_f1": held["macro_f1"], "val_ece": held["ece"]}

    def dynamics(self, ids: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
        """dynamics.parquet's columns, one row per training row of the final fit."""
        fit, ts = self.fit, self.ts
        return {"id": ids[ts.train_rows], "label": np.asarray(classes, dtype=object)[fit.target_labels],
                "confidence": fit.confidence.astype(np.float32), "variability": fit.variability.astype(np.float32),
                "correctness": fit.correctness.astype(np.float32), "is_pseudo": ts.is_pseudo, "set_aside": fit.set_aside,
                "view_confidence": fit.view_confidence.astype(np.float32)}


def distil(x: np.ndarray, ts: TrainingSet, classes: list[str], cfg, *, teacher: Teacher | None = None, progress, device: str) -> Distilled:
    """Train the student on ``ts`` (inputs ``x``, one row per samples row) and measure it.

    With a held-out part and a ``teacher``, the pseudo-labels are first recomputed without the
    held-out labels; without a held-out part, ``cfg.folds`` students are cross-fitted for the
    metrics (each with its own refit teacher when one is given), then the saved one is trained on
    everything.
    """
    folds = n_folds(cfg.folds, ts)
    first_pseudo = int(ts.is_pseudo.sum())
    fold_records: list[dict[str, Any]] = []
    with torch_threads(cfg.student, cfg.threads), progress.task("distill", total=(folds + 1) * cfg.rounds * cfg.epochs) as task:
        part = lambda name: FitPart(task, name, cfg.epochs)
        if folds:
            oof, fold_records = cross_fit(part, cfg, ts, x, device, folds, teacher)
        elif teacher is not None and ts.frame.val_rows.size:
            part("train: teacher").update()
            ts = refit(ts, ts.frame.val_rows, teacher, cfg)  # the held-out labels must not reach the student through its pseudo-labels
            first_pseudo = int(ts.is_pseudo.sum())
        fit, ts, rounds = fit_rounds(part("final" if folds else "train"), cfg, ts, x, device)
    if folds:
        held_out = {"estimate": "crossfit", "folds": folds, **held_out_metrics(oof, ts.hard[: ts.n_trusted], classes)}
    elif ts.frame.val_rows.size:
        probs = predict_proba(fit.model, x[ts.frame.val_rows], device=device)
        held_out = {"estimate": "holdout", "folds": None, **held_out_metrics(probs, ts.frame.val_labels, classes)}
    else:
        held_out = {"estimate": "none", "folds": None, **held_out_metrics(np.zeros((0, len(classes))), np.zeros(0, np.int64), classes)}
    return Distilled(fit, ts, rounds, held_out, fold_records, first_pseudo)
