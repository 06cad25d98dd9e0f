"""labelkit.knn: exact search against a numpy oracle, self-exclusion, padding, HNSW/IVF recall,
batching, the auto/GPU choices, recall_at_k and k-means."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from labelkit import knn
from labelkit.errors import BadInputError, LabelkitWarning
from labelkit.knn import AnnParams, KnnIndex, kmeans, knn_graph, recall_at_k, search


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(n, d, n_clusters, seed, spread=0.3):
    """Unit vectors around random centres: neighbourhoods with structure, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    y = rng.integers(0, n_clusters, n)
    return _unit(centres[y] + spread * rng.standard_normal((n, d)))


def _brute_force(base, queries, k, exclude_self=False):
    """The oracle: full similarity matrix, argsort."""
    s = queries @ base.T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


class _RecordingProgress:
    def __init__(self):
        self.tasks = {}

    @contextmanager
    def task(self, description, total=None):
        rec = self.tasks.setdefault(description, {"total": total, "done": 0})

        class T:
            def advance(self, n=1):
                rec["done"] += n

            def update(self, **fields):
                pass

        yield T()

    def log(self, message):
        pass


def test_exact_graph_equals_numpy_brute_force():
    x = _unit(np.random.default_rng(0).standard_normal((300, 16)))
    sims, idx = knn_graph(x, 7, method="exact", device="cpu")
    want_s, want_i = _brute_force(x, x, 7, exclude_self=True)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and idx.shape == (300, 7)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)  # descending


def test_exact_graph_tiles_base_and_queries(monkeypatch):
    # several base tiles and query blocks exercise the running top-k merge
    monkeypatch.setattr(knn, "EXACT_BASE_BLOCK", 37)
    x = _unit(np.random.default_rng(1).standard_normal((250, 8)))
    sims, idx = knn_graph(x, 5, method="exact", batch_size=19, device="cpu")
    want_s, want_i = _brute_force(x, x, 5, exclude_self=True)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)


def test_exact_search_tiles_base_and_queries(monkeypatch):
    monkeypatch.setattr(knn, "EXACT_BASE_BLOCK", 23)
    rng = np.random.default_rng(17)
    base, queries = _unit(rng.standard_normal((100, 8))), _unit(rng.standard_normal((40, 8)))
    sims, idx = search(base, queries, 6, method="exact", batch_size=9, device="cpu")
    want_s, want_i = _brute_force(base, queries, 6)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)


def test_rows_are_normalised_to_cosine():
    x = _unit(np.random.default_rng(2).standard_normal((50, 6)))
    scale = np.random.default_rng(3).uniform(0.1, 10, (50, 1)).astype(np.float32)
    s1, i1 = knn_graph(x, 4, method="exact", device="cpu")
    s2, i2 = knn_graph(x * scale, 4, method="exact", device="cpu")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert s2.max() <= 1 + 1e-5


def test_graph_without_exclusion_finds_self_first():
    x = _unit(np.random.default_rng(4).standard_normal((40, 5)))
    sims, idx = knn_graph(x, 3, method="exact", exclude_self=False, device="cpu")
    np.testing.assert_array_equal(idx[:, 0], np.arange(40))
    np.testing.assert_allclose(sims[:, 0], 1, atol=1e-5)


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_self_excluded_by_index_even_with_duplicates(method):
    rng = np.random.default_rng(5)
    base = _unit(rng.standard_normal((30, 8)))
    # rows 0..5 are the same vector: ties at similarity 1 must not hide or keep the query itself
    x = np.concatenate([np.repeat(base[:1], 6, axis=0), base[1:]])
    sims, idx = knn_graph(x, 3, method=method, device="cpu")
    rows = np.arange(len(x))
    assert not np.any(idx == rows[:, None])
    for r in range(6):
        assert set(idx[r]) <= set(range(6)) - {r}  # its neighbours are its duplicates
        np.testing.assert_allclose(sims[r], 1, atol=1e-5)


def test_more_duplicates_than_k_still_excludes_self():
    x = np.ones((20, 4), np.float32) / 2  # 20 identical unit vectors
    sims, idx = knn_graph(x, 3, method="exact", device="cpu")
    assert not np.any(idx == np.arange(20)[:, None])
    assert np.all(idx >= 0)
    np.testing.assert_allclose(sims, 1, atol=1e-6)


