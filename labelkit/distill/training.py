"""The training loop: :func:`fit_student` (distillation, early stopping, training dynamics).

:func:`fit_student` validates its inputs; the loop is composed of :func:`train_epoch` (one pass of
optimiser steps), :func:`record_dynamics` and :func:`evaluate` (after each epoch), the regularisers
of :mod:`labelkit.distill.regularisers` (each with its own loss term or hook) and early stopping.

Loss (see :func:`distillation_loss`): T²-scaled KL at temperature T on soft targets plus
cross-entropy on trusted hard labels, per-sample weighted. Before training:

* FerKD-style softening: a soft target whose probability of the sample's label (the trusted
  label, else its own argmax) is below ``config.soften_below`` is replaced by
  ``(1 - eps) onehot(label) + eps / K`` (``eps = config.label_smoothing``).
* Confidence weighting (``config.confidence_weighting``): pseudo-labeled samples (soft target,
  no hard label) are weighted by the teacher's confidence max_k t_ik, times ``sample_weight``.

With ``config.fixmatch > 0`` (image students) each step also adds FixMatch's consistency term
on a batch from the ``unlabeled`` images plus the training ones (:mod:`labelkit.distill.fixmatch`),
and with ``config.label_filter`` trusted labels that the student contradicts on strong views of
their image are set aside (trained on as unlabeled images) once ``FILTER_WARMUP`` of the epochs
have run, re-checked every epoch (:class:`~labelkit.distill.fixmatch.LabelFilter`).

AdamW with a per-step cosine schedule from ``config.lr`` to 0 over ``config.epochs``. Early
stopping on the validation cross-entropy with ``config.patience``; the best epoch's weights are
kept. Seeded and deterministic on CPU: initialisation, data order and dropout masks come from
generators seeded with ``seed`` (global RNG state is neither read nor changed). On CUDA,
``config.amp`` enables mixed precision (results may vary at the last bits there).

Training dynamics (Swayamdipta et al. 2020) are recorded for every training sample: after each
epoch the model (eval mode) gives p(target label | x_i); ``confidence`` is its mean over epochs,
``variability`` its standard deviation, ``correctness`` the fraction of epochs whose argmax is
the target label.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelkit._progress import NULL, Progress
from labelkit._validation import check_labels
from labelkit.device import resolve_device
from labelkit.distill import fixmatch, vat
from labelkit.distill.inference import _batched_logits
from labelkit.distill.regularisers import (
    EMA,
    UNLABELED_RATIO,
    VAT,
    Consistency,
    LabelFilterHook,
    Regulariser,
    filter_start,
    index_stream,
)
from labelkit.distill.students import (
    STUDENTS,
    _attach_generator,
    _set_standardize,
    build_student,
    init_weights,
)
from labelkit.distill.targets import (
    _check_soft,
    _check_weight,
    _distillation_loss,
    _prepare_targets,
)
from labelkit.distill.train_config import TrainConfig, student_config
from labelkit.errors import BadInputError

__all__ = ["FitResult", "fit_student"]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_student` returns.

    Attributes
    ----------
    model : torch.nn.Module
        The student with the best epoch's weights (their moving average with ``config.ema``), in
        eval mode, on the training device.
    student_config : dict
        JSON-able config for :func:`build_student` (save it next to ``student_state(model)``).
    train_loss, val_loss, val_acc : ndarray of shape (n_epochs_run,)
        Per-epoch training loss (weighted mean of the distillation loss), validation
        cross-entropy and accuracy (NaN when there is no validation set).
    best_epoch : int
        0-based index into the curves of the epoch whose weights were kept.
    stopped_early : bool
        True when patience ran out before ``config.epochs``.
    val_indices : ndarray of shape (n_val,)
        Rows of ``x`` held out for validation (empty when ``val`` was given or none were held out).
    target_labels : ndarray of shape (n_samples,)
        The label the dynamics follow: the trusted label, else the argmax of the soft target.
    confidence, variability, correctness : ndarray of shape (n_samples,)
        Training dynamics (Swayamdipta et al. 2020): mean and std over epochs of the model's
        probability of ``target_labels`` at the end of each epoch, and the fraction of epochs
        whose argmax equals it. NaN for held-out validation rows.
    set_aside : ndarray of shape (n_samples,)
        True for the trusted labels the FixMatch label filter had set aside at the end
        (``config.label_filter``); all False without it.
    view_confidence : ndarray of shape (n_samples,)
        The label filter's evidence: the running average of the student's probability of the
        trusted label over strong views of the image. NaN where it was not measured.
    seconds : float
        Wall time of the fit.
    """

    model: nn.Module
    student_config: dict
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    best_epoch: int
    stopped_early: bool
    val_indices: np.ndarray
    target_labels: np.ndarray
    confidence: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray
    set_aside: np.ndarray
    view_confidence: np.ndarray
    seconds: float = field(default=0.0)


