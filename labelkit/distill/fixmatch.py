"""FixMatch consistency for image students: weak and strong augmentations, and the unlabeled loss.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020: the student labels a weakly augmented view of each unlabeled image, and where it
is at least ``threshold`` confident that label becomes the cross-entropy target of a strongly
augmented view of the same image. The augmentations are batched tensor ops (one affine warp,
a contrast/brightness jitter, a cutout square), drawn from a seeded generator on the images'
device. There is no horizontal flip: it changes the class of digits and text.

:class:`LabelFilter` uses the same strong views to set aside trusted labels the student keeps
contradicting (after Nguyen et al., "SELF: Learning to Filter Noisy Labels with Self-Ensembling",
ICLR 2020): a student memorises a wrong label on the image itself within a few steps, but its
predictions on strong views of that image follow the image's neighbours in the pool.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from labelkit.thresholds import flexmatch_class_thresholds

__all__ = ["weak_view", "strong_view", "consistency_loss", "FlexMatchThresholds", "LabelFilter"]

WEAK_SHIFT = 0.125  # FixMatch's weak view: translation by up to 12.5 % of the side
STRONG_ROTATE, STRONG_SCALE, STRONG_SHEAR, STRONG_SHIFT = 20.0, 0.15, 0.2, 0.15
JITTER = 0.4  # brightness offset in [-0.2, 0.2]; contrast factor in [0.6, 1.4]
CUTOUT = 0.5  # largest side of the cutout square, as a fraction of the image side (FixMatch: up to 0.5)
FILTER_VIEWS = 4  # strong views of each trusted image per epoch
FILTER_DECAY = 0.7  # running average of their probabilities across epochs
FILTER_WARMUP = 0.2  # share of the epochs before the filter acts: the student must first learn the pool
FILTER_MAX_SHARE = 0.25  # a student contradicting more of the labels than this is not yet a judge of them


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _affine(x: torch.Tensor, gen: torch.Generator, rotate: float, scale: float, shear: float, shift: float) -> torch.Tensor:
    """Random affine warps of (N, C, H, W) images; the border pixels extend outward (no black frame)."""
    n, dev = x.shape[0], x.device
    a = _uniform(n, -rotate, rotate, gen, dev) * (math.pi / 180)
    s = _uniform(n, 1 - scale, 1 + scale, gen, dev)
    sh = _uniform(n, -shear, shear, gen, dev)
    tx, ty = 2 * _uniform(n, -shift, shift, gen, dev), 2 * _uniform(n, -shift, shift, gen, dev)  # grid units: [-1, 1]
    c, si = torch.cos(a), torch.sin(a)
    theta = torch.stack([torch.stack([c / s, (sh - si) / s, tx], 1), torch.stack([si / s, c / s, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def weak_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images in [0, 1] translated by up to 12.5 % of their side."""
    return _affine(x, gen, 0.0, 0.0, 0.0, WEAK_SHIFT)


