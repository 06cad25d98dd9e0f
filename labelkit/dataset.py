"""Discover a DATA folder (manifest, image folder, or vectors) into a samples table.

Recognised, in this order:
1. ``DATA/labels.csv`` or ``DATA/labels.parquet``: one row per sample with ``path`` (relative to
   DATA) or ``text``, and ``label`` (empty = unlabeled); optional ``id``, ``split``, ``labels``
   (multi-label: a list, or ``|``-separated) and ``embedding`` (the user's own vectors).
2. An image folder: ``DATA/<class>/**/<image>`` labeled with the folder name,
   ``DATA/unlabeled/**/<image>`` unlabeled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from labelkit.errors import BadInputError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MANIFEST_NAMES = ("labels.csv", "labels.parquet")
KNOWN_COLUMNS = ("id", "path", "text", "label", "labels", "split", "embedding")
UNLABELED_DIR = "unlabeled"

Kind = Literal["image", "text", "vectors", "labels-only"]


@dataclass
class Samples:
    """The discovered dataset: one row per sample, in a stable order."""

    table: pd.DataFrame  # id, source, label (str | None), labels (list[str] | None), split
    kind: Kind
    classes: list[str]  # sorted class names
    vectors: np.ndarray | None  # (N, D) float32 for bring-your-own vectors
    origin: str  # "labels.csv", "labels.parquet" or "image folder"

    @property
    def n_labeled(self) -> int:
        return int(self.table["label"].notna().sum())

    def label_codes(self) -> np.ndarray:
        """Labels as int64 indices into ``classes`` (-1 = unlabeled)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[v] if v is not None else -1 for v in self.table["label"]], dtype=np.int64)

    def require_labels(self, stage: str) -> None:
        if not self.classes:
            raise BadInputError(
                f"{stage} needs labels: no sample is labeled and no class names were given; "
                "label some samples, or pass --classes a,b,c for zero-shot labeling"
            )


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
    samples.classes = _merge_classes(samples, classes)
    return samples


def _merge_classes(samples: Samples, given: tuple[str, ...] | list[str] | None) -> list[str]:
    seen = set(samples.table["label"].dropna())
    if not given:
        return sorted(seen)
    given_set = {str(c).strip() for c in given if str(c).strip()}
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


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            # Everything as text: ids like "007" and labels like "1" stay strings.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
        return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInputError(f"{path.name}: cannot read manifest ({msg})") from None


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _from_manifest(data: Path, path: Path, *, require_inputs: bool) -> Samples:
    df = _read_manifest(path)
    name = path.name
    cols = [str(c) for c in df.columns]
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
    ids = _manifest_ids(df, name, sources)
    labels, multi = _manifest_labels(df, name)
    split = [("" if _is_missing(v) else str(v)) for v in df["split"]] if "split" in cols else [""] * len(df)
    vectors = _manifest_vectors(df["embedding"], name) if has_vec else None
    kind: Kind = "vectors" if has_vec else "image" if has_path else "text" if has_text else "labels-only"
    table = _table(ids, sources, labels, multi, split)
    return Samples(table=table, kind=kind, classes=[], vectors=vectors, origin=name)


def _table(ids, sources, labels, multi, split) -> pd.DataFrame:
    # object dtype keeps None as None (pandas' string dtype would turn it into NaN).
    cols = {"id": ids, "source": sources, "label": labels, "labels": multi, "split": split}
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in cols.items()})


def _manifest_sources(data: Path, df: pd.DataFrame, name: str, has_path: bool, has_text: bool) -> list[str | None]:
    if has_text:
        out = []
        for row, v in enumerate(df["text"], start=2):
            if _is_missing(v):
                raise BadInputError(f"{name}: row {row} has an empty 'text'")
            out.append(str(v))
        return out
    if not has_path:
        return [None] * len(df)
    root = data.resolve()
    out = []
    for row, v in enumerate(df["path"], start=2):
        if _is_missing(v):
            raise BadInputError(f"{name}: row {row} has an empty 'path'")
        rel = Path(str(v))
        resolved = (data / rel).resolve()
        if rel.is_absolute() or not resolved.is_relative_to(root):
            raise BadInputError(f"{name}: row {row} path '{v}' escapes the dataset folder; paths must be relative to {data}")
        out.append(rel.as_posix())
    return out


def _manifest_ids(df: pd.DataFrame, name: str, sources: list[str | None]) -> list[str]:
    if "id" in df.columns:
        ids = ["" if _is_missing(v) else str(v) for v in df["id"]]
        if any(i == "" for i in ids):
            raise BadInputError(f"{name}: row {ids.index('') + 2} has an empty 'id'")
    elif sources and sources[0] is not None and "path" in df.columns:
        ids = list(sources)  # a sample's id defaults to its path relative to DATA
    else:
        ids = [str(i) for i in range(len(df))]  # text/vector rows: their row number
    seen: dict[str, int] = {}
    for row, i in enumerate(ids, start=2):
        if i in seen:
            raise BadInputError(f"{name}: duplicate id '{i}' (rows {seen[i]} and {row})")
        seen[i] = row
    return ids


def _split_multi(v) -> list[str] | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str):
        parts = [p.strip() for p in v.split("|")]
    else:
        parts = [str(p).strip() for p in list(v)]
    parts = [p for p in parts if p]
    return parts or None


def _manifest_labels(df: pd.DataFrame, name: str) -> tuple[list[str | None], list[list[str] | None]]:
    n = len(df)
    single = [None if _is_missing(v) else str(v).strip() for v in df["label"]] if "label" in df.columns else [None] * n
    multi = [_split_multi(v) for v in df["labels"]] if "labels" in df.columns else [None] * n
    for row in range(n):
        if single[row] is None and multi[row] is not None and len(multi[row]) == 1:
            single[row] = multi[row][0]  # a one-element label set is an ordinary label
        if single[row] is not None and multi[row] is not None and single[row] not in multi[row]:
            raise BadInputError(f"{name}: row {row + 2} 'label' {single[row]!r} is not in its 'labels'")
    return single, multi


def _manifest_vectors(col: pd.Series, name: str) -> np.ndarray:
    rows = []
    for row, v in enumerate(col, start=2):
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
        if rows and arr.size != rows[0].size:
            raise BadInputError(f"{name}: row {row} 'embedding' has {arr.size} values, row 2 has {rows[0].size}; vectors must all have one length")
        if not np.all(np.isfinite(arr)):
            raise BadInputError(f"{name}: row {row} 'embedding' contains NaN or infinite values")
        rows.append(arr)
    return np.stack(rows)


# -- image folder ---------------------------------------------------------------------------


def _from_image_folder(data: Path) -> Samples:
    dirs = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows: list[tuple[str, str | None]] = []
    for d in dirs:
        label = None if d.name == UNLABELED_DIR else d.name
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not any(part.startswith(".") for part in f.relative_to(data).parts):
                rows.append((f.relative_to(data).as_posix(), label))
    if not rows:
        raise BadInputError(
            f"{data}: no labels.csv / labels.parquet manifest and no images in class folders "
            "(expected DATA/<class>/<image> and DATA/unlabeled/<image>)"
        )
    ids = [r[0] for r in rows]
    table = _table(ids, ids, [r[1] for r in rows], [None] * len(rows), [""] * len(rows))
    return Samples(table=table, kind="image", classes=[], vectors=None, origin="image folder")
