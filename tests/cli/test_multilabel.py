"""Multi-label data through the stages (issue 16): the task is recorded, every row is accounted for.

The data is synthetic (no multi-label dataset ships offline): scikit-learn's
make_multilabel_classification as a manifest of precomputed vectors with label sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelkit import artifacts
from labelkit.cli import app

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture
def multilabel_data(tmp_path: Path) -> Path:
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=160, n_features=12, n_classes=4, n_labels=2, length=40,
                                          allow_unlabeled=True, random_state=0)
    rng = np.random.default_rng(0)
    labeled = rng.random(len(y)) < 0.6
    y[np.flatnonzero(labeled)[:5], 0] ^= 1  # five flipped labels of class a
    rows = [{"id": f"s{i:03d}", "embedding": x[i].astype(float).tolist(),
             "labels": [CLASSES[k] for k in np.flatnonzero(y[i])] if labeled[i] else None} for i in range(len(y))]
    data = tmp_path / "ml"
    data.mkdir()
    pd.DataFrame(rows).to_parquet(data / "labels.parquet")
    return data


def _meta(path: Path) -> dict:
    return artifacts.read_metadata(path)


def test_detect_noise_and_pseudolabel_account_for_every_row(runner, multilabel_data):
    data = multilabel_data
    given = pd.read_parquet(data / "labels.parquet")
    n_labeled = int(given["labels"].notna().sum())
    n_unlabeled = len(given) - n_labeled
    assert 0 < n_labeled < len(given)

    r = runner.invoke(app, ["detect-noise", str(data), "--json"])
    assert r.exit_code == 0, r.output
    ws = data / ".labelkit"
    issues = pd.read_parquet(ws / "label_issues.parquet")
    # every labeled row is analysed (issue 16: only the single-label rows were, in silence)
    assert len(issues) == n_labeled and set(issues["id"]) == set(given["id"][given["labels"].notna()])
    assert _meta(ws / "samples.parquet")["task"] == "multi-label"
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["stages"]["detect-noise"]["task"] == "multi-label"
    flagged = issues[issues["is_issue"]]
    assert len(flagged) > 0
    # a flagged sample has something to add or remove, and its suggestion is given + add - remove
    for _, row in flagged.iterrows():
        assert len(row["labels_to_add"]) + len(row["labels_to_remove"]) > 0
        assert set(row["suggested_labels"]) == (set(row["given_labels"]) | set(row["labels_to_add"])) - set(row["labels_to_remove"])
    assert sorted(issues["rank"]) == list(range(1, n_labeled + 1))

    r = runner.invoke(app, ["pseudolabel", str(data), "--json"])
    assert r.exit_code == 0, r.output
    pseudo = pd.read_parquet(ws / "pseudolabels.parquet")
    assert len(pseudo) == n_unlabeled
    assert all(len(p) == len(CLASSES) for p in pseudo["label_probs"])
    meta = _meta(ws / "pseudolabels.parquet")
    assert meta["task"] == "multi-label" and meta["classes"] == CLASSES
    thresholds = np.array(meta["thresholds"])
    for _, row in pseudo.iterrows():  # the label set is the classes at or above their threshold
        assert row["labels"].tolist() == [c for c, p, t in zip(CLASSES, row["label_probs"], thresholds) if p >= t]
    protos = pd.read_parquet(ws / "prototypes.parquet")
    assert sorted(protos["class"]) == CLASSES


def test_run_end_to_end_then_predict_with_no_row_dropped(runner, multilabel_data, tmp_path):
    data = multilabel_data
    given = pd.read_parquet(data / "labels.parquet")
    labeled = given["labels"].notna()
    r = runner.invoke(app, ["run", str(data), "--json"])
    assert r.exit_code == 0, r.output
    done = json.loads(r.stdout)
    ran = [s["stage"] for s in done["stages"]]
    assert {"embed", "prototype", "pseudolabel", "detect-noise", "distill", "report"} <= set(ran)
    assert all(s.get("exit_code") in (None, 0) for s in done["stages"])
    ws = data / ".labelkit"
    assert len(pd.read_parquet(ws / "label_issues.parquet")) == int(labeled.sum())
    assert len(pd.read_parquet(ws / "pseudolabels.parquet")) == int((~labeled).sum())
    config = json.loads((ws / "student" / "config.json").read_text())
    assert config["task"] == "multi-label" and config["classes"] == CLASSES and len(config["thresholds"]) == len(CLASSES)
    metrics = json.loads((ws / "student" / "metrics.json").read_text())
    assert 0 < metrics["val_micro_f1"] <= 1
    html = (ws / "report.html").read_text()
    assert "also carries" in html and "Label issues" in html  # co-occurrence and the flagged samples

    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(ws / "student"), str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    pred = pd.read_parquet(out / "predictions.parquet")
    assert len(pred) == len(given)  # every sample, labeled or not
    thresholds = np.array(config["thresholds"])
    for _, row in pred.head(20).iterrows():
        assert row["labels"].tolist() == [c for c, p, t in zip(CLASSES, row["label_probs"], thresholds) if p >= t]


def test_distill_onnx_gives_the_sigmoid_probabilities(runner, multilabel_data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    data = multilabel_data
    r = runner.invoke(app, ["distill", str(data), "--onnx"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "pred"
    assert runner.invoke(app, ["predict", str(data / ".labelkit" / "student"), str(data), "--out", str(out)]).exit_code == 0
    pred = pd.read_parquet(out / "predictions.parquet")
    x = np.stack(pd.read_parquet(data / "labels.parquet")["embedding"].to_numpy()).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    session = ort.InferenceSession(str(data / ".labelkit" / "student" / "model.onnx"))
    _, probs = session.run(None, {"input": x})
    np.testing.assert_allclose(probs, np.stack(pred["label_probs"].to_numpy()), atol=1e-5)


def test_image_folder_copies_in_several_class_folders_run_as_multi_label(runner, tmp_path):
    """An image sitting (identical bytes) in several class folders is one sample with those classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "imgs"
    n_multi = n_single = 0
    for i in range(72):
        classes = [c for c in CLASSES[:3] if rng.random() < 0.45] or [CLASSES[i % 3]]
        img = rng.integers(0, 60, (8, 8), dtype=np.uint8)
        for c in classes:  # class k brightens its own quarter of the image
            k = CLASSES.index(c)
            img[(k // 2) * 4:(k // 2) * 4 + 4, (k % 2) * 4:(k % 2) * 4 + 4] += 150
        folders = ["unlabeled"] if i >= 56 else classes
        for f in folders:
            (data / f).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(data / f / f"{i:03d}.png")
        if i < 56:
            n_multi += len(classes) > 1
            n_single += len(classes) == 1
    r = runner.invoke(app, ["run", str(data), "--model", "pixels:8", "--until", "detect-noise", "--json"])
    assert r.exit_code == 0, r.output
    ws = data / ".labelkit"
    samples = pd.read_parquet(ws / "samples.parquet")
    assert artifacts.read_metadata(ws / "samples.parquet")["task"] == "multi-label"
    assert len(samples) == 72  # each copied image once
    assert sum(len(v) > 1 for v in samples["labels"] if v is not None) == n_multi
    assert len(pd.read_parquet(ws / "label_issues.parquet")) == 56
    assert len(pd.read_parquet(ws / "pseudolabels.parquet")) == 16
    assert "multi_label_from_folders" in r.stdout


def test_target_precision_decides_acceptance_per_sample(runner, multilabel_data):
    data = multilabel_data
    r = runner.invoke(app, ["pseudolabel", str(data), "--target-precision", "0.95", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["target_precision"] == 0.95
    reached = {c["class"]: c["target_reached"] for c in summary["per_class"]}
    pseudo = pd.read_parquet(data / ".labelkit" / "pseudolabels.parquet")
    for _, row in pseudo.iterrows():  # accepted <=> every class of its set reached the target
        assert row["accepted"] == all(reached[c] for c in row["labels"])
        assert pd.isna(row["reason"]) == row["accepted"]
    assert summary["n_accepted"] == int(pseudo["accepted"].sum())
    if not all(reached.values()):
        assert "target_precision_not_reached" in [w["code"] for w in summary["warnings"]]
    r = runner.invoke(app, ["pseudolabel", str(data), "--target-precision", "1.5"])
    assert r.exit_code == 2 and "--target-precision" in r.stderr


@pytest.fixture
def separable_multilabel(tmp_path: Path) -> tuple[Path, dict[str, set[str]]]:
    """400 samples, half labeled with their true sets (long documents: well separated), and the truth."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=400, n_features=20, n_classes=4, n_labels=2, length=500,
                                          allow_unlabeled=True, random_state=0)
    labeled = np.random.default_rng(0).random(len(y)) < 0.5
    truth = {f"s{i:03d}": {CLASSES[k] for k in np.flatnonzero(y[i])} for i in range(len(y))}
    rows = [{"id": f"s{i:03d}", "embedding": x[i].astype(float).tolist(),
             "labels": sorted(truth[f"s{i:03d}"]) if labeled[i] else None} for i in range(len(y))]
    data = tmp_path / "sep"
    data.mkdir()
    pd.DataFrame(rows).to_parquet(data / "labels.parquet")
    return data, truth


def test_max_error_certifies_the_share_of_wrong_labels_or_exits_3(runner, separable_multilabel):
    """Issue 19 on multi-label data: accepted label sets within the target against the truth; an
    impossible target accepts nothing and exits 3 (the CI code), saying what could be certified."""
    data, truth = separable_multilabel
    r = runner.invoke(app, ["pseudolabel", str(data), "--max-error", "0.1", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    g = s["guarantee"]
    assert s["certified"] is True and g["certified"] is True and g["target"] == 0.1 and g["confidence"] == 0.9
    assert 0 < s["error_bound"] <= 0.1 and g["method"] == "hoeffding_bentkus"  # Jaccard losses are fractional
    pseudo = pd.read_parquet(data / ".labelkit" / "pseudolabels.parquet")
    acc = pseudo[pseudo["accepted"]]
    assert s["n_accepted"] == len(acc) > 0.5 * len(pseudo) and g["coverage"] == round(len(acc) / len(pseudo), 4)
    assert (acc["set_confidence"] >= g["threshold"] - 1e-6).all() and pseudo["reason"][~pseudo["accepted"]].eq("below_threshold").all()
    wrong = [len(set(v) ^ truth[i]) / len(set(v) | truth[i]) if set(v) | truth[i] else 0.0 for i, v in zip(acc["id"], acc["labels"])]
    assert np.mean(wrong) <= 0.1  # the realised share of wrong labels, against the generator's truth
    assert _meta(data / ".labelkit" / "pseudolabels.parquet")["guarantee"]["certified"] is True
    r = runner.invoke(app, ["report", str(data)])
    assert r.exit_code == 0, r.output
    assert f"≤ {s['error_bound']:.1%} at 90%" in (data / ".labelkit" / "report.html").read_text()

    r = runner.invoke(app, ["pseudolabel", str(data), "--max-error", "0.001", "--json"])
    assert r.exit_code == 3, r.output
    s = json.loads(r.stdout)
    assert s["certified"] is False and s["n_accepted"] == 0 and s["error_bound"] is None
    assert s["guarantee"]["could_certify"]["error_bound"] > 0.001 and "cannot certify error <= 0.10%" in s["guarantee"]["message"]
    assert "uncertified" in [w["code"] for w in s["warnings"]]
    pseudo = pd.read_parquet(data / ".labelkit" / "pseudolabels.parquet")
    assert not pseudo["accepted"].any() and pseudo["reason"].eq("uncertified").all()

    r = runner.invoke(app, ["pseudolabel", str(data), "--max-error", "0.1", "--target-precision", "0.9"])
    assert r.exit_code == 1 and "--max-error and --target-precision on multi-label data: choose one" in r.stderr