def strong_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images in [0, 1] rotated, scaled, sheared and shifted, contrast- and brightness-jittered,
    with a gray square of random size (up to ``CUTOUT`` of the side) cut out at a random place."""
    n, _, h, w = x.shape
    dev = x.device
    x = _affine(x, gen, STRONG_ROTATE, STRONG_SCALE, STRONG_SHEAR, STRONG_SHIFT)
    contrast = _uniform(n, 1 - JITTER, 1 + JITTER, gen, dev).view(n, 1, 1, 1)
    brightness = _uniform(n, -JITTER / 2, JITTER / 2, gen, dev).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    side = _uniform(n, 0.0, CUTOUT, gen, dev).view(n, 1, 1)  # as RandAugment's cutout: a random size
    cy = _uniform(n, 0.0, h, gen, dev).view(n, 1, 1)
    cx = _uniform(n, 0.0, w, gen, dev).view(n, 1, 1)
    rows = torch.arange(h, device=dev).view(1, h, 1) + 0.5  # pixel centres
    cols = torch.arange(w, device=dev).view(1, 1, w) + 0.5
    hole = ((rows - cy).abs() < side * h / 2) & ((cols - cx).abs() < side * w / 2)
    return x.masked_fill(hole.unsqueeze(1), 0.5)


class FlexMatchThresholds:
    """FlexMatch's per-class thresholds during training (Zhang et al. 2021): each pool image's last
    class predicted at confidence >= ``tau`` (-1: none yet); classes few images are confident
    about get lower thresholds, which speeds up the classes that are learned late."""

    def __init__(self, n_pool: int, n_classes: int, tau: float):
        self.last = np.full(n_pool, -1, dtype=np.int64)
        self.n_classes, self.tau = n_classes, tau

    def thresholds(self) -> np.ndarray:
        """(n_classes,) the current threshold of each class."""
        known = self.last[self.last >= 0]
        sigma = np.bincount(known, minlength=self.n_classes)
        return flexmatch_class_thresholds(sigma, self.last.size - known.size, self.tau, warmup=True)

    def update(self, idx: np.ndarray, conf: np.ndarray, pred: np.ndarray) -> None:
        sure = conf >= self.tau
        self.last[idx[sure]] = pred[sure]


def consistency_loss(model: torch.nn.Module, xu: torch.Tensor, gen: torch.Generator, threshold: float,
                     flex: FlexMatchThresholds | None = None, idx: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(FixMatch's unlabeled loss averaged over the whole batch, the fraction of images above their threshold).

    The weak view's prediction is taken without gradient (a fixed target, as in the paper). With
    ``flex`` (and ``idx``, the images' positions in its pool) the threshold is the predicted
    class's FlexMatch threshold, and the images' confident predictions update it.
    """
    with torch.no_grad():
        probs = torch.softmax(model(weak_view(xu, gen)).float(), dim=1)
    conf, target = probs.max(dim=1)
    if flex is not None:
        thr = torch.from_numpy(flex.thresholds()).to(conf)[target]
        flex.update(idx, conf.cpu().numpy(), target.cpu().numpy())
        threshold = thr
    mask = (conf >= threshold).float()
    loss = F.cross_entropy(model(strong_view(xu, gen)).float(), target, reduction="none")
    return (loss * mask).mean(), mask.mean()


class LabelFilter:
    """Which trusted labels to train on: those the student agrees with on strong views of the image.

    After each epoch from ``start_epoch`` on, :meth:`update` averages the student's (eval mode)
    probabilities over ``FILTER_VIEWS`` strong views of each trusted image, keeps a running average
    across epochs (``FILTER_DECAY``), and keeps a label where the average's argmax is the label.
    A label set aside is trained on as an unlabeled image (it stays in FixMatch's pool) and comes
    back if the student comes round to it. A class never loses all its labels: its most agreeing
    one stays. While the student contradicts more than ``FILTER_MAX_SHARE`` of the labels (too
    early in training, or too few epochs) it is not trusted to judge them: every label is kept.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n_classes: int, start_epoch: int, seed: int, device):
        self.images, self.labels = images, labels
        self.start_epoch = start_epoch
        self.avg: torch.Tensor | None = None
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        self.keep = torch.ones(labels.shape[0], dtype=torch.bool)
        self.n_classes = n_classes

    def update(self, model: torch.nn.Module, epoch: int, batch_size: int) -> bool:
        """Re-score after ``epoch`` (0-based); True when the kept set changed."""
        if epoch < self.start_epoch or self.labels.numel() == 0:
            return False
        model.eval()
        probs = torch.zeros(self.labels.shape[0], self.n_classes)
        with torch.no_grad():
            for s in range(0, self.labels.shape[0], batch_size):
                xb = self.images[s : s + batch_size].to(self.device, non_blocking=True)
                for _ in range(FILTER_VIEWS):
                    probs[s : s + batch_size] += torch.softmax(model(strong_view(xb, self.gen)).float(), dim=1).cpu()
        probs /= FILTER_VIEWS
        self.avg = probs if self.avg is None else FILTER_DECAY * self.avg + (1 - FILTER_DECAY) * probs
        keep = self.avg.argmax(dim=1) == self.labels
        if (~keep).float().mean() > FILTER_MAX_SHARE:
            keep = torch.ones_like(keep)
        agree = self._label_probs()
        for c in torch.unique(self.labels):
            members = self.labels == c
            if not keep[members].any():
                keep[members.nonzero().squeeze(1)[agree[members].argmax()]] = True
        changed = bool((keep != self.keep).any())
        self.keep = keep
        return changed

    def agreement(self) -> np.ndarray:
        """(n_labels,) the running average of the strong views' probability of each label; NaN before the first check."""
        if self.avg is None:
            return np.full(self.labels.shape[0], np.nan)
        return self._label_probs().numpy().astype(np.float64)

    def _label_probs(self) -> torch.Tensor:
        return self.avg.gather(1, self.labels.unsqueeze(1)).squeeze(1)
