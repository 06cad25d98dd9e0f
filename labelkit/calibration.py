"""Calibration: held-out temperature scaling, its ECE, and class-prior correction (numpy in, numpy out).

:func:`calibrate` hides the labels of one stratified fold of the labeled samples at a time,
asks a scoring callback for the hidden samples' scores, fits a temperature per score and one
for their weighted mixture on those held-out scores (Guo et al. 2017), and cross-fits them to
report the held-out ECE. It knows nothing of how scores are made, so it never imports the
scoring module. ``max_samples`` stops once enough held-out samples are scored: the remaining
folds would only refine three scalars, and each fold costs a full propagation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from labelkit._probability import ROW_CHUNK, check_positive, check_unit, log_probs, normalize_rows, softmax
from labelkit._validation import check_labels, check_probs
from labelkit.errors import BadInputError
from labelkit.folds import stratified_folds

ScoreFn = Callable[[np.ndarray, np.ndarray], "dict[str, np.ndarray]"]


def expected_calibration_error(probs, labels, *, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, with equal-width bins.

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` where bin ``b`` holds the samples
    whose confidence lies in ``((b - 1) / n_bins, b / n_bins]`` (zero goes to the first bin).

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    labels : ndarray of shape (n_samples,)
        True classes (no -1).
    n_bins : int, default=15

    Returns
    -------
    ece : float
        In [0, 1]; NaN for zero samples.

    References
    ----------
    Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
    Binning", AAAI 2015. Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural
    Networks", ICML 2017.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    >>> round(expected_calibration_error(p, np.array([0, 1, 0]), n_bins=10), 4)
    0.4
    """
    probs = check_probs(probs)
    labels = check_labels(labels, n_classes=probs.shape[1], allow_unlabeled=False)
    if labels.shape[0] != probs.shape[0]:
        raise BadInputError(f"'labels' must have one entry per row of 'probs' ({probs.shape[0]}). Got {labels.shape[0]} instead.")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise BadInputError(f"'n_bins' must be an integer >= 1. Got {n_bins!r} instead.")
    return _ece_impl(probs, labels, int(n_bins))


def _ece_impl(probs, labels, n_bins: int = 15) -> float:
    if probs.shape[0] == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(b, correct, n_bins) - np.bincount(b, conf, n_bins))
    return float(gap.sum() / probs.shape[0])


def fit_temperature(logits, labels, *, smoothing: float = 0.0, bounds: tuple[float, float] = (1e-3, 1e3)) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, so its derivative ``E_p[z] - z_y`` is monotone and the
    minimum is found by bisection (in log scale) on it.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_classes)
        Logits or log-probabilities (finite). For log-probabilities, ``T`` sharpens
        (``< 1``) or flattens (``> 1``) ``p ** (1 / T)``.
    labels : ndarray of shape (n_samples,)
        True classes of held-out samples (no -1).
    smoothing : float, default=0.0
        Label smoothing ``eps`` in [0, 1) of the targets, ``(1 - eps) onehot + eps / K``: a
        prior that keeps ``T`` finite when every held-out sample is right. :func:`pseudolabel`
        uses ``eps = K / ((K - 1) (n + 2))``, for which a perfect, confident score gets the
        mean confidence of Laplace's rule of succession, ``(n + 1) / (n + 2)``.
    bounds : (float, float), default=(1e-3, 1e3)
        Range searched; a bound is returned when the optimum lies outside it (e.g. every
        sample right gives ``T -> 0``).

    Returns
    -------
    temperature : float

    References
    ----------
    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

    Examples
    --------
    >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    >>> round(fit_temperature(z, np.array([0, 1, 1, 1])), 3)  # 3 of 4 right: p = 0.75
    3.641
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or not np.all(np.isfinite(z)):
        raise BadInputError(f"'logits' must be a finite 2-D array. Got shape {z.shape} instead.")
    labels = check_labels(labels, n_classes=z.shape[1], allow_unlabeled=False)
    if labels.shape[0] != z.shape[0]:
        raise BadInputError(f"'labels' must have one entry per row of 'logits' ({z.shape[0]}). Got {labels.shape[0]} instead.")
    check_unit("smoothing", smoothing, closed_high=False)
    lo, hi = bounds
    if not 0 < lo < hi:
        raise BadInputError(f"'bounds' must satisfy 0 < low < high. Got {bounds!r} instead.")
    return _fit_temperature_impl(z, labels, smoothing, lo, hi)


