"""distill: train a student on the trusted labels plus the pseudo-labels; write student/.

Trusted = the given labels minus those detect-noise flagged (unless ``--keep-issues``); a random
``val_fraction`` of them is held out for early stopping and the metrics ("holdout"). When that part
would be too small to stop on (fewer than 20 labels, or 2 per class), nothing is held out: the
student trains for the full epoch budget and the metrics are estimated by K-fold cross-fitting
("crossfit"): K students, each trained on everything but one fold of the trusted labels (the
pseudo-labels stay in every training set), predict their own fold; the student that is saved is
trained on everything. Pseudo-labeled = the unlabeled samples with a pseudo-label, with
their soft label (top_labels/top_probs); by default every pseudo-label, not only the accepted ones,
each weighted by its confidence. The compute is :func:`labelkit.distill.fit_student`; this
module assembles its inputs, runs the self-training rounds and the cross-fitting, and writes the
student folder atomically (built beside it, then swapped in).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import __version__, artifacts, health
from labelkit._probability import topk_to_dense
from labelkit.config import DistillConfig
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.errors import BadInputError, DependencyError
from labelkit.folds import stratified_folds
from labelkit.stages import pipeline
from labelkit.stages._common import RunContext, StageResult, input_warnings, now, prepare_samples, stale_reason

STAGE = "distill"
STUDENT = "student"  # the output folder in the workspace
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
DYNAMICS_FILE = "dynamics.parquet"
ONNX_FILE = "model.onnx"
FORMAT = "labelkit-student"
FORMAT_VERSION = 1
DEFAULT_ACCEPT = 0.95  # self-training acceptance when pseudolabels.parquet records no confidence threshold
ECE_BINS = 15
IMAGE_STUDENTS = ("cnn", "finetune")  # trained end to end on pixels, not on the embeddings
# cnn inputs: images resized to a square side between these (their largest side, clipped).
CNN_MIN_SIDE, CNN_MAX_SIDE = 8, 64
FINETUNE_SIDE = 224  # EfficientNet-Lite0's training resolution
MIN_HELD_OUT = 20  # fewer held-out labels than this (or 2 per class): no hold-out, no early stopping
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def run(ctx: RunContext, cfg: DistillConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws = ctx.ws
    samples, samples_fp = prepare_samples(ws, ctx.dcfg)
    samples.require_labels(STAGE)
    if samples.n_labeled == 0:
        raise BadInputError(f"{STAGE} needs labeled samples: none of the {len(samples.table)} samples has a label")
    if cfg.student in IMAGE_STUDENTS and samples.kind != "image":
        raise BadInputError(f"--student {cfg.student} trains on image pixels, but DATA holds {samples.kind}; use --student mlp or linear")
    if cfg.fixmatch > 0 and cfg.student not in IMAGE_STUDENTS:
        raise BadInputError(f"--fixmatch augments images: use --student cnn or finetune (got --student {cfg.student})")
    if cfg.onnx:
        _require_onnx()
    upstream = pipeline.ensure(ctx, "embed")
    if not cfg.keep_issues:
        upstream += pipeline.ensure(ctx, "detect-noise")
    if cfg.use_pseudolabels:
        upstream += pipeline.ensure(ctx, "pseudolabel")
    inputs = {artifacts.SAMPLES: samples_fp, artifacts.EMBEDDINGS: ws.fingerprint(artifacts.EMBEDDINGS) or ""}
    if not cfg.keep_issues:
        inputs[artifacts.LABEL_ISSUES] = ws.fingerprint(artifacts.LABEL_ISSUES) or ""
    if cfg.use_pseudolabels:
        inputs[artifacts.PSEUDOLABELS] = ws.fingerprint(artifacts.PSEUDOLABELS) or ""
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force)
    if reason is None:
        res = StageResult(STAGE, skipped=True, reason="up to date", outputs=[STUDENT], upstream=upstream)
        res.summary = _read_json(ws.path(STUDENT) / METRICS_FILE).get("summary", {})
        return res

    summary = _distill(ctx, cfg, samples)
    ws.commit(STAGE, params=cfg.result_params(), params_fp=cfg.fingerprint(), inputs=inputs, outputs=[STUDENT], started=started)
    summary["wall_time_s"] = round(now() - started, 2)
    return StageResult(STAGE, reason=reason, summary=summary, outputs=[STUDENT], upstream=upstream)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise DependencyError("--onnx needs the 'onnx' package; install it with 'pip install onnx onnxruntime'") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# -- the training set -----------------------------------------------------------------------


@dataclass
class TrainingSet:
    """Rows (positions in samples order) and targets for fit_student, plus the held-out part."""

    train_rows: np.ndarray  # (n,) samples rows trained on
    hard: np.ndarray  # (n,) int64: trusted label; for pseudo-labeled rows -1 (soft) or their label (--hard)
    soft: np.ndarray  # (n, K) soft targets, zero rows = none
    weight: np.ndarray | None  # (n,) sample weights (hard pseudo-labels weighted by confidence)
    is_pseudo: np.ndarray  # (n,) bool
    val_rows: np.ndarray  # (m,) held-out trusted rows
    val_labels: np.ndarray  # (m,) int64
    unlabeled_rows: np.ndarray  # every unlabeled row with an input: self-training candidates
    n_dropped_issues: int
    threshold: float  # confidence a self-training round accepts at
    codes: np.ndarray  # (N,) given label codes of every samples row, -1 = unlabeled

    @property
    def n_trusted(self) -> int:
        return int((~self.is_pseudo).sum())

    def without(self, drop: np.ndarray) -> "TrainingSet":
        """This set minus the training rows where ``drop`` (n,) is True (trusted rows stay first)."""
        keep = ~drop
        return replace(self, train_rows=self.train_rows[keep], hard=self.hard[keep], soft=self.soft[keep],
                       weight=None if self.weight is None else self.weight[keep], is_pseudo=self.is_pseudo[keep])


def _issue_ids(ctx: RunContext) -> set[str]:
    path = artifacts.require(ctx.ws.path(artifacts.LABEL_ISSUES), f"labelkit detect-noise {ctx.ws.data}")
    t = artifacts.read_table(path, columns=["id", "is_issue"]).to_pandas()
    return set(t.loc[t["is_issue"].astype(bool), "id"].astype(str))


def acceptance_threshold(metadata: dict[str, Any]) -> float:
    """The confidence a self-training round accepts at: the pseudolabel stage's own, else 0.95.

    pseudolabels.parquet's ``params`` hold ``threshold_rule`` and ``threshold``; the value is a
    confidence for the ``fixed`` and ``flexmatch`` rules (flexmatch's per-class scaling is not
    replayed: its base tau is used). A ``margin`` or a ``top_per_class`` count is not a
    confidence, so those rules give the default 0.95.
    """
    params = metadata.get("params")
    if isinstance(params, dict):
        rule, value = params.get("threshold_rule", "fixed"), params.get("threshold")
        if rule in ("fixed", "flexmatch") and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return DEFAULT_ACCEPT


def _pseudolabels(ctx: RunContext, samples: Samples) -> tuple[pa.Table, dict[str, Any]]:
    path = artifacts.require(ctx.ws.path(artifacts.PSEUDOLABELS), f"labelkit pseudolabel {ctx.ws.data}")
    cols = ["id", "label", "confidence", "accepted", "top_labels", "top_probs"]
    try:
        names = pq.read_schema(path).names
        missing = [c for c in cols if c not in names]
        if missing:
            raise BadInputError(f"{path.name}: missing column '{missing[0]}'; rerun 'labelkit pseudolabel {ctx.ws.data} --force'")
        t = artifacts.read_table(path, columns=[c for c in cols if c != "label"])  # the label is top_labels[0]: not read
    except (OSError, pa.ArrowInvalid) as e:
        raise BadInputError(f"{path.name}: cannot read ({e}); rerun 'labelkit pseudolabel {ctx.ws.data} --force'") from None
    return t, artifacts.read_metadata(path)


def _soft_matrix(t: pa.Table, classes: list[str]) -> np.ndarray:
    """(n, K) soft labels from the rows' top_labels/top_probs (renormalised over the classes kept)."""
    import pyarrow.compute as pc

    labels, probs = (t.column(c).combine_chunks() for c in ("top_labels", "top_probs"))
    lengths = [pc.list_value_length(a).fill_null(0).to_numpy(zero_copy_only=False) for a in (labels, probs)]
    if not np.array_equal(*lengths):
        raise BadInputError("pseudolabels.parquet: top_labels and top_probs differ in length; rerun 'labelkit pseudolabel --force'")
    flat = labels.flatten().to_numpy(zero_copy_only=False).astype(str)
    p = probs.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    cols = pd.Index(classes).get_indexer(flat)
    if (cols < 0).any():
        raise BadInputError(f"pseudolabels.parquet names class '{flat[cols < 0][0]}', which is not among the dataset's classes; rerun 'labelkit pseudolabel --force'")
    rows = pc.list_parent_indices(labels).to_numpy()
    return topk_to_dense(t.num_rows, len(classes), rows, cols, p)


