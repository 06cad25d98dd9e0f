"""FixMatch: the augmentations, the consistency loss, and fit_student's use of unlabeled images."""

import numpy as np
import pytest
import torch

from labelkit.distill import TrainConfig, fit_student, predict_proba
from labelkit.distill.fixmatch import (
    LabelFilter,
    consistency_loss,
    strong_view,
    weak_view,
)
from labelkit.errors import BadInputError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_weak_view_shifts_by_at_most_an_eighth_and_keeps_a_flat_image_flat():
    flat = torch.full((4, 1, 16, 16), 0.3)
    assert torch.allclose(weak_view(flat, _gen()), flat, atol=1e-6)  # border padding: no black frame
    dot = torch.zeros(64, 1, 16, 16)
    dot[:, :, 8, 8] = 1.0
    out = weak_view(dot, _gen())
    rows, cols = torch.arange(16).view(16, 1), torch.arange(16).view(1, 16)
    mass = out[:, 0].sum(dim=(1, 2))
    cy = (out[:, 0] * rows).sum(dim=(1, 2)) / mass
    cx = (out[:, 0] * cols).sum(dim=(1, 2)) / mass
    # 12.5 % of 16 px = 2 px each way; the pixel centre sits at 8
    assert (cy - 8).abs().max() <= 2.01 and (cx - 8).abs().max() <= 2.01
    assert (cy - 8).abs().max() > 0.5  # it does move
    assert torch.equal(out, weak_view(dot, _gen()))  # seeded


def test_strong_view_stays_in_range_and_cuts_gray_squares_of_up_to_half_the_side():
    x = torch.rand(64, 3, 12, 12, generator=_gen(1))
    out = strong_view(x, _gen(2))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    area = (out == 0.5).all(dim=1).sum(dim=(1, 2))  # every channel 0.5: the cutout
    assert area.max() <= 36  # at most 6 x 6 px, half of 12
    assert (area >= 16).any() and (area < 9).any()  # its size varies
    assert torch.equal(out, strong_view(x, _gen(2)))
    assert not torch.equal(out, strong_view(x, _gen(3)))


class _Fixed(torch.nn.Module):
    """Logits that ignore the input: class 0 with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([np.log(p), np.log(1 - p)], dtype=torch.float32))

    def forward(self, x):
        return self.w.expand(x.shape[0], 2)


def test_consistency_loss_is_cross_entropy_on_confident_images_only():
    x = torch.rand(8, 1, 8, 8, generator=_gen())
    loss, frac = consistency_loss(_Fixed(0.9), x, _gen(), threshold=0.8)
    assert float(frac) == 1.0
    assert float(loss.detach()) == pytest.approx(-np.log(0.9), rel=1e-5)
    loss, frac = consistency_loss(_Fixed(0.9), x, _gen(), threshold=0.95)
    assert float(frac) == 0.0 and float(loss.detach()) == 0.0


def _two_bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images: class 0 a vertical bar, class 1 a horizontal bar, at random positions, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, size=(n, 1, 8, 8)).astype(np.float32)
    y = np.arange(n) % 2
    pos = rng.integers(1, 7, n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, :, pos[i]] = 1.0
        else:
            x[i, 0, pos[i], :] = 1.0
    return x, y


def test_fit_student_with_fixmatch_learns_from_unlabeled_images_and_is_seeded():
    x, y = _two_bars(4, 0)
    xu, yu = _two_bars(200, 1)
    cfg = TrainConfig(architecture="cnn", width=8, epochs=6, batch_size=8, lr=3e-3, val_fraction=0.0, fixmatch=1.0, fixmatch_threshold=0.7)
    a = fit_student(x, y, config=cfg, unlabeled=xu, seed=3)
    b = fit_student(x, y, config=cfg, unlabeled=xu, seed=3)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # an epoch passes over the 204-image pool at 2 x 8 a step: 13 steps, so 6 epochs are 78 steps
    assert a.train_loss.size == 6
    plain = fit_student(x, y, config=TrainConfig(architecture="cnn", width=8, epochs=78, batch_size=8, lr=3e-3, val_fraction=0.0), seed=3)
    assert not torch.equal(a.model.fc.weight, plain.model.fc.weight)
    assert np.mean(predict_proba(a.model, xu).argmax(1) == yu) >= 0.9


def test_fixmatch_needs_an_image_student_and_matching_unlabeled_images():
    with pytest.raises(BadInputError, match="'fixmatch' augments images: it needs the cnn or finetune architecture"):
        TrainConfig(architecture="mlp", fixmatch=1.0)
    with pytest.raises(BadInputError, match="'fixmatch_threshold' must be in"):
        TrainConfig(architecture="cnn", fixmatch=1.0, fixmatch_threshold=1.5)
    x, y = _two_bars(4, 0)
    cfg = TrainConfig(architecture="cnn", width=4, epochs=1, batch_size=4, val_fraction=0.0, fixmatch=1.0)
    with pytest.raises(BadInputError, match="'unlabeled' images must have the shape of x's"):
        fit_student(x, y, config=cfg, unlabeled=np.zeros((3, 1, 6, 6), np.float32))


def test_flexmatch_thresholds_follow_each_class_learning_status():
    from labelkit.distill.fixmatch import FlexMatchThresholds

    flex = FlexMatchThresholds(6, 2, tau=0.95)
    assert flex.thresholds().tolist() == [0.0, 0.0]  # nothing confident yet: warm-up lets everything through
    flex.update(np.arange(6), np.array([0.99, 0.97, 0.96, 0.99, 0.5, 0.94]), np.array([0, 0, 0, 1, 1, 0]))
    assert flex.last.tolist() == [0, 0, 0, 1, -1, -1]
    # sigma = [3, 1], 2 unused: beta = [1, 1/3]; M(b) = b / (2 - b) = [1, 0.2]
    assert np.allclose(flex.thresholds(), [0.95, 0.19])
    flex.update(np.array([0]), np.array([0.99]), np.array([1]))  # an image's latest confident class replaces its old one
    assert flex.last.tolist() == [1, 0, 0, 1, -1, -1]
    assert np.allclose(flex.thresholds(), [0.95, 0.95])  # sigma = [2, 2], 2 unused


def test_fit_student_rejects_an_unknown_fixmatch_rule():
    with pytest.raises(BadInputError, match="'fixmatch_rule' must be one of"):
        TrainConfig(architecture="cnn", fixmatch=1.0, fixmatch_rule="softmatch")


def test_ema_returns_the_moving_average_of_the_weights():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    base = dict(architecture="linear", epochs=3, batch_size=8, lr=0.1, val_fraction=0.0)
    plain = fit_student(x, y, config=TrainConfig(**base), seed=1)
    # decay ~0: the average is the last weights
    fast = fit_student(x, y, config=TrainConfig(**base, ema=1e-9), seed=1)
    for a, b in zip(plain.model.state_dict().values(), fast.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    # the average by hand: d_t = min(decay, (1 + t) / (10 + t)) over the 15 steps' weights
    from labelkit.distill import (
        regularisers as training,  # _ema_update lives with the EMA object
    )

    seen = []
    real = training._ema_update

    def spy(ema, model, decay, step):
        seen.append(model.fc.weight.detach().clone())
        real(ema, model, decay, step)

    training._ema_update = spy
    try:
        avg = fit_student(x, y, config=TrainConfig(**base, ema=0.5), seed=1)
    finally:
        training._ema_update = real
    assert len(seen) == 15
    untrained = fit_student(x, y, config=TrainConfig(**{**base, "lr": 1e-12}), seed=1)
    want = untrained.model.fc.weight.detach().clone()
    for t, w in enumerate(seen):
        d = min(0.5, (1 + t) / (10 + t))
        want = d * want + (1 - d) * w
    assert torch.allclose(avg.model.fc.weight, want, atol=1e-5)
    assert not torch.allclose(avg.model.fc.weight, plain.model.fc.weight, atol=1e-4)


class _Brightness(torch.nn.Module):
    """Class 1 when the mean pixel is above 0.5, else class 0, never class 2: strong views of a flat
    0.05 or 0.95 image (brightness +-0.2, a gray cutout) stay on their side."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5, torch.full_like(m, -10.0)], 1) * 20


