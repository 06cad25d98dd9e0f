"""Input checks shared by the compute modules (validate once, at the public edge)."""

from __future__ import annotations

import math

import numpy as np

from labelkit.errors import BadInputError


def check_labels(labels, *, n_classes: int | None = None, allow_unlabeled: bool = True, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as int64 (N,), -1 meaning unlabeled; raise BadInputError otherwise."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise BadInputError(f"'{name}' must be 1-D. Got shape {arr.shape} instead.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise BadInputError(f"'{name}' must be integers. Got dtype {arr.dtype} instead.")
    arr = arr.astype(np.int64, copy=False)
    low = -1 if allow_unlabeled else 0
    if arr.size and arr.min() < low:
        raise BadInputError(f"'{name}' must be >= {low}. Got {int(arr.min())} instead.")
    if n_classes is not None and arr.size and arr.max() >= n_classes:
        raise BadInputError(f"'{name}' must be < n_classes={n_classes}. Got {int(arr.max())} instead.")
    return arr


def check_probs(probs, *, name: str = "probs", atol: float = 1e-3) -> np.ndarray:
    """Return ``probs`` as a float (N, K) array whose rows sum to one (within ``atol``)."""
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise BadInputError(f"'{name}' must be 2-D (n_samples, n_classes). Got shape {arr.shape} instead.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadInputError(f"'{name}' contains NaN or infinite values.")
    if arr.size and (arr.min() < -atol or arr.max() > 1 + atol):
        raise BadInputError(f"'{name}' must lie in [0, 1]. Got range [{arr.min():.4g}, {arr.max():.4g}] instead.")
    if arr.size:
        sums = arr.sum(axis=1)
        if np.abs(sums - 1).max() > atol * max(1, arr.shape[1] / 100):
            raise BadInputError(f"'{name}' rows must sum to 1. Got row sums in [{sums.min():.4g}, {sums.max():.4g}] instead.")
    return arr


def check_embeddings(embeddings, *, name: str = "embeddings") -> np.ndarray:
    """Return ``embeddings`` as a C-contiguous float32 (N, D) array of finite values."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise BadInputError(f"'{name}' must be 2-D (n_samples, dim). Got shape {arr.shape} instead.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadInputError(f"'{name}' contains NaN or infinite values.")
    return arr


def l2_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x)
    # Divide by each row's largest entry first: squaring entries near 1e20 overflows float32 and
    # turned such vectors into all-zero ones (issue 14).
    scale = np.max(np.abs(x), axis=-1, keepdims=True) if x.size else np.ones(x.shape[:-1] + (1,))
    x = (x / np.where(scale > 0, scale, 1)).astype(np.float32, copy=False)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def check_l2_head(C, max_iter) -> None:
    """The options of an L2-regularised linear head fitted by L-BFGS (the probe's and the multi-label heads')."""
    if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
        raise BadInputError(f"'C' must be > 0. Got {C!r} instead.")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise BadInputError(f"'max_iter' must be an int >= 1. Got {max_iter!r} instead.")
