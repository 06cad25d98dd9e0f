"""labelkit.knn_cells and the "cells" kNN method: exact within the probed cells, recall known from the
exact neighbours, the same graph whole or in slices, and chosen under a memory budget on CPU."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from labelkit import knn, knn_cells
from labelkit.errors import BadInputError
from labelkit.knn import AnnParams, KnnIndex, knn_graph
from tests.unit.test_knn import _brute_force, _clustered, _unit


def test_probing_every_cell_is_exact_search():
    x = _clustered(1_500, 16, 12, seed=0)
    nlist = 30
    sims, idx = knn_graph(x, 5, method="cells", device="cpu", ann=AnnParams(nlist=nlist, nprobe=nlist))
    want_s, want_i = _brute_force(x, x, 5, exclude_self=True)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    q = _unit(np.random.default_rng(1).standard_normal((50, 16)))
    s, i = knn.search(x, q, 7, method="cells", device="cpu", ann=AnnParams(nlist=nlist, nprobe=nlist))
    np.testing.assert_array_equal(i, _brute_force(x, q, 7)[1])


def test_search_is_exact_within_the_probed_cells():
    # the neighbours found are the exact top-k of the rows in each query's n_probe nearest cells
    x = _clustered(2_000, 12, 20, seed=2)
    index = KnnIndex("cells", device="cpu", ann=AnnParams(nlist=40, nprobe=3)).build(x)
    q = _unit(np.random.default_rng(3).standard_normal((40, 12)))
    s, i = index.search(q, 4)
    probes = knn_cells.probes(q, index._cells["centroids"], 3)
    cell_of = index._cells["cell_of"]
    for r in range(len(q)):
        allowed = np.flatnonzero(np.isin(cell_of, probes[r]))
        sims = x[allowed] @ q[r]
        want = allowed[np.argsort(-sims, kind="stable")[:4]]
        np.testing.assert_array_equal(i[r], want)
        np.testing.assert_allclose(s[r], np.sort(sims)[::-1][:4], atol=1e-5)


def test_tuned_recall_is_the_sample_recall_the_search_gets():
    x = _clustered(6_000, 24, 60, seed=4)
    index = KnnIndex("cells", device="cpu", ann=AnnParams(target_recall=0.9)).build(x)
    _, idx = index.graph(10)
    tuned = index.tuning(11)
    assert tuned["nprobe"] in knn_cells.probe_ladder(len(index._cells["centroids"]))
    assert tuned["sample_recall"] >= 0.91  # target plus the sampling margin
    rows = np.sort(np.random.default_rng(index.seed).choice(len(x), 256, replace=False))  # the tuning sample
    exact = _brute_force(x, x[rows], 11)[1]
    exact = np.array([[j for j in e if j != r][:10] for e, r in zip(exact, rows)])
    assert knn.recall_at_k(idx[rows], exact) == pytest.approx(tuned["sample_recall"], abs=1e-4)


def test_probe_recall_counts_neighbours_in_probed_cells():
    cell_of = np.array([0, 0, 1, 2, 2])
    exact = np.array([[1, 3], [4, -1]])
    probes = np.array([[0, 2, 1], [1, 0, 2]])
    # query 0: row 1 (cell 0, rank 0), row 3 (cell 2, rank 1); query 1: row 4 (cell 2, rank 2); -1 is no neighbour
    assert knn_cells.probe_recall(exact, probes, cell_of, [1, 2, 3]) == [1 / 3, 2 / 3, 1.0]


def test_self_is_excluded_by_index_among_duplicates():
    rng = np.random.default_rng(5)
    base = _unit(rng.standard_normal((60, 8)))
    x = np.concatenate([np.repeat(base[:1], 6, axis=0), base[1:]])
    sims, idx = knn_graph(x, 3, method="cells", device="cpu", ann=AnnParams(nlist=4, nprobe=4))
    assert not np.any(idx == np.arange(len(x))[:, None])
    for r in range(6):
        assert set(idx[r]) <= set(range(6)) - {r}
        np.testing.assert_allclose(sims[r], 1, atol=1e-5)


def test_cells_smaller_than_k_pad_with_missing():
    x = _unit(np.random.default_rng(6).standard_normal((12, 4)))
    sims, idx = knn_graph(x, 5, method="cells", device="cpu", ann=AnnParams(nlist=6, nprobe=1))
    found = idx >= 0
    assert (~found).any()  # one cell of about two rows cannot hold five neighbours
    assert np.all(np.isneginf(sims[~found]))
    assert np.all(np.diff(np.where(found, sims, -2), axis=1) <= 1e-6)  # descending, missing last


def test_float16_rows_are_searched_as_float32():
    x = _clustered(1_000, 16, 10, seed=7).astype(np.float16)
    sims, idx = knn_graph(x, 5, method="cells", device="cpu", ann=AnnParams(nlist=20, nprobe=20))
    want_s, _ = _brute_force(x.astype(np.float32), x.astype(np.float32), 5, exclude_self=True)
    np.testing.assert_allclose(sims, want_s, atol=2e-3)  # float16 rows, float32 products


def test_blocks_of_queries_give_the_whole_search(monkeypatch):
    x = _clustered(1_500, 8, 15, seed=8)
    ann = AnnParams(nlist=30, nprobe=5)
    whole = knn_graph(x, 4, method="cells", device="cpu", ann=ann)
    monkeypatch.setattr(knn_cells, "PROBE_BLOCK_BYTES", 1)  # QUERY_CHUNK queries a block
    monkeypatch.setattr(knn_cells, "QUERY_CHUNK", 100)
    monkeypatch.setattr(knn_cells, "CANDIDATE_BLOCK", 7)  # cells split into row blocks, merged per slot
    blocked = knn_graph(x, 4, method="cells", device="cpu", ann=ann)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)


def test_graph_slices_of_a_pickled_index_equal_the_whole_graph():
    x = _clustered(1_500, 8, 15, seed=9)
    whole_s, whole_i = knn_graph(x, 4, method="cells", device="cpu")
    index = pickle.loads(pickle.dumps(KnnIndex("cells", device="cpu").build(x).tune_graph(4)))
    parts = [index.graph(4, rows=slice(a, min(a + 400, 1500))) for a in range(0, 1500, 400)]
    np.testing.assert_array_equal(np.concatenate([i for _, i in parts]), whole_i)
    np.testing.assert_allclose(np.concatenate([s for s, _ in parts]), whole_s, atol=1e-6)


def test_training_is_seeded_and_gives_unit_centroids():
    x = _clustered(3_000, 16, 30, seed=10)
    a = knn_cells.train_centroids(x, 40, seed=3)
    b = knn_cells.train_centroids(x, 40, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    cells = knn_cells.assign(x, a)
    assert np.bincount(cells, minlength=40).min() >= 1  # an emptied cell is re-seeded with a row


def test_lists_hold_each_row_once_in_its_cell():
    cell_of = np.array([2, 0, 2, 1, 0])
    order, offsets = knn_cells.cell_lists(cell_of, 4)
    assert offsets.tolist() == [0, 2, 3, 5, 5]
    assert [order[offsets[c] : offsets[c + 1]].tolist() for c in range(4)] == [[1, 4], [3], [0, 2], []]


def test_auto_takes_cells_for_a_large_graph_on_cpu_and_hnsw_for_other_queries():
    n, d, k = knn.CELLS_MIN_ROWS, 512, 10
    assert knn.choose_method(n, d, k, device="cpu").method == "cells"
    assert knn.choose_method(n - 1, d, k, device="cpu").method == "hnsw"
    assert knn.choose_method(n, d, k, n_queries=10 * n, device="cpu").method == "hnsw"  # a search is not refined


def test_a_budget_takes_cells_on_cpu_before_ivfpq():
    n, d, k, q = 1_000_000, 512, 10, 2_000_000  # a search of other queries (novelty's): HNSW by size
    free = knn.choose_method(n, d, k, n_queries=q, device="cpu")
    assert free.method == "hnsw"
    cells = knn.memory_estimate("cells", n, d, k, n_queries=q)
    assert cells < free.estimate_bytes
    choice = knn.choose_method(n, d, k, memory_budget=cells, n_queries=q, device="cpu")
    assert (choice.method, choice.pq_m, choice.estimate_bytes) == ("cells", None, cells)
    assert "nearest cells" in choice.reason
    smallest_pq = knn.memory_estimate("ivfpq", n, d, k, ann=AnnParams(pq_m=1), n_queries=q)
    if smallest_pq < cells:  # under the cells' estimate: IVF-PQ codes, where they fit
        assert knn.choose_method(n, d, k, memory_budget=cells - 1, n_queries=q, device="cpu").method == "ivfpq"
    else:
        with pytest.raises(BadInputError, match=f"the cells method about {knn._fmt_bytes(cells)}, IVF-PQ"):
            knn.choose_method(n, d, k, memory_budget=cells - 1, n_queries=q, device="cpu")
    pq = knn.memory_estimate("ivfpq", n, d, k, n_queries=q)
    assert knn.choose_method(n, d, k, memory_budget=max(pq, cells), method="ivfpq", n_queries=q, device="cpu").method == "ivfpq"  # a named method stays


def test_memory_estimate_counts_the_cells_index():
    n, d, k = 1_000_000, 512, 10
    est = knn.memory_estimate("cells", n, d, k)
    lists, results = 16 * n + 32 * n, 2 * n * k * 12  # the rows by cell, 16 nearest cells (int16); the graph, twice while a fallback copies it
    assert lists + results + knn_cells.PROBE_BLOCK_BYTES <= est <= lists + results + knn_cells.PROBE_BLOCK_BYTES + (200 << 20)
    assert est < knn.memory_estimate("hnsw", n, d, k) // 3  # no copy of the rows


def test_refinement_keeps_what_it_had_and_finds_neighbours_of_neighbours():
    x = _clustered(2_000, 16, 20, seed=11)
    want_s, want_i = _brute_force(x, x, 6, exclude_self=True)
    rng = np.random.default_rng(0)
    idx = want_i.copy()
    idx[:, 3:] = rng.integers(0, len(x), (len(x), 3))  # half of each row's neighbours replaced by random rows
    idx[idx == np.arange(len(x))[:, None]] = (np.arange(len(x))[:, None].repeat(6, 1)[idx == np.arange(len(x))[:, None]] + 1) % len(x)
    sims = np.einsum("id,ijd->ij", x, x[idx]).astype(np.float32)
    order = np.argsort(sims[:, 0])  # any order of the rows
    before = knn.recall_at_k(idx, want_i)
    knn_cells.refine(x, sims, idx, order=order)
    after = knn.recall_at_k(idx, want_i)
    assert before < 0.6 and after > 0.97
    assert all(set(want_i[r, :3]) <= set(idx[r]) for r in range(len(x)))  # the true neighbours it had are kept
    assert not np.any(idx == np.arange(len(x))[:, None])
    np.testing.assert_allclose(sims, np.einsum("id,ijd->ij", x, x[idx]), atol=1e-5)  # exact cosines, descending
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def _manifolds(n, d, n_clusters, seed, latent=2):
    """Rows on low-dimensional pieces: each cluster varies in its own 2-d subspace, as real embeddings vary along few directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    basis = rng.standard_normal((n_clusters, latent, d))
    y = rng.integers(0, n_clusters, n)
    return _unit(centres[y] + np.einsum("nl,nld->nd", rng.standard_normal((n, latent)), basis[y]))


