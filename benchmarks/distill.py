"""Student quality: labelkit's pipeline (detect-noise, pseudolabel, distill, predict) from few noisy labels.

    python benchmarks/distill.py [--seeds 5] [--first-seed 0] [--datasets digits,mnist] [--mnist-n 4000] [--rounds 1] [--epochs 100] [--json runs.json]
    python benchmarks/distill.py --student cnn [--fixmatch 1] [--fixmatch-rule flexmatch] [--image-size 0] [--jobs 1] ...

For each dataset and seed: a stratified split into train and test halves (the test half is seen
by no stage); in train, 5 % of the labels kept (stratified, at least one per class) and 10 % of
those flipped to another class. The train half becomes a dataset folder with a vectors manifest
(``labels.parquet``: id, label, embedding) and the real stages run on it: embed (precomputed),
detect-noise, pseudolabel, distill (default options, the MLP student). ``labelkit predict`` then
labels the test half. Two references use the same student (``fit_student`` with the distill
stage's own TrainConfig, on the same L2-normalised vectors):

- *all true labels*: trained on every train sample with its true label (the ceiling);
- *noisy labeled part*: trained on the kept 5 % with their flips (what you have without labelkit).

The script prints three markdown tables: test accuracy (mean ± std over seeds); the accuracy of
the pseudo-labels (all / accepted) next to the student's, with the held-out accuracy that
metrics.json estimated (cross-fitting here: the trusted labels are too few to hold out); and the
wall time of each stage. It exits non-zero unless, on every dataset, the defaults' student is
within 2 points of the ceiling and beats the noisy-labeled-part student by at least 5 points.
Torch runs on one thread (the distill stage's own choice for mlp students).

``--student cnn`` runs the same protocol on the datasets' images: each split is written as
grayscale PNGs with a labels.csv, embedded with ``pixels:SIDE`` (for detect-noise), and the cnn
student is trained end to end with FixMatch (``--fixmatch 1 --without-pseudolabels``, batch 64,
400 epochs, no cross-fitting); the references are the same cnn config fitted on the true labels
and on the noisy labeled part (each with only its own images for the consistency term).

Vectors:
- digits (scikit-learn ``load_digits``, 1,797 x 64): pixels standardised per feature
  (``StandardScaler`` fitted on all 1,797 images, no labels involved).
- MNIST test images (/work/shared/data/mnist, 784-d; skipped if absent): pixels / 255, a fixed
  subsample of ``--mnist-n`` images (default 4,000, to keep the run short on a shared CPU).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
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
from labelkit.distill.students import STUDENTS  # noqa: E402
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


def load_datasets(names: set[str], *, mnist_n: int, images: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, x, y): x standardised vectors (digits) or pixels / 255 (MNIST); with ``images``, uint8 images (n, H, W)."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    out = []
    if "digits" in names:
        d = load_digits()
        x = np.round(d.images * (255 / 16)).astype(np.uint8) if images else StandardScaler().fit_transform(d.data).astype(np.float32)
        out.append(("digits", x, d.target.astype(np.int64)))
    mnist = "mnist" in names
    image_file, labels = DATA / "mnist" / "t10k-images-idx3-ubyte.gz", DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if mnist and image_file.exists() and labels.exists():
        x = _idx(image_file) if images else _idx(image_file).reshape(-1, 784).astype(np.float32) / 255.0
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


def write_images(folder: Path, imgs: np.ndarray, labels: list[str | None]) -> None:
    """One grayscale PNG per image and a labels.csv manifest (path, label; empty = unlabeled)."""
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im, mode="L").save(folder / "img" / f"s{i:05d}.png")
    pd.DataFrame({"path": [f"img/s{i:05d}.png" for i in range(len(imgs))], "label": [v or "" for v in labels]}).to_csv(folder / "labels.csv", index=False)


def _pixels(imgs: np.ndarray, side: int) -> np.ndarray:
    """(n, 1, side, side) float32 in [0, 1], resized as the distill stage's load_pixels does (PIL bilinear)."""
    from PIL import Image

    if not side or side == imgs.shape[1]:
        return imgs[:, None].astype(np.float32) / 255.0
    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BILINEAR), np.float32) for im in imgs])[:, None] / 255.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_student(x_train, y_train, x_test, y_test, cfg: DistillConfig, seed: int) -> float:
    """Test accuracy of the distill stage's student config trained on (x_train, y_train) alone."""
    from dataclasses import replace

    from labelkit.distill import fit_student, predict_proba
    from labelkit.distill.procedure import train_config
    from labelkit.distill.training_set import min_held_out

    # The stage's hold-out rule: early stopping only with enough held-out labels to stop on.
    n_val = round(cfg.val_fraction * len(y_train))
    tc = replace(train_config(cfg), val_fraction=cfg.val_fraction if n_val >= min_held_out(int(y_test.max()) + 1) else 0.0)
    fit = fit_student(x_train, y_train, config=tc, seed=seed)
    return float(np.mean(predict_proba(fit.model, x_test).argmax(1) == y_test))


