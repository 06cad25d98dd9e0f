"""`labelkit pseudolabel --memory-budget` bounds novelty's search of the labeled rows too, and says which index it used (issue 17)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import artifacts, knn
from labelkit.cli import app


def _mostly_labeled(folder, n=7_500, d=32):
    """n unit vectors around 12 centres; 80% of the rows of the first 11 labeled with their centre, the 12th never."""
    rng = np.random.default_rng(0)
    centre = rng.integers(0, 12, n)
    x = rng.standard_normal((12, d))[centre] + 0.3 * rng.standard_normal((n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    label = np.where((rng.random(n) < 0.8) & (centre < 11), np.char.add("c", centre.astype(str)), None)
    folder.mkdir()
    labels = pa.array(label, pa.string())
    table = pa.table({"id": [f"s{i}" for i in range(n)], "label": labels, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)})
    pq.write_table(table, folder / "labels.parquet")
    return folder, n - labels.null_count, centre


def test_novelty_search_under_a_small_budget_is_ivfpq_and_said(runner, tmp_path):
    data, n_labeled, centre = _mostly_labeled(tmp_path / "vectors")
    exact_bytes = knn.memory_estimate("exact", n_labeled, 32, 11, n_queries=7_500)
    assert exact_bytes > 72_000_000  # about 93 MB: a 4,096-query tile against ~5,500 labeled rows
    args = ["pseudolabel", str(data), "--memory-budget", "72MB", "--no-clean-seeds"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    used = out["novelty"]["knn"]
    tuned = used.pop("tuned")
    pq_bytes = knn.memory_estimate("ivfpq", n_labeled, 32, 11, n_queries=7_500, ann=knn.AnnParams(pq_m=4))
    assert used == {"method": "ivfpq", "pq_m": 4, "estimate_bytes": pq_bytes, "memory_budget": 72_000_000,
                    "reason": f"memory budget of 72 MB: exact needs about {knn._fmt_bytes(exact_bytes)}, so IVF-PQ with 4-byte codes "
                              f"(about {knn._fmt_bytes(pq_bytes)})"}
    assert tuned["sample_recall"] >= tuned["target_recall"] == 0.95 and 1 <= tuned["nprobe"] <= knn.IVFPQ_MAX_NPROBE
    assert out["knn"]["method"] == "ivfpq"  # the graph under the same budget
    assert "knn_recall" not in {w["code"] for w in out["warnings"]}
    # the approximate search still finds the never-labeled cluster: (nearly) all of it is judged novel
    pl = pq.read_table(data / ".labelkit" / "pseudolabels.parquet").to_pandas()
    unseen = centre[pl["id"].str[1:].astype(int).to_numpy()] == 11
    assert (pl["reason"][unseen] == "novel").mean() > 0.95 and (pl["reason"][~unseen] == "novel").mean() < 0.1
    assert artifacts.read_metadata(data / ".labelkit" / "pseudolabels.parquet")["novelty"]["knn"] == {**used, "tuned": tuned}
    # on the terminal too (a skipped run prints its recorded summary)
    again = runner.invoke(app, args)
    assert f"novelty search of the labeled rows: {used['reason']}" in again.stdout + again.stderr


def test_a_novelty_search_under_its_recall_target_is_a_knn_recall_warning():
    from labelkit.stages.pseudolabel import _novelty_recall

    low = {"method": "ivfpq", "tuned": {"nprobe": 256, "sample_recall": 0.91, "target_recall": 0.95}}
    (w,) = _novelty_recall({"threshold": 2.5, "knn": low})
    assert w == {"code": "knn_recall", "message": "novelty's ivfpq search of the labeled rows reached recall@k 0.91 on its tuning sample, "
                 "under the target 0.95: its kNN distances are approximate", "hint": "raise --memory-budget (or 0 for none)"}
    assert _novelty_recall({"knn": {**low, "tuned": {**low["tuned"], "sample_recall": 0.95}}}) == []
    assert _novelty_recall({"knn": {"method": "exact", "tuned": None}}) == [] == _novelty_recall({"knn": None})
