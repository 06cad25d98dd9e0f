"""The kNN graph on Ray: the index is built and tuned once, on the driver, and shipped to a pool of
actors through the object store; each actor computes slices of the graph's rows.

The result equals :func:`labelkit.knn.knn_graph` on one process exactly (the same index, the same
tuned efSearch / nprobe, the same per-query search), so the artifacts do not depend on the engine.
The index is searched on CPU on the actors: a GPU index cannot be pickled, and on a GPU machine
the local engine's faiss GPU search is the faster choice anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelkit._progress import NULL, Progress
from labelkit.engines import RayOptions, placement, ray_session

ROWS_PER_TASK = 4096  # query rows per actor call


class _GraphActor:
    """Holds one copy of the tuned index; returns (start, sims, idx) for a slice of rows."""

    def __init__(self, index):
        self.index = index

    def graph(self, start: int, stop: int, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        s, i = self.index.graph(k, rows=slice(start, stop))
        return start, s, i


def knn_graph(vectors: np.ndarray, k: int, *, method: str = "auto", seed: int = 0, ann=None, ray: RayOptions = RayOptions(),
              progress: Progress = NULL) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(sims (N, k), idx (N, k), info) of the self-excluded kNN graph, queries spread over actors.

    ``ann``: a :class:`labelkit.knn.AnnParams` (e.g. the IVF-PQ code size a memory budget chose).
    ``info`` says how it ran: ``workers``, ``method`` (what ``auto`` chose), ``tasks`` and ``fell_back`` (why a
    cells graph was built with HNSW instead, or None: ``knn.AnnParams.cells_fallback``).
    """
    from ray.util import ActorPool

    from labelkit import knn

    index = knn.KnnIndex(method, device="cpu", seed=seed, ann=ann).build(vectors, progress=progress).tune_graph(k, progress=progress)
    n = len(vectors)
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    with ray_session(ray) as rt:
        workers, _ = placement(rt, "cpu", ray.workers)
        workers = min(workers, max(1, -(-n // ROWS_PER_TASK)))
        ref = rt.put(index)
        actor_cls = rt.remote(num_cpus=1)(_GraphActor)
        actors = [actor_cls.remote(ref) for _ in range(workers)]
        pool = ActorPool(actors)
        slices = [(s, min(s + ROWS_PER_TASK, n)) for s in range(0, n, ROWS_PER_TASK)]
        with progress.task(f"knn: {index.method_} search on Ray, {workers} actor{'s' * (workers > 1)}", total=n) as task:
            for start, s, i in pool.map_unordered(lambda a, v: a.graph.remote(v[0], v[1], k), slices):
                sims[start:start + len(s)], idx[start:start + len(i)] = s, i
                task.advance(len(s))
        for a in actors:
            rt.kill(a)
    index.finish_graph(sims, idx, k, progress=progress)  # a cells graph is refined whole, as on one process
    return sims, idx, {"workers": workers, "method": index.method_, "tasks": len(slices), "fell_back": index.fell_back_}
