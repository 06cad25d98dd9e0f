"""Parquet schemas and readers/writers for each artifact (the column names are a contract).

Every table carries, in its key-value metadata, ``labelkit:params`` (the stage parameters that
made it) plus artifact-specific keys (model, dim, classes, …), as JSON strings.

Every reader here turns a file it cannot read (truncated, corrupt, wrong columns) into one
DamagedArtifactError naming the file, what is wrong and the command that rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from labelkit.errors import BadInputError, DamagedArtifactError, LabelkitError, LabelkitWarning, MissingArtifactError
from labelkit.workspace import atomic_path

SAMPLES = "samples.parquet"
EMBEDDINGS = "embeddings.parquet"
EMBEDDINGS_CACHE = "embeddings.arrow"  # memory-mappable copy of embeddings.parquet, rebuilt when its fingerprint differs
CLASS_EMBEDDINGS = "class_embeddings.parquet"
KNN = "knn.parquet"
PROTOTYPES = "prototypes.parquet"
PSEUDOLABELS = "pseudolabels.parquet"
LABEL_ISSUES = "label_issues.parquet"
PREDICTIONS = "predictions.parquet"
DISCOVERIES = "discoveries.parquet"

# The stage that (re)writes each derived artifact: what a damaged one's message tells the user to run.
OWNER = {
    SAMPLES: "embed", EMBEDDINGS: "embed", CLASS_EMBEDDINGS: "embed", KNN: "pseudolabel", PROTOTYPES: "prototype",
    PSEUDOLABELS: "pseudolabel", LABEL_ISSUES: "detect-noise", DISCOVERIES: "discover",
}
CACHE_KEY = b"labelkit:source_fingerprint"  # in embeddings.arrow's schema: content key of the parquet it copies

SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
    ]
)


# -- damage ---------------------------------------------------------------------------------


def rebuild_hint(path: Path) -> str:
    """What to run to rebuild the artifact at ``path``."""
    path = Path(path)
    owner = OWNER.get(path.name)
    if path.name == SAMPLES:
        return "delete it: the next stage run rewrites it from DATA"
    if owner is None:
        return "delete it and rerun the command that wrote it"
    ws = path.parent
    target = str(ws.parent) if ws.name == ".labelkit" else f"DATA --out {ws}"
    return f"run 'labelkit {owner} {target} --force' to rebuild it"


def damaged(path: Path, what: str) -> DamagedArtifactError:
    return DamagedArtifactError(f"{path}: {what}; {rebuild_hint(path)}")


def _what(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Could not open Parquet input source" in text:  # pyarrow names a '<Buffer>', not the file: keep the reason
        text = text.split("': ", 1)[-1]
    if "magic bytes not found in footer" in text:
        text = "not a complete Parquet file: no footer; truncated?"
    if isinstance(e, KeyError):
        text = f"no column {text}"
    return f"unreadable ({text})"


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a failure to read ``path`` into a DamagedArtifactError naming it (never an ArrowInvalid traceback)."""
    try:
        yield
    except LabelkitError:
        raise
    except FileNotFoundError:
        raise MissingArtifactError(f"{Path(path).name} not found in {Path(path).parent}; {rebuild_hint(path).replace('rebuild', 'make')}") from None
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as e:
        raise damaged(path, _what(e)) from None


