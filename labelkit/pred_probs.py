"""A user's out-of-sample probabilities (``labelkit detect-noise --pred-probs FILE``): read and validate.

:func:`load_pred_probs` reads a .npy or .parquet file into an (N, K) array in samples order;
:func:`normalise_rows` checks that each row is a probability distribution (within rounding) and
rescales it exactly. Every problem is a one-line BadInputError that names the file and the row.

Both are vectorised: a million rows by a hundred classes are read with only the needed columns,
memory-mapped, transposed into rows a block at a time (a column-by-column scatter into a C-order
matrix is ten times slower), and checked with whole-array reductions; a per-row look happens only
to name the first bad row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit._progress import NULL, Progress
from labelkit.dataset import Samples
from labelkit.errors import BadInputError

# Row sums of --pred-probs may be off by rounding (IMDB's published file by ~1e-5, float16 by ~1e-3);
# past this absolute tolerance a row is not a probability distribution and needs --renormalize.
SUM_TOLERANCE = 1e-3
_BLOCK = 16384  # rows per transposing block (measured at K = 100: 0.9 s for 1M rows; column by column 12 s)
_CACHE_BYTES = 2**21  # rows of float64 per block in normalise_rows: about 2 MB, within a core's cache


def load_pred_probs(path: Path, samples: Samples, *, progress: Progress = NULL) -> np.ndarray:
    """(N, K) probabilities in samples order from .npy (rows = samples or labeled samples) or .parquet.

    A .parquet has an 'id' column (unique) and exactly one column per class: a column that is not a
    class, or a class without a column, is an error naming them (sums are checked by normalise_rows).
    Rows of samples that the file does not cover are NaN (only unlabeled samples may lack a row).
    A float32 (or float16) file gives float32, else float64: :func:`normalise_rows` widens it.
    ``progress`` gets one task, advanced per batch of rows read (rate and ETA on the terminal).
    """
    k, n = len(samples.classes), len(samples.table)
    labeled = samples.table["label"].notna().to_numpy()
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BadInputError(f"--pred-probs {path.name}: cannot read ({e})") from None
        if arr.ndim != 2 or arr.shape[1] != k:
            raise BadInputError(f"--pred-probs {path.name}: expected shape (n, {k}) with columns in sorted class order {samples.classes[:5]}; got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise BadInputError(f"--pred-probs {path.name}: holds {arr.dtype} values, not probabilities")
        dtype = np.float32 if arr.dtype in (np.float16, np.float32) else np.float64
        if arr.shape[0] == n:
            return np.array(arr, dtype=dtype)
        if arr.shape[0] == labeled.sum():
            out = np.full((n, k), np.nan, dtype=dtype)
            out[labeled] = arr
            return out
        raise BadInputError(f"--pred-probs {path.name}: {arr.shape[0]} rows, but there are {n} samples ({labeled.sum()} labeled)")
    if path.suffix == ".parquet":
        return _load_parquet(path, samples, labeled, progress)
    raise BadInputError(f"--pred-probs {path.name}: use a .npy or .parquet file")


def _load_parquet(path: Path, samples: Samples, labeled: np.ndarray, progress: Progress) -> np.ndarray:
    name, classes = path.name, samples.classes
    try:
        pf = pq.ParquetFile(path, memory_map=True)
        schema = pf.schema_arrow
    except (OSError, pa.ArrowException) as e:
        raise BadInputError(f"--pred-probs {name}: cannot read ({_first_line(e)})") from None
    index_cols = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    cols = [str(c) for c in schema.names if c not in index_cols]  # a pandas index stored as a column is not data
    if "id" not in cols:
        raise BadInputError(f"--pred-probs {name}: no 'id' column (needs 'id' and one column per class)")
    extra = [c for c in cols if c != "id" and c not in classes]
    if extra:
        raise BadInputError(f"--pred-probs {name}: column{'s' if len(extra) > 1 else ''} {_names(extra)} {'are' if len(extra) > 1 else 'is'} not among "
                            f"the dataset's classes {_names(classes)}; the file must have 'id' and one column per class, nothing else")
    missing = [c for c in classes if c not in cols]
    if missing:
        raise BadInputError(f"--pred-probs {name}: no column for class{'es' if len(missing) > 1 else ''} {_names(missing)} (needs 'id' and one column per class)")
    try:
        ids = _ids(pf.read(columns=["id"]).column("id"), name)
        sample_ids = samples.table["id"].to_numpy(dtype=object)
        where = _file_rows_to_samples(ids, sample_ids, labeled, name)
        with progress.task(f"read {name}", total=pf.metadata.num_rows) as task:
            return _class_matrix(pf, classes, _dtype(schema, classes), where, len(sample_ids), name, task)
    except (OSError, pa.ArrowException) as e:
        raise BadInputError(f"--pred-probs {name}: cannot read ({_first_line(e)})") from None


def _dtype(schema: pa.Schema, classes: list[str]) -> np.dtype:
    """float32 when every class column is float32 or narrower (then rows are widened a block at a time, later); else float64."""
    narrow = all(pa.types.is_floating(schema.field(c).type) and schema.field(c).type.bit_width <= 32 for c in classes)
    return np.dtype(np.float32 if narrow else np.float64)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _ids(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """The 'id' column as an object array of str; a missing or repeated id is an error."""
    if col.null_count:
        first = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise BadInputError(f"--pred-probs {name}: row {first + 1} has no 'id'")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type):
        ids = col.cast(pa.large_string()).to_numpy(zero_copy_only=False)  # str(int) and Arrow's cast agree
    else:
        ids = np.array([str(v) for v in col.to_pandas()], dtype=object)
    index = pd.Index(ids, dtype=object)
    if not index.is_unique:
        dup = index.duplicated()
        raise BadInputError(f"--pred-probs {name}: duplicate id '{ids[int(np.argmax(dup))]}' ({int(index.duplicated(keep=False).sum())} rows "
                            "share an id); give each sample one row")
    return ids


def _numbers(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """A class column as a numpy float array (nulls as NaN); zero-copy for a float column without nulls."""
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        arr = col.to_numpy() if col.null_count == 0 and pa.types.is_floating(col.type) else col.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
        return arr
    try:
        return np.asarray(col.to_pandas().to_numpy(dtype=object), dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInputError(f"--pred-probs {name}: the class columns must hold numbers") from None


def _file_rows_to_samples(file_ids: np.ndarray, sample_ids: np.ndarray, labeled: np.ndarray, name: str) -> np.ndarray | None:
    """For each file row, its sample's position (-1: not a sample); None when the file lists exactly the samples, in order."""
    if len(file_ids) == len(sample_ids) and bool((file_ids == sample_ids).all()):
        return None
    where = pd.Index(sample_ids, dtype=object).get_indexer(file_ids)
    covered = np.zeros(len(sample_ids), dtype=bool)
    covered[where[where >= 0]] = True
    absent = labeled & ~covered
    if absent.any():
        raise BadInputError(f"--pred-probs {name}: no row for labeled id '{sample_ids[int(np.argmax(absent))]}'")
    return where


