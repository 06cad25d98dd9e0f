"""Inputs several stages share, read from the workspace: embeddings, labels aligned with them,
class-name embeddings, prototypes, and the refit teacher's arrays and recorded configs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from labelkit import artifacts, prototypes, teacher
from labelkit.config import PrototypeConfig, PseudolabelConfig
from labelkit.dataset import Samples
from labelkit.errors import BadInputError
from labelkit.workspace import Workspace


@dataclass
class Aligned:
    """Embeddings with their samples' labels, in embeddings.parquet row order."""

    ids: list[str]
    vectors: np.ndarray  # (N, D) unit norm, float32 or float16 as stored (memory-mapped; compute converts row blocks)
    labels: np.ndarray  # (N,) int64, -1 = unlabeled
    classes: list[str]
    meta: dict


def aligned(ws: Workspace, samples: Samples) -> Aligned:
    """Join samples and embeddings on id (inputs that could not be embedded drop out)."""
    ids, vecs, meta = read_embeddings(ws, keep_half=True)
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


def read_embeddings(ws: Workspace, *, keep_half: bool = False) -> tuple[list[str], np.ndarray, dict]:
    """(ids, (N, D) vectors, metadata) of embeddings.parquet, through the memory-mapped cache: float32,
    or with ``keep_half`` float16 when stored so (``artifacts.read_embeddings``)."""
    path = artifacts.require(ws.path(artifacts.EMBEDDINGS), f"labelkit embed {ws.data}")
    ids, vecs = artifacts.read_embeddings(path, cache=ws.path(artifacts.EMBEDDINGS_CACHE), keep_half=keep_half)
    return ids, vecs, artifacts.read_metadata(path)


def read_prototypes(ws: Workspace, classes: list[str]) -> prototypes.Prototypes:
    """prototypes.parquet back into a :class:`labelkit.prototypes.Prototypes`."""
    t = artifacts.read_table(artifacts.require(ws.path(artifacts.PROTOTYPES), f"labelkit prototype {ws.data}"))
    return teacher.prototypes_from_columns(t.column("class").to_pylist(), np.asarray(t.column("vector").to_pylist(), dtype=np.float32),
                                           np.asarray(t.column("support").to_pylist()), np.asarray(t.column("kind").to_pylist()), classes)


def replay_configs(ws: Workspace) -> tuple[PseudolabelConfig, PrototypeConfig] | str:
    """(PseudolabelConfig, PrototypeConfig) that made pseudolabels.parquet and prototypes.parquet,
    or why they cannot be replayed (a missing artifact, parameters this version cannot read)."""
    from pydantic import ValidationError

    made = []
    for name, cls in ((artifacts.PSEUDOLABELS, PseudolabelConfig), (artifacts.PROTOTYPES, PrototypeConfig)):
        path = ws.path(name)
        if not path.exists():
            return f"{name} is missing"
        params = artifacts.read_metadata(path).get("params")
        try:
            made.append(cls(**params))
        except (TypeError, ValidationError):
            return f"{name} does not record parameters this version of labelkit can replay"
    return made[0], made[1]


def relabeler(ws: Workspace, samples: Samples) -> teacher.Relabeler:
    """A :class:`labelkit.teacher.Relabeler` over the workspace's arrays, with the recorded configs of
    the prototype and pseudolabel stages and the cached kNN graph (read once)."""
    from labelkit.config import budget_kwargs
    from labelkit.stages._knn import knn_graph

    configs = replay_configs(ws)
    if isinstance(configs, str):
        raise BadInputError(f"cannot recompute the pseudo-labels: {configs}")
    cfg, proto_cfg = configs
    a = aligned(ws, samples)
    ids = a.ids.to_pylist() if hasattr(a.ids, "to_pylist") else list(a.ids)
    return teacher.Relabeler(a.vectors, a.labels, ids, len(a.classes), graph=knn_graph(ws, a.vectors, k=cfg.k, **budget_kwargs(cfg.memory_budget)),
                             text=class_embeddings(ws, a.classes), pseudolabel=cfg, prototype=proto_cfg, model=a.meta.get("model"))