def test_k_at_least_n_pads_with_minus_one_and_minus_inf():
    x = _unit(np.random.default_rng(6).standard_normal((4, 3)))
    sims, idx = knn_graph(x, 6, method="exact", device="cpu")
    assert idx.shape == (4, 6)
    for r in range(4):
        assert set(idx[r, :3]) == set(range(4)) - {r}
    assert np.all(idx[:, 3:] == -1)
    assert np.all(np.isneginf(sims[:, 3:]))
    assert np.all(np.isfinite(sims[:, :3]))


def test_search_queries_against_base_and_pads():
    rng = np.random.default_rng(7)
    base = _unit(rng.standard_normal((60, 10)))
    queries = _unit(rng.standard_normal((25, 10)))
    sims, idx = search(base, queries, 5, method="exact", device="cpu")
    want_s, want_i = _brute_force(base, queries, 5)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    sims, idx = search(base[:3], queries, 5, device="cpu")
    assert np.all(idx[:, 3:] == -1) and np.all(np.isneginf(sims[:, 3:]))
    assert sorted(idx[0, :3]) == [0, 1, 2]


def test_empty_base_gives_all_missing():
    sims, idx = search(np.zeros((0, 4), np.float32), _unit(np.ones((2, 4))), 3, device="cpu")
    assert idx.shape == (2, 3) and np.all(idx == -1) and np.all(np.isneginf(sims))


def test_hnsw_recall_on_clustered_data():
    x = _clustered(20_000, 32, n_clusters=200, seed=8)
    _, exact = knn_graph(x, 10, method="exact", device="cpu")
    index = KnnIndex("hnsw", device="cpu").build(x)
    sims, approx = index.graph(10)
    assert index.method_ == "hnsw" and index.tuned_[11] >= 16  # k + 1: self is searched, then dropped
    assert recall_at_k(approx, exact) >= 0.95
    assert not np.any(approx == np.arange(len(x))[:, None])
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_ivf_recall_on_clustered_data():
    x = _clustered(5_000, 16, n_clusters=50, seed=9)
    _, exact = knn_graph(x, 10, method="exact", device="cpu")
    _, approx = knn_graph(x, 10, method="ivf", device="cpu")
    assert recall_at_k(approx, exact) >= 0.95


@pytest.mark.parametrize("method", ["exact", "hnsw", "ivf", "ivfpq"])
def test_batched_search_equals_unbatched(method):
    rng = np.random.default_rng(10)
    base = _clustered(2_000, 16, n_clusters=20, seed=10)
    queries = _unit(rng.standard_normal((300, 16)))
    index = KnnIndex(method, device="cpu", ann=AnnParams(ef_search=64, nprobe=8)).build(base)
    s1, i1 = index.search(queries, 8, batch_size=10_000)
    s2, i2 = index.search(queries, 8, batch_size=7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)  # BLAS may round differently per block shape


def test_tuning_picks_ef_search_that_meets_target():
    x = _clustered(3_000, 16, n_clusters=30, seed=11)
    index = KnnIndex("hnsw", device="cpu", ann=AnnParams(target_recall=0.9)).build(x)
    _, approx = index.search(x, 10)
    assert list(index.tuned_) == [10] and index.tuned_[10] >= 16
    _, exact = search(x, x, 10, method="exact", device="cpu")
    assert recall_at_k(approx, exact) >= 0.9
    # the record stage summaries report: the knob picked and its sample recall, nothing for an untuned k
    assert index.tuning(10) == {"ef_search": index.tuned_[10], "sample_recall": round(index.recall_[10], 4), "target_recall": 0.9}
    assert index.tuning(10)["sample_recall"] >= 0.9 and index.tuning(5) is None
    assert KnnIndex("exact", device="cpu").build(x).tuning(10) is None


def test_warns_when_the_target_recall_is_out_of_reach():
    # a degree-2 graph over unstructured data cannot reach recall 1 even at efSearch=1024
    x = np.random.default_rng(18).standard_normal((1_000, 32)).astype(np.float32)
    index = KnnIndex("hnsw", device="cpu", ann=AnnParams(hnsw_m=2, ef_construction=4, target_recall=1.0)).build(x)
    with pytest.warns(LabelkitWarning, match=r"recall@5 ~0\.\d+ < 1\.0 .* Use method='exact'"):
        index.graph(5)
    assert index.tuned_ == {6: 1024}


