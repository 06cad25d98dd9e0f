"""The cached kNN graph (knn.parquet): built once over all embeddings, reused by later stages."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from labelkit import artifacts
from labelkit._progress import NULL, Progress
from labelkit.workspace import Workspace, text_fingerprint

RECORD = "knn"


def knn_graph(ws: Workspace, vectors: np.ndarray, *, k: int, method: str = "auto", device: str = "auto", progress: Progress = NULL,
              engine: str = "local", ray_address: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sims (N, k), idx (N, k)) over the rows of embeddings.parquet, self excluded; cached.

    ``device`` auto puts the index on a GPU when the faiss GPU build sees one (same graph up to
    float rounding). ``engine`` ray builds the index once here and searches row slices on Ray
    actors (the same graph, exactly); the cache does not depend on the engine.
    """
    from labelkit import knn

    emb_fp = ws.fingerprint(artifacts.EMBEDDINGS) or ""
    params_fp = text_fingerprint(str(k), method)
    path = ws.path(artifacts.KNN)
    if ws.staleness(RECORD, params_fp, {artifacts.EMBEDDINGS: emb_fp}) is None:
        t = artifacts.read_table(path)
        idx = t.column("neighbors").combine_chunks().flatten().to_numpy().reshape(-1, k)
        sims = t.column("similarities").combine_chunks().flatten().to_numpy().reshape(-1, k)
        return sims.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)
    started = time.perf_counter()
    k_eff = min(k, max(1, len(vectors) - 1))
    if engine == "ray" and len(vectors) > 1:
        from labelkit.engines import RayOptions
        from labelkit.engines.ray_knn import knn_graph as ray_knn_graph

        sims, idx, _ = ray_knn_graph(vectors, k_eff, method=method, ray=RayOptions(address=ray_address), progress=progress)
    else:
        sims, idx = knn.knn_graph(vectors, k_eff, method=method, exclude_self=True, device=device, progress=progress)
    if k_eff < k:  # tiny datasets: pad so the artifact keeps its fixed width
        sims = np.pad(sims, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
        idx = np.pad(idx, ((0, 0), (0, k - k_eff)), constant_values=-1)
    table = pa.table(
        {
            "row": pa.array(np.arange(len(vectors), dtype=np.int64)),
            "neighbors": pa.FixedSizeListArray.from_arrays(pa.array(idx.reshape(-1).astype(np.int64)), k),
            "similarities": pa.FixedSizeListArray.from_arrays(pa.array(sims.reshape(-1).astype(np.float32)), k),
        }
    )
    artifacts.write_table(path, table, {"k": k, "method": method, "rows": "row order of embeddings.parquet"})
    ws.commit(RECORD, params={"k": k, "method": method}, params_fp=params_fp, inputs={artifacts.EMBEDDINGS: emb_fp}, outputs=[artifacts.KNN], started=started)
    return sims.astype(np.float32, copy=False), idx
