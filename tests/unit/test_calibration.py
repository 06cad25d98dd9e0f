"""labelkit/calibration.py: ECE by hand, temperatures recovered from sampled labels, EM on a known shift."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import calibration as cb
from labelkit._probability import softmax
from labelkit.errors import BadInputError


def test_ece_hand_computed():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    # bins of width 0.1: {0.9, 0.9}: acc 0.5 gap 0.4; {0.6}: gap 0.4; {0.8}: gap 0.2.
    assert cb.expected_calibration_error(p, y, n_bins=10) == pytest.approx((2 * 0.4 + 0.4 + 0.2) / 4)
    assert cb.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def _sample_from(logits, rng):
    p = softmax(logits)
    return np.array([rng.choice(p.shape[1], p=row) for row in p])


def test_fit_temperature_recovers_the_true_temperature(rng):
    z = rng.normal(scale=2.0, size=(4000, 5))
    y = _sample_from(z, rng)  # labels drawn from softmax(z): the true temperature of 3 z is 3
    assert cb.fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.08)


def test_calibration_reduces_ece_on_an_overconfident_toy(rng):
    z = rng.normal(scale=2.0, size=(3000, 4))
    y = _sample_from(z, rng)
    over = 4.0 * z  # overconfident scores
    fit, test = slice(0, 1500), slice(1500, None)
    t = cb.fit_temperature(over[fit], y[fit])
    before = cb.expected_calibration_error(softmax(over[test]), y[test])
    after = cb.expected_calibration_error(softmax(over[test] / t), y[test])
    assert t > 2.5 and before > 0.15 and after < 0.05


def test_fit_temperature_smoothing_keeps_perfect_scores_finite():
    z = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    y = np.array([0, 1] * 10)
    assert cb.fit_temperature(z, y) == pytest.approx(1e-3)  # no prior: T -> lower bound
    eps = cb._laplace_smoothing(20, 2)
    t = cb.fit_temperature(z, y, smoothing=eps)
    conf = softmax(z / t).max(axis=1)
    assert conf.mean() == pytest.approx(21 / 22, abs=1e-3)  # rule of succession (n+1)/(n+2)


# ------------------------------------------------------------------ prior shift


def test_em_prior_shift_recovers_a_known_shift(rng):
    # Two unit-variance Gaussians at -1 and +1; posteriors computed under training priors 0.5/0.5.
    n, pi_new = 20000, np.array([0.8, 0.2])
    y = rng.choice(2, size=n, p=pi_new)
    x = rng.normal(loc=np.where(y == 0, -1.0, 1.0))
    lik = np.stack([np.exp(-0.5 * (x + 1) ** 2), np.exp(-0.5 * (x - 1) ** 2)], axis=1)
    post = lik / lik.sum(axis=1, keepdims=True)
    adjusted, priors = cb.em_prior_shift(post, np.array([0.5, 0.5]), max_iter=1000, tol=1e-8)
    np.testing.assert_allclose(priors, pi_new, atol=0.02)
    true_post = lik * pi_new / (lik * pi_new).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(adjusted, true_post, atol=0.03)
    assert (adjusted.argmax(1) == y).mean() > (post.argmax(1) == y).mean()


def test_em_prior_shift_without_shift_stays_put(rng):
    p = rng.dirichlet(np.ones(3), size=300)
    pri = p.mean(axis=0)
    adjusted, priors = cb.em_prior_shift(p, pri, max_iter=50)
    np.testing.assert_allclose(priors, pri, atol=1e-6)
    np.testing.assert_allclose(adjusted, p, atol=1e-5)


def test_em_prior_shift_rejects_bad_priors():
    with pytest.raises(BadInputError, match="'train_priors' must be 2 positive values summing to 1"):
        cb.em_prior_shift(np.array([[0.5, 0.5]]), np.array([1.0, 0.0]))



def test_folds_are_stratified():
    labels = np.array([0] * 10 + [1] * 5 + [-1] * 3)
    fold = cb._folds(labels, 5, seed=0)
    assert (fold[labels < 0] == -1).all()
    for c in (0, 1):
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1


def _score_from(logits):
    def score(train, rows):  # a fixed score, whatever labels are hidden
        return {"s": softmax(logits[rows].copy())}

    return score


def test_calibrate_recovers_a_known_temperature_from_held_out_folds(rng):
    z = rng.normal(scale=1.5, size=(3000, 4))
    labels = _sample_from(z, rng)  # drawn from softmax(z): the score softmax(3 z) is 3x too sharp
    c = cb.calibrate(labels, _score_from(3.0 * z), {"s": 1.0}, 4, n_folds=5, seed=0)
    assert c.n_calibration == 3000 and c.rows.tolist() == list(range(3000))
    assert c.temperatures["s"] == pytest.approx(3.0, rel=0.1) and c.temperature == 1.0
    assert c.ece < 0.03 < c.ece_uncalibrated


def test_calibrate_scores_whole_folds_until_max_samples(rng):
    z = rng.normal(scale=1.5, size=(1000, 4))
    labels = _sample_from(z, rng)
    calls = []

    def score(train, rows):
        calls.append(rows.size)
        assert (train[rows] == -1).all() and (train >= 0).sum() == 1000 - rows.size  # only its fold is hidden
        return {"s": softmax(3.0 * z[rows])}

    c = cb.calibrate(labels, score, {"s": 1.0}, 4, n_folds=5, max_samples=150)
    assert calls == [200] and c.rows.size == 200  # one fold of 200 is enough for 150
    assert c.temperatures["s"] == pytest.approx(3.0, rel=0.25) and np.isfinite(c.ece)  # cross-fitted on two halves


def test_calibrate_scores_extra_rows_once_each_like_a_held_out_row_of_their_fold(rng):
    z = rng.normal(scale=1.5, size=(1200, 4))
    labels = _sample_from(z, rng)
    labels[1000:] = -1  # 200 unlabeled rows, scored as extra rows
    extra = np.arange(1000, 1200)
    seen = []

    def score(train, rows):
        seen.append(rows[rows >= 1000])
        assert (train[rows[rows < 1000]] == -1).all()  # the fold's own labeled rows are hidden
        return {"s": softmax(3.0 * z[rows])}

    c = cb.calibrate(labels, score, {"s": 1.0}, 4, n_folds=5, seed=0, extra_rows=extra)
    together = np.concatenate(seen)
    assert np.sort(together).tolist() == extra.tolist()  # each extra row is scored by exactly one fold's run
    assert min(len(s) for s in seen) > 15  # spread over the five folds
    assert c.extra_rows.tolist() == extra.tolist() and c.extra_probs.shape == (200, 4)
    # Same raw score, same fold -> the same calibrated probabilities as that fold's held-out row.
    fold_of_first = next(i for i, s in enumerate(seen) if 1000 in s)
    folds = cb._folds(labels, 5, 0)
    twin = int(np.flatnonzero(folds == np.unique(folds[folds >= 0])[fold_of_first])[0])
    dup = z.copy()
    dup[1000] = dup[twin]
    c2 = cb.calibrate(labels, lambda t, r: {"s": softmax(3.0 * dup[r])}, {"s": 1.0}, 4, n_folds=5, seed=0, extra_rows=extra)
    np.testing.assert_allclose(c2.extra_probs[0], c2.probs[np.searchsorted(c2.rows, twin)], rtol=1e-12)
    np.testing.assert_allclose(c2.extra_probs.sum(axis=1), 1.0)
    # No extra rows: nothing changes and none are reported.
    c0 = cb.calibrate(labels, lambda t, r: {"s": softmax(3.0 * z[r])}, {"s": 1.0}, 4, n_folds=5, seed=0)
    assert c0.extra_rows.size == 0 and c0.extra_probs is None
    with pytest.raises(BadInputError, match="extra_rows"):
        cb.calibrate(labels, score, {"s": 1.0}, 4, extra_rows=[0])


def test_calibration_apply_is_the_weighted_mixture_of_tempered_scores():
    p1 = np.array([[0.8, 0.2], [0.3, 0.7]])
    p2 = np.array([[0.6, 0.4], [0.5, 0.5]])
    c = cb.Calibration({"a": 2.0, "b": 0.5}, 1.5, {"a": 1.0, "b": 3.0}, np.zeros(0, np.int64), np.zeros((0, 2)), np.nan, np.nan, 0)
    mix = (1.0 * softmax(np.log(p1) / 2.0) + 3.0 * softmax(np.log(p2) / 0.5)) / 4.0
    np.testing.assert_allclose(c.apply({"a": p1, "b": p2}), softmax(np.log(mix) / 1.5), atol=1e-6)


def test_calibrate_without_folds_is_the_identity():
    labels = np.array([0, 1, -1])
    c = cb.calibrate(labels, _score_from(np.zeros((3, 2))), {"s": 1.0}, 2, n_folds=0)
    assert c.temperatures == {"s": 1.0} and c.temperature == 1.0 and c.rows.size == 0 and np.isnan(c.ece)


def test_calibrate_keeps_the_alternative_weights_with_the_lower_heldout_nll():
    # 'good' is right 9 times in 10, 'noise' is uniform-ish at random: giving 'good' weight
    # must win on the held-out folds; an alternative that weights 'noise' more must lose.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    pred = np.where(rng.random(labels.size) < 0.9, labels, (labels + 1) % 3)
    good = np.full((labels.size, 3), 0.05)
    good[np.arange(labels.size), pred] = 0.9
    noise = rng.dirichlet(np.ones(3), size=labels.size)

    def score(train, rows):
        return {"noise": noise[rows], "good": good[rows]}

    base = {"noise": 1.0, "good": 0.0}
    c = cb.calibrate(labels, score, base, 3, n_folds=4, alternatives=[{"noise": 1.0, "good": 2.0}, {"noise": 2.0, "good": 0.0}])
    assert c.weights == {"noise": 1.0, "good": 2.0}
    kept = cb.calibrate(labels, score, {"noise": 0.0, "good": 1.0}, 3, n_folds=4, alternatives=[{"noise": 1.0, "good": 1.0}])
    assert kept.weights == {"noise": 0.0, "good": 1.0}
