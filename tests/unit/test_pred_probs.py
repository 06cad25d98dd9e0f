"""--pred-probs reading and row checks (labelkit.pred_probs): vectorised, with the same answers and messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelkit import pred_probs
from labelkit.dataset import discover
from labelkit.errors import BadInputError
from labelkit.pred_probs import normalise_rows, read_pred_probs
from tests.conftest import write_csv


def _samples(tmp_path, rows: str = "id,label\nw,a\nx,b\ny,\nz,a\n"):
    write_csv(tmp_path, rows)
    return discover(tmp_path, require_inputs=False)


def _write(path, ids, a, b, dtype=np.float64):
    pq.write_table(pa.table({"id": ids, "a": np.asarray(a, dtype), "b": np.asarray(b, dtype)}), path)


def test_parquet_rows_are_put_in_samples_order_and_only_the_rows_asked_for_need_one(tmp_path):
    s = _samples(tmp_path)
    # shuffled, an id that is not a sample ('q'), and no row for the unlabeled 'y'
    _write(tmp_path / "p.parquet", ["z", "q", "x", "w"], [0.8, 0.5, 0.3, 0.9], [0.2, 0.5, 0.7, 0.1])
    got = read_pred_probs(tmp_path / "p.parquet", s)  # the labeled rows w, x, z
    np.testing.assert_array_equal(got, [[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "p.parquet", s, np.array([3, 0])), [[0.8, 0.2], [0.9, 0.1]])
    with pytest.raises(BadInputError, match="no row for labeled id 'y'"):
        read_pred_probs(tmp_path / "p.parquet", s, np.array([0, 2]))


def test_float32_file_stays_float32_and_normalises_like_float64(tmp_path, monkeypatch):
    monkeypatch.setattr(pred_probs, "_BLOCK", 3)  # several batches and transposing blocks
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(10)]
    write_csv(tmp_path, "id,label\n" + "".join(f"{i},{'ab'[j % 2]}\n" for j, i in enumerate(ids)))
    s = discover(tmp_path, require_inputs=False)
    p = rng.random((10, 2)).astype(np.float32)
    p[4] *= 1.0002  # off by rounding: rescaled
    _write(tmp_path / "p.parquet", ids, p[:, 0], p[:, 1], np.float32)
    got = read_pred_probs(tmp_path / "p.parquet", s, renormalize=True)
    wide = p.astype(np.float64)
    assert got.dtype == np.float32  # summed in float64, rescaled in float32 (the file's precision)
    np.testing.assert_allclose(got, wide / wide.sum(axis=1, keepdims=True), rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(normalise_rows(p, "f", renormalize=True), got)
    # Shuffled file rows and a subset asked for: the same rows, each in its place.
    order = rng.permutation(10)
    _write(tmp_path / "q.parquet", [ids[i] for i in order], p[order, 0], p[order, 1], np.float32)
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "q.parquet", s, np.array([7, 1, 2]), renormalize=True), got[[7, 1, 2]])


def test_npy_with_a_row_per_sample_or_per_labeled_sample(tmp_path):
    s = _samples(tmp_path)  # w, x labeled; y unlabeled; z labeled
    full = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5], [0.8, 0.2]])
    np.save(tmp_path / "all.npy", full)
    np.save(tmp_path / "lab.npy", full[[0, 1, 3]])
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "all.npy", s), full[[0, 1, 3]])
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "lab.npy", s), full[[0, 1, 3]])
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "all.npy", s, np.array([2, 3])), full[[2, 3]])
    with pytest.raises(BadInputError, match="labeled samples only"):
        read_pred_probs(tmp_path / "lab.npy", s, np.array([2]))


def test_bad_rows_in_the_file_name_the_sample(tmp_path):
    s = _samples(tmp_path)
    _write(tmp_path / "p.parquet", ["w", "x", "y", "z"], [0.9, np.nan, 0.5, -0.5], [0.1, 0.5, 0.5, 1.5])
    with pytest.raises(BadInputError, match=r"--pred-probs p.parquet: probabilities contain NaN or infinite values for labeled samples \(first: id 'x'\)"):
        read_pred_probs(tmp_path / "p.parquet", s)
    _write(tmp_path / "p.parquet", ["w", "x", "y", "z"], [0.9, 0.6, 0.5, 0.8], [0.1, 0.6, 0.5, 0.2])
    with pytest.raises(BadInputError, match=r"1 of 3 rows do not sum to 1 .* \(first: id 'x' sums to 1.2\); pass --renormalize"):
        read_pred_probs(tmp_path / "p.parquet", s)


@pytest.mark.parametrize("ids, message", [
    (["w", "x", "x", "z"], "--pred-probs p.parquet: duplicate id 'x' (2 rows share an id); give each sample one row"),
    (["w", None, "y", "z"], "--pred-probs p.parquet: row 2 has no 'id'"),
    (["w", "y", "z", "q"], "--pred-probs p.parquet: no row for labeled id 'x'"),
])
def test_bad_ids_name_the_row_or_id(tmp_path, ids, message):
    s = _samples(tmp_path)
    _write(tmp_path / "p.parquet", ids, [0.5] * 4, [0.5] * 4)
    with pytest.raises(BadInputError) as e:
        read_pred_probs(tmp_path / "p.parquet", s)
    assert str(e.value) == message


def test_integer_ids_are_read_as_their_text(tmp_path):
    s = _samples(tmp_path, "id,label\n1,a\n2,b\n")
    pq.write_table(pa.table({"id": [2, 1], "a": [0.4, 0.9], "b": [0.6, 0.1]}), tmp_path / "p.parquet")
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "p.parquet", s), [[0.9, 0.1], [0.4, 0.6]])
    # In the samples' order the ids are compared in Arrow (no Python strings): the same answer
    pq.write_table(pa.table({"id": [1, 2], "a": [0.9, 0.4], "b": [0.1, 0.6]}), tmp_path / "p.parquet")
    np.testing.assert_array_equal(read_pred_probs(tmp_path / "p.parquet", s), [[0.9, 0.1], [0.4, 0.6]])
    pq.write_table(pa.table({"id": [1, 3], "a": [0.9, 0.4], "b": [0.1, 0.6]}), tmp_path / "p.parquet")
    with pytest.raises(BadInputError, match="no row for labeled id '2'"):
        read_pred_probs(tmp_path / "p.parquet", s)


def test_a_stored_pandas_index_is_not_a_class_column(tmp_path):
    s = _samples(tmp_path)
    pd.DataFrame({"id": ["w", "x", "y", "z"], "a": [0.9, 0.2, 0.5, 0.8], "b": [0.1, 0.8, 0.5, 0.2]}, index=[7, 8, 9, 10]).to_parquet(tmp_path / "p.parquet")
    assert read_pred_probs(tmp_path / "p.parquet", s)[1].tolist() == [0.2, 0.8]


def test_normalise_rows_matches_clip_then_divide_and_leaves_its_input_alone(monkeypatch):
    monkeypatch.setattr(pred_probs, "_CACHE_BYTES", 64)  # blocks of 256 rows: several
    rng = np.random.default_rng(1)
    p = rng.random((1000, 5))
    p /= p.sum(axis=1, keepdims=True)
    p[[3, 700], 2] = -5e-7  # rounding below zero: clipped
    before = p.copy()
    ref = np.clip(p, 0, None)
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(normalise_rows(p, "f", renormalize=True), ref, rtol=4 * np.finfo(np.float64).eps)
    np.testing.assert_array_equal(p, before)


def test_normalise_rows_names_the_first_bad_row_in_order_of_checks():
    p = np.array([[0.5, 0.5], [0.0, 0.0], [np.inf, 0.0], [-0.5, 1.5]])
    with pytest.raises(BadInputError, match=r"NaN or infinite values for labeled samples \(first: row 3\)"):
        normalise_rows(p, "f")
    with pytest.raises(BadInputError, match=r"must be >= 0 \(first negative: id 'd'\)"):
        normalise_rows(p[[0, 1, 3]], "f", ids=np.array(["b", "c", "d"]))
    with pytest.raises(BadInputError, match="the row for row 2 sums to 0"):
        normalise_rows(p[:2], "f")


def test_reading_reports_progress_per_batch(tmp_path, monkeypatch):
    from contextlib import contextmanager

    monkeypatch.setattr(pred_probs, "_BLOCK", 2)
    s = _samples(tmp_path)
    _write(tmp_path / "p.parquet", ["w", "x", "y", "z"], [0.9, 0.2, 0.5, 0.8], [0.1, 0.8, 0.5, 0.2])
    seen = []

    class Recorder:
        @contextmanager
        def task(self, description, total=None):
            seen.append((description, total))
            yield type("T", (), {"advance": lambda self, n=1: seen.append(n), "update": lambda self, **f: None})()

        def log(self, message):
            pass

    read_pred_probs(tmp_path / "p.parquet", s, progress=Recorder())
    assert seen == [("read p.parquet", 4), 2, 2]
