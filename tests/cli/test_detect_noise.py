"""`labelkit detect-noise` through the CLI: digits end to end, --pred-probs, CI gates, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from labelkit.cli import app
from tests.conftest import ROOT, write_csv

COLUMNS = ["id", "given_label", "suggested_label", "label_quality", "is_issue", "issue_type", "rank"]


def _truth():
    return pd.read_csv(ROOT / "examples" / "digits-truth.csv")


def test_digits_finds_flipped_labels_and_runs_embed_first(runner, digits):
    r = runner.invoke(app, ["detect-noise", str(digits), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [u["stage"] for u in out["upstream"]] == ["embed"]
    assert "embeddings.parquet was missing" in out["upstream"][0]["reason"]
    issues = pq.read_table(digits / ".labelkit" / "label_issues.parquet").to_pandas()
    assert list(issues.columns) == COLUMNS
    assert len(issues) == 179 and issues["rank"].tolist() == list(range(1, 180))
    flipped = set(_truth().query("flipped == 1")["path"])
    found = set(issues.loc[issues["is_issue"], "id"]) & flipped
    assert len(found) >= 0.7 * len(flipped)  # recall
    # The top of the ranking is mostly real errors.
    assert len(set(issues["id"][:10]) & flipped) >= 6
    assert out["n_issues"] == int(issues["is_issue"].sum())


def test_second_run_is_skipped_but_gates_still_apply(runner, digits, tmp_path):
    assert runner.invoke(app, ["detect-noise", str(digits)]).exit_code == 0
    review = tmp_path / "queue.csv"
    r = runner.invoke(app, ["detect-noise", str(digits), "--fail-above", "0.01", "--export-review", str(review)])
    assert "detect-noise: up to date, skipping" in r.stderr
    assert r.exit_code == 3
    assert "is above --fail-above 1.00%" in r.stderr
    q = pd.read_csv(review)
    assert list(q.columns) == ["rank", "id", "source", "given_label", "suggested_label", "label_quality", "issue_type"]
    assert q["rank"].is_monotonic_increasing and len(q) > 0
    r = runner.invoke(app, ["detect-noise", str(digits), "--fail-above", "0.9"])
    assert r.exit_code == 0


def test_pred_probs_npy_needs_only_labels(runner, tmp_path):
    # Three classes; sample 3 is labeled 'a' but the model is sure it is 'c'.
    write_csv(tmp_path, "id,label\n0,a\n1,a\n2,a\n3,a\n4,b\n5,b\n6,b\n7,c\n8,c\n9,c\n")
    p = np.array([[.9, .05, .05]] * 3 + [[.02, .03, .95]] + [[.05, .9, .05]] * 3 + [[.05, .05, .9]] * 3)
    np.save(tmp_path / "p.npy", p)
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy"), "--json"])
    assert r.exit_code == 0, r.output
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas()
    assert issues.loc[issues["is_issue"], "id"].tolist() == ["3"]
    assert issues.iloc[0]["suggested_label"] == "c"
    assert not (tmp_path / ".labelkit" / "embeddings.parquet").exists()


def test_pred_probs_parquet_by_id(runner, tmp_path):
    write_csv(tmp_path, "id,label\nx,a\ny,b\nz,b\nw,a\n")
    pd.DataFrame({"id": ["w", "z", "y", "x"], "a": [0.9, 0.1, 0.2, 0.1], "b": [0.1, 0.9, 0.8, 0.9]}).to_parquet(tmp_path / "p.parquet")
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.parquet"), "--filter-by", "predicted_neq_given", "--json"])
    assert r.exit_code == 0, r.output
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas()
    assert issues.loc[issues["is_issue"], "id"].tolist() == ["x"]


@pytest.mark.parametrize(
    "probs, message",
    [
        (np.ones((3, 2)) / 2, "--pred-probs p.npy: 3 rows, but there are 4 samples (4 labeled)"),
        (np.ones((4, 3)) / 3, "--pred-probs p.npy: expected shape (n, 2)"),
        (np.full((4, 2), np.nan), "probabilities contain NaN"),
    ],
)
def test_bad_pred_probs(runner, tmp_path, probs, message):
    write_csv(tmp_path, "id,label\nx,a\ny,b\nz,b\nw,a\n")
    np.save(tmp_path / "p.npy", probs)
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy")])
    assert r.exit_code == 1
    assert message in r.stderr
    assert not (tmp_path / ".labelkit" / "label_issues.parquet").exists()


def test_no_labels_is_bad_input(runner, tmp_path):
    write_csv(tmp_path, 'id,embedding,label\na,"[1, 0]",\nb,"[0, 1]",\n')
    r = runner.invoke(app, ["detect-noise", str(tmp_path)])
    assert r.exit_code == 1
    assert "detect-noise needs labels" in r.stderr


def test_real_mnist_pred_probs_finds_validated_errors(runner, tmp_path, shared_data):
    base = shared_data / "cleanlab-label-errors"
    labels = np.load(base / "original_test_labels" / "mnist_test_set_original_labels.npy")
    probs = np.load(base / "cross_validated_predicted_probabilities" / "mnist_test_set_pyx.npy")
    ds = tmp_path / "mnist"
    ds.mkdir()
    pd.DataFrame({"id": np.arange(len(labels)).astype(str), "label": labels.astype(str)}).to_csv(ds / "labels.csv", index=False)
    np.save(ds / "p.npy", probs)
    r = runner.invoke(app, ["detect-noise", str(ds), "--pred-probs", str(ds / "p.npy"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_issues"] == 15  # cleanlab 2.9's prune_by_noise_rate count on the same file
    validated = json.loads((base / "validated_label_errors.json").read_text())["mnist_test_set"]
    issues = pq.read_table(ds / ".labelkit" / "label_issues.parquet").to_pandas()
    flagged = set(issues.loc[issues["is_issue"], "id"].astype(int))
    assert len(flagged & set(validated["validated_error_indices"])) == 7
