"""The Embedder interface and the registry that maps a ``--model`` spec to a backend.

A spec is ``NAME`` or ``NAME:ARG`` (e.g. ``pixels``, ``pixels:16``, ``clip:ViT-B-32/openai``,
``efficientnet-lite0``, ``minilm``). Backends register themselves with :func:`register`.
Decoding (``load``) is separate from the forward pass (``forward``) so the embed stage can run
decoding in DataLoader workers while the model runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from labelkit.errors import BadInputError


@dataclass(frozen=True)
class EmbedderOptions:
    """Options every backend may use; each ignores what does not apply to it."""

    weights: str | None = None  # local checkpoint path
    device: str = "cpu"  # already resolved: "cpu" or "cuda[:n]"
    allow_download: bool = False  # may fetch weights from a hub (needs network)


class Embedder(ABC):
    """One backend: turns raw inputs (image paths or texts) into vectors."""

    modality: ClassVar[str]  # "image" or "text"
    spec: str  # the canonical spec, recorded in artifact metadata
    dim: int

    @property
    def has_text_tower(self) -> bool:
        """True when :meth:`embed_texts` maps text into the same space as the inputs."""
        return False

    def preprocessing(self) -> dict[str, Any]:
        """What was done to inputs before the model (recorded in metadata)."""
        return {}

    @abstractmethod
    def load(self, source: str) -> Any:
        """Decode one input (an absolute image path, or a text). Raise OSError/ValueError if unreadable."""

    @abstractmethod
    def forward(self, batch: list[Any]) -> np.ndarray:
        """Embed a batch of decoded inputs; returns float32 (n, dim), not necessarily normalised."""

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed texts with the text tower; only where ``has_text_tower``."""
        raise BadInputError(f"model '{self.spec}' has no text tower")

    def default_batch_size(self) -> int:
        return 64


_REGISTRY: dict[str, Callable[[str | None, EmbedderOptions], Embedder]] = {}


def register(name: str) -> Callable:
    """Class or factory decorator: ``@register("pixels")``; the factory gets (arg, options)."""

    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    from labelkit import embedders  # noqa: F401  (importing the package registers the backends)

    return sorted(_REGISTRY)


def create_embedder(spec: str, options: EmbedderOptions | None = None) -> Embedder:
    """Build the backend named by ``spec``; a clear BadInputError for an unknown name."""
    names = available()
    name, _, arg = spec.partition(":")
    if name not in _REGISTRY:
        raise BadInputError(f"unknown model '{spec}'. Choose one of: {', '.join(names)}")
    return _REGISTRY[name](arg or None, options or EmbedderOptions())
