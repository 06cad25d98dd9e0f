"""labelkit/guarantee.py: Learn-then-Test thresholds on arrays whose bounds are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit.errors import BadInputError
from labelkit.guarantee import DEFAULT_GRID, certify_threshold


def test_zero_errors_give_the_clopper_pearson_bound():
    # 400 right at 0.99, then 100 at 0.6 of which half are wrong: only thresholds above 0.6 pass.
    scores = np.r_[np.full(400, 0.99), np.full(100, 0.6)]
    losses = np.r_[np.zeros(400), np.ones(50), np.zeros(50)]
    c = certify_threshold(scores, losses, target=0.02, delta=0.1)
    assert c.certified and c.method == "binomial"
    # k = 0 of n = 400: the bound solves (1 - b) ** 400 = delta.
    assert c.error_bound == pytest.approx(1 - 0.1 ** (1 / 400), rel=1e-9)
    assert c.n_accepted == 400 and c.n_errors == 0 and c.coverage == 0.8
    # The lowest grid threshold that still excludes the 0.6 block.
    assert c.threshold == DEFAULT_GRID[DEFAULT_GRID > 0.6].min()


def test_known_binomial_bound_with_errors():
    # 1000 accepted, 5 wrong: the Clopper-Pearson 90% upper bound is Beta(0.9; 6, 995).
    from scipy import stats

    scores = np.full(1000, 0.95)
    losses = np.zeros(1000)
    losses[:5] = 1
    c = certify_threshold(scores, losses, target=0.02, delta=0.1)
    assert c.certified
    assert c.error_bound == pytest.approx(stats.beta.ppf(0.9, 6, 995))
    assert c.error_bound == pytest.approx(0.00926, abs=1e-4)
    assert c.coverage == 1.0


def test_too_few_labels_cannot_certify_and_say_what_could_be():
    # 50 held-out samples, none wrong: (1 - 0.02) ** 50 = 0.36 > 0.1, so 2% cannot be certified.
    c = certify_threshold(np.full(50, 0.99), np.zeros(50), target=0.02, delta=0.1)
    assert not c.certified
    assert np.isnan(c.threshold) and np.isnan(c.error_bound) and c.coverage == 0.0
    # What the same 50 samples do certify: (1 - b) ** 50 = 0.1, b = 0.045.
    assert c.best_bound == pytest.approx(1 - 0.1 ** (1 / 50), abs=1e-9)
    assert c.best_coverage == 1.0
    assert certify_threshold(np.full(50, 0.99), np.zeros(50), target=0.05, delta=0.1).certified


def test_fixed_sequence_stops_at_the_first_hypothesis_it_cannot_reject():
    # Grid 0.9 > 0.5 > 0.1. Above 0.9: 200 right. Down to 0.5: 100 more, 60 wrong (fails).
    # Down to 0.1: 3000 more right, so that threshold alone would pass; the sequence never gets there.
    scores = np.r_[np.full(200, 0.95), np.full(100, 0.7), np.full(3000, 0.2)]
    losses = np.r_[np.zeros(200), np.ones(60), np.zeros(40), np.zeros(3000)]
    c = certify_threshold(scores, losses, target=0.05, delta=0.1, grid=[0.1, 0.9, 0.5])
    assert c.certified and c.threshold == 0.9 and c.n_accepted == 200


def test_thresholds_accepting_too_few_are_passed_over():
    # The top grid point accepts 10 samples (no outcome could reject at 2%); the sequence starts lower.
    scores = np.r_[np.full(10, 0.999), np.full(500, 0.95)]
    c = certify_threshold(scores, np.zeros(510), target=0.02, delta=0.1, grid=[0.99, 0.9])
    assert c.certified and c.threshold == 0.9 and c.n_accepted == 510


def test_one_early_error_among_the_most_confident_does_not_end_the_sequence():
    # 1000 samples, the third most confident wrong. The first count any outcome could reject at 5%
    # is 45 (0.95 ** 45 < 0.1), where one error gives p = 0.33 and would end the sequence; it
    # starts at 77 instead (where one error in 77 passes), so every threshold passes.
    scores = np.linspace(1.0, 0.5, 1000)
    losses = np.zeros(1000)
    losses[2] = 1
    c = certify_threshold(scores, losses, target=0.05, delta=0.1)
    assert c.certified and c.coverage == 1.0 and c.n_errors == 1


def test_the_sequence_starts_where_a_third_of_the_target_rate_would_pass():
    from scipy import stats

    from labelkit.guarantee import _start_index

    n = np.arange(1, 5001)  # held-out counts of a grid, highest threshold first
    # Without a pool, floor(n * 0.02 / 3) errors pass a 2% target from n = 194 on: 1 error of 194
    # has a 90% Clopper-Pearson bound under 2%, of 193 over it.
    assert n[_start_index(n, None, 0.02, 0.1, True)] == 194
    assert stats.beta.ppf(0.9, 2, 193) <= 0.02 < stats.beta.ppf(0.9, 2, 192)
    assert n[_start_index(n, None, 0.2, 0.1, True)] == 18
    # With a pool three times larger, each bound also covers the pool's scatter: a later start.
    assert n[_start_index(n, 3 * n, 0.02, 0.1, True)] == 517
    assert n[_start_index(n, 3 * n, 0.2, 0.1, True)] == 49
    # Too few for that: from where no error at all would pass (0.98 ** 114 < 0.1); fewer still: nothing.
    assert _start_index(np.arange(1, 151), None, 0.02, 0.1, True) == 113
    assert _start_index(np.arange(1, 51), None, 0.02, 0.1, True) == 50


def test_a_pool_bounds_its_realised_error_rate_not_the_risk():
    from scipy import stats

    # 2,000 held-out samples, 1% wrong, all above every threshold; a pool of 300 to accept.
    scores = np.full(2000, 0.99)
    losses = np.zeros(2000)
    losses[:20] = 1
    risk = certify_threshold(scores, losses, target=0.02, delta=0.1, grid=[0.9])
    pooled = certify_threshold(scores, losses, target=0.02, delta=0.1, grid=[0.9], pool=np.full(300, 0.95))
    u = stats.beta.ppf(0.95, 21, 1980)  # the risk's bound at delta / 2
    assert risk.error_bound == pytest.approx(stats.beta.ppf(0.9, 21, 1980))
    assert risk.certified and not pooled.certified  # 300 accepted scatter: up to 8 errors is 2.7%
    assert pooled.best_bound == pytest.approx(stats.binom.ppf(0.95, 300, u) / 300)
    big = certify_threshold(scores, losses, target=0.02, delta=0.1, grid=[0.9], pool=np.full(20000, 0.95))
    assert big.certified and big.error_bound == pytest.approx(stats.binom.ppf(0.95, 20000, u) / 20000)
    with pytest.raises(BadInputError, match="'pool'"):
        certify_threshold(scores, losses, target=0.02, pool=[np.nan])


def test_the_pool_guarantee_holds_at_its_rate_on_the_realised_error(rng):
    # Scores uniform on [0.5, 1], wrong with probability (1 - score) / 4 (the error among scores
    # >= l is (1 - l) / 8); a pool of 3,000 drawn alike. The realised error of the pool's
    # accepted share exceeds the 5% target in at most delta of the runs.
    violations, certified = 0, 0
    for _ in range(200):
        s, p = rng.uniform(0.5, 1.0, 1000), rng.uniform(0.5, 1.0, 3000)
        wrong = (rng.random(1000) < (1 - s) / 4).astype(float)
        pool_wrong = rng.random(3000) < (1 - p) / 4
        c = certify_threshold(s, wrong, target=0.05, delta=0.1, pool=p)
        certified += c.certified
        violations += c.certified and pool_wrong[p >= c.threshold].mean() > 0.05
    assert certified >= 140  # 146 with this seed: the split delta and the pool's scatter cost some power
    assert violations <= 200 * 0.1


def test_fractional_losses_use_hoeffding_bentkus_and_are_more_conservative():
    scores = np.full(1000, 0.9)
    binary = np.zeros(1000)
    binary[:10] = 1
    frac = np.zeros(1000)
    frac[:20] = 0.5  # the same mean loss, 0.01
    b = certify_threshold(scores, binary, target=0.05)
    f = certify_threshold(scores, frac, target=0.05)
    assert b.method == "binomial" and f.method == "hoeffding_bentkus"
    assert b.certified and f.certified
    assert f.error_bound > b.error_bound > 0.01


def test_the_guarantee_holds_at_its_rate_on_calibrated_scores(rng):
    # Scores uniform on [0.5, 1], wrong with probability 1 - score: the error among scores >= l
    # is (1 - l) / 2, so a target of 0.1 is met exactly by thresholds >= 0.8.
    violations, certified = 0, 0
    for _ in range(200):
        s = rng.uniform(0.5, 1.0, 1000)
        wrong = (rng.random(1000) < 1 - s).astype(float)
        c = certify_threshold(s, wrong, target=0.1, delta=0.1)
        certified += c.certified
        violations += c.certified and c.threshold < 0.8
    assert certified >= 150  # stopping at the first failure costs power, not validity
    assert violations <= 200 * 0.1  # at most delta (it is typically far below)


def test_bad_inputs():
    with pytest.raises(BadInputError, match="'target' must be in \\(0, 1\\). Got 0 instead."):
        certify_threshold([0.9], [0], target=0)
    with pytest.raises(BadInputError, match="'losses' must lie in \\[0, 1\\]"):
        certify_threshold([0.9], [2], target=0.1)
    with pytest.raises(BadInputError, match="same length"):
        certify_threshold([0.9, 0.8], [0], target=0.1)


def test_no_held_out_samples():
    c = certify_threshold(np.zeros(0), np.zeros(0), target=0.1)
    assert not c.certified and np.isnan(c.best_bound) and c.n_calibration == 0
    assert c.to_dict()["threshold"] is None


def test_heldout_losses_keep_dropped_seeds_and_skip_in_sample_rows():
    from labelkit.guarantee import heldout_losses

    label = np.array([0, 1, 1, 0, 2])
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    given = np.array([0, 0, 1, -1, 2])
    heldout = np.array([True, False, False, False, False])
    dropped = np.array([False, True, False, False, False])  # row 2: labeled but scored in-sample, row 4 too
    s, losses = heldout_losses(label, conf, given, heldout, dropped)
    assert s.tolist() == [0.9, 0.8] and losses.tolist() == [0.0, 1.0]
    s, loss = heldout_losses(label, conf, given, heldout, dropped, rejected=np.array([True, False, False, False, False]))
    assert s.tolist() == [-np.inf, 0.8]
    # A rejected sample is never accepted, whatever the threshold.
    c = certify_threshold(np.r_[s, np.full(300, 0.9)], np.r_[loss, np.zeros(300)], target=0.5, grid=[0.85, 0.0])
    assert c.certified and c.n_accepted == 301 and c.n_errors == 1


def test_acceptance_reasons():
    from labelkit.guarantee import acceptance

    conf = np.array([0.99, 0.97, 0.6, 0.99])
    rule = np.array([True, True, False, True])
    novel = np.array([False, False, True, True])
    acc, why = acceptance(conf, rule, novel, reject_novel=False)
    assert acc.tolist() == [True, True, False, True] and why.tolist() == [None, None, "below_threshold", None]
    acc, why = acceptance(conf, rule, novel, reject_novel=True)
    assert acc.tolist() == [True, True, False, False] and why.tolist() == [None, None, "novel", "novel"]
    cert = certify_threshold(np.full(500, 0.98), np.zeros(500), target=0.02, grid=[0.98])
    acc, why = acceptance(conf, rule, novel, reject_novel=False, certificate=cert)
    assert acc.tolist() == [True, False, False, True] and why.tolist() == [None, "below_threshold", "below_threshold", None]
    none = certify_threshold(np.full(50, 0.98), np.zeros(50), target=0.02)
    acc, why = acceptance(conf, rule, novel, reject_novel=True, certificate=none)
    assert not acc.any() and set(why) == {"uncertified"}


def test_accept_pseudolabels_without_labeled_references_judges_nothing_novel(rng):
    # Zero-shot (no labeled sample): novelty has nothing to calibrate on; rows are decided by the rule alone.
    from types import SimpleNamespace

    from labelkit.guarantee import accept_pseudolabels

    n = 6
    result = SimpleNamespace(label=np.zeros(n, int), confidence=np.full(n, 0.9), heldout=np.zeros(n, bool),
                             accepted=np.array([True, False] * 3))
    a = accept_pseudolabels(rng.standard_normal((n, 4)), np.full(n, -1), 2, result, np.zeros(n, bool), np.arange(n),
                            reject_novel=True, novelty_rate=0.05)
    assert np.isnan(a.novelty).all() and not a.novel.any() and np.isnan(a.novelty_threshold) and a.n_reference == 0
    assert a.accepted.tolist() == [True, False] * 3 and a.reason.tolist() == [None, "below_threshold"] * 3


def test_max_error_refuses_unlabeled_rows_scored_unlike_the_held_out_ones(rng):
    # Scored by the final run (not one fold's), the unlabeled rows are not exchangeable with the
    # held-out ones the certificate is made on: an error, not an approximate certificate.
    from types import SimpleNamespace

    from labelkit.guarantee import accept_pseudolabels

    n = 40
    given = np.where(np.arange(n) < 20, np.arange(n) % 2, -1)
    result = SimpleNamespace(label=np.arange(n) % 2, confidence=np.full(n, 0.9), heldout=given >= 0, accepted=np.zeros(n, bool),
                             fold_scored=np.zeros(n, bool))
    rows = np.flatnonzero(given < 0)
    with pytest.raises(BadInputError, match="unlabeled_by_fold=True"):
        accept_pseudolabels(rng.standard_normal((n, 4)), given, 2, result, np.zeros(n, bool), rows, reject_novel=False,
                            novelty_rate=0.05, max_error=0.1)
    result.fold_scored = given < 0
    a = accept_pseudolabels(rng.standard_normal((n, 4)), given, 2, result, np.zeros(n, bool), rows, reject_novel=False,
                            novelty_rate=0.05, max_error=0.1)
    assert a.certificate is not None and a.certificate.n_calibration == 20


def test_fractional_pool_bound_is_hoeffdings_relative_entropy_quantile(rng):
    """Issue 19 (multi-label --max-error): the pool's bound for losses in [0, 1] solves
    m KL(q || u) = log(1 / delta), never above Hoeffding's additive u + sqrt(log(1/delta) / 2m)."""
    from labelkit.guarantee import _chernoff_quantile

    m, u = np.array([50.0, 200.0, 1000.0]), np.array([0.02, 0.02, 0.1])
    q = _chernoff_quantile(m, u, 0.05)
    kl = q * np.log(q / u) + (1 - q) * np.log((1 - q) / (1 - u))
    np.testing.assert_allclose(np.exp(-m * kl), 0.05, rtol=1e-6)
    additive = u + np.sqrt(np.log(1 / 0.05) / (2 * m))
    assert (q < additive).all() and q[0] < additive[0] - 0.08  # far tighter for small u
    assert _chernoff_quantile(200.0, 0.0, 0.05) == 0.0 and _chernoff_quantile(200.0, 1.0, 0.05) == 1.0  # no loss / every loss
    # Valid: the mean of 200 losses in {0, 0.5, 1} with expectation 0.02 exceeds it at most 5% of draws.
    draws = rng.choice([0.0, 0.5, 1.0], p=[0.97, 0.02, 0.01], size=(4000, 200)).mean(axis=1)
    assert (draws > _chernoff_quantile(200.0, 0.02, 0.05)).mean() <= 0.05