PIPELINE = "labelkit"
REFERENCES = ("all true labels", "noisy labeled part")
STAGES = ("embed", "detect-noise", "pseudolabel", "distill", "predict")


def _rows(ids) -> np.ndarray:
    """Train rows of sample ids: s00012 (vectors) or img/s00012.png (images) is row 12."""
    return np.array([int(re.search(r"s(\d+)", i).group(1)) for i in ids], dtype=np.int64)


def _pseudo_accuracy(ws: Path, y_train: np.ndarray) -> tuple[float, float]:
    """Accuracy of every pseudo-label, and of the accepted ones, against the true labels (which no stage sees)."""
    pl = pq.read_table(ws / artifacts.PSEUDOLABELS, columns=["id", "label", "accepted"]).to_pandas()
    right = y_train[_rows(pl["id"])].astype(str) == pl["label"].to_numpy()
    acc = pl["accepted"].to_numpy(bool)
    return float(right.mean()), float(right[acc].mean()) if acc.any() else float("nan")


def _stage_seconds(*workspaces: Path) -> dict[str, float]:
    """Wall time per stage; distill's record includes the upstream stages it ran first, so they are taken off."""
    out: dict[str, float] = {}
    for ws in workspaces:
        for stage, rec in json.loads((ws / "manifest.json").read_text())["stages"].items():
            out[stage] = out.get(stage, 0.0) + float(rec.get("wall_time_s") or 0.0)
    out["distill"] -= sum(v for k, v in out.items() if k not in ("distill", "predict"))
    return out


