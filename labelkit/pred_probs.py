"""A user's out-of-sample probabilities (``labelkit detect-noise --pred-probs FILE``): read and validate.

:func:`read_pred_probs` reads the rows of the samples asked for (the labeled ones) from a .npy or
.parquet file, in samples order, and checks that each row is a probability distribution (within
rounding) and rescales it exactly (:func:`normalise_rows`), in the same pass. Every problem is a
one-line BadInputError that names the file and the row.

Vectorised: a million rows by a hundred classes are read with only the needed columns,
memory-mapped, transposed into rows a cached block at a time (a column-by-column scatter into a
C-order matrix is ten times slower), checked with whole-array reductions, and written straight to
their place in the result; a per-row look happens only to name the first bad row.
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelkit._progress import NULL, Progress
from labelkit.dataset import Samples
from labelkit.errors import BadInputError

# Row sums of --pred-probs may be off by rounding (IMDB's published file by ~1e-5, float16 by ~1e-3);
# past this absolute tolerance a row is not a probability distribution and needs --renormalize.
SUM_TOLERANCE = 1e-3
_BLOCK = 16384  # rows per transposing block (measured at K = 100: 0.9 s for 1M rows; column by column 12 s)
_CACHE_BYTES = 2**21  # rows of float64 per block in normalise_rows: about 2 MB, within a core's cache


def read_pred_probs(path: Path, samples: Samples, rows: np.ndarray | None = None, *, renormalize: bool = False,
                    progress: Progress = NULL) -> np.ndarray:
    """(len(rows), K) normalised probabilities of the samples ``rows`` (default: the labeled ones), from .npy or .parquet.

    A .npy has one row per sample, or one per labeled sample, in samples order, columns in sorted
    class order. A .parquet has an 'id' column (unique) and exactly one column per class: a column
    that is not a class, or a class without a column, is an error naming them; its rows may be in
    any order, and only the samples asked for need one. Each row is checked and rescaled as
    :func:`normalise_rows` does, in the same pass that reads it: no (N, K) copy of the file is
    made. A float32 (or float16) file gives float32, else float64. ``progress`` gets one task,
    advanced per batch of rows read (rate and ETA on the terminal).
    """
    n = len(samples.table)
    labeled = samples.table["label"].notna().to_numpy() if rows is None or path.suffix == ".npy" else None  # a Parquet read of given rows needs none
    rows = np.flatnonzero(labeled) if rows is None else np.asarray(rows, dtype=np.int64)
    label = f"--pred-probs {path.name}"
    ids = samples.table["id"].to_numpy(dtype=object)

    def finish(norm: _Normaliser) -> np.ndarray:
        return norm.finish(label, renormalize=renormalize, ids=ids[rows] if n else None)

    if path.suffix == ".npy":
        probs = finish(_read_npy(path, samples, labeled, rows))
        codes = samples.label_codes()[rows]
        known = codes >= 0
        wrong = numeric_column_order(probs[known], codes[known], samples.classes)
        if wrong is not None:  # columns in 0, 1, 2, ..., 10 order where the names sort as '0', '1', '10', ...
            raise BadInputError(f"{label}: its columns look like the classes in numeric order ({', '.join(samples.classes[i] for i in wrong[2][:4])}, ...): "
                                f"its top class matches {wrong[1]:.0%} of the labels that way, {wrong[0]:.0%} in the sorted-name order a .npy "
                                f"must use ({', '.join(samples.classes[:4])}, ...); reorder its columns, or give a .parquet with a column per class")
        return probs
    if path.suffix == ".parquet":
        return _read_parquet(path, samples, rows, ids, progress, finish)
    raise BadInputError(f"--pred-probs {path.name}: use a .npy or .parquet file")


def numeric_column_order(probs: np.ndarray, codes: np.ndarray, classes: list[str], *, margin: float = 0.2):
    """(accuracy as given, accuracy in numeric order, numeric order) when columns ordered by the class
    names' numeric values explain the labels far better (by ``margin``) than the sorted-name order
    they must be in; else None. Only for names that are all integers whose two orders differ.

    A .npy of probabilities has no column names, and classes named 0-19 sort as '0', '1', '10', ...:
    a file written in numeric order then scores every row against the wrong class, silently.

    >>> p = np.eye(3)[[0, 1, 2, 2]]  # columns in numeric order 2, 10, 11 (sorted names: '10', '11', '2')
    >>> acc, num, order = numeric_column_order(p, np.array([2, 0, 1, 1]), ["10", "11", "2"])
    >>> round(acc, 2), round(num, 2), order.tolist()
    (0.0, 1.0, [2, 0, 1])
    """
    try:
        values = [int(c) for c in classes]
    except ValueError:
        return None
    order = np.argsort(values, kind="stable")  # column j of a numeric-order file holds class order[j]
    if (order == np.arange(len(classes))).all() or len(codes) == 0:
        return None
    top = probs.argmax(axis=1)
    as_given, numeric = float(np.mean(top == codes)), float(np.mean(order[top] == codes))
    return (as_given, numeric, order) if numeric > as_given + margin else None


def _read_npy(path: Path, samples: Samples, labeled: np.ndarray, rows: np.ndarray) -> _Normaliser:
    k, n = len(samples.classes), len(samples.table)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise BadInputError(f"--pred-probs {path.name}: cannot read ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != k:
        raise BadInputError(f"--pred-probs {path.name}: expected shape (n, {k}) with columns in sorted class order {samples.classes[:5]}; got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise BadInputError(f"--pred-probs {path.name}: holds {arr.dtype} values, not probabilities")
    if arr.shape[0] == n:
        at = rows
    elif arr.shape[0] == labeled.sum():
        if not labeled[rows].all():
            raise BadInputError(f"--pred-probs {path.name}: has rows for the labeled samples only, but unlabeled ones were asked for")
        at = (np.cumsum(labeled) - 1)[rows]  # file row of each labeled sample
    else:
        raise BadInputError(f"--pred-probs {path.name}: {arr.shape[0]} rows, but there are {n} samples ({labeled.sum()} labeled)")
    norm = _Normaliser(len(rows), k, _out_dtype(arr.dtype))
    step = norm.block_rows
    contiguous = at.size and at[-1] - at[0] == at.size - 1 and bool((np.diff(at) == 1).all())
    for a in range(0, at.size, step):
        norm.add(arr[at[0] + a:at[0] + a + step] if contiguous else arr[at[a:a + step]], slice(a, a + step))
    return norm


def _read_parquet(path: Path, samples: Samples, rows: np.ndarray, sample_ids: np.ndarray, progress: Progress, finish) -> np.ndarray:
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
        col = pf.read(columns=["id"]).column("id")
        wanted = np.zeros(len(sample_ids), dtype=bool)
        wanted[rows] = True
        where = None if _same_ids(col, samples, name) else _file_rows_to_samples(_ids(col, name), sample_ids, wanted, name)
        # File row -> output row (-1: not asked for).
        out_of = np.full(len(sample_ids), -1, dtype=np.int64)
        out_of[rows] = np.arange(rows.size)
        dest = out_of if where is None else np.where(where >= 0, out_of[np.maximum(where, 0)], -1)
        norm = _Normaliser(rows.size, len(classes), _out_dtype(_dtype(schema, classes)))
        with progress.task(f"read {name}", total=pf.metadata.num_rows) as task:  # a bad row ends it with its one-line error
            _stream_rows(pf, classes, _dtype(schema, classes), dest, norm, name, task)
            return finish(norm)
    except (OSError, pa.ArrowException) as e:
        raise BadInputError(f"--pred-probs {name}: cannot read ({_first_line(e)})") from None


def _dtype(schema: pa.Schema, classes: list[str]) -> np.dtype:
    """float32 when every class column is float32 or narrower (then rows are widened a block at a time, later); else float64."""
    narrow = all(pa.types.is_floating(schema.field(c).type) and schema.field(c).type.bit_width <= 32 for c in classes)
    return np.dtype(np.float32 if narrow else np.float64)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _ids(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """The 'id' column as an object array of str; a missing id is an error (a repeated one: :func:`_file_rows_to_samples`)."""
    if col.null_count:
        first = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise BadInputError(f"--pred-probs {name}: row {first + 1} has no 'id'")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type):
        ids = col.cast(pa.large_string()).to_numpy(zero_copy_only=False)  # str(int) and Arrow's cast agree
    else:
        ids = np.array([str(v) for v in col.to_pandas()], dtype=object)
    return ids


def _same_ids(col: pa.ChunkedArray, samples: Samples, name: str) -> bool:
    """Whether the 'id' column lists exactly the samples' ids, in order, compared in Arrow (no
    Python string per row; the samples' ids as discovery read them); a missing id is an error, as in :func:`_ids`."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type)) or len(col) != len(samples.table):
        return False  # other types: compared as :func:`_ids` reads them
    if col.null_count:
        _ids(col, name)  # its message
    try:
        ours = samples.arrow_column("id")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all strings: compared as Python objects
        return False
    return bool(pc.all(pc.equal(col.cast(pa.large_string()), ours)).as_py())  # str(int) and Arrow's cast agree


