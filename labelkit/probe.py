"""Out-of-sample class probabilities by cross-validating a linear softmax probe (torch, L-BFGS).

The input confident learning needs (``labelkit.noise``): each labeled sample's probabilities come
from a model that never saw its label. Numpy in, numpy out; nothing here touches files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labelkit._progress import NULL, Progress
from labelkit._validation import check_embeddings, check_l2_head, check_labels
from labelkit.device import resolve_device
from labelkit.errors import BadInputError
from labelkit.folds import stratified_folds

__all__ = ["ProbeConfig", "cross_val_probs", "probe_probs"]


@dataclass(frozen=True)
class ProbeConfig:
    """Linear softmax probe of :func:`cross_val_probs` (multinomial logistic regression, L-BFGS).

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 strength, as in scikit-learn's LogisticRegression: the objective is
        sum_i CE_i + ||W||^2 / (2 C) (the bias is not penalised).
    max_iter : int, default=100
        L-BFGS iterations per fold.
    standardize : bool, default=True
        Standardise features with the training fold's mean and std.
    """

    C: float = 1.0
    max_iter: int = 100
    standardize: bool = True

    def __post_init__(self):
        check_l2_head(self.C, self.max_iter)


def _fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, config: ProbeConfig):
    """Multinomial logistic regression, full-batch L-BFGS; classes absent from ``y`` get logit -inf."""
    n, d = x.shape
    if config.standardize:
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros(d, dtype=x.dtype, device=x.device), torch.ones(d, dtype=x.dtype, device=x.device)
    xs = (x - mean) / std
    present = torch.bincount(y, minlength=n_classes) > 0
    mask = torch.where(present, 0.0, -math.inf).to(x.dtype)
    w = torch.zeros(d, n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    lam = 1.0 / (config.C * n)  # sklearn: sum CE + ||W||²/(2C)  ==  n (mean CE + lam/2 ||W||²)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=config.max_iter, history_size=10,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b + mask, y) + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()

    def predict(xq: torch.Tensor) -> torch.Tensor:
        return torch.softmax(((xq - mean) / std) @ w + b + mask, dim=1)

    return predict


def probe_probs(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, rows: np.ndarray | None = None, *,
                config: ProbeConfig | None = None, max_train: int = 20000) -> np.ndarray:
    """Class probabilities at ``rows`` (None = all) from the softmax probe fitted on the labeled rows
    (at most ``max_train`` of them, drawn with a fixed seed), on the CPU.

    Unchecked (callers validate): ``embeddings`` float32 or float16 (N, D), read by rows (no
    float32 copy of the whole matrix), ``labels`` int64 (N,) with -1 for
    unlabeled and at least one labeled row. Returns float32 (len(rows), n_classes).
    """
    want = np.arange(len(labels)) if rows is None else np.asarray(rows)
    return probe_predictor(embeddings, labels, n_classes, config=config, max_train=max_train)(want)


def probe_predictor(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *, config: ProbeConfig | None = None,
                    max_train: int = 20000):
    """:func:`probe_probs` fitted once: a function of ``rows`` returning their float32 (len(rows), n_classes)
    probabilities, so that a caller can score the rows a block at a time."""
    labeled = np.flatnonzero(labels >= 0)
    if labeled.size == 0:  # nothing to fit (zero-shot): no opinion
        return lambda want: np.full((len(want), n_classes), 1.0 / n_classes, dtype=np.float32)
    if labeled.size > max_train:  # full-batch L-BFGS cost grows with the rows; a linear model needs far fewer
        labeled = np.sort(np.random.default_rng(0).choice(labeled, max_train, replace=False))
    def rows_of(r: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(embeddings[r], dtype=np.float32))  # a fancy index copies: writable

    predict = _fit_probe(rows_of(labeled), torch.from_numpy(labels[labeled].astype(np.int64)), n_classes, config or ProbeConfig())

    def probs_at(want: np.ndarray) -> np.ndarray:
        want = np.asarray(want)
        out = np.empty((want.size, n_classes), dtype=np.float32)
        with torch.no_grad():
            for lo in range(0, want.size, 65536):
                out[lo:lo + 65536] = predict(rows_of(want[lo:lo + 65536])).numpy()
        return out

    return probs_at


def cross_val_probs(
    embeddings,
    labels,
    n_classes: int,
    *,
    n_folds: int = 5,
    seed: int = 0,
    config: ProbeConfig | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> np.ndarray:
    """Out-of-sample class probabilities by stratified K-fold cross-validation of a softmax probe.

    Each labeled sample's row comes from the probe trained on the other folds, so it never
    reflects a model that saw the sample (the input confident learning needs). The probe is
    multinomial logistic regression (L2, scikit-learn's objective with ``C``) on standardised
    features, trained full-batch with L-BFGS in torch. A class absent from a training fold gets
    probability exactly 0 from that fold's model (rows still sum to 1). Unlabeled rows (-1) get
    the mean of the fold models' predictions.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    labels : ndarray of shape (n_samples,)
        Given labels in [0, n_classes), -1 for unlabeled.
    n_classes : int
    n_folds : int, default=5
        At least 2 and at most the number of labeled samples. Classes with fewer samples than
        folds are spread over as many folds as they have samples.
    seed : int, default=0
        Seeds the fold assignment (the probe itself is deterministic).
    config : ProbeConfig, default=None
        None means ``ProbeConfig()``.
    device : str, default="cpu"
    progress : Progress, default=None
        None reports nothing. Otherwise a ``"cross-val"`` task advanced once per fold.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes), float32

    References
    ----------
    Northcutt, Jiang, Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
    JAIR 2021 (Section 3: out-of-sample predicted probabilities by K-fold cross-validation).

    Examples
    --------
    >>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]], dtype=np.float32)
    >>> p = cross_val_probs(x, np.array([0, 0, 0, 1, 1, 1]), 2, n_folds=3)
    >>> p.argmax(axis=1).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    x = check_embeddings(embeddings)
    if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 1):
        raise BadInputError(f"'n_classes' must be an int >= 1. Got {n_classes!r} instead.")
    y = check_labels(labels, n_classes=int(n_classes))
    if y.shape[0] != x.shape[0]:
        raise BadInputError(f"'labels' must have length {x.shape[0]} (rows of embeddings). Got {y.shape[0]} instead.")
    n_labeled = int((y >= 0).sum())
    if not (isinstance(n_folds, (int, np.integer)) and 2 <= n_folds <= max(n_labeled, 2)) or n_labeled < n_folds:
        raise BadInputError(
            f"'n_folds' must be an int in [2, n_labeled={n_labeled}]. Got {n_folds!r} instead."
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError(f"'seed' must be an int >= 0. Got {seed!r} instead.")
    config = ProbeConfig() if config is None else config
    if not isinstance(config, ProbeConfig):
        raise BadInputError(f"'config' must be a ProbeConfig or None. Got {type(config).__name__} instead.")
    progress = NULL if progress is None else progress
    return _cross_val_impl(x, y, int(n_classes), int(n_folds), int(seed), config, resolve_device(device), progress)


def _cross_val_impl(x, y, n_classes, n_folds, seed, config, device, progress) -> np.ndarray:
    """Unchecked :func:`cross_val_probs`."""
    labeled = np.flatnonzero(y >= 0)
    unlabeled = np.flatnonzero(y < 0)
    folds = stratified_folds(y[labeled], n_folds, np.random.default_rng(seed))
    xt = torch.from_numpy(x).to(device)
    yt = torch.from_numpy(y).to(device)
    out = np.zeros((x.shape[0], n_classes), dtype=np.float32)
    with progress.task("cross-val", total=n_folds) as task:
        for f in range(n_folds):
            tr = torch.from_numpy(labeled[folds != f]).to(device)
            te = torch.from_numpy(labeled[folds == f]).to(device)
            predict = _fit_probe(xt[tr], yt[tr], n_classes, config)
            with torch.no_grad():
                out[te.cpu().numpy()] = predict(xt[te]).cpu().numpy()
                if unlabeled.size:
                    out[unlabeled] += predict(xt[torch.from_numpy(unlabeled).to(device)]).cpu().numpy() / n_folds
            task.advance()
    return out
