"""labelkit/thresholds.py: every acceptance rule on a six-row table whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import thresholds as th
from labelkit.errors import BadInputError

PROBS = np.array(
    [
        [0.97, 0.02, 0.01],  # 0: class 0, very confident
        [0.96, 0.03, 0.01],  # 1: class 0
        [0.90, 0.05, 0.05],  # 2: class 0, below 0.95
        [0.10, 0.80, 0.10],  # 3: class 1
        [0.05, 0.15, 0.80],  # 4: class 2
        [0.40, 0.35, 0.25],  # 5: class 0, ambiguous
    ]
)


def test_threshold_fixed():
    assert th.threshold_fixed(PROBS, tau=0.95).tolist() == [True, True, False, False, False, False]
    assert th.threshold_fixed(PROBS, tau=0.8).tolist() == [True, True, True, True, True, False]


def test_threshold_flexmatch_lowers_thresholds_of_unlearned_classes():
    # sigma = [2, 0, 0]: without warm-up beta = [1, 0, 0], thresholds [0.95, 0, 0].
    assert th.threshold_flexmatch(PROBS, tau=0.95, warmup=False).tolist() == [True, True, False, True, True, False]
    # With warm-up the 4 unconfident samples normalise: beta_0 = 2/4, M = 0.5/1.5, threshold 0.3167.
    assert th.threshold_flexmatch(PROBS, tau=0.95, warmup=True).tolist() == [True, True, True, True, True, True]
    p = PROBS.copy()
    p[5] = [0.30, 0.40, 0.30]  # now class 1, conf 0.4 >= threshold 0
    assert th.threshold_flexmatch(p, tau=0.95, warmup=True)[5]


def test_threshold_flexmatch_mapping_value():
    # 3 confident of class 0, 1 of class 1, 0 unused: beta = [1, 1/3], threshold_1 = (1/3)/(5/3) tau = 0.2 tau.
    p = np.array([[0.99, 0.01]] * 3 + [[0.01, 0.99], [0.21, 0.79], [0.81, 0.19]])
    tau = 0.99
    # Row 4: class 1 with conf 0.79 >= 0.198; row 5: class 0, 0.81 < 0.99.
    assert th.threshold_flexmatch(p, tau=tau, warmup=False).tolist() == [True, True, True, True, True, False]


def test_threshold_top_per_class():
    assert th.threshold_top_per_class(PROBS, n_per_class=1).tolist() == [True, False, False, True, True, False]
    assert th.threshold_top_per_class(PROBS, n_per_class=2).tolist() == [True, True, False, True, True, False]
    assert th.threshold_top_per_class(PROBS, n_per_class=0).sum() == 0


def test_threshold_margin():
    # margins: 0.95, 0.93, 0.85, 0.70, 0.65, 0.05
    assert th.threshold_margin(PROBS, min_margin=0.8).tolist() == [True, True, True, False, False, False]
    assert th.threshold_margin(PROBS, min_margin=0.0).all()


def test_accept_dispatches_on_rule():
    assert th.accept(PROBS, rule="top_per_class", value=1).tolist() == th.threshold_top_per_class(PROBS, n_per_class=1).tolist()
    assert th.accept(PROBS, rule=th.ThresholdRule.MARGIN, value=0.8).tolist() == th.threshold_margin(PROBS, min_margin=0.8).tolist()


def test_accept_rejects_unknown_rule():
    with pytest.raises(BadInputError, match="'rule' must be one of"):
        th.accept(PROBS, rule="entropy", value=0.5)


def test_threshold_rejects_bad_tau():
    with pytest.raises(BadInputError, match=r"'tau' must be in \[0, 1\]. Got 1.5 instead."):
        th.threshold_fixed(PROBS, tau=1.5)
