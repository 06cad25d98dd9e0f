"""The CI recipe (examples/ci/check-labels.sh) passes on clean labels and fails on noisy ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "examples" / "ci" / "check-labels.sh"


def _dataset(folder, flip: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16)) * 3
    y = np.repeat(np.arange(3), 60)
    x = centers[y] + rng.normal(size=(len(y), 16))
    given = y.copy()
    flipped = rng.choice(len(y), size=int(flip * len(y)), replace=False)
    given[flipped] = (given[flipped] + 1) % 3
    folder.mkdir()
    pd.DataFrame({"id": [f"s{i}" for i in range(len(y))], "embedding": list(x), "label": [f"c{g}" for g in given]}).to_parquet(folder / "labels.parquet")
    return folder


def _run(data, rate, out):
    env = {**os.environ, "LABELKIT": f"{sys.executable} -m labelkit", "OUT": str(out)}
    return subprocess.run(["bash", str(SCRIPT), str(data), str(rate)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_recipe_passes_on_clean_and_fails_on_noisy(tmp_path):
    clean = _run(_dataset(tmp_path / "clean", 0.0), 0.05, tmp_path / "out1")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "labels OK" in clean.stdout
    noisy = _run(_dataset(tmp_path / "noisy", 0.2), 0.05, tmp_path / "out2")
    assert noisy.returncode == 3, noisy.stdout + noisy.stderr
    assert "too many label issues" in noisy.stdout
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary["issue_rate"] > 0.05
    review = pd.read_csv(tmp_path / "out2" / "review.csv")
    assert len(review) == summary["n_issues"]


def test_recipe_reports_labelkit_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _run(tmp_path / "empty", 0.05, tmp_path / "out")
    assert r.returncode == 1
    assert "labelkit failed with exit code 1" in r.stdout
