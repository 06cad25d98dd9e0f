"""Discover a DATA folder (manifest, image folder, or vectors) into a samples table.

Recognised, in this order:
1. ``DATA/labels.csv`` or ``DATA/labels.parquet``: one row per sample with ``path`` (relative to
   DATA) or ``text``, and ``label`` (empty = unlabeled); optional ``id``, ``split``, ``labels``
   (multi-label: a list, or ``|``-separated) and ``embedding`` (the user's own vectors).
2. An image folder: ``DATA/<class>/**/<image>`` labeled with the folder name,
   ``DATA/unlabeled/**/<image>`` unlabeled.

Meaning is preserved and nothing is dropped in silence (docs/getting-started.md, "What DATA may
hold"): label strings are taken as written, NFC-normalised; only a truly missing value (an empty
cell, a Parquet null, a NaN float) means unlabeled, and the strings pandas would read as missing
('nan', 'None', 'NA', 'null', ...) or 'unlabeled' are read as unlabeled *with a notice counting
them*; integral float labels ('1.0') read as integers; every file that cannot be a sample (a
dangling or DATA-leaving link, an unreadable file, an undecodable name, ...) is listed in
``Samples.skipped`` and counted in a notice. Notices are health warnings
(``{code, message, hint}``) in ``Samples.notices``; the stages add them to their summaries.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelkit import health
from labelkit.errors import BadInputError
from labelkit.manifest_vectors import ManifestVectors

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MANIFEST_NAMES = ("labels.csv", "labels.parquet")
KNOWN_COLUMNS = ("id", "path", "text", "label", "labels", "split", "embedding")
UNLABELED_DIR = "unlabeled"
# Label strings read as "no label", with a notice: pandas' default NA strings (what
# ``pd.read_csv`` would silently turn into NaN) and the word 'unlabeled' (a class of that name is
# surely not meant). Compared after stripping surrounding spaces; 'unlabeled' in any case.
NA_STRINGS = frozenset({
    "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
    "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
UNLABELED_WORDS = frozenset({"unlabeled", "unlabelled"})
_FLOAT_TEXT = re.compile(r"[+-]?\d+(\.\d*)?")  # '1', '1.0', '-2.' (no exponent, no 'inf')
MAX_LISTED = 1000  # skipped files listed in samples.parquet metadata (all are counted)

# Why a file is not a sample (Samples.skipped reasons; docs/getting-started.md lists them).
LINK_LEAVES = "link leaves DATA"
DANGLING = "dangling link"
UNREADABLE = "unreadable"
UNDECODABLE = "undecodable name"
MISSING = "missing"
NOT_A_FILE = "not a file"
NOT_AN_IMAGE = "not an image"
NOT_IN_CLASS = "not in a class folder"
LINK_LOOP = "link loop"

Kind = Literal["image", "text", "vectors", "labels-only"]
Task = Literal["multi-class", "multi-label"]


@dataclass
class Samples:
    """The discovered dataset: one row per sample, in a stable order."""

    table: pd.DataFrame  # id, source, label (str | None), labels (list[str] | None), split
    kind: Kind
    classes: list[str]  # sorted class names
    vectors: ManifestVectors | None  # bring-your-own vectors, read when a stage needs them
    origin: str  # "labels.csv", "labels.parquet" or "image folder"
    notices: list[dict[str, str]] = field(default_factory=list)  # health warnings about the inputs
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to DATA, reason)
    task: Task = "multi-class"  # "multi-label": label sets in 'labels' ([] = no class, None = unlabeled), 'label' null
    # Arrow (large_string, None as null) copies of table columns, made at discovery from the Arrow
    # data it read: readers that want Arrow (the fingerprint, label codes, id matching, writers) take
    # them instead of converting a million Python strings again. See :meth:`arrow_column`.
    arrow_columns: dict[str, pa.Array] = field(default_factory=dict, repr=False)

    def arrow_column(self, name: str) -> pa.Array:
        """The table's column ``name`` (id, source, label, split) as an Arrow large_string array, None as null."""
        col = self.arrow_columns.get(name)
        if col is None or len(col) != len(self.table):  # none made (or another table): convert the column
            col = pa.array(self.table[name].to_numpy(dtype=object), type=pa.large_string(), from_pandas=True)
        return col

    @property
    def n_labeled(self) -> int:
        col = "labels" if self.task == "multi-label" else "label"
        return int(self.table[col].notna().sum())

    def label_matrix(self) -> np.ndarray:
        """Multi-label labels as an int8 (N, K) 0/1 indicator matrix over ``classes``; unlabeled rows all -1."""
        sets = pa.array(self.table["labels"].to_numpy(dtype=object), type=pa.list_(pa.large_string()), from_pandas=True)
        out = np.zeros((len(sets), len(self.classes)), dtype=np.int8)
        names = sets.flatten().to_numpy(zero_copy_only=False)  # every class of every set, set after set
        codes = pd.Index(self.classes, dtype=object).get_indexer(names)
        if (codes < 0).any():
            raise KeyError(names[int(np.argmax(codes < 0))])
        out[pc.list_parent_indices(sets).to_numpy(zero_copy_only=False), codes] = 1
        out[sets.is_null().to_numpy(zero_copy_only=False)] = -1
        return out

    def single_label_codes(self) -> np.ndarray:
        """One class per sample where there is one: in a multi-label task, the samples whose set
        has exactly one class (-1 for the rest); otherwise :meth:`label_codes`."""
        if self.task != "multi-label":
            return self.label_codes()
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[v[0]] if v is not None and len(v) == 1 else -1 for v in self.table["labels"]], dtype=np.int64)

    def label_codes(self) -> np.ndarray:
        """Labels as int64 indices into ``classes`` (-1 = unlabeled)."""
        if self.task == "multi-label":
            # A stage that reads one label per sample must not see a multi-label sample as unlabeled.
            raise BadInputError(
                "multi-label data (samples with several labels, or none, in 'labels'): this stage reads one label per "
                "sample and does not support multi-label data yet; the stages that do are listed in docs/getting-started.md"
            )
        labels = self.table["label"].to_numpy(dtype=object)
        index = pd.Index(self.classes, dtype=object)
        try:  # each distinct label looked up once: Arrow hashes the million cells, not Python
            enc = self.arrow_column("label").dictionary_encode()
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a cell that is not text
            enc = None
        if enc is not None:
            names = enc.dictionary.to_numpy(zero_copy_only=False)  # in order of first appearance
            at = index.get_indexer(names).astype(np.int64)
            if (at < 0).any():
                raise KeyError(names[int(np.argmax(at < 0))])
            return np.append(at, -1)[pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)]  # null (unlabeled) -> -1
        codes = index.get_indexer(labels).astype(np.int64)
        missed = np.flatnonzero(codes < 0)  # unlabeled, or a label that is not a class: only these are looked at again
        unknown = missed[pd.notna(labels[missed])]
        if unknown.size:
            raise KeyError(labels[unknown[0]])
        return codes

    def fingerprint(self, data_root) -> str:
        """Content fingerprint: see :func:`samples_fingerprint`."""
        return samples_fingerprint(self, data_root)

    def require_labels(self, stage: str) -> None:
        if not self.classes:
            raise BadInputError(
                f"{stage} needs labels: no sample is labeled and no class names were given; "
                "label some samples, or pass --classes a,b,c for zero-shot labeling"
            )


