"""Bring-your-own vectors read in batches: row numbers across batches, kept rows, fingerprints."""

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelkit.dataset import discover, samples_fingerprint
from labelkit.errors import BadInputError
from labelkit.manifest_vectors import ManifestVectors


def _write(folder, vectors, *, fixed=True, row_group_size=None, value=pa.float16()):
    n = len(vectors)
    if fixed:
        col = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vectors).reshape(-1), value), len(vectors[0]))
    else:
        col = pa.array(vectors, type=pa.list_(value))
    table = pa.table({"id": [f"r{i}" for i in range(n)], "label": ["a" if i % 2 else "b" for i in range(n)], "embedding": col})
    pq.write_table(table, folder / "labels.parquet", row_group_size=row_group_size)


def test_batches_cover_every_row_in_order_across_row_groups(tmp_path):
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    _write(tmp_path, x, row_group_size=7)
    v = discover(tmp_path).vectors
    blocks = list(v.batches(rows=8))
    assert [len(b) for b in blocks][:2] == [8, 8] and sum(len(b) for b in blocks) == 50
    np.testing.assert_array_equal(np.concatenate(blocks), x)
    np.testing.assert_array_equal(v.load(), x)
    assert v.dim == 3 and len(v) == 50


def test_a_bad_row_in_a_later_batch_is_named_by_its_manifest_row(tmp_path):
    x = np.ones((40, 2), np.float32).tolist()
    x[33][1] = float("inf")
    _write(tmp_path, x, fixed=False, value=pa.float32())
    with pytest.raises(BadInputError, match=r"^labels.parquet: row 35 'embedding' contains NaN or infinite values$"):
        list(discover(tmp_path).vectors.batches(rows=16))
    x[33][1] = 1.0
    x[20] = [1.0, 2.0, 3.0]
    _write(tmp_path, x, fixed=False, value=pa.float32())
    with pytest.raises(BadInputError, match=r"^labels.parquet: row 22 'embedding' has 3 values, row 2 has 2"):
        discover(tmp_path).vectors.load()


def test_nan_before_a_malformed_row_is_the_one_reported():
    arr = pa.array([[1.0, 2.0], [float("nan"), 1.0], None], type=pa.list_(pa.float32()))
    from labelkit.manifest_vectors import check_block

    with pytest.raises(BadInputError, match="row 12 'embedding' contains NaN"):
        check_block(arr, "m", 9, None)


def test_kept_rows_drop_out_of_batches_and_the_fingerprint():
    v = ManifestVectors("m", array=np.arange(12, dtype=np.float32).reshape(6, 2))
    v.keep(np.array([True, False, True, True, False, True]))
    v.keep(np.array([True, True, False, True]))  # of the kept four: drop the third (row 3)
    np.testing.assert_array_equal(v.load()[:, 0], [0, 4, 10])
    assert len(v) == 3


def test_fingerprint_sees_a_changed_vector_of_the_same_size(tmp_path):
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float16)
    _write(tmp_path, x)
    fp = samples_fingerprint(discover(tmp_path), tmp_path)
    assert samples_fingerprint(discover(tmp_path), tmp_path) == fp
    x[17, 2] = x[17, 2] + np.float16(0.5)  # one value, same file layout
    _write(tmp_path, x)
    assert samples_fingerprint(discover(tmp_path), tmp_path) != fp


def test_update_hash_reads_the_stored_column_bytes(tmp_path):
    _write(tmp_path, np.ones((10, 2), np.float16))
    h1, h2 = hashlib.blake2b(), hashlib.blake2b()
    ManifestVectors("m", path=tmp_path / "labels.parquet").update_hash(h1)
    ManifestVectors("m", path=tmp_path / "labels.parquet").update_hash(h2)
    assert h1.digest() == h2.digest()
    _write(tmp_path, np.full((10, 2), 2, np.float16))
    h3 = hashlib.blake2b()
    ManifestVectors("m", path=tmp_path / "labels.parquet").update_hash(h3)
    assert h3.digest() != h1.digest()
