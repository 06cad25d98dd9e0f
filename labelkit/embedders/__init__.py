"""Embedding backends behind one interface; ``create_embedder(spec)`` builds one by its ``--model`` spec.

Importing this package registers every backend. Heavy libraries (torch, open_clip,
sentence-transformers) are imported only when a backend is built.
"""

from labelkit.embedders import efficientnet, openclip, pixels, precomputed, text  # noqa: F401  (register)
from labelkit.embedders.base import Embedder, EmbedderOptions, available, create_embedder, open_image, register

__all__ = ["Embedder", "EmbedderOptions", "available", "create_embedder", "open_image", "register"]