def samples_fingerprint(samples: Samples, data_root) -> str:
    """Content fingerprint of the dataset: ids, sources, labels, and each source file's size and mtime.

    Each column is hashed as Arrow buffers (offsets, bytes, nulls), not row by row; an image
    dataset adds one ``stat`` per file.
    """
    h = hashlib.blake2b(digest_size=16)
    t = samples.table
    for col in ("id", "source", "label", "split"):
        _hash_strings(h, samples.arrow_column(col))
    if "labels" in samples.arrow_columns and len(samples.arrow_columns["labels"]) == len(t):  # no label sets: all null
        multi = samples.arrow_columns["labels"]
    else:
        multi = t["labels"].to_numpy(dtype=object)
        has_multi = pd.notna(multi)
        if has_multi.any():  # rare: '|'-joined, as a string column
            joined = np.full(len(multi), None, dtype=object)
            joined[has_multi] = ["|".join(v) for v in multi[has_multi]]
            multi = joined
        multi = pa.array(multi, type=pa.large_string(), from_pandas=True)
    _hash_strings(h, multi)
    h.update(("\x1f".join(samples.classes)).encode())
    if samples.kind == "image":
        h.update(_file_stats(data_root, t["source"].to_numpy(dtype=object)).tobytes())
    if samples.vectors is not None:
        samples.vectors.update_hash(h)
    return h.hexdigest()


def _hash_strings(h, arr: pa.Array) -> None:
    """Feed a string column into ``h``: its length, null mask, value offsets and bytes (canonical, whatever the slicing)."""
    h.update(len(arr).to_bytes(8, "little"))
    h.update(np.packbits(arr.is_null().to_numpy(zero_copy_only=False)).tobytes())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1] if len(arr) else np.zeros(1, np.int64)
    h.update((offsets - offsets[0]).tobytes())
    data = arr.buffers()[2]
    if data is not None:
        h.update(memoryview(data)[int(offsets[0]): int(offsets[-1])])


