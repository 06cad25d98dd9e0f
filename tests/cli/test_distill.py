"""`labelkit distill` end to end through the CLI: the student folder, issues, rounds, ONNX, bad input.

Upstream artifacts (pseudolabels.parquet, label_issues.parquet) are written by hand here, so the
tests know exactly what the student is trained on, and ``pipeline.ensure`` leaves them be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from labelkit import __version__, artifacts
from labelkit.cli import app
from labelkit.distill.training_set import acceptance_threshold

N_PER, DIM, CLASSES = 30, 8, ("a", "b", "c")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blob_vectors(seed: int = 0, n_per: int = N_PER) -> tuple[np.ndarray, np.ndarray]:
    """Three separated Gaussian blobs in DIM dimensions; (x, true class index)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    centres = 4.0 * np.eye(3, DIM)
    return (centres[y] + rng.normal(size=(y.size, DIM))).astype(np.float32), y


def write_vectors(folder: Path, x: np.ndarray, labels: list[str | None], ids: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"s{i:03d}" for i in range(len(x))]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float32)), x.shape[1])
    pq.write_table(pa.table({"id": ids, "label": pa.array(labels, pa.string()), "embedding": emb}), folder / "labels.parquet")
    return folder


def write_pseudolabels(ws: Path, ids: list[str], label: list[str], confidence: np.ndarray, accepted: np.ndarray,
                       classes=CLASSES, threshold: float = 0.9, rule: str = "fixed") -> None:
    """pseudolabels.parquet as the pseudolabel stage writes it: top-2 soft labels, params in the metadata."""
    top_labels, top_probs = [], []
    for lab, c in zip(label, confidence):
        other = next(k for k in classes if k != lab)
        top_labels.append([lab, other])
        top_probs.append([float(c), float(1 - c)])
    t = pa.table({
        "id": pa.array(ids, pa.string()), "label": pa.array(label, pa.string()),
        "confidence": pa.array(np.asarray(confidence, np.float32)), "margin": pa.array(np.asarray(2 * confidence - 1, np.float32)),
        "accepted": pa.array(np.asarray(accepted, bool)), "top_labels": pa.array(top_labels, pa.list_(pa.string(), 2)),
        "top_probs": pa.array(top_probs, pa.list_(pa.float32(), 2)),
    })
    artifacts.write_table(ws / artifacts.PSEUDOLABELS, t, {"classes": list(classes), "params": {"threshold_rule": rule, "threshold": threshold}})


def write_issues(ws: Path, ids: list[str], given: list[str], flagged: set[str]) -> None:
    t = pa.table({
        "id": pa.array(ids, pa.string()), "given_label": pa.array(given, pa.string()), "suggested_label": pa.array(given, pa.string()),
        "label_quality": pa.array(np.where([i in flagged for i in ids], 0.01, 0.9).astype(np.float32)),
        "is_issue": pa.array([i in flagged for i in ids]), "issue_type": pa.array(["label" if i in flagged else None for i in ids], pa.string()),
        "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64)),
    })
    artifacts.write_table(ws / artifacts.LABEL_ISSUES, t, {})


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    """90 vectors in 3 blobs: 10 labeled per class; of the 60 unlabeled, 45 accepted pseudo-labels (true class, p=0.97)."""
    x, y = _blob_vectors()
    ids = [f"s{i:03d}" for i in range(len(y))]
    labeled = np.zeros(len(y), bool)
    for c in range(3):
        labeled[np.flatnonzero(y == c)[:10]] = True
    data = write_vectors(tmp_path / "blobs", x, [CLASSES[c] if lab else None for c, lab in zip(y, labeled)], ids)
    ws = data / ".labelkit"
    ws.mkdir()
    unl = np.flatnonzero(~labeled)
    conf = np.where(np.arange(unl.size) % 4 == 3, 0.6, 0.97)
    write_pseudolabels(ws, [ids[i] for i in unl], [CLASSES[y[i]] for i in unl], conf, conf >= 0.9)
    return data


