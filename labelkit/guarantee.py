"""Acceptance thresholds with a finite-sample error guarantee (numpy in, numpy out).

Learn then Test (Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test: Calibrating Predictive
Algorithms to Achieve Risk Control", 2021) for selective classification: a pseudo-label is accepted
when its confidence is at least ``lambda``, and the risk of ``lambda`` is the error rate among the
accepted ones, ``R(lambda) = P(wrong | confidence >= lambda)``. Each candidate ``lambda`` of a fixed
grid is a null hypothesis ``H_lambda: R(lambda) > target``; held-out labeled samples give each a
p-value, and fixed-sequence testing (from the highest threshold down, stopping at the first
hypothesis not rejected) keeps the family-wise error rate at ``delta``. So, with probability at
least ``1 - delta`` over the held-out samples, every threshold the procedure certifies, the lowest
of which is returned, has ``R(lambda) <= target``.

The p-value of ``H_lambda`` comes from the ``n`` held-out samples the threshold accepts, ``k`` of them
wrong. Conditionally on ``n``, ``k`` is Binomial(n, R(lambda)), so the exact binomial tail
``P(Binomial(n, target) <= k)`` is a valid p-value (its inversion is the Clopper-Pearson upper bound,
which the result reports as ``error_bound``). For losses in [0, 1] that are not 0/1 (e.g. a
multi-label sample's share of wrong labels), the Hoeffding-Bentkus p-value of Bates et al. (2021)
is used instead.

Assumption (exchangeability): the held-out labeled samples and the unlabeled samples the threshold
is applied to are exchangeable: the labeled ones are a random sample of the same pool, their
given labels are as right as the truth the guarantee is about (with noisy labels, "wrong" means
"disagrees with a label of that quality"), and they are scored the same way (each unlabeled row
by one fold's run, as a held-out row is: ``unlabeled_by_fold``). A
sample from a class no one labeled breaks it, which is why open-set rejection
(:mod:`labelkit.novelty`) runs first.

Where the sequence starts: thresholds that accept too few held-out samples to test are passed
over instead of ending the sequence. The sequence starts at the first threshold from which on
samples erring at a third of the target rate would be certified, or, with too few samples for
that, samples erring never. The start
depends on the counts of samples accepted alone, never on the losses, so given the scores the
sequence is fixed in advance and the fixed-sequence argument holds; starting where the test has
power keeps one early error among a handful of the most confident samples from ending the
sequence. benchmarks/openset.py measures the realised violation rate of the whole procedure on
real data (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from labelkit._progress import NULL, Progress
from labelkit.config import defaults
from labelkit.errors import BadInputError

_ERROR_CONFIDENCE = defaults("pseudolabel").error_confidence  # the stage's --error-confidence

#: Candidate thresholds, fixed before any data is seen: 1 - 10**t for t from -6 to 0 in steps of
#: 0.01, descending (about 2.3% relative steps in 1 - lambda), then 0 (accept everything).
DEFAULT_GRID = np.r_[1.0 - 10.0 ** np.linspace(-6.0, 0.0, 601)[:-1], 0.0]


@dataclass(frozen=True)
class Certificate:
    """What :func:`certify_threshold` found.

    Attributes
    ----------
    certified : bool
        A threshold was certified for ``target`` at confidence ``1 - delta``.
    threshold : float
        The lowest certified threshold (accept ``score >= threshold``); NaN when not certified.
    error_bound : float
        Upper confidence bound (level ``1 - delta``) on the error rate among accepted samples at
        ``threshold`` (Clopper-Pearson, or Hoeffding-Bentkus for fractional losses); at most
        ``target`` when certified, NaN otherwise.
    coverage : float
        Share of the held-out samples accepted at ``threshold`` (0 when not certified).
    n_accepted, n_errors : int
        Held-out samples accepted at ``threshold`` and the sum of their losses.
    best_bound, best_threshold, best_coverage : float
        The smallest target the same procedure certifies at this confidence, the threshold and
        held-out coverage it gives; what could be certified instead when ``target`` cannot be
        (NaN when nothing can, e.g. no held-out samples).
    target, delta : float
    n_calibration : int
        Held-out samples.
    method : str
        ``"binomial"`` (0/1 losses) or ``"hoeffding_bentkus"``.
    """

    certified: bool
    threshold: float
    error_bound: float
    coverage: float
    n_accepted: int
    n_errors: float
    best_bound: float
    best_threshold: float
    best_coverage: float
    target: float
    delta: float
    n_calibration: int
    method: str

    def to_dict(self) -> dict:
        """Plain floats (NaN as None), for summaries and JSON."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def certify_threshold(scores, losses, *, target: float, delta: float = 0.1, grid=None, pool=None) -> Certificate:
    """The lowest confidence threshold whose selective error is certified at most ``target``.

    Learn then Test with fixed-sequence testing over a fixed grid of thresholds, highest first.

    Without ``pool`` the promise is about the risk ``R(lambda)``, the error rate among all samples
    like these that the threshold accepts. With ``pool`` (the scores of the unlabeled samples the
    threshold will be applied to) it is about what a user gets: the realised error rate among the
    pool's accepted samples, a finite sample whose rate scatters around ``R(lambda)`` (with 1,000
    accepted at ``R = 0.045``, above 0.05 one time in four). ``delta`` is then split in halves:
    the upper bound ``U`` on ``R(lambda)`` at confidence ``1 - delta/2`` from the held-out samples,
    and the ``1 - delta/2`` quantile of the pool's error count given ``U`` (binomial; Hoeffding's
    relative-entropy bound for fractional losses). A threshold is certified when that pool bound is at most ``target``, so
    the realised error exceeds the target with probability at most ``delta``.

    Parameters
    ----------
    scores : ndarray of shape (n_samples,)
        Confidence of each held-out labeled sample (scored without its own label); a sample is
        accepted when ``score >= threshold``; -inf for one another rule rejects.
    losses : ndarray of shape (n_samples,)
        In [0, 1]: 1 when its pseudo-label is wrong, 0 when right (fractions allowed).
    target : float
        The error rate among accepted samples to certify, in (0, 1).
    delta : float, default=0.1
        Allowed probability that the certificate is wrong, in (0, 1): the guarantee holds with
        confidence ``1 - delta``.
    grid : array-like of float, optional
        Candidate thresholds, fixed in advance (sorted descending here); default
        :data:`DEFAULT_GRID`.
    pool : array-like of float, optional
        Scores of the unlabeled samples the threshold is for (-inf for one another rule
        rejects): certify their realised error rate instead of the risk (see above).

    Returns
    -------
    Certificate
        With ``pool``, ``error_bound`` bounds the pool's realised error rate.

    References
    ----------
    Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test: Calibrating Predictive
    Algorithms to Achieve Risk Control", arXiv:2110.01052, 2021. Bates, Angelopoulos, Lei,
    Malik, Jordan, "Distribution-Free, Risk-Controlling Prediction Sets", JACM 2021
    (Hoeffding-Bentkus p-values). Clopper, Pearson, Biometrika 1934.

    Examples
    --------
    >>> scores = np.r_[np.full(300, 0.99), np.full(100, 0.6)]
    >>> losses = np.r_[np.zeros(300), np.ones(50), np.zeros(50)]
    >>> c = certify_threshold(scores, losses, target=0.02, delta=0.1)
    >>> c.certified, round(c.error_bound, 4), round(c.coverage, 2)
    (True, 0.0076, 0.75)
    """
    s = np.asarray(scores, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    if s.ndim != 1 or loss.shape != s.shape:
        raise BadInputError(f"'scores' and 'losses' must be 1-D of the same length. Got shapes {s.shape} and {loss.shape} instead.")
    if np.isnan(s).any() or (s == np.inf).any() or not np.all(np.isfinite(loss)):
        raise BadInputError("'scores' must be finite or -inf (never accepted), and 'losses' finite.")
    if loss.size and (loss.min() < 0 or loss.max() > 1):
        raise BadInputError(f"'losses' must lie in [0, 1]. Got range [{loss.min():.4g}, {loss.max():.4g}] instead.")
    for name, v in (("target", target), ("delta", delta)):
        if not (isinstance(v, (int, float, np.floating)) and 0 < v < 1):
            raise BadInputError(f"'{name}' must be in (0, 1). Got {v!r} instead.")
    g = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g)):
        raise BadInputError("'grid' must be a non-empty 1-D array of finite thresholds.")
    u = None
    if pool is not None:
        u = np.asarray(pool, dtype=np.float64)
        if u.ndim != 1 or np.isnan(u).any() or (u == np.inf).any():
            raise BadInputError("'pool' must be 1-D scores, finite or -inf (never accepted).")
    return _certify_impl(s, loss, float(target), float(delta), np.sort(g)[::-1], u)


