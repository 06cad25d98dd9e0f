"""`labelkit predict` end to end: a student from distill applied to folders and manifests, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from labelkit.cli import app
from tests.cli.test_distill import _blob_vectors, _digits_pseudolabels, write_pseudolabels, write_vectors
from tests.conftest import DIGITS, write_csv


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_student(tmp_path_factory) -> Path:
    """A pixels:8 mlp student trained once on a copy of examples/digits (labels + 300 pseudo-labels)."""
    root = tmp_path_factory.mktemp("digits_student")
    data = root / "digits"
    shutil.copytree(DIGITS, data, ignore=shutil.ignore_patterns(".labelkit"))
    _digits_pseudolabels(data)
    cfg = root / "lk.toml"
    cfg.write_text('[embed]\nmodel = "pixels:8"\n[distill]\nepochs = 30\nlr = 0.01\ndevice = "cpu"\n')
    r = CliRunner().invoke(app, ["distill", str(data), "--keep-issues", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    return data / ".labelkit" / "student"


@pytest.fixture(scope="module")
def vector_student(tmp_path_factory) -> Path:
    """An mlp student on 8-d blob vectors (precomputed embedder)."""
    from tests.cli.test_distill import CLASSES

    root = tmp_path_factory.mktemp("vector_student")
    x, y = _blob_vectors()
    labels = [CLASSES[c] if i % 30 < 10 else None for i, c in enumerate(y)]
    data = write_vectors(root / "blobs", x, labels)
    (data / ".labelkit").mkdir()
    unl = [i for i, v in enumerate(labels) if v is None]
    write_pseudolabels(data / ".labelkit", [f"s{i:03d}" for i in unl], [CLASSES[y[i]] for i in unl], np.full(len(unl), 0.97), np.ones(len(unl), bool))
    cfg = root / "lk.toml"
    cfg.write_text('[distill]\nepochs = 30\nhidden = 16\nlr = 0.01\ndevice = "cpu"\n')
    r = CliRunner().invoke(app, ["distill", str(data), "--keep-issues", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    return data / ".labelkit" / "student"


def test_predict_an_image_folder_without_labels(runner, digits_student, tmp_path):
    data = tmp_path / "new"
    shutil.copytree(DIGITS / "unlabeled", data / "unlabeled")
    r = runner.invoke(app, ["predict", str(digits_student), str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_predicted"] == 1618 and out["n_skipped"] == 0 and "accuracy" not in out
    assert out["embedder"] == "pixels:8" and len(out["preview"]) == 10
    t = pq.read_table(data / ".labelkit" / "predictions.parquet")
    assert t.column_names == ["id", "label", "confidence", "top_labels", "top_probs"]
    df = t.to_pandas()
    assert len(df) == 1618 and set(df["label"]) <= {str(d) for d in range(10)}
    assert all(len(a) == 3 for a in df["top_labels"]) and all(a[0] == lab for a, lab in zip(df["top_labels"], df["label"]))
    np.testing.assert_allclose(df["confidence"], [p[0] for p in df["top_probs"]])
    assert all(p[0] >= p[1] >= p[2] for p in df["top_probs"])
    # The student is good on these images (examples/digits-truth.csv): a check that pixels match training.
    truth = {line.split(",")[0]: line.split(",")[1] for line in (DIGITS.parent / "digits-truth.csv").read_text().splitlines()[1:]}
    assert np.mean([truth[i] == lab for i, lab in zip(df["id"], df["label"])]) > 0.85


def test_predict_reports_accuracy_on_labels_and_respects_out(runner, digits_student, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(DIGITS, data, ignore=shutil.ignore_patterns(".labelkit", "unlabeled"))
    out_dir = tmp_path / "ws"
    r = runner.invoke(app, ["predict", str(digits_student), str(data), "--out", str(out_dir), "--top-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_predicted"] == out["n_labeled"] == 179 and 0.5 < out["accuracy"] <= 1.0
    df = pq.read_table(out_dir / "predictions.parquet").to_pandas()
    assert all(len(a) == 2 for a in df["top_labels"])
    assert not (data / ".labelkit").exists()
    rec = json.loads((out_dir / "manifest.json").read_text())["stages"]["predict"]
    assert "predictions.parquet" in rec["outputs"]


def test_predict_prints_a_summary_for_people(runner, digits_student, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(DIGITS / "3", data / "3")
    r = runner.invoke(app, ["predict", str(digits_student), str(data)])
    assert r.exit_code == 0, r.output
    assert "predict" in r.stderr and "predictions.parquet" in r.stderr


def test_unreadable_images_are_skipped_and_named(runner, digits_student, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(DIGITS / "7", data / "7")
    (data / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = json.loads(runner.invoke(app, ["predict", str(digits_student), str(data), "--json"]).stdout)
    assert out["n_skipped"] == 1 and out["skipped_ids"] == ["7/broken.png"]
    ids = pq.read_table(data / ".labelkit" / "predictions.parquet").column("id").to_pylist()
    assert "7/broken.png" not in ids and len(ids) == out["n_predicted"]


def test_predict_a_vectors_manifest(runner, vector_student, tmp_path):
    x, y = _blob_vectors(seed=5, n_per=10)
    data = write_vectors(tmp_path / "v", 3.0 * x, [None] * len(x))  # scale is irrelevant: rows are L2-normalised
    out = json.loads(runner.invoke(app, ["predict", str(vector_student), str(data), "--json"]).stdout)
    assert out["n_predicted"] == 30 and out["embedder"] == "precomputed"
    df = pq.read_table(data / ".labelkit" / "predictions.parquet").to_pandas()
    assert np.mean(df["label"].to_numpy() == np.asarray(["a", "b", "c"])[y]) > 0.9


def test_image_student_on_vectors_of_the_right_dim(runner, digits_student, tmp_path):
    # A manifest of vectors is used as is: 64-d vectors fit a pixels:8 student.
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[:40] / 16.0 - 0.5).astype(np.float32)  # what pixels:8 gives for these images
    data = write_vectors(tmp_path / "v", x, [str(v) for v in d.target[:40]])
    out = json.loads(runner.invoke(app, ["predict", str(digits_student), str(data), "--json"]).stdout)
    assert out["n_predicted"] == 40 and out["accuracy"] > 0.8


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_vectors(p, np.ones((4, 5), np.float32), [None] * 4),
         "DATA's 'embedding' vectors have 5 dimensions, but this student expects 64 (pixels:8 embeddings)"),
        (lambda p: write_csv(p, "text,label\nhello,\nworld,\n"),
         "this student's embedder pixels:8 reads image inputs, but DATA holds text"),
    ],
)
def test_data_that_does_not_fit_the_embedder(runner, digits_student, tmp_path, make, message):
    data = make(tmp_path / "bad")
    r = runner.invoke(app, ["predict", str(digits_student), str(data)])
    assert r.exit_code == 1
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert not (data / ".labelkit" / "predictions.parquet").exists()


def test_vector_student_needs_vectors(runner, vector_student, digits):
    r = runner.invoke(app, ["predict", str(vector_student), str(digits)])
    assert r.exit_code == 1
    assert "this student was trained on your own 8-d vectors; DATA must be a manifest with an 'embedding' column of them, not image" in r.stderr


def test_missing_or_broken_model_dir(runner, digits, tmp_path, digits_student):
    r = runner.invoke(app, ["predict", str(tmp_path / "nope"), str(digits)])
    assert r.exit_code == 1
    assert f"{tmp_path / 'nope'}: no such folder; point predict at a student folder written by 'labelkit distill'" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["predict", str(empty), str(digits)])
    assert r.exit_code == 1 and f"{empty}: no config.json here" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(digits_student, broken)
    (broken / "config.json").write_text("{not json")
    r = runner.invoke(app, ["predict", str(broken), str(digits)])
    assert r.exit_code == 1 and "config.json: not valid JSON" in r.stderr
    shutil.copy(digits_student / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"garbage")
    r = runner.invoke(app, ["predict", str(broken), str(digits)])
    assert r.exit_code == 1 and "model.safetensors: cannot read" in r.stderr
    assert not (digits / ".labelkit" / "predictions.parquet").exists()
