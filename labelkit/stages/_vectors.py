"""The embed stage's vectors on disk: finished chunks of a run (embeddings.parts/<fingerprint>/, so a
killed run resumes), the previous embeddings.parquet, and the final write; found by content hash."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from labelkit import artifacts, embedding

PARTS = "embeddings.parts"


def add_file(store: embedding.VectorStore, path: Path) -> bool:
    """The vectors of an embeddings file that records content hashes; False for one that does not."""
    hashes = artifacts.read_content_hashes(path)
    if hashes is None:
        return False
    store.add(artifacts.read_embeddings(path)[1], hashes)
    store.unreadable.update(artifacts.read_metadata(path).get("skipped_content", []))
    return True


def reusable(ws, ids: list[str], hashes: list[str], dim: int, parts_dir: Path, params_fp: str, *, force: bool) -> tuple[embedding.VectorStore, int]:
    """Vectors this backend made already (a resumed run's parts, the previous embeddings.parquet), and
    how many samples changed content since it."""
    have = embedding.VectorStore(dim)
    for p in sorted(parts_dir.glob("part-*.parquet")) if parts_dir.exists() else []:
        add_file(have, p)  # a resumed run's finished chunks
    previous = ws.path(artifacts.EMBEDDINGS)
    n_changed = 0
    if not force and previous.exists() and artifacts.read_metadata(previous).get("params_fingerprint") == params_fp and add_file(have, previous):
        before = dict(zip(artifacts.read_embedding_ids(previous), artifacts.read_content_hashes(previous) or []))
        n_changed = sum(1 for i, h in zip(ids, hashes) if i in before and before[i] != h)
    return have, n_changed


def parts_dir(ws, params_fp: str, *, force: bool) -> Path:
    """embeddings.parts/<params_fp>/, with the parts of other fingerprints (another model) removed."""
    if force and ws.path(PARTS).exists():
        shutil.rmtree(ws.path(PARTS))
    if ws.path(PARTS).exists():
        for other in ws.path(PARTS).iterdir():
            if other.name != params_fp:
                shutil.rmtree(other, ignore_errors=True)
    return ws.path(PARTS) / params_fp


class Parts:
    """Finished chunks written to parts_dir as they complete (a killed run resumes from them)."""

    def __init__(self, parts_dir: Path, have: embedding.VectorStore, ids: list[str], hashes: list[str], row_group_size: int):
        self.dir, self.have, self.ids, self.hashes, self.size = parts_dir, have, ids, hashes, row_group_size
        self.n = len(list(parts_dir.glob("part-*.parquet"))) if parts_dir.exists() else 0
        self.rows: list[int] = []
        self.vecs: list[np.ndarray] = []
        self.skipped: list[str] = []

    def add(self, rows: list[int], vecs: np.ndarray, failed: list[int]) -> None:
        self.skipped.extend(self.hashes[i] for i in failed)
        if rows:
            self.vecs.append(vecs)
            self.rows.extend(rows)
        if len(self.rows) + len(self.skipped) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.rows and not self.skipped:
            return
        dim = self.have.dim
        vecs = np.concatenate(self.vecs) if self.vecs else np.zeros((0, dim), np.float32)
        part_hashes = [self.hashes[i] for i in self.rows]
        w = artifacts.EmbeddingsWriter(self.dir / f"part-{self.n:06d}.parquet", dim, "float32",
                                       {"skipped_content": self.skipped}, self.size, content_hash=True)
        w.write([self.ids[i] for i in self.rows], vecs, part_hashes)
        w.close()
        self.have.add(vecs, part_hashes)
        self.have.unreadable.update(self.skipped)
        self.n += 1
        self.rows, self.vecs, self.skipped = [], [], []


def write_final(ws, cfg, dim: int, ids: list[str], vectors: np.ndarray, hashes: list[str], meta: dict[str, Any]) -> None:
    """embeddings.parquet (with each row's content hash); the parts and the memory-mapped cache go."""
    w = artifacts.EmbeddingsWriter(ws.path(artifacts.EMBEDDINGS), dim, cfg.dtype, meta, cfg.row_group_size, content_hash=True)
    for s in range(0, len(ids), cfg.row_group_size):
        e = s + cfg.row_group_size
        w.write(ids[s:e], vectors[s:e], hashes[s:e])
    w.close()
    shutil.rmtree(ws.path(PARTS), ignore_errors=True)
    cache = ws.path(artifacts.EMBEDDINGS_CACHE)
    if cache.exists():
        cache.unlink()


def embed_missing(ws, samples, cfg, embedder, model: str, have, todo_rows: list[int], hashes: list[str], parts_dir: Path,
                   progress) -> tuple[dict[str, str], int, int]:
    """Embed the rows no vector was found for, in parts; ({skipped id: why}, batch size, workers)."""
    table, ids = samples.table, samples.table["id"].tolist()
    if samples.kind == "image":
        sources = [str(ws.data / table["source"].iat[r]) for r in todo_rows]
    else:
        sources = [table["source"].iat[r] for r in todo_rows]
    batch_size = cfg.batch_size or embedder.default_batch_size()
    workers = cfg.num_workers if cfg.num_workers is not None else embedding.auto_workers(embedder, len(sources))
    parts = Parts(parts_dir, have, [ids[r] for r in todo_rows], [hashes[r] for r in todo_rows], cfg.row_group_size)
    errors: dict[str, str] = {}
    with progress.task(f"embed ({model})", total=len(sources)) as task:
        for rows, vecs, failed in embedding.embed_batches(embedder, sources, batch_size=batch_size, num_workers=workers, prefetch=4):
            for i, e in failed:
                errors[parts.ids[i]] = embedding.error_text(e)
            parts.add(rows, vecs, [i for i, _ in failed])
            task.advance(len(rows) + len(failed))
    parts.flush()
    return errors, batch_size, workers
