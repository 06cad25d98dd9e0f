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

Two pipeline variants: all defaults, and the pseudolabel stage told to accept every pseudo-label
(``[pseudolabel] threshold = 0``; distill then trains on all of them, each weighted by its
calibrated confidence). The script prints test accuracy (mean ± std over seeds) as a markdown
table and exits non-zero unless, on every dataset, the better variant is within 2 points of the
ceiling and beats the noisy-labeled-part student by at least 5 points.

Vectors:
- digits (scikit-learn ``load_digits``, 1,797 x 64): pixels standardised per feature
  (``StandardScaler`` fitted on all 1,797 images, no labels involved).
- MNIST test images (/work/shared/data/mnist, 784-d; skipped if absent): pixels / 255, a fixed
  subsample of ``--mnist-n`` images (default 4,000, to keep the run short on a shared CPU).
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


VARIANTS = {
    "labelkit, defaults": {},
    # Every pseudo-label (the pseudolabel stage accepts all), each weighted by its confidence.
    "labelkit, pseudolabel threshold 0": {"pseudolabel": {"threshold": 0.0}},
}
REFERENCES = ("all true labels", "noisy labeled part")


def _pseudo_accuracy(ws: Path, y_train: np.ndarray) -> float:
    """Accuracy of the accepted pseudo-labels against the true labels (which no stage sees)."""
    pl = pq.read_table(ws / artifacts.PSEUDOLABELS, columns=["id", "label", "accepted"]).to_pandas()
    acc = pl[pl["accepted"]]
    if not len(acc):
        return float("nan")
    truth = y_train[[int(i[1:]) for i in acc["id"]]].astype(str)
    return float(np.mean(truth == acc["label"].to_numpy()))


def run_one(x: np.ndarray, y: np.ndarray, seed: int, cfg: DistillConfig) -> dict[str, dict]:
    """Every variant and reference on one split: {method: {"acc": test accuracy, ...}}."""
    from labelkit.stages import pipeline

    train, test = split(y, seed)
    given, flipped = noisy_labels(y[train], seed)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tr, te = Path(tmp) / "train", Path(tmp) / "test"
        write_manifest(tr, x[train], [str(v) if v >= 0 else None for v in given])
        write_manifest(te, x[test], [str(v) for v in y[test]])
        test_ctx = RunContext(Workspace.open(te), DatasetConfig())
        for name, file_config in VARIANTS.items():
            ctx = RunContext(Workspace.open(tr), DatasetConfig(), file_config)
            t0 = time.perf_counter()
            if (tr / ".labelkit" / artifacts.PSEUDOLABELS).exists():  # upstream shared; pseudolabel reruns with its options
                pipeline.run_stage(ctx, "pseudolabel")
            res = distill_stage.run(ctx, cfg)
            seconds = time.perf_counter() - t0
            pred = predict_stage.run(tr / ".labelkit" / "student", test_ctx, PredictConfig())
            s = res.summary
            out[name] = {"acc": pred.summary["accuracy"], "n_trusted": s["n_trusted"], "n_pseudo": s["n_pseudo"],
                         "n_dropped": s["n_dropped_issues"], "pseudo_acc": _pseudo_accuracy(tr / ".labelkit", y[train]), "seconds": seconds}
    xu_train, xu_test = _unit(x[train]), _unit(x[test])  # what the embed stage gives the student
    lab = given >= 0
    for name, rows, labels in (("all true labels", np.arange(train.size), y[train]), ("noisy labeled part", np.flatnonzero(lab), given)):
        t0 = time.perf_counter()
        acc = reference_student(xu_train[rows], labels[rows], xu_test, y[test], cfg, seed)
        out[name] = {"acc": acc, "n_trusted": rows.size, "n_pseudo": 0, "n_dropped": 0, "pseudo_acc": float("nan"),
                     "seconds": time.perf_counter() - t0}
    out["_split"] = {"n_train": train.size, "n_test": test.size, "n_labeled": int(lab.sum()), "n_flipped": int(flipped.sum())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--datasets", default="digits,mnist", help="comma-separated: digits, mnist")
    ap.add_argument("--mnist-n", type=int, default=4000, help="MNIST test images used (a fixed subsample; 10000 = all)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = DistillConfig(rounds=args.rounds, epochs=args.epochs, device="cpu")
    lines = [
        f"Test accuracy of the mlp student, mean ± std over seeds 0..{args.seeds - 1}: train/test halves, {SHARE:.0%} of the "
        f"train labels kept, {FLIP:.0%} of those flipped; distill rounds={args.rounds}, epochs={args.epochs}.",
        "",
        "| dataset | train / test | labeled (flipped) | student trained on | test accuracy | trusted + pseudo (dropped issues) | accepted pseudo-label accuracy | s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for name, x, y in load_datasets(set(args.datasets.split(",")), mnist_n=args.mnist_n):
        runs = [run_one(x, y, seed, cfg) for seed in range(args.seeds)]
        sp = {k: np.mean([r["_split"][k] for r in runs]) for k in runs[0]["_split"]}
        means = {}
        for method in [*VARIANTS, *REFERENCES]:
            rs = [r[method] for r in runs]
            m = {k: float(np.mean([v[k] for v in rs])) for k in rs[0]}
            means[method] = m["acc"]
            pacc = "" if np.isnan(m["pseudo_acc"]) else f"{m['pseudo_acc']:.4f}"
            lines.append(
                f"| {name} | {sp['n_train']:.0f} / {sp['n_test']:.0f} | {sp['n_labeled']:.0f} ({sp['n_flipped']:.0f}) | {method} | "
                f"{m['acc']:.4f} ± {np.std([v['acc'] for v in rs]):.4f} | {m['n_trusted']:.0f} + {m['n_pseudo']:.0f} ({m['n_dropped']:.0f}) | "
                f"{pacc} | {m['seconds']:.1f} |"
            )
        best = max(VARIANTS, key=means.get)
        within = means[best] >= means["all true labels"] - WITHIN
        beats = means[best] >= means["noisy labeled part"] + BEAT
        verdicts.append(f"{'PASS' if within and beats else 'FAIL'} {name} ({best}): within {WITHIN:.0%} of all true labels: {within}; "
                        f"beats the noisy labeled part by {BEAT:.0%}: {beats}")
    print("\n".join(lines + [""] + verdicts))
    return 0 if all(v.startswith("PASS") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
