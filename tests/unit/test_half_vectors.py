"""Half-precision embeddings kept as stored: no float32 copy of unit rows, the same answers."""

import numpy as np
import pytest

from labelkit import artifacts
from labelkit._validation import unit_embeddings
from labelkit.errors import BadInputError
from labelkit.knn import knn_graph


def _unit(n, d, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def test_unit_rows_come_back_as_they_are():
    for dtype in (np.float16, np.float32):
        x = _unit(50, 8, dtype=dtype)
        assert unit_embeddings(x) is x


def test_rows_off_unit_norm_get_one_float32_normalised_copy():
    x = _unit(5, 3, dtype=np.float16) * np.float16(2)
    y = unit_embeddings(x)
    assert y.dtype == np.float32 and y is not x
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)
    z = unit_embeddings(np.array([[3.0, 4.0], [0.0, 0.0]]))  # float64 in, zero row kept
    np.testing.assert_allclose(z, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    strided = _unit(6, 4)[::2]
    assert unit_embeddings(strided).flags.c_contiguous


def test_non_finite_rows_are_refused_in_any_block():
    x = _unit(70_000, 2, dtype=np.float16)
    x[69_999, 1] = np.inf  # in the second 65,536-row block
    with pytest.raises(BadInputError, match="'embeddings' contains NaN or infinite values"):
        unit_embeddings(x)


def test_knn_graph_on_float16_rows_is_the_exact_graph_of_their_values():
    x = _unit(400, 16, dtype=np.float16)
    sims, idx = knn_graph(x, 5, device="cpu")
    full = x.astype(np.float32) @ x.astype(np.float32).T  # the rows as stored, not renormalised
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(sims, np.take_along_axis(full, idx, axis=1), rtol=1e-5)
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :5], rtol=1e-5)  # the top 5 (ties in any order)


def test_the_cache_gives_one_zero_copy_array_across_row_groups(tmp_path):
    x = _unit(10, 4)
    w = artifacts.EmbeddingsWriter(tmp_path / "e.parquet", 4, "float16", {}, 3)  # four row groups
    w.write([f"r{i}" for i in range(10)], x)
    w.close()
    ids, v = artifacts.read_embeddings(tmp_path / "e.parquet", cache=tmp_path / "e.arrow", keep_half=True)
    assert v.dtype == np.float16 and not v.flags.owndata and not v.flags.writeable  # a view of the mapped file
    np.testing.assert_array_equal(v, x.astype(np.float16))
    ids32, v32 = artifacts.read_embeddings(tmp_path / "e.parquet", cache=tmp_path / "e.arrow")
    assert ids32 == ids == [f"r{i}" for i in range(10)] and v32.dtype == np.float32
    np.testing.assert_array_equal(v32, v.astype(np.float32))
