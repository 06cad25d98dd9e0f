"""Distillation targets and loss: softening, tempering, per-sample term and confidence weights.

:func:`_prepare_targets` turns (soft teacher probabilities, trusted hard labels, sample weights)
into the per-sample quantities :func:`distillation_loss` sums; the training loop calls both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labelkit._validation import check_labels
from labelkit.config import defaults
from labelkit.distill.train_config import TrainConfig
from labelkit.errors import BadInputError

__all__ = ["distillation_loss"]


def _temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row-wise: the teacher's distribution at temperature T (zero rows stay zero)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.log(p) / temperature
    m = np.max(logp, axis=1, keepdims=True)
    m[~np.isfinite(m)] = 0.0
    e = np.exp(logp - m)
    s = e.sum(axis=1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def _distillation_loss(logits, target_t, hard, a, b, w, temperature: float) -> torch.Tensor:
    """sum_i w_i (a_i T^2 KL(t_i^T || q_i^T) + b_i CE(y_i, q_i)) / sum_i w_i, in float32."""
    logits = logits.float()
    t = temperature
    logq_t = F.log_softmax(logits / t, dim=1)
    kl = (torch.xlogy(target_t, target_t) - target_t * logq_t).sum(dim=1) * (t * t)
    logq = F.log_softmax(logits, dim=1)
    ce = -logq.gather(1, hard.clamp_min(0).unsqueeze(1)).squeeze(1)
    per_sample = a * kl + b * ce
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


@dataclass(frozen=True)
class _Targets:
    tempered: np.ndarray  # (N, K) float32, zero rows where no soft target
    hard: np.ndarray  # (N,) int64, -1 = none
    a: np.ndarray  # (N,) weight of the KL term
    b: np.ndarray  # (N,) weight of the CE term
    w: np.ndarray  # (N,) sample weight
    label: np.ndarray  # (N,) label the dynamics follow


def _prepare_targets(soft, hard, sample_weight, n_classes: int, config: TrainConfig) -> _Targets:
    """Softening (FerKD), tempering (Hinton), term weights and confidence weights, per sample."""
    n = hard.shape[0]
    has_hard = hard >= 0
    if soft is None:
        soft = np.zeros((n, n_classes))
    soft = np.asarray(soft, dtype=np.float64)
    has_soft = soft.sum(axis=1) > 0
    teacher_conf = np.where(has_soft, soft.max(axis=1), 1.0)
    label = np.where(has_hard, hard, soft.argmax(axis=1)).astype(np.int64)
    # FerKD (Zhang et al. 2023): where the teacher is unsure of the sample's label (its trusted
    # label, or its own argmax for pseudo-labels), its soft label is unreliable; use a softened
    # one-hot of that label instead.
    conf_in_label = soft[np.arange(n), label]
    soften = has_soft & (conf_in_label < config.soften_below)
    if soften.any():
        eps = config.label_smoothing
        smoothed = np.full((int(soften.sum()), n_classes), eps / n_classes)
        smoothed[np.arange(smoothed.shape[0]), label[soften]] += 1.0 - eps
        soft = soft.copy()
        soft[soften] = smoothed
    tempered = _temper(soft, config.temperature).astype(np.float32)
    both = has_soft & has_hard
    a = np.where(both, config.alpha, has_soft.astype(np.float64))
    b = np.where(both, 1.0 - config.alpha, has_hard.astype(np.float64))
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).copy()
    if config.confidence_weighting:
        # Reliability weights for pseudo-labels (Soft Teacher, Xu et al. 2021): trust ~ confidence.
        w = w * np.where(has_hard, 1.0, teacher_conf)
    return _Targets(tempered, hard.astype(np.int64), a.astype(np.float32), b.astype(np.float32),
                    w.astype(np.float32), label)


def _check_soft(soft, n: int, n_classes: int | None, name: str = "soft") -> np.ndarray:
    arr = np.asarray(soft)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise BadInputError(f"'{name}' must have shape ({n}, n_classes). Got {arr.shape} instead.")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise BadInputError(f"'{name}' must have {n_classes} columns. Got {arr.shape[1]} instead.")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise BadInputError(f"'{name}' contains NaN or infinite values; use a row of zeros for 'no soft target'.")
    if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise BadInputError(f"'{name}' must lie in [0, 1]. Got range [{arr.min():.4g}, {arr.max():.4g}] instead.")
    sums = arr.sum(axis=1)
    bad = ~((np.abs(sums - 1) <= 1e-3) | (sums == 0))
    if bad.any():
        raise BadInputError(
            f"'{name}' rows must sum to 1 (or be all zeros for 'no soft target'). "
            f"Row {int(np.flatnonzero(bad)[0])} sums to {sums[bad][0]:.4g}."
        )
    return np.clip(arr, 0.0, 1.0)


def distillation_loss(
    logits: torch.Tensor,
    soft,
    labels,
    *,
    temperature: float = defaults("distill").temperature,
    alpha: float = defaults("distill").alpha,
    sample_weight=None,
) -> torch.Tensor:
    """Knowledge-distillation loss: T²-scaled KL on soft targets plus cross-entropy on hard labels.

    For sample i with tempered teacher distribution t_i^T = softmax(log t_i / T) and student
    q_i^T = softmax(z_i / T):

        L = sum_i w_i [a_i T² KL(t_i^T || q_i^T) + b_i CE(y_i, softmax(z_i))] / sum_i w_i

    with (a_i, b_i) = (alpha, 1 - alpha) when both a soft target and a hard label exist, (1, 0)
    with only a soft target, (0, 1) with only a hard label. This is the exact loss
    :func:`fit_student` minimises, without its target softening and confidence weighting.

    Parameters
    ----------
    logits : Tensor of shape (n_samples, n_classes)
        Student logits z.
    soft : array-like of shape (n_samples, n_classes)
        Teacher probabilities; a row of zeros means "no soft target".
    labels : array-like of shape (n_samples,)
        Trusted hard labels, -1 where there is none.
    temperature : float, default: the distill stage's ``temperature``
    alpha : float, default: the distill stage's ``alpha``
    sample_weight : array-like of shape (n_samples,), default=None

    Returns
    -------
    loss : Tensor of shape ()

    References
    ----------
    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS DL workshop 2015.

    Examples
    --------
    >>> z = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(float(distillation_loss(z, [[0.0, 0.0, 0.0]], [0], temperature=1.0)), 4)  # CE only
    0.2395
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise BadInputError("'logits' must be a 2-D torch.Tensor (n_samples, n_classes).")
    n, n_classes = logits.shape
    hard = check_labels(labels, n_classes=n_classes)
    if hard.shape[0] != n:
        raise BadInputError(f"'labels' must have length {n}. Got {hard.shape[0]} instead.")
    cfg = TrainConfig(temperature=temperature, alpha=alpha, confidence_weighting=False, soften_below=0.0)
    tg = _prepare_targets(_check_soft(soft, n, n_classes), hard, _check_weight(sample_weight, n), n_classes, cfg)
    dev = logits.device
    return _distillation_loss(
        logits, *(torch.from_numpy(v).to(dev) for v in (tg.tempered, tg.hard, tg.a, tg.b, tg.w)), temperature
    )


def _check_weight(sample_weight, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise BadInputError(f"'sample_weight' must have shape ({n},). Got {w.shape} instead.")
    if not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
        raise BadInputError("'sample_weight' must be finite and >= 0.")
    return w