def min_held_out(n_classes: int) -> int:
    """Fewest held-out labels worth early stopping on: 20, and 2 per class."""
    return max(MIN_HELD_OUT, 2 * n_classes)


def build_training_set(ctx: RunContext, cfg: DistillConfig, samples: Samples, has_input: np.ndarray) -> TrainingSet:
    """Trusted rows (minus flagged issues), the held-out split, and the accepted pseudo-labels."""
    codes = samples.label_codes()
    ids = samples.table["id"].astype(str).to_numpy()
    labeled = (codes >= 0) & has_input
    dropped = np.zeros(len(ids), dtype=bool)
    if not cfg.keep_issues:
        dropped = labeled & np.isin(ids, list(_issue_ids(ctx)))
    trusted = np.flatnonzero(labeled & ~dropped)
    if trusted.size == 0:
        raise BadInputError(f"no trusted labels left: detect-noise flagged all {int(dropped.sum())} labeled samples; use --keep-issues to train on them")
    rng = np.random.default_rng(cfg.seed)
    n_val = int(round(cfg.val_fraction * trusted.size))
    if n_val < min_held_out(len(samples.classes)) or n_val >= trusted.size:
        n_val = 0  # too few to stop on (a handful of possibly noisy labels stops training at random): cross-fit the metrics instead
    perm = rng.permutation(trusted.size)
    val_rows = np.sort(trusted[perm[:n_val]])
    fit_trusted = np.sort(trusted[perm[n_val:]])
    unlabeled = np.flatnonzero((codes < 0) & has_input)
    k = len(samples.classes)

    threshold = DEFAULT_ACCEPT
    pseudo_rows = np.zeros(0, dtype=np.int64)
    pseudo_soft = np.zeros((0, k))
    pseudo_conf = np.zeros(0)
    if cfg.use_pseudolabels:
        t, meta = _pseudolabels(ctx, samples)
        threshold = acceptance_threshold(meta)
        pos = pd.Index(t.column("id").to_numpy(zero_copy_only=False).astype(str)).get_indexer(ids)  # samples row -> pseudolabels row (-1: none)
        accepted = np.zeros(len(ids), dtype=bool)
        taken = np.ones(t.num_rows, bool) if cfg.pseudolabels == "all" else t.column("accepted").to_numpy(zero_copy_only=False).astype(bool)
        accepted[pos >= 0] = taken[pos[pos >= 0]]
        pseudo_rows = np.flatnonzero(accepted & (codes < 0) & has_input)
        chosen = t.take(pa.array(pos[pseudo_rows]))
        pseudo_soft = _soft_matrix(chosen, samples.classes)
        pseudo_conf = chosen.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64)
    return _assemble(cfg, codes, k, fit_trusted, pseudo_rows, pseudo_soft, pseudo_conf, val_rows, unlabeled, int(dropped.sum()), threshold)