def test_auto_is_exact_when_small_and_hnsw_when_large(monkeypatch):
    x = _clustered(500, 8, n_clusters=5, seed=12)
    assert KnnIndex("auto", device="cpu").build(x).method_ == "exact"
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)
    assert KnnIndex("auto", device="cpu").build(x).method_ == "hnsw"
    # search(): a few queries against a large base stay exact (pairs <= EXACT_MAX_ROWS**2)
    seen = []
    monkeypatch.setattr(knn.KnnIndex, "_build_impl", lambda self, base, progress, method=None: seen.append(method or self.method) or self)
    with pytest.raises(TypeError):  # the stub index cannot search; we only look at the choice
        search(x, x[:20], 3, device="cpu")
    assert seen == ["exact"]


def test_gpu_path_is_selected_automatically(monkeypatch):
    # no GPU here: pretend faiss sees one and record the CPU->GPU copies (identity copies)
    monkeypatch.setattr(knn, "faiss_gpu_available", lambda: True)
    copies = []
    monkeypatch.setattr(knn, "_to_gpu", lambda index, gpu_id: copies.append((type(index).__name__, gpu_id)) or index)
    x = _unit(np.random.default_rng(13).standard_normal((200, 8)))
    index = KnnIndex("auto", device="auto").build(x)
    sims, idx = index.graph(4, batch_size=64)
    assert index.method_ == "exact" and index.on_gpu_
    assert copies == [("IndexFlatIP", 0)]
    np.testing.assert_array_equal(idx, _brute_force(x, x, 4, exclude_self=True)[1])
    # large: IVF on the GPU (HNSW has no GPU version)
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS_GPU", 50)
    ivf = KnnIndex("auto", device="auto").build(x)
    assert ivf.method_ == "ivf" and ivf.on_gpu_ and copies[-1][0] == "IndexIVFFlat"
    assert KnnIndex("auto", device="cpu").build(x).on_gpu_ is False


def test_progress_reports_every_row():
    x = _unit(np.random.default_rng(14).standard_normal((130, 4)))
    progress = _RecordingProgress()
    knn_graph(x, 3, method="exact", batch_size=50, device="cpu", progress=progress)
    assert progress.tasks["knn: exact search"] == {"total": 130, "done": 130}


def test_recall_at_k_known_values():
    exact = np.array([[1, 2, 3], [4, 5, -1]])
    assert recall_at_k(np.array([[3, 2, 9], [5, 4, 7]]), exact) == pytest.approx(4 / 5)
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[7, 8, 9], [0, 1, 2]]), exact) == 0.0
    with pytest.raises(BadInputError, match="rows"):
        recall_at_k(exact[:1], exact)


def test_kmeans_recovers_two_clusters_reproducibly():
    rng = np.random.default_rng(15)
    a = _unit([1, 0, 0] + 0.05 * rng.standard_normal((30, 3)))
    b = _unit([0, 1, 0] + 0.05 * rng.standard_normal((20, 3)))
    x = np.concatenate([a, b])
    centroids, assignment = kmeans(x, 2, seed=3)
    assert centroids.shape == (2, 3) and assignment.dtype == np.int64
    assert len(set(assignment[:30])) == 1 and len(set(assignment[30:])) == 1 and assignment[0] != assignment[-1]
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(centroids[assignment[0]], _unit(a.mean(0, keepdims=True))[0], atol=1e-4)
    again = kmeans(x, 2, seed=3)
    np.testing.assert_array_equal(again[1], assignment)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: knn_graph(x, 0), "'k' must be a positive integer"),
        (lambda x: knn_graph(x, 2, method="lsh"), "'method' must be one of"),
        (lambda x: knn_graph(x, 2, batch_size=0), "'batch_size' must be a positive integer"),
        (lambda x: knn_graph(x, 2, device="tpu"), "'device' must be"),
        (lambda x: knn_graph(x[0], 2), "'embeddings' must be 2-D"),
        (lambda x: search(x, x[:, :2], 2), "'queries' must have dim 4"),
        (lambda x: kmeans(x, 11), "'n_clusters' must be <= n_samples=10"),
        (lambda x: AnnParams(target_recall=0), "'target_recall' must be in"),
        (lambda x: KnnIndex().search(x, 2), "call build"),
    ],
)
def test_bad_input_raises(call, match):
    x = _unit(np.random.default_rng(16).standard_normal((10, 4)))
    with pytest.raises(BadInputError, match=match):
        call(x)


