"""Inputs several stages share: labels aligned with the embeddings, and class-name embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from labelkit import artifacts
from labelkit.dataset import Samples
from labelkit.workspace import Workspace


@dataclass
class Aligned:
    """Embeddings with their samples' labels, in embeddings.parquet row order."""

    ids: list[str]
    vectors: np.ndarray  # (N, D) float32, unit norm
    labels: np.ndarray  # (N,) int64, -1 = unlabeled
    classes: list[str]
    meta: dict


def aligned(ws: Workspace, samples: Samples) -> Aligned:
    """Join samples and embeddings on id (inputs that could not be embedded drop out)."""
    from labelkit.stages.embed import read_embeddings

    ids, vecs, meta = read_embeddings(ws)
    codes = samples.label_codes()
    pos = pd.Index(samples.table["id"]).get_indexer(ids)
    labels = np.where(pos >= 0, codes[np.maximum(pos, 0)], -1).astype(np.int64)
    return Aligned(ids, vecs, labels, samples.classes, meta)


def class_embeddings(ws: Workspace, classes: list[str]) -> np.ndarray | None:
    """(K, D) class-name embeddings in ``classes`` order, or None without a text tower."""
    path = ws.path(artifacts.CLASS_EMBEDDINGS)
    if not path.exists():
        return None
    t = artifacts.read_table(path)
    names = t.column("class").to_pylist()
    if sorted(names) != sorted(classes):
        return None  # made for another class list; embed --force refreshes it
    vecs = np.asarray(t.column("embedding").to_pylist(), dtype=np.float32)
    order = [names.index(c) for c in classes]
    return vecs[order]