def _amp_dtype(device: str, enabled: bool) -> torch.dtype | None:
    if not (enabled and device.startswith("cuda")):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16



def _check_x(x, arch: str, name: str = "x") -> np.ndarray:
    arr = np.asarray(x)
    want = STUDENTS[arch].input_ndim
    if arr.ndim != want:
        shape = "(n_samples, dim)" if want == 2 else "(n_samples, channels, height, width)"
        raise BadInputError(f"'{name}' must be {want}-D {shape} for architecture {arch!r}. Got shape {arr.shape} instead.")
    if want == 4 and (arr.shape[2] < 4 or arr.shape[3] < 4):
        raise BadInputError(f"'{name}' images must be at least 4x4. Got {arr.shape[2]}x{arr.shape[3]} instead.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadInputError(f"'{name}' contains NaN or infinite values.")
    return arr


def fit_student(
    x,
    labels,
    soft=None,
    *,
    config: TrainConfig = TrainConfig(),
    sample_weight=None,
    val: tuple[Any, Any] | None = None,
    unlabeled=None,
    progress: Progress | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> FitResult:
    """Train a student on trusted hard labels and teacher soft targets (knowledge distillation).

    The loss, the regularisers and the loop are described in the module docstring
    (:mod:`labelkit.distill.training`).

    Parameters
    ----------
    x : ndarray of shape (n_samples, dim), or (n_samples, channels, height, width) for ``cnn`` and ``finetune``
        Inputs (embeddings, or image tensors), float.
    labels : ndarray of shape (n_samples,)
        Trusted hard labels, -1 where the sample has only a soft target.
    soft : ndarray of shape (n_samples, n_classes), default=None
        Teacher probabilities (e.g. pseudo-labels' ``top_probs``); a row of zeros means "none".
        None: hard labels only, and then ``n_classes = labels.max() + 1``.
    config : TrainConfig, default=TrainConfig()
    sample_weight : ndarray of shape (n_samples,), default=None
        Non-negative per-sample weights.
    val : tuple (x_val, labels_val), default=None
        Explicit validation set for early stopping (hard labels). None: hold out
        ``config.val_fraction`` of the trusted samples of ``x``.
    unlabeled : ndarray of shape (n_unlabeled, channels, height, width), default=None
        Images without a target, for the FixMatch term (``config.fixmatch > 0``); the training
        images join them in the pool it draws from. Ignored when ``config.fixmatch`` is 0.
    progress : Progress, default=None
        None reports nothing. Otherwise reports a ``"distill"`` task with ``total=config.epochs``, one advance per epoch and
        ``loss``, ``val_loss``, ``val_acc`` fields.
    seed : int, default=0
    device : str, default="cpu"
        "cpu", "cuda[:n]" or "auto".

    Returns
    -------
    result : FitResult

    References
    ----------
    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    Zhang, Shen, Xing, "FerKD: Surgical Label Adaptation for Efficient Distillation", ICCV 2023.
    Xu et al., "End-to-End Semi-Supervised Object Detection with Soft Teacher", ICCV 2021.
    Swayamdipta et al., "Dataset Cartography: Mapping and Diagnosing Datasets with Training
    Dynamics", EMNLP 2020.
    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
    Confidence", NeurIPS 2020.
    Loshchilov, Hutter, "Decoupled Weight Decay Regularization" (AdamW) and "SGDR" (cosine), 2019/2017.

    Examples
    --------
    >>> from labelkit.distill import predict_proba
    >>> x = np.array([[-2.0, 0.0], [-1.0, 0.5], [1.0, 0.0], [2.0, 0.5]], dtype=np.float32)
    >>> r = fit_student(x, np.array([0, 0, 1, 1]), config=TrainConfig(architecture="linear", epochs=30, lr=0.1))
    >>> predict_proba(r.model, x).argmax(1).tolist()
    [0, 0, 1, 1]
    """
    if not isinstance(config, TrainConfig):
        raise BadInputError(f"'config' must be a TrainConfig. Got {type(config).__name__} instead.")
    x, hard, soft, n_classes, weight = _check_targets(x, labels, soft, sample_weight, config.architecture)
    val = _check_val(val, x, n_classes, config.architecture)
    if config.fixmatch > 0 and unlabeled is not None:
        unlabeled = _check_x(unlabeled, config.architecture, name="unlabeled")
        if unlabeled.shape[1:] != x.shape[1:]:
            raise BadInputError(f"'unlabeled' images must have the shape of x's, {x.shape[1:]}. Got {unlabeled.shape[1:]} instead.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError(f"'seed' must be an int >= 0. Got {seed!r} instead.")
    device = resolve_device(device)
    progress = NULL if progress is None else progress
    data = _Data(x, hard, soft, n_classes, weight, val, unlabeled if config.fixmatch > 0 else None)
    return _fit_impl(data, config, progress=progress, seed=int(seed), device=device)


@dataclass(frozen=True)
class _Data:
    """fit_student's checked arrays."""

    x: np.ndarray
    hard: np.ndarray
    soft: np.ndarray | None
    n_classes: int
    weight: np.ndarray | None
    val: tuple[np.ndarray, np.ndarray] | None
    unlabeled: np.ndarray | None


def _check_targets(x, labels, soft, sample_weight, arch: str):
    """(x, hard labels, soft targets or None, n_classes, sample weights or None), checked against each other."""
    x = _check_x(x, arch)
    n = x.shape[0]
    if soft is not None:
        soft = np.asarray(soft)
        n_classes = soft.shape[1] if soft.ndim == 2 else None
        hard = check_labels(labels, n_classes=n_classes)
        soft = _check_soft(soft, n, n_classes)
    else:
        hard = check_labels(labels)
        if hard.size == 0 or hard.max() < 0:
            raise BadInputError("'labels' has no labeled sample and no 'soft' targets were given; nothing to train on.")
        n_classes = int(hard.max()) + 1
    if hard.shape[0] != n:
        raise BadInputError(f"'labels' must have length {n} (rows of x). Got {hard.shape[0]} instead.")
    if n_classes < 2:
        raise BadInputError(f"'n_classes' must be >= 2. Got {n_classes} instead.")
    weight = _check_weight(sample_weight, n)
    no_target = (hard < 0) & (np.zeros(n, bool) if soft is None else soft.sum(axis=1) == 0)
    if no_target.any():
        raise BadInputError(
            f"{int(no_target.sum())} samples have neither a hard label nor a soft target "
            f"(first: row {int(np.flatnonzero(no_target)[0])}); drop them or give them a target."
        )
    return x, hard, soft, n_classes, weight


def _check_val(val, x: np.ndarray, n_classes: int, arch: str):
    """The explicit validation set (x_val, labels_val), checked; None stays None."""
    if val is None:
        return None
    if not (isinstance(val, tuple) and len(val) == 2):
        raise BadInputError("'val' must be a tuple (x_val, labels_val).")
    x_val = _check_x(val[0], arch, name="val[0]")
    y_val = check_labels(val[1], n_classes=n_classes, allow_unlabeled=False, name="val[1]")
    if x_val.shape[1:] != x.shape[1:] or y_val.shape[0] != x_val.shape[0]:
        raise BadInputError(f"'val' must hold x_val of shape (m, {', '.join(map(str, x.shape[1:]))}) and labels (m,).")
    return x_val, y_val


@dataclass
class _Fit:
    """One fit's state: the model being trained, what is scored (it, or its EMA), the optimiser and
    the generators (``gen`` on CPU for data order, ``dev_gen`` on the device for dropout and views)."""

    model: nn.Module
    scored: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: str
    gen: torch.Generator
    dev_gen: torch.Generator
    steps: int = 0  # optimiser steps taken so far

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)


TARGET_FIELDS = ("tempered", "hard", "a", "b", "w")  # the per-row tensors the loss reads, in its argument order


def train_epoch(fit: _Fit, x_train: torch.Tensor, tg: dict[str, torch.Tensor], batches, regs: list[Regulariser], temperature: float) -> float:
    """One pass over ``batches`` (index tensors into ``x_train``): distillation loss plus each
    regulariser's term, one optimiser step per batch. Returns the weighted mean training loss."""
    fit.model.train()
    tot, wsum = 0.0, 0.0
    for bi in batches:
        xb = x_train[bi].to(fit.device, non_blocking=True)
        batch = [tg[name][bi].to(fit.device, non_blocking=True) for name in TARGET_FIELDS]
        for r in regs:
            xb = r.view(xb)
        with fit.autocast():
            logits = fit.model(xb)
        loss = _distillation_loss(logits, *batch, temperature)
        for r in regs:
            with fit.autocast():
                term = r.loss(fit.model, xb)
            if term is not None:
                loss = loss + term
        fit.opt.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.opt)
        fit.scaler.update()
        fit.sched.step()
        for r in regs:
            r.after_step(fit.model, fit.steps)
        fit.steps += 1
        bw = float(batch[-1].sum())
        tot += float(loss.detach()) * bw
        wsum += bw
    return tot / max(wsum, 1e-12)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str) -> tuple[float, float]:
    """(cross-entropy, accuracy) of ``model`` (eval mode) on ``x`` against hard labels ``y``."""
    logits = _batched_logits(model, x, batch_size, device)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def record_dynamics(model: nn.Module, x: torch.Tensor, label: torch.Tensor, batch_size: int, device: str) -> np.ndarray:
    """(2, n): p(label | x) and whether the argmax is the label, for each row at the end of an epoch
    (dataset cartography, Swayamdipta et al. 2020)."""
    probs = torch.softmax(_batched_logits(model, x, batch_size, device), dim=1)
    p_label = probs.gather(1, label.unsqueeze(1)).squeeze(1)
    return torch.stack([p_label, (probs.argmax(1) == label).float()]).numpy()


