"""`--memory-budget` (issue 17, part 4): over it the kNN graph is an IVF-PQ index, and says so."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import artifacts, knn, sysmem
from labelkit.cli import app


def _vectors(folder, n=5_000, d=32, n_clusters=50, seed=0, spread=0.3):
    """A bring-your-own-vectors folder: n unit vectors around 50 centres, a fifth labeled with their centre's class (of 10)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    cluster = rng.integers(0, n_clusters, n)
    x = centres[cluster] + spread * rng.standard_normal((n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    label = np.where(rng.random(n) < 0.2, np.char.add("c", (cluster % 10).astype(str)), None)
    folder.mkdir()
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(n)], "label": pa.array(label, pa.string()),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}), folder / "labels.parquet")
    return folder


def test_pseudolabel_under_a_small_budget_builds_ivfpq_and_says_so(runner, tmp_path):
    data = _vectors(tmp_path / "vectors")
    pq_bytes, exact_bytes = knn.memory_estimate("ivfpq", 5_000, 32, 10), knn.memory_estimate("exact", 5_000, 32, 10)
    assert pq_bytes < exact_bytes  # 65.8 MB against 83.9 MB: exact search's 4,096 x 5,000 tile
    budget = (pq_bytes + exact_bytes) // 2
    r = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", str(budget), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    used = out["knn"]
    tuned = used.pop("tuned")
    assert used == {"method": "ivfpq", "pq_m": 4, "memory_budget": budget, "estimate_bytes": pq_bytes,
                    "reason": f"memory budget of {knn._fmt_bytes(budget)}: exact needs about {knn._fmt_bytes(exact_bytes)}, "
                              f"so IVF-PQ with 4-byte codes (about {knn._fmt_bytes(pq_bytes)})", "fell_back": False}
    assert tuned["sample_recall"] >= tuned["target_recall"] == 0.95 and 1 <= tuned["nprobe"] <= knn.IVFPQ_MAX_NPROBE
    assert "knn_recall" not in {w["code"] for w in out["warnings"]}
    used["tuned"] = tuned
    assert out["n_accepted"] > 0.9 * out["n_unlabeled"]  # well-separated clusters: the compressed graph still labels them
    # the same record in knn.parquet's metadata and the manifest
    ws = data / ".labelkit"
    assert artifacts.read_metadata(ws / "knn.parquet")["index"] == used
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["stages"]["knn"]["params"]["index"] == used
    assert manifest["stages"]["pseudolabel"]["params"]["memory_budget"] == str(budget)
    # on the terminal too
    again = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", str(budget), "--force"])
    assert f"kNN graph: {used['reason']}" in again.stdout + again.stderr
    # no budget: the graph is rebuilt (its fingerprint changed) with auto's exact search
    free = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", "0", "--json"])
    assert free.exit_code == 0, free.output
    assert json.loads(free.stdout)["knn"] == {"method": "exact", "pq_m": None, "memory_budget": None, "estimate_bytes": exact_bytes,
                                              "reason": "auto: exact for 5,000 x 32", "tuned": None, "fell_back": False}


def test_the_default_budget_is_half_the_available_memory(runner, tmp_path, monkeypatch):
    """--memory-budget auto (the default): half of MemAvailable; when that is too small for the size-chosen index, IVF-PQ, said."""
    data = _vectors(tmp_path / "vectors")
    exact_bytes = knn.memory_estimate("exact", 5_000, 32, 10)
    between = (knn.memory_estimate("ivfpq", 5_000, 32, 10) + exact_bytes) // 2
    monkeypatch.setattr(sysmem, "memory", lambda: (64 * 10**9, 2 * between))  # a machine with little memory free
    small = runner.invoke(app, ["pseudolabel", str(data), "--json"])
    assert small.exit_code == 0, small.output
    used = json.loads(small.stdout)["knn"]
    assert used["method"] == "ivfpq" and used["memory_budget"] == between
    assert used["reason"].startswith(f"memory budget of {knn._fmt_bytes(between)} (auto: half the memory available): exact needs about ")
    assert json.loads((data / ".labelkit" / "manifest.json").read_text())["stages"]["pseudolabel"]["params"]["memory_budget"] == "auto"
    # plenty free: the size-chosen exact search, recorded as without a budget (two runs record the same whatever was free)
    for available in (32 * 10**9, 33 * 10**9):
        monkeypatch.setattr(sysmem, "memory", lambda available=available: (64 * 10**9, available))
        big = runner.invoke(app, ["pseudolabel", str(data), "--json", "--force"])
        assert big.exit_code == 0, big.output
        assert json.loads(big.stdout)["knn"] == {"method": "exact", "pq_m": None, "memory_budget": None, "estimate_bytes": exact_bytes,
                                                 "reason": "auto: exact for 5,000 x 32", "tuned": None, "fell_back": False}