def _file_stats(data_root, sources: np.ndarray) -> np.ndarray:
    """(N, 2) int64: each file's size and mtime in ns; (-1, -1) when it cannot be stat'ed."""
    out = np.full((len(sources), 2), -1, dtype=np.int64)
    root = os.fspath(data_root)
    for i, src in enumerate(sources):
        try:
            st = os.stat(os.path.join(root, src))
        except OSError:
            continue
        out[i] = st.st_size, st.st_mtime_ns
    return out


def discover(data: Path, *, classes: tuple[str, ...] | list[str] | None = None, require_inputs: bool = True) -> Samples:
    """Read DATA into :class:`Samples`; every bad input is a one-line BadInputError."""
    data = Path(data)
    if data.is_file():
        raise BadInputError(f"{data}: a file, not a dataset folder; of the stages only 'labelkit predict' reads a single file")
    if not data.is_dir():
        raise BadInputError(f"{data}: no such dataset folder")
    entries = [p for p in data.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise BadInputError(f"{data}: the dataset folder is empty")
    for name in MANIFEST_NAMES:
        if (data / name).is_file():
            samples = _from_manifest(data, data / name, require_inputs=require_inputs)
            break
    else:
        samples = _from_image_folder(data)
    sets = samples.arrow_columns.get("labels")
    samples.task = "multi-class" if sets is not None and sets.null_count == len(samples.table) else _task(samples.table)
    seen = _label_set(samples.table, samples.arrow_columns.get("label"))
    samples.classes = _merge_classes(samples, classes, seen=seen)
    samples.notices += health.one_class(len(seen))
    if samples.skipped:
        samples.notices.append(_skipped_notice(samples.skipped))
    return samples


def _skipped_notice(skipped: list[tuple[str, str]]) -> dict[str, str]:
    by = Counter(reason for _, reason in skipped)
    first = ", ".join(f"{p} ({r})" for p, r in skipped[:3])
    return health.warning(
        "skipped_files",
        f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped: "
        + ", ".join(f"{n} {r}" for r, n in sorted(by.items())) + f" (first: {first})",
        "fix or remove them; samples.parquet's metadata 'skipped' lists every one with its reason",
    )


def _label_set(table: pd.DataFrame, label: pa.Array | None = None) -> set[str]:
    """The distinct labels of a samples table (hashed in C: iterating a million-row Series costs
    seconds); ``label``: its 'label' column as Arrow, when discovery made it."""
    if label is not None and len(label) == len(table):
        seen = {v for v in pc.unique(label).to_pylist() if v is not None}
    else:
        seen = {v for v in pd.unique(table["label"].to_numpy(dtype=object)) if v is not None}
    multi = table["labels"].to_numpy(dtype=object)
    if pd.notna(multi).any():  # multi-label: every class of every label set
        seen.update(c for v in multi if v is not None for c in v)
    return seen


def _merge_classes(samples: Samples, given: tuple[str, ...] | list[str] | None, *, seen: set[str] | None = None) -> list[str]:
    seen = _label_set(samples.table) if seen is None else seen
    if not given:
        return sorted(seen)
    given_set = {unicodedata.normalize("NFC", str(c).strip()) for c in given if str(c).strip()}
    unknown = sorted(seen - given_set)
    if unknown:
        raise BadInputError(f"labels {unknown[:5]} are not among --classes; add them or fix the labels")
    return sorted(given_set)


def parse_classes_option(value: str | None) -> tuple[str, ...] | None:
    """``--classes a,b,c`` or ``--classes FILE`` (one name per line)."""
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        names = [line.strip() for line in p.read_text().splitlines()]
    else:
        names = [v.strip() for v in value.split(",")]
    names = [n for n in names if n]
    if not names:
        raise BadInputError(f"--classes {value!r}: no class names given")
    if len(set(names)) != len(names):
        raise BadInputError(f"--classes {value!r}: class names repeat")
    return tuple(names)


# -- manifest -------------------------------------------------------------------------------


def _read_manifest(path: Path) -> tuple[pd.DataFrame, bool]:
    """The manifest as a DataFrame without a Parquet 'embedding' column, and whether it has one.

    A Parquet manifest's vectors are not read here (:mod:`labelkit.manifest_vectors` reads them
    when a stage needs them): discovery runs in every stage, the vectors matter to two.
    """
    try:
        if path.suffix == ".csv":
            # Everything as text: ids like "007" and labels like "1" stay strings.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[]), False
        names = pq.read_schema(path).names
        if "embedding" not in names:
            return pd.read_parquet(path), False
        return pd.read_parquet(path, columns=[c for c in names if c != "embedding"]), True
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError, pa.ArrowException) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInputError(f"{path.name}: cannot read manifest ({msg})") from None


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _from_manifest(data: Path, path: Path, *, require_inputs: bool) -> Samples:
    df, parquet_vectors = _read_manifest(path)
    name = path.name
    cols = [str(c) for c in df.columns] + (["embedding"] if parquet_vectors else [])
    unknown = [c for c in cols if c not in KNOWN_COLUMNS]
    if unknown:
        raise BadInputError(f"{name}: unknown column '{unknown[0]}' (known: {', '.join(KNOWN_COLUMNS)})")
    if len(df) == 0:
        raise BadInputError(f"{name}: the manifest has no rows")
    has_path, has_text, has_vec = "path" in cols, "text" in cols, "embedding" in cols
    if require_inputs and not (has_path or has_text or has_vec):
        raise BadInputError(f"{name}: needs a 'path', 'text' or 'embedding' column")
    if has_path and has_text:
        raise BadInputError(f"{name}: has both 'path' and 'text' columns; use one")
    if "label" not in cols and "labels" not in cols and "id" not in cols and not (has_path or has_text):
        raise BadInputError(f"{name}: needs an 'id', 'path' or 'text' column to identify samples")

    sources = _manifest_sources(data, df, name, has_path, has_text)
    ids, arrow = _manifest_ids(df, name, sources)
    labels, multi, notices, arrow["label"] = _manifest_labels(df, name)
    if "split" in cols:
        split = _text_cells(df["split"])
        split[pd.isna(split)] = ""
    else:
        split = np.full(len(df), "", dtype=object)
        arrow["split"] = _empty_strings(len(df))
    if not (has_path or has_text):
        arrow["source"] = pa.nulls(len(df), pa.large_string())
    if "labels" not in cols:
        arrow["labels"] = pa.nulls(len(df), pa.large_string())
    vectors = None
    if has_vec:
        vectors = ManifestVectors(name, path=path) if parquet_vectors else ManifestVectors.from_cells(df["embedding"], name)
    kind: Kind = "vectors" if has_vec else "image" if has_path else "text" if has_text else "labels-only"
    skipped: list[tuple[str, str]] = []
    if has_path:
        # Rows whose file cannot be a sample are dropped here, each listed with its reason.
        why = [_file_problem(data, s) for s in sources]
        skipped = [(s, r) for s, r in zip(sources, why) if r is not None]
        if len(skipped) == len(sources):
            raise BadInputError(f"{name}: none of the {len(sources)} files can be read (first: {skipped[0][0]}: {skipped[0][1]})")
        if skipped:
            keep = np.array([r is None for r in why])
            ids, sources, labels, split = (np.asarray(col, dtype=object)[keep] for col in (ids, sources, labels, split))
            multi = [v for v, k in zip(multi, keep) if k]
            if vectors is not None:
                vectors.keep(keep)
    table = _table(ids, sources, labels, multi, split)
    arrow = {} if skipped else {k: v for k, v in arrow.items() if v is not None}  # rows dropped: made again from the table
    return Samples(table=table, kind=kind, classes=[], vectors=vectors, origin=name, notices=notices, skipped=skipped, arrow_columns=arrow)


