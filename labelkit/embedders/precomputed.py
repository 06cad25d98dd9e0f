"""``precomputed``: vectors the user brings in the manifest's ``embedding`` column.

The embed stage reads those vectors itself (``stages/embed.py``: it never builds this backend);
the registration exists so ``precomputed`` is a known ``--model`` name. The class also works
through the ordinary ``load``/``forward`` path, with one vector (a sequence of floats) per source,
for library callers; ``dim`` is fixed by the first vector seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labelkit.embedders.base import Embedder, EmbedderOptions, register
from labelkit.errors import BadInputError


class PrecomputedEmbedder(Embedder):
    """Pass-through: each source is already a vector."""

    modality = "vector"
    cheap_decode = True
    spec = "precomputed"

    def __init__(self, dim: int | None = None):
        self.dim = dim  # type: ignore[assignment]  # unknown until the first vector

    def load(self, source: Sequence[float]) -> np.ndarray:
        vec = np.asarray(source, dtype=np.float32)
        if vec.ndim != 1 or vec.size == 0:
            raise ValueError(f"an embedding must be a non-empty list of numbers. Got shape {vec.shape} instead.")
        if not np.all(np.isfinite(vec)):
            raise ValueError("an embedding contains NaN or infinite values")
        return vec

    def forward(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim or 0), np.float32)
        dims = {len(v) for v in batch}
        if self.dim is None and len(dims) == 1:
            self.dim = next(iter(dims))
        if dims != {self.dim}:
            want = f"length {self.dim}" if self.dim is not None else "the same length"
            raise BadInputError(f"embeddings must all have {want}. Got lengths {sorted(dims)} instead.")
        return np.stack(batch).astype(np.float32, copy=False)

    def preprocessing(self) -> dict[str, Any]:
        return {}

    def default_batch_size(self) -> int:
        return 8192


@register("precomputed")
def _make(arg: str | None, options: EmbedderOptions) -> PrecomputedEmbedder:
    if arg is not None:
        raise BadInputError(f"model 'precomputed' takes no argument. Got 'precomputed:{arg}' instead.")
    if options.weights:
        raise BadInputError("model 'precomputed' has no weights; drop --weights")
    return PrecomputedEmbedder()
