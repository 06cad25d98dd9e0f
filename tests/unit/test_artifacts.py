"""Artifacts as one Parquet file or a folder of parts: every reader accepts both (issue 17)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelkit import artifacts
from labelkit.errors import DamagedArtifactError


def _embeddings(path, ids, vecs, *, meta=None, row_group_size=2):
    w = artifacts.EmbeddingsWriter(path, vecs.shape[1], "float32", meta or {"model": "m"}, row_group_size)
    w.write(ids, vecs)
    w.close()


@pytest.fixture
def split(tmp_path):
    """The same 5 embeddings as one file and as a folder of two parts (part names sort in row order)."""
    ids = [f"s{i}" for i in range(5)]
    vecs = np.arange(15, dtype=np.float32).reshape(5, 3)
    _embeddings(tmp_path / "one.parquet", ids, vecs)
    folder = tmp_path / "embeddings.parquet"
    folder.mkdir()
    _embeddings(folder / "part-00000.parquet", ids[:3], vecs[:3])
    _embeddings(folder / "part-00001.parquet", ids[3:], vecs[3:])
    (folder / "_SUCCESS.parquet").write_bytes(b"")  # not a part: names starting with '_' or '.' are skipped
    return tmp_path / "one.parquet", folder, ids, vecs


def test_every_reader_gives_the_same_answer_for_a_file_and_a_folder(split, tmp_path):
    one, folder, ids, vecs = split
    for path in (one, folder):
        got_ids, got = artifacts.read_embeddings(path)
        assert got_ids == ids
        np.testing.assert_array_equal(got, vecs)
        cached_ids, cached = artifacts.read_embeddings(path, cache=tmp_path / f"{path.stem}.arrow")
        assert cached_ids == ids
        np.testing.assert_array_equal(cached, vecs)
        assert [i for batch, _ in artifacts.iter_embedding_batches(path) for i in batch] == ids
        assert artifacts.read_embedding_ids(path) == ids
        assert artifacts.read_table(path, columns=["id"]).column("id").to_pylist() == ids
        assert artifacts.read_metadata(path) == {"model": "m"}
        assert artifacts.read_content_hashes(path) is None
        artifacts.check_dims(path, 3)
        assert artifacts.problem(path) is None


def test_a_folders_content_key_changes_with_any_part(split):
    _, folder, ids, vecs = split
    key = artifacts.content_key(folder)
    assert artifacts.content_key(folder) == key
    _embeddings(folder / "part-00001.parquet", ids[3:], vecs[3:] + 1)
    assert artifacts.content_key(folder) != key


def test_a_folder_without_parts_is_damaged(tmp_path):
    (tmp_path / "embeddings.parquet").mkdir()
    with pytest.raises(DamagedArtifactError, match="a folder without Parquet parts"):
        artifacts.read_table(tmp_path / "embeddings.parquet")


def test_embeddings_for_finds_rows_by_id_with_one_lookup():
    vecs = np.arange(8, dtype=np.float32).reshape(4, 2)
    got, pos = artifacts.embeddings_for(["c", "zz", "a"], ["a", "b", "c", "c"], vecs)
    assert pos.tolist() == [0, 2]
    np.testing.assert_array_equal(got, vecs[[3, 0]])  # a repeated id: its last row


def test_read_table_of_a_folder_keeps_the_first_parts_metadata(tmp_path):
    folder = tmp_path / "t.parquet"
    folder.mkdir()
    for i in range(2):
        artifacts.write_table(folder / f"part-{i}.parquet", pa.table({"x": [i]}), {"part": i})
    t = artifacts.read_table(folder)
    assert t.column("x").to_pylist() == [0, 1]
    assert artifacts.read_metadata(folder) == {"part": 0}
    assert pq.read_table(folder / "part-1.parquet").num_rows == 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_large_cache_is_gathered_in_a_file_that_goes_away(tmp_path, monkeypatch, dtype):
    # Issue 17 (10M x 512): the cache's vectors above CACHE_SPILL_BYTES are gathered in a file-backed buffer, and the
    # one array of more than 2^31 - 1 values is written with IPC's 64-bit lengths; same vectors, zero-copy on reading.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 16)).astype(dtype)
    table = pa.table({"id": [f"s{i}" for i in range(5000)], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)})
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=700)
    monkeypatch.setattr(artifacts, "CACHE_SPILL_BYTES", 1000)
    ids, v = artifacts.read_embeddings(tmp_path / "e.parquet", cache=tmp_path / "e.arrow", keep_half=True)
    np.testing.assert_array_equal(v, x)
    assert v.dtype == dtype and ids == [f"s{i}" for i in range(5000)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.arrow", "e.parquet"]  # the gathering file is gone
    again_ids, again = artifacts.read_embeddings(tmp_path / "e.parquet", cache=tmp_path / "e.arrow", keep_half=True)
    assert not again.flags.owndata and np.array_equal(again, x)  # a view of the memory-mapped cache
