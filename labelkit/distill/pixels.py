"""Image inputs of the pixel students (``cnn``, ``finetune``): how images are read, and reading them.

The one module of :mod:`labelkit.distill` that opens files: the distill stage trains an image
student on the images themselves, and ``labelkit predict`` must read them exactly the same way, so
the recipe (:func:`pixel_spec`, saved in the student's config.json as ``input``) and the reader
(:func:`load_pixels`) live together here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from labelkit.distill.students import STUDENTS
from labelkit.errors import BadInputError

__all__ = ["CNN_MAX_SIDE", "CNN_MIN_SIDE", "load_pixels", "pixel_spec", "read_inputs"]

# cnn inputs: images resized to a square side between these (their largest side, clipped).
CNN_MIN_SIDE, CNN_MAX_SIDE = 8, 64
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def pixel_spec(root: Path, sources: list[str], n: int = 32, *, student: str = "cnn", size: int = 0) -> dict[str, Any]:
    """How an image student reads images: grayscale or RGB, and one square side.

    The side is ``size``, else the architecture's own (:attr:`Architecture.image_side`, 224 for
    finetune), else the largest side of the first ``n`` readable images clipped to 8-64. The mode is
    the architecture's (RGB for finetune), else grayscale when every one of those images is.
    """
    from PIL import Image

    sides, modes = [], []
    for src in sources:
        try:
            with Image.open(root / src) as img:
                sides.append(max(img.size))
                modes.append(img.mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # too large: skipped as in embed
            continue
        if len(sides) >= n:
            break
    if not sides:
        raise BadInputError(f"--student {student}: none of the images could be read")
    arch = STUDENTS[student]
    side = size or arch.image_side or int(min(CNN_MAX_SIDE, max(CNN_MIN_SIDE, max(sides))))
    mode = arch.image_mode or ("L" if all(m in GRAY_MODES for m in modes) else "RGB")
    return {"kind": "pixels", "mode": mode, "channels": 1 if mode == "L" else 3, "size": [side, side], "resample": "bilinear", "scale": "x / 255"}


def load_pixels(paths: list[str], spec: dict[str, Any], progress=None, description: str = "load images") -> tuple[np.ndarray, np.ndarray]:
    """(pixels (n_ok, C, H, W) float32 in [0, 1], ok mask (n,)) for the images at ``paths``."""
    from PIL import Image

    from labelkit._progress import NULL
    from labelkit.embedders import open_image

    progress = NULL if progress is None else progress
    h, w = spec["size"]
    out = np.zeros((len(paths), spec["channels"], h, w), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    with progress.task(description, total=len(paths)) as task:
        for i, p in enumerate(paths):
            try:
                img = open_image(p, spec["mode"])
            except (OSError, ValueError):
                task.advance()
                continue
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            ok[i] = True
            task.advance()
    return out[ok], ok


def read_inputs(root: Path, sources: list[str], has: np.ndarray, *, student: str, size: int = 0, progress=None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(pixels (N, C, H, W) for every row of ``sources`` (zeros where none), the rows read, the spec) for
    the rows where ``has`` is True: the spec from their first readable images, then every one read."""
    spec = pixel_spec(root, [s for s, h in zip(sources, has) if h], student=student, size=size)
    rows = np.flatnonzero(has)
    px, ok = load_pixels([str(root / sources[r]) for r in rows], spec, progress)
    x = np.zeros((len(sources), spec["channels"], *spec["size"]), dtype=np.float32)
    x[rows[ok]] = px
    read = np.zeros(len(sources), dtype=bool)
    read[rows[ok]] = True
    return x, read, spec
