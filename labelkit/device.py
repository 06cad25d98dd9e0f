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