def _certify_impl(s, loss, target, delta, grid, pool=None) -> Certificate:
    binary = bool(np.all((loss == 0) | (loss == 1)))
    method = "binomial" if binary else "hoeffding_bentkus"
    # n(lambda), k(lambda) for every grid point: cumulative sums over scores sorted descending.
    order = np.argsort(-s, kind="stable")
    cum_loss = np.r_[0.0, np.cumsum(loss[order])]
    n = np.searchsorted(-s[order], -grid, side="right")  # samples with score >= lambda
    k = cum_loss[n]
    m = None if pool is None else np.searchsorted(np.sort(-pool), -grid, side="right")  # pool samples accepted
    bound = _bounds(n, k, delta, binary, m)
    j = _fixed_sequence(n, m, bound, target, delta, binary)
    best = _best_target(n, m, bound, grid, delta, binary)
    nc = s.size
    if j is None:
        return Certificate(False, float("nan"), float("nan"), 0.0, 0, 0.0, *best, target, delta, nc, method)
    return Certificate(True, float(grid[j]), float(bound[j]), float(n[j] / nc), int(n[j]), float(k[j]), *best, target, delta, nc, method)


def _bounds(n, k, delta, binary, m=None) -> np.ndarray:
    """Upper bound (confidence 1 - delta) at each threshold: on the risk, or, given ``m`` (the pool's
    accepted counts), on the pool's realised error rate, with delta split between the two steps."""
    if m is None:
        return np.where(n > 0, _upper_bound(np.maximum(n, 1), k, delta, binary), 1.0)
    risk = np.where(n > 0, _upper_bound(np.maximum(n, 1), k, delta / 2, binary), 1.0)
    mm = np.maximum(m, 1).astype(np.float64)
    if binary:  # the 1 - delta/2 quantile of the errors among m accepted, Binomial(m, U)
        pool = stats.binom.ppf(1 - delta / 2, mm, risk) / mm
    else:  # losses in [0, 1]: Hoeffding's relative-entropy bound, tighter than his additive one
        pool = _chernoff_quantile(mm, risk, delta / 2)
    return np.where(m > 0, np.minimum(pool, 1.0), risk)


