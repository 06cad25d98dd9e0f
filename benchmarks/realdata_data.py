"""Dataset preparation for benchmarks/realdata.py: real datasets as DATA folders a user would have.

Each source reads ../shared/data (see its SOURCE.md) into a ``Source``: the true labels in the
canonical row order, the class names, and a function that writes the inputs of chosen rows into
a DATA folder (image files, or nothing for texts) and returns the manifest's input columns
(``id``, and ``path`` or ``text``). The run then writes ``labels.csv`` (``id,path|text,label``,
empty label = unlabeled) for each setting and seed, so one DATA folder (and its workspace, with
its embeddings) serves every setting and seed of a dataset. Ids are the canonical row numbers,
which is what cleanlab's validated label errors refer to.
"""

from __future__ import annotations

import csv
import gzip
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
VALIDATED = SHARED / "cleanlab-label-errors" / "validated_label_errors.json"
SUBSAMPLE_SEED = 12345  # the fixed stratified subsample; the same for every run seed and method


@dataclass(frozen=True)
class Source:
    """A real dataset: true labels (N,) in canonical order, and how to write rows into DATA."""

    name: str
    kind: str  # "image" or "text"
    classes: list[str]
    y: np.ndarray  # (N,) int64 indices into classes
    write_inputs: Callable[[Path, np.ndarray], pd.DataFrame]  # (DATA, rows) -> id, path|text
    validated_key: str | None = None  # key in validated_label_errors.json


# -- sources ----------------------------------------------------------------------------------


def _idx(path: Path) -> np.ndarray:
    """An IDX (.gz) array, as in the MNIST distribution."""
    b = gzip.open(path).read()
    nd = b[3]
    shape = struct.unpack(">" + "I" * nd, b[4 : 4 + 4 * nd])
    return np.frombuffer(b[4 + 4 * nd :], dtype=np.uint8).reshape(shape)


def cifar10(shared: Path = SHARED) -> Source:
    """CIFAR-10 test set, 10,000 32x32 JPEGs, written as images/<index>.jpg (names carry no label)."""
    src = shared / "cifar10-test-jpeg"
    index = pd.read_csv(src / "index.csv").sort_values("test_index")
    classes = [n for _, n in sorted(set(zip(index["label"], index["label_name"])))]

    def write(data: Path, rows: np.ndarray) -> pd.DataFrame:
        (data / "images").mkdir(parents=True, exist_ok=True)
        sel = index.iloc[rows]
        paths = [f"images/{i:05d}.jpg" for i in sel["test_index"]]
        zips: dict[str, zipfile.ZipFile] = {}
        for member, zname, rel in zip(sel["path"], sel["zip_file"], paths):
            target = data / rel
            if not target.exists():
                z = zips.setdefault(zname, zipfile.ZipFile(src / zname))
                target.write_bytes(z.read(member))
        for z in zips.values():
            z.close()
        return pd.DataFrame({"id": [str(i) for i in sel["test_index"]], "path": paths})

    return Source("cifar10", "image", classes, index["label"].to_numpy(np.int64), write, "cifar10_test_set")


def mnist(shared: Path = SHARED) -> Source:
    """MNIST test set, 10,000 28x28 digits from the IDX pixels, written as images/<index>.png."""
    src = shared / "mnist"
    images = _idx(src / "t10k-images-idx3-ubyte.gz")
    y = _idx(src / "t10k-labels-idx1-ubyte.gz").astype(np.int64)

    def write(data: Path, rows: np.ndarray) -> pd.DataFrame:
        from PIL import Image

        (data / "images").mkdir(parents=True, exist_ok=True)
        paths = [f"images/{i:05d}.png" for i in rows]
        for i, rel in zip(rows, paths):
            if not (data / rel).exists():
                Image.fromarray(images[i], mode="L").save(data / rel)
        return pd.DataFrame({"id": [str(i) for i in rows], "path": paths})

    return Source("mnist", "image", [str(c) for c in range(10)], y, write, "mnist_test_set")


def _text_source(name: str, texts: list[str], y: np.ndarray, classes: list[str], key: str | None = None) -> Source:
    def write(data: Path, rows: np.ndarray) -> pd.DataFrame:
        data.mkdir(parents=True, exist_ok=True)
        return pd.DataFrame({"id": [str(i) for i in rows], "text": [texts[i] for i in rows]})

    return Source(name, "text", classes, y, write, key)