def _empty_strings(n: int) -> pa.Array:
    """n empty strings (large_string), built from its buffers: no Python string per row."""
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, dtype=np.int64)), pa.py_buffer(b""))


def _file_problem(data: Path, rel: str) -> str | None:
    """Why the file at DATA/``rel`` cannot be a sample (None if it can): one policy for manifests and folders."""
    full = data / rel
    if not os.path.lexists(full):
        return MISSING
    try:
        real = full.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        return DANGLING
    except (OSError, RuntimeError):  # a symlink loop
        return LINK_LOOP
    if not real.is_relative_to(data.resolve()):
        return LINK_LEAVES
    if not real.is_file():
        return NOT_A_FILE
    if not os.access(real, os.R_OK):
        return UNREADABLE
    return None


def _table(ids, sources, labels, multi, split) -> pd.DataFrame:
    # object dtype keeps None as None (pandas' string dtype would turn it into NaN). copy=False:
    # each column is the array built here (no copy), one block per column (not the five copied
    # into one 2-D object block); none of them is used elsewhere.
    cols = {"id": ids, "source": sources, "label": labels, "labels": multi, "split": split}
    return pd.DataFrame({k: pd.Series(v, dtype=object, copy=False) for k, v in cols.items()}, copy=False)


def _text_cells(col: pd.Series) -> np.ndarray:
    """A column as an object array of ``str(cell)``, None where the cell is missing (null, NaN, blank).

    String and integer columns are read in Arrow (no per-row Python); a blank-looking string is
    confirmed with Python's own ``str.strip`` so the rule stays :func:`_is_missing`'s. Other types
    (floats, mixed objects) go cell by cell.
    """
    return _text_cells_arrow(col)[0]


