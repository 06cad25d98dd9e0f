"""The training loop: :func:`fit_student` (distillation, early stopping, training dynamics)."""

from __future__ import annotations

import contextlib
import copy
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
from labelkit.distill.students import STUDENTS, _attach_generator, _set_standardize, build_student, init_weights
from labelkit.distill.targets import _check_soft, _check_weight, _distillation_loss, _prepare_targets
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
    x = _check_x(x, config.architecture)
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
    if val is not None:
        if not (isinstance(val, tuple) and len(val) == 2):
            raise BadInputError("'val' must be a tuple (x_val, labels_val).")
        x_val = _check_x(val[0], config.architecture, name="val[0]")
        y_val = check_labels(val[1], n_classes=n_classes, allow_unlabeled=False, name="val[1]")
        if x_val.shape[1:] != x.shape[1:] or y_val.shape[0] != x_val.shape[0]:
            raise BadInputError(f"'val' must hold x_val of shape (m, {', '.join(map(str, x.shape[1:]))}) and labels (m,).")
        val = (x_val, y_val)
    if config.fixmatch > 0 and unlabeled is not None:
        unlabeled = _check_x(unlabeled, config.architecture, name="unlabeled")
        if unlabeled.shape[1:] != x.shape[1:]:
            raise BadInputError(f"'unlabeled' images must have the shape of x's, {x.shape[1:]}. Got {unlabeled.shape[1:]} instead.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError(f"'seed' must be an int >= 0. Got {seed!r} instead.")
    device = resolve_device(device)
    progress = NULL if progress is None else progress
    return _fit_impl(x, hard, soft, n_classes, config, weight, val, unlabeled if config.fixmatch > 0 else None, progress, int(seed), device)


UNLABELED_RATIO = 2  # FixMatch's mu: unlabeled images per labeled one in a step (the paper's 7 costs 3x more on a CPU)


def _index_stream(n: int, size: int, gen: torch.Generator):
    """Batches of ``size`` indices into range(n) from consecutive random permutations (an epoch may wrap)."""
    buf = torch.zeros(0, dtype=torch.int64)
    while True:
        while buf.numel() < size:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        yield buf[:size]
        buf = buf[size:]


def _ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model for the parameters, d = min(decay, (1 + step) / (10 + step));
    buffers (batch-norm statistics) copied.

    The warm-up keeps the average close to the live weights early on: at 0.999 it would otherwise
    need thousands of steps to leave the random initialisation, and a short fit (or one stopped
    early) would return, and validate, a model whose weights do not match its batch-norm statistics.
    """
    decay = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


def _fit_impl(x, hard, soft, n_classes, config, weight, val, unlabeled, progress, seed, device) -> FitResult:
    """Unchecked :func:`fit_student`."""
    t0 = time.perf_counter()
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    targets = _prepare_targets(soft, hard, weight, n_classes, config)

    # Validation split: a random part of the trusted labels, or the caller's set.
    val_idx = np.zeros(0, dtype=np.int64)
    if val is None:
        trusted = np.flatnonzero(hard >= 0)
        n_val = int(round(config.val_fraction * trusted.size))
        if n_val >= 1 and trusted.size - n_val >= 1:
            perm = torch.randperm(trusted.size, generator=gen).numpy()
            val_idx = np.sort(trusted[perm[:n_val]])
            val = (x[val_idx], hard[val_idx])
        else:
            val = None
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    n_train = train_idx.size

    x_t = torch.from_numpy(x)
    x_train = x_t[torch.from_numpy(train_idx)]
    tg = {k: torch.from_numpy(getattr(targets, k)[train_idx]) for k in ("tempered", "hard", "a", "b", "w")}
    if val is not None:
        xv, yv = torch.from_numpy(val[0]), torch.from_numpy(val[1])

    cfg = student_config(config, x.shape[1:], n_classes)
    model = build_student(cfg)
    init_weights(model, gen)
    _set_standardize(model, x[train_idx])
    eps = vat.radius(model, x[train_idx], config.vat, gen) if config.vat > 0 else 0.0
    model.to(device)
    # The weights' exponential moving average is what gets scored, kept and returned (FixMatch's EMA).
    ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema > 0 else None
    scored = model if ema is None else ema
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    _attach_generator(model, dev_gen)

    decay = [p for name, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in model.named_parameters() if p.ndim <= 1]  # biases, norms
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    pool = None
    if config.fixmatch > 0:  # the unlabeled images and the training ones (their labels unused here)
        pool = x_train if unlabeled is None or unlabeled.shape[0] == 0 else torch.cat([x_train, torch.from_numpy(unlabeled)])
        pool_batches = _index_stream(pool.shape[0], UNLABELED_RATIO * config.batch_size, gen)
        flex = fixmatch.FlexMatchThresholds(pool.shape[0], n_classes, config.fixmatch_threshold) if config.fixmatch_rule == "flexmatch" else None
    label_filter = None
    if pool is not None and config.label_filter:
        trusted_train = torch.nonzero(tg["hard"] >= 0).squeeze(1)
        label_filter = fixmatch.LabelFilter(x_train[trusted_train], tg["hard"][trusted_train], n_classes,
                                            start_epoch=math.ceil(fixmatch.FILTER_WARMUP * config.epochs), seed=seed + 1, device=device)
        weight_given = tg["w"].clone()
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    if pool is not None:
        steps_per_epoch = max(steps_per_epoch, math.ceil(pool.shape[0] / (UNLABELED_RATIO * config.batch_size)))
    total_steps = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    amp_dtype = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=amp_dtype)

    train_loss, val_loss, val_acc, dyn = [], [], [], []
    best = (math.inf, -1, None)  # (val loss, epoch, state)
    stopped_early = False
    label_train = torch.from_numpy(targets.label[train_idx])
    eval_bs = max(config.batch_size, 1024)
    labeled_batches = _index_stream(n_train, config.batch_size, gen) if pool is not None else None
    n_steps = 0
    with progress.task("distill", total=config.epochs) as task:
        for epoch in range(config.epochs):
            model.train()
            if labeled_batches is None:  # one pass over the training rows
                perm = torch.randperm(n_train, generator=gen)
                epoch_batches = [perm[s : s + config.batch_size] for s in range(0, n_train, config.batch_size)]
            else:  # FixMatch: labeled batches cycle while the pool is passed over
                epoch_batches = [next(labeled_batches) for _ in range(steps_per_epoch)]
            tot, wsum, masked = 0.0, 0.0, []
            for bi in epoch_batches:
                xb = x_train[bi].to(device, non_blocking=True)
                batch = [tg[k][bi].to(device, non_blocking=True) for k in ("tempered", "hard", "a", "b", "w")]
                if pool is not None:
                    xb = fixmatch.weak_view(xb, dev_gen)
                with autocast():
                    logits = model(xb)
                loss = _distillation_loss(logits, *batch, config.temperature)
                if eps > 0:
                    with autocast():
                        loss = loss + vat.vat_loss(model, xb, eps, dev_gen)
                if pool is not None:
                    ui = next(pool_batches)
                    xu = pool[ui].to(device, non_blocking=True)
                    with autocast():
                        lu, frac = fixmatch.consistency_loss(model, xu, dev_gen, config.fixmatch_threshold, flex, ui.numpy())
                    loss = loss + config.fixmatch * lu
                    masked.append(float(frac))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if ema is not None:
                    _ema_update(ema, model, config.ema, n_steps)
                n_steps += 1
                bw = float(batch[-1].sum())
                tot += float(loss.detach()) * bw
                wsum += bw
            train_loss.append(tot / max(wsum, 1e-12))

            # Dataset cartography: p(label | x) for each training sample at the end of the epoch.
            probs = torch.softmax(_batched_logits(scored, x_train, eval_bs, device), dim=1)
            p_label = probs.gather(1, label_train.unsqueeze(1)).squeeze(1)
            dyn.append(torch.stack([p_label, (probs.argmax(1) == label_train).float()]).numpy())

            if val is not None:
                vlog = _batched_logits(scored, xv, eval_bs, device)
                vl = float(F.cross_entropy(vlog, yv))
                va = float((vlog.argmax(1) == yv).float().mean())
            else:
                vl, va = math.nan, math.nan
            if label_filter is not None and label_filter.update(scored, epoch, eval_bs):
                tg["w"] = weight_given.clone()
                tg["w"][trusted_train[~label_filter.keep]] = 0.0
            val_loss.append(vl)
            val_acc.append(va)
            task.advance()
            task.update(loss=train_loss[-1], val_loss=vl, val_acc=va, **({"confident": float(np.mean(masked))} if masked else {}))

            if val is None:
                best = (math.nan, epoch, None)
            elif vl < best[0]:
                best = (vl, epoch, {k: v.detach().clone() for k, v in scored.state_dict().items()})
            elif epoch - best[1] >= config.patience:
                stopped_early = epoch + 1 < config.epochs
                break

    _attach_generator(model, None)
    model = scored
    if best[2] is not None:
        model.load_state_dict(best[2])
    best_epoch = best[1] if best[1] >= 0 else len(train_loss) - 1  # val loss never finite: keep the last
    model.eval()

    dyn_arr = np.stack(dyn)  # (E, 2, n_train)
    confidence = np.full(n, np.nan)
    variability = np.full(n, np.nan)
    correctness = np.full(n, np.nan)
    confidence[train_idx] = dyn_arr[:, 0].mean(axis=0)
    variability[train_idx] = dyn_arr[:, 0].std(axis=0)
    correctness[train_idx] = dyn_arr[:, 1].mean(axis=0)
    set_aside = np.zeros(n, dtype=bool)
    view_confidence = np.full(n, np.nan)
    if label_filter is not None:
        rows = train_idx[trusted_train.numpy()]
        set_aside[rows[~label_filter.keep.numpy()]] = True
        view_confidence[rows] = label_filter.agreement()
    return FitResult(
        model=model,
        student_config=cfg,
        train_loss=np.asarray(train_loss),
        val_loss=np.asarray(val_loss),
        val_acc=np.asarray(val_acc),
        best_epoch=int(best_epoch),
        stopped_early=stopped_early,
        val_indices=val_idx,
        target_labels=targets.label,
        confidence=confidence,
        variability=variability,
        correctness=correctness,
        set_aside=set_aside,
        view_confidence=view_confidence,
        seconds=time.perf_counter() - t0,
    )