def test_label_filter_sets_aside_the_labels_strong_views_contradict_but_leaves_every_class_one():
    dark, bright = torch.full((1, 8, 8), 0.05), torch.full((1, 8, 8), 0.95)
    images = torch.stack([dark] * 6 + [bright] * 6 + [dark, bright, dark])
    labels = torch.tensor([0] * 6 + [1] * 6 + [1, 0, 2])  # rows 12 and 13 are wrong; class 2's only label is too
    f = LabelFilter(images, labels, n_classes=3, start_epoch=2, seed=0, device="cpu")
    assert not f.update(_Brightness(), epoch=1, batch_size=4)  # before the warm-up ends: nothing changes
    assert f.keep.all()
    assert f.update(_Brightness(), epoch=2, batch_size=4)
    assert np.flatnonzero(~f.keep.numpy()).tolist() == [12, 13]
    assert not f.update(_Brightness(), epoch=3, batch_size=4)  # stable: no change reported


def test_label_filter_keeps_every_label_while_the_student_contradicts_too_many():
    dark = torch.full((1, 8, 8), 0.05)
    f = LabelFilter(torch.stack([dark] * 8), torch.tensor([0] * 5 + [1] * 3), n_classes=3, start_epoch=0, seed=0, device="cpu")
    assert not f.update(_Brightness(), epoch=0, batch_size=8)  # 3 of 8 contradicted: more than a quarter
    assert f.keep.all()


def test_fit_student_with_fixmatch_sets_aside_a_flipped_label():
    x, y = _two_bars(16, 0)
    given = y.copy()
    given[5] = 1 - given[5]
    xu, _ = _two_bars(200, 1)
    cfg = TrainConfig(architecture="cnn", width=8, epochs=10, batch_size=16, lr=3e-3, val_fraction=0.0, fixmatch=1.0, fixmatch_threshold=0.7)
    fit = fit_student(x, given, config=cfg, unlabeled=xu, seed=0)
    assert np.flatnonzero(fit.set_aside).tolist() == [5]
    off = fit_student(x, given, config=TrainConfig(**{**cfg.__dict__, "label_filter": False}), unlabeled=xu, seed=0)
    assert not off.set_aside.any()
