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
         "this student's embedder pixels:8 reads image inputs, but DATA holds texts; give it a folder of images or an image file"),
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
    assert "this student was trained on your own 8-d vectors; DATA must be a manifest with an 'embedding' column of them, not images" in r.stderr


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


# -- what users have: plain folders, one image, files of texts (issue 13) ---------------------

DIGIT_CLASSES = {str(d) for d in range(10)}


def _some_digits(folder: Path, n: int, start: int = 0) -> list[str]:
    """Copy ``n`` PNGs from examples/digits/unlabeled into ``folder``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (DIGITS / "unlabeled").iterdir())[start:start + n]
    for name in names:
        shutil.copy(DIGITS / "unlabeled" / name, folder / name)
    return names


def _predictions(path: Path):
    return pq.read_table(path).to_pandas()


def test_predict_a_plain_folder_of_images(runner, digits_student, tmp_path):
    # Issue 13: no class folders and no unlabeled/: every image, recursively, is a sample to predict.
    data = tmp_path / "photos"
    top = _some_digits(data, 5)
    nested = _some_digits(data / "batch2", 2, start=5)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "notes.txt").write_text("not an image")
    r = runner.invoke(app, ["predict", str(digits_student), str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["input"] == "image folder" and out["n_predicted"] == 7
    assert out["n_skipped"] == 1 and out["skipped_ids"] == ["broken.png"]
    assert "accuracy" not in out  # "batch2" is a folder name, not one of the student's classes
    df = _predictions(data / ".labelkit" / "predictions.parquet")
    assert df["id"].tolist() == top + [f"batch2/{n}" for n in nested]
    assert set(df["label"]) <= DIGIT_CLASSES
    # The same images read inside the big unlabeled folder get the same predictions.
    big = tmp_path / "big"
    shutil.copytree(DIGITS / "unlabeled", big / "unlabeled")
    assert runner.invoke(app, ["predict", str(digits_student), str(big), "--json"]).exit_code == 0
    ref = _predictions(big / ".labelkit" / "predictions.parquet").set_index("id")
    want = ref.loc[[f"unlabeled/{n}" for n in top + nested]]
    assert df["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(df["confidence"], want["confidence"], rtol=1e-5)


def test_top_level_images_beside_class_folders(runner, digits_student, tmp_path):
    # Images directly in DATA are unlabeled; DATA/<class>/ images keep their label for the accuracy.
    data = tmp_path / "mixed"
    top = _some_digits(data, 3)
    shutil.copytree(DIGITS / "3", data / "3")
    n3 = len(list((DIGITS / "3").iterdir()))
    out = json.loads(runner.invoke(app, ["predict", str(digits_student), str(data), "--json"]).stdout)
    assert out["n_predicted"] == 3 + n3 and out["n_labeled"] == n3 and out["accuracy"] > 0.8
    ids = _predictions(data / ".labelkit" / "predictions.parquet")["id"].tolist()
    assert ids[:3] == top and all(i.startswith("3/") for i in ids[3:])


def test_predict_one_image_file(runner, digits_student, tmp_path):
    # `labelkit predict student/ photo.png`: the workspace is photo.png.labelkit beside the file.
    folder = tmp_path / "photos"
    (name,) = _some_digits(folder, 1, start=10)
    before = sorted(p.name for p in digits_student.iterdir())
    r = runner.invoke(app, ["predict", str(digits_student), str(folder / name), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    ws = folder / f"{name}.labelkit"
    assert out["input"] == "image file" and out["n_predicted"] == 1 and out["n_skipped"] == 0
    assert out["predictions"] == str(ws / "predictions.parquet")
    df = _predictions(ws / "predictions.parquet")
    assert df["id"].tolist() == [name] and df["label"][0] in DIGIT_CLASSES
    truth = dict(line.split(",")[:2] for line in (DIGITS.parent / "digits-truth.csv").read_text().splitlines()[1:])
    assert df["label"][0] == truth[f"unlabeled/{name}"]
    assert not (folder / ".labelkit").exists()  # a folder the file sits in keeps its own workspace untouched
    assert sorted(p.name for p in digits_student.iterdir()) == before  # nothing written into the model dir
    # Alone or inside its folder, the image gets the same prediction.
    r = runner.invoke(app, ["predict", str(digits_student), str(folder), "--json"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(_predictions(folder / ".labelkit" / "predictions.parquet")["top_probs"][0], df["top_probs"][0], rtol=1e-5)


def test_predict_one_image_file_with_out(runner, digits_student, tmp_path):
    (name,) = _some_digits(tmp_path / "in", 1)
    r = runner.invoke(app, ["predict", str(digits_student), str(tmp_path / "in" / name), "--out", str(tmp_path / "ws"), "--json"])
    assert r.exit_code == 0, r.output
    assert _predictions(tmp_path / "ws" / "predictions.parquet")["id"].tolist() == [name]
    assert not (tmp_path / "in" / f"{name}.labelkit").exists()


def test_a_manifest_file_stands_for_its_folder(runner, vector_student, tmp_path):
    x, _ = _blob_vectors(seed=3, n_per=4)
    data = write_vectors(tmp_path / "v", x, [None] * len(x))
    r = runner.invoke(app, ["predict", str(vector_student), str(data / "labels.parquet"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input"] == "labels.parquet"
    df = _predictions(data / ".labelkit" / "predictions.parquet")
    assert df["id"].tolist() == [f"s{i:03d}" for i in range(12)] and set(df["label"]) <= {"a", "b", "c"}
    assert not (data / "labels.parquet.labelkit").exists()


@pytest.fixture(scope="module")
def text_student(tmp_path_factory) -> Path:
    """An mlp student on minilm embeddings of 22 labeled banking77 texts (3 intents)."""
    import pandas as pd

    root = tmp_path_factory.mktemp("text_student")
    df = pd.read_csv(DIGITS.parent / "banking77" / "labels.csv", dtype=str, keep_default_na=False)
    df = df[df["label"].isin(TEXT_CLASSES)]
    (root / "train").mkdir()
    df.to_csv(root / "train" / "labels.csv", index=False)
    cfg = root / "lk.toml"
    cfg.write_text('[embed]\nmodel = "minilm"\ndevice = "cpu"\n[distill]\nepochs = 30\nhidden = 16\nlr = 0.01\ndevice = "cpu"\n')
    r = CliRunner().invoke(app, ["distill", str(root / "train"), "--without-pseudolabels", "--keep-issues", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    return root / "train" / ".labelkit" / "student"


TEXT_CLASSES = ("card_arrival", "declined_card_payment", "exchange_rate")
QUESTIONS = ["My new card still has not arrived", "Why was my card payment declined?", "What exchange rate do you use for euros?"]


def test_predict_a_csv_of_texts_without_labels(runner, text_student, tmp_path):
    csv = tmp_path / "questions.csv"
    csv.write_text("text\n" + "\n".join(QUESTIONS) + "\n")
    r = runner.invoke(app, ["predict", str(text_student), str(csv), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["input"] == "questions.csv" and out["n_predicted"] == 3 and out["embedder"] == "minilm" and "accuracy" not in out
    df = _predictions(tmp_path / "questions.csv.labelkit" / "predictions.parquet")
    assert df["id"].tolist() == ["0", "1", "2"]  # no 'id' column: the row number
    assert df["label"].tolist() == list(TEXT_CLASSES)  # the three questions ask about the three intents, in order


def test_predict_a_parquet_of_texts_with_ids_and_labels(runner, text_student, tmp_path):
    import pandas as pd

    path = tmp_path / "q.parquet"
    pd.DataFrame({"id": ["q1", "q2", "q3"], "text": QUESTIONS, "label": list(TEXT_CLASSES)}).to_parquet(path)
    out = json.loads(runner.invoke(app, ["predict", str(text_student), str(path), "--json"]).stdout)
    assert out["n_predicted"] == 3 and out["n_labeled"] == 3 and out["accuracy"] == 1.0
    df = _predictions(tmp_path / "q.parquet.labelkit" / "predictions.parquet")
    assert df["id"].tolist() == ["q1", "q2", "q3"] and set(df["label"]) <= set(TEXT_CLASSES)


def test_predict_a_txt_file_one_text_per_line(runner, text_student, tmp_path):
    path = tmp_path / "q.txt"
    path.write_text(f"{QUESTIONS[0]}\n\n   \n{QUESTIONS[2]}\n")
    out = json.loads(runner.invoke(app, ["predict", str(text_student), str(path), "--json"]).stdout)
    assert out["n_predicted"] == 2 and out["input"] == "q.txt"
    df = _predictions(tmp_path / "q.txt.labelkit" / "predictions.parquet")
    assert df["id"].tolist() == ["1", "4"]  # line numbers; blank lines are not samples
    assert df["label"].tolist() == ["card_arrival", "exchange_rate"]


def test_predict_a_folder_holding_a_text_manifest(runner, text_student, tmp_path):
    data = write_csv(tmp_path / "d", "id,text\na," + QUESTIONS[1].replace("?", "") + "\n")
    out = json.loads(runner.invoke(app, ["predict", str(text_student), str(data), "--json"]).stdout)
    assert out["n_predicted"] == 1 and out["preview"][0]["id"] == "a" and out["preview"][0]["label"] == "declined_card_payment"


@pytest.mark.parametrize("make", [
    lambda p: _some_digits(p / "photos", 2) and p / "photos",
    lambda p: _some_digits(p, 1) and p / sorted(q.name for q in p.iterdir())[0],
])
def test_text_student_refuses_images_at_once(runner, text_student, tmp_path, make):
    data = make(tmp_path)
    r = runner.invoke(app, ["predict", str(text_student), str(data)])
    assert r.exit_code == 1
    assert r.stderr == ("error: this student's embedder minilm reads text inputs, but DATA holds images; "
                        "give it a CSV/Parquet with a 'text' column, or a .txt file with one text per line\n")
    assert not list(tmp_path.rglob("predictions.parquet")) and not list(tmp_path.rglob("*.labelkit"))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("q.csv", "id,label\na,1\n", "q.csv: needs a 'path', 'text' or 'embedding' column"),
        ("q.csv", "sentence\nhello\n", "q.csv: unknown column 'sentence' (known: id, path, text, label, labels, split, embedding)"),
        ("q.csv", "text\n", "q.csv: the manifest has no rows"),
        ("q.txt", "\n  \n", "q.txt: no text in it; write one text per line"),
        ("q.json", "[]", "q.json: cannot read a '.json' file; DATA must be a dataset folder, a folder of images, an image file, or a .csv/.parquet/.txt of texts"),
    ],
)
def test_bad_data_files(runner, digits_student, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    r = runner.invoke(app, ["predict", str(digits_student), str(tmp_path / name)])
    assert r.exit_code == 1
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / f"{name}.labelkit").exists()


def test_a_folder_without_images(runner, digits_student, tmp_path):
    data = tmp_path / "docs"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "readme.md").write_text("hello")
    r = runner.invoke(app, ["predict", str(digits_student), str(data)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert f"{data}: no images in this folder or its subfolders (looked for .bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)" in r.stderr
    assert not (data / ".labelkit").exists()


def test_image_student_refuses_a_file_of_texts(runner, digits_student, tmp_path):
    (tmp_path / "q.txt").write_text("hello\n")
    r = runner.invoke(app, ["predict", str(digits_student), str(tmp_path / "q.txt")])
    assert r.exit_code == 1
    assert "this student's embedder pixels:8 reads image inputs, but DATA holds texts; give it a folder of images or an image file" in r.stderr


def test_missing_data_file_and_unwritable_workspace(runner, digits_student, tmp_path):
    r = runner.invoke(app, ["predict", str(digits_student), str(tmp_path / "nope.png")])
    assert r.exit_code == 1 and f"{tmp_path / 'nope.png'}: no such dataset folder or file" in r.stderr
    (name,) = _some_digits(tmp_path, 1)
    (tmp_path / "a_file").write_text("")
    r = runner.invoke(app, ["predict", str(digits_student), str(tmp_path / name), "--out", str(tmp_path / "a_file" / "ws")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert f"{tmp_path / 'a_file' / 'ws'}: cannot create the workspace folder (Not a directory); pass --out DIR to write the predictions elsewhere" in r.stderr


def test_other_stages_still_want_a_folder(runner, tmp_path):
    (name,) = _some_digits(tmp_path, 1)
    r = runner.invoke(app, ["embed", str(tmp_path / name)])
    assert r.exit_code == 1
    assert f"{tmp_path / name}: a file, not a dataset folder; of the stages only 'labelkit predict' reads a single file" in r.stderr
    assert not (tmp_path / f"{name}.labelkit").exists()