def _laplace_smoothing(n: int, n_classes: int) -> float:
    """Label smoothing whose perfect-score optimum is the rule of succession (n + 1) / (n + 2)."""
    return min(0.5, n_classes / ((n_classes - 1) * (n + 2))) if n_classes > 1 else 0.0


def _fit_temperature_impl(z, labels, smoothing: float = 0.0, lo: float = 1e-3, hi: float = 1e3) -> float:
    if z.shape[0] == 0:
        return 1.0
    # Target term of the smoothed cross-entropy: (1 - eps) z_y + eps mean_c z_c.
    zy = (1.0 - smoothing) * z[np.arange(z.shape[0]), labels] + smoothing * z.mean(axis=1)

    def grad(beta):  # d/d(beta) of the mean NLL of softmax(beta z): E_p[z] - target, increasing
        p = softmax(beta * z)
        return float(((p * z).sum(axis=1) - zy).mean())

    # beta = 1 / T; search log(beta) in [log(1/hi), log(1/lo)].
    a, b = np.log(1.0 / hi), np.log(1.0 / lo)
    if grad(np.exp(a)) >= 0:
        return float(hi)
    if grad(np.exp(b)) <= 0:
        return float(lo)
    for _ in range(60):
        m = 0.5 * (a + b)
        if grad(np.exp(m)) > 0:
            b = m
        else:
            a = m
    return float(np.exp(-0.5 * (a + b)))


