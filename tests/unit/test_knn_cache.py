"""The cached kNN graph (labelkit.stages._knn): knn.parquet's columns read back as (N, k) arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.artifacts import fixed_list_to_numpy


def test_a_graph_in_several_row_groups_reads_back_whole(tmp_path, rng):
    idx = rng.integers(0, 1000, (1000, 4))
    sims = rng.random((1000, 4)).astype(np.float32)
    table = pa.table({"neighbors": pa.FixedSizeListArray.from_arrays(pa.array(idx.reshape(-1)), 4),
                      "similarities": pa.FixedSizeListArray.from_arrays(pa.array(sims.reshape(-1)), 4)})
    pq.write_table(table, tmp_path / "knn.parquet", row_group_size=300)  # 4 chunks, the last one short
    back = pq.read_table(tmp_path / "knn.parquet", memory_map=True)
    assert back.column("neighbors").num_chunks == 4
    got_idx, got_sims = fixed_list_to_numpy(back.column("neighbors"), np.int64), fixed_list_to_numpy(back.column("similarities"), np.float32)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_sims, sims)
    assert got_idx.dtype == np.int64 and got_sims.dtype == np.float32 and got_idx.flags.c_contiguous
