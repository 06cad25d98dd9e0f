"""Virtual adversarial training (Miyato et al. 2018): smoothness of the student where the data lie.

For each training batch, the loss adds ``KL(p(x) || p(x + r_adv))``, where ``r_adv`` is the
perturbation of radius ``eps`` that changes the student's prediction most (one power iteration
from a random direction). It needs no labels, so it also shapes the student where the
pseudo-labels are wrong or unsure, and no domain augmentation, so it works on embeddings.

Perturbations live in the student's standardised input space (after its ``norm`` layer: per
feature for embeddings, per channel for pixels), and their radius is relative to the data:
``eps = ratio * median distance from a sample to its nearest neighbour`` there, measured on up to
1,000 training rows.

Measured on the distill benchmark's splits (5 % of the labels kept, 10 % of those flipped;
seeds 0-2; a separate training loop of 3,000 steps, pseudo-labels as targets), test accuracy
without -> with ratio 0.5: digits pixels 0.902 -> 0.915, MNIST-4k pixels 0.836 -> 0.857, AG News
MiniLM 0.831 -> 0.845, but CIFAR-10 EfficientNet-Lite0 features 0.581 -> 0.569 (0.574 at ratio
0.25): where the embedding's neighbourhoods are poor, smoothing along them hurts. Through the
distill stage on digits: 0.901 -> 0.910, at 2.5 times the training time. Hence off by default.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCALE_ROWS = 1000  # training rows the radius is measured on
XI = 1e-6  # finite-difference step of the power iteration


def radius(model: nn.Module, x: np.ndarray, ratio: float, gen: torch.Generator) -> float:
    """``ratio`` times the median nearest-neighbour distance among (up to) 1,000 rows of ``x``,
    in the model's standardised input space."""
    n = x.shape[0]
    rows = torch.randperm(n, generator=gen)[:SCALE_ROWS].sort().values if n > SCALE_ROWS else torch.arange(n)
    with torch.no_grad():
        z = model.norm(torch.from_numpy(x[rows.numpy()]).float()).reshape(len(rows), -1)
    if len(z) < 2:
        return 0.0
    d = torch.cdist(z, z)
    d.fill_diagonal_(float("inf"))
    return ratio * float(d.min(dim=1).values.median())


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (d.ndim - 1)))


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    p = F.softmax(p_logits, dim=1)
    return (p * (F.log_softmax(p_logits, dim=1) - F.log_softmax(q_logits, dim=1))).sum(dim=1).mean()


def vat_loss(model: nn.Module, x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """``KL(p(x) || p(x + r_adv))`` with ``||r_adv|| = eps`` in standardised input space.

    ``x`` is a batch of raw inputs; the perturbation is scaled back by the model's ``norm.std`` so
    that it has radius ``eps`` after standardisation. ``gen`` draws the random start (the global
    RNG is not used).
    """
    with torch.no_grad():
        clean = model(x).float()
    scale = model.norm.std
    d = _unit(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)).requires_grad_(True)
    dist = _kl(clean, model(x + XI * d * scale).float())
    grad = torch.autograd.grad(dist, d)[0]
    r_adv = eps * _unit(grad.detach())
    return _kl(clean, model(x + r_adv * scale).float())