def _text_cells_arrow(col: pd.Series) -> tuple[np.ndarray, pa.Array | None]:
    """:func:`_text_cells`, and the same cells as an Arrow large_string array when they were read
    in Arrow and none is blank (else None)."""
    try:
        arr = pa.array(col, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = None
    if arr is not None and (pa.types.is_integer(arr.type) or pa.types.is_null(arr.type)):
        arr = arr.cast(pa.large_string())
    if arr is None or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return np.array([None if _is_missing(v) else str(v) for v in col], dtype=object)
    out = arr.to_numpy(zero_copy_only=False)
    # Empty, or only whitespace (utf8_is_space: non-empty and all white; no trimmed copy is made).
    blank = pc.fill_null(pc.or_(pc.equal(pc.binary_length(arr), 0), pc.utf8_is_space(arr)), False).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(blank):
        if out[i].strip() == "":  # Arrow's whitespace is a superset of Python's
            out[i] = None
    if blank.any():
        return out, None
    arr = arr.cast(pa.large_string())
    return out, arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _manifest_sources(data: Path, df: pd.DataFrame, name: str, has_path: bool, has_text: bool) -> np.ndarray:
    if has_text:
        out = _text_cells(df["text"])
        missing = pd.isna(out)
        if missing.any():
            raise BadInputError(f"{name}: row {_first(missing) + 2} has an empty 'text'")
        return out
    if not has_path:
        return np.full(len(df), None, dtype=object)
    out = _text_cells(df["path"])
    # Only paths that are not already plain relative POSIX paths ('a/b.png') need Path's rules:
    # empty, absolute, '.' or '..' parts, doubled or trailing slashes.
    odd = pd.isna(out) | pc.fill_null(pc.match_substring_regex(pa.array(out, type=pa.large_string(), from_pandas=True),
                                                               r"^/|(^|/)\.\.?(/|$)|//|/$|^$"), True).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(odd):
        row, v = i + 2, out[i]
        if v is None:
            raise BadInputError(f"{name}: row {row} has an empty 'path'")
        rel = Path(v)
        # Written to escape (absolute, or '..' past DATA): bad input. A link inside DATA that
        # leaves it is a skipped file instead (_file_problem), as in an image folder.
        if rel.is_absolute() or os.path.normpath(rel).split(os.sep)[0] == "..":
            raise BadInputError(f"{name}: row {row} path '{v}' escapes the dataset folder; paths must be relative to {data}")
        out[i] = rel.as_posix()
    return out


def _manifest_ids(df: pd.DataFrame, name: str, sources: np.ndarray) -> tuple[np.ndarray, dict[str, pa.Array | None]]:
    """The ids (object array), and ``{"id": the same as Arrow}`` when they were read in Arrow."""
    arrow = None
    if "id" in df.columns:
        ids, arrow = _text_cells_arrow(df["id"])
        missing = pd.isna(ids) if arrow is None or arrow.null_count else np.zeros(0, dtype=bool)
        if missing.any():
            raise BadInputError(f"{name}: row {_first(missing) + 2} has an empty 'id'")
    elif len(sources) and sources[0] is not None and "path" in df.columns:
        ids = sources.copy()  # a sample's id defaults to its path relative to DATA
    else:
        ids = np.arange(len(df)).astype(str).astype(object)  # text/vector rows: their row number
    # Hashed in Arrow (the bytes) where they were read in Arrow: about half the time of hashing a
    # million Python strings; the rows of a duplicate are looked up only when there is one.
    unique = len(pc.unique(arrow)) == len(arrow) if arrow is not None else pd.Index(ids, dtype=object).is_unique
    if not unique:
        index = pd.Index(ids, dtype=object)
        row = _first(index.duplicated())
        first = _first(ids == ids[row])
        raise BadInputError(f"{name}: duplicate id '{ids[row]}' (rows {first + 2} and {row + 2})")
    return ids, {"id": arrow}


def _distinct(values) -> tuple[np.ndarray, list, list[int]]:
    """(codes, distinct values in order of first appearance, their counts); code -1 for a null or NaN cell."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pandas()
    codes, uniques = pd.factorize(pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values, use_na_sentinel=True)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques)).tolist()
    return codes, list(uniques), counts


def _split_multi(v) -> list | None:
    """A 'labels' cell as its raw parts (a list, or ``|``-separated); None when missing, [] for an
    explicit empty set (an empty list, or ``[]`` in a CSV): a labeled sample with no class."""
    if isinstance(v, str) and v.strip() == "[]":
        return []
    if _is_missing(v):
        return None
    if isinstance(v, str):  # only '[]' writes an empty set in a CSV: ' | ' is an empty cell
        return [p for p in v.split("|") if not _is_missing(p)] or None
    return [p for p in list(v) if not _is_missing(p)]


class _LabelReader:
    """Reads label cells as written, and counts every change of meaning for the notices."""

    def __init__(self) -> None:
        self.as_unlabeled: Counter[str] = Counter()  # spelling -> times read as unlabeled
        self.stripped: list[str] = []  # cells with spaces around them (the first few)
        self.n_stripped = 0
        self.floats: list[str] = []  # whole-number floats read as integers (the first few)
        self.n_floats = 0
        self.spellings: dict[str, Counter[str]] = {}  # NFC name -> {spelling as written: count}

    def text(self, v, count: int = 1) -> str | None:
        """One cell (written ``count`` times): None when missing or an NA-like string; else its text, stripped (not yet NFC)."""
        if _is_missing(v):
            return None
        t = v if isinstance(v, str) else str(int(v)) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else str(v)
        s = t.strip()
        if s != t:
            self.n_stripped += count
            if len(self.stripped) < 3:
                self.stripped.append(t)
        if s in NA_STRINGS or s.lower() in UNLABELED_WORDS:
            self.as_unlabeled[s] += count
            return None
        return s

    def integral_floats(self, col: list[str | None], counts: list[int] | None = None) -> list[str | None]:
        """A column of numbers all whole ('0.0', '1', '2.') reads as integers; any other value keeps it as written."""
        vals = [v for v in col if v is not None]
        if not vals or not all(_FLOAT_TEXT.fullmatch(v) for v in vals) or not any("." in v for v in vals):
            return col
        if any(float(v) != int(float(v)) for v in vals):
            return col  # '0.5' is a class name as written
        out = []
        for i, v in enumerate(col):
            if v is not None and "." in v:
                self.n_floats += 1 if counts is None else counts[i]
                if len(self.floats) < 3:
                    self.floats.append(v)
                v = str(int(float(v)))
            out.append(v)
        return out

    def nfc(self, v: str | None, count: int = 1) -> str | None:
        if v is None:
            return None
        n = unicodedata.normalize("NFC", v)
        self.spellings.setdefault(n, Counter())[v] += count
        return n

    def column(self, values) -> tuple[np.ndarray, pa.Array]:
        """A label column as an object array of names (None = unlabeled), and the same as an Arrow large_string array.

        Each distinct cell is read once, weighted by how often it occurs (in order of first
        appearance, so the notices' examples are the first in the file): a million rows over a
        hundred classes cost a hundred reads, not a million.
        """
        codes, uniques, counts = _distinct(values)
        texts = [self.text(v, c) for v, c in zip(uniques, counts)]
        names = [self.nfc(v, c) for v, c in zip(self.integral_floats(texts, counts), counts)]
        at = np.where(codes < 0, len(names), codes)  # code -1 (missing) -> the trailing None
        return np.array([*names, None], dtype=object)[at], pa.array([*names, None], type=pa.large_string()).take(at)

    def notices(self) -> list[dict[str, str]]:
        out = []
        if self.as_unlabeled:
            n = sum(self.as_unlabeled.values())
            written = ", ".join(f"{k!r} ({c})" for k, c in self.as_unlabeled.most_common())
            out.append(health.warning(
                "labels_read_as_unlabeled",
                f"{n} label{'s' if n != 1 else ''} written as {written} read as unlabeled",
                "leave the cell empty for an unlabeled sample; if one of these is really a class, give it another name "
                "(e.g. 'NA' -> 'not_applicable')",
            ))
        if self.stripped:
            n, e = self.n_stripped, self.stripped[0]
            out.append(health.warning(
                "labels_stripped",
                f"{n} label{'s' if n != 1 else ''} had spaces around them, removed (e.g. {e!r} read as {e.strip()!r})",
                "write labels without leading or trailing spaces",
            ))
        if self.floats:
            n, e = self.n_floats, self.floats[0]
            out.append(health.warning(
                "float_labels",
                f"{n} label{'s' if n != 1 else ''} written as whole-number floats read as integers (e.g. {e!r} read as {str(int(float(e)))!r})",
                "write integer class labels without a decimal point (a pandas column with missing values becomes float: "
                "use df['label'].astype('Int64') before saving)",
            ))
        merged = {k: c for k, c in self.spellings.items() if len(c) > 1}
        if merged:
            names = ", ".join(repr(k) for k in list(merged)[:3]) + (" …" if len(merged) > 3 else "")
            n = sum(c for spellings in merged.values() for s, c in spellings.items() if s != unicodedata.normalize("NFC", s))
            out.append(health.warning(
                "class_spellings_merged",
                f"{len(merged)} class name{'s' if len(merged) != 1 else ''} ({names}) written in two Unicode spellings "
                f"that print the same (composed NFC and decomposed NFD): merged as NFC ({n} label{'s' if n != 1 else ''} respelled)",
                "nothing to do if they are one class; to keep two classes, give them names that differ visibly",
            ))
        return out


def _manifest_labels(df: pd.DataFrame, name: str) -> tuple[list[str | None], list[list[str] | None], list[dict[str, str]], pa.Array | None]:
    """The 'label' and 'labels' columns. A manifest is multi-label when some 'labels' cell holds
    several classes or an explicit empty set; then 'label' is null on every row, each labeled row
    carries its set in 'labels' (a 'label' must be one of them) and a row with a 'label' but no
    'labels' is ambiguous. Otherwise a one-class 'labels' cell is an ordinary 'label'. Last, the
    'label' column as Arrow where it stands as read (None when 'labels' may have changed it)."""
    n = len(df)
    reader = _LabelReader()
    single, arrow = reader.column(df["label"]) if "label" in df.columns else ([None] * n, pa.nulls(n, pa.large_string()))
    if "labels" not in df.columns:  # one label per row: nothing to reconcile row by row
        return single, [None] * n, reader.notices(), arrow
    multi: list[list[str] | None] = []
    for row, v in enumerate(df["labels"], start=2):
        raw = _split_multi(v)
        parts = [p for p in (reader.nfc(reader.text(p)) for p in (raw or [])) if p is not None]
        if len(set(parts)) != len(parts):
            twice = next(p for p in parts if parts.count(p) > 1)
            raise BadInputError(f"{name}: row {row} lists {twice!r} twice in 'labels'; name each class once")
        multi.append(None if raw is None or (raw and not parts) else parts)
    multi_task = any(m is not None and len(m) != 1 for m in multi)
    for row in range(n):
        m = multi[row]
        if single[row] is not None and m is not None and single[row] not in m:
            raise BadInputError(f"{name}: row {row + 2} 'label' {single[row]!r} is not in its 'labels'")
        if not multi_task:
            if single[row] is None and m is not None:
                single[row] = m[0]  # a one-element label set is an ordinary label
        elif m is None and single[row] is not None:
            raise BadInputError(
                f"{name}: row {row + 2} has a 'label' ({single[row]!r}) but no 'labels', while other rows carry several "
                "classes (or none) in 'labels': in a multi-label manifest give every labeled row its set in 'labels' "
                f"(e.g. {single[row]!r}, or '[]' for no class) and leave both empty for an unlabeled row"
            )
        else:
            single[row] = None  # multi-label: the set is in 'labels'
    return single, multi, reader.notices(), None


def _task(table: pd.DataFrame) -> Task:
    """Multi-label when some sample carries a label set and no single label (decided once, in discover)."""
    multi = table["labels"].notna().to_numpy() & table["label"].isna().to_numpy()
    return "multi-label" if multi.any() else "multi-class"


# -- image folder ---------------------------------------------------------------------------


def _from_image_folder(data: Path) -> Samples:
    walk = _FolderWalk(data)
    walk.top()
    if not walk.rows:
        first = f" ({len(walk.skipped)} files skipped, first: {walk.skipped[0][0]}: {walk.skipped[0][1]})" if walk.skipped else ""
        raise BadInputError(
            f"{data}: no labels.csv / labels.parquet manifest and no images in class folders "
            f"(expected DATA/<class>/<image> and DATA/unlabeled/<image>){first}"
        )
    rows, multi, notices = _merge_copies(data, walk.rows)
    ids = [r[0] for r in rows]
    table = _table(ids, ids, [r[1] for r in rows], multi, [""] * len(ids))
    return Samples(table=table, kind="image", classes=[], vectors=None, origin="image folder",
                   notices=walk.labels.notices() + notices, skipped=walk.skipped)


def _merge_copies(data: Path, rows: list[tuple[str, str | None]]):
    """Images with identical bytes in several class folders are one multi-label sample.

    Only files whose size another class folder's file shares are read and hashed. Each group of
    identical files that spans several classes becomes one sample (id: its first path) carrying
    those classes; then every labeled sample has a label set and the task is multi-label.
    Returns (rows, labels column, notices); the rows are unchanged when no group spans classes.
    """
    labeled = [(i, r) for i, r in enumerate(rows) if r[1] is not None]
    by_size: dict[int, list[int]] = {}
    for i, (rel, _) in labeled:
        by_size.setdefault(os.stat(data / rel).st_size, []).append(i)
    groups: dict[tuple[int, bytes], list[int]] = {}
    for size, members in by_size.items():
        if len({rows[i][1] for i in members}) < 2:
            continue  # one class: copies inside a class folder stay separate samples
        for i in members:
            h = hashlib.blake2b((data / rows[i][0]).read_bytes(), digest_size=16).digest()
            groups.setdefault((size, h), []).append(i)
    spanning = [sorted(m) for m in groups.values() if len({rows[i][1] for i in m}) > 1]
    if not spanning:
        return rows, [None] * len(rows), []
    merged_into = {i: m[0] for m in spanning for i in m}
    sets: dict[int, list[str]] = {m[0]: sorted({rows[i][1] for i in m}) for m in spanning}
    out_rows, multi = [], []
    for i, (rel, label) in enumerate(rows):
        if i in merged_into and merged_into[i] != i:
            continue
        out_rows.append((rel, None))
        multi.append(sets[i] if i in sets else None if label is None else [label])
    n_files = sum(len(m) for m in spanning)
    notice = health.warning(
        "multi_label_from_folders",
        f"{n_files} images sit with identical bytes in several class folders: read as {len(spanning)} multi-label "
        f"sample{'s' if len(spanning) != 1 else ''} (first: {rows[spanning[0][0]][0]} in "
        f"{', '.join(sets[spanning[0][0]])}); the task is multi-label",
        "nothing to do if the images carry several classes; if the copies are mistakes, keep each image in one class folder",
    )
    return out_rows, multi, [notice]


class _FolderWalk:
    """Walks DATA/<class>/**: links inside DATA are followed, links leaving it are skipped; hidden names are ignored."""

    def __init__(self, data: Path) -> None:
        self.data, self.root = data, data.resolve()
        self.rows: list[tuple[str, str | None]] = []  # (id = path relative to DATA, label)
        self.skipped: list[tuple[str, str]] = []
        self.labels = _LabelReader()

    def top(self) -> None:
        for entry in _entries(self.data, self.skipped, ""):
            if not _decodable(entry.name):
                self.skipped.append((_shown(entry.name), UNDECODABLE))
            elif entry.is_dir():
                label = None if entry.name == UNLABELED_DIR else self.labels.nfc(entry.name)
                self._folder(entry, entry.name, label, ())
            elif Path(entry.name).suffix.lower() in IMAGE_EXTS:  # an image beside the class folders: no class
                self.skipped.append((entry.name, _file_problem(self.data, entry.name) or NOT_IN_CLASS))

    def _folder(self, entry: os.DirEntry, rel: str, label: str | None, ancestors: tuple[str, ...]) -> None:
        real = os.path.realpath(entry.path)
        if not Path(real).is_relative_to(self.root):
            self.skipped.append((rel + "/", LINK_LEAVES))
            return
        if real in ancestors:
            self.skipped.append((rel + "/", LINK_LOOP))
            return
        for e in _entries(Path(entry.path), self.skipped, rel + "/"):
            sub = f"{rel}/{e.name}"
            if not _decodable(e.name):
                self.skipped.append((_shown(sub), UNDECODABLE))
            elif e.is_dir():
                self._folder(e, sub, label, (*ancestors, real))
            elif Path(e.name).suffix.lower() not in IMAGE_EXTS:
                self.skipped.append((sub, NOT_AN_IMAGE))
            elif (problem := _file_problem(self.data, sub)) is not None:
                self.skipped.append((sub, problem))
            else:
                self.rows.append((sub, label))


def _entries(folder: Path, skipped: list[tuple[str, str]], rel: str) -> list[os.DirEntry]:
    """A folder's entries not hidden, sorted by name (an unreadable folder is one skipped entry)."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        skipped.append((_shown(rel), UNREADABLE))
        return []


def _decodable(name: str) -> bool:
    """False for a file name that is not valid UTF-8 (Python keeps its bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(rel: str) -> str:
    """A path for messages: undecodable bytes as \\xNN escapes."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")
