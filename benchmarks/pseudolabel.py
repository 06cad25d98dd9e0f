"""Pseudo-label quality: labelkit's default against scikit-learn's LabelSpreading and SelfTraining.

    python benchmarks/pseudolabel.py [--seeds 5] [--first-seed 0] [--mnist-n 10000] [--no-mnist]

About 3.5 CPU-minutes (single-threaded BLAS), most of it scikit-learn's SelfTraining on MNIST;
``--no-mnist`` takes about a minute.

For each dataset and share of kept labels, over the seeds: a stratified labeled subset
(round(share * class size) per class, at least one), then pseudo-labels for the rest. Reported:
accuracy of the pseudo-labels on the unlabeled samples at 100 %, 80 % and 50 % coverage (the
most confident first, each method ranked by its own confidence), mean over seeds, and the wall
time of one run.

Vectors (the same for every method):
- digits (scikit-learn ``load_digits``, 1,797 x 64): pixels standardised per feature
  (``StandardScaler``) = "std"; "l2" = those rows L2-normalised.
- MNIST test images (/work/shared/data/mnist, 10,000 x 784; skipped if absent): pixels / 255 =
  "std"; "l2" = rows L2-normalised.
labelkit gets the "l2" vectors and the kNN graph from ``labelkit.knn.knn_graph`` (k = 10,
exact). The baselines run on both "std" and "l2" vectors and both appear in the table;
the bar is the best baseline row at each coverage.

Baselines: ``LabelSpreading(kernel="knn")`` and
``SelfTrainingClassifier(LogisticRegression(max_iter=1000))``, default parameters otherwise.
Confidence = the row maximum of ``label_distributions_`` / ``predict_proba``.

The script exits non-zero unless labelkit's default beats the best baseline at every coverage,
averaged over seeds, on every dataset. It also prints labelkit's calibration: the ECE (15 bins)
of the held-out labeled samples it reports, and the ECE of its confidences on the unlabeled
samples measured with their true labels (which labelkit never sees).
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from labelkit import calibration  # noqa: E402
from labelkit import pseudolabel as pl  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
COVERAGES = (1.0, 0.8, 0.5)
K_NEIGHBORS = 10


@dataclass(frozen=True)
class Dataset:
    name: str
    std: np.ndarray  # what the baselines may prefer (unnormalised)
    l2: np.ndarray  # unit rows: labelkit's input, also given to the baselines
    y: np.ndarray
    shares: tuple[float, ...]


def _idx(path: Path) -> np.ndarray:
    b = gzip.open(path).read()
    nd = b[3]
    shape = struct.unpack(">" + "I" * nd, b[4 : 4 + 4 * nd])
    return np.frombuffer(b[4 + 4 * nd :], dtype=np.uint8).reshape(shape)


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_datasets(*, mnist: bool, mnist_n: int) -> list[Dataset]:
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    d = load_digits()
    std = StandardScaler().fit_transform(d.data.astype(np.float64)).astype(np.float32)
    out = [Dataset("digits", std, _l2(std), d.target.astype(np.int64), (0.02, 0.05, 0.10))]
    images, labels = DATA / "mnist" / "t10k-images-idx3-ubyte.gz", DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if not mnist:
        pass
    elif images.exists() and labels.exists():
        x = _idx(images).reshape(-1, 784).astype(np.float32) / 255.0
        y = _idx(labels).astype(np.int64)
        if mnist_n < len(y):  # a fixed subsample, the same for every seed and method
            keep = np.sort(np.random.default_rng(12345).choice(len(y), mnist_n, replace=False))
            x, y = x[keep], y[keep]
        out.append(Dataset(f"mnist-{len(y) // 1000}k", x, _l2(x), y, (0.01,)))
    else:
        print(f"MNIST not found under {DATA / 'mnist'}: skipped", file=sys.stderr)
    return out


def stratified_labels(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """-1 everywhere except round(share * n_c) random samples of each class c (at least one)."""
    rng = np.random.default_rng(seed)
    labels = np.full(y.shape, -1, dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = max(1, round(share * members.size))
        labels[rng.choice(members, size=take, replace=False)] = c
    return labels


def accuracy_at_coverage(pred: np.ndarray, conf: np.ndarray, truth: np.ndarray) -> list[float]:
    order = np.argsort(-conf, kind="stable")
    out = []
    for c in COVERAGES:
        top = order[: max(1, int(round(c * order.size)))]
        out.append(float((pred[top] == truth[top]).mean()))
    return out


def run_labelkit(ds: Dataset, labels: np.ndarray, graph) -> tuple[np.ndarray, np.ndarray, dict]:
    r = pl.pseudolabel(ds.l2, labels, int(ds.y.max()) + 1, graph)
    unl = labels < 0
    extra = {"ece": r.ece, "ece_unlabeled": calibration.expected_calibration_error(r.probs[unl], ds.y[unl])}
    return r.label, r.confidence, extra


def run_label_spreading(x, labels):
    from sklearn.semi_supervised import LabelSpreading

    p = LabelSpreading(kernel="knn").fit(x, labels).label_distributions_
    return p.argmax(axis=1), p.max(axis=1)


def run_self_training(x, labels):
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier

    m = SelfTrainingClassifier(LogisticRegression(max_iter=1000)).fit(x, labels)
    p = m.predict_proba(x)
    return m.classes_[p.argmax(axis=1)], p.max(axis=1)


def knn_graph(x: np.ndarray, k: int):
    from labelkit.knn import knn_graph as graph

    return graph(x, k, method="exact", device="cpu")


def evaluate(datasets: list[Dataset], seeds: range) -> list[dict]:
    rows = []
    for ds in datasets:
        graph = knn_graph(ds.l2, K_NEIGHBORS)
        for share in ds.shares:
            acc: dict[str, list] = {}
            secs: dict[str, list] = {}
            eces: list = []
            for seed in seeds:
                labels = stratified_labels(ds.y, share, seed)
                unl = labels < 0
                runs = {"labelkit (default)": lambda: run_labelkit(ds, labels, graph)}
                for vec in ("std", "l2"):
                    x = getattr(ds, vec)
                    runs[f"LabelSpreading(knn) [{vec}]"] = lambda x=x: run_label_spreading(x, labels)
                    runs[f"SelfTraining(LogReg) [{vec}]"] = lambda x=x: run_self_training(x, labels)
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    out = fn()
                    secs.setdefault(name, []).append(time.perf_counter() - t0)
                    pred, conf = out[0], out[1]
                    acc.setdefault(name, []).append(accuracy_at_coverage(pred[unl], conf[unl], ds.y[unl]))
                    if len(out) == 3:
                        eces.append((out[2]["ece"], out[2]["ece_unlabeled"]))
            for name in acc:
                rows.append(
                    {
                        "dataset": ds.name,
                        "share": share,
                        "n_labeled": int((labels >= 0).sum()),
                        "method": name,
                        "acc": np.mean(acc[name], axis=0),
                        "seconds": float(np.mean(secs[name])),
                        "ece": np.nanmean(eces, axis=0) if name.startswith("labelkit") else None,
                    }
                )
    return rows


def render(rows: list[dict], seeds: range) -> str:
    lines = [
        f"Accuracy of pseudo-labels on the unlabeled samples, mean over seeds {seeds.start}..{seeds.stop - 1}"
        " (stratified labeled subsets).",
        "",
        "| dataset | labeled | method | acc@100% | acc@80% | acc@50% | s/run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        a = r["acc"]
        lines.append(
            f"| {r['dataset']} | {r['share']:.0%} ({r['n_labeled']}) | {r['method']} | "
            f"{a[0]:.4f} | {a[1]:.4f} | {a[2]:.4f} | {r['seconds']:.2f} |"
        )
    lines += ["", "labelkit calibration (ECE, 15 bins): held-out labeled (reported) / unlabeled vs truth", ""]
    lines += ["| dataset | labeled | ECE held-out | ECE unlabeled |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r["ece"] is not None:
            lines.append(f"| {r['dataset']} | {r['share']:.0%} | {r['ece'][0]:.4f} | {r['ece'][1]:.4f} |")
    return "\n".join(lines)


def check(rows: list[dict]) -> list[str]:
    """Every way labelkit's default fails to beat the best baseline row at a coverage."""
    failures = []
    for key in sorted({(r["dataset"], r["share"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["share"]) == key]
        ours = next(r for r in group if r["method"].startswith("labelkit"))
        for i, cov in enumerate(COVERAGES):
            best = max(group, key=lambda r: -1 if r is ours else r["acc"][i])
            if not ours["acc"][i] > best["acc"][i]:
                failures.append(
                    f"{key[0]} {key[1]:.0%} acc@{cov:.0%}: labelkit {ours['acc'][i]:.4f} <= {best['method']} {best['acc'][i]:.4f}"
                )
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--mnist-n", type=int, default=10_000, help="MNIST test images used (fixed subsample)")
    p.add_argument("--no-mnist", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (1: the machine is shared)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        rows = evaluate(load_datasets(mnist=not args.no_mnist, mnist_n=args.mnist_n), seeds)
    print(render(rows, seeds))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    failures = check(rows)
    if failures:
        print("\nFAILED: labelkit's default does not beat the best baseline:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("\nOK: labelkit's default beats the best baseline at every coverage on every dataset.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