def _split_validation(x: np.ndarray, hard: np.ndarray, val, val_fraction: float, gen: torch.Generator):
    """(validation rows of x (empty when ``val`` is given or none are held out), the validation set or None)."""
    val_idx = np.zeros(0, dtype=np.int64)
    if val is None:
        trusted = np.flatnonzero(hard >= 0)
        n_val = int(round(val_fraction * trusted.size))
        if n_val >= 1 and trusted.size - n_val >= 1:
            perm = torch.randperm(trusted.size, generator=gen).numpy()
            val_idx = np.sort(trusted[perm[:n_val]])
            val = (x[val_idx], hard[val_idx])
    return val_idx, val


def _new_fit(model: nn.Module, config: TrainConfig, total_steps: int, gen: torch.Generator, seed: int, device: str) -> _Fit:
    """AdamW (no decay on biases and norms) with a per-step cosine schedule to 0, AMP on CUDA."""
    model.to(device)
    dev_gen = torch.Generator(device=device).manual_seed(seed)  # attached to the dropout layers once the EMA copy is made
    decay = [p for name, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in model.named_parameters() if p.ndim <= 1]  # biases, norms
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    amp_dtype = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return _Fit(model, model, opt, sched, scaler, amp_dtype, device, gen, dev_gen)


def _regularisers(fit: _Fit, config: TrainConfig, x_train: torch.Tensor, tg, unlabeled, n_classes: int, eps: float, seed: int) -> list[Regulariser]:
    """The fit's regularisers, in the order their random draws are made: VAT, FixMatch's consistency, EMA, the label filter."""
    regs: list[Regulariser] = []
    if eps > 0:
        regs.append(VAT(eps, fit.dev_gen))
    if config.fixmatch > 0:  # the unlabeled images and the training ones (their labels unused here)
        pool = x_train if unlabeled is None or unlabeled.shape[0] == 0 else torch.cat([x_train, torch.from_numpy(unlabeled)])
        flex = fixmatch.FlexMatchThresholds(pool.shape[0], n_classes, config.fixmatch_threshold) if config.fixmatch_rule == "flexmatch" else None
        batches = index_stream(pool.shape[0], UNLABELED_RATIO * config.batch_size, fit.gen)
        regs.append(Consistency(pool, config.fixmatch, config.fixmatch_threshold, flex, batches, fit.dev_gen, fit.device))
    if config.ema > 0:
        ema = EMA(fit.model, config.ema)
        fit.scored = ema.average
        regs.append(ema)
    if config.fixmatch > 0 and config.label_filter:
        regs.append(LabelFilterHook(x_train, tg["hard"], tg["w"], n_classes, start_epoch=filter_start(config.epochs), seed=seed + 1,
                                    device=fit.device, batch_size=max(config.batch_size, 1024)))
    return regs


