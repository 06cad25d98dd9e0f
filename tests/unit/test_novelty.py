"""labelkit/novelty.py: open-set scores on small clustered arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from labelkit.errors import BadInputError
from labelkit.novelty import novelty_scores


def _clusters(rng, centers, n, spread):
    x = np.concatenate([c + spread * rng.standard_normal((n, centers.shape[1])) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(len(centers)), n)


def test_a_cluster_no_one_labeled_scores_as_novel(rng):
    centers = np.eye(8)[:4] * 3
    x, y = _clusters(rng, centers, 60, 0.4)
    labels = np.where((y < 3) & (np.arange(y.size) % 60 < 20), y, -1)  # class 3: never labeled
    r = novelty_scores(x, labels, 3, k=5, reject_rate=0.05)
    unl = labels < 0
    new, known = unl & (y == 3), unl & (y < 3)
    assert r.score[new].min() > r.score[known].max()  # perfectly separated
    assert r.novel[new].all()
    assert r.novel[known].mean() <= 0.1
    assert r.n_reference == 60
    assert r.novel[unl].tolist() == (r.score[unl] >= r.threshold).tolist()
    assert set(r.components) == {"prototype", "knn"}


def test_known_class_samples_are_wrongly_rejected_at_about_the_stated_rate(rng):
    # Exchangeable labeled and unlabeled samples of the same classes: the conformal p-value makes
    # the share judged novel about reject_rate (at most, in expectation).
    centers = rng.standard_normal((5, 16)) * 2
    x, y = _clusters(rng, centers, 600, 1.0)
    labels = np.where(rng.random(y.size) < 0.4, y, -1)
    for rate in (0.05, 0.2):
        r = novelty_scores(x, labels, 5, reject_rate=rate)
        share = r.novel[labels < 0].mean()
        assert share == pytest.approx(rate, abs=0.03)


def test_a_labeled_sample_is_scored_without_itself():
    # The last labeled sample of class 0 sits far from the rest of its class: with itself as its
    # own neighbour and in its own prototype it would look ordinary.
    x = np.array([[1, 0, 0], [0.99, 0.1, 0], [0.98, 0, 0.2], [0, 1, 0], [0.1, 0.99, 0], [0, 0.98, 0.2], [0, 0, 1]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    r = novelty_scores(x, labels, 2, k=2)
    assert r.score[6] == r.score.max()
    assert r.components["knn"][6] > 0.7 and r.components["prototype"][6] > 0.5


def test_bad_inputs():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(BadInputError, match="at least two labeled samples"):
        novelty_scores(x, np.array([0, -1, -1]), 1)
    with pytest.raises(BadInputError, match="'reject_rate' must be in \\(0, 1\\). Got 1.5 instead."):
        novelty_scores(x, np.array([0, 0, -1]), 1, reject_rate=1.5)
    with pytest.raises(BadInputError, match="'k' must be an integer >= 1"):
        novelty_scores(x, np.array([0, 0, -1]), 1, k=0)
    with pytest.raises(BadInputError, match=r"^novelty's search of the labeled rows for every row's nearest ones: 'memory_budget' of 100 B is "
                                            r"too small for a kNN graph of 2 x 3 with k=2: exact needs about "):
        novelty_scores(x, np.array([0, 0, -1]), 1, memory_budget=100)


def test_a_classifier_confidence_joins_and_only_reference_rows_calibrate(rng):
    centers = np.eye(8)[:3] * 3
    x, y = _clusters(rng, centers, 60, 0.4)
    labels = np.where(np.arange(y.size) % 60 < 30, y, -1)
    conf = rng.uniform(0.85, 0.95, y.size)
    conf[(labels < 0) & (np.arange(y.size) % 60 == 59)] = 0.2  # the classifier doubts one unlabeled sample per class
    ref = labels >= 0
    ref[:5] = False  # e.g. labeled rows scored in-sample
    r = novelty_scores(x, labels, 3, confidence=conf, reference=ref)
    assert set(r.components) == {"prototype", "knn", "confidence"}
    assert r.n_reference == int(ref.sum()) == 85
    doubted = conf < 0.5
    assert r.score[doubted].min() > np.median(r.score[(labels < 0) & ~doubted])
    with pytest.raises(BadInputError, match="'confidence' must be finite"):
        novelty_scores(x, labels, 3, confidence=conf[:3])


def test_under_a_small_memory_budget_the_labeled_search_goes_ivfpq_and_stays_close(rng):
    # Issue 17: the nearest-labeled-neighbour search takes the pseudolabel stage's --memory-budget.
    # 4,400 labeled rows searched by 10,000: exact search's tiles need about 76.5 MB, IVF-PQ 66.7 MB.
    centres = rng.standard_normal((40, 32))
    c = rng.integers(0, 40, 10_000)
    x = (centres[c] + 0.35 * rng.standard_normal((10_000, 32))).astype(np.float32)
    labels = np.where((rng.random(c.size) < 0.5) & (c < 36), c % 10, -1)  # clusters 36-39: never labeled
    exact = novelty_scores(x, labels, 10)
    assert exact.knn["method"] == "exact" and exact.knn["memory_budget"] is None and exact.knn["tuned"] is None
    roomy = novelty_scores(x, labels, 10, memory_budget=10**9)  # a budget that fits keeps the same search, bit for bit
    assert roomy.knn["method"] == "exact" and roomy.knn["reason"].endswith("within the memory budget of 1 GB")
    np.testing.assert_array_equal(roomy.score, exact.score)
    approx = novelty_scores(x, labels, 10, memory_budget=75_000_000)
    used = approx.knn
    assert (used["method"], used["pq_m"], used["memory_budget"]) == ("ivfpq", 4, 75_000_000)
    assert used["estimate_bytes"] <= 75_000_000 < exact.knn["estimate_bytes"]
    assert used["reason"].startswith("memory budget of 75 MB: exact needs about ")
    assert used["tuned"]["sample_recall"] >= used["tuned"]["target_recall"] == 0.95
    # Re-ranked by exact cosine, a missed neighbour can only make the distance larger.
    d_exact, d_approx = exact.components["knn"], approx.components["knn"]
    assert (d_approx >= d_exact - 1e-5).all()
    assert np.abs(d_approx - d_exact).mean() < 0.005 and np.abs(d_approx - d_exact).max() < 0.1
    assert (approx.novel == exact.novel).mean() > 0.99
    unseen = (labels < 0) & (c >= 36)
    assert approx.novel[unseen].all() and exact.novel[unseen].all()


@pytest.mark.parametrize("method", ["auto", "ivfpq"])
def test_searching_in_query_blocks_gives_the_same_scores(rng, monkeypatch, method):
    # Issue 17 (10M rows): each query block's (rows, k + 1) results are reduced before the next, one knob tuned on all rows.
    from labelkit import knn, novelty

    centres = rng.standard_normal((40, 32))
    c = rng.integers(0, 40, 10_000)
    x = (centres[c] + 0.35 * rng.standard_normal((10_000, 32))).astype(np.float32)
    labels = np.where((rng.random(c.size) < 0.5) & (c < 36), c % 10, -1)
    choose = knn.choose_method
    monkeypatch.setattr(knn, "choose_method", lambda *a, **kw: choose(*a, **{**kw, "method": method}))  # the same index both ways
    whole = novelty_scores(x, labels, 10)
    monkeypatch.setattr(novelty, "QUERY_BLOCK", 1_500)  # 7 blocks, the last one short
    blocks = novelty_scores(x, labels, 10)
    assert blocks.knn["method"] == whole.knn["method"] == ("exact" if method == "auto" else "ivfpq")
    np.testing.assert_array_equal(blocks.components["knn"], whole.components["knn"])
    np.testing.assert_array_equal(blocks.score, whole.score)
    assert blocks.knn["tuned"] == whole.knn["tuned"] and (method == "auto" or whole.knn["tuned"]["nprobe"] >= 1)
    assert blocks.knn["estimate_bytes"] < whole.knn["estimate_bytes"]  # the model counts one block's results, not every row's


def test_a_budget_counts_one_query_block_of_results(rng, monkeypatch):
    from labelkit import novelty

    centres = rng.standard_normal((40, 32))
    c = rng.integers(0, 40, 10_000)
    x = (centres[c] + 0.35 * rng.standard_normal((10_000, 32))).astype(np.float32)
    labels = np.where((rng.random(c.size) < 0.5) & (c < 36), c % 10, -1)
    assert novelty_scores(x, labels, 10, memory_budget=75_000_000).knn["method"] == "ivfpq"  # exact's 10,000-row tiles and results: 76.5 MB
    monkeypatch.setattr(novelty, "QUERY_BLOCK", 1_500)
    assert novelty_scores(x, labels, 10, memory_budget=75_000_000).knn["method"] == "exact"  # a 1,500-row block's fit


def test_the_memory_model_counts_the_results_held_at_once():
    from labelkit import knn

    whole = knn.memory_estimate("ivfpq", 10**6, 512, 11, n_queries=10**7)
    blocked = knn.memory_estimate("ivfpq", 10**6, 512, 11, n_queries=10**7, result_rows=262_144)
    # float32 + int64 per neighbour: every row's results (1.32 GB) are counted whole, one block's (35 MB) blocked
    assert whole > 10**7 * 11 * 12 > blocked
    assert knn.memory_estimate("ivfpq", 10**6, 512, 11, n_queries=10**7, result_rows=10**7) == whole
    # exact: three results of width k + 1, and a scratch tile of one query batch (at most the rows held)
    assert knn.memory_estimate("exact", 1000, 8, 10, result_rows=100) == 100 * 1000 * 4 + 3 * 100 * 11 * 12
