"""`--memory-budget` (issue 17, part 4): over it the kNN graph is an IVF-PQ index, and says so."""

from __future__ import annotations

import json

from labelkit import artifacts, knn
from labelkit.cli import app


def _budget_between_ivfpq_and_exact(ws) -> tuple[int, int]:
    """A budget (bytes) that exact search (auto's choice for 1,797 digits) exceeds and IVF-PQ fits, and the IVF-PQ estimate."""
    _, vecs = artifacts.read_embeddings(ws / "embeddings.parquet")
    n, d = vecs.shape
    pq, exact = knn.memory_estimate("ivfpq", n, d, 10), knn.memory_estimate("exact", n, d, 10)
    assert pq < exact
    return (pq + exact) // 2, pq


def test_pseudolabel_under_a_small_budget_builds_ivfpq_and_says_so(runner, digits):
    assert runner.invoke(app, ["embed", str(digits)]).exit_code == 0
    budget, pq_bytes = _budget_between_ivfpq_and_exact(digits / ".labelkit")
    r = runner.invoke(app, ["pseudolabel", str(digits), "--memory-budget", str(budget), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    used = out["knn"]
    assert used["method"] == "ivfpq" and used["memory_budget"] == budget and used["estimate_bytes"] == pq_bytes
    assert used["reason"].startswith(f"memory budget of {knn._fmt_bytes(budget)}: exact needs about ")
    assert out["n_accepted"] > 500  # the compressed graph still labels digits (1,070 accepted; 1,075 with the exact graph)
    # the same record in knn.parquet's metadata and the manifest
    ws = digits / ".labelkit"
    assert artifacts.read_metadata(ws / "knn.parquet")["index"] == used
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["stages"]["knn"]["params"]["index"] == used
    assert manifest["stages"]["pseudolabel"]["params"]["memory_budget"] == str(budget)
    # on the terminal too
    again = runner.invoke(app, ["pseudolabel", str(digits), "--memory-budget", str(budget), "--force"])
    assert f"kNN graph: {used['reason']}" in again.stdout + again.stderr
    # no budget: the graph is rebuilt (its fingerprint changed) with auto's exact search
    free = runner.invoke(app, ["pseudolabel", str(digits), "--json"])
    assert free.exit_code == 0, free.output
    d = artifacts.read_embeddings(ws / "embeddings.parquet")[1].shape[1]
    assert json.loads(free.stdout)["knn"] == {"method": "exact", "pq_m": None, "memory_budget": None,
                                              "estimate_bytes": knn.memory_estimate("exact", 1797, d, 10), "reason": f"auto: exact for 1,797 x {d}"}


def test_impossible_and_malformed_budgets_are_one_line_errors(runner, digits):
    r = runner.invoke(app, ["pseudolabel", str(digits), "--memory-budget", "1kB"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 'memory_budget' of 1 kB is too small for a kNN graph of 1,797 x ")
    assert lines[-1].endswith(", or 0 for no budget") and "Traceback" not in r.stderr
    assert not (digits / ".labelkit" / "pseudolabels.parquet").exists()
    bad = runner.invoke(app, ["pseudolabel", str(digits), "--memory-budget", "8 apples"])
    assert bad.exit_code == 2
    assert "--memory-budget: must be a size such as 8GB, 500MB or 1.5GiB, or 0 for no budget. Got '8 apples' instead." in bad.stderr
    neg = runner.invoke(app, ["run", str(digits), "--memory-budget", "-1GB"])
    assert neg.exit_code == 2 and "--memory-budget: must be a size" in neg.stderr
