"""Applying a trained student: class probabilities in batches, in eval mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from labelkit.device import resolve_device
from labelkit.errors import BadInputError

__all__ = ["predict_proba"]


def _batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    """Eval-mode float32 logits on CPU for every row of ``x``."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            out.append(model(x[s : s + batch_size].to(device, non_blocking=True)).float().cpu())
    if not out:
        return torch.zeros((0, 0))
    return torch.cat(out)



def predict_proba(model: nn.Module, x, *, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Class probabilities of a student for every row of ``x``.

    Parameters
    ----------
    model : torch.nn.Module
        A student (from :func:`fit_student` or :func:`load_student`); it is moved to ``device``
        and put in eval mode.
    x : ndarray of shape (n_samples, dim) or (n_samples, channels, height, width)
    batch_size : int, default=1024
    device : str, default="cpu"

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes), float32

    Examples
    --------
    >>> from labelkit.distill import build_student
    >>> m = build_student({"architecture": "linear", "in_dim": 2, "n_classes": 3})
    >>> predict_proba(m, np.zeros((2, 2), np.float32)).sum(axis=1).round(5).tolist()
    [1.0, 1.0]
    """
    if not isinstance(model, nn.Module):
        raise BadInputError(f"'model' must be a torch.nn.Module. Got {type(model).__name__} instead.")
    arr = np.asarray(x)
    if arr.ndim not in (2, 4):
        raise BadInputError(f"'x' must be 2-D (n, dim) or 4-D (n, c, h, w). Got shape {arr.shape} instead.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadInputError("'x' contains NaN or infinite values.")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise BadInputError(f"'batch_size' must be an int >= 1. Got {batch_size!r} instead.")
    device = resolve_device(device)
    model.to(device)
    logits = _batched_logits(model, torch.from_numpy(arr), int(batch_size), device)
    if arr.shape[0] == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.softmax(logits, dim=1).numpy()
