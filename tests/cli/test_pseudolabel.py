"""`labelkit prototype` and `labelkit pseudolabel` end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelkit import artifacts
from labelkit.cli import app
from tests.conftest import ROOT, write_csv

PL_COLUMNS = ["id", "label", "confidence", "margin", "accepted", "top_labels", "top_probs", "novelty", "reason"]


def test_pseudolabel_digits_runs_upstream_and_is_accurate(runner, digits):
    r = runner.invoke(app, ["pseudolabel", str(digits), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [u["stage"] for u in out["upstream"]] == ["embed", "prototype"]
    pl = pq.read_table(digits / ".labelkit" / "pseudolabels.parquet").to_pandas()
    assert list(pl.columns) == PL_COLUMNS
    assert len(pl) == 1618  # every unlabeled sample
    truth = pd.read_csv(ROOT / "examples" / "digits-truth.csv").set_index("path")
    correct = pl["label"].to_numpy() == truth.loc[pl["id"], "true_label"].astype(str).to_numpy()
    assert correct.mean() > 0.93
    assert pl["accepted"].sum() == out["n_accepted"] > 500
    assert correct[pl["accepted"].to_numpy()].mean() > 0.98  # accepted ones are trustworthy
    probs = np.stack(pl["top_probs"].to_numpy())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (pl["label"] == pl["top_labels"].str[0]).all()
    assert out["ece"] < 0.15
    r2 = runner.invoke(app, ["pseudolabel", str(digits)])
    assert "pseudolabel: up to date, skipping" in r2.stderr


def test_threshold_change_reruns_only_pseudolabel(runner, digits):
    assert runner.invoke(app, ["pseudolabel", str(digits)]).exit_code == 0
    r = runner.invoke(app, ["pseudolabel", str(digits), "--threshold-rule", "top_per_class", "--threshold", "5", "--json"])
    out = json.loads(r.stdout)
    assert out["reason"] == "parameters changed" and "upstream" not in out
    assert out["n_accepted"] == 50
    assert set(out["accepted_per_class"].values()) == {5}


def test_prototype_summary_and_artifact(runner, digits):
    r = runner.invoke(app, ["prototype", str(digits), "--n-per-class", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    t = pq.read_table(digits / ".labelkit" / "prototypes.parquet").to_pandas()
    assert list(t.columns) == ["class", "prototype", "vector", "support", "kind"]
    assert sorted(t["class"].unique()) == [str(c) for c in range(10)]
    assert t.groupby("class").size().max() == 2
    vecs = np.stack(t["vector"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert len(out["per_class"]) == 10 and len(out["confusable_pairs"]) == 5
    assert artifacts.read_metadata(digits / ".labelkit" / "prototypes.parquet")["classes"] == [str(c) for c in range(10)]


def test_zero_shot_text_from_class_names(runner, tmp_path):
    texts = [
        "the striker scored twice in the final match", "the team won the championship game",
        "the goalkeeper saved a penalty in extra time", "shares fell as the central bank raised interest rates",
        "the company reported record quarterly profits", "investors sold stocks after weak earnings",
    ]
    pd.DataFrame({"text": texts, "label": [""] * len(texts)}).to_csv(tmp_path / "labels.csv", index=False)
    r = runner.invoke(app, ["pseudolabel", str(tmp_path), "--classes", "sports,business", "--threshold-rule", "fixed", "--threshold", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    pl = pq.read_table(tmp_path / ".labelkit" / "pseudolabels.parquet").to_pandas()
    assert pl["label"].tolist() == ["sports"] * 3 + ["business"] * 3
    kinds = pq.read_table(tmp_path / ".labelkit" / "prototypes.parquet").column("kind").to_pylist()
    assert set(kinds) <= {"text", "fused"}  # text prototypes, refined with the unlabeled texts


def test_no_labels_no_text_tower_is_bad_input(runner, tmp_path):
    write_csv(tmp_path, 'id,embedding,label\na,"[1, 0]",\nb,"[0, 1]",\n')
    r = runner.invoke(app, ["pseudolabel", str(tmp_path), "--classes", "x,y"])
    assert r.exit_code == 1
    assert "no sample is labeled and model 'precomputed' has no text tower" in r.stderr
    assert not (tmp_path / ".labelkit" / "pseudolabels.parquet").exists()


def test_propagation_knobs_reach_the_artifact_params_and_are_validated(runner, tmp_path):
    write_csv(tmp_path, 'id,embedding,label\na,"[1, 0]",x\nb,"[0, 1]",y\nc,"[0.9, 0.1]",\nd,"[0.1, 0.9]",\n')
    r = runner.invoke(app, ["pseudolabel", str(tmp_path), "--weights", "1", "0", "0", "--gamma", "2", "--one-way-weight", "0.5",
                            "--reach-prior", "0", "--no-refine", "--calibration-samples", "0", "--no-clean-seeds", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["timings_s"]) == {"knn_graph", "clean_seeds", "score", "accept", "write"}
    params = artifacts.read_metadata(tmp_path / ".labelkit" / "pseudolabels.parquet")["params"]
    assert params["weights"] == [1.0, 0.0, 0.0] and params["gamma"] == 2.0 and params["refine"] is False
    assert params["calibration_samples"] == 0 and params["clean_seeds"] is False
    assert pq.read_table(tmp_path / ".labelkit" / "pseudolabels.parquet").column("label").to_pylist() == ["x", "y"]
    bad = runner.invoke(app, ["pseudolabel", str(tmp_path), "--weights", "0", "0", "0"])
    assert bad.exit_code == 2
    assert "--weights: must be 3 non-negative numbers, not all zero" in bad.stderr
    bad = runner.invoke(app, ["pseudolabel", str(tmp_path), "--one-way-weight", "1.5"])
    assert bad.exit_code == 2 and "--one-way-weight: must be <= 1. Got 1.5 instead." in bad.stderr


def test_clean_seeds_odds_keeps_seeds_that_plain_confident_learning_would_drop(runner, digits):
    r = runner.invoke(app, ["pseudolabel", str(digits), "--json"])
    assert r.exit_code == 0, r.output
    odds5 = json.loads(r.stdout)["n_seeds_dropped"]
    r = runner.invoke(app, ["pseudolabel", str(digits), "--clean-seeds-odds", "1", "--json"])
    assert r.exit_code == 0, r.output
    odds1 = json.loads(r.stdout)["n_seeds_dropped"]
    assert 0 < odds5 < odds1  # examples/digits: 16 and 17 of 179 seeds (18 flipped)
    assert artifacts.read_metadata(digits / ".labelkit" / "pseudolabels.parquet")["params"]["clean_seeds_odds"] == 1.0
    bad = runner.invoke(app, ["pseudolabel", str(digits), "--clean-seeds-odds", "0.5"])
    assert bad.exit_code == 2 and "--clean-seeds-odds: must be >= 1. Got 0.5 instead." in bad.stderr


def test_float16_embeddings_give_the_float32_pseudo_labels(runner, digits, tmp_path):
    """--dtype float16 halves embeddings.parquet and is read back as float16 (no float32 copy):
    the pseudo-labels agree with the float32 run's."""
    import shutil

    half = tmp_path / "half"
    shutil.copytree(digits, half)
    assert runner.invoke(app, ["embed", str(half), "--dtype", "float16"]).exit_code == 0
    emb = half / ".labelkit" / artifacts.EMBEDDINGS
    assert str(pq.read_schema(emb).field("embedding").type.value_type) == "halffloat"
    r16 = runner.invoke(app, ["pseudolabel", str(half), "--json"])
    r32 = runner.invoke(app, ["pseudolabel", str(digits), "--json"])
    assert r16.exit_code == r32.exit_code == 0, r16.output + r32.output
    a = pq.read_table(half / ".labelkit" / "pseudolabels.parquet").to_pandas().set_index("id")
    b = pq.read_table(digits / ".labelkit" / "pseudolabels.parquet").to_pandas().set_index("id").loc[a.index]
    assert (a["label"] == b["label"]).mean() > 0.99
    assert abs(json.loads(r16.stdout)["n_accepted"] - json.loads(r32.stdout)["n_accepted"]) <= 15