def _assemble(cfg, codes, k, trusted, pseudo_rows, pseudo_soft, pseudo_conf, val_rows, unlabeled, n_dropped, threshold) -> TrainingSet:
    """Targets for fit_student: trusted labels (cross-entropy), and soft pseudo-labels (KL) or their
    argmax weighted by confidence (--hard). Trusted rows have no soft label: alpha does not apply."""
    rows = np.concatenate([trusted, pseudo_rows]).astype(np.int64)
    is_pseudo = np.r_[np.zeros(trusted.size, bool), np.ones(pseudo_rows.size, bool)]
    if cfg.soft:
        hard = np.r_[codes[trusted], np.full(pseudo_rows.size, -1)].astype(np.int64)
        soft = np.vstack([np.zeros((trusted.size, k)), pseudo_soft])
        weight = None  # fit_student weights soft-only rows by their confidence (config.confidence_weighting)
    else:
        hard = np.r_[codes[trusted], pseudo_soft.argmax(axis=1) if pseudo_rows.size else []].astype(np.int64)
        soft = np.zeros((rows.size, k))  # none, but it fixes n_classes to K
        weight = np.r_[np.ones(trusted.size), pseudo_conf] if cfg.confidence_weighting else None
    return TrainingSet(rows, hard, soft, weight, is_pseudo, val_rows, codes[val_rows], unlabeled, n_dropped, threshold, codes)


