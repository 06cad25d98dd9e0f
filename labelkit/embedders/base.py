"""The Embedder interface and the registry that maps a ``--model`` spec to a backend.

A spec is ``NAME`` or ``NAME:ARG`` (e.g. ``pixels``, ``pixels:16``, ``clip:ViT-B-32/openai``,
``efficientnet-lite0``, ``minilm``). Backends register themselves with :func:`register`.
Decoding (``load``) is separate from the forward pass (``forward``) so the embed stage can run
decoding in DataLoader workers while the model runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

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

    modality: ClassVar[str]  # "image", "text", or "vector" (precomputed)
    cheap_decode: ClassVar[bool] = False  # True when load() is too cheap to be worth DataLoader workers
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

    def embed_class_names(self, classes: list[str]) -> np.ndarray:
        """Class names as float32 (K, dim) vectors in the input space (for zero-shot / text prototypes).

        The default embeds the bare names; CLIP overrides it with a prompt-template ensemble.
        """
        return self.embed_texts(list(classes))

    def embed(self, sources: list[Any]) -> np.ndarray:
        """``forward`` of ``load`` of each source, in one batch: float32 (n, dim), not normalised."""
        return self.forward([self.load(s) for s in sources])

    def default_batch_size(self) -> int:
        return 64


_REGISTRY: dict[str, Callable[[str | None, EmbedderOptions], Embedder]] = {}


def register(name: str) -> Callable:
    """Class or factory decorator: ``@register("pixels")``; the factory gets (arg, options)."""

    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def open_image(path: str, mode: str, *, draft: int | None = None) -> Any:
    """Decode an image file fully into a PIL image of ``mode`` ("RGB" or "L").

    EXIF orientation is applied and transparency is composited onto white. ``draft`` lets JPEG
    decode at a reduced scale whose sides stay >= ``draft`` (much faster for large photos).
    16-bit grayscale is rescaled to 8 bits. Unreadable, empty and truncated files raise OSError
    (a few malformed headers, ValueError); files past Pillow's decompression-bomb error limit
    (2 x ``Image.MAX_IMAGE_PIXELS``, ~179 megapixels) raise ValueError('too large: ...'), so that
    every backend's ``load`` skips them alike.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, (draft, draft))
            img.load()  # decode now: truncated files raise here, not later in the model
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16"):  # 16-bit grayscale: convert() would clip at 255, so rescale
                img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), "L")
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            out = img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning, where warnings are errors
        # Skipped by the stages with this reason (docs/getting-started.md): 'too large'.
        raise ValueError(f"too large: {e} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS)") from e
    except SyntaxError as e:  # Pillow raises SyntaxError for some malformed headers
        raise ValueError(f"{path}: malformed image ({e})") from e
    if out.width == 0 or out.height == 0:
        raise ValueError(f"{path}: image has zero size")
    return out


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it cannot be read or is too large to decode.

    For code that peeks at images before embedding (``embed --model auto``'s pixel side, distill's
    pixel spec): Pillow's DecompressionBombError is no OSError, so a bare ``Image.open`` there
    would crash on a file that ``open_image`` skips as 'too large'.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None


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