def problem(path: Path, *, full: bool = False) -> str | None:
    """None when the Parquet file (or folder of parts) at ``path`` opens; else what is wrong with it.

    Reads the footer only (truncation, not Parquet at all); ``full`` also decodes every row group,
    one at a time. A path that does not exist has no problem (it is missing, which callers check).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        files = parts(path)
    except DamagedArtifactError as e:
        return str(e).split(": ", 1)[1].split("; ", 1)[0]
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            if full:
                for g in range(pf.num_row_groups):
                    pf.read_row_group(g)
        except (pa.ArrowException, OSError, ValueError) as e:
            return _what(e)
    return None


def content_key(path: Path) -> str:
    """A cheap content fingerprint of a Parquet file: its size, its first 64 KiB and its footer.

    The footer holds the schema, every row group's offsets, sizes and statistics and the labelkit
    metadata, so a rewritten file differs there; unlike an mtime, a copy of the same bytes keeps it.
    """
    path = Path(path)
    if path.is_dir():  # a folder of parts: each part's key, with its name
        h = hashlib.blake2b(digest_size=16)
        with reading(path):
            for f in parts(path):
                h.update(f"{f.relative_to(path).as_posix()}={content_key(f)};".encode())
        return h.hexdigest()
    h = hashlib.blake2b(digest_size=16)
    with reading(path), open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(size - 8, 0))
        tail = f.read(8)
        n = int.from_bytes(tail[:4], "little") if len(tail) == 8 else -1
        if tail[4:] != b"PAR1" or not 0 <= n <= size - 12:
            raise damaged(path, "unreadable (not a complete Parquet file: no footer; truncated?)")
        f.seek(size - 8 - n)
        h.update(f"{size}:".encode() + f.read(n))
        f.seek(0)
        h.update(f.read(1 << 16))
    return h.hexdigest()


def _meta(metadata: dict[str, Any]) -> dict[bytes, bytes]:
    return {f"labelkit:{k}".encode(): json.dumps(v, sort_keys=True, default=str).encode() for k, v in metadata.items()}


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``labelkit:*`` key-value metadata of a Parquet file (or a folder's first part), decoded.

    Read from the file's footer, which holds the schema's metadata and what a writer added on
    closing (``EmbeddingsWriter.close(metadata=...)``).
    """
    with reading(path):
        raw = pq.read_metadata(parts(path)[0]).metadata or {}
        return {k.decode()[len("labelkit:"):]: json.loads(v) for k, v in raw.items() if k.startswith(b"labelkit:")}


def stored_metadata(path: Path) -> dict[str, Any]:
    """``read_metadata``, or {} when the file is missing or does not open (its writer then rewrites it)."""
    if not Path(path).exists() or problem(path) is not None:
        return {}
    try:
        return read_metadata(path)
    except DamagedArtifactError:
        return {}


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """``pq.read_table`` (memory-mapped; a folder's parts concatenated in name order) with a
    DamagedArtifactError (file, what, what to run) when it cannot be read."""
    with reading(path):
        files = parts(path)
        if len(files) == 1:
            return pq.read_table(files[0], columns=columns, memory_map=True)
        tables = [pq.read_table(f, columns=columns, memory_map=True) for f in files]
        return pa.concat_tables(tables).replace_schema_metadata(tables[0].schema.metadata)


def write_table(path: Path, table: pa.Table, metadata: dict[str, Any], *, row_group_size: int | None = None) -> None:
    """Atomically write ``table`` with labelkit metadata."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **_meta(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


def parts(path: Path) -> list[Path]:
    """The Parquet files an artifact is made of: itself, or a folder's ``*.parquet`` parts in name order.

    An artifact may be one file or a folder of parts (a distributed engine writes one part per
    task, ``part-00000.parquet``, ...); every reader here accepts both. Hidden and temporary files
    (names starting with '.' or '_') are not parts.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.rglob("*.parquet") if not any(q.startswith((".", "_")) for q in p.relative_to(path).parts))
    if not found:
        raise damaged(path, "unreadable (a folder without Parquet parts)")
    return found


def _schema(path: Path) -> pa.Schema:
    """The schema (with labelkit metadata) of a file, or of a folder's first part."""
    return pq.read_schema(parts(path)[0])


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
    t = read_table(path)
    missing = [c for c in SAMPLES_SCHEMA.names if c not in t.column_names]
    if missing:
        raise damaged(path, f"not a samples table (no column {missing[0]!r})")
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

    def close(self, metadata: dict[str, Any] | None = None) -> None:
        """Finish the file; ``metadata`` (known only once every row is written) joins the footer's."""
        self._flush()
        if metadata:
            self._writer.add_key_value_metadata(_meta(metadata))
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
    with reading(path):
        if "content_hash" not in _schema(path).names:
            return None
    return read_table(path, columns=["content_hash"]).column("content_hash").to_pylist()


