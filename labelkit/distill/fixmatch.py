"""FixMatch consistency for image students: weak and strong augmentations, and the unlabeled loss.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020: the student labels a weakly augmented view of each unlabeled image, and where it
is at least ``threshold`` confident that label becomes the cross-entropy target of a strongly
augmented view of the same image. The augmentations are batched tensor ops (one affine warp,
a contrast/brightness jitter, a cutout square), drawn from a seeded generator on the images'
device. There is no horizontal flip: it changes the class of digits and text.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from labelkit.thresholds import flexmatch_class_thresholds

__all__ = ["weak_view", "strong_view", "consistency_loss", "FlexMatchThresholds"]

WEAK_SHIFT = 0.125  # FixMatch's weak view: translation by up to 12.5 % of the side
STRONG_ROTATE, STRONG_SCALE, STRONG_SHEAR, STRONG_SHIFT = 20.0, 0.15, 0.2, 0.15
JITTER = 0.4  # brightness offset in [-0.2, 0.2]; contrast factor in [0.6, 1.4]
CUTOUT = 0.5  # side of the cutout square, as a fraction of the image side (FixMatch: up to 0.5)


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
    with a gray square (half the side) cut out at a random place."""
    n, _, h, w = x.shape
    dev = x.device
    x = _affine(x, gen, STRONG_ROTATE, STRONG_SCALE, STRONG_SHEAR, STRONG_SHIFT)
    contrast = _uniform(n, 1 - JITTER, 1 + JITTER, gen, dev).view(n, 1, 1, 1)
    brightness = _uniform(n, -JITTER / 2, JITTER / 2, gen, dev).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    half_h, half_w = max(1, round(CUTOUT * h)) // 2, max(1, round(CUTOUT * w)) // 2
    cy = torch.randint(0, h, (n, 1, 1), generator=gen, device=dev)
    cx = torch.randint(0, w, (n, 1, 1), generator=gen, device=dev)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    hole = ((rows - cy).abs() <= half_h) & ((cols - cx).abs() <= half_w)
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