def em_prior_shift(probs, train_priors, *, max_iter: int = 100, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Adjust posteriors to the unknown class priors of new data by EM.

    E-step: ``p_s(c|x) ∝ (pi_s(c) / pi_t(c)) p_t(c|x)``; M-step: ``pi_{s+1}(c) = mean_x
    p_s(c|x)``; from ``pi_0 = pi_t`` until the priors move less than ``tol``. The posteriors
    should be calibrated for the training priors ``pi_t``.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
        Posteriors ``p_t(c|x)`` of the new (unlabeled) samples under the training priors.
    train_priors : ndarray of shape (n_classes,)
        ``pi_t``, positive, summing to one.
    max_iter : int, default=100
    tol : float, default=1e-6
        Stop when ``max_c |pi_{s+1}(c) - pi_s(c)| < tol``.

    Returns
    -------
    adjusted_probs : ndarray of shape (n_samples, n_classes)
    new_priors : ndarray of shape (n_classes,)

    References
    ----------
    Saerens, Latinne, Decaestecker, "Adjusting the Outputs of a Classifier to New a Priori
    Probabilities: A Simple Procedure", Neural Computation 14(1), 2002.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    >>> adj, pri = em_prior_shift(p, np.array([0.5, 0.5]))
    >>> bool(pri[0] > 0.8)
    True
    """
    probs = check_probs(probs)
    probs = probs if probs.dtype == np.float32 else probs.astype(np.float64)
    pt = np.asarray(train_priors, dtype=np.float64)
    if pt.shape != (probs.shape[1],) or not np.all(pt > 0) or abs(pt.sum() - 1) > 1e-3:
        raise BadInputError(f"'train_priors' must be {probs.shape[1]} positive values summing to 1. Got {train_priors!r} instead.")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise BadInputError(f"'max_iter' must be an integer >= 1. Got {max_iter!r} instead.")
    check_positive("tol", tol)
    return _em_prior_impl(probs, pt / pt.sum(), int(max_iter), tol)


def _em_prior_impl(probs, pt, max_iter, tol):
    pi = pt.copy()
    for _ in range(max_iter):
        new = _mean_adjusted(probs, pi / pt) if probs.shape[0] else pi
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    return _adjusted(probs, pi / pt), pi


def _adjusted(probs, ratio) -> np.ndarray:
    """E-step posteriors ``normalize(p * pi / pi_t)``, in the dtype of ``probs``."""
    out = np.empty_like(probs)
    for lo in range(0, probs.shape[0], ROW_CHUNK):
        out[lo : lo + ROW_CHUNK] = normalize_rows(probs[lo : lo + ROW_CHUNK] * ratio.astype(probs.dtype))
    return out


def _mean_adjusted(probs, ratio) -> np.ndarray:
    """Mean of the E-step posteriors (the M-step) without storing them."""
    total = np.zeros(probs.shape[1])
    for lo in range(0, probs.shape[0], ROW_CHUNK):
        total += normalize_rows(probs[lo : lo + ROW_CHUNK] * ratio.astype(probs.dtype)).sum(axis=0, dtype=np.float64)
    return total / probs.shape[0]


# --------------------------------------------------------------------------------------------
# held-out calibration of a weighted mixture of scores
# --------------------------------------------------------------------------------------------


def _folds(labels, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold id of each labeled sample (-1 for unlabeled)."""
    fold = np.full(labels.shape[0], -1, dtype=np.int64)
    lab = labels >= 0
    fold[lab] = stratified_folds(labels[lab], n_folds, np.random.default_rng(seed))
    return fold


def _combine(logs: dict, temps: dict, weights: dict) -> np.ndarray:
    """Weighted mean of the temperature-scaled component probabilities."""
    total = sum(weights[n] for n in logs)
    return sum(weights[n] * softmax(logs[n] / temps[n]) for n in logs) / total


def _fit_combination(logs: dict, y, weights: dict, n_classes: int) -> tuple[dict, float]:
    """Per-component temperatures, then one temperature for their mixture."""
    if y.shape[0] == 0:
        return {n: 1.0 for n in logs}, 1.0
    eps = _laplace_smoothing(y.shape[0], n_classes)
    temps = {n: _fit_temperature_impl(z, y, eps) for n, z in logs.items()}
    if len(logs) == 1:
        return temps, 1.0
    return temps, _fit_temperature_impl(log_probs(_combine(logs, temps, weights)), y, eps)


def _apply(logs: dict, temps: dict, t: float, weights: dict) -> np.ndarray:
    return softmax(log_probs(_combine(logs, temps, weights)) / t)


@dataclass(frozen=True, eq=False)
class Calibration:
    """What :func:`calibrate` found.

    Attributes
    ----------
    temperatures : dict of str to float
        Temperature of each score (1.0 when not calibrated).
    temperature : float
        Temperature of their weighted mixture (1.0 with a single score or none calibrated).
    weights : dict of str to float
    rows : ndarray of shape (n_heldout,), int64
        Labeled rows that were scored with their fold's labels hidden.
    probs : ndarray of shape (n_heldout, n_classes)
        Their calibrated out-of-fold probabilities; a fold's temperatures are fitted on the
        other folds (cross-fitting; two halves of the one fold when a single fold was scored).
    ece, ece_uncalibrated : float
        Expected calibration error (15 bins) of ``probs`` and of the uncalibrated mixture, on
        the samples used to calibrate; NaN when none.
    n_calibration : int
        Held-out samples used to fit the temperatures (their class keeps a label outside
        their fold, as every class does in the full run).
    extra_rows : ndarray of shape (n_extra,), int64
        Rows (``calibrate``'s ``extra_rows``) each scored by one fold's run, like a held-out row
        of that fold; empty by default.
    extra_probs : ndarray of shape (n_extra, n_classes) or None
        Their calibrated probabilities, each by its fold's cross-fitted temperatures: the same
        scoring as a held-out row of that fold, so the two are exchangeable.
    """

    temperatures: dict
    temperature: float
    weights: dict
    rows: np.ndarray
    probs: np.ndarray
    ece: float
    ece_uncalibrated: float
    n_calibration: int
    extra_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra_probs: np.ndarray | None = None

    def apply(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated mixture of the score arrays ``components`` (each (N, K)), float32, by row chunks."""
        first = next(iter(components.values()))
        out = np.empty(first.shape, dtype=np.float32)
        for lo in range(0, first.shape[0], ROW_CHUNK):
            logs = {n: log_probs(p[lo : lo + ROW_CHUNK].astype(np.float64)) for n, p in components.items()}
            out[lo : lo + ROW_CHUNK] = _apply(logs, self.temperatures, self.temperature, self.weights)
        return out


def calibrate(labels, score: ScoreFn, weights: dict[str, float], n_classes: int, *, n_folds: int = 5, seed: int = 0,
              max_samples: int | None = None, alternatives: list[dict[str, float]] | None = None,
              extra_rows=None) -> Calibration:
    """Held-out temperature scaling of a weighted mixture of scores, by stratified K-fold.

    For each fold ``f`` of the labeled samples, ``score(train, rows)`` is called with
    ``train`` = the labels with fold ``f`` hidden (-1) and ``rows`` = fold ``f``'s rows, and
    returns one (len(rows), K) probability array per score name. A temperature ``T_n`` per
    score, then ``T`` for the mixture ``sum_n w_n softmax(log p_n / T_n) / sum_n w_n``,
    minimise the held-out negative log-likelihood with Laplace label smoothing
    (``eps = K / ((K - 1) (n + 2))``).

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    score : callable (train_labels, rows) -> dict of str to ndarray of shape (len(rows), n_classes)
    weights : dict of str to float
        Mixture weight of each score name ``score`` returns.
    n_classes : int
    n_folds : int, default=5
        Fewer than 2 (or fewer than 2 labeled samples) disables calibration.
    seed : int, default=0
        Seeds the fold split.
    max_samples : int, optional
        Stop scoring folds once this many held-out samples are scored (whole folds, at least
        one); None scores every fold, which every labeled sample's out-of-fold score needs.
    alternatives : list of dict of str to float, optional
        Other mixture weights over the same score names; the one (``weights`` included) whose
        cross-fitted held-out probabilities have the lowest negative log-likelihood is kept
        (``Calibration.weights`` says which).
    extra_rows : ndarray of int, optional
        Unlabeled rows to score the way a held-out row is: each is given to one scored fold at
        random (seeded by ``seed``), scored by that fold's run and calibrated by that fold's
        cross-fitted temperatures (``Calibration.extra_probs``). A finite-sample error guarantee
        certified on the held-out rows then applies to them (:mod:`labelkit.guarantee`).

    Returns
    -------
    Calibration

    References
    ----------
    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

    Examples
    --------
    >>> labels = np.array([0, 0, 1, 1, -1])
    >>> def score(train, rows):  # a fixed, overconfident score that is right 3 times in 4
    ...     p = np.array([[0.99, 0.01], [0.01, 0.99], [0.01, 0.99], [0.01, 0.99], [0.5, 0.5]])
    ...     return {"s": p[rows]}
    >>> c = calibrate(labels, score, {"s": 1.0}, 2, n_folds=2)
    >>> bool(c.temperatures["s"] > 1), c.n_calibration
    (True, 4)
    """
    labels = check_labels(labels, n_classes=n_classes)
    if not callable(score):
        raise BadInputError(f"'score' must be callable. Got {type(score).__name__} instead.")
    if max_samples is not None and max_samples < 1:
        raise BadInputError(f"'max_samples' must be >= 1 or None. Got {max_samples!r} instead.")
    extra = np.zeros(0, np.int64) if extra_rows is None else np.asarray(extra_rows, dtype=np.int64).ravel()
    if extra.size and (extra.min() < 0 or extra.max() >= labels.shape[0] or (labels[extra] >= 0).any()):
        raise BadInputError("'extra_rows' must be rows of unlabeled samples.")
    return _calibrate_impl(labels, score, weights, n_classes, n_folds, seed, max_samples, alternatives or [], extra)


def _calibrate_impl(labels, score, weights, n_classes, n_folds, seed, max_samples, alternatives=(), extra=None) -> Calibration:
    k = n_classes
    enough = n_folds >= 2 and (labels >= 0).sum() >= 2
    fold = _folds(labels, n_folds, seed) if enough else np.full(labels.shape, -1)
    chosen, count = [], 0
    for f in np.unique(fold[fold >= 0]):
        if max_samples is not None and count >= max_samples:
            break
        chosen.append(f)
        count += int((fold == f).sum())
    rows = np.flatnonzero(np.isin(fold, chosen)) if chosen else np.zeros(0, np.int64)
    extra = np.zeros(0, np.int64) if extra is None or not chosen else extra
    # Each extra row joins one scored fold at random: scored and calibrated as that fold's held-out rows are.
    extra_fold = np.asarray(chosen)[np.random.default_rng([seed, 1]).integers(0, len(chosen), extra.size)] if extra.size else extra
    n_held = rows.size
    # Held-out scores in the dtype they come in (float32 from the pipeline: half the bytes, same numbers).
    held: dict[str, np.ndarray] = {}
    eligible = np.zeros(n_held, dtype=bool)
    for f in chosen:
        sel = fold[rows] == f
        sel_x = extra_fold == f
        train = np.where(fold == f, -1, labels)
        for n, p in score(train, np.r_[rows[sel], extra[sel_x]]).items():
            if n not in held:
                held[n] = np.zeros((n_held + extra.size, k), dtype=np.result_type(p.dtype, np.float32))
            held[n][np.r_[np.flatnonzero(sel), n_held + np.flatnonzero(sel_x)]] = p
        eligible[sel] = np.isin(labels[rows[sel]], train[train >= 0])
    cal = np.flatnonzero(eligible)
    y = labels[rows]
    logs = {n: log_probs(held.pop(n, np.zeros((n_held + extra.size, k))).astype(np.float64)) for n in weights}
    # Cross-fitting: each group is scaled by a fit on the others (two halves of a single fold).
    if len(chosen) >= 2:
        group = np.r_[fold[rows], extra_fold]
    else:
        group = np.r_[np.arange(n_held) % 2, np.random.default_rng([seed, 2]).integers(0, 2, extra.size)]

    def crossfit(w):
        oof = np.zeros((group.size, k))
        for g in np.unique(group):
            sel, fit = group == g, cal[group[cal] != g]
            temps_g, t_g = _fit_combination({n: z[fit] for n, z in logs.items()}, y[fit], w, k)
            oof[sel] = _apply({n: z[sel] for n, z in logs.items()}, temps_g, t_g, w)
        return oof

    oof = crossfit(weights)
    if alternatives and cal.size:
        # Mixture weights chosen like the temperatures: on held-out folds (cross-fitted NLL).
        nll = -np.mean(np.log(np.maximum(oof[cal, y[cal]], 1e-12)))
        for w in alternatives:
            o = crossfit(w)
            n = -np.mean(np.log(np.maximum(o[cal, y[cal]], 1e-12)))
            if n < nll - 1e-9:
                weights, oof, nll = dict(w), o, n
    temps, t = _fit_combination({n: z[cal] for n, z in logs.items()}, y[cal], weights, k)
    ones = {n: 1.0 for n in logs}
    ece = _ece_impl(oof[cal], y[cal]) if cal.size else float("nan")
    ece_raw = _ece_impl(_combine({n: z[cal] for n, z in logs.items()}, ones, weights), y[cal]) if cal.size else float("nan")
    extra_probs = oof[n_held:] if extra.size else None
    return Calibration(temps, t, dict(weights), rows, oof[:n_held], ece, ece_raw, int(cal.size), extra, extra_probs)