def test_impossible_and_malformed_budgets_are_one_line_errors(runner, digits):
    r = runner.invoke(app, ["pseudolabel", str(digits), "--memory-budget", "1kB"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 'memory_budget' of 1 kB is too small for a kNN graph of 1,797 x 64 with k=10: exact needs about 13.6 MB, ")
    assert lines[-1].endswith("; give at least 13.8 MB, or 0 for no budget") and "Traceback" not in r.stderr
    assert not (digits / ".labelkit" / "pseudolabels.parquet").exists()
    bad = runner.invoke(app, ["pseudolabel", str(digits), "--memory-budget", "8 apples"])
    assert bad.exit_code == 2
    assert "--memory-budget: must be a size such as 8GB, 500MB or 1.5GiB, auto, or 0 for no budget. Got '8 apples' instead." in bad.stderr
    neg = runner.invoke(app, ["run", str(digits), "--memory-budget", "-1GB"])
    assert neg.exit_code == 2 and "--memory-budget: must be a size" in neg.stderr


def test_detect_noise_takes_the_budget_and_reuses_the_graph_it_gave(runner, tmp_path):
    data = _vectors(tmp_path / "vectors")
    budget = (knn.memory_estimate("ivfpq", 5_000, 32, 10) + knn.memory_estimate("exact", 5_000, 32, 10)) // 2
    first = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", str(budget), "--json"])
    assert first.exit_code == 0, first.output
    built = json.loads(first.stdout)["knn"]
    r = runner.invoke(app, ["detect-noise", str(data), "--memory-budget", str(budget), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["knn"] == built and out["knn"]["method"] == "ivfpq"  # the cached IVF-PQ graph, not one rebuilt by size
    # without the budget detect-noise asks for another graph: rebuilt by size, and said
    free = runner.invoke(app, ["detect-noise", str(data), "--memory-budget", "0", "--json", "--force"])
    assert free.exit_code == 0, free.output
    assert json.loads(free.stdout)["knn"]["method"] == "exact"


def test_pseudolabel_takes_the_cells_method_where_it_fits_a_budget(runner, tmp_path, monkeypatch):
    # At this size the cells method's estimate is its worst case of 256 probes a query (one 1 GiB block of
    # queries); with at most 8 it is the smallest index here.
    from labelkit import knn_cells

    monkeypatch.setattr(knn_cells, "MAX_PROBE", 8)
    data = _vectors(tmp_path / "vectors")
    cells, pq_bytes, exact_bytes = (knn.memory_estimate(m, 5_000, 32, 10) for m in ("cells", "ivfpq", "exact"))
    assert cells < min(pq_bytes, exact_bytes)
    budget = (cells + min(pq_bytes, exact_bytes)) // 2
    r = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", str(budget), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    used = out["knn"]
    assert (used["method"], used["pq_m"], used["estimate_bytes"]) == ("cells", None, cells)
    assert used["reason"] == (f"memory budget of {knn._fmt_bytes(budget)}: exact needs about {knn._fmt_bytes(exact_bytes)}, so exact "
                              f"search within each query's nearest cells, which holds no copy of the rows (about {knn._fmt_bytes(cells)})")
    assert used["tuned"]["sample_recall"] >= 0.95 and 1 <= used["tuned"]["nprobe"] <= 8
    assert "knn_recall" not in {w["code"] for w in out["warnings"]}
    assert out["n_accepted"] > 0.9 * out["n_unlabeled"]
    # its similarities are exact cosines of the rows it found
    ws = data / ".labelkit"
    t = artifacts.read_table(ws / "knn.parquet")
    idx = artifacts.fixed_list_to_numpy(t.column("neighbors"), np.int64)
    sims = artifacts.fixed_list_to_numpy(t.column("similarities"), np.float32)
    x = artifacts.fixed_list_to_numpy(pq.read_table(data / "labels.parquet").column("embedding"), np.float32)
    np.testing.assert_allclose(sims[:50, 0], np.einsum("ij,ij->i", x[:50], x[idx[:50, 0]]), atol=1e-5)
    # a budget that keeps the cells method reuses the graph; no budget rebuilds it with exact search
    again = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", str(budget), "--json", "--force"])
    assert json.loads(again.stdout)["knn"] == used
    free = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", "0", "--json"])
    assert json.loads(free.stdout)["knn"]["method"] == "exact"


def test_pseudolabel_says_when_auto_cells_gave_way_to_hnsw(runner, tmp_path, monkeypatch):
    # auto takes the cells method for graphs of CELLS_MIN_ROWS rows (lowered here); on rows without
    # neighbourhood structure its 16 probes find under CELLS_MIN_PROBE_RECALL, and HNSW builds the graph
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)
    monkeypatch.setattr(knn, "CELLS_MIN_ROWS", 1_000)
    data = _vectors(tmp_path / "vectors", n=3_000, d=48, spread=30.0)  # the noise drowns the centres
    r = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", "0", "--json"])
    assert r.exit_code == 0, r.output
    used = json.loads(r.stdout)["knn"]
    assert used["method"] == "hnsw" and "ef_search" in used["tuned"] and used["fell_back"]
    assert used["reason"].startswith("auto: cells for 3,000 x 48; the cells method's tuning sample reached recall ")
    assert used["reason"].endswith(f"at 16 probes, under {knn.CELLS_MIN_PROBE_RECALL}: HNSW instead")
    record = json.loads((data / ".labelkit" / "manifest.json").read_text())
    assert "HNSW instead" in json.dumps(record)  # the manifest keeps the index used too
    shown = runner.invoke(app, ["pseudolabel", str(data), "--memory-budget", "0", "--force"])
    assert "kNN graph: auto: cells for 3,000 x 48; the cells method's tuning sample reached recall" in " ".join(shown.output.split())
