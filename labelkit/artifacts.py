"""Parquet schemas and readers/writers for each artifact (the column names are a contract).

Every table carries, in its key-value metadata, ``labelkit:params`` (the stage parameters that
made it) plus artifact-specific keys (model, dim, classes, …), as JSON strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from labelkit.errors import BadInputError, MissingArtifactError
from labelkit.workspace import atomic_path

SAMPLES = "samples.parquet"
EMBEDDINGS = "embeddings.parquet"
EMBEDDINGS_CACHE = "embeddings.arrow"  # memory-mappable copy of embeddings.parquet, rebuilt when stale
CLASS_EMBEDDINGS = "class_embeddings.parquet"
KNN = "knn.parquet"
PROTOTYPES = "prototypes.parquet"
PSEUDOLABELS = "pseudolabels.parquet"
LABEL_ISSUES = "label_issues.parquet"
PREDICTIONS = "predictions.parquet"

SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
    ]
)


def _meta(metadata: dict[str, Any]) -> dict[bytes, bytes]:
    return {f"labelkit:{k}".encode(): json.dumps(v, sort_keys=True, default=str).encode() for k, v in metadata.items()}


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``labelkit:*`` key-value metadata of a Parquet file, decoded."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode()[len("labelkit:"):]: json.loads(v) for k, v in raw.items() if k.startswith(b"labelkit:")}


def write_table(path: Path, table: pa.Table, metadata: dict[str, Any], *, row_group_size: int | None = None) -> None:
    """Atomically write ``table`` with labelkit metadata."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **_meta(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


def require(path: Path, hint: str) -> Path:
    if not path.exists():
        raise MissingArtifactError(f"{path.name} not found in {path.parent}; run '{hint}'")
    return path


# -- samples --------------------------------------------------------------------------------


def samples_table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df[["id", "source", "label", "labels", "split"]], schema=SAMPLES_SCHEMA, preserve_index=False)


def write_samples(path: Path, df: pd.DataFrame, metadata: dict[str, Any]) -> None:
    write_table(path, samples_table(df), metadata)


def read_samples(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    t = pq.read_table(path)
    df = pd.DataFrame({name: pd.Series(t.column(name).to_pylist(), dtype=object) for name in t.column_names})
    return df, read_metadata(path)


# -- embeddings -----------------------------------------------------------------------------


def embeddings_schema(dim: int, dtype: str, *, content_hash: bool = False) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [("id", pa.string()), ("embedding", pa.list_(value, dim))]
    # content_hash: what the vector was made from (file bytes or text), so reuse is keyed by content.
    return pa.schema(fields + ([("content_hash", pa.string())] if content_hash else []))


def embeddings_batch(ids: list[str], vectors: np.ndarray, dtype: str, hashes: list[str] | None = None) -> pa.RecordBatch:
    """One record batch of (id, fixed-size-list embedding[, content_hash]), built without copying row by row."""
    arr = np.ascontiguousarray(vectors, dtype=np.float16 if dtype == "float16" else np.float32)
    values = pa.array(arr.reshape(-1))
    emb = pa.FixedSizeListArray.from_arrays(values, arr.shape[1])
    cols = [pa.array(ids, pa.string()), emb] + ([pa.array(hashes, pa.string())] if hashes is not None else [])
    return pa.RecordBatch.from_arrays(cols, schema=embeddings_schema(arr.shape[1], dtype, content_hash=hashes is not None))


class EmbeddingsWriter:
    """Stream record batches into a Parquet file that appears (atomically) only on ``close``."""

    def __init__(self, path: Path, dim: int, dtype: str, metadata: dict[str, Any], row_group_size: int, *, content_hash: bool = False):
        self.path, self.dtype, self.row_group_size = Path(path), dtype, row_group_size
        self.content_hash = content_hash
        schema = embeddings_schema(dim, dtype, content_hash=content_hash).with_metadata(_meta(metadata))
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, schema)
        self._pending: list[pa.RecordBatch] = []
        self._n_pending = 0

    def write(self, ids: list[str], vectors: np.ndarray, hashes: list[str] | None = None) -> None:
        if len(ids) == 0:
            return
        if self.content_hash != (hashes is not None):
            raise ValueError("content hashes must be given exactly when the writer was opened with content_hash=True")
        self._pending.append(embeddings_batch(ids, vectors, self.dtype, hashes))
        self._n_pending += len(ids)
        if self._n_pending >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending), row_group_size=self.row_group_size)
            self._pending, self._n_pending = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._writer.close()
        err = RuntimeError("embedding aborted")
        try:
            self._ctx.__exit__(type(err), err, None)
        except RuntimeError:
            pass


