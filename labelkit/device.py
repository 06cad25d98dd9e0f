"""Device choice for torch and faiss: CUDA when present, else CPU, with an override."""

from __future__ import annotations

from labelkit.errors import BadInputError


def resolve_device(device: str = "auto") -> str:
    """Map ``auto`` to ``cuda`` when torch sees a GPU, else ``cpu``; check explicit choices."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise BadInputError(f"'device' must be 'auto', 'cpu' or 'cuda[:N]'. Got {device!r} instead.")
    return device


# The image student that meets the distillation bar on images, and its options: docs/cookbook.md
# measured 0.975 test accuracy on digits with 43 labels (4 flipped) against 0.903 for the default
# mlp student. It trains on the pixels end to end (~0.07 s a step for 8 x 8 images on this
# project's CPU, ten times that at 28 x 28), so `run` makes it the default only on a GPU.
GPU_IMAGE_STUDENT: dict[str, object] = {"student": "cnn", "fixmatch": 1.0, "use_pseudolabels": False, "batch_size": 64, "epochs": 400}


def image_student_on_gpu(kind: str, cuda: bool, chosen: set[str]) -> tuple[dict[str, object], str | None]:
    """(distill options, note) for ``run``: on CUDA with image data, the image student unless the user chose a student.

    ``kind`` is the samples' kind ("image", "text", ...), ``cuda`` whether the distill device is a
    GPU, ``chosen`` the distill option names the user gave (``--config``, ``--set``). Off a GPU or on
    non-image data: no options and no note. With ``student`` chosen: no options and no note (the choice
    stands); other options the user gave are kept as given.
    """
    if kind != "image" or not cuda:
        return {}, None
    why = ("a GPU is present: the image student (cnn with FixMatch) learns from the unlabeled pixels "
           "and beats the mlp head on images (docs/cookbook.md)")
    if "student" in chosen:
        return {}, None  # the user's choice stands; a cnn/finetune choice needs no note, an mlp/linear one was deliberate
    overrides = {k: v for k, v in GPU_IMAGE_STUDENT.items() if k not in chosen}
    return overrides, f"{why}; distill uses " + ", ".join(f"{k}={v}" for k, v in overrides.items()) + " (set distill.student to choose another)"


def gpu_distill_defaults(data, distill_device: str, chosen: set[str]) -> tuple[dict[str, object], str | None]:
    """``run``'s distill options and note from :func:`image_student_on_gpu`; DATA's kind is read
    (a discovery of the samples) only when ``distill_device`` resolves to a GPU, so CPU runs pay nothing."""
    if not resolve_device(distill_device).startswith("cuda"):
        return {}, None
    from labelkit.dataset import discover

    return image_student_on_gpu(discover(data, require_inputs=False).kind, True, chosen)