def _chernoff_quantile(m, u, delta) -> np.ndarray:
    """The smallest q >= u with exp(-m KL(q || u)) <= delta: the mean of m independent losses in
    [0, 1] whose expectation is at most u exceeds it with probability at most delta (Hoeffding
    1963, Theorem 1; by Pinsker's inequality never above his additive u + sqrt(log(1/delta) / 2m),
    and far below it for small u: multi-label Jaccard losses)."""
    m, u = np.broadcast_arrays(np.asarray(m, np.float64), np.asarray(u, np.float64))
    lo, hi = u.copy(), np.ones_like(u)
    for _ in range(50):
        mid = (lo + hi) / 2
        ok = m * _kl_bernoulli(mid, u) >= np.log(1 / delta)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return np.where(u >= 1, 1.0, np.where(u <= 0, 0.0, hi))


def _kl_bernoulli(q, u) -> np.ndarray:
    """KL(Bernoulli(q) || Bernoulli(u)) for q >= u, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(q > 0, q * np.log(q / u), 0.0)
        b = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - u)), 0.0)
    return np.where(u >= 1, 0.0, a + b)


def _fixed_sequence(n, m, bound, target, delta, binary) -> int | None:
    """Index of the lowest certified threshold (thresholds highest first), or None.

    "Error above target" at a threshold is rejected when its upper bound is at most the target:
    the bound inverts the test, so this is the level-delta test.
    """
    last = None
    for j in range(_start_index(n, m, target, delta, binary), n.size):
        if bound[j] > target:
            break
        last = j
    return last


def _start_index(n, m, target, delta, binary) -> int:
    """Where the fixed sequence starts: the first threshold from which on samples erring at a
    third of the target rate would be certified (or, with too few for that, samples erring never).

    It depends on the counts n (and m) alone, never on the losses, so given the scores the
    sequence is fixed in advance and fixed-sequence testing stays valid. A start with too few
    samples (the first count any outcome could reject) ends the sequence on one early error.
    """
    for rate in (target / 3, 0.0):
        fails = np.flatnonzero(_bounds(n, np.floor(n * rate), delta, binary, m) > target)
        start = int(fails[-1]) + 1 if fails.size else 0
        if start < n.size:
            return start
    return n.size


def _best_target(n, m, bound, grid, delta, binary) -> tuple[float, float, float]:
    """(smallest certifiable target, its threshold, its held-out coverage); NaNs when none."""
    total = n.max() if n.size else 0
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    # A target t is certified iff the sequence from its start stays at bounds <= t, so the
    # candidates are the bounds themselves; try them from the smallest up.
    for t in np.unique(np.round(bound[n > 0], 12)):
        if not 0 < t < 1:
            continue
        j = _fixed_sequence(n, m, bound, float(t) + 1e-12, delta, binary)
        if j is not None:
            return float(t), float(grid[j]), float(n[j] / total)
    return float("nan"), float("nan"), float("nan")


def _hoeffding_bentkus(mean, n, target) -> np.ndarray:
    """min(Hoeffding, Bentkus) p-value of H: E[loss] > target for losses in [0, 1] (Bates et al. 2021)."""
    a = np.minimum(mean, target)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(a > 0, a * np.log(a / target), 0.0) + (1 - a) * np.log((1 - a) / (1 - target))
    hoeffding = np.exp(-n * h1)
    bentkus = np.e * stats.binom.cdf(np.ceil(n * mean), n, target)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def _upper_bound(n, k, delta, binary):
    """Upper confidence bound at level 1 - delta on the risk: the smallest target whose p-value is <= delta."""
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if binary:  # Clopper-Pearson
        kk = np.round(k)
        out = np.where(kk >= n, 1.0, stats.beta.ppf(1 - delta, kk + 1, np.maximum(n - kk, 1e-12)))
        return out if out.ndim else float(out)
    # Bisection on the target (the p-value increases with it).
    lo, hi = np.zeros_like(n), np.ones_like(n)
    for _ in range(50):
        mid = (lo + hi) / 2
        rej = _hoeffding_bentkus(k / n, n, mid) <= delta
        hi, lo = np.where(rej, mid, hi), np.where(rej, lo, mid)
    return hi if hi.ndim else float(hi)


def heldout_losses(label, confidence, given, heldout, dropped, *, rejected=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, 0/1 losses) of the labeled samples whose pseudo-label was made without their label.

    Those are the rows scored in a held-out calibration fold (``heldout``) and the seeds that seed
    cleaning set aside (``dropped``: scored as unlabeled, so without their label too). Leaving the
    dropped seeds out would keep only the samples the labels agree on, and bias the error low.
    Labeled rows outside both (folds not scored, see ``calibration_samples``) were scored with
    their own label and are not used.

    Parameters
    ----------
    label, confidence : ndarray of shape (n_samples,)
        Pseudo-label and its confidence for every row.
    given : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    heldout, dropped : ndarray of shape (n_samples,), bool
    rejected : ndarray of shape (n_samples,), bool, optional
        Rows another rule rejects whatever their confidence (e.g. judged novel): their score is
        set to -inf, so the certificate is about the acceptance rule actually applied.

    Returns
    -------
    scores, losses : ndarray of shape (n_calibration,)

    Examples
    --------
    >>> s, l = heldout_losses(np.array([0, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, -1]),
    ...                       np.array([True, False, False, False]), np.array([False, True, False, False]))
    >>> s.tolist(), l.tolist()
    ([0.9, 0.8], [0.0, 1.0])
    """
    given = np.asarray(given)
    rows = np.flatnonzero((np.asarray(heldout, bool) | np.asarray(dropped, bool)) & (given >= 0))
    label = np.asarray(label)
    scores = np.asarray(confidence, np.float64)[rows]
    if rejected is not None:
        scores = np.where(np.asarray(rejected, bool)[rows], -np.inf, scores)
    return scores, (label[rows] != given[rows]).astype(np.float64)


