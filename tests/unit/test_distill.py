"""Tests for labelkit.distill (students, distillation loop, dynamics) and labelkit.onnx_export."""

from __future__ import annotations

import io
import json
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from labelkit.distill import (
    FitResult,
    TrainConfig,
    build_student,
    distillation_loss,
    fit_student,
    load_student,
    predict_proba,
    student_state,
)
from labelkit.distill.targets import _prepare_targets
from labelkit.errors import BadInputError
from labelkit.metrics import accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = TrainConfig(architecture="mlp", hidden=32, epochs=30, batch_size=32, lr=1e-2)


def _blobs(n_per: int = 40, dim: int = 8, sep: float = 6.0, seed: int = 0):
    """Two well-separated Gaussian blobs: class 0 around -sep/2 e_0, class 1 around +sep/2 e_0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n_per, dim)).astype(np.float32)
    y = np.repeat([0, 1], n_per)
    x[:, 0] += np.where(y == 1, sep / 2, -sep / 2)
    return x, y


# --- students ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["linear", "mlp"])
def test_separable_blobs_reach_full_accuracy(arch):
    x, y = _blobs()
    r = fit_student(x, y, config=TrainConfig(architecture=arch, hidden=32, epochs=40, batch_size=16, lr=1e-2), seed=0)
    assert isinstance(r, FitResult)
    x_test, y_test = _blobs(seed=1)
    assert accuracy(y_test, predict_proba(r.model, x_test).argmax(1)) == 1.0
    assert r.val_indices.size == 8  # 10% of the 80 trusted labels held out
    assert np.all(r.val_acc[r.best_epoch] == 1.0)


def test_same_seed_gives_identical_weights_and_global_rng_untouched():
    x, y = _blobs()
    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    cfg = TrainConfig(architecture="mlp", hidden=16, dropout=0.3, epochs=5, batch_size=16)
    a = student_state(fit_student(x, y, config=cfg, seed=7).model)
    b = student_state(fit_student(x, y, config=cfg, seed=7).model)
    c = student_state(fit_student(x, y, config=cfg, seed=8).model)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_state_roundtrip_through_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    x, y = _blobs()
    r = fit_student(x, y, config=FAST, seed=0)
    cfg = json.loads(json.dumps(r.student_config))  # the config must be plain JSON
    assert cfg == {"architecture": "mlp", "in_dim": 8, "n_classes": 2, "hidden": 32, "dropout": 0.1}
    safetensors_torch.save_file(student_state(r.model), tmp_path / "model.safetensors")
    model = load_student(cfg, safetensors_torch.load_file(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(predict_proba(model, x), predict_proba(r.model, x))


def test_build_student_rejects_bad_configs():
    with pytest.raises(BadInputError, match="'architecture' must be one of"):
        build_student({"architecture": "resnet", "in_dim": 3, "n_classes": 2})
    with pytest.raises(BadInputError, match="missing \\['hidden', 'dropout'\\]"):
        build_student({"architecture": "mlp", "in_dim": 3, "n_classes": 2})
    with pytest.raises(BadInputError, match="'in_dim' must be a positive int"):
        build_student({"architecture": "linear", "in_dim": 0, "n_classes": 2})


def test_train_config_validates():
    with pytest.raises(BadInputError, match="'temperature' must be > 0. Got 0 instead."):
        TrainConfig(temperature=0)
    with pytest.raises(BadInputError, match="'alpha' must be in"):
        TrainConfig(alpha=1.5)
    with pytest.raises(BadInputError, match="'epochs' must be an int >= 1"):
        TrainConfig(epochs=0)


def test_cnn_two_steps_on_cpu():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    cfg = TrainConfig(architecture="cnn", width=4, epochs=1, batch_size=4, val_fraction=0.0)
    r = fit_student(x, y, config=cfg, seed=0)  # 8 samples / batch 4 = 2 optimiser steps
    assert r.train_loss.shape == (1,) and np.isfinite(r.train_loss).all()
    assert r.student_config == {"architecture": "cnn", "in_channels": 3, "n_classes": 3, "width": 4, "dropout": 0.1}
    p = predict_proba(r.model, x)
    assert p.shape == (8, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    with pytest.raises(BadInputError, match="must be 4-D"):
        fit_student(x.reshape(8, -1), y, config=cfg)


def test_finetune_two_steps_on_cpu_from_the_packaged_weights_and_rgb_only():
    from labelkit.embedders.efficientnet import _read_state_dict, packaged_weights

    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    y = np.array([0, 1] * 4)
    cfg = TrainConfig(architecture="finetune", epochs=1, batch_size=4, val_fraction=0.0, lr=1e-4)
    r = fit_student(x, y, config=cfg, seed=0)
    assert r.student_config == {"architecture": "finetune", "n_classes": 2, "dropout": 0.1}
    ref = _read_state_dict(packaged_weights())["_blocks.0._depthwise_conv.weight"]
    assert torch.allclose(r.model.backbone._blocks[0]._depthwise_conv.weight, ref, atol=0.01)  # fine-tuned, not re-drawn
    np.testing.assert_allclose(r.model.norm.mean.flatten().numpy(), 127 / 255, rtol=1e-6)  # fixed input scaling
    with pytest.raises(BadInputError, match="reads RGB images"):
        fit_student(x[:, :1], y, config=cfg)


# --- loss ----------------------------------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_soft_kl_term_matches_hand_computation():
    z = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    t = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    T = 2.0
    # Hinton et al.: teacher and student both at temperature T; teacher logits = log t.
    tT = t ** (1 / T) / (t ** (1 / T)).sum(axis=1, keepdims=True)
    qT = _softmax(z / T)
    expected = T**2 * np.mean(np.sum(tT * np.log(tT / qT), axis=1))
    got = distillation_loss(torch.tensor(z, dtype=torch.float32), t, [-1, -1], temperature=T)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # With a trusted label on row 0: alpha * KL + (1 - alpha) * CE there; row 1 KL only.
    alpha = 0.3
    ce0 = -np.log(_softmax(z)[0, 0])
    kl = T**2 * np.sum(tT * np.log(tT / qT), axis=1)
    expected_mixed = (alpha * kl[0] + (1 - alpha) * ce0 + kl[1]) / 2
    got_mixed = distillation_loss(torch.tensor(z, dtype=torch.float32), t, [0, -1], temperature=T, alpha=alpha)
    assert float(got_mixed) == pytest.approx(expected_mixed, rel=1e-5)


def test_prepare_targets_softens_and_weights_low_confidence():
    soft = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [0.2, 0.8, 0.0], [0.0, 0.0, 0.0]])
    hard = np.array([-1, -1, 0, 2])
    cfg = TrainConfig(temperature=1.0, soften_below=0.5, label_smoothing=0.3, alpha=0.25)
    tg = _prepare_targets(soft, hard, None, 3, cfg)
    np.testing.assert_allclose(tg.tempered[0], [0.9, 0.1, 0.0], atol=1e-6)  # confident: kept
    np.testing.assert_allclose(tg.tempered[1], [0.8, 0.1, 0.1], atol=1e-6)  # 0.4 < 0.5: smoothed one-hot of argmax
    np.testing.assert_allclose(tg.tempered[2], [0.8, 0.1, 0.1], atol=1e-6)  # teacher gives trusted label 0.2: replaced
    np.testing.assert_allclose(tg.tempered[3], [0.0, 0.0, 0.0])  # hard label only
    np.testing.assert_allclose(tg.w, [0.9, 0.4, 1.0, 1.0], atol=1e-6)  # pseudo-labels weighted by confidence
    np.testing.assert_allclose(tg.a, [1.0, 1.0, 0.25, 0.0])
    np.testing.assert_allclose(tg.b, [0.0, 0.0, 0.75, 1.0])
    np.testing.assert_array_equal(tg.label, [0, 0, 0, 2])
    off = _prepare_targets(soft, hard, None, 3, TrainConfig(confidence_weighting=False, soften_below=0.0))
    np.testing.assert_allclose(off.w, 1.0)


def test_sample_weights_set_the_optimum_on_conflicting_duplicates():
    # One input with label 0 (weight 1) and label 1 (weight 3): weighted CE is minimal at p(1) = 3/4.
    x = np.zeros((2, 1), dtype=np.float32)
    cfg = TrainConfig(architecture="linear", epochs=300, batch_size=2, lr=0.05, weight_decay=0.0, val_fraction=0.0)
    r = fit_student(x, np.array([0, 1]), config=cfg, sample_weight=np.array([1.0, 3.0]), seed=0)
    assert predict_proba(r.model, x[:1])[0, 1] == pytest.approx(0.75, abs=0.01)


def test_pseudo_labels_only_train_from_soft_targets():
    x, y = _blobs()
    soft = np.where(y[:, None] == np.arange(2), 0.9, 0.1)
    r = fit_student(x, np.full(y.size, -1), soft, config=FAST, seed=0)
    assert r.val_indices.size == 0 and np.isnan(r.val_loss).all()
    assert r.best_epoch == FAST.epochs - 1
    assert accuracy(y, predict_proba(r.model, x).argmax(1)) == 1.0


def test_fit_rejects_bad_targets():
    x, y = _blobs(n_per=3)
    with pytest.raises(BadInputError, match="rows must sum to 1"):
        fit_student(x, y, np.full((6, 2), 0.7), config=FAST)
    with pytest.raises(BadInputError, match="neither a hard label nor a soft target"):
        fit_student(x, np.array([0, 1, -1, 0, 1, 0]), np.zeros((6, 2)), config=FAST)
    with pytest.raises(BadInputError, match="'labels' must have length 6"):
        fit_student(x, y[:5], config=FAST)


# --- early stopping and progress ------------------------------------------------------------------


class _RecordingProgress:
    def __init__(self):
        self.tasks, self.advances, self.updates = [], 0, []

    @contextmanager
    def task(self, description, total=None):
        self.tasks.append((description, total))
        outer = self

        class _T:
            def advance(self, n=1):
                outer.advances += n

            def update(self, **fields):
                outer.updates.append(fields)

        yield _T()

    def log(self, message):
        pass


def test_early_stopping_when_val_loss_rises():
    # Validation labels are the reverse of the training labels: every epoch of learning makes
    # validation worse, so the first epoch is best and training stops after `patience` more.
    x, y = _blobs()
    cfg = TrainConfig(architecture="linear", epochs=100, batch_size=16, lr=1e-2, patience=3)
    progress = _RecordingProgress()
    r = fit_student(x, y, config=cfg, val=(x, 1 - y), progress=progress, seed=0)
    assert r.stopped_early
    assert len(r.train_loss) == 4 < cfg.epochs
    assert r.best_epoch == 0
    assert np.all(np.diff(r.val_loss) > 0)
    # The best epoch's weights were restored.
    p = predict_proba(r.model, x)
    assert -np.mean(np.log(p[np.arange(y.size), 1 - y])) == pytest.approx(r.val_loss[0], rel=1e-4)
    assert progress.tasks == [("distill", 100)]
    assert progress.advances == 4
    assert set(progress.updates[-1]) == {"loss", "val_loss", "val_acc"}


# --- training dynamics ---------------------------------------------------------------------------


def test_dynamics_shapes_and_a_mislabeled_sample():
    x, y = _blobs(n_per=30)
    given = y.copy()
    given[0] = 1  # a class-0 point labeled 1: the model keeps predicting 0 for it
    cfg = TrainConfig(architecture="linear", epochs=20, batch_size=16, lr=0.05)
    r = fit_student(x, given, config=cfg, val=(x, y), seed=0)  # explicit val: every row is trained on
    n = y.size
    assert r.confidence.shape == r.variability.shape == r.correctness.shape == r.target_labels.shape == (n,)
    assert r.val_indices.size == 0 and not np.isnan(r.confidence).any()
    np.testing.assert_array_equal(r.target_labels, given)
    assert np.argmin(r.confidence) == 0 and r.confidence[0] < 0.3 and r.correctness[0] == 0.0
    clean = np.arange(1, n)
    assert np.median(r.confidence[clean]) > 0.8 and np.median(r.correctness[clean]) == 1.0
    always_right = clean[r.correctness[clean] == 1.0]
    assert always_right.size > 40 and r.confidence[always_right].min() > 0.5
    assert np.all((r.variability >= 0) & (r.variability <= 0.5))


def test_dynamics_are_nan_for_held_out_rows():
    x, y = _blobs(n_per=20)
    r = fit_student(x, y, config=TrainConfig(architecture="linear", epochs=3, val_fraction=0.25), seed=0)
    held = np.zeros(y.size, bool)
    held[r.val_indices] = True
    assert held.sum() == 10
    assert np.isnan(r.confidence[held]).all() and np.isnan(r.variability[held]).all()
    assert not np.isnan(r.confidence[~held]).any()


# --- ONNX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, shape",
    [
        ({"architecture": "mlp", "in_dim": 6, "n_classes": 3, "hidden": 16, "dropout": 0.1}, (6,)),
        ({"architecture": "cnn", "in_channels": 3, "n_classes": 4, "width": 4, "dropout": 0.0}, (3, 8, 8)),
    ],
)
def test_onnx_export_matches_torch(config, shape):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from labelkit.onnx_export import export_onnx

    rng = np.random.default_rng(0)
    model = build_student(config)
    with torch.no_grad():  # non-trivial standardisation buffers, so they are checked too
        model.norm.mean.normal_(generator=torch.Generator().manual_seed(0))
        model.norm.std.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    buf = io.BytesIO()
    export_onnx(model, buf, shape if len(shape) > 1 else shape[0])
    session = ort.InferenceSession(buf.getvalue())
    x = rng.normal(size=(5, *shape)).astype(np.float32)  # a batch size other than the export's
    logits, probs = session.run(["logits", "probs"], {"input": x})
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(probs, predict_proba(model, x), atol=1e-5)
    assert not math.isnan(float(probs.sum()))


# --- cartography ---------------------------------------------------------------------------------


def test_dynamics_evidence_scores_the_hard_to_learn_corner():
    from labelkit.cartography import dynamics_evidence

    conf = np.array([0.0, 0.05, 0.95, 0.5, 0.15, 0.15, np.nan])
    var = np.array([0.0, 0.02, 0.03, 0.5, 0.05, 0.3, 0.1])
    ev = dynamics_evidence(conf, var)
    expected = (1 - conf[:6]) * (1 - var[:6] / 0.5)  # closed form, Swayamdipta et al.'s map corners
    np.testing.assert_allclose(ev.score[:6], expected)
    assert ev.score[0] == 1.0 and ev.score[3] == 0.0  # never learned and never wavered / most ambiguous
    assert np.isnan(ev.score[6]) and ev.label_quality[6] == 1.0 and not ev.is_issue[6]  # no dynamics: no evidence
    np.testing.assert_allclose(ev.label_quality[:6], 1 - expected)
    assert ev.is_issue.tolist() == [True, True, False, False, True, False, False]  # row 5: ambiguous, not mislabeled
    assert dynamics_evidence(conf, var, max_confidence=0.1).is_issue.tolist() == [True, True, False, False, False, False, False]


def test_dynamics_evidence_validates():
    from labelkit.cartography import dynamics_evidence

    with pytest.raises(BadInputError, match="'variability' must have shape \\(2,\\)"):
        dynamics_evidence([0.1, 0.2], [0.1])
    with pytest.raises(BadInputError, match="'confidence' must lie in \\[0, 1\\]"):
        dynamics_evidence([1.5], [0.1])
    with pytest.raises(BadInputError, match="'variability' must lie in \\[0, 0.5\\]"):
        dynamics_evidence([0.5], [0.7])
    with pytest.raises(BadInputError, match="'max_confidence' must be in \\(0, 1.0\\]. Got 0 instead."):
        dynamics_evidence([0.5], [0.1], max_confidence=0)


def test_dynamics_evidence_finds_flipped_labels_from_fit_student():
    from labelkit.cartography import dynamics_evidence

    rng = np.random.default_rng(0)
    x, y = _blobs(n_per=40, sep=8.0)
    given = y.copy()
    flipped = rng.choice(y.size, 6, replace=False)
    given[flipped] = 1 - given[flipped]
    r = fit_student(x, given, config=TrainConfig(architecture="linear", epochs=20, batch_size=16, lr=0.05), val=(x, y), seed=0)
    ev = dynamics_evidence(r.confidence, r.variability)
    # The flags are all flipped labels (the two deepest in the other blob), and the score ranks
    # exactly the six flipped labels first.
    assert 2 <= ev.is_issue.sum() and set(np.flatnonzero(ev.is_issue)) <= set(flipped)
    assert set(np.argsort(-ev.score)[:6]) == set(flipped)


# --- the training set (labelkit/distill/training_set.py) ----------------------------------------


def test_split_trusted_drops_issues_and_holds_out_only_enough_labels():
    from labelkit.distill.training_set import split_trusted

    codes = np.array([0, 1, -1, 1, 0, 0])
    has_input = np.array([True, True, True, True, True, False])  # row 5 has no input: never trusted
    issue = np.array([False, True, False, False, False, False])
    trusted, val, dropped = split_trusted(codes, has_input, issue, 2, val_fraction=0.5, seed=0)
    assert trusted.tolist() == [0, 3, 4] and val.size == 0 and dropped == 1  # 2 held out < 20: none
    codes = np.repeat([0, 1], 30)
    trusted, val, dropped = split_trusted(codes, np.ones(60, bool), np.zeros(60, bool), 2, val_fraction=0.5, seed=0)
    assert (trusted.size, val.size, dropped) == (30, 30, 0) and not set(trusted) & set(val)
    assert np.all(np.diff(trusted) > 0) and np.all(np.diff(val) > 0)
    with pytest.raises(BadInputError, match="no trusted labels left: detect-noise flagged all 2 labeled samples"):
        split_trusted(np.array([0, 1, -1]), np.ones(3, bool), np.array([True, True, False]), 2, val_fraction=0.1, seed=0)


def test_take_pseudolabels_keeps_accepted_eligible_rows_in_samples_order():
    from labelkit.distill.training_set import Frame, PseudoLabels, take_pseudolabels

    frame = Frame(np.array([0, -1, -1, -1, -1]), np.zeros(0, np.int64), np.array([1, 2, 4]), 0, 0.9)
    soft = np.eye(2)[[0, 1, 1, 0, 0]].astype(float)
    pl = PseudoLabels(np.array([4, 2, 0, -1, 3]), soft, np.array([0.6, 0.7, 0.8, 0.9, 0.95]), np.array([True, False, True, True, True]))
    got = take_pseudolabels(frame, pl, take_all=False)  # row 0 is labeled, row 3 has no input, row 2 not accepted
    assert got.rows.tolist() == [4] and got.confidence.tolist() == [0.6]
    got = take_pseudolabels(frame, pl, take_all=True)
    assert got.rows.tolist() == [2, 4] and got.confidence.tolist() == [0.7, 0.6]
    np.testing.assert_array_equal(got.soft, soft[[1, 0]])


def test_assemble_soft_targets_and_without():
    from labelkit.distill.training_set import Frame, PseudoLabels, assemble

    frame = Frame(np.array([1, 0, -1, -1]), np.zeros(0, np.int64), np.array([2, 3]), 0, 0.95)
    pseudo = PseudoLabels(np.array([2, 3]), np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0.8, 0.7]))
    ts = assemble(frame, np.array([0, 1]), pseudo, soft=True, confidence_weighting=True)
    assert ts.hard.tolist() == [1, 0, -1, -1] and ts.weight is None and ts.n_trusted == 2 and ts.n_classes == 2
    np.testing.assert_array_equal(ts.soft, [[0, 0], [0, 0], [0.8, 0.2], [0.3, 0.7]])
    smaller = ts.without(np.array([True, False, False, True]))
    assert smaller.train_rows.tolist() == [1, 2] and smaller.is_pseudo.tolist() == [False, True] and smaller.trusted_rows.tolist() == [1]


def test_self_training_set_takes_the_students_confident_rows():
    from labelkit.distill.training_set import (
        Frame,
        PseudoLabels,
        assemble,
        self_training_set,
    )

    frame = Frame(np.array([0, 1, -1, -1, -1]), np.zeros(0, np.int64), np.array([2, 3, 4]), 0, 0.9)
    ts = assemble(frame, np.array([0, 1]), PseudoLabels.none(2), soft=False, confidence_weighting=True)
    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.02, 0.98]])
    nxt = self_training_set(ts, probs, take_all=False, soft=False, confidence_weighting=True)
    assert nxt.train_rows.tolist() == [0, 1, 2, 4] and nxt.hard.tolist() == [0, 1, 0, 1]
    assert nxt.weight.tolist() == [1.0, 1.0, 0.95, 0.98]
    everything = self_training_set(ts, probs, take_all=True, soft=False, confidence_weighting=False)
    assert everything.train_rows.tolist() == [0, 1, 2, 3, 4] and everything.weight is None


# --- the procedure (labelkit/distill/procedure.py) -----------------------------------------------


def test_held_out_metrics_known_answer_and_empty():
    from labelkit.distill.procedure import held_out_metrics

    m = held_out_metrics(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), np.array([0, 1, 1, 1]), ["a", "b"])
    assert (m["n_val"], m["accuracy"]) == (4, 0.75) and m["per_class_accuracy"] == {"a": 1.0, "b": pytest.approx(2 / 3, abs=1e-6)}
    assert m["macro_f1"] == pytest.approx(round((2 / 3 + 0.8) / 2, 6))
    assert held_out_metrics(np.zeros((0, 2)), np.zeros(0, np.int64), ["a", "b"])["accuracy"] is None


def _toy_set(n_per: int = 6, n_unl: int = 6):
    """Two blobs: n_per trusted labels per class, n_unl unlabeled rows with (correct) pseudo-labels."""
    from labelkit.distill.training_set import Frame, PseudoLabels, assemble

    x, y = _blobs(n_per=n_per + n_unl // 2)
    codes = y.copy()
    unl = np.r_[np.arange(n_unl // 2), n_per + n_unl // 2 + np.arange(n_unl // 2)]
    codes[unl] = -1
    frame = Frame(codes, np.zeros(0, np.int64), unl, 0, 0.9)
    pseudo = PseudoLabels(unl, np.eye(2)[y[unl]] * 0.9 + 0.05, np.full(unl.size, 0.95))
    return x, y, assemble(frame, np.flatnonzero(codes >= 0), pseudo, soft=False, confidence_weighting=True)


def test_cross_fit_predicts_each_trusted_label_from_a_fold_that_never_saw_it(monkeypatch):
    from labelkit.config import DistillConfig
    from labelkit.distill import procedure

    x, y, ts = _toy_set()
    cfg = DistillConfig(epochs=5, hidden=8, lr=0.05, folds=3, device="cpu")
    assert procedure.n_folds(cfg.folds, ts) == 3 and procedure.n_folds(1, ts) == 0
    seen = []
    real = procedure.fit_rounds
    monkeypatch.setattr(procedure, "fit_rounds", lambda p, c, t, xx, d: seen.append(set(t.trusted_rows.tolist())) or real(p, c, t, xx, d))
    hidden_by_teacher = []

    def teacher(hidden):
        from labelkit.distill.training_set import PseudoLabels

        hidden_by_teacher.append(set(hidden.tolist()))
        unl = ts.frame.unlabeled_rows
        return PseudoLabels(unl, np.eye(2)[y[unl]], np.ones(unl.size), np.ones(unl.size, bool))

    part = lambda name: procedure.FitPart(_NullBar(), name, cfg.epochs)
    oof, records = procedure.cross_fit(part, cfg, ts, x, "cpu", 3, teacher)
    trusted = set(ts.trusted_rows.tolist())
    assert len(seen) == 3 and all(s < trusted for s in seen)
    assert [trusted - s for s in seen] == hidden_by_teacher and set().union(*hidden_by_teacher) == trusted
    assert oof.shape == (12, 2) and np.allclose(oof.sum(1), 1, atol=1e-5)
    assert sum(r["n_val"] for r in records) == 12 and [r["fold"] for r in records] == [1, 2, 3]


class _NullBar:
    def advance(self, n=1):
        pass

    def update(self, **fields):
        pass


def test_distil_holdout_refits_the_teacher_without_the_held_out_labels():
    from labelkit.config import DistillConfig
    from labelkit.distill.procedure import distil
    from labelkit.distill.training_set import Frame, PseudoLabels, assemble

    x, y = _blobs(n_per=30)
    codes = y.copy()
    codes[::3] = -1  # 20 unlabeled
    trusted = np.flatnonzero(codes >= 0)
    frame = Frame(codes, trusted[::2], np.flatnonzero(codes < 0), 0, 0.9)  # 20 held out
    fit_rows = np.setdiff1d(trusted, frame.val_rows)
    ts = assemble(frame, fit_rows, PseudoLabels.none(2), soft=False, confidence_weighting=True)
    asked = []

    def teacher(hidden):
        asked.append(hidden.tolist())
        unl = frame.unlabeled_rows
        return PseudoLabels(unl, np.eye(2)[y[unl]], np.ones(unl.size), np.ones(unl.size, bool))

    cfg = DistillConfig(epochs=40, hidden=8, lr=0.05, batch_size=16, device="cpu")
    d = distil(x, ts, ["a", "b"], cfg, teacher=teacher, progress=_RecordingProgress(), device="cpu")
    assert asked == [frame.val_rows.tolist()]
    assert (d.held_out["estimate"], d.held_out["n_val"], d.n_pseudo_teacher) == ("holdout", 20, 20)
    assert d.held_out["accuracy"] > 0.9 and d.folds == [] and len(d.rounds) == 1 and d.rounds[0]["n_pseudo"] == 20
    assert d.counts() == {"n_trusted": 20, "n_pseudo": 20, "n_pseudo_teacher": 20, "n_dropped_issues": 0, "n_set_aside": 0, "n_val": 20,
                          "estimate": "holdout", "folds": None}
    assert d.outcome()["rounds"] == 1 and d.outcome()["accept_threshold"] == 0.9 and d.outcome()["val_accuracy"] == d.held_out["accuracy"]
    dyn = d.dynamics(np.array([f"s{i}" for i in range(60)]), ["a", "b"])
    assert dyn["id"].tolist() == [f"s{i}" for i in d.ts.train_rows] and dyn["is_pseudo"].sum() == 20 and not dyn["set_aside"].any()


def test_torch_threads_follows_the_architectures_policy_and_restores():
    from labelkit.distill.procedure import torch_threads

    before = torch.get_num_threads()
    with torch_threads("mlp"):
        assert torch.get_num_threads() == 1
    with torch_threads("cnn"):
        assert torch.get_num_threads() == before
    with torch_threads("linear", 2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


# --- architectures and the loop's parts ------------------------------------------------------------


def test_every_architecture_is_one_registry_entry():
    from labelkit.distill import STUDENTS
    from labelkit.distill.train_config import student_config

    assert {n: (a.input_kind, a.input_ndim, a.threads) for n, a in STUDENTS.items()} == {
        "linear": ("embeddings", 2, "one"), "mlp": ("embeddings", 2, "one"), "cnn": ("pixels", 4, "torch"), "finetune": ("pixels", 4, "torch")}
    assert STUDENTS["finetune"].image_side == 224 and STUDENTS["finetune"].image_mode == "RGB" and STUDENTS["cnn"].image_side == 0
    for name, shape in (("linear", (5,)), ("mlp", (5,)), ("cnn", (1, 8, 8))):
        cfg = student_config(TrainConfig(architecture=name, hidden=4, width=4), shape, 3)
        assert set(cfg) == {"architecture", *STUDENTS[name].keys}
        assert build_student(cfg)(torch.zeros(2, *shape)).shape == (2, 3)
    with pytest.raises(BadInputError, match="the finetune student reads RGB images"):
        student_config(TrainConfig(architecture="finetune"), (1, 8, 8), 3)


def test_pixel_spec_reads_mode_and_side(tmp_path):
    from PIL import Image

    from labelkit.distill.pixels import load_pixels, pixel_spec

    Image.fromarray(np.full((5, 3), 255, np.uint8), mode="L").save(tmp_path / "a.png")
    Image.fromarray(np.zeros((100, 90, 3), np.uint8), mode="RGB").save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert pixel_spec(tmp_path, ["a.png"])["size"] == [8, 8] and pixel_spec(tmp_path, ["a.png"])["mode"] == "L"
    spec = pixel_spec(tmp_path, ["bad.png", "a.png", "b.png"])
    assert (spec["mode"], spec["channels"], spec["size"]) == ("RGB", 3, [64, 64])  # one RGB image: RGB; 100 px clipped to 64
    assert pixel_spec(tmp_path, ["a.png"], student="finetune")["size"] == [224, 224]
    assert pixel_spec(tmp_path, ["a.png"], student="finetune", size=32)["mode"] == "RGB"
    with pytest.raises(BadInputError, match="--student cnn: none of the images could be read"):
        pixel_spec(tmp_path, ["bad.png"])
    px, ok = load_pixels([str(tmp_path / p) for p in ("a.png", "bad.png")], pixel_spec(tmp_path, ["a.png"], size=4))
    assert ok.tolist() == [True, False] and px.shape == (1, 1, 4, 4) and np.allclose(px, 1.0)
    from labelkit.distill.pixels import read_inputs

    x, read, spec = read_inputs(tmp_path, ["a.png", "bad.png", "b.png"], np.array([True, True, False]), student="cnn", size=4)
    assert read.tolist() == [True, False, False] and x.shape == (3, 1, 4, 4) and spec["mode"] == "L"  # b.png not asked for
    assert np.allclose(x[0], 1.0) and not x[1:].any()


def test_evaluate_and_record_dynamics_known_answer():
    from labelkit.distill.training import evaluate, record_dynamics

    m = build_student({"architecture": "linear", "in_dim": 2, "n_classes": 2})
    with torch.no_grad():
        m.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        m.fc.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    p = torch.softmax(torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), dim=1)
    ce, acc = evaluate(m, x, y, 2, "cpu")
    assert ce == pytest.approx(float(-torch.log(p[[0, 1, 2], [0, 0, 1]]).mean()), rel=1e-6) and acc == pytest.approx(1 / 3)
    dyn = record_dynamics(m, x, y, 2, "cpu")
    np.testing.assert_allclose(dyn[0], p[[0, 1, 2], [0, 0, 1]].numpy(), rtol=1e-6)
    assert dyn[1].tolist() == [1.0, 0.0, 0.0]  # the tie (row 2) goes to class 0


def test_label_filter_hook_zeroes_the_weights_of_the_labels_set_aside():
    from labelkit.distill.regularisers import LabelFilterHook

    class Bright(torch.nn.Module):  # class 1 when the image is bright
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], 1) * 20

    dark, bright = torch.full((1, 8, 8), 0.05), torch.full((1, 8, 8), 0.95)
    images = torch.stack([dark] * 4 + [bright] * 4 + [dark, bright])
    hard = torch.tensor([0] * 4 + [1] * 4 + [-1, 0])  # row 8 is pseudo-labeled; row 9's label is wrong
    weights = torch.tensor([1.0] * 8 + [0.5, 2.0])
    hook = LabelFilterHook(images, hard, weights, 2, start_epoch=0, seed=0, device="cpu", batch_size=4)
    hook.after_epoch(Bright(), 0)
    assert weights.tolist() == [1.0] * 8 + [0.5, 0.0] and hook.set_aside().tolist() == [9]