# -- inputs: embeddings or pixels -----------------------------------------------------------


def pixel_spec(root: Path, sources: list[str], n: int = 32, *, student: str = "cnn", size: int = 0) -> dict[str, Any]:
    """How an image student reads images: grayscale or RGB, and one square side (``size``, else
    from the first readable images for cnn, 224 for finetune, which always reads RGB)."""
    from PIL import Image

    sides, modes = [], []
    for src in sources:
        try:
            with Image.open(root / src) as img:
                sides.append(max(img.size))
                modes.append(img.mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # too large: skipped as in embed
            continue
        if len(sides) >= n:
            break
    if not sides:
        raise BadInputError(f"--student {student}: none of the images could be read")
    if student == "finetune":
        side, mode = size or FINETUNE_SIDE, "RGB"
    else:
        side = size or int(min(CNN_MAX_SIDE, max(CNN_MIN_SIDE, max(sides))))
        mode = "L" if all(m in GRAY_MODES for m in modes) else "RGB"
    return {"kind": "pixels", "mode": mode, "channels": 1 if mode == "L" else 3, "size": [side, side], "resample": "bilinear", "scale": "x / 255"}


def load_pixels(paths: list[str], spec: dict[str, Any], progress=None, description: str = "load images") -> tuple[np.ndarray, np.ndarray]:
    """(pixels (n_ok, C, H, W) float32 in [0, 1], ok mask (n,)) for the images at ``paths``."""
    from PIL import Image

    from labelkit._progress import NULL
    from labelkit.embedders import open_image

    progress = NULL if progress is None else progress
    h, w = spec["size"]
    out = np.zeros((len(paths), spec["channels"], h, w), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    with progress.task(description, total=len(paths)) as task:
        for i, p in enumerate(paths):
            try:
                img = open_image(p, spec["mode"])
            except (OSError, ValueError):
                task.advance()
                continue
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            ok[i] = True
            task.advance()
    return out[ok], ok


def _inputs(ctx: RunContext, cfg: DistillConfig, samples: Samples) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """(x for every samples row (zeros where none), has_input mask, input spec, embedder spec)."""
    from labelkit.stages.embed import read_embeddings

    emb_ids, vecs, meta = read_embeddings(ctx.ws)
    pos = pd.Index(emb_ids).get_indexer(samples.table["id"])
    has = pos >= 0
    embedder = {k: meta.get(k) for k in ("model", "dim", "preprocessing", "normalized")}
    embedder["params"] = meta.get("params", {})
    if cfg.student not in IMAGE_STUDENTS:
        x = np.zeros((len(pos), vecs.shape[1]), dtype=np.float32)
        x[has] = vecs[pos[has]]
        return x, has, {"kind": "embedding", "dim": int(vecs.shape[1]), "normalized": "l2"}, embedder
    root = ctx.ws.data
    sources = samples.table["source"].tolist()
    spec = pixel_spec(root, [s for s, h in zip(sources, has) if h], student=cfg.student, size=cfg.image_size)
    rows = np.flatnonzero(has)
    px, ok = load_pixels([str(root / sources[r]) for r in rows], spec, ctx.progress)
    x = np.zeros((len(pos), spec["channels"], *spec["size"]), dtype=np.float32)
    x[rows[ok]] = px
    has = np.zeros(len(pos), dtype=bool)
    has[rows[ok]] = True
    return x, has, spec, embedder


# -- training -------------------------------------------------------------------------------


def train_config(cfg: DistillConfig):
    from labelkit.distill import TrainConfig

    return TrainConfig(
        architecture=cfg.student, hidden=cfg.hidden, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, temperature=cfg.temperature, alpha=cfg.alpha, confidence_weighting=cfg.confidence_weighting,
        soften_below=cfg.soften_below, val_fraction=0.0, patience=cfg.patience, vat=cfg.vat,
        fixmatch=cfg.fixmatch, fixmatch_threshold=cfg.fixmatch_threshold, fixmatch_rule=cfg.fixmatch_rule, label_filter=cfg.label_filter, ema=cfg.ema,
    )


def _self_training(ts: TrainingSet, probs: np.ndarray, cfg: DistillConfig) -> TrainingSet:
    """The next round's set: the student's probabilities on the unlabeled rows replace the teacher's.

    With ``pseudolabels = "all"`` every unlabeled row is taken (weighted by the student's confidence),
    else those where it reaches the pseudo-labels' own threshold; the trusted rows and the held-out
    split stay as they were.
    """
    conf = probs.max(axis=1) if probs.size else np.zeros(0)
    accepted = conf >= (0.0 if cfg.pseudolabels == "all" else ts.threshold)
    p = probs[accepted].astype(np.float64)
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    n = ts.n_trusted
    return _assemble(cfg, ts.codes, probs.shape[1], ts.train_rows[:n], ts.unlabeled_rows[accepted], p, conf[accepted],
                     ts.val_rows, ts.unlabeled_rows, ts.n_dropped_issues, ts.threshold)


def _fit_rounds(progress, cfg: DistillConfig, ts: TrainingSet, x: np.ndarray, n_classes: int, device: str):
    """Round 1 learns from the teacher; each further round from the previous student (self-training)."""
    from labelkit.distill import fit_student, predict_proba

    tc = train_config(cfg)
    val = (x[ts.val_rows], ts.val_labels) if ts.val_rows.size else None
    rounds = []
    fit = None
    for r in range(cfg.rounds):
        if r > 0:
            unl = ts.unlabeled_rows
            probs = predict_proba(fit.model, x[unl], device=device) if unl.size else np.zeros((0, n_classes))
            ts = _self_training(ts, probs, cfg)
        unlabeled = x[ts.unlabeled_rows] if cfg.fixmatch > 0 else None
        fit = fit_student(x[ts.train_rows], ts.hard, ts.soft, config=tc, sample_weight=ts.weight, val=val, unlabeled=unlabeled,
                          progress=progress, seed=cfg.seed + r, device=device)
        rounds.append(_round_record(r, ts, fit))
    return fit, ts, rounds


def _round_record(r: int, ts: TrainingSet, fit) -> dict[str, Any]:
    finite = lambda a: [None if not np.isfinite(v) else round(float(v), 6) for v in a]  # noqa: E731
    return {
        "round": r + 1,
        "n_trusted": int((~ts.is_pseudo).sum()),
        "n_set_aside": int(fit.set_aside.sum()),
        "n_pseudo": int(ts.is_pseudo.sum()),
        "epochs_run": int(fit.train_loss.size),
        "best_epoch": int(fit.best_epoch) + 1,
        "stopped_early": bool(fit.stopped_early),
        "val_accuracy": None if not np.isfinite(fit.val_acc[fit.best_epoch]) else round(float(fit.val_acc[fit.best_epoch]), 6),
        "curve": {"train_loss": finite(fit.train_loss), "val_loss": finite(fit.val_loss), "val_accuracy": finite(fit.val_acc)},
        "seconds": round(fit.seconds, 2),
    }


def _metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE (15 bins) and per-class accuracy of ``probs`` against ``y`` (None without labels)."""
    from labelkit.metrics import accuracy, expected_calibration_error, macro_f1, per_class_accuracy

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


def _n_folds(cfg: DistillConfig, ts: TrainingSet) -> int:
    """Cross-fitting folds: only without a held-out part, at most one per trusted label; 0 = none."""
    k = min(cfg.folds, ts.n_trusted) if ts.val_rows.size == 0 else 0
    return k if k >= 2 else 0


def _cross_fit(part, cfg: DistillConfig, ts: TrainingSet, x: np.ndarray, n_classes: int, device: str, n_folds: int, teacher=None):
    """Out-of-fold probabilities (n_trusted, K) of the trusted rows, and per-fold records.

    Fold f's student runs the whole procedure (every self-training round, the fixed epoch budget)
    on the training set minus fold f's trusted rows, so it never sees their labels. Its
    pseudo-labels come from ``teacher(hidden rows)`` (a teacher that did not see them either), or,
    without one, are the shared ones. Folds are stratified by trusted label. ``part(name)`` gives
    the progress each fold's fits report to.
    """
    from labelkit.distill import predict_proba

    n = ts.n_trusted
    y = ts.hard[:n]
    folds = stratified_folds(y, n_folds, np.random.default_rng(cfg.seed))
    oof = np.zeros((n, n_classes))
    records = []
    for f in range(n_folds):
        held = np.r_[folds == f, np.zeros(ts.train_rows.size - n, bool)]
        hidden = ts.train_rows[held]
        t0 = time.perf_counter()
        if teacher is not None:
            part(f"fold {f + 1}/{n_folds}: teacher").update()
        fold_set = teacher(hidden) if teacher is not None else ts.without(held)
        fit, _, _ = _fit_rounds(part(f"fold {f + 1}/{n_folds}"), cfg, fold_set, x, n_classes, device)
        oof[held[:n]] = predict_proba(fit.model, x[hidden], device=device)
        acc = float(np.mean(oof[held[:n]].argmax(1) == y[held[:n]]))
        records.append({"fold": f + 1, "n_val": int(held.sum()), "accuracy": round(acc, 6), "seconds": round(time.perf_counter() - t0, 2)})
    return oof, records


def _teacher_note(ctx: RunContext, cfg: DistillConfig, evaluated: int) -> str:
    """"refit" when the metrics' labels get a teacher of their own, else why the shared one is used."""
    from labelkit.stages.pseudolabel import replay_configs

    if not cfg.use_pseudolabels or not evaluated:
        return "shared"
    if not cfg.refit_teacher:
        return "shared (--shared-teacher)"
    why = replay_configs(ctx.ws)
    return f"shared ({why})" if isinstance(why, str) else "refit"


def _refit_teacher(ctx: RunContext, cfg: DistillConfig, samples: Samples, ts: TrainingSet, has_input: np.ndarray):
    """``teacher(hidden rows) -> TrainingSet``: ``ts`` minus those trusted rows, with pseudo-labels
    recomputed by the prototype and pseudolabel stages' recipe without their labels."""
    from labelkit.stages.pseudolabel import Relabeler

    relabel = Relabeler(ctx.ws, samples)
    ids = samples.table["id"].astype(str).to_numpy()
    n = ts.n_trusted

    def teacher(hidden: np.ndarray) -> TrainingSet:
        rel = relabel(ids[hidden])
        pos = pd.Index(rel.ids).get_indexer(ids)  # samples row -> relabeled row (-1: none)
        taken = np.ones(len(rel.ids), bool) if cfg.pseudolabels == "all" else rel.accepted
        chosen = np.zeros(len(ids), dtype=bool)
        chosen[pos >= 0] = taken[pos[pos >= 0]]
        rows = np.flatnonzero(chosen & (ts.codes < 0) & has_input)
        trusted = ts.train_rows[:n]
        return _assemble(cfg, ts.codes, ts.soft.shape[1], trusted[~np.isin(trusted, hidden)], rows, rel.soft[pos[rows]],
                         rel.confidence[pos[rows]], ts.val_rows, ts.unlabeled_rows, ts.n_dropped_issues, ts.threshold)

    return teacher


class _FitPart:
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
        shown = {k: v for k, v in fields.items() if not (isinstance(v, float) and math.isnan(v))}  # no hold-out: no val_* fields
        self._bar.update(part=self._name, **shown)

    def log(self, message: str) -> None:
        pass


@contextmanager
def _torch_threads(cfg: DistillConfig):
    """CPU threads for the fits (``cfg.threads``, 0 = 1 for mlp/linear), restored afterwards.

    Measured on the 2-core shared machine: fitting the default mlp on 900 x 64 for 100 epochs took
    11 s with one thread and 56 s with two.
    """
    import torch

    before = torch.get_num_threads()
    n = cfg.threads or (before if cfg.student in IMAGE_STUDENTS else 1)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _distill(ctx: RunContext, cfg: DistillConfig, samples: Samples) -> dict[str, Any]:
    from labelkit.distill import predict_proba

    device = resolve_device(cfg.device)
    x, has_input, input_spec, embedder = _inputs(ctx, cfg, samples)
    ts = build_training_set(ctx, cfg, samples, has_input)
    first_pseudo = int(ts.is_pseudo.sum())
    classes = list(samples.classes)
    n_folds = _n_folds(cfg, ts)
    fold_records: list[dict[str, Any]] = []
    teacher_note = _teacher_note(ctx, cfg, n_folds or ts.val_rows.size)
    teacher = _refit_teacher(ctx, cfg, samples, ts, has_input) if teacher_note == "refit" else None
    with _torch_threads(cfg), ctx.progress.task(STAGE, total=(n_folds + 1) * cfg.rounds * cfg.epochs) as task:
        part = lambda name: _FitPart(task, name, cfg.epochs)  # noqa: E731
        if n_folds:
            oof, fold_records = _cross_fit(part, cfg, ts, x, len(classes), device, n_folds, teacher)
        elif teacher is not None:
            part("train: teacher").update()
            ts = teacher(ts.val_rows)  # the held-out labels must not reach the student through its pseudo-labels
            first_pseudo = int(ts.is_pseudo.sum())
        fit, ts, rounds = _fit_rounds(part("final" if n_folds else "train"), cfg, ts, x, len(classes), device)
    if n_folds:
        held_out = {"estimate": "crossfit", "folds": n_folds, **_metrics(oof, ts.hard[: ts.n_trusted], classes)}
    elif ts.val_rows.size:
        held_out = {"estimate": "holdout", "folds": None, **_metrics(predict_proba(fit.model, x[ts.val_rows], device=device), ts.val_labels, classes)}
    else:
        held_out = {"estimate": "none", "folds": None, **_metrics(np.zeros((0, len(classes))), np.zeros(0, np.int64), classes)}
    ids = samples.table["id"].astype(str).to_numpy()
    last = rounds[-1]
    summary = {
        "student": cfg.student,
        "device": device,
        "embedder": embedder["model"],
        "n_classes": len(classes),
        "n_trusted": last["n_trusted"],
        "n_pseudo": last["n_pseudo"],
        "n_pseudo_teacher": first_pseudo,
        "n_dropped_issues": ts.n_dropped_issues,
        "n_set_aside": last["n_set_aside"],
        "n_val": held_out["n_val"],
        "estimate": held_out["estimate"],
        "folds": held_out["folds"],
        "teacher": teacher_note,
        "rounds": cfg.rounds,
        "accept_threshold": ts.threshold,
        "epochs_run": last["epochs_run"],
        "best_epoch": last["best_epoch"],
        "stopped_early": last["stopped_early"],
        "val_accuracy": held_out["accuracy"],
        "val_macro_f1": held_out["macro_f1"],
        "val_ece": held_out["ece"],
        "model_dir": str(ctx.ws.path(STUDENT)),
        "onnx": cfg.onnx,
    }
    summary["warnings"] = input_warnings(samples, health.student(held_out["accuracy"], held_out["ece"], len(classes)))
    metrics = {**held_out, "teacher": teacher_note, "n_trusted": last["n_trusted"], "n_pseudo": last["n_pseudo"], "n_dropped_issues": ts.n_dropped_issues,
               "n_set_aside": last["n_set_aside"], "set_aside": ids[ts.train_rows[fit.set_aside]].tolist(), "crossfit": fold_records, "rounds": rounds, "summary": summary}
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "labelkit_version": __version__,
        "architecture": cfg.student, "student_config": fit.student_config, "classes": classes,
        "input": input_spec, "embedder": embedder, "train_params": cfg.result_params(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dyn = pd.DataFrame({
        "id": ids[ts.train_rows],
        "label": np.asarray(classes, dtype=object)[fit.target_labels],
        "confidence": fit.confidence.astype(np.float32),
        "variability": fit.variability.astype(np.float32),
        "correctness": fit.correctness.astype(np.float32),
        "is_pseudo": ts.is_pseudo,
        "set_aside": fit.set_aside,
        "view_confidence": fit.view_confidence.astype(np.float32),
    })
    _write_student(ctx.ws.path(STUDENT), fit.model, config, metrics, dyn, x.shape[1:] if cfg.onnx else None)
    return summary


DYNAMICS_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float32()), ("variability", pa.float32()),
                             ("correctness", pa.float32()), ("is_pseudo", pa.bool_()),
                             ("set_aside", pa.bool_()), ("view_confidence", pa.float32())])


def _write_student(dest: Path, model, config: dict, metrics: dict, dynamics: pd.DataFrame, onnx_shape: tuple[int, ...] | None) -> None:
    """Build the folder beside ``dest``, then swap it in: a crash leaves the previous student whole."""
    from safetensors.torch import save_file

    from labelkit.distill import student_state

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        save_file(student_state(model), str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        table = pa.Table.from_pandas(dynamics, schema=DYNAMICS_SCHEMA, preserve_index=False)
        artifacts.write_table(tmp / DYNAMICS_FILE, table, {"reference": "Swayamdipta et al. 2020, dataset cartography"})
        if onnx_shape is not None:
            from labelkit.onnx_export import export_onnx

            export_onnx(model, tmp / ONNX_FILE, onnx_shape[0] if len(onnx_shape) == 1 else tuple(int(s) for s in onnx_shape))
        # mkdtemp/mkstemp make owner-only entries; a student is meant to be shipped and read by others.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, dest: Path) -> None:
    """Rename the old folder away, the new one in, then delete the old one."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