#: Why a pseudo-label was not accepted (the ``reason`` column of pseudolabels.parquet; null = accepted).
BELOW_THRESHOLD, NOVEL, UNCERTIFIED = "below_threshold", "novel", "uncertified"


def acceptance(confidence, passes_rule, novel, *, reject_novel: bool, certificate: Certificate | None = None):
    """(accepted, reason) of each row: the threshold rule or the certified threshold, then novelty.

    Parameters
    ----------
    confidence : ndarray of shape (n_rows,)
    passes_rule : ndarray of shape (n_rows,), bool
        What the threshold rule accepts (used when there is no certificate).
    novel : ndarray of shape (n_rows,), bool
        Judged novel (:func:`labelkit.novelty.novelty_scores`).
    reject_novel : bool
        Novel rows are not accepted (reason ``novel``, which wins over ``below_threshold``).
    certificate : Certificate, optional
        With one, a row is accepted when its confidence reaches the certified threshold; when it
        certified nothing, no row is (reason ``uncertified``).

    Returns
    -------
    accepted : ndarray of shape (n_rows,), bool
    reason : ndarray of shape (n_rows,), object
        None when accepted, else ``"below_threshold"``, ``"novel"`` or ``"uncertified"``.

    Examples
    --------
    >>> acc, why = acceptance(np.array([0.99, 0.5, 0.99]), np.array([True, False, True]), np.array([False, False, True]), reject_novel=True)
    >>> acc.tolist(), why.tolist()
    ([True, False, False], [None, 'below_threshold', 'novel'])
    """
    confidence = np.asarray(confidence, np.float64)
    novel = np.asarray(novel, bool)
    reason = np.full(confidence.shape[0], None, dtype=object)
    if certificate is not None and not certificate.certified:
        reason[:] = UNCERTIFIED
        return np.zeros(confidence.shape[0], bool), reason
    base = confidence >= certificate.threshold if certificate is not None else np.asarray(passes_rule, bool)
    accepted = base & ~novel if reject_novel else base.copy()
    reason[~base] = BELOW_THRESHOLD
    if reject_novel:
        reason[novel] = NOVEL
    return accepted, reason