def run_one(x: np.ndarray, y: np.ndarray, seed: int, cfg: DistillConfig) -> dict[str, dict]:
    """The pipeline and both references on one split: {method: {"acc": test accuracy, ...}}.

    ``x`` holds vectors for the embedding students; for the image students (cnn) uint8 images
    (n, H, W), written as PNGs and embedded by ``pixels:H`` for detect-noise and pseudolabel.
    """
    train, test = split(y, seed)
    given, flipped = noisy_labels(y[train], seed)
    images = STUDENTS[cfg.student].input_kind == "pixels"
    file_config = {"embed": {"model": f"pixels:{x.shape[1]}"}} if images else {}
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tr, te = Path(tmp) / "train", Path(tmp) / "test"
        write = write_images if images else write_manifest
        write(tr, x[train], [str(v) if v >= 0 else None for v in given])
        write(te, x[test], [str(v) for v in y[test]])
        ctx = RunContext(Workspace.open(tr), DatasetConfig(), file_config)
        t0 = time.perf_counter()
        res = distill_stage.run(ctx, cfg)  # runs embed, detect-noise and (unless told not to) pseudolabel first
        seconds = time.perf_counter() - t0
        pred = predict_stage.run(tr / ".labelkit" / "student", RunContext(Workspace.open(te), DatasetConfig(), file_config), PredictConfig(device="cpu"))
        s = res.summary
        pl_all, pl_acc = _pseudo_accuracy(tr / ".labelkit", y[train]) if cfg.use_pseudolabels else (float("nan"), float("nan"))
        dyn = pq.read_table(tr / ".labelkit" / "student" / "dynamics.parquet", columns=["id", "is_pseudo", "set_aside"]).to_pandas()
        trusted_rows, aside_rows = _rows(dyn.loc[~dyn["is_pseudo"], "id"]), _rows(dyn.loc[dyn["set_aside"], "id"])
        out[PIPELINE] = {"acc": pred.summary["accuracy"], "flipped_trusted": int(flipped[trusted_rows].sum()),
                         "set_aside": aside_rows.size, "set_aside_flipped": int(flipped[aside_rows].sum()), "n_trusted": s["n_trusted"], "n_pseudo": s["n_pseudo"], "n_dropped": s["n_dropped_issues"],
                         "pseudo_all": pl_all, "pseudo_accepted": pl_acc, "estimate": s["val_accuracy"], "seconds": seconds,
                         "stages": _stage_seconds(tr / ".labelkit", te / ".labelkit")}
    if images:  # what load_pixels gives the student: (n, 1, H, W) in [0, 1]
        xs_train, xs_test = (_pixels(x[rows], cfg.image_size) for rows in (train, test))
    else:  # what the embed stage gives the student
        xs_train, xs_test = _unit(x[train]), _unit(x[test])
    lab = given >= 0
    for name, rows, labels in (("all true labels", np.arange(train.size), y[train]), ("noisy labeled part", np.flatnonzero(lab), given)):
        t0 = time.perf_counter()
        acc = reference_student(xs_train[rows], labels[rows], xs_test, y[test], cfg, seed)
        out[name] = {"acc": acc, "n_trusted": rows.size, "n_pseudo": 0, "n_dropped": 0, "seconds": time.perf_counter() - t0}
    out["_split"] = {"n_train": train.size, "n_test": test.size, "n_labeled": int(lab.sum()), "n_flipped": int(flipped.sum()),
                     "estimate": s["estimate"], "folds": s["folds"]}
    return out


