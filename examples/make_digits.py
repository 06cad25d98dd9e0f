"""Regenerate examples/digits from scikit-learn's digits (1,797 real 8x8 handwritten digits).

Layout (labelkit's image-folder input): about 10% of samples labeled under ``<class>/``, the rest
under ``unlabeled/``; about 10% of the given labels are flipped to another class on purpose.
The true label of every image goes to ``examples/digits-truth.csv``, outside the dataset folder,
for tests and benchmarks only: the stages never read it.

    python examples/make_digits.py [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent


def main(seed: int = 0, labeled_frac: float = 0.10, flip_frac: float = 0.10) -> None:
    digits = load_digits()
    images, y = digits.images, digits.target
    rng = np.random.default_rng(seed)
    n = len(y)
    # Stratified: the same share of each class is labeled.
    labeled = np.zeros(n, dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = max(1, round(labeled_frac * len(members)))
        labeled[rng.choice(members, size=take, replace=False)] = True
    given = np.full(n, -1)
    given[labeled] = y[labeled]
    lab_idx = np.flatnonzero(labeled)
    flip = rng.choice(lab_idx, size=round(flip_frac * len(lab_idx)), replace=False)
    for i in flip:
        given[i] = rng.choice([c for c in range(10) if c != y[i]])

    out = HERE / "digits"
    if out.exists():
        shutil.rmtree(out)
    rows = []
    for i in range(n):
        folder = "unlabeled" if given[i] < 0 else str(given[i])
        rel = Path(folder) / f"digit_{i:04d}.png"
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        pixels = (images[i] * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(out / rel)
        rows.append((rel.as_posix(), int(y[i]), "" if given[i] < 0 else int(given[i]), int(i in set(flip))))
    with open(HERE / "digits-truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label", "given_label", "flipped"])
        w.writerows(rows)
    print(f"wrote {n} images to {out}: {labeled.sum()} labeled, {len(flip)} flipped")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    main(seed=p.parse_args().seed)
