"""`labelkit pseudolabel` with novelty, reasons and the error guarantee (--max-error), through the CLI on examples/digits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from labelkit import artifacts
from labelkit.cli import app
from tests.conftest import ROOT, digits_truth_by_name, digits_without_class

REASONS = {"below_threshold", "novel", "uncertified"}


@pytest.fixture(scope="module")
def digits_without_nines(tmp_path_factory) -> Path:
    """examples/digits with the 9s' labels removed: class 9 is never labeled, so its samples are novel."""
    return digits_without_class(tmp_path_factory.mktemp("openset") / "digits")


def test_every_row_has_novelty_and_a_reason(runner, digits_without_nines):
    data = digits_without_nines
    r = runner.invoke(app, ["pseudolabel", str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    pl = pq.read_table(data / ".labelkit" / "pseudolabels.parquet").to_pandas()
    assert {"novelty", "reason"} <= set(pl.columns)
    assert pl["novelty"].notna().all()
    assert pl.loc[pl["accepted"], "reason"].isna().all()
    assert set(pl.loc[~pl["accepted"], "reason"]) <= REASONS and pl.loc[~pl["accepted"], "reason"].notna().all()
    # The never-labeled 9s are the most novel: far above the known digits on average, and most of the novel ones.
    nine = (digits_truth_by_name().loc[[Path(i).name for i in pl["id"]]] == 9).to_numpy()
    assert pl["novelty"][nine].mean() > pl["novelty"][~nine].mean() + 1.0
    novel = pl["novelty"].to_numpy() >= out["novelty"]["threshold"]
    assert novel.sum() == out["n_novel"] > 20
    assert nine[novel].mean() > 0.5
    meta = artifacts.read_metadata(data / ".labelkit" / "pseudolabels.parquet")
    assert meta["novelty"]["threshold"] == out["novelty"]["threshold"]
    assert out["reasons"] == {k: int((pl["reason"] == k).sum()) for k in REASONS}


def test_max_error_certified_on_digits(runner, digits):
    # examples/digits flips 10% of its given labels on purpose, and "wrong" is measured against the
    # given labels (the guarantee's assumption): 24 of the 179 held-out labels disagree with the
    # teacher, so 5% cannot be certified there (22% at best, for the most confident fifth), 30% can.
    r = runner.invoke(app, ["pseudolabel", str(digits), "--max-error", "0.3", "--error-confidence", "0.9", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    g = out["guarantee"]
    assert out["certified"] is True and g["certified"] is True
    assert 0 < out["error_bound"] <= 0.3 and g["target"] == 0.3 and g["confidence"] == 0.9
    pl = pq.read_table(digits / ".labelkit" / "pseudolabels.parquet").to_pandas()
    # Accepted: the most confident share the certificate allows, less the rows judged novel.
    assert (pl["accepted"] == ((pl["confidence"] >= g["threshold"]) & (pl["reason"] != "novel"))).all()
    assert out["coverage"] == pytest.approx(pl["accepted"].mean(), abs=1e-3) and 0.2 < out["coverage"] < 1
    truth = pd.read_csv(ROOT / "examples" / "digits-truth.csv").set_index("path")
    wrong = pl["label"].to_numpy() != truth.loc[pl["id"], "true_label"].astype(str).to_numpy()
    assert wrong[pl["accepted"].to_numpy()].mean() <= 0.3
    assert artifacts.read_metadata(digits / ".labelkit" / "pseudolabels.parquet")["guarantee"]["certified"] is True


def test_uncertifiable_target_accepts_nothing_and_exits_3(runner, digits):
    # 179 labels cannot certify 0.1%: with no error at all they bound the rate at 1 - 0.1 ** (1 / 179) = 1.3%.
    r = runner.invoke(app, ["pseudolabel", str(digits), "--max-error", "0.001", "--json"])
    assert r.exit_code == 3, r.output
    out = json.loads(r.stdout)
    assert out["certified"] is False and out["n_accepted"] == 0
    assert 0.001 < out["guarantee"]["could_certify"]["error_bound"] < 0.3
    assert "cannot certify" in out["message"] and "could certify" in out["message"]
    pl = pq.read_table(digits / ".labelkit" / "pseudolabels.parquet").to_pandas()
    assert not pl["accepted"].any() and (pl["reason"] == "uncertified").all()
    # Up to date: skipped, and still the CI code.
    again = runner.invoke(app, ["pseudolabel", str(digits), "--max-error", "0.001"])
    assert again.exit_code == 3 and "up to date" in again.stderr


def test_bad_max_error_is_a_usage_error(runner, digits):
    r = runner.invoke(app, ["pseudolabel", str(digits), "--max-error", "1.5"])
    assert r.exit_code == 2
    assert "--max-error" in r.stderr
    assert not (digits / ".labelkit" / "pseudolabels.parquet").exists()