@dataclass(frozen=True)
class _NoNovelty:
    """Novelty when no labeled sample was scored without its label: NaN scores, nothing novel."""

    score: np.ndarray
    novel: np.ndarray
    threshold: float
    n_reference: int
    knn: dict | None = None


@dataclass(frozen=True, eq=False)
class Acceptance:
    """What :func:`accept_pseudolabels` decided for the rows asked about.

    Attributes
    ----------
    accepted : ndarray of shape (n_rows,), bool
    reason : ndarray of shape (n_rows,), object
        None when accepted, else ``"below_threshold"``, ``"novel"`` or ``"uncertified"``.
    novelty : ndarray of shape (n_rows,), float32
        :func:`labelkit.novelty.novelty_scores` (higher = farther from every known class); NaN
        when fewer than two labeled samples were scored without their label (nothing to
        calibrate on, e.g. zero-shot from class names), and then no row is novel.
    novel : ndarray of shape (n_rows,), bool
    novelty_threshold : float
        The novelty at which a row is judged novel (NaN without references).
    n_reference : int
        Held-out labeled samples novelty was calibrated on.
    certificate : Certificate or None
        With ``max_error``.
    novelty_knn : dict or None
        Novelty's nearest-labeled-neighbour search (``Novelty.knn``: method, why, tuned recall);
        None without references.
    """

    accepted: np.ndarray
    reason: np.ndarray
    novelty: np.ndarray
    novel: np.ndarray
    novelty_threshold: float
    n_reference: int
    certificate: Certificate | None
    novelty_knn: dict | None = None