def _numbers(col: pa.ChunkedArray, name: str) -> np.ndarray:
    """A class column as a numpy float array (nulls as NaN); zero-copy for a float column without nulls."""
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        arr = col.to_numpy() if col.null_count == 0 and pa.types.is_floating(col.type) else col.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)
        return arr
    try:
        return np.asarray(col.to_pandas().to_numpy(dtype=object), dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInputError(f"--pred-probs {name}: the class columns must hold numbers") from None


def _file_rows_to_samples(file_ids: np.ndarray, sample_ids: np.ndarray, wanted: np.ndarray, name: str) -> np.ndarray | None:
    """For each file row, its sample's position (-1: not a sample); None when the file lists exactly the samples, in order.

    A repeated id is an error; the sample ids are unique, so a file that lists them in order needs
    no check of its own (which would hash every id).
    """
    if len(file_ids) == len(sample_ids) and bool((file_ids == sample_ids).all()):
        return None
    index = pd.Index(file_ids, dtype=object)
    if not index.is_unique:
        dup = index.duplicated()
        raise BadInputError(f"--pred-probs {name}: duplicate id '{file_ids[int(np.argmax(dup))]}' ({int(index.duplicated(keep=False).sum())} rows "
                            "share an id); give each sample one row")
    where = pd.Index(sample_ids, dtype=object).get_indexer(file_ids)
    covered = np.zeros(len(sample_ids), dtype=bool)
    covered[where[where >= 0]] = True
    absent = wanted & ~covered
    if absent.any():
        raise BadInputError(f"--pred-probs {name}: no row for labeled id '{sample_ids[int(np.argmax(absent))]}'")
    return where


def _stream_rows(pf: pq.ParquetFile, classes: list[str], dtype: np.dtype, dest: np.ndarray, norm: _Normaliser, name: str, task) -> None:
    """Each batch of file rows: its columns into a (K, batch) buffer, then the rows asked for, a
    cached block at a time, transposed, checked and rescaled into ``norm.out[dest]``.

    Column by column into a C-order matrix is ten times slower than this transposing buffer. A
    worker thread decodes the next batch into the other of two buffers meanwhile (pyarrow's decode
    and numpy's copies release the GIL); at most two batches of Arrow memory are alive at a time.
    """
    bufs = [np.empty((len(classes), _BLOCK), dtype=dtype) for _ in range(2)]
    batches = iter(pf.iter_batches(batch_size=_BLOCK, columns=classes))

    def fill(block: np.ndarray) -> int:  # the next batch's rows into block; 0 at the end
        batch = next(batches, None)
        if batch is None:
            return 0
        for j, col in enumerate(batch.columns):
            block[j, : batch.num_rows] = _numbers(col, name)
        return batch.num_rows

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pred-probs") as worker:
        pending, s, i = worker.submit(fill, bufs[0]), 0, 0
        while m := pending.result():  # a decoding error is raised here
            block, i = bufs[i % 2], i + 1
            pending = worker.submit(fill, bufs[i % 2])
            _place_batch(block, dest[s:s + m], norm)
            task.advance(m)
            s += m


def _place_batch(block: np.ndarray, to: np.ndarray, norm: _Normaliser) -> None:
    """One decoded batch (``block``'s columns: its file rows) into ``norm.out``: file row r goes to
    row ``to[r]`` (-1: not asked for), a cached block of rows at a time."""
    keep = np.flatnonzero(to >= 0)
    for a in range(0, keep.size, norm.block_rows):
        pick, at = keep[a:a + norm.block_rows], to[keep[a:a + norm.block_rows]]
        run = pick[-1] - pick[0] == pick.size - 1 and at[-1] - at[0] == at.size - 1 and bool((np.diff(at) == 1).all())
        if run:  # consecutive file rows to consecutive places: transposed straight into them
            norm.add_columns(block[:, pick[0]:pick[-1] + 1], slice(at[0], at[-1] + 1))
        else:
            norm.add(np.ascontiguousarray(block[:, pick].T), at)


def _names(names: list[str], n: int = 5) -> str:
    return ", ".join(repr(c) for c in names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def normalise_rows(p: np.ndarray, name: str, *, renormalize: bool = False, ids: np.ndarray | None = None) -> np.ndarray:
    """Rows that sum to 1 within SUM_TOLERANCE, rescaled exactly; others an error unless ``renormalize``.

    Parameters
    ----------
    p : ndarray of shape (n_samples, n_classes)
        Probabilities; left unchanged (the result is a new array).
    name : str
        What to call the input in messages (e.g. ``--pred-probs p.parquet``).
    renormalize : bool, default=False
        Rescale rows whose sum is off by more than SUM_TOLERANCE instead of refusing them.
    ids : ndarray of shape (n_samples,), default=None
        Sample ids, to name the first bad row by id rather than by number.

    Returns
    -------
    ndarray of shape (n_samples, n_classes)
        Each row rescaled by its sum (entries in [-1e-6, 0) clipped to 0 first; sums in
        float64); float32 when ``p`` is float32 or narrower, else float64.

    >>> normalise_rows(np.array([[0.25, 0.75], [0.4998, 0.4998]]), "p").round(4).tolist()
    [[0.25, 0.75], [0.5, 0.5]]
    """
    norm = _Normaliser(len(p), p.shape[1], _out_dtype(p.dtype))
    rows = norm.block_rows
    for a in range(0, len(p), rows):
        norm.add(p[a:a + rows], slice(a, a + rows))
    return norm.finish(name, renormalize=renormalize, ids=ids)


def _written_once(n: int, k: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised (n, k) array in ordinary 4 KB pages, for a buffer written once front to back.

    numpy asks the kernel for transparent huge pages on every array of 4 MB or more
    (MADV_HUGEPAGE); with the kernel's default defrag policy for such memory each 2 MB fault may
    first compact memory, and on a busy machine that stalls: filling the result that way cost
    several times the system time of 4 KB pages (docs/performance.md, detect-noise --pred-probs).
    An anonymous mapping is not so advised; it is unmapped when the array is freed. Its pages are
    populated when it is mapped (MAP_POPULATE, where the OS has it): one call that zeroes them
    all costs about half the system time of faulting them in one at a time as they are written.
    """
    nbytes = n * k * dtype.itemsize
    if nbytes < 1 << 22:  # below numpy's threshold: nothing to avoid
        return np.empty((n, k), dtype=dtype)
    if hasattr(mmap, "MAP_POPULATE"):  # Linux
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    else:
        buf = mmap.mmap(-1, nbytes)
    return np.frombuffer(buf, dtype=dtype).reshape(n, k)


def _out_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32 if dtype in (np.float16, np.float32) else np.float64)


class _Normaliser:
    """:func:`normalise_rows` a block of rows at a time (the block stays in cache), into ``out``.

    Each block's row sums and minima are kept for the checks, which :meth:`finish` makes in row
    order once every row is in; a row with entries in [-1e-6, 0) is clipped and re-summed as its
    block goes by, so nothing needs a second look at the input.
    """

    def __init__(self, n: int, k: int, dtype: np.dtype) -> None:
        self.out = _written_once(n, k, np.dtype(dtype))
        self.sums, self.low = np.empty(n), np.empty(n)
        self.nonfinite = np.zeros(n, dtype=bool)
        self.block_rows = max(256, _CACHE_BYTES // max(1, 8 * k))

    def add(self, blk: np.ndarray, dst) -> None:
        """Rows ``blk`` (any float dtype) go to ``out[dst]`` (a slice, or row positions).

        Sums are accumulated in float64 whatever the input; a float32 block is rescaled in float32
        (by its row's float64 reciprocal, within one float32 rounding of the exact quotient).
        """
        if blk.dtype != self.out.dtype:
            blk = blk.astype(self.out.dtype)
        self._scale(blk, dst)

    def add_columns(self, cols: np.ndarray, dst: slice) -> None:
        """Rows given as the columns of ``cols`` (n_classes, n_rows) go to ``out[dst]``: transposed
        into place, then checked and rescaled there as :meth:`add` does (no intermediate copy)."""
        blk = self.out[dst]
        np.copyto(blk, cols.T)
        self._scale(blk, dst)

    def _scale(self, blk: np.ndarray, dst) -> None:
        """:meth:`add`'s checks and rescaling of ``blk`` (of out's dtype; may be ``out[dst]`` itself)."""
        s = blk.sum(axis=1, dtype=np.float64)
        low = np.zeros(len(blk))
        if blk.size and blk.min() < 0:  # only then per row: the check and the clip need it
            low = blk.min(axis=1).astype(np.float64)
            neg = np.flatnonzero((low < 0) & (low >= -1e-6))
            if neg.size:  # rounding below zero: clip those rows, and re-sum them
                blk = blk.copy()
                blk[neg] = np.clip(blk[neg], 0, None)
                s[neg] = blk[neg].sum(axis=1, dtype=np.float64)
        bad = ~np.isfinite(s)  # a finite row sum means every entry is finite (NaN and inf propagate), or an overflow
        if bad.any():  # before rescaling: blk may be out[dst] itself
            self.nonfinite[np.arange(self.out.shape[0])[dst][bad]] = ~np.isfinite(blk[bad]).all(axis=1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            scale = (1.0 / s).astype(blk.dtype)[:, None]
            if isinstance(dst, slice):
                np.multiply(blk, scale, out=self.out[dst])
            else:
                self.out[dst] = blk * scale
        self.sums[dst], self.low[dst] = s, low

    def finish(self, name: str, *, renormalize: bool, ids: np.ndarray | None) -> np.ndarray:
        where = (lambda i: f"id '{ids[i]}'") if ids is not None else (lambda i: f"row {i + 1}")
        s, low = self.sums, self.low
        if self.nonfinite.any():
            raise BadInputError(f"{name}: probabilities contain NaN or infinite values for labeled samples (first: {where(int(np.argmax(self.nonfinite)))})")
        if low.min(initial=0.0) < -1e-6:
            raise BadInputError(f"{name}: probabilities must be >= 0 (first negative: {where(int(np.argmin(low)))})")
        if np.any(s <= 0):
            raise BadInputError(f"{name}: the row for {where(int(np.argmin(s)))} sums to 0")
        off = np.abs(s - 1) > SUM_TOLERANCE
        if off.any() and not renormalize:
            i = int(np.argmax(off))
            raise BadInputError(f"{name}: {int(off.sum())} of {len(s)} rows do not sum to 1 within {SUM_TOLERANCE:g} "
                                f"(first: {where(i)} sums to {s[i]:.6g}); pass --renormalize to rescale them, or fix the file")
        return self.out
