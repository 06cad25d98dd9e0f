"""Shared fixtures: the CLI runner, a private copy of examples/digits, small manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and immune to a busy machine. Restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    """A private copy of examples/digits (tests never write into the repo)."""
    dst = tmp_path / "digits"
    shutil.copytree(DIGITS, dst, ignore=shutil.ignore_patterns(".labelkit"))
    return dst


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a user's clone has none)")
    return SHARED_DATA


def write_csv(folder: Path, text: str, name: str = "labels.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def digits_without_class(dst: Path, label: str = "9") -> Path:
    """A copy of examples/digits at ``dst`` whose folder ``label`` moved to unlabeled/: a class no one labeled."""
    shutil.copytree(DIGITS, dst, ignore=shutil.ignore_patterns(".labelkit"))
    for f in (dst / label).iterdir():
        f.rename(dst / "unlabeled" / f.name)
    (dst / label).rmdir()
    return dst


def digits_truth_by_name() -> pd.Series:
    """True class of each examples/digits image by file name (folders move in the tests)."""
    t = pd.read_csv(ROOT / "examples" / "digits-truth.csv")
    return pd.Series(t["true_label"].to_numpy(), index=[Path(p).name for p in t["path"]])