def test_nan_embeddings_rejected():
    x = np.ones((3, 2), np.float32)
    x[1, 0] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        knn_graph(x, 1)


@pytest.mark.parametrize("method", ["exact", "hnsw", "ivf", "ivfpq"])
def test_graph_slices_after_tune_graph_equal_the_whole_graph(method):
    # issue 18: the Ray engine pickles a tuned index and computes row slices of the graph on actors
    import pickle

    x = np.random.default_rng(0).standard_normal((1500, 8)).astype(np.float32)
    whole_s, whole_i = knn_graph(x, 4, method=method, device="cpu")
    index = pickle.loads(pickle.dumps(KnnIndex(method, device="cpu").build(x).tune_graph(4)))
    parts = [index.graph(4, rows=slice(a, min(a + 400, 1500))) for a in range(0, 1500, 400)]
    np.testing.assert_array_equal(np.concatenate([i for _, i in parts]), whole_i)
    np.testing.assert_array_equal(np.concatenate([s for s, _ in parts]), whole_s)
    with pytest.raises(BadInputError, match="step 1"):
        index.graph(4, rows=slice(0, 10, 2))


def test_hnsw_build_density_is_chosen_by_rows_unless_given():
    from labelkit.knn import HNSW_DENSE_BUILD_DIM, HNSW_DENSE_BUILD_ROWS, HNSW_DENSE_BUILD_ROWS_LOW_DIM, hnsw_ef_construction

    assert hnsw_ef_construction(HNSW_DENSE_BUILD_ROWS, 512) == 64
    assert hnsw_ef_construction(HNSW_DENSE_BUILD_ROWS + 1, HNSW_DENSE_BUILD_DIM) == 160
    # fewer dimensions: the sparse build stays cheaper up to 300k rows, not at 1M (docs/performance.md)
    assert hnsw_ef_construction(HNSW_DENSE_BUILD_ROWS + 1, HNSW_DENSE_BUILD_DIM - 1) == 64
    assert hnsw_ef_construction(HNSW_DENSE_BUILD_ROWS_LOW_DIM, 128) == 64
    assert hnsw_ef_construction(HNSW_DENSE_BUILD_ROWS_LOW_DIM + 1, 128) == 160
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    assert KnnIndex("hnsw", device="cpu").build(x)._index.hnsw.efConstruction == 64
    assert KnnIndex("hnsw", device="cpu", ann=AnnParams(ef_construction=100)).build(x)._index.hnsw.efConstruction == 100


# -- IVF-PQ and the memory budget (issue 17, part 4) ------------------------------------------


def test_memory_estimate_arithmetic():
    # exact: one 1000 x 1000 float32 tile, plus three (raw, self dropped, padded) float32+int64 results of width k+1
    assert knn.memory_estimate("exact", 1000, 8, 10) == 1000 * 1000 * 4 + 3 * 1000 * 11 * 12
    # hnsw (M=32): rows and level-0 links at twice their size (faiss grows by doubling) + 12 B/row of
    # level tables; the tuning tile (256 x 1000 float32) outweighs the search's results; faiss's working memory
    work = knn.FAISS_WORKING_BYTES
    assert knn.memory_estimate("hnsw", 1000, 8, 10) == 2 * 1000 * (4 * 8 + 4 * 65) + 12 * 1000 + 256 * 1000 * 4 + work
    # ivf, 10 cells: lists (rows + ids) doubled, centroids; the 640-row training copy is below the tuning tile
    assert knn.memory_estimate("ivf", 1000, 8, 10, ann=AnnParams(nlist=10)) == 2 * 1000 * (32 + 8) + 4 * 8 * 10 + 256 * 1000 * 4 + work
    # ivfpq, 4-byte codes: codes + ids doubled, coarse and PQ centroids; the search (result, one block's
    # three results, its 8 * max(11, 12) candidates' ids and sims, their gathered rows, the 10 cells probed) is the peak
    pq = 2 * 1000 * (4 + 8) + 4 * 8 * (10 + 256)
    search_peak = 1000 * 10 * 12 + 3 * 1000 * 11 * 12 + 1000 * 96 * 12 + 1000 * 96 * 8 * 4 + 2 * 1000 * 10 * 12  # + probed cells
    assert knn.memory_estimate("ivfpq", 1000, 8, 10, ann=AnnParams(nlist=10, pq_m=4)) == pq + search_peak + work
    # search(): n_queries sets the result and the tile
    assert knn.memory_estimate("exact", 1000, 8, 10, n_queries=5) == 5 * 1000 * 4 + 3 * 5 * 11 * 12
    # at scale the compressed index is several times smaller than the float32 ones
    assert knn.memory_estimate("ivfpq", 10**6, 512, 10) * 4 < min(knn.memory_estimate(m, 10**6, 512, 10) for m in ("hnsw", "ivf"))