@pytest.fixture
def fast(tmp_path: Path) -> Path:
    cfg = tmp_path / "fast.toml"
    # Only the accepted pseudo-labels, as soft labels: these tests know exactly which samples those are.
    cfg.write_text("[distill]\nepochs = 15\nhidden = 16\nbatch_size = 32\nlr = 0.01\ndevice = \"cpu\"\npseudolabels = \"accepted\"\nsoft = true\n")
    return cfg


def _json(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_student_folder_contents_and_up_to_date(runner, blobs, fast):
    r = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--json"])
    out = _json(r)
    assert out["skipped"] is False and out["outputs"] == ["student"]
    assert (out["n_trusted"], out["n_pseudo"], out["n_dropped_issues"], out["n_val"]) == (30, 45, 0, 30)
    assert (out["estimate"], out["folds"]) == ("crossfit", 5)  # 10% of 30 is too few to hold out
    assert [u["stage"] for u in out["upstream"]] == ["embed"]  # pseudolabels.parquet was there already
    student = blobs / ".labelkit" / "student"
    assert sorted(p.name for p in student.iterdir()) == ["config.json", "dynamics.parquet", "metrics.json", "model.safetensors"]
    config = json.loads((student / "config.json").read_text())
    assert config["labelkit_version"] == __version__ and config["format"] == "labelkit-student"
    assert config["classes"] == list(CLASSES) and config["architecture"] == "mlp"
    assert config["student_config"] == {"architecture": "mlp", "in_dim": DIM, "n_classes": 3, "hidden": 16, "dropout": 0.1}
    assert config["embedder"]["model"] == "precomputed" and config["embedder"]["dim"] == DIM
    assert config["input"] == {"kind": "embedding", "dim": DIM, "normalized": "l2"}
    metrics = json.loads((student / "metrics.json").read_text())
    assert (metrics["n_trusted"], metrics["n_pseudo"], metrics["n_dropped_issues"]) == (30, 45, 0)
    assert len(metrics["rounds"]) == 1 and len(metrics["rounds"][0]["curve"]["train_loss"]) == 15
    dyn = pq.read_table(student / "dynamics.parquet").to_pandas()
    assert list(dyn.columns) == ["id", "label", "confidence", "variability", "correctness", "is_pseudo", "set_aside", "view_confidence"]
    assert not dyn["set_aside"].any()  # no FixMatch, no label filter
    assert len(dyn) == 75 and int(dyn["is_pseudo"].sum()) == 45
    assert dyn["confidence"].between(0, 1).all() and dyn["variability"].between(0, 0.5).all()
    rec = json.loads((blobs / ".labelkit" / "manifest.json").read_text())["stages"]["distill"]
    assert set(rec["outputs"]) == {"student"} and artifacts.PSEUDOLABELS in rec["inputs"]
    r2 = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast)])
    assert r2.exit_code == 0, r2.output
    assert "distill: up to date, skipping" in r2.stderr
    # A changed input reruns it.
    write_pseudolabels(blobs / ".labelkit", ["s010"], ["a"], np.array([0.97]), np.array([True]))
    out3 = _json(runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--json"]))
    assert out3["skipped"] is False and out3["reason"] == "input pseudolabels.parquet changed" and out3["n_pseudo"] == 1


def test_student_learns_the_blobs_and_is_deterministic(runner, blobs, fast):
    from safetensors.torch import load_file

    from labelkit.distill import load_student, predict_proba

    args = ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--seed", "3"]
    assert runner.invoke(app, args).exit_code == 0
    model_file = blobs / ".labelkit" / "student" / "model.safetensors"
    first = model_file.read_bytes()
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert model_file.read_bytes() == first  # seeded and deterministic on CPU
    config = json.loads((blobs / ".labelkit" / "student" / "config.json").read_text())
    model = load_student(config["student_config"], load_file(model_file))
    x, y = _blob_vectors(seed=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.mean(predict_proba(model, x).argmax(1) == y) > 0.95
    assert runner.invoke(app, [*args, "--force", "--seed", "4"]).exit_code == 0
    assert model_file.read_bytes() != first


def test_flagged_issues_are_dropped_unless_kept(runner, blobs, fast):
    ids = [f"s{i:03d}" for i in range(90)]
    labeled = [i for i in ids if int(i[1:]) % 30 < 10]
    given = [CLASSES[int(i[1:]) // 30] for i in labeled]
    flagged = {labeled[0], labeled[11], labeled[25]}
    write_issues(blobs / ".labelkit", labeled, given, flagged)
    out = _json(runner.invoke(app, ["distill", str(blobs), "--config", str(fast), "--json"]))
    assert (out["n_trusted"], out["n_dropped_issues"]) == (27, 3)
    assert out["upstream"] == [{"stage": "embed", **{k: v for k, v in out["upstream"][0].items() if k != "stage"}}]  # detect-noise did not run
    dyn = pq.read_table(blobs / ".labelkit" / "student" / "dynamics.parquet").to_pandas()
    assert not set(dyn["id"]) & flagged
    out = _json(runner.invoke(app, ["distill", str(blobs), "--config", str(fast), "--keep-issues", "--json"]))
    assert (out["n_trusted"], out["n_dropped_issues"]) == (30, 0)


def test_every_label_flagged_is_a_clear_error(runner, blobs, fast):
    ids = [f"s{i:03d}" for i in range(90) if i % 30 < 10]
    write_issues(blobs / ".labelkit", ids, [CLASSES[int(i[1:]) // 30] for i in ids], set(ids))
    r = runner.invoke(app, ["distill", str(blobs), "--config", str(fast)])
    assert r.exit_code == 1
    assert "no trusted labels left: detect-noise flagged all 30 labeled samples; use --keep-issues" in r.stderr
    assert not (blobs / ".labelkit" / "student").exists()


def test_hard_targets_and_validation_split(runner, tmp_path, fast):
    # 3 x 40 labeled: 10% = 12 held-out labels is below the minimum (20), so nothing is held out
    # (--folds 0: no metrics either); --config val_fraction 0.25 holds out 30 and early stopping
    # has a validation curve.
    x, y = _blob_vectors(n_per=60)
    labels = [CLASSES[c] if i % 60 < 40 else None for i, c in enumerate(y)]
    data = write_vectors(tmp_path / "d", x, labels)
    ws = data / ".labelkit"
    ws.mkdir()
    unl = [i for i in range(len(y)) if labels[i] is None]
    write_pseudolabels(ws, [f"s{i:03d}" for i in unl], [CLASSES[y[i]] for i in unl], np.full(len(unl), 0.96), np.ones(len(unl), bool))
    out = _json(runner.invoke(app, ["distill", str(data), "--keep-issues", "--config", str(fast), "--hard", "--folds", "0", "--json"]))
    assert (out["n_val"], out["n_trusted"], out["n_pseudo"]) == (0, 120, 60) and out["val_accuracy"] is None
    assert out["estimate"] == "none"
    cfg = tmp_path / "val.toml"
    cfg.write_text(fast.read_text() + "val_fraction = 0.25\n")
    out = _json(runner.invoke(app, ["distill", str(data), "--keep-issues", "--config", str(cfg), "--json"]))
    assert (out["n_val"], out["n_trusted"]) == (30, 90)
    metrics = json.loads((ws / "student" / "metrics.json").read_text())
    assert (metrics["estimate"], metrics["folds"], metrics["crossfit"]) == ("holdout", None, [])
    assert metrics["n_val"] == 30 and metrics["accuracy"] > 0.9 and 0 <= metrics["ece"] <= 1 and metrics["macro_f1"] > 0.9
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    assert all(v is not None for v in metrics["rounds"][0]["curve"]["val_loss"])


def test_issue5_small_trusted_set_gets_crossfit_metrics(runner, blobs, fast):
    """Issue 5: with too few trusted labels to hold out, metrics.json still has held-out accuracy, macro-F1,
    ECE and per-class accuracy, estimated by K-fold cross-fitting, and says so."""
    out = _json(runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--folds", "3", "--json"]))
    metrics = json.loads((blobs / ".labelkit" / "student" / "metrics.json").read_text())
    assert (metrics["estimate"], metrics["folds"], metrics["n_val"]) == ("crossfit", 3, 30)
    assert metrics["accuracy"] > 0.9 and metrics["macro_f1"] > 0.9 and 0 <= metrics["ece"] <= 1
    assert set(metrics["per_class_accuracy"]) == set(CLASSES) and None not in metrics["per_class_accuracy"].values()
    # Every trusted label is predicted once, by the fold student that did not train on it.
    folds = metrics["crossfit"]
    assert [f["fold"] for f in folds] == [1, 2, 3] and sum(f["n_val"] for f in folds) == 30
    assert metrics["accuracy"] == pytest.approx(sum(f["accuracy"] * f["n_val"] for f in folds) / 30, abs=1e-5)
    # The saved student trained on all 30 trusted labels and the 45 pseudo-labels, for the full budget.
    assert (metrics["n_trusted"], metrics["n_pseudo"]) == (30, 45) and out["epochs_run"] == 15
    assert out["val_accuracy"] == metrics["accuracy"] and out["estimate"] == "crossfit"


def test_crossfit_folds_never_see_their_trusted_labels(monkeypatch, blobs, fast, runner):
    """Each fold's training rows exclude exactly that fold's trusted rows; the pseudo-labeled rows stay in."""
    from labelkit.distill import procedure, training

    seen = []
    real = procedure.fit_rounds

    def spy(progress, cfg, ts, x, device):
        seen.append((set(ts.train_rows[~ts.is_pseudo].tolist()), set(ts.train_rows[ts.is_pseudo].tolist())))
        return real(progress, cfg, ts, x, device)

    monkeypatch.setattr(procedure, "fit_rounds", spy)
    assert training  # the compute is untouched; only the stage's fold loop is observed
    _json(runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--folds", "3", "--json"]))
    *folds, final = seen
    assert len(folds) == 3 and len(final[0]) == 30 and len(final[1]) == 45
    for trusted, pseudo in folds:
        assert pseudo == final[1] and trusted < final[0]
    held = [final[0] - trusted for trusted, _ in folds]
    assert sorted(len(h) for h in held) == [10, 10, 10] and set().union(*held) == final[0]


def test_self_training_rounds_use_the_recorded_threshold(runner, blobs, fast):
    args = ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--rounds", "2", "--epochs", "40", "--json"]
    out = _json(runner.invoke(app, args))
    assert out["rounds"] == 2 and out["accept_threshold"] == 0.9 and out["n_pseudo_teacher"] == 45
    metrics = json.loads((blobs / ".labelkit" / "student" / "metrics.json").read_text())
    r1, r2 = metrics["rounds"]
    assert (r1["round"], r1["n_pseudo"], r2["round"]) == (1, 45, 2)
    # The round-1 student is confident (>= 0.9, the recorded threshold) on most of the 60 unlabeled
    # blob points, also on many of the 15 the teacher left out: more are accepted in round 2.
    assert 50 <= r2["n_pseudo"] <= 60 and out["n_pseudo"] == r2["n_pseudo"]


def test_defaults_train_on_every_pseudo_label_weighted_by_confidence(runner, blobs, tmp_path):
    """Default: all 60 pseudo-labels (the 15 unaccepted at p=0.6 too), hard, weighted by their confidence."""
    cfg = tmp_path / "defaults.toml"
    cfg.write_text("[distill]\nepochs = 15\nhidden = 16\nbatch_size = 32\nlr = 0.01\ndevice = \"cpu\"\nfolds = 0\n")
    out = _json(runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(cfg), "--json"]))
    assert (out["n_trusted"], out["n_pseudo"]) == (30, 60)
    from labelkit.config import DistillConfig
    from labelkit.distill.training_set import Frame, PseudoLabels, assemble

    defaults = DistillConfig()
    frame = Frame(np.array([0, -1, -1]), np.zeros(0, np.int64), np.array([1, 2]), 0, 0.95)
    pseudo = PseudoLabels(np.array([1, 2]), np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.6]]), np.array([0.9, 0.6]))
    ts = assemble(frame, np.array([0]), pseudo, soft=defaults.soft, confidence_weighting=defaults.confidence_weighting)
    assert ts.hard.tolist() == [0, 0, 2] and ts.weight.tolist() == [1.0, 0.9, 0.6] and not ts.soft.any()
    out = _json(runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(cfg), "--pseudolabels", "accepted", "--json"]))
    assert out["n_pseudo"] == 45


def test_acceptance_threshold_from_metadata():
    assert acceptance_threshold({"params": {"threshold_rule": "fixed", "threshold": 0.8}}) == 0.8
    assert acceptance_threshold({"params": {"threshold_rule": "flexmatch", "threshold": 0.7}}) == 0.7
    assert acceptance_threshold({"params": {"threshold_rule": "margin", "threshold": 0.3}}) == 0.95
    assert acceptance_threshold({"params": {"threshold_rule": "top_per_class", "threshold": 50}}) == 0.95
    assert acceptance_threshold({}) == 0.95


def test_onnx_export_gives_the_torch_outputs(runner, blobs, fast):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from safetensors.torch import load_file

    from labelkit.distill import load_student, predict_proba

    r = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--onnx"])
    assert r.exit_code == 0, r.output
    student = blobs / ".labelkit" / "student"
    config = json.loads((student / "config.json").read_text())
    model = load_student(config["student_config"], load_file(student / "model.safetensors"))
    x, _ = _blob_vectors(seed=2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    session = ort.InferenceSession(str(student / "model.onnx"))
    logits, probs = session.run(["logits", "probs"], {"input": x})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, predict_proba(model, x), atol=1e-5)


def test_bad_pseudolabels_leave_the_previous_student_whole(runner, blobs, fast):
    assert runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast)]).exit_code == 0
    student = blobs / ".labelkit" / "student"
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    write_pseudolabels(blobs / ".labelkit", ["s010", "s011"], ["a", "zebra"], np.array([0.97, 0.97]), np.array([True, True]),
                       classes=("a", "zebra"))
    r = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast)])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "pseudolabels.parquet names class 'zebra', which is not among the dataset's classes" in r.stderr
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before
    assert sorted(p.name for p in (blobs / ".labelkit").iterdir() if p.name.startswith(".student")) == []