def read_embedding_ids(path: Path) -> list[str]:
    return read_table(path, columns=["id"]).column("id").to_pylist()


def _embedding_dim(path: Path, schema: pa.Schema) -> int:
    with reading(path):
        typ = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(typ):
        raise damaged(path, f"not an embeddings table (embedding is {typ}, not a fixed-size list)")
    return typ.list_size


def iter_embedding_batches(path: Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """Row group by row group (part by part for a folder): (ids, float32 (n, d)); bounded memory."""
    with reading(path):
        files = [pq.ParquetFile(p, memory_map=True) for p in parts(path)]
    for f in files:
        _embedding_dim(path, f.schema_arrow)
        for g in range(f.num_row_groups):
            with reading(path):
                t = f.read_row_group(g)
                batch = t.column("id").to_pylist(), fixed_list_to_numpy(t.column("embedding"))
            yield batch


def fixed_list_to_numpy(col: pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """A fixed-size-list column as an (N, width) array of ``dtype``, filled a chunk at a time: no combined
    copy of the column beside it (knn.parquet's neighbours at 10M rows: 0.8 GB)."""
    width = col.type.list_size
    out = np.empty((len(col), width), dtype)
    row = 0
    for chunk in col.chunks:
        out[row : row + len(chunk)] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        row += len(chunk)
    return out


def read_embeddings(path: Path, *, cache: Path | None = None, on_repair: Callable[[str], None] | None = None,
                    keep_half: bool = False) -> tuple[list[str], np.ndarray]:
    """All embeddings as (ids, float32 (N, D)); with ``keep_half``, a float16 file's as float16.

    ``keep_half`` with ``cache`` returns a zero-copy float16 view of the memory-mapped cache (half
    the memory, and pages the OS can drop): for consumers that compute on float32 row blocks
    (``labelkit._validation.unit_embeddings``).

    With ``cache``, a memory-mapped Arrow IPC copy gives a zero-copy view in milliseconds. The cache
    is validated by the Parquet file's content key (``content_key``, kept in the cache's schema
    metadata), never by mtime: a missing, stale or unreadable cache is rebuilt from the Parquet file.
    An unreadable one is a repair, reported through ``on_repair(message)`` (default: a
    LabelkitWarning); a stale one is routine and silent.
    """
    if cache is not None:
        key = content_key(path)
        table, why = _open_cache(cache, key)
        if table is None:
            if why is not None:
                (on_repair or _warn)(f"{cache}: {why}; rebuilt it from {path.name}")
            _write_cache(path, cache, key)
            table, why = _open_cache(cache, key)
            if table is None:
                raise damaged(cache, why or "unreadable after rebuilding it")
        ids = table.column("id").to_pylist()
        col = table.column("embedding").combine_chunks() if table.column("embedding").num_chunks != 1 else table.column("embedding").chunk(0)
        half = keep_half and col.type.value_type == pa.float16()
        values = col.flatten().to_numpy(zero_copy_only=half or col.type.value_type == pa.float32())
        return ids, values.reshape(-1, col.type.list_size).astype(np.float16 if half else np.float32, copy=False)
    with reading(path):
        files = [pq.ParquetFile(p, memory_map=True) for p in parts(path)]
    dim = _embedding_dim(path, files[0].schema_arrow)
    half = keep_half and files[0].schema_arrow.field("embedding").type.value_type == pa.float16()
    out = np.empty((sum(f.metadata.num_rows for f in files), dim), dtype=np.float16 if half else np.float32)  # peak ≈ output + one row group
    ids: list[str] = []
    row = 0
    for batch_ids, vecs in iter_embedding_batches(path):
        out[row:row + len(batch_ids)] = vecs
        ids.extend(batch_ids)
        row += len(batch_ids)
    return ids, out


def _warn(message: str) -> None:
    warnings.warn(message, LabelkitWarning, stacklevel=3)


def _open_cache(cache: Path, key: str) -> tuple[pa.Table | None, str | None]:
    """(the cached table, None) when ``cache`` is readable and made from content ``key``; else (None, why not: None when missing or stale)."""
    if not cache.exists():
        return None, None
    try:
        table = ipc.open_file(pa.memory_map(str(cache), "r")).read_all()
        typ = table.schema.field("embedding").type
        if "id" not in table.column_names or not pa.types.is_fixed_size_list(typ):
            return None, "unreadable (not an embeddings table)"
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        return None, _what(e)
    if (table.schema.metadata or {}).get(CACHE_KEY) != key.encode():
        return None, None  # made from other content (or by an older labelkit): routine
    return table, None


CACHE_SPILL_BYTES = 1 << 30  # vectors above this are gathered in a file-backed buffer beside the cache, not in anonymous memory


def _write_cache(path: Path, cache: Path, key: str) -> None:
    """The IPC cache as one record batch, so that readers get one contiguous zero-copy array
    (a batch per row group made every read concatenate them: a full in-memory copy). Built in one
    preallocated buffer of the stored type, handed to Arrow without a copy: the peak is the vectors
    plus one row group, and above CACHE_SPILL_BYTES that buffer is a temporary file mapped into
    memory (pages the kernel can write back and drop: 10 GB at 10M x 512 float16). One array of
    more than 2^31 - 1 values (10M x 512) needs IPC's 64-bit lengths."""
    with reading(path):
        files = [pq.ParquetFile(p, memory_map=True) for p in parts(path)]
        first = files[0].schema_arrow
        dim = _embedding_dim(path, first)
        value_type = first.field("embedding").type.value_type
        n = sum(f.metadata.num_rows for f in files)
    with _gather_buffer(cache, n * dim, np.dtype(value_type.to_pandas_dtype())) as values:
        ids, row = [], 0
        with reading(path):
            for f in files:
                for g in range(f.num_row_groups):
                    t = f.read_row_group(g, columns=["id", "embedding"])
                    for chunk in t.column("embedding").chunks:
                        flat = chunk.flatten().to_numpy(zero_copy_only=False)
                        values[row * dim : row * dim + flat.size] = flat
                        row += len(chunk)
                    ids.extend(t.column("id").chunks)
        emb = pa.FixedSizeListArray.from_arrays(pa.Array.from_buffers(value_type, n * dim, [None, pa.py_buffer(values)]), dim)
        id_arr = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        schema = pa.schema([first.field("id"), first.field("embedding")], metadata={**(first.metadata or {}), CACHE_KEY: key.encode()})
        batch = pa.RecordBatch.from_arrays([id_arr.cast(schema.field("id").type), emb], schema=schema)
        with atomic_path(cache) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema, options=ipc.IpcWriteOptions(allow_64bit=True)) as w:
                w.write_batch(batch)
        del batch, emb


@contextlib.contextmanager
def _gather_buffer(cache: Path, size: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """A 1-D array of ``size`` values: in memory, or above CACHE_SPILL_BYTES a hidden temporary file beside ``cache``, removed after."""
    if size * dtype.itemsize <= CACHE_SPILL_BYTES or size == 0:
        yield np.empty(size, dtype)
        return
    spill = cache.with_name(f".{cache.name}.gather")
    try:
        values = np.memmap(spill, dtype=dtype, mode="w+", shape=(size,))
        yield values
        del values
    finally:
        spill.unlink(missing_ok=True)


def embeddings_for(ids: Iterable[str], emb_ids: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``vectors`` for ``ids``: (vectors (n_found, D), positions in ``ids`` found)."""
    index = pd.Index(np.asarray(emb_ids, dtype=object))
    last = np.flatnonzero(~index.duplicated(keep="last"))  # a repeated id: its last row, as a dict would keep
    at = index[last].get_indexer(np.asarray(list(ids), dtype=object))  # one hash lookup, not a dict per row
    pos = np.flatnonzero(at >= 0)
    at = last[at]
    return vectors[at[pos]], pos.astype(np.int64)


def check_dims(path: Path, expected: int) -> None:
    with reading(path):
        schema = _schema(path)
    dim = _embedding_dim(path, schema)
    if dim != expected:
        raise BadInputError(f"{path.name}: vectors have {dim} dimensions, expected {expected}")