def _mean(runs: list[dict], method: str, key: str) -> float:
    return float(np.mean([r[method][key] for r in runs]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--datasets", default="digits,mnist", help="comma-separated: digits, mnist")
    ap.add_argument("--mnist-n", type=int, default=4000, help="MNIST test images used (a fixed subsample; 10000 = all)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="[default: 100 for mlp, 400 for cnn]")
    ap.add_argument("--student", choices=("mlp", "cnn"), default="mlp",
                    help="cnn: the pipeline on the datasets' images (PNG), the cnn student with FixMatch, without the pseudo-labels")
    ap.add_argument("--fixmatch", type=float, default=1.0, help="cnn: FixMatch weight (0 = the pseudo-labels instead)")
    ap.add_argument("--fixmatch-rule", choices=("fixed", "flexmatch"), default="flexmatch")
    ap.add_argument("--ema", type=float, default=0.0, help="cnn: EMA decay of the weights (0 = off)")
    ap.add_argument("--image-size", type=int, default=0, help="cnn: side the images are resized to (0 = their own)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (one torch thread each)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's numbers (per dataset and seed) to this file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the references; the distill stage itself trains mlp students on one thread
    if args.student == "cnn":
        epochs = args.epochs or 400
        # batch 64 + 128 unlabeled: FixMatch's mu = 2; crossfit (6 fits) is off to keep the run short
        cfg = DistillConfig(student="cnn", epochs=epochs, batch_size=64, fixmatch=args.fixmatch, use_pseudolabels=args.fixmatch == 0,
                            fixmatch_rule=args.fixmatch_rule, ema=args.ema, image_size=args.image_size, rounds=args.rounds, folds=0, device="cpu", threads=1)
        what = (f"cnn student on the images, --fixmatch {args.fixmatch:g} --fixmatch-rule {args.fixmatch_rule}"
                + (" --without-pseudolabels" if args.fixmatch else "") + f", --ema {args.ema:g}, --batch-size 64, --image-size {args.image_size}, --folds 0")
    else:
        epochs = args.epochs or 100
        cfg = DistillConfig(rounds=args.rounds, epochs=epochs, device="cpu")
        what = "mlp student, distill defaults"
    quality = [
        f"Test accuracy, mean ± std over seeds {args.first_seed}..{args.first_seed + args.seeds - 1}: train/test halves, {SHARE:.0%} of the "
        f"train labels kept, {FLIP:.0%} of those flipped; {what}, rounds={args.rounds}, epochs={epochs}.",
        "",
        "| dataset | train / test | labeled (flipped) | student trained on | test accuracy | trusted + pseudo (dropped issues) | s/run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    teacher = [
        "Where the gap comes from, and how well metrics.json predicts test accuracy (same runs):",
        "",
        "| dataset | pseudo-label accuracy: all / accepted | flipped labels trusted / set aside by distill (flipped) | student test accuracy | metrics.json accuracy (estimate, n) | estimate − test |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    timing = ["Seconds per run by stage (labelkit, wall time from manifest.json; shared, loaded 2-core machine):", "",
              "| dataset | " + " | ".join(STAGES) + " |", "| --- |" + " --- |" * len(STAGES)]
    verdicts = []
    per_run: dict[str, list[dict]] = {}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for name, x, y in load_datasets(set(args.datasets.split(",")), mnist_n=args.mnist_n, images=args.student == "cnn"):
        if args.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.jobs) as pool:
                runs = list(pool.map(run_one, *zip(*[(x, y, seed, cfg) for seed in seeds])))
        else:
            runs = [run_one(x, y, seed, cfg) for seed in seeds]
        per_run[name] = runs
        sp = {k: np.mean([r["_split"][k] for r in runs]) for k in ("n_train", "n_test", "n_labeled", "n_flipped")}
        for method in (PIPELINE, *REFERENCES):
            quality.append(
                f"| {name} | {sp['n_train']:.0f} / {sp['n_test']:.0f} | {sp['n_labeled']:.0f} ({sp['n_flipped']:.0f}) | {method} | "
                f"{_mean(runs, method, 'acc'):.4f} ± {np.std([r[method]['acc'] for r in runs]):.4f} | "
                f"{_mean(runs, method, 'n_trusted'):.0f} + {_mean(runs, method, 'n_pseudo'):.0f} ({_mean(runs, method, 'n_dropped'):.0f}) | "
                f"{_mean(runs, method, 'seconds'):.1f} |"
            )
        est = [r[PIPELINE]["estimate"] for r in runs]
        how = f"{runs[0]['_split']['estimate']}, {runs[0]['_split']['folds']} folds" if runs[0]["_split"]["folds"] else runs[0]["_split"]["estimate"]
        est_text = "n/a" if None in est else f"{np.mean(est):.4f} ({how}, {_mean(runs, PIPELINE, 'n_trusted'):.0f})"
        diff = "n/a" if None in est else f"{np.mean(np.subtract(est, [r[PIPELINE]['acc'] for r in runs])):+.4f}"
        teacher.append(f"| {name} | {_mean(runs, PIPELINE, 'pseudo_all'):.4f} / {_mean(runs, PIPELINE, 'pseudo_accepted'):.4f} | "
                       f"{_mean(runs, PIPELINE, 'flipped_trusted'):.1f} / {_mean(runs, PIPELINE, 'set_aside'):.1f} ({_mean(runs, PIPELINE, 'set_aside_flipped'):.1f}) | "
                       f"{_mean(runs, PIPELINE, 'acc'):.4f} | {est_text} | {diff} |")
        timing.append(f"| {name} | " + " | ".join(f"{np.mean([r[PIPELINE]['stages'].get(st, 0.0) for r in runs]):.1f}" for st in STAGES) + " |")
        ours, ceiling, noisy = (_mean(runs, m, "acc") for m in (PIPELINE, *REFERENCES))
        within, beats = ours >= ceiling - WITHIN, ours >= noisy + BEAT
        verdicts.append(f"{'PASS' if within and beats else 'FAIL'} {name}: {ours:.4f} within {WITHIN:.0%} of all true labels ({ceiling:.4f}): {within}; "
                        f"beats the noisy labeled part ({noisy:.4f}) by {BEAT:.0%}: {beats}")
    print("\n".join(quality + [""] + teacher + [""] + timing + [""] + verdicts))
    if args.json is not None:
        args.json.write_text(json.dumps(per_run, indent=1, default=float) + "\n")
    return 0 if verdicts and all(v.startswith("PASS") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