def test_memory_estimate_rejects_bad_arguments():
    with pytest.raises(BadInputError, match=r"^'method' must be one of exact, hnsw, ivf, ivfpq. Got 'auto' instead.$"):
        knn.memory_estimate("auto", 10, 4, 2)
    with pytest.raises(BadInputError, match=r"^'n' must be an integer >= 0. Got -1 instead.$"):
        knn.memory_estimate("exact", -1, 4, 2)


def test_default_pq_m_divides_the_dimension():
    assert [knn.default_pq_m(d) for d in (8, 64, 100, 128, 384, 512, 768, 1024)] == [1, 8, 4, 16, 48, 64, 96, 64]
    assert all(d % knn.default_pq_m(d) == 0 for d in range(1, 600))


def test_auto_keeps_its_choice_when_it_fits_and_takes_ivfpq_when_not():
    free = knn.choose_method(100_000, 128, 10, device="cpu")
    assert (free.method, free.pq_m, free.memory_budget) == ("hnsw", None, None)
    assert free.estimate_bytes == knn.memory_estimate("hnsw", 100_000, 128, 10)
    roomy = knn.choose_method(100_000, 128, 10, memory_budget=10**9, device="cpu")
    assert roomy.method == "hnsw" and "within the memory budget of 1 GB" in roomy.reason
    assert knn.choose_method(100_000, 128, 10, memory_budget=0, device="cpu") == free  # 0: no budget
    roomy_pq = knn.choose_method(100_000, 128, 10, memory_budget=120_000_000, device="cpu")
    assert (roomy_pq.method, roomy_pq.pq_m) == ("ivfpq", 16)  # the default code (d / 8 bytes) when it fits
    assert roomy_pq.reason == "memory budget of 120 MB: hnsw needs about 198 MB, so IVF-PQ with 16-byte codes (about 97.9 MB)"
    # the largest code that fits: 2 bytes (95.05 MB) fits 95.1 MB, 4 bytes (95.45 MB) does not
    tight = knn.choose_method(100_000, 128, 10, memory_budget=95_100_000, device="cpu")
    assert (tight.method, tight.pq_m) == ("ivfpq", 2) and tight.estimate_bytes <= 95_100_000
    assert knn.memory_estimate("ivfpq", 100_000, 128, 10, ann=AnnParams(pq_m=4)) > 95_100_000
    assert tight.ann().pq_m == 2 and tight.ann(AnnParams(rerank=2)).rerank == 2
    # 5,000 x 8, k=5: exact needs 83 MB (a 4,096 x 5,000 tile), IVF-PQ 65 MB
    assert knn.choose_method(5_000, 8, 5, memory_budget=75_000_000, device="cpu").method == "ivfpq"


