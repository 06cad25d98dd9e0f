"""Student quality: labelkit's pipeline (detect-noise, pseudolabel, distill, predict) from few noisy labels.

    python benchmarks/distill.py [--seeds 5] [--datasets digits,mnist] [--mnist-n 10000] [--rounds 1] [--epochs 100]

For each dataset and seed: a stratified split into train and test halves (the test half is seen
by no stage); in train, 5 % of the labels kept (stratified, at least one per class) and 10 % of
those flipped to another class. The train half becomes a dataset folder with a vectors manifest
(``labels.parquet``: id, label, embedding) and the real stages run on it: embed (precomputed),
detect-noise, pseudolabel, distill (default options, the MLP student). ``labelkit predict`` then
labels the test half. Two references use the same student (``fit_student`` with the distill
stage's own TrainConfig, on the same L2-normalised vectors):

- *all true labels*: trained on every train sample with its true label (the ceiling);
- *noisy labeled part*: trained on the kept 5 % with their flips (what you have without labelkit).

The script prints test accuracy (mean ± std over seeds) as a markdown table and exits non-zero
unless, on every dataset, labelkit's student is within 2 points of the ceiling and beats the
noisy-labeled-part student by at least 5 points.

Vectors:
- digits (scikit-learn ``load_digits``, 1,797 x 64): pixels standardised per feature
  (``StandardScaler`` fitted on all 1,797 images, no labels involved).
- MNIST test images (/work/shared/data/mnist, 10,000 x 784; skipped if absent): pixels / 255.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from labelkit import artifacts  # noqa: E402
from labelkit.config import DatasetConfig, DistillConfig, PredictConfig  # noqa: E402
from labelkit.stages import distill as distill_stage  # noqa: E402
from labelkit.stages import predict as predict_stage  # noqa: E402
from labelkit.stages._common import RunContext  # noqa: E402
from labelkit.workspace import Workspace  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
SHARE, FLIP = 0.05, 0.10
WITHIN, BEAT = 0.02, 0.05


def _idx(path: Path) -> np.ndarray:
    b = gzip.open(path).read()
    nd = b[3]
    shape = struct.unpack(">" + "I" * nd, b[4 : 4 + 4 * nd])
    return np.frombuffer(b[4 + 4 * nd :], dtype=np.uint8).reshape(shape)


def load_datasets(names: set[str], *, mnist_n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    out = []
    if "digits" in names:
        d = load_digits()
        out.append(("digits", StandardScaler().fit_transform(d.data).astype(np.float32), d.target.astype(np.int64)))
    mnist = "mnist" in names
    images, labels = DATA / "mnist" / "t10k-images-idx3-ubyte.gz", DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if mnist and images.exists() and labels.exists():
        x = _idx(images).reshape(-1, 784).astype(np.float32) / 255.0
        y = _idx(labels).astype(np.int64)
        if mnist_n < len(y):  # a fixed subsample, the same for every seed
            keep = np.sort(np.random.default_rng(12345).choice(len(y), mnist_n, replace=False))
            x, y = x[keep], y[keep]
        out.append((f"mnist-{len(y) // 1000}k", x, y))
    elif mnist:
        print(f"MNIST not found under {DATA / 'mnist'}: skipped", file=sys.stderr)
    return out


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified halves: (train rows, test rows)."""
    rng = np.random.default_rng(seed)
    train = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        train.append(members[: members.size // 2])
    train = np.sort(np.concatenate(train))
    return train, np.setdiff1d(np.arange(y.size), train)


def noisy_labels(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(given labels with -1 = unlabeled, flipped mask): 5 % kept per class, 10 % of those flipped."""
    rng = np.random.default_rng(seed + 1000)
    given = np.full(y.shape, -1, dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        given[rng.choice(members, size=max(1, round(SHARE * members.size)), replace=False)] = c
    kept = np.flatnonzero(given >= 0)
    flip = rng.choice(kept, size=int(round(FLIP * kept.size)), replace=False)
    k = int(y.max()) + 1
    given[flip] = (given[flip] + rng.integers(1, k, flip.size)) % k  # always another class
    flipped = np.zeros(y.shape, bool)
    flipped[flip] = True
    return given, flipped


def write_manifest(folder: Path, x: np.ndarray, labels: list[str | None]) -> None:
    folder.mkdir(parents=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float32)), x.shape[1])
    t = pa.table({"id": [f"s{i:05d}" for i in range(len(x))], "label": pa.array(labels, pa.string()), "embedding": emb})
    pq.write_table(t, folder / "labels.parquet")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_student(x_train, y_train, x_test, y_test, cfg: DistillConfig, seed: int) -> float:
    """Test accuracy of the distill stage's student config trained on (x_train, y_train) alone."""
    from dataclasses import replace

    from labelkit.distill import fit_student, predict_proba

    # The stage's hold-out rule: early stopping only with enough held-out labels to stop on.
    n_val = round(cfg.val_fraction * len(y_train))
    tc = replace(distill_stage.train_config(cfg), val_fraction=cfg.val_fraction if n_val >= distill_stage.min_held_out(int(y_test.max()) + 1) else 0.0)
    fit = fit_student(x_train, y_train, np.zeros((len(y_train), int(y_test.max()) + 1)), config=tc, seed=seed)
    return float(np.mean(predict_proba(fit.model, x_test).argmax(1) == y_test))


def run_one(name: str, x: np.ndarray, y: np.ndarray, seed: int, cfg: DistillConfig, file_config: dict | None = None) -> dict:
    train, test = split(y, seed)
    given, flipped = noisy_labels(y[train], seed)
    with tempfile.TemporaryDirectory() as tmp:
        tr, te = Path(tmp) / "train", Path(tmp) / "test"
        write_manifest(tr, x[train], [str(v) if v >= 0 else None for v in given])
        write_manifest(te, x[test], [str(v) for v in y[test]])
        ctx = RunContext(Workspace.open(tr), DatasetConfig(), file_config or {})
        t0 = time.perf_counter()
        res = distill_stage.run(ctx, cfg)
        seconds = time.perf_counter() - t0
        pred = predict_stage.run(tr / ".labelkit" / "student", RunContext(Workspace.open(te), DatasetConfig()), PredictConfig())
        pl = pq.read_table(tr / ".labelkit" / artifacts.PSEUDOLABELS).to_pandas()
        acc_rows = pl[pl["accepted"]]
        truth = {f"s{i:05d}": str(v) for i, v in enumerate(y[train])}
        pl_acc = float(np.mean([truth[i] == lab for i, lab in zip(acc_rows["id"], acc_rows["label"])])) if len(acc_rows) else float("nan")
    xu_train, xu_test = _unit(x[train]), _unit(x[test])  # what the embed stage gives the student
    lab = given >= 0
    return {
        "labelkit": pred.summary["accuracy"],
        "all true labels": reference_student(xu_train, y[train], xu_test, y[test], cfg, seed),
        "noisy labeled part": reference_student(xu_train[lab], given[lab], xu_test, y[test], cfg, seed),
        "n_labeled": int(lab.sum()), "n_flipped": int(flipped.sum()), "n_train": int(train.size), "n_test": int(test.size),
        "n_trusted": res.summary["n_trusted"], "n_pseudo": res.summary["n_pseudo"], "n_dropped": res.summary["n_dropped_issues"],
        "pseudo_acc": pl_acc, "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--datasets", default="digits,mnist", help="comma-separated: digits, mnist")
    ap.add_argument("--mnist-n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = DistillConfig(rounds=args.rounds, epochs=args.epochs, device="cpu")
    lines = [
        f"Test accuracy of the MLP student (mean ± std over seeds 0..{args.seeds - 1}); train/test halves, "
        f"{SHARE:.0%} of train labeled, {FLIP:.0%} of those flipped; distill rounds={args.rounds}.",
        "",
        "| dataset | train / test | labeled (flipped) | labelkit pipeline | all true labels | noisy labeled part | trusted + pseudo (dropped) | accepted pseudo-label acc | s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ok = True
    for name, x, y in load_datasets(set(args.datasets.split(",")), mnist_n=args.mnist_n):
        runs = [run_one(name, x, y, seed, cfg) for seed in range(args.seeds)]
        m = {k: np.mean([r[k] for r in runs]) for k in runs[0]}
        s = {k: np.std([r[k] for r in runs]) for k in ("labelkit", "all true labels", "noisy labeled part")}
        cell = lambda k: f"{m[k]:.4f} ± {s[k]:.4f}"  # noqa: E731
        lines.append(
            f"| {name} | {m['n_train']:.0f} / {m['n_test']:.0f} | {m['n_labeled']:.0f} ({m['n_flipped']:.0f}) | {cell('labelkit')} | "
            f"{cell('all true labels')} | {cell('noisy labeled part')} | {m['n_trusted']:.0f} + {m['n_pseudo']:.0f} ({m['n_dropped']:.0f}) | "
            f"{m['pseudo_acc']:.4f} | {m['seconds']:.1f} |"
        )
        within = m["labelkit"] >= m["all true labels"] - WITHIN
        beats = m["labelkit"] >= m["noisy labeled part"] + BEAT
        if not (within and beats):
            ok = False
            lines.append(f"\nFAIL {name}: within {WITHIN:.0%} of the ceiling: {within}; beats the noisy part by {BEAT:.0%}: {beats}")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
