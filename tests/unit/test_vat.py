"""labelkit/distill/vat.py: the radius, the adversarial KL term, and fit_student with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelkit.distill import TrainConfig, build_student, fit_student, vat
from labelkit.errors import BadInputError


def _linear(weight: torch.Tensor) -> torch.nn.Module:
    m = build_student({"architecture": "linear", "in_dim": weight.shape[1], "n_classes": weight.shape[0]})
    with torch.no_grad():
        m.fc.weight.copy_(weight)
        m.fc.bias.zero_()
    return m


def test_radius_is_the_ratio_times_the_median_nearest_neighbour_distance_after_standardising():
    m = _linear(torch.zeros(2, 1))
    m.norm.std.fill_(2.0)  # standardised distances are half the raw ones
    x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]], np.float32)  # raw NN distances 1, 1, 2, 4, 8
    assert vat.radius(m, x, 0.5, torch.Generator().manual_seed(0)) == pytest.approx(0.5 * 2.0 / 2)


def test_vat_loss_is_zero_for_a_constant_model_and_positive_near_a_decision_boundary():
    x = torch.tensor([[0.05, 0.0], [-0.05, 0.0]])
    flat = _linear(torch.zeros(2, 2))
    assert vat.vat_loss(flat, x, 0.5, torch.Generator().manual_seed(0)).item() == pytest.approx(0.0, abs=1e-7)
    sharp = _linear(torch.tensor([[10.0, 0.0], [-10.0, 0.0]]))  # the boundary is x0 = 0
    loss = vat.vat_loss(sharp, x, 0.5, torch.Generator().manual_seed(0))
    # One power iteration finds the direction across the boundary: the prediction flips.
    assert loss.item() > 0.5
    along = vat.vat_loss(sharp, torch.tensor([[5.0, 0.0]]), 0.5, torch.Generator().manual_seed(0))
    assert along.item() < 1e-3  # far from the boundary a perturbation of 0.5 changes nothing


def test_fit_student_with_vat_is_deterministic_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    state = torch.get_rng_state()
    cfg = TrainConfig(architecture="mlp", hidden=8, epochs=3, batch_size=16, val_fraction=0.0, vat=0.5)
    a = fit_student(x, y, config=cfg, seed=1)
    b = fit_student(x, y, config=cfg, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    plain = fit_student(x, y, config=TrainConfig(architecture="mlp", hidden=8, epochs=3, batch_size=16, val_fraction=0.0), seed=1)
    assert not torch.equal(plain.model.fc1.weight, a.model.fc1.weight)


def test_train_config_rejects_a_negative_vat():
    with pytest.raises(BadInputError, match="'vat' must be >= 0. Got -1.0 instead."):  # the config's one message (9d2814f)
        TrainConfig(vat=-1.0)