def test_a_graph_short_of_the_target_at_its_probe_cap_is_refined(monkeypatch):
    monkeypatch.setattr(knn_cells, "GRAPH_MAX_PROBE", 2)  # tuning asks for 3 cells a row on these clusters
    x = _clustered(4_000, 16, 40, seed=12)
    index = KnnIndex("cells", device="cpu", ann=AnnParams(nlist=120)).build(x)
    sims, idx = index.graph(8)
    tuned = index.tuning(9)
    assert tuned["nprobe"] == 2 and tuned["refine_rounds"] >= 1 and tuned["sample_recall"] >= 0.95
    rows = np.sort(np.random.default_rng(index.seed).choice(len(x), 256, replace=False))
    exact = _brute_force(x, x, 8, exclude_self=True)[1]
    assert tuned["sample_recall"] == pytest.approx(knn.recall_at_k(idx[rows], exact[rows]), abs=1e-4)  # measured after refining
    assert knn.recall_at_k(idx, exact) >= 0.95
    unrefined = knn_cells.probe_recall(exact[rows], knn_cells.probes(x[rows], index._cells["centroids"], 2), index._cells["cell_of"], [2])[0]
    assert unrefined < 0.95 <= tuned["sample_recall"]  # 0.92 before refining
    # slices of the graph, put together and finished, are the whole graph
    parts = [index.graph(8, rows=slice(a, min(a + 1_000, len(x)))) for a in range(0, len(x), 1_000)]
    s2, i2 = np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
    index.finish_graph(s2, i2, 8)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_allclose(s2, sims, atol=1e-6)