def _class_matrix(pf: pq.ParquetFile, classes: list[str], dtype: np.dtype, where: np.ndarray | None, n: int, name: str, task) -> np.ndarray:
    """(n, K) in samples order (NaN for samples without a row), read a batch of rows at a time.

    Each batch's columns are copied into a (K, batch) buffer and transposed into place in one copy:
    cache-friendly, where a column-by-column scatter into a C-order matrix is ten times slower.
    Only one batch of Arrow memory is alive at a time.
    """
    out = np.empty((n, len(classes)), dtype=dtype) if where is None else np.full((n, len(classes)), np.nan, dtype=dtype)
    block = np.empty((len(classes), _BLOCK), dtype=dtype)
    s = 0
    for batch in pf.iter_batches(batch_size=_BLOCK, columns=classes):
        e = s + batch.num_rows
        for j in range(len(classes)):
            block[j, : e - s] = _numbers(batch.column(j), name)
        if where is None:
            out[s:e] = block[:, : e - s].T
        else:
            to = where[s:e]
            keep = to >= 0
            out[to[keep]] = block[:, : e - s].T[keep]
        task.advance(e - s)
        s = e
    return out


def _names(names: list[str], n: int = 5) -> str:
    return ", ".join(repr(c) for c in names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def normalise_rows(p: np.ndarray, name: str, *, renormalize: bool = False, ids: np.ndarray | None = None) -> np.ndarray:
    """Rows that sum to 1 within SUM_TOLERANCE, rescaled exactly; others an error unless ``renormalize``.

    Parameters
    ----------
    p : ndarray of shape (n_samples, n_classes)
        Probabilities; left unchanged (the result is a new float64 array).
    name : str
        What to call the input in messages (e.g. ``--pred-probs p.parquet``).
    renormalize : bool, default=False
        Rescale rows whose sum is off by more than SUM_TOLERANCE instead of refusing them.
    ids : ndarray of shape (n_samples,), default=None
        Sample ids, to name the first bad row by id rather than by number.

    Returns
    -------
    ndarray of shape (n_samples, n_classes)
        Each row divided by its sum (entries in [-1e-6, 0) clipped to 0 first).

    >>> normalise_rows(np.array([[0.25, 0.75], [0.4998, 0.4998]]), "p").round(4).tolist()
    [[0.25, 0.75], [0.5, 0.5]]
    """
    where = (lambda i: f"id '{ids[i]}'") if ids is not None else (lambda i: f"row {i + 1}")
    n = len(p)
    rows = max(256, _CACHE_BYTES // max(1, 8 * p.shape[1]))
    out = np.empty(p.shape, dtype=np.float64)
    s, low = np.empty(n), np.empty(n)
    # One pass, a block of rows at a time (the block stays in cache): row sums, row minima, and
    # the division, which is redone below for the few rows that need clipping.
    with np.errstate(invalid="ignore", divide="ignore"):
        for a in range(0, n, rows):
            blk = p[a:a + rows].astype(np.float64, copy=False)  # float32 files: widened here, a cached block at a time
            s[a:a + rows] = blk.sum(axis=1)
            low[a:a + rows] = blk.min(axis=1) if blk.shape[1] else 0.0
            np.divide(blk, s[a:a + rows, None], out=out[a:a + rows])
    # A finite row sum means every entry of the row is finite (NaN and inf propagate), except for
    # an overflow, which the entry-wise look below still names.
    bad_sum = ~np.isfinite(s)
    if bad_sum.any():
        finite = np.isfinite(p[bad_sum]).all(axis=1)
        if not finite.all():
            first = int(np.flatnonzero(bad_sum)[int(np.argmin(finite))])
            raise BadInputError(f"{name}: probabilities contain NaN or infinite values for labeled samples (first: {where(first)})")
    if low.min(initial=0.0) < -1e-6:
        raise BadInputError(f"{name}: probabilities must be >= 0 (first negative: {where(int(np.argmin(low)))})")
    negative = np.flatnonzero(low < 0)
    if negative.size:  # rounding below zero: clip those rows, and recompute their sums
        clipped = np.clip(p[negative].astype(np.float64), 0, None)
        s[negative] = clipped.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[negative] = clipped / s[negative, None]
    if np.any(s <= 0):
        raise BadInputError(f"{name}: the row for {where(int(np.argmin(s)))} sums to 0")
    off = np.abs(s - 1) > SUM_TOLERANCE
    if off.any() and not renormalize:
        i = int(np.argmax(off))
        raise BadInputError(f"{name}: {int(off.sum())} of {len(p)} rows do not sum to 1 within {SUM_TOLERANCE:g} "
                            f"(first: {where(i)} sums to {s[i]:.6g}); pass --renormalize to rescale them, or fix the file")
    return out
