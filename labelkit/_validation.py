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
    lo, hi = (arr.min(), arr.max()) if arr.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN and inf reach the min or max: no (N, K) mask needed
        raise BadInputError(f"'{name}' contains NaN or infinite values.")
    if lo < -atol or hi > 1 + atol:
        raise BadInputError(f"'{name}' must lie in [0, 1]. Got range [{lo:.4g}, {hi:.4g}] instead.")
    if arr.size:
        sums = arr.sum(axis=1)
        if np.abs(sums - 1).max() > atol * max(1, arr.shape[1] / 100):
            raise BadInputError(f"'{name}' rows must sum to 1. Got row sums in [{sums.min():.4g}, {sums.max():.4g}] instead.")
    return arr


ROW_BLOCK = 65_536  # rows per block in the checks below: their temporaries stay small at any N
# Rows this close to unit norm are used as they are. float16 rounds each entry by up to 2^-11
# relative, so a stored unit row's norm is within ~5e-4 of 1; float32 ones within ~1e-6.
UNIT_ATOL = {np.dtype(np.float16): 1e-3, np.dtype(np.float32): 1e-5}


def check_embeddings(embeddings, *, name: str = "embeddings") -> np.ndarray:
    """Return ``embeddings`` as a C-contiguous float32 (N, D) array of finite values."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise BadInputError(f"'{name}' must be 2-D (n_samples, dim). Got shape {arr.shape} instead.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    _check_finite(arr, name)
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    for lo in range(0, arr.shape[0], ROW_BLOCK):  # a whole-array isfinite would be an (N, D) bool temporary
        if not np.isfinite(arr[lo : lo + ROW_BLOCK]).all():
            raise BadInputError(f"'{name}' contains NaN or infinite values.")


def unit_embeddings(embeddings, *, name: str = "embeddings") -> np.ndarray:
    """Checked (N, D) rows of unit norm, copied only when they must be.

    float32 or float16 rows that are finite, C-contiguous and already unit-norm (zero rows
    allowed) come back as they are: a float16 matrix memory-mapped from embeddings.parquet's
    cache stays on disk, where a float32 copy would be 20 GB at 10M x 512. Consumers compute on
    row blocks in float32 (numpy promotes float16 @ float32). Anything else is normalised into
    one float32 copy, as :func:`l2_normalize` would.
    """
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise BadInputError(f"'{name}' must be 2-D (n_samples, dim). Got shape {arr.shape} instead.")
    if arr.dtype not in UNIT_ATOL or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype if arr.dtype in UNIT_ATOL else np.float32)
    atol, unit = UNIT_ATOL[arr.dtype], True
    for lo in range(0, arr.shape[0], ROW_BLOCK):
        b = arr[lo : lo + ROW_BLOCK].astype(np.float32, copy=False)
        if not np.isfinite(b).all():
            raise BadInputError(f"'{name}' contains NaN or infinite values.")
        norms = np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64))
        unit = unit and bool(np.all((np.abs(norms - 1) <= atol) | (norms == 0)))
    if unit:
        return arr
    out = np.empty(arr.shape, np.float32)
    for lo in range(0, arr.shape[0], ROW_BLOCK):
        out[lo : lo + ROW_BLOCK] = l2_normalize(arr[lo : lo + ROW_BLOCK])
    return out


def l2_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x)
    if x.dtype == np.float16:
        x = x.astype(np.float32)
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
