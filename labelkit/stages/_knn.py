"""The cached kNN graph (knn.parquet): built once over all embeddings, reused by later stages."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from labelkit import artifacts, health
from labelkit._progress import NULL, Progress
from labelkit.workspace import Workspace, text_fingerprint

RECORD = "knn"


def knn_graph(ws: Workspace, vectors: np.ndarray, *, k: int, method: str = "auto", device: str = "auto", progress: Progress = NULL,
              engine: str = "local", ray_address: str | None = None, memory_budget: int | None = None,
              auto_budget: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sims (N, k), idx (N, k)) over the rows of embeddings.parquet, self excluded; cached.

    ``device`` auto puts the index on a GPU when the faiss GPU build sees one (same graph up to
    float rounding). ``engine`` ray builds the index once here and searches row slices on Ray
    actors (the same graph, exactly); the cache does not depend on the engine. ``memory_budget``
    (bytes; None or 0: none) picks the index by :func:`labelkit.knn.choose_method`; the method
    used and why are kept in knn.parquet's metadata and the manifest (:func:`graph_info`), and a
    budget that changes the method (the cells method, IVF-PQ or its code size) changes the cache's fingerprint.
    ``auto_budget``: the budget is ``--memory-budget auto``'s (:func:`labelkit.knn.choose_method`).
    """
    from labelkit import knn

    k_eff = min(k, max(1, len(vectors) - 1))
    budget = memory_budget or None
    choice = None if budget is None else knn.choose_method(*vectors.shape, k, method=method, memory_budget=budget, device=device,
                                                           auto_budget=auto_budget)
    emb_fp = ws.fingerprint(artifacts.EMBEDDINGS) or ""
    # Without a budget, or with one that keeps the size-chosen index, the fingerprint is the one it always was.
    params_fp = text_fingerprint(str(k), method, *_budget_tag(choice))
    path = ws.path(artifacts.KNN)
    if ws.staleness(RECORD, params_fp, {artifacts.EMBEDDINGS: emb_fp}) is None:
        t = artifacts.read_table(path, columns=["neighbors", "similarities"])
        return artifacts.fixed_list_to_numpy(t.column("similarities"), np.float32), artifacts.fixed_list_to_numpy(t.column("neighbors"), np.int64)
    started = time.perf_counter()
    if choice is None:
        choice = knn.choose_method(*vectors.shape, k, method=method, device=device)
    if engine == "ray" and len(vectors) > 1:
        from labelkit.engines import RayOptions
        from labelkit.engines.ray_knn import knn_graph as ray_knn_graph

        sims, idx, ran = ray_knn_graph(vectors, k_eff, method=choice.method, ann=choice.ann(), ray=RayOptions(address=ray_address),
                                       progress=progress)
        tuned, fell_back = None, ran.get("fell_back")
    else:
        index = knn.KnnIndex(choice.method, device=device, ann=choice.ann()).build(vectors, progress=progress)
        sims, idx = index.graph(k_eff, exclude_self=True, progress=progress)
        tuned, fell_back = index.tuning(k_eff + 1), index.fell_back_
    if k_eff < k:  # tiny datasets: pad so the artifact keeps its fixed width
        sims = np.pad(sims, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
        idx = np.pad(idx, ((0, 0), (0, k - k_eff)), constant_values=-1)
    table = pa.table(
        {
            "row": pa.array(np.arange(len(vectors), dtype=np.int64)),
            "neighbors": pa.FixedSizeListArray.from_arrays(pa.array(idx.reshape(-1).astype(np.int64, copy=False)), k),
            "similarities": pa.FixedSizeListArray.from_arrays(pa.array(sims.reshape(-1).astype(np.float32, copy=False)), k),
        }
    )
    used = {**_info(choice), "tuned": tuned, "fell_back": bool(fell_back)}
    if fell_back:  # said where the method is: the summary's knn (and the terminal), knn.parquet's metadata, the manifest
        used.update(method="hnsw", reason=f"{choice.reason}; {fell_back}")
    artifacts.write_table(path, table, {"k": k, "method": method, "rows": "row order of embeddings.parquet", "index": used})
    ws.commit(RECORD, params={"k": k, "method": method, "index": used}, params_fp=params_fp, inputs={artifacts.EMBEDDINGS: emb_fp},
              outputs=[artifacts.KNN], started=started)
    return sims.astype(np.float32, copy=False), idx


def _budget_tag(choice: Any) -> list[str]:
    """What a budget changed about the index, for the cache's fingerprint: IVF-PQ's code size, or the cells method."""
    if choice is None:
        return []
    if choice.pq_m is not None:
        return [f"ivfpq:{choice.pq_m}"]
    return ["cells"] if choice.method == "cells" else []


def _info(choice: Any) -> dict[str, Any]:
    """The index used, as knn.parquet's metadata, the manifest and stage summaries show it."""
    return {"method": choice.method, "pq_m": choice.pq_m, "memory_budget": choice.memory_budget, "estimate_bytes": choice.estimate_bytes,
            "reason": choice.reason}


def recall_shortfall(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """``info``'s tuning record (``KnnIndex.tuning``) when its recall on the tuning sample stayed under the target, else None."""
    tuned = (info or {}).get("tuned")
    return tuned if tuned and tuned["sample_recall"] < tuned["target_recall"] else None


def recall_warnings(info: dict[str, Any] | None) -> list[dict[str, str]]:
    """A ``knn_recall`` warning when the graph's tuned recall on its sample stayed under the target."""
    tuned = recall_shortfall(info)
    if tuned is None:
        return []
    longer = {"ivfpq": " (its IVF-PQ codes are short: a larger --memory-budget gives longer ones)",
              "cells": " (the rows' neighbours lie across more cells than it probes: a larger --memory-budget gives HNSW where it fits)"
              }.get(info["method"], "")
    return [health.warning("knn_recall", f"the {info['method']} kNN graph reached recall@k {tuned['sample_recall']} on its tuning sample, "
                           f"under the target {tuned['target_recall']}{longer}", "raise --memory-budget (or 0 for none); on data without "
                           "neighbourhood structure, neighbours are weak evidence whatever the index")]


def graph_info(ws: Workspace) -> dict[str, Any] | None:
    """The index knn.parquet was built with (method, pq_m, memory_budget, estimate_bytes, reason, and tuned: the knob
    tuning picked and its sample recall), from the manifest; None when no graph is recorded, {"method": requested} for
    one recorded before this was kept."""
    rec = ws.record(RECORD)
    if rec is None:
        return None
    return rec.params.get("index") or {"method": rec.params.get("method")}
