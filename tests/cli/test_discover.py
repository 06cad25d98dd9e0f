"""`labelkit discover` end to end through the CLI: a digit class no one labeled is found as a new cluster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from labelkit import artifacts
from labelkit.cli import app
from tests.conftest import DIGITS, digits_truth_by_name, digits_without_class


@pytest.fixture(scope="module")
def digits_without_nines(tmp_path_factory) -> Path:
    return digits_without_class(tmp_path_factory.mktemp("discover") / "digits")


def test_discover_finds_the_unlabeled_class(runner, digits_without_nines):
    data = digits_without_nines
    r = runner.invoke(app, ["discover", str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [u["stage"] for u in out["upstream"]][-1] == "pseudolabel"  # ran first, with its upstream
    d = pq.read_table(data / ".labelkit" / "discoveries.parquet").to_pandas()
    assert list(d.columns) == ["id", "cluster", "confidence"]
    pl = pq.read_table(data / ".labelkit" / "pseudolabels.parquet", columns=["id"]).to_pandas()
    assert sorted(d["id"]) == sorted(pl["id"])  # one row per unlabeled sample
    assert out["n_clusters"] >= 1 and set(d["cluster"]) == set(range(-1, out["n_clusters"]))
    assert out["pool"] == "novel" and out["n_candidates"] == out["n_novel"] > 50
    assert d.loc[d["cluster"] >= 0, "confidence"].between(0, 1).all() and d.loc[d["cluster"] >= 0, "confidence"].notna().all()
    true = digits_truth_by_name()
    y = true.loc[[Path(i).name for i in d["id"]]].to_numpy()
    # The largest new cluster is mostly 9s, and it holds many of them.
    biggest = d["cluster"][d["cluster"] >= 0].value_counts().idxmax()
    members = d["cluster"].to_numpy() == biggest
    assert (y[members] == 9).mean() > 0.7 and (members & (y == 9)).sum() > 30
    meta = artifacts.read_metadata(data / ".labelkit" / "discoveries.parquet")
    assert meta["summary"]["n_clusters"] == out["n_clusters"] and len(meta["clusters"]) == out["n_clusters"]
    assert all(c["nearest_class"] in [str(i) for i in range(9)] for c in meta["clusters"])
    again = runner.invoke(app, ["discover", str(data)])
    assert again.exit_code == 0 and "discover: up to date, skipping" in again.stderr


def test_report_shows_a_gallery_per_new_cluster(runner, digits_without_nines):
    data = digits_without_nines
    assert runner.invoke(app, ["discover", str(data)]).exit_code == 0
    r = runner.invoke(app, ["report", str(data)])
    assert r.exit_code == 0, r.output
    html = (data / ".labelkit" / "report.html").read_text()
    assert "New classes" in html and "New cluster 0:" in html and "nearest known class" in html


def test_given_cluster_count(runner, digits_without_nines):
    r = runner.invoke(app, ["discover", str(digits_without_nines), "--n-clusters", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["estimated"] is False and out["n_clusters"] <= 2


def test_run_includes_discover_after_pseudolabel():
    from labelkit.stages.pipeline import ORDER

    assert ORDER.index("discover") == ORDER.index("pseudolabel") + 1


def test_no_new_class_when_novel_samples_are_as_many_as_chance_gives(runner, tmp_path):
    # Every digit is labeled: the ~5% the novelty rule lets through by design are no new class.
    data = tmp_path / "digits"
    shutil.copytree(DIGITS, data, ignore=shutil.ignore_patterns(".labelkit"))
    r = runner.invoke(app, ["discover", str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["by_chance"] is True and out["n_clusters"] == 0 and out["warnings"] == []
    assert out["n_novel"] <= out["novel_expected_by_chance"] * 1.5 and out["novel_chance_p"] > 0.05
    d = pq.read_table(data / ".labelkit" / "discoveries.parquet").to_pandas()
    assert (d["cluster"] == -1).all()
    assert runner.invoke(app, ["report", str(data)]).exit_code == 0
    html = (data / ".labelkit" / "report.html").read_text()
    assert "no evidence of a new class, so none was clustered" in html and "No new cluster." in html