def _steps_per_epoch(n_train: int, config: TrainConfig, n_pool: int) -> int:
    """A pass over the training rows, or (FixMatch) over the pool if that takes more steps."""
    steps = max(1, math.ceil(n_train / config.batch_size))
    if config.fixmatch > 0:
        steps = max(steps, math.ceil(n_pool / (UNLABELED_RATIO * config.batch_size)))
    return steps


def _epoch_batches(n_train: int, batch_size: int, steps: int, labeled_batches, gen: torch.Generator) -> list[torch.Tensor]:
    if labeled_batches is None:  # one pass over the training rows
        perm = torch.randperm(n_train, generator=gen)
        return [perm[s : s + batch_size] for s in range(0, n_train, batch_size)]
    return [next(labeled_batches) for _ in range(steps)]  # FixMatch: labeled batches cycle while the pool is passed over


class _EarlyStopping:
    """Keeps the state of the epoch with the lowest validation loss; ``stop`` once ``patience`` epochs
    have not improved on it. Without validation every epoch is the best and the last one is kept."""

    def __init__(self, patience: int, validated: bool):
        self.patience, self.validated = patience, validated
        self.loss, self.epoch, self.state = math.inf, -1, None

    def stop(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        if not self.validated:
            self.loss, self.epoch = math.nan, epoch
        elif val_loss < self.loss:
            self.loss, self.epoch, self.state = val_loss, epoch, {key: v.detach().clone() for key, v in model.state_dict().items()}
        elif epoch - self.epoch >= self.patience:
            return True
        return False


def _fit_impl(data: _Data, config: TrainConfig, *, progress: Progress, seed: int, device: str) -> FitResult:
    """Unchecked :func:`fit_student`: set up, then epochs of train_epoch, record_dynamics, evaluate and the hooks."""
    t0 = time.perf_counter()
    x, hard, n_classes, unlabeled = data.x, data.hard, data.n_classes, data.unlabeled
    gen = torch.Generator().manual_seed(seed)
    targets = _prepare_targets(data.soft, hard, data.weight, n_classes, config)
    val_idx, val = _split_validation(x, hard, data.val, config.val_fraction, gen)
    train_idx = np.setdiff1d(np.arange(x.shape[0]), val_idx)
    x_train = torch.from_numpy(x)[torch.from_numpy(train_idx)]
    tg = {name: torch.from_numpy(getattr(targets, name)[train_idx]) for name in TARGET_FIELDS}
    student_cfg = student_config(config, x.shape[1:], n_classes)
    model = build_student(student_cfg)
    init_weights(model, gen)
    _set_standardize(model, x[train_idx])
    eps = vat.radius(model, x[train_idx], config.vat, gen) if config.vat > 0 else 0.0
    n_pool = train_idx.size + (0 if unlabeled is None else unlabeled.shape[0])
    steps = _steps_per_epoch(train_idx.size, config, n_pool)
    fit = _new_fit(model, config, config.epochs * steps, gen, seed, device)
    regs = _regularisers(fit, config, x_train, tg, unlabeled, n_classes, eps, seed)
    _attach_generator(model, fit.dev_gen)
    curves = _train(fit, config, x_train, tg, targets.label[train_idx], val, regs, steps, progress)
    _attach_generator(model, None)
    stopping = curves.pop("stopping")
    if stopping.state is not None:
        fit.scored.load_state_dict(stopping.state)
    fit.scored.eval()
    return _result(fit.scored, student_cfg, curves, stopping, regs, targets.label, train_idx, val_idx, t0)


def _train(fit: _Fit, config: TrainConfig, x_train, tg, label_train: np.ndarray, val, regs, steps: int, progress) -> dict:
    """The epochs: train, record dynamics, validate, run the epoch hooks, report, stop early."""
    eval_bs = max(config.batch_size, 1024)
    label_t = torch.from_numpy(label_train)
    xv, yv = (torch.from_numpy(val[0]), torch.from_numpy(val[1])) if val is not None else (None, None)
    labeled_batches = index_stream(x_train.shape[0], config.batch_size, fit.gen) if config.fixmatch > 0 else None
    consistency = next((r for r in regs if isinstance(r, Consistency)), None)
    stopping = _EarlyStopping(config.patience, val is not None)
    curves: dict[str, list] = {"train_loss": [], "val_loss": [], "val_acc": [], "dyn": []}
    stopped_early = False
    with progress.task("distill", total=config.epochs) as task:
        for epoch in range(config.epochs):
            if consistency is not None:
                consistency.confident = []
            batches = _epoch_batches(x_train.shape[0], config.batch_size, steps, labeled_batches, fit.gen)
            curves["train_loss"].append(train_epoch(fit, x_train, tg, batches, regs, config.temperature))
            curves["dyn"].append(record_dynamics(fit.scored, x_train, label_t, eval_bs, fit.device))
            vl, va = evaluate(fit.scored, xv, yv, eval_bs, fit.device) if val is not None else (math.nan, math.nan)
            for r in regs:
                r.after_epoch(fit.scored, epoch)
            curves["val_loss"].append(vl)
            curves["val_acc"].append(va)
            task.advance()
            confident = {"confident": float(np.mean(consistency.confident))} if consistency is not None and consistency.confident else {}
            task.update(loss=curves["train_loss"][-1], val_loss=vl, val_acc=va, **confident)
            if stopping.stop(epoch, vl, fit.scored):
                stopped_early = epoch + 1 < config.epochs
                break
    return {**curves, "stopping": stopping, "stopped_early": stopped_early}


def _result(model, student_cfg, curves, stopping, regs, label, train_idx, val_idx, t0) -> FitResult:
    """The FitResult: curves, per-row dynamics (NaN for validation rows) and the label filter's verdicts."""
    n = label.shape[0]
    dyn = np.stack(curves["dyn"])  # (E, 2, n_train)
    confidence, variability, correctness = (np.full(n, np.nan) for _ in range(3))
    confidence[train_idx] = dyn[:, 0].mean(axis=0)
    variability[train_idx] = dyn[:, 0].std(axis=0)
    correctness[train_idx] = dyn[:, 1].mean(axis=0)
    set_aside = np.zeros(n, dtype=bool)
    view_confidence = np.full(n, np.nan)
    label_filter = next((r for r in regs if isinstance(r, LabelFilterHook)), None)
    if label_filter is not None:
        set_aside[train_idx[label_filter.set_aside()]] = True
        view_confidence[train_idx[label_filter.trusted.numpy()]] = label_filter.filter.agreement()
    best_epoch = stopping.epoch if stopping.epoch >= 0 else len(curves["train_loss"]) - 1  # val loss never finite: keep the last
    return FitResult(
        model=model,
        student_config=student_cfg,
        train_loss=np.asarray(curves["train_loss"]),
        val_loss=np.asarray(curves["val_loss"]),
        val_acc=np.asarray(curves["val_acc"]),
        best_epoch=int(best_epoch),
        stopped_early=curves["stopped_early"],
        val_indices=val_idx,
        target_labels=label,
        confidence=confidence,
        variability=variability,
        correctness=correctness,
        set_aside=set_aside,
        view_confidence=view_confidence,
        seconds=time.perf_counter() - t0,
    )