def test_a_crash_while_writing_keeps_the_old_student(runner, blobs, fast, monkeypatch):
    assert runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast)]).exit_code == 0
    student = blobs / ".labelkit" / "student"
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    from labelkit import artifacts as art

    def dying(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(art, "write_table", dying)  # dynamics.parquet is written after the model
    r = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--force"])
    # An unexpected error is one line from the last-resort handler (issue 13), never a traceback.
    assert r.exit_code == 1 and "internal error: RuntimeError: disk full" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before
    assert [p.name for p in (blobs / ".labelkit").iterdir() if p.name.startswith(".student")] == []


def test_cnn_needs_images(runner, blobs, fast):
    r = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--student", "cnn"])
    assert r.exit_code == 1
    assert "--student cnn trains on image pixels, but DATA holds vectors; use --student mlp or linear" in r.stderr


def test_no_labels_is_a_clear_error(runner, tmp_path, fast):
    x, _ = _blob_vectors()
    data = write_vectors(tmp_path / "d", x, [None] * len(x))
    r = runner.invoke(app, ["distill", str(data), "--config", str(fast), "--classes", "a,b,c"])
    assert r.exit_code == 1
    assert "distill needs labeled samples: none of the 90 samples has a label" in r.stderr


def _digits_pseudolabels(digits: Path, n: int = 300, threshold: float = 0.9) -> None:
    """Accepted pseudo-labels (the true digit, p=0.95) for the first ``n`` unlabeled images."""
    import csv

    truth = {row["path"]: row["true_label"] for row in csv.DictReader(open(Path(__file__).resolve().parents[2] / "examples" / "digits-truth.csv"))}
    unl = sorted(p.relative_to(digits).as_posix() for p in (digits / "unlabeled").iterdir())[:n]
    classes = tuple(str(d) for d in range(10))
    (digits / ".labelkit").mkdir(exist_ok=True)
    write_pseudolabels(digits / ".labelkit", unl, [truth[u] for u in unl], np.full(len(unl), 0.95), np.ones(len(unl), bool), classes, threshold)


def test_cnn_student_on_digit_images(runner, digits, tmp_path):
    """A tiny end-to-end cnn run on CPU: 2 epochs over ~480 8x8 images; predict reads pixels the same way."""
    _digits_pseudolabels(digits)
    cfg = tmp_path / "cnn.toml"
    cfg.write_text('[embed]\nmodel = "pixels:8"\n[distill]\nepochs = 2\nbatch_size = 64\ndevice = "cpu"\n')
    out = _json(runner.invoke(app, ["distill", str(digits), "--student", "cnn", "--keep-issues", "--config", str(cfg), "--json"]))
    assert (out["student"], out["n_trusted"], out["n_pseudo"], out["epochs_run"]) == ("cnn", 179, 300, 2)
    config = json.loads((digits / ".labelkit" / "student" / "config.json").read_text())
    assert config["input"] == {"kind": "pixels", "mode": "L", "channels": 1, "size": [8, 8], "resample": "bilinear", "scale": "x / 255"}
    assert config["student_config"]["architecture"] == "cnn" and config["student_config"]["in_channels"] == 1
    r = runner.invoke(app, ["predict", str(digits / ".labelkit" / "student"), str(digits), "--out", str(tmp_path / "pred"), "--json"])
    pred = _json(r)
    assert pred["n_predicted"] == 1797 and pred["student"] == "cnn"
    t = pq.read_table(tmp_path / "pred" / "predictions.parquet")
    assert t.num_rows == 1797


def test_cnn_student_with_fixmatch_trains_on_trusted_labels_and_unlabeled_images(runner, digits, tmp_path):
    """--fixmatch without the pseudo-labels: the pseudolabel stage does not run; every unlabeled
    image feeds the consistency term."""
    cfg = tmp_path / "fm.toml"
    cfg.write_text('[embed]\nmodel = "pixels:8"\n[distill]\nepochs = 1\nbatch_size = 32\ndevice = "cpu"\n')
    r = runner.invoke(app, ["distill", str(digits), "--student", "cnn", "--fixmatch", "1", "--without-pseudolabels", "--keep-issues", "--config", str(cfg), "--json"])
    out = _json(r)
    assert (out["student"], out["n_trusted"], out["n_pseudo"], out["epochs_run"]) == ("cnn", 179, 0, 1)
    assert not (digits / ".labelkit" / "pseudolabels.parquet").exists()
    params = json.loads((digits / ".labelkit" / "student" / "config.json").read_text())["train_params"]
    assert (params["fixmatch"], params["fixmatch_threshold"], params["use_pseudolabels"], params["label_filter"]) == (1.0, 0.95, False, True)
    # one epoch ends inside the label filter's warm-up (a fifth of the epochs): nothing set aside yet
    metrics = json.loads((digits / ".labelkit" / "student" / "metrics.json").read_text())
    assert (out["n_set_aside"], metrics["n_set_aside"], metrics["set_aside"]) == (0, 0, [])


def test_fixmatch_needs_an_image_student(runner, blobs, fast):
    r = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--fixmatch", "1"])
    assert r.exit_code == 1
    assert r.stderr.strip().endswith("--fixmatch augments images: use --student cnn or finetune (got --student mlp)")


def test_finetune_student_starts_from_imagenet_weights_and_runs_end_to_end(runner, digits, tmp_path):
    """issue 5's finetune student on CPU: EfficientNet-Lite0 from its packaged weights, one epoch
    at 32 x 32 over 219 digit images; predict reads the pixels the same way, ONNX gives torch's outputs."""
    from safetensors.torch import load_file

    from labelkit.distill import load_student
    from labelkit.embedders.efficientnet import _read_state_dict, packaged_weights

    _digits_pseudolabels(digits, n=40)
    cfg = tmp_path / "ft.toml"
    cfg.write_text('[embed]\nmodel = "pixels:8"\n[distill]\nepochs = 1\nbatch_size = 64\ndevice = "cpu"\nfolds = 0\nlr = 1e-4\n')
    onnx = ["--onnx"] if _has("onnx") and _has("onnxruntime") else []
    out = _json(runner.invoke(app, ["distill", str(digits), "--student", "finetune", "--image-size", "32", "--keep-issues",
                                    "--config", str(cfg), "--json", *onnx]))
    assert (out["student"], out["n_trusted"], out["n_pseudo"], out["epochs_run"]) == ("finetune", 179, 40, 1)
    student = digits / ".labelkit" / "student"
    config = json.loads((student / "config.json").read_text())
    assert config["input"] == {"kind": "pixels", "mode": "RGB", "channels": 3, "size": [32, 32], "resample": "bilinear", "scale": "x / 255"}
    assert config["student_config"] == {"architecture": "finetune", "n_classes": 10, "dropout": 0.1}
    model = load_student(config["student_config"], load_file(student / "model.safetensors"))
    # Fine-tuned from the ImageNet weights (one epoch at lr 1e-4 moves them a little), not from scratch.
    ref = _read_state_dict(packaged_weights())["_conv_stem.weight"]
    moved = (model.backbone._conv_stem.weight - ref).abs().max().item()
    assert 0 < moved < 0.05 * ref.abs().max().item()
    pred = _json(runner.invoke(app, ["predict", str(student), str(digits), "--out", str(tmp_path / "pred"), "--json"]))
    assert pred["n_predicted"] == 1797 and pred["student"] == "finetune"
    if onnx:
        import onnxruntime as ort

        x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
        logits, _ = ort.InferenceSession(str(student / "model.onnx")).run(["logits", "probs"], {"input": x})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_refit_teacher_hides_each_folds_labels_from_the_pseudo_labels(monkeypatch, runner, tmp_path, fast):
    """With the real upstream stages, each cross-fitting fold gets pseudo-labels propagated without
    its own trusted labels (the labels it is scored on never reach the student through its teacher)."""
    from labelkit import teacher as pl_stage  # the recipe both the stage and the refit teacher run

    x, y = _blob_vectors()
    labels = [CLASSES[c] if i % 3 == 0 else None for i, c in enumerate(y)]  # 10 labeled per class
    data = write_vectors(tmp_path / "real", x, labels)
    seeds_seen = []
    real_teach = pl_stage.teach

    def spy(vectors, labels, *args, **kwargs):
        seeds_seen.append(set(np.flatnonzero(labels >= 0).tolist()))
        return real_teach(vectors, labels, *args, **kwargs)

    monkeypatch.setattr(pl_stage, "teach", spy)
    out = _json(runner.invoke(app, ["distill", str(data), "--keep-issues", "--config", str(fast), "--folds", "3", "--json"]))
    assert (out["estimate"], out["folds"], out["teacher"]) == ("crossfit", 3, "refit")
    stage_seeds, *fold_seeds = seeds_seen  # the pseudolabel stage's own pass, then one per fold
    assert stage_seeds == set(range(0, 90, 3)) and len(fold_seeds) == 3
    hidden = [stage_seeds - s for s in fold_seeds]
    assert sorted(len(h) for h in hidden) == [10, 10, 10] and set().union(*hidden) == stage_seeds
    assert out["val_accuracy"] > 0.9  # separated blobs

    seeds_seen.clear()
    out = _json(runner.invoke(app, ["distill", str(data), "--keep-issues", "--config", str(fast), "--folds", "3", "--shared-teacher", "--json"]))
    assert out["teacher"] == "shared (--shared-teacher)" and seeds_seen == []


def test_vat_option_trains_and_is_recorded(runner, blobs, fast):
    out = _json(runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--config", str(fast), "--vat", "0.5", "--folds", "0", "--json"]))
    config = json.loads((blobs / ".labelkit" / "student" / "config.json").read_text())
    assert config["train_params"]["vat"] == 0.5 and out["n_pseudo"] == 45
    bad = runner.invoke(app, ["distill", str(blobs), "--keep-issues", "--vat", "-1"])
    assert bad.exit_code == 2 and "--vat: must be >= 0. Got -1.0 instead." in bad.stderr
