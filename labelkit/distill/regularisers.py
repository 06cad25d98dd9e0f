"""The training loop's regularisers, one object each, with their own loss term or hook.

:func:`labelkit.distill.training.train_epoch` calls, for every :class:`Regulariser` in the list it
is given, in list order:

* :meth:`~Regulariser.view` on the labeled batch before the forward pass (FixMatch's weak view);
* :meth:`~Regulariser.loss` after the distillation loss, whose result is added to it (VAT's
  adversarial KL, FixMatch's consistency term); None adds nothing;
* :meth:`~Regulariser.after_step` after each optimiser step (the EMA of the weights);
* :meth:`~Regulariser.after_epoch` after each epoch's dynamics and validation (the label filter).

The order matters for reproducibility: every random draw comes from the fit's seeded generators,
in a fixed order (view, forward, VAT, consistency). FlexMatch's per-class thresholds are an object
of :mod:`labelkit.distill.fixmatch` that :class:`Consistency` consults and updates.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from labelkit.distill import fixmatch, vat

__all__ = ["EMA", "UNLABELED_RATIO", "VAT", "Consistency", "LabelFilterHook", "Regulariser", "index_stream"]

UNLABELED_RATIO = 2  # FixMatch's mu: unlabeled images per labeled one in a step (the paper's 7 costs 3x more on a CPU)


def index_stream(n: int, size: int, gen: torch.Generator):
    """Batches of ``size`` indices into range(n) from consecutive random permutations (an epoch may wrap)."""
    buf = torch.zeros(0, dtype=torch.int64)
    while True:
        while buf.numel() < size:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        yield buf[:size]
        buf = buf[size:]


class Regulariser:
    """No-op hooks; a regulariser overrides the ones it needs."""

    def view(self, xb: torch.Tensor) -> torch.Tensor:
        return xb

    def loss(self, model: nn.Module, xb: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        pass

    def after_epoch(self, scored: nn.Module, epoch: int) -> None:
        pass


class VAT(Regulariser):
    """Virtual adversarial training (:mod:`labelkit.distill.vat`): ``KL(p(x) || p(x + r_adv))`` per batch."""

    def __init__(self, eps: float, gen: torch.Generator):
        self.eps, self.gen = eps, gen

    def loss(self, model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return vat.vat_loss(model, xb, self.eps, self.gen)


class Consistency(Regulariser):
    """FixMatch (:mod:`labelkit.distill.fixmatch`): the labeled batch gets the weak view, and each step
    adds ``weight`` times the consistency loss on the next ``UNLABELED_RATIO * batch_size`` pool images.

    ``flex`` (FlexMatch's thresholds, or None for the fixed ``threshold``) is updated by the loss.
    ``confident`` collects each step's fraction of pool images above their threshold.
    """

    def __init__(self, pool: torch.Tensor, weight: float, threshold: float, flex: fixmatch.FlexMatchThresholds | None,
                 batches, gen: torch.Generator, device: str):
        self.pool, self.weight, self.threshold, self.flex = pool, weight, threshold, flex
        self.batches, self.gen, self.device = batches, gen, device
        self.confident: list[float] = []

    def view(self, xb: torch.Tensor) -> torch.Tensor:
        return fixmatch.weak_view(xb, self.gen)

    def loss(self, model: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        ui = next(self.batches)
        xu = self.pool[ui].to(self.device, non_blocking=True)
        lu, frac = fixmatch.consistency_loss(model, xu, self.gen, self.threshold, self.flex, ui.numpy())
        self.confident.append(float(frac))
        return self.weight * lu


class LabelFilterHook(Regulariser):
    """FixMatch's label filter (:class:`labelkit.distill.fixmatch.LabelFilter`) on the trusted rows of the
    training set: after each epoch, the trusted labels it sets aside get weight 0 in ``weights``
    (updated in place; the others get their given weight back)."""

    def __init__(self, images: torch.Tensor, hard: torch.Tensor, weights: torch.Tensor, n_classes: int, *,
                 start_epoch: int, seed: int, device: str, batch_size: int):
        self.trusted = torch.nonzero(hard >= 0).squeeze(1)
        self.filter = fixmatch.LabelFilter(images[self.trusted], hard[self.trusted], n_classes, start_epoch=start_epoch, seed=seed, device=device)
        self.weights, self.given, self.batch_size = weights, weights.clone(), batch_size

    def after_epoch(self, scored: nn.Module, epoch: int) -> None:
        if self.filter.update(scored, epoch, self.batch_size):
            self.weights.copy_(self.given)
            self.weights[self.trusted[~self.filter.keep]] = 0.0

    def set_aside(self) -> np.ndarray:
        """(n_trusted,) positions, among the training rows, of the labels set aside at the end."""
        return self.trusted.numpy()[~self.filter.keep.numpy()]


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


class EMA(Regulariser):
    """An exponential moving average of the weights (``decay``), updated after every step; ``average``
    is what the loop validates, keeps at the best epoch and returns."""

    def __init__(self, model: nn.Module, decay: float):
        self.average = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    def after_step(self, model: nn.Module, step: int) -> None:
        _ema_update(self.average, model, self.decay, step)


def filter_start(epochs: int) -> int:
    """The first epoch the label filter acts on: after ``FILTER_WARMUP`` of the epochs."""
    return math.ceil(fixmatch.FILTER_WARMUP * epochs)
