"""``pixels`` / ``pixels:SIZE``: raw grayscale pixels as the embedding (no model, no weights).

A baseline and a fast path for tiny images such as examples/digits (8x8): each image is converted
to grayscale, resized to SIZE x SIZE, scaled to [0, 1] and centred by subtracting 0.5, then
flattened to a SIZE*SIZE vector. Centring makes cosine similarity meaningful: without it every
vector lies in the positive orthant and all pairs look alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelkit.embedders.base import Embedder, EmbedderOptions, open_image, register
from labelkit.errors import BadInputError

DEFAULT_SIZE = 16
MAX_SIZE = 512


class PixelsEmbedder(Embedder):
    """Grayscale SIZE x SIZE pixels, scaled to [0, 1] then centred at 0 (``x / 255 - 0.5``)."""

    modality = "image"
    cheap_decode = True

    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = size
        self.dim = size * size
        self.spec = f"pixels:{size}"

    def preprocessing(self) -> dict[str, Any]:
        return {"mode": "L", "size": [self.size, self.size], "resample": "bilinear", "scale": "x / 255 - 0.5"}

    def load(self, source: str) -> np.ndarray:
        from PIL import Image

        img = open_image(source, "L")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32).reshape(-1) / 255.0 - 0.5

    def forward(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        return np.stack(batch).astype(np.float32, copy=False)

    def default_batch_size(self) -> int:
        return 1024


@register("pixels")
def _make(arg: str | None, options: EmbedderOptions) -> PixelsEmbedder:
    if options.weights:
        raise BadInputError("model 'pixels' has no weights; drop --weights")
    if arg is None:
        return PixelsEmbedder()
    if not arg.isdigit() or not 1 <= int(arg) <= MAX_SIZE:
        raise BadInputError(f"'pixels' size must be an integer in [1, {MAX_SIZE}]. Got {arg!r} instead.")
    return PixelsEmbedder(int(arg))
