"""The embed stage's model pass on Ray: Ray Data feeds the samples to a pool of actors that each
hold the model (one GPU per actor when the cluster has GPUs, one CPU otherwise).

The driver writes what comes back as Parquet parts in the stage's resume folder
(``embeddings.parts/<fingerprint>/``), one part per ``rows_per_part`` rows, each keyed by the
content hash of its rows: the same format the local engine writes, so a run killed half-way
(driver or workers) resumes with either engine and embeds only the rows no part holds. Parts are
written by the driver, not the workers, so the workspace may live on the driver's own disk; only
the data (image files) must be readable by every worker at the same path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from labelkit._progress import NULL, Progress
from labelkit.engines import RayOptions, placement, ray_session

ROWS_PER_TASK = 256  # rows per Ray Data block at most (one actor call)


class _EmbedActor:
    """A Ray actor holding one embedder; turns a batch of (id, source, content_hash) into vectors."""

    def __init__(self, spec: str, weights: str | None, device: str, allow_download: bool, batch_size: int | None):
        from labelkit.embedders import EmbedderOptions, create_embedder

        self.embedder = create_embedder(spec, EmbedderOptions(weights=weights, device=device, allow_download=allow_download))
        self.batch_size = batch_size or self.embedder.default_batch_size()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from labelkit._validation import l2_normalize

        cpu0 = time.process_time()
        n, dim = len(batch["id"]), self.embedder.dim
        vectors = np.zeros((n, dim), np.float32)
        errors = np.full(n, "", dtype=object)
        for s in range(0, n, self.batch_size):
            rows, decoded = [], []
            for r in range(s, min(s + self.batch_size, n)):
                try:
                    decoded.append(self.embedder.load(batch["source"][r]))
                    rows.append(r)
                except (OSError, ValueError, SyntaxError) as e:  # as the local engine: skipped, said in the summary
                    errors[r] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if decoded:
                vectors[rows] = l2_normalize(np.asarray(self.embedder.forward(decoded), dtype=np.float32))
        # CPU seconds of this actor's process (all its threads) for the batch, spread over its rows:
        # rows per CPU-second is the per-worker throughput that a busy machine does not distort.
        cpu = np.full(n, (time.process_time() - cpu0) / max(n, 1))
        return {"id": batch["id"], "content_hash": batch["content_hash"], "vector": vectors, "error": errors, "cpu_s": cpu}


def part_name(hashes: list[str]) -> str:
    """A part's file name from its rows' content hashes: parts from any worker or run never collide."""
    digest = hashlib.blake2b("\n".join(hashes).encode(), digest_size=12).hexdigest()
    return f"part-ray-{digest}.parquet"


def embed_parts(ids: list[str], sources: list[Any], hashes: list[str], *, spec: str, dim: int, parts_dir: Path,
                weights: str | None = None, device: str = "auto", allow_download: bool = False, batch_size: int | None = None,
                rows_per_part: int = 8192, ray: RayOptions = RayOptions(), progress: Progress = NULL,
                on_part: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Embed ``sources`` on Ray and write them as parts under ``parts_dir``.

    Parameters
    ----------
    ids, sources, hashes : lists of the same length
        The rows to embed: sample ids, what the embedder loads (an absolute image path, or a text),
        and the content hashes that key reuse.
    spec, dim : the embedder's spec and vector size (the stage resolved both).
    parts_dir : Path
        The stage's resume folder for this fingerprint; created if missing.
    rows_per_part : int, default=8192
        Rows per part file (the stage's row group size): what a kill can lose at most.
    ray : RayOptions
    on_part : callable or None
        Called with each part's path once it is on disk.

    Returns
    -------
    dict with ``parts`` (paths written), ``errors`` ({id: reason} of unreadable inputs),
    ``workers``, ``device`` (cpu or cuda, per actor) and ``actor_cpu_s`` (CPU seconds the actors
    spent decoding and embedding, summed).
    """
    import pandas as pd

    from labelkit import artifacts

    parts_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"parts": [], "errors": {}, "workers": 0, "device": "cpu", "actor_cpu_s": 0.0}
    if not ids:
        return out
    with ray_session(ray) as rt:
        workers, use_gpu = placement(rt, device, ray.workers)
        out["workers"], out["device"] = workers, "cuda" if use_gpu else "cpu"
        frame = pd.DataFrame({"id": ids, "source": sources, "content_hash": hashes})
        # Blocks small enough that every actor gets at least two, at most ROWS_PER_TASK rows each.
        per_block = max(1, min(ROWS_PER_TASK, -(-len(frame) // (2 * workers))))
        blocks = [frame.iloc[s:s + per_block] for s in range(0, len(frame), per_block)]
        ds = rt.data.from_pandas(blocks).map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"spec": spec, "weights": weights, "device": "cuda" if use_gpu else "cpu",
                                   "allow_download": allow_download, "batch_size": batch_size},
            batch_size=per_block, batch_format="numpy", compute=rt.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if use_gpu else 0, num_cpus=1,
        )
        with progress.task(f"embed ({spec}) on Ray, {workers} {'GPU' if use_gpu else 'CPU'} actor{'s' * (workers > 1)}", total=len(ids)) as task:
            for batch in ds.iter_batches(batch_size=rows_per_part, batch_format="numpy"):
                ok = batch["error"] == ""
                b_ids, b_hashes = batch["id"].tolist(), batch["content_hash"].tolist()
                skipped = [h for h, good in zip(b_hashes, ok) if not good]
                out["actor_cpu_s"] += float(batch["cpu_s"].sum())
                out["errors"].update({i: str(e) for i, e, good in zip(b_ids, batch["error"], ok) if not good})
                path = parts_dir / part_name(b_hashes)
                w = artifacts.EmbeddingsWriter(path, dim, "float32", {"skipped_content": skipped}, rows_per_part, content_hash=True)
                w.write([i for i, good in zip(b_ids, ok) if good], batch["vector"][ok], [h for h, good in zip(b_hashes, ok) if good])
                w.close()
                out["parts"].append(path)
                if on_part is not None:
                    on_part(path)
                task.advance(len(b_ids))
    return out


def embed_missing(ws, samples, cfg, embedder, model: str, have, todo_rows: list[int], hashes: list[str], parts_dir: Path,
                  progress: Progress = NULL) -> tuple[dict[str, str], int, int]:
    """The embed stage's ``embed_missing`` on Ray: the rows no vector was found for, embedded by
    actors into parts that join ``have``; ({skipped id: why}, batch size, actors)."""
    from labelkit.engines import RayOptions
    from labelkit.stages import _vectors

    table, ids = samples.table, samples.table["id"].tolist()
    if samples.kind == "image":
        sources = [str(ws.data / table["source"].iat[r]) for r in todo_rows]
    else:
        sources = [table["source"].iat[r] for r in todo_rows]
    res = embed_parts([ids[r] for r in todo_rows], sources, [hashes[r] for r in todo_rows], spec=model, dim=embedder.dim,
                      parts_dir=parts_dir, weights=cfg.weights, device=cfg.device, allow_download=cfg.allow_download,
                      batch_size=cfg.batch_size, rows_per_part=cfg.row_group_size, ray=RayOptions(address=cfg.ray_address),
                      progress=progress)
    for path in res["parts"]:
        _vectors.add_file(have, path)
    return res["errors"], cfg.batch_size or embedder.default_batch_size(), res["workers"]