def test_a_budget_nothing_fits_is_one_clear_error():
    with pytest.raises(BadInputError, match=r"^'memory_budget' of 1 MB is too small for a kNN graph of 100,000 x 128 with k=10: "
                       r"hnsw needs about 198 MB, the cells method about 1.24 GB, IVF-PQ with 1-byte codes about 94.9 MB; give at least 95.8 MB, "
                       r"or 0 for no budget$"):
        knn.choose_method(100_000, 128, 10, memory_budget=1_000_000, device="cpu")
    # small data: exact search needs less than any IVF-PQ index (faiss's working memory alone is 25 MB), and the error says so
    with pytest.raises(BadInputError, match=r"exact needs about 4.22 MB, the cells method about [\d.]+ MB, IVF-PQ with 1-byte codes about 32\.\d MB; give at least 4.26 MB"):
        knn.choose_method(1_000, 8, 5, memory_budget=3_000_000, device="cpu")
    with pytest.raises(BadInputError, match=r"^method hnsw needs about 198 MB .* over the memory budget of 90 MB"):
        knn.choose_method(100_000, 128, 10, method="hnsw", memory_budget=90_000_000, device="cpu")
    with pytest.raises(BadInputError, match=r"^'memory_budget' must be an integer >= 0. Got -5 instead.$"):
        knn.choose_method(10, 4, 2, memory_budget=-5, device="cpu")
    with pytest.raises(BadInputError, match=r"too small"):  # knn_graph checks before building anything
        knn_graph(_clustered(200, 8, 4, seed=3), 5, memory_budget=1_000, device="cpu")


def test_ivfpq_recall_and_exact_similarities_on_clustered_data():
    # 4,000 x 64 around 40 centres: measured recall@10 0.985-0.989 (seeds 0-2) with re-ranking,
    # 0.31-0.32 from the 8-byte codes alone
    x = _clustered(4_000, 64, n_clusters=40, seed=0)
    _, exact = knn_graph(x, 10, method="exact", device="cpu")
    index = KnnIndex("ivfpq", device="cpu").build(x)
    sims, idx = index.graph(10)
    assert index.method_ == "ivfpq" and index._index.pq.M == knn.default_pq_m(64) == 8
    assert recall_at_k(idx, exact) >= 0.96
    assert set(index.tuned_) == {11} and 1 <= index.tuned_[11] <= index._index.nlist  # nprobe tuned on a sample
    assert not (idx == np.arange(len(x))[:, None]).any()  # self excluded
    # re-ranked: the similarities are the exact cosines of the neighbours returned, descending
    np.testing.assert_allclose(sims, np.einsum("nkd,nd->nk", x[idx], x), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)
    with pytest.warns(LabelkitWarning, match=r"approximate kNN \(ivfpq\) reached recall@10"):
        _, codes_only = KnnIndex("ivfpq", device="cpu", ann=AnnParams(rerank=0)).build(x).graph(10)
    assert recall_at_k(codes_only, exact) < 0.5


def test_knn_graph_under_a_budget_uses_ivfpq(monkeypatch):
    x = _clustered(5_000, 32, n_clusters=50, seed=4)
    built = []
    monkeypatch.setattr(KnnIndex, "_build_ivf", lambda self, base, progress, *, pq, _orig=KnnIndex._build_ivf: built.append(pq) or _orig(self, base, progress, pq=pq))
    sims, idx = knn_graph(x, 5, memory_budget=75_000_000, device="cpu")  # exact needs 83 MB, IVF-PQ 65 MB
    assert built == [True] and idx.shape == (5_000, 5)
    _, exact = knn_graph(x, 5, method="exact", device="cpu")
    assert recall_at_k(idx, exact) >= 0.95


def test_ivfpq_tuning_lengthens_the_candidate_list_where_nprobe_plateaus():
    """2-byte codes of 32-d rows cannot rank the true neighbours into the best 96 candidates at any
    nprobe; tuning doubles the re-ranked list until the sample's recall reaches the target, and the
    whole graph then has that recall. Finer (8-byte) codes need a shorter list than the 2-byte ones."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    x = centres[rng.integers(0, 20, 6000)] + 0.6 * rng.standard_normal((6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = knn_graph(x, 10, method="exact", device="cpu")[1]
    coarse = KnnIndex("ivfpq", device="cpu", ann=AnnParams(pq_m=2)).build(x)
    idx = coarse.graph(10)[1]
    assert coarse.rerank_[11] > 8 and coarse.recall_[11] >= 0.95
    assert recall_at_k(idx, exact) >= 0.95
    finer = KnnIndex("ivfpq", device="cpu", ann=AnnParams(pq_m=8)).build(x)
    finer.graph(10)
    assert finer.rerank_.get(11, 8) < coarse.rerank_[11] and finer.recall_[11] >= 0.95