def ag_news(shared: Path = SHARED) -> Source:
    """AG News test set, 7,600 news items (title + description), 4 classes."""
    names = ["World", "Sports", "Business", "Sci/Tech"]
    with open(shared / "ag-news" / "test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [f"{r['title'].strip()}. {r['description'].strip()}" for r in rows]
    return _text_source("ag_news", texts, np.array([int(r["label"]) - 1 for r in rows], np.int64), names)


def banking77(shared: Path = SHARED, split: str = "test") -> Source:
    """BANKING77 (test: 3,080 queries, 40 per intent; train: 10,003), 77 intents."""
    df = pd.read_csv(shared / "banking77" / f"{split}.csv")
    classes = sorted(df["category"].unique())
    y = pd.Categorical(df["category"], categories=classes).codes.astype(np.int64)
    return _text_source("banking77", df["text"].astype(str).tolist(), y, classes)


def newsgroups(shared: Path = SHARED) -> Source:
    """20 Newsgroups bydate test set, 7,532 raw posts (headers included), in cleanlab's order."""
    src = shared / "20newsgroups-bydate"
    docs = [json.loads(line) for f in sorted(src.glob("test.part*_of_2.jsonl.gz")) for line in gzip.open(f, "rt", encoding="utf-8")]
    classes = json.loads((src / "label_names.json").read_text())
    return _text_source("20news", [d["text"] for d in docs], np.array([d["label"] for d in docs], np.int64), classes, "20news_test_set")


LOADERS: dict[str, tuple[str, Callable[[Path], Source]]] = {
    # name -> (folder under shared/data that must exist, loader)
    "cifar10": ("cifar10-test-jpeg", cifar10),
    "ag_news": ("ag-news", ag_news),
    "banking77": ("banking77", banking77),
    "20news": ("20newsgroups-bydate", newsgroups),
    "mnist": ("mnist", mnist),
}


def available(name: str, shared: Path = SHARED) -> bool:
    return (shared / LOADERS[name][0]).is_dir()


def load(name: str, shared: Path = SHARED) -> Source:
    return LOADERS[name][1](shared)


def validated_errors(key: str, shared: Path = SHARED) -> tuple[np.ndarray, np.ndarray]:
    """(validated error rows, MTurk-checked rows) of one cleanlab-label-errors dataset."""
    d = json.loads((shared / "cleanlab-label-errors" / "validated_label_errors.json").read_text())[key]
    return np.array(d["validated_error_indices"], np.int64), np.array(d["checked_indices"], np.int64)


# -- rows and labels --------------------------------------------------------------------------


def stratified_subsample(y: np.ndarray, n: int | None) -> np.ndarray:
    """Sorted rows: all of them, or n drawn per class in proportion (fixed seed, the same for every run)."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=SUBSAMPLE_SEED)
    return np.sort(rows)


def given_labels(y: np.ndarray, fraction: float, noise: float, seed: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(given labels with -1 = unlabeled, flipped mask).

    ``fraction`` >= 1 keeps that many labels per class; < 1 keeps round(fraction * class size) per
    class (at least one). Then round(noise * n_labeled) of the labeled rows move to a uniformly
    random other class, ``(y + rng.integers(1, K)) % K``; one generator, ``default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    labeled = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = int(fraction) if fraction >= 1 else max(1, round(fraction * members.size))
        labeled.append(rng.choice(members, size=min(take, members.size), replace=False))
    labeled = np.sort(np.concatenate(labeled))
    given = np.full(y.shape, -1, np.int64)
    given[labeled] = y[labeled]
    flip = rng.choice(labeled, size=round(noise * labeled.size), replace=False)
    given[flip] = (y[flip] + rng.integers(1, n_classes, size=flip.size)) % n_classes
    flipped = np.zeros(y.shape, bool)
    flipped[flip] = True
    return given, flipped


def write_manifest(data: Path, inputs: pd.DataFrame, given: np.ndarray, classes: list[str]) -> None:
    """labels.csv: the inputs with their given label (class name; empty = unlabeled), atomically."""
    names = np.array(classes, dtype=object)
    label = np.where(given >= 0, names[np.maximum(given, 0)], None)
    tmp = data / "labels.csv.tmp"
    inputs.assign(label=label).to_csv(tmp, index=False)
    tmp.replace(data / "labels.csv")


def prepare(source: Source, data: Path, rows: np.ndarray) -> pd.DataFrame:
    """Write the rows' inputs into DATA once (kept across runs); the manifest's input columns."""
    data.mkdir(parents=True, exist_ok=True)
    return source.write_inputs(data, rows)