def read_content_hashes(path: Path) -> list[str] | None:
    """The ``content_hash`` column of an embeddings file, or None for files written without it."""
    if "content_hash" not in pq.read_schema(path).names:
        return None
    return pq.read_table(path, columns=["content_hash"]).column("content_hash").to_pylist()


def read_embedding_ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def iter_embedding_batches(path: Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """Row group by row group: (ids, float32 (n, d)); bounded memory."""
    f = pq.ParquetFile(path)
    for g in range(f.num_row_groups):
        t = f.read_row_group(g)
        yield t.column("id").to_pylist(), _fixed_list_to_numpy(t.column("embedding"))


def _fixed_list_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    chunks = []
    for chunk in col.chunks:
        dim = chunk.type.list_size
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        chunks.append(values.reshape(-1, dim))
    out = np.concatenate(chunks) if len(chunks) != 1 else chunks[0]
    return out.astype(np.float32, copy=False)


def read_embeddings(path: Path, *, cache: Path | None = None) -> tuple[list[str], np.ndarray]:
    """All embeddings as (ids, float32 (N, D)).

    With ``cache``, a memory-mapped Arrow IPC copy gives a zero-copy view in milliseconds; it is
    rebuilt from the Parquet file when missing or older than it.
    """
    if cache is not None:
        if not cache.exists() or cache.stat().st_mtime_ns < path.stat().st_mtime_ns:
            _write_cache(path, cache)
        source = pa.memory_map(str(cache), "r")
        table = ipc.open_file(source).read_all()
        ids = table.column("id").to_pylist()
        col = table.column("embedding").combine_chunks() if table.column("embedding").num_chunks != 1 else table.column("embedding").chunk(0)
        values = col.flatten().to_numpy(zero_copy_only=col.type.value_type == pa.float32())
        return ids, values.reshape(-1, col.type.list_size).astype(np.float32, copy=False)
    f = pq.ParquetFile(path)
    dim = f.schema_arrow.field("embedding").type.list_size
    out = np.empty((f.metadata.num_rows, dim), dtype=np.float32)  # preallocated: peak ≈ output + one row group
    ids: list[str] = []
    row = 0
    for batch_ids, vecs in iter_embedding_batches(path):
        out[row:row + len(batch_ids)] = vecs
        ids.extend(batch_ids)
        row += len(batch_ids)
    return ids, out


def _write_cache(path: Path, cache: Path) -> None:
    f = pq.ParquetFile(path)
    with atomic_path(cache) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, f.schema_arrow) as w:
            for g in range(f.num_row_groups):
                w.write_table(f.read_row_group(g))


def embeddings_for(ids: Iterable[str], emb_ids: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``vectors`` for ``ids``: (vectors (n_found, D), positions in ``ids`` found)."""
    index = {i: r for r, i in enumerate(emb_ids)}
    pos, rows = [], []
    for p, i in enumerate(ids):
        r = index.get(i)
        if r is not None:
            pos.append(p)
            rows.append(r)
    rows_arr = np.asarray(rows, dtype=np.int64)
    return vectors[rows_arr], np.asarray(pos, dtype=np.int64)


def check_dims(path: Path, expected: int) -> None:
    dim = pq.read_schema(path).field("embedding").type.list_size
    if dim != expected:
        raise BadInputError(f"{path.name}: vectors have {dim} dimensions, expected {expected}")