def test_where_refinement_falls_short_the_graph_probes_the_cells_tuning_asked_for(monkeypatch):
    monkeypatch.setattr(knn_cells, "GRAPH_MAX_PROBE", 1)  # one cell a row: its neighbours' neighbours are in it too
    x = _manifolds(4_000, 16, 20, seed=12)
    index = KnnIndex("cells", device="cpu", ann=AnnParams(nlist=120)).build(x)
    _, idx = index.graph(8)
    tuned = index.tuning(9)
    assert tuned["nprobe"] > 1 and "refine_rounds" not in tuned and tuned["sample_recall"] >= 0.95
    assert knn.recall_at_k(idx, _brute_force(x, x, 8, exclude_self=True)[1]) >= 0.94


def _recall(got, want):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want)])


def test_cells_that_fit_the_rows_badly_give_way_to_hnsw_where_allowed():
    x = _unit(np.random.default_rng(5).standard_normal((3_000, 48)))  # no neighbourhood structure: neighbours across many cells
    want_s, want_i = _brute_force(x, x, 10, exclude_self=True)
    kept = KnnIndex("cells", device="cpu").build(x)
    kept.graph(10)
    assert (kept.method_, kept.fell_back_) == ("cells", None)  # a named method is kept
    index = KnnIndex("cells", device="cpu", ann=AnnParams(cells_fallback=True)).build(x)
    s, i = index.graph(10)
    assert index.method_ == "hnsw"
    assert f"under {knn.CELLS_MIN_PROBE_RECALL}: HNSW instead" in index.fell_back_
    assert "ef_search" in index.tuning(11)
    assert _recall(i, want_i) >= 0.9


