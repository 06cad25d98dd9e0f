"""Embedding in batches: decoding inputs for a DataLoader, content keys, vectors found by content,
and how well the labeled classes separate. Shared by the embed and predict stages; no artifacts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from labelkit import health
from labelkit._validation import l2_normalize
from labelkit.embedder_choice import SCORE_K, loo_knn_accuracy, stratified_sample

SEPARATION_PER_CLASS = 200  # labeled samples per class in the final separation check
SEPARATION_MAX = 2000
DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # Pillow raises SyntaxError on some broken files


class InputDataset:
    """A torch map-style dataset that decodes one input per item (runs in DataLoader workers)."""

    def __init__(self, embedder, sources: list[str]):
        self.embedder, self.sources = embedder, sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        try:
            return i, self.embedder.load(self.sources[i])
        except DECODE_ERRORS as e:
            return i, e


def collate(items):
    return items


def auto_workers(embedder, n: int) -> int:
    """DataLoader workers for ``n`` inputs: none where decoding is the cheap part."""
    # Decoding is the cheap part for text and tiny images; workers there only add start-up cost.
    if embedder.modality != "image" or n < 256 or getattr(embedder, "cheap_decode", False):
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def error_text(e: BaseException) -> str:
    """'OSError: first line of the message', as a skipped input's reason."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def embed_batches(embedder, sources: list[str], *, batch_size: int, num_workers: int,
                  prefetch: int | None = None) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, BaseException]]]]:
    """Per batch: (rows decoded, their L2-normalised vectors, [(row, error)] of those that could not be)."""
    import torch

    loader = torch.utils.data.DataLoader(
        InputDataset(embedder, sources), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
        **({"persistent_workers": False, "prefetch_factor": prefetch if num_workers else None} if prefetch is not None else {}),
    )
    for items in loader:
        ok = [(i, x) for i, x in items if not isinstance(x, Exception)]
        failed = [(i, x) for i, x in items if isinstance(x, Exception)]
        vecs = l2_normalize(embedder.forward([x for _, x in ok])) if ok else np.zeros((0, embedder.dim), np.float32)
        yield [i for i, _ in ok], vecs, failed


def embed_some(embedder, sources: list[str], batch_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(readable mask, raw vectors of the readable ones) for a few sources, in batches, in this process."""
    ok = np.zeros(len(sources), dtype=bool)
    out = []
    bs = batch_size or embedder.default_batch_size()
    for s in range(0, len(sources), bs):
        batch = []
        for i in range(s, min(s + bs, len(sources))):
            try:
                batch.append(embedder.load(sources[i]))
                ok[i] = True
            except DECODE_ERRORS:
                continue
        if batch:
            out.append(np.asarray(embedder.forward(batch), dtype=np.float32))
    return ok, (np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32))


def content_hashes(kind: str, ids: list[str], sources: list[str], root: Path) -> list[str]:
    """A hash of what each sample's vector is made from: the image file's bytes, or the text.

    Reuse is keyed by this, never by id alone: a replaced picture or a text whose row moved gets
    a new vector. An unreadable file gets a key no vector can match (it is retried next time).
    """
    out = []
    if kind == "image":
        for sid, src in zip(ids, sources):
            try:
                with open(root / src, "rb") as f:
                    out.append(hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest())
            except OSError:
                out.append(f"unreadable:{sid}")
    else:
        for text in sources:
            out.append(hashlib.blake2b(str(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest())
    return out


class VectorStore:
    """Vectors already made with one backend, found by content hash (reused whatever their id)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.blocks: list[np.ndarray] = []
        self.where: dict[str, tuple[int, int]] = {}
        self.unreadable: set[str] = set()  # content hashes that failed to load with this backend

    def add(self, vectors: np.ndarray, hashes: list[str]) -> None:
        b = len(self.blocks)
        self.blocks.append(vectors)
        for r, h in enumerate(hashes):
            self.where.setdefault(h, (b, r))

    def take(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the hashes found, their vectors in order)."""
        found = np.array([h in self.where for h in hashes], dtype=bool)
        out = np.zeros((int(found.sum()), self.dim), np.float32)
        for i, h in enumerate(h for h, f in zip(hashes, found) if f):
            b, r = self.where[h]
            out[i] = self.blocks[b][r]
        return found, out


class SeparationSample(NamedTuple):
    """Which rows the separation check scores: positions in the vectors, their classes, and how
    many classes are labeled in all."""

    rows: np.ndarray
    codes: np.ndarray
    n_classes: int


def separation_sample(codes: np.ndarray, sample_ids, ids: list[str]) -> SeparationSample:
    """The labeled rows :func:`separation` scores (stratified, at most SEPARATION_MAX), as positions in ``ids``.

    ``codes`` (n_samples,) class codes with -1 unlabeled, in ``sample_ids`` order.
    """
    pos = pd.Index(ids).get_indexer(sample_ids)
    labeled = np.flatnonzero((codes >= 0) & (pos >= 0))
    n_classes = len(np.unique(codes[labeled]))
    if labeled.size < 4 or n_classes < 2:
        return SeparationSample(np.zeros(0, np.int64), np.zeros(0, np.int64), n_classes)
    rows = labeled[stratified_sample(codes[labeled], per_class=SEPARATION_PER_CLASS, cap=SEPARATION_MAX, rng=np.random.default_rng(0))]
    return SeparationSample(pos[rows], codes[rows], n_classes)


def separation(codes: np.ndarray, sample_ids, ids: list[str], vectors: np.ndarray, model: str) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """Leave-one-out kNN accuracy of the labeled samples on the final vectors, and its warnings.

    ``codes`` (n_samples,) class codes with -1 unlabeled, in ``sample_ids`` order; ``vectors`` in ``ids`` order.
    """
    sample = separation_sample(codes, sample_ids, ids)
    return sampled_separation(sample, vectors[sample.rows], model)


def sampled_separation(sample: SeparationSample, vectors: np.ndarray, model: str) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """:func:`separation` from the sample's rows' unit vectors (``vectors``, in ``sample.rows`` order)."""
    warnings = health.one_class(sample.n_classes)
    if sample.rows.size == 0:
        return None, warnings
    acc = loo_knn_accuracy(vectors, sample.codes)
    sep = {"knn_accuracy": round(acc, 4), "n": int(sample.rows.size), "chance": round(1 / sample.n_classes, 4), "k": SCORE_K}
    return sep, warnings + health.separation(acc, sample.n_classes, what=f"the embedding ({model})")
