"""labelkit.probability_sources: each source computed once, the choice, the second opinion."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit import evidence
from labelkit.errors import BadInputError
from labelkit.probability_sources import Source, Sources, choose, second_opinion


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 15)
    x = 5.0 * np.eye(3, 6)[y] + rng.normal(size=(45, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def test_each_source_is_computed_once_and_knn_is_the_leave_one_out_vote():
    x, y = _clusters()
    calls = []

    def propagation():
        calls.append(1)
        return np.full((45, 3), 1 / 3)

    src = Sources(y, x, 3, k=5, folds=3, propagation=propagation)
    assert np.array_equal(src.get("knn"), evidence.knn_vote_probs(y, *src.graph, 3))
    assert src.get(Source.PROPAGATION) is src.get("propagation") and calls == [1]
    assert set(src.computed()) == {"knn", "propagation"}


def test_auto_keeps_the_most_accurate_and_propagation_joins_only_transductively():
    x, y = _clusters()
    src = Sources(y, x, 3, k=5, folds=3, propagation=lambda: np.full((45, 3), 1 / 3))
    probs, choice = choose(src, "auto", transductive=False)
    assert set(choice["scores"]) == {"crossval", "knn"} and choice["chosen"] in ("crossval", "knn")
    assert (probs.argmax(axis=1) == y).mean() > 0.9
    _, choice = choose(src, "auto", transductive=True)
    assert set(choice["scores"]) == {"crossval", "knn", "propagation"} and choice["chosen"] != "propagation"
    _, choice = choose(src, "knn", transductive=True)
    assert choice == {"requested": "knn", "chosen": "knn", "by": choice["by"], "scores": choice["scores"]} and set(choice["scores"]) == {"knn"}


def test_second_opinion_is_the_other_model_family():
    x, y = _clusters()
    src = Sources(y, x, 3, k=5, folds=3)
    assert second_opinion(src, "crossval") is src.get("knn")
    assert second_opinion(src, "knn") is src.get("crossval")
    assert second_opinion(src, "propagation") is src.get("crossval")
    with pytest.raises(BadInputError, match="propagation source needs the graph of every sample"):
        src.get("propagation")
