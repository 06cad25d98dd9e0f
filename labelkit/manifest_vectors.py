"""A manifest's own vectors (its ``embedding`` column), read when a stage needs them.

Discovery reads none of a Parquet manifest's vectors: at 10M x 512 they are 10-20 GB, and only
the embed and predict stages use them. They are read in row batches, checked batch by batch (the
first bad row gets a one-line message naming it), and fingerprinted from the column's stored
bytes. A CSV manifest's vectors are text already in memory; they are parsed and checked at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelkit.errors import BadInputError

BATCH_ROWS = 65_536  # rows per read: 128 MB of float32 at 512-d


def require_direction(block: np.ndarray) -> None:
    """Refuse a block holding an all-zero vector (nothing to normalise); the embed and predict stages' check."""
    if np.any(np.max(np.abs(block), axis=1) == 0):  # not the norm: squares of 1e20 overflow float32
        raise BadInputError("the manifest's 'embedding' column has an all-zero vector; it has no direction to normalise")


class ManifestVectors:
    """(N, D) vectors of a manifest, after dropping the rows discovery dropped (``keep``).

    ``batches()`` yields checked float32 blocks in row order; ``load()`` returns them all.
    """

    def __init__(self, name: str, *, path: Path | None = None, array: np.ndarray | None = None):
        self.name, self.path, self._array = name, path, array
        self._keep: np.ndarray | None = None  # rows kept by discovery (None: all)
        self._dim: int | None = None

    @classmethod
    def from_cells(cls, cells: pd.Series, name: str) -> ManifestVectors:
        """Vectors written as cells (lists, or JSON text in a CSV), parsed and checked now."""
        return cls(name, array=cells_to_array(cells, name))

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False (files discovery could not read)."""
        self._keep = np.asarray(mask, dtype=bool) if self._keep is None else _compose(self._keep, mask)

    def __len__(self) -> int:
        if self._keep is not None:
            return int(self._keep.sum())
        return len(self._array) if self._array is not None else pq.ParquetFile(self.path).metadata.num_rows

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self._array is not None:
                self._dim = self._array.shape[1]
            else:
                typ = pq.read_schema(self.path).field("embedding").type
                self._dim = typ.list_size if pa.types.is_fixed_size_list(typ) else next(self.batches(rows=1024)).shape[1]
        return self._dim

    def batches(self, rows: int = BATCH_ROWS) -> Iterator[np.ndarray]:
        """Checked float32 (n, D) blocks of the kept rows, in order (bounded memory)."""
        keep = self._keep
        if self._array is not None:
            arr = self._array if keep is None else self._array[keep]
            for s in range(0, len(arr), rows):
                yield arr[s : s + rows]
            return
        start, width = 0, None
        for block in _parquet_blocks(self.path, self.name, rows):
            vecs, width = check_block(block, self.name, start, width)
            n = len(block)
            if keep is not None:
                vecs = vecs[keep[start : start + n]]
            start += n
            if len(vecs):
                yield vecs

    def load(self) -> np.ndarray:
        """Every kept row as one checked float32 (N, D) array."""
        if self._array is not None:
            return self._array if self._keep is None else self._array[self._keep]
        out = np.empty((len(self), self.dim), np.float32)  # filled batch by batch: peak = output + one batch
        row = 0
        for vecs in self.batches():
            out[row : row + len(vecs)] = vecs
            row += len(vecs)
        return out

    def update_hash(self, h) -> None:
        """Feed the vectors' content into hash ``h``: the column's stored bytes, not its rows."""
        if self._keep is not None:
            h.update(np.packbits(self._keep).tobytes())
        if self._array is not None:
            h.update(np.ascontiguousarray(self._array).tobytes())
            return
        f = pq.ParquetFile(self.path)
        col = f.schema_arrow.get_field_index("embedding")
        with open(self.path, "rb") as raw:
            for g in range(f.metadata.num_row_groups):
                c = f.metadata.row_group(g).column(col)
                first = c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset
                raw.seek(first)
                left = c.total_compressed_size
                h.update(f"{c.physical_type}:{c.compression}:{left};".encode())
                while left > 0:
                    chunk = raw.read(min(left, 1 << 24))
                    if not chunk:
                        break
                    h.update(chunk)
                    left -= len(chunk)


def _compose(old: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = old.copy()
    out[np.flatnonzero(old)[~np.asarray(mask, dtype=bool)]] = False
    return out


def _parquet_blocks(path: Path, name: str, rows: int) -> Iterator[pa.Array]:
    try:
        f = pq.ParquetFile(path, memory_map=True)
        for batch in f.iter_batches(batch_size=rows, columns=["embedding"], use_threads=True):
            yield batch.column(0)
    except (OSError, pa.ArrowException) as e:
        raise BadInputError(f"{name}: cannot read the 'embedding' column ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def check_block(arr: pa.Array, name: str, start: int, width: int | None) -> tuple[np.ndarray, int]:
    """Rows ``start`` .. of an Arrow list column of numbers as checked float32 (n, D), and D.

    Raises a one-line BadInputError naming the first bad row (a row is its line in the manifest:
    the first data row is row 2). ``width`` is the length of the first vector seen so far.
    """
    typ = arr.type
    listy = pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)
    if not listy or not (pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)):
        vecs = cells_to_array(arr.to_pandas(), name, first_row=start + 2, width=width)
        return vecs, vecs.shape[1]
    n = len(arr)
    null = arr.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(typ):
        lengths = np.full(n, typ.list_size, dtype=np.int64)
        lengths[null] = 0
    else:
        lengths = np.diff(arr.offsets.to_numpy()).astype(np.int64)
    if width is None:
        width = int(lengths[np.argmax(~null)]) if (~null).any() else 0
    mismatch = ~null & (lengths != width)
    bad = null | (lengths == 0) | mismatch
    first = int(np.argmax(bad)) if bad.any() else n
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False)  # null rows add nothing
    good = values[: first * width].reshape(first, width)  # the rows before the first malformed one
    nonfinite = np.flatnonzero(~np.isfinite(good).all(axis=1)) if good.dtype.kind == "f" else np.zeros(0, np.int64)
    if nonfinite.size:
        raise BadInputError(f"{name}: row {start + int(nonfinite[0]) + 2} 'embedding' contains NaN or infinite values")
    if first < n:
        row = start + first + 2
        if null[first]:
            raise BadInputError(f"{name}: row {row} has no 'embedding'")
        if lengths[first] == 0:
            raise BadInputError(f"{name}: row {row} 'embedding' is not a flat list of numbers")
        raise BadInputError(f"{name}: row {row} 'embedding' has {lengths[first]} values, row 2 has {width}; vectors must all have one length")
    return good.astype(np.float32, copy=False), width


def cells_to_array(cells, name: str, *, first_row: int = 2, width: int | None = None) -> np.ndarray:
    """Vectors written as cells (lists, or JSON text) as checked float32 (n, D), one Python object per row."""
    rows = []
    for row, v in enumerate(cells, start=first_row):
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise BadInputError(f"{name}: row {row} 'embedding' is not a list of numbers") from None
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise BadInputError(f"{name}: row {row} has no 'embedding'")
        try:
            arr = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadInputError(f"{name}: row {row} 'embedding' is not a list of numbers") from None
        if arr.ndim != 1 or arr.size == 0:
            raise BadInputError(f"{name}: row {row} 'embedding' is not a flat list of numbers")
        width = arr.size if width is None else width
        if arr.size != width:
            raise BadInputError(f"{name}: row {row} 'embedding' has {arr.size} values, row 2 has {width}; vectors must all have one length")
        if not np.all(np.isfinite(arr)):
            raise BadInputError(f"{name}: row {row} 'embedding' contains NaN or infinite values")
        rows.append(arr)
    return np.stack(rows) if rows else np.zeros((0, width or 0), np.float32)
