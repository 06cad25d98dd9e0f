"""labelkit/device.py: device resolution and run's GPU default for image students (issue 18)."""

from __future__ import annotations

import pytest

from labelkit.device import GPU_IMAGE_STUDENT, image_student_on_gpu, resolve_device
from labelkit.errors import BadInputError


def test_resolve_device_on_this_cpu_machine():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(BadInputError, match="CUDA is not available; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(BadInputError, match="'device' must be 'auto', 'cpu' or 'cuda"):
        resolve_device("tpu")


def test_image_student_only_on_a_gpu_with_images():
    assert image_student_on_gpu("image", False, set()) == ({}, None)
    assert image_student_on_gpu("text", True, set()) == ({}, None)
    options, note = image_student_on_gpu("image", True, set())
    assert options == GPU_IMAGE_STUDENT and options["student"] == "cnn" and options["fixmatch"] == 1.0
    assert "a GPU is present" in note and "student=cnn" in note


def test_the_users_choices_stand():
    assert image_student_on_gpu("image", True, {"student"}) == ({}, None)
    options, note = image_student_on_gpu("image", True, {"epochs"})
    assert "epochs" not in options and options["student"] == "cnn" and "epochs" not in note
