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


def test_run_notes_and_uses_the_image_student_when_torch_sees_a_gpu(runner, digits, monkeypatch):
    import torch

    from labelkit.cli import app
    from labelkit.device import gpu_distill_defaults

    assert gpu_distill_defaults(digits, "cpu", set()) == ({}, None)  # no GPU asked for: DATA is not even read
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    options, note = gpu_distill_defaults(digits, "auto", set())
    assert options == GPU_IMAGE_STUDENT and "cnn with FixMatch" in note
    # run says so before any stage; embed is kept on the CPU here (no real GPU behind the patch)
    r = runner.invoke(app, ["run", str(digits), "--until", "embed", "--model", "pixels:8", "--set", "embed.device=cpu"])
    assert r.exit_code == 0, r.output
    assert "note: a GPU is present: the image student (cnn with FixMatch)" in r.stderr
    r = runner.invoke(app, ["run", str(digits), "--until", "embed", "--model", "pixels:8", "--set", "embed.device=cpu",
                            "--set", "distill.student=mlp"])
    assert r.exit_code == 0 and "note:" not in r.stderr
