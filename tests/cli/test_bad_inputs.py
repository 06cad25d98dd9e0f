"""Bad or unusual inputs through the CLI (issue 14, item 4): a one-line error and exit 1, or a
reported skip, or the right answer; never a traceback nor the last-resort 'internal error' line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelkit import artifacts
from labelkit.cli import app
from tests.conftest import write_csv

LABELS = "id,label\nw,a\nx,b\ny,b\nz,a\n"
GOOD = {"id": ["w", "x", "y", "z"], "a": [0.9, 0.2, 0.1, 0.8], "b": [0.1, 0.8, 0.9, 0.2]}


def _fails(r, message: str) -> None:
    """Exit 1 with exactly one line on stderr, containing ``message``; no traceback."""
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.output and "internal error" not in r.output


def _clean(r) -> None:
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output


def _detect(runner, data: Path, probs_file: str, *extra: str):
    return runner.invoke(app, ["detect-noise", str(data), "--pred-probs", str(data / probs_file), *extra])


def _png(path: Path, side: int = 8, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), value, np.uint8)).save(path)
    return path


# -- --pred-probs ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale, total", [(5.0, "5"), (0.2, "0.2")])
def test_pred_probs_rows_not_summing_to_one_need_renormalize(runner, tmp_path, scale, total):
    write_csv(tmp_path, LABELS)
    df = pd.DataFrame(GOOD)
    df.loc[0, ["a", "b"]] *= scale
    df.to_parquet(tmp_path / "p.parquet")
    r = _detect(runner, tmp_path, "p.parquet")
    _fails(r, f"--pred-probs p.parquet: 1 of 4 rows do not sum to 1 within 0.001 (first: id 'w' sums to {total}); pass --renormalize")
    assert not (tmp_path / ".labelkit" / "label_issues.parquet").exists()
    _clean(_detect(runner, tmp_path, "p.parquet", "--renormalize"))
    assert (tmp_path / ".labelkit" / "label_issues.parquet").exists()


def test_pred_probs_npy_rows_not_summing_to_one_likewise(runner, tmp_path):
    write_csv(tmp_path, LABELS)
    np.save(tmp_path / "p.npy", np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 4.0], [0.8, 0.2]]))
    _fails(_detect(runner, tmp_path, "p.npy"), "--pred-probs p.npy: 1 of 4 rows do not sum to 1 within 0.001 (first: id 'y' sums to 5)")
    _clean(_detect(runner, tmp_path, "p.npy", "--renormalize"))


def test_pred_probs_npy_in_numeric_class_order_is_an_error_saying_so(runner, tmp_path):
    # Classes 0-11 sort as '0', '1', '10', '11', '2', ...: a .npy written in numeric column order
    # would score every row against the wrong class.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 12, 240)
    write_csv(tmp_path, "id,label\n" + "".join(f"s{i},{c}\n" for i, c in enumerate(y)))
    p = np.full((240, 12), 0.02)
    p[np.arange(240), y] = 0.78  # numeric order: column j is class j
    np.save(tmp_path / "p.npy", p)
    _fails(_detect(runner, tmp_path, "p.npy"), "--pred-probs p.npy: its columns look like the classes in numeric order (0, 1, 2, 3, ...): "
           "its top class matches 100% of the labels that way")
    np.save(tmp_path / "p.npy", p[:, sorted(range(12), key=str)])  # sorted-name order: accepted
    _clean(_detect(runner, tmp_path, "p.npy"))


def test_pred_probs_off_by_rounding_are_accepted(runner, tmp_path):
    write_csv(tmp_path, LABELS)
    df = pd.DataFrame(GOOD)
    df["a"] += 1e-5  # IMDB's published file is off by about this much
    df.to_parquet(tmp_path / "p.parquet")
    _clean(_detect(runner, tmp_path, "p.parquet"))


def test_pred_probs_extra_class_column_is_an_error_naming_it(runner, tmp_path):
    write_csv(tmp_path, LABELS)
    pd.DataFrame({**GOOD, "a": [0.45, 0.1, 0.05, 0.4], "c": [0.45, 0.1, 0.05, 0.4]}).to_parquet(tmp_path / "p.parquet")
    _fails(_detect(runner, tmp_path, "p.parquet"),
           "--pred-probs p.parquet: column 'c' is not among the dataset's classes 'a', 'b'; the file must have 'id' and one column per class, nothing else")


def test_pred_probs_missing_class_columns_are_an_error_naming_them(runner, tmp_path):
    write_csv(tmp_path, "id,label\nw,a\nx,b\ny,c\nz,d\n")
    pd.DataFrame({"id": ["w", "x", "y", "z"], "a": [1.0, 0, 0, 0], "b": [0, 1.0, 0, 0]}).to_parquet(tmp_path / "p.parquet")
    _fails(_detect(runner, tmp_path, "p.parquet"), "--pred-probs p.parquet: no column for classes 'c', 'd' (needs 'id' and one column per class)")


def test_pred_probs_duplicate_ids_are_an_error(runner, tmp_path):
    write_csv(tmp_path, LABELS)
    df = pd.DataFrame(GOOD)
    pd.concat([df, df.iloc[[1]]]).to_parquet(tmp_path / "p.parquet")
    _fails(_detect(runner, tmp_path, "p.parquet"), "--pred-probs p.parquet: duplicate id 'x' (2 rows share an id); give each sample one row")


def test_pred_probs_non_numeric_class_column_is_an_error(runner, tmp_path):
    write_csv(tmp_path, LABELS)
    pd.DataFrame({**GOOD, "a": ["high", "low", "low", "high"]}).to_parquet(tmp_path / "p.parquet")
    _fails(_detect(runner, tmp_path, "p.parquet"), "--pred-probs p.parquet: the class columns must hold numbers")


def test_pred_probs_not_parquet_is_an_error(runner, tmp_path):
    write_csv(tmp_path, LABELS)
    (tmp_path / "p.parquet").write_bytes(b"not parquet at all")
    _fails(_detect(runner, tmp_path, "p.parquet"), "--pred-probs p.parquet: cannot read")


# -- labels ---------------------------------------------------------------------------------


def test_ambiguous_multi_label_manifest_is_a_one_line_error(runner, tmp_path):
    write_csv(tmp_path, "text,label,labels\ngood film,,pos|fun\nbad film,neg,\n")
    _fails(runner.invoke(app, ["embed", str(tmp_path)]),
           "labels.csv: row 3 has a 'label' ('neg') but no 'labels', while other rows carry several classes")


def test_na_strings_are_unlabeled_and_recorded_in_samples_parquet(runner, tmp_path):
    write_csv(tmp_path, "id,label\nw,a\nx,b\ny,nan\nz,None\nv,b\nu,a\n")
    pd.DataFrame({"id": ["w", "x", "v", "u"], "a": [0.9, 0.2, 0.1, 0.8], "b": [0.1, 0.8, 0.9, 0.2]}).to_parquet(tmp_path / "p.parquet")
    r = _detect(runner, tmp_path, "p.parquet", "--json")
    _clean(r)
    assert json.loads(r.stdout)["n_labeled"] == 4  # 'nan' and 'None' are not classes, their rows not labeled
    df, meta = artifacts.read_samples(tmp_path / ".labelkit" / "samples.parquet")
    assert df["label"].tolist() == ["a", "b", None, None, "b", "a"] and meta["classes"] == ["a", "b"]
    assert [n["message"] for n in meta["notices"]] == ["2 labels written as 'nan' (1), 'None' (1) read as unlabeled"]


# -- files ----------------------------------------------------------------------------------


@pytest.fixture
def awkward_folder(tmp_path) -> Path:
    """Two classes of images plus a dangling link, a link leaving DATA and a Latin-1 file name."""
    data = tmp_path / "data"
    for i in range(3):
        _png(data / "a" / f"{i}.png", value=10 * i)
        _png(data / "b" / f"{i}.png", value=200 + 10 * i)
    _png(tmp_path / "outside.png")
    (data / "a" / "gone.png").symlink_to(tmp_path / "nope.png")
    (data / "b" / "out.png").symlink_to(tmp_path / "outside.png")
    with open(os.path.join(os.fsencode(data / "a"), b"caf\xe9.png"), "wb") as f:
        f.write((data / "a" / "0.png").read_bytes())
    return data


def test_skipped_files_are_listed_and_the_rest_embedded(runner, awkward_folder):
    r = runner.invoke(app, ["embed", str(awkward_folder), "--model", "pixels:8", "--json"])
    _clean(r)
    assert json.loads(r.stdout)["n_embedded"] == 6
    _, meta = artifacts.read_samples(awkward_folder / ".labelkit" / "samples.parquet")
    assert meta["n_skipped"] == 3
    assert meta["skipped"] == [["a/caf\\xe9.png", "undecodable name"], ["a/gone.png", "dangling link"], ["b/out.png", "link leaves DATA"]]
    assert [n["code"] for n in meta["notices"]] == ["skipped_files"]


def test_a_manifest_with_the_same_files_skips_them_alike(runner, awkward_folder):
    write_csv(awkward_folder, "path,label\na/0.png,a\na/1.png,a\nb/0.png,b\nb/1.png,b\na/gone.png,a\nb/out.png,b\n")
    r = runner.invoke(app, ["embed", str(awkward_folder), "--model", "pixels:8", "--json"])
    _clean(r)
    assert json.loads(r.stdout)["n_embedded"] == 4
    _, meta = artifacts.read_samples(awkward_folder / ".labelkit" / "samples.parquet")
    assert meta["skipped"] == [["a/gone.png", "dangling link"], ["b/out.png", "link leaves DATA"]]


@pytest.fixture
def huge_png(tmp_path, monkeypatch) -> Path:
    """An image folder where b/big.png is over Pillow's limit (lowered here, not a real 400 MP file)."""
    data = tmp_path / "data"
    for i in range(3):
        _png(data / "a" / f"{i}.png", value=10 * i)
        _png(data / "b" / f"{i}.png", value=200 + 10 * i)
    _png(data / "b" / "big.png", side=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # error past 2,000 pixels: big.png has 4,096
    return data


@pytest.mark.parametrize("model", ["pixels:8", "efficientnet-lite0"])
def test_an_image_over_pillows_limit_is_skipped_as_too_large(runner, huge_png, model, one_torch_thread):
    if model == "efficientnet-lite0":
        pytest.importorskip("efficientnet_lite_pytorch")
    r = runner.invoke(app, ["embed", str(huge_png), "--model", model])
    _clean(r)
    assert "skipped b/big.png: ValueError: too large: " in r.stderr
    assert "6 embedded" in r.stderr and "1 skipped" in r.stderr


def test_model_auto_skips_an_image_over_pillows_limit(runner, huge_png, one_torch_thread):
    r = runner.invoke(app, ["embed", str(huge_png), "--model", "auto"])
    _clean(r)
    assert "skipped b/big.png: ValueError: too large: " in r.stderr