def accept_pseudolabels(embeddings, given, n_classes: int, result, dropped, rows, *, reject_novel: bool, novelty_rate: float,
                        max_error: float | None = None, error_confidence: float = _ERROR_CONFIDENCE,
                        memory_budget: int | None = None, auto_budget: bool = False, progress: Progress = NULL) -> Acceptance:
    """Which pseudo-labels of ``rows`` to accept, and why not: novelty, then the rule or the certificate.

    1. Novelty (:func:`labelkit.novelty.novelty_scores`) of every sample from the embeddings and
       the teacher's confidence, calibrated on the labeled samples scored without their label
       (the held-out folds and the seeds seed cleaning set aside).
    2. With ``max_error``, the Learn-then-Test certificate (:func:`certify_threshold`) on those
       same samples, for the acceptance rule actually applied (novel samples never accepted when
       ``reject_novel``); otherwise the teacher's threshold rule (``result.accepted``). The
       guarantee needs the held-out and the unlabeled rows scored alike: the pseudolabel stage
       then scores each unlabeled row by one calibration fold's run
       (``labelkit.pseudolabel.pseudolabel(..., unlabeled_by_fold=True)``, which sets
       ``result.fold_scored``), and the threshold is certified on raw confidences. A result
       whose unlabeled rows were scored by the final run (on every label) is refused: that run
       is sharper than the fold runs for the same accuracy (CIFAR-10 with 1,000 labels: 11%
       wrong at confidence 0.95-0.99 on unlabeled rows, 0% on held-out ones), and neither its
       confidences nor their ranks gave a certificate that held (docs/performance.md).
    3. :func:`acceptance` combines them.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
    given : ndarray of shape (n_samples,)
        Given labels, -1 = unlabeled.
    n_classes : int
    result : labelkit.pseudolabel.PseudolabelResult
        The teacher's result for the same rows (``label``, ``confidence``, ``heldout``, ``accepted``).
    dropped : ndarray of shape (n_samples,), bool
        Seeds seed cleaning set aside.
    rows : ndarray of int
        The rows to decide for (the unlabeled ones the stage writes).
    reject_novel : bool
    novelty_rate : float
        Share of known-class samples that may be wrongly judged novel, in (0, 1).
    max_error : float, optional
        Certify the error rate among the accepted pseudo-labels of ``rows`` (as realised, this
        pool: :func:`certify_threshold` with ``pool``) at most this, in (0, 1).
    error_confidence : float, default=0.9
        Confidence of the certificate, ``1 - delta``.
    memory_budget : int or None, default=None
        Bytes novelty's nearest-labeled-neighbour search may take (``novelty_scores``'s
        ``memory_budget``; the cells method or IVF-PQ over it). None or 0: no budget.
    auto_budget : bool, default=False
        ``memory_budget`` is ``--memory-budget auto``'s (:func:`labelkit.knn.choose_method`).
    progress : Progress, default=NULL
        Progress of novelty's search, a query block at a time.

    Returns
    -------
    Acceptance

    References
    ----------
    Angelopoulos et al., "Learn then Test", 2021; see :mod:`labelkit.novelty` for novelty.
    """
    from labelkit.novelty import novelty_scores

    given = np.asarray(given)
    dropped = np.asarray(dropped, bool)
    reference = (np.asarray(result.heldout, bool) | dropped) & (given >= 0)
    if reference.sum() >= 2:
        nov = novelty_scores(embeddings, given, n_classes, reject_rate=novelty_rate, confidence=result.confidence, reference=reference,
                             memory_budget=memory_budget, auto_budget=auto_budget, progress=progress)
    else:  # nothing to calibrate novelty on (zero-shot from class names): no score, nothing judged novel
        n = given.shape[0]
        nov = _NoNovelty(np.full(n, np.nan, np.float32), np.zeros(n, bool), float("nan"), int(reference.sum()))
    cert, decide = None, result.confidence[rows]
    if max_error is not None:
        if not 0 < error_confidence < 1:
            raise BadInputError(f"'error_confidence' must be in (0, 1). Got {error_confidence!r} instead.")
        if reference.any() and not _fold_scored(result, rows):
            raise BadInputError("'result' must score its unlabeled rows as held-out rows are scored for 'max_error': "
                                "labelkit.pseudolabel.pseudolabel(..., unlabeled_by_fold=True).")
        scores, losses = heldout_losses(result.label, result.confidence, given, result.heldout, dropped,
                                        rejected=nov.novel if reject_novel else None)
        # The promise is about these rows' accepted pseudo-labels: certify their realised error.
        pool = np.where(nov.novel[rows], -np.inf, decide) if reject_novel else decide
        cert = certify_threshold(scores, losses, target=max_error, delta=1.0 - error_confidence, pool=pool)
    accepted, reason = acceptance(decide, result.accepted[rows], nov.novel[rows], reject_novel=reject_novel, certificate=cert)
    return Acceptance(accepted, reason, nov.score[rows], nov.novel[rows], nov.threshold, nov.n_reference, cert, nov.knn)


def _fold_scored(result, rows) -> bool:
    """Every row of ``rows`` was scored by one calibration fold's run (``unlabeled_by_fold``)."""
    fs = getattr(result, "fold_scored", None)
    if fs is None:
        return False
    return bool(np.asarray(fs, bool)[rows].all())