def test_cells_that_fit_the_rows_stay_cells_with_the_fallback_allowed():
    x = _clustered(3_000, 32, 30, seed=4, spread=0.2)
    index = KnnIndex("cells", device="cpu", ann=AnnParams(cells_fallback=True)).build(x)
    s, i = index.graph(10)
    assert (index.method_, index.fell_back_) == ("cells", None)
    assert _recall(i, _brute_force(x, x, 10, exclude_self=True)[1]) >= 0.95


def test_auto_allows_the_fallback_where_it_chose_cells_by_size_and_hnsw_fits():
    n, d, k = 1_000_000, 512, 10
    free = knn.choose_method(n, d, k, device="cpu")
    assert (free.method, free.cells_fallback, free.ann().cells_fallback) == ("cells", True, True)
    hnsw = knn.memory_estimate("hnsw", n, d, k)
    assert knn.choose_method(n, d, k, memory_budget=hnsw, device="cpu").cells_fallback
    assert not knn.choose_method(n, d, k, memory_budget=hnsw - 1, device="cpu").cells_fallback  # HNSW would not fit
    assert not knn.choose_method(n, d, k, method="cells", device="cpu").cells_fallback  # named
    assert not knn.choose_method(knn.CELLS_MIN_ROWS - 1, d, k, device="cpu").cells_fallback  # HNSW by size


def test_auto_index_of_badly_fitting_rows_falls_back(monkeypatch):
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)
    monkeypatch.setattr(knn, "CELLS_MIN_ROWS", 1_000)
    x = _unit(np.random.default_rng(6).standard_normal((3_000, 48)))
    index = KnnIndex("auto", device="cpu").build(x)
    assert index.method_ == "cells"
    index.graph(10)
    assert index.method_ == "hnsw" and index.fell_back_


def test_a_budget_under_the_cells_block_takes_hnsw_where_it_fits():
    n, d, k = knn.CELLS_MIN_ROWS, 512, 10  # cells by size; its 1 GiB query block outweighs HNSW's index here
    hnsw, cells = knn.memory_estimate("hnsw", n, d, k), knn.memory_estimate("cells", n, d, k)
    assert hnsw < cells
    choice = knn.choose_method(n, d, k, memory_budget=hnsw, device="cpu")
    assert (choice.method, choice.estimate_bytes) == ("hnsw", hnsw)
    assert knn.choose_method(n, d, k, memory_budget=hnsw - 1, device="cpu").method == "ivfpq"
