"""What ``labelkit predict`` reads as DATA: whatever a user has, not only a training layout.

DATA may be
1. a dataset folder, read as every stage reads it (:func:`labelkit.dataset.discover`): a
   ``labels.csv`` / ``labels.parquet`` manifest, or class folders and ``unlabeled/``;
2. a plain folder of images: every image in it, recursively, is a sample. Images directly in
   DATA are unlabeled; an image under ``DATA/<name>/`` keeps the label ``<name>`` as in a training
   layout (``unlabeled/`` = none), which only feeds the accuracy where ``<name>`` is a class;
3. one image file (id: its file name);
4. a ``.csv`` or ``.parquet`` file read as a manifest (a ``text``, ``path`` or ``embedding``
   column; ``id`` and ``label`` optional; paths relative to the file's folder);
5. a ``.txt`` file, one text per line (id: the line number, from 1; blank lines are skipped).

Every sample path is relative to :attr:`PredictInputs.root`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labelkit.dataset import IMAGE_EXTS, MANIFEST_NAMES, Samples, _from_image_folder, _from_manifest, _merge_classes, _table, discover
from labelkit.errors import BadInputError
from labelkit.manifest_vectors import require_direction

TABLE_EXTS = (".csv", ".parquet")
TEXT_EXTS = (".txt",)
WHAT_DATA_MAY_BE = "a dataset folder, a folder of images, an image file, or a .csv/.parquet/.txt of texts"


@dataclass
class PredictInputs:
    """DATA as predict reads it."""

    samples: Samples
    root: Path  # the folder that the samples' paths are relative to
    origin: str  # what DATA was: "labels.csv", "image folder", "image file", "texts.csv", ...


def discover_inputs(data: Path, *, classes: tuple[str, ...] | list[str] | None = None) -> PredictInputs:
    """Read DATA (a folder or one file) into samples; every bad input is a one-line BadInputError."""
    data = Path(data)
    if data.is_file():
        return _from_file(data, classes)
    if not data.is_dir():
        raise BadInputError(f"{data}: no such file or folder; DATA must be {WHAT_DATA_MAY_BE}")
    if any((data / name).is_file() for name in MANIFEST_NAMES):
        samples = discover(data, classes=classes)
        return PredictInputs(samples, data, samples.origin)
    images = _images_under(data)
    if not images:
        raise BadInputError(
            f"{data}: no images in this folder or its subfolders (looked for {', '.join(sorted(IMAGE_EXTS))}) "
            f"and no labels.csv / labels.parquet; DATA must be {WHAT_DATA_MAY_BE}"
        )
    top = [p for p in images if len(p.parts) == 1]
    if not top:  # a training layout: read exactly as every other stage does
        samples = discover(data, classes=classes)
        return PredictInputs(samples, data, samples.origin)
    return PredictInputs(_plain_folder(data, top, len(top) < len(images), classes), data, "image folder")


def _images_under(data: Path) -> list[Path]:
    """Image files under ``data`` (paths relative to it), hidden files and folders left out."""
    return sorted(
        p.relative_to(data) for p in data.rglob("*")
        if p.suffix.lower() in IMAGE_EXTS and not any(part.startswith(".") for part in p.relative_to(data).parts) and p.is_file()
    )


def _plain_folder(data: Path, top: list[Path], has_subfolders: bool, classes) -> Samples:
    """Images directly in DATA (unlabeled), then those in its subfolders as a training layout reads them."""
    ids = [p.as_posix() for p in top]
    table = _table(ids, ids, [None] * len(ids), [None] * len(ids), [""] * len(ids))
    if has_subfolders:
        table = pd.concat([table, _from_image_folder(data).table], ignore_index=True)
    samples = Samples(table=table, kind="image", classes=[], vectors=None, origin="image folder")
    samples.classes = _merge_classes(samples, classes)
    return samples


def _from_file(path: Path, classes) -> PredictInputs:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTS:
        ids = [path.name]
        table = _table(ids, ids, [None], [None], [""])
        samples = Samples(table=table, kind="image", classes=[], vectors=None, origin="image file")
        samples.classes = _merge_classes(samples, classes)
        return PredictInputs(samples, path.parent, "image file")
    if suffix in TABLE_EXTS:
        samples = _from_manifest(path.parent, path, require_inputs=True)
        samples.classes = _merge_classes(samples, classes)
        return PredictInputs(samples, path.parent, path.name)
    if suffix in TEXT_EXTS:
        return PredictInputs(_from_text_file(path, classes), path.parent, path.name)
    raise BadInputError(f"{path}: cannot read a '{path.suffix or path.name}' file; DATA must be {WHAT_DATA_MAY_BE}")


def _from_text_file(path: Path, classes) -> Samples:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8, one text per line") from None
    except OSError as e:
        raise BadInputError(f"{path.name}: cannot read ({e.strerror})") from None
    rows = [(str(n), line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise BadInputError(f"{path.name}: no text in it; write one text per line")
    ids = [r[0] for r in rows]
    table = _table(ids, [r[1] for r in rows], [None] * len(rows), [None] * len(rows), [""] * len(rows))
    samples = Samples(table=table, kind="text", classes=[], vectors=None, origin=path.name)
    samples.classes = _merge_classes(samples, classes)
    return samples


# -- whether a student can read them ----------------------------------------------------------

MODALITY_KIND = {"image": "image", "text": "text"}  # embedder modality -> the DATA kind it reads
# The modality of the embedder families known without loading them (the refusal is then instant);
# any other spec is checked once its embedder is built.
FAMILY_MODALITY = {"pixels": "image", "clip": "image", "efficientnet-lite0": "image", "minilm": "text", "sbert": "text"}
KIND_WORDS = {"image": "images", "text": "texts", "vectors": "vectors", "labels-only": "labels only"}
FEED_HINT = {"image": "give it a folder of images or an image file",
             "text": "give it a CSV/Parquet with a 'text' column, or a .txt file with one text per line"}


def check_fits(config: dict[str, Any], samples: Samples) -> None:
    """Refuse DATA a student (its config.json, ``config``) cannot read, before anything is loaded or written (one line, how to fix)."""
    spec = config["input"]
    held = KIND_WORDS.get(samples.kind, samples.kind)
    if spec.get("kind") == "pixels":
        if samples.kind != "image":
            raise BadInputError(f"this student ({config.get('architecture')}) reads images, but DATA holds {held}; {FEED_HINT['image']}")
        return
    model = str(config["embedder"].get("model"))
    dim = int(spec["dim"])
    if samples.kind == "vectors":
        if samples.vectors.dim != dim:
            raise BadInputError(f"DATA's 'embedding' vectors have {samples.vectors.dim} dimensions, but this student expects {dim} ({model} embeddings)")
        for block in samples.vectors.batches():  # read in batches: bounded memory
            require_direction(block)
        return
    if model == "precomputed":
        raise BadInputError(f"this student was trained on your own {dim}-d vectors; DATA must be a manifest with an 'embedding' column of them, not {held}")
    modality = FAMILY_MODALITY.get(model.partition(":")[0])
    if modality is not None and samples.kind != MODALITY_KIND[modality]:
        raise modality_error(model, modality, samples.kind)


def modality_error(model: str, modality: str, kind: str) -> BadInputError:
    hint = FEED_HINT.get(modality, "")
    return BadInputError(f"this student's embedder {model} reads {modality} inputs, but DATA holds {KIND_WORDS.get(kind, kind)}" + (f"; {hint}" if hint else ""))
