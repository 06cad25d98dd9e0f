"""Row-wise probability helpers and scalar checks shared by the pseudo-label modules (private)."""

from __future__ import annotations

import numpy as np

from labelkit.errors import BadInputError

EPS = 1e-12
LOG_EPS = float(np.log(EPS))
ROW_CHUNK = 65536  # rows per chunk of (N, K) work: bounds temporaries to ~ROW_CHUNK x K values


def softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax (a new array, in the dtype of ``z``)."""
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log(p), clipped at log(1e-12) so a zero never makes an infinite logit."""
    out = np.maximum(probs, EPS)
    np.log(out, out=out)
    return out


def normalize_rows(f: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one; all-zero rows become uniform (a new array)."""
    s = f.sum(axis=1, keepdims=True)
    return np.divide(f, s, out=np.full_like(f, 1.0 / f.shape[1]), where=s > 0)


def normalize_rows_(f: np.ndarray) -> np.ndarray:
    """:func:`normalize_rows` in place, by row chunks; returns ``f``."""
    for lo in range(0, f.shape[0], ROW_CHUNK):
        blk = f[lo : lo + ROW_CHUNK]
        s = blk.sum(axis=1, keepdims=True)
        np.divide(blk, s, out=blk, where=s > 0)
        blk[(s <= 0).ravel()] = 1.0 / f.shape[1]
    return f


def topk_to_dense(n_rows: int, n_classes: int, rows: np.ndarray, cols: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(n_rows, n_classes) float64 soft labels from top-k entries (row, class, probability) in
    flat arrays; repeated (row, class) pairs add up; each row renormalised to sum to one (rows
    without an entry stay zero: "no soft label")."""
    out = np.zeros((n_rows, n_classes))
    np.add.at(out, (rows, cols), probs)
    s = out.sum(axis=1, keepdims=True)
    return np.divide(out, s, out=out, where=s > 0)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row (the top-1 probability with one class)."""
    if probs.shape[1] < 2:
        return probs[:, 0].copy() if probs.shape[1] else np.zeros(probs.shape[0])
    out = np.empty(probs.shape[0], dtype=probs.dtype)
    for lo in range(0, probs.shape[0], ROW_CHUNK):
        top2 = -np.partition(-probs[lo : lo + ROW_CHUNK], 1, axis=1)[:, :2]
        out[lo : lo + ROW_CHUNK] = top2[:, 0] - top2[:, 1]
    return out


def check_positive(name: str, value, *, strict: bool = True) -> None:
    """``value`` finite and > 0 (``>= 0`` unless ``strict``), else BadInputError."""
    if not np.isfinite(value) or value < 0 or (strict and value == 0):
        raise BadInputError(f"'{name}' must be {'>' if strict else '>='} 0. Got {value!r} instead.")


def check_unit(name: str, value, *, closed_high: bool = True) -> None:
    """``value`` in [0, 1] (or [0, 1) unless ``closed_high``), else BadInputError."""
    ok = 0 <= value <= 1 if closed_high else 0 <= value < 1
    if not np.isfinite(value) or not ok:
        raise BadInputError(f"'{name}' must be in [0, 1{']' if closed_high else ')'}. Got {value!r} instead.")
