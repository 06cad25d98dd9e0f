"""The Ray engine (issue 18): the same vectors and graph as the local engine, resume after a kill.

Every test here shares one local Ray (2 CPUs, a 512 MB object store, no dashboard) started once
per session and shut down at its end; the module is skipped when ray is not installed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from labelkit import artifacts  # noqa: E402
from labelkit._validation import l2_normalize  # noqa: E402
from labelkit.embedders import create_embedder  # noqa: E402
from labelkit.engines import RayOptions, import_ray, placement  # noqa: E402
from labelkit.engines.ray_embed import embed_parts  # noqa: E402
from labelkit.engines.ray_knn import knn_graph as ray_knn_graph  # noqa: E402
from labelkit.errors import BadInputError, DependencyError  # noqa: E402

pytestmark = pytest.mark.ray
DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


@pytest.fixture(scope="session")
def local_ray():
    """One 2-CPU Ray for the whole session; labelkit's engines reuse an initialised Ray and leave it running."""
    ray.init(address="local", num_cpus=2, object_store_memory=512 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _digit_files(n: int | None = None) -> list[str]:
    files = sorted(str(p) for p in DIGITS.rglob("*.png"))
    return files[:n] if n else files


def _read_parts(paths) -> dict[str, np.ndarray]:
    out = {}
    for p in paths:
        ids, vecs = artifacts.read_embeddings(p)
        out.update(zip(ids, vecs))
    return out


def test_embed_parts_equal_the_local_vectors(local_ray, tmp_path):
    files = _digit_files()
    ids = [f"s{i}" for i in range(len(files))]
    res = embed_parts(ids, files, [f"h{i}" for i in range(len(files))], spec="pixels:8", dim=64, parts_dir=tmp_path,
                      rows_per_part=500, ray=RayOptions())
    assert res["workers"] == 2 and res["device"] == "cpu" and res["errors"] == {}
    assert len(res["parts"]) == 4  # 1797 rows in parts of 500
    got = _read_parts(res["parts"])
    local = l2_normalize(create_embedder("pixels:8").embed(files))
    np.testing.assert_array_equal(np.stack([got[i] for i in ids]), local)
    for part in res["parts"]:  # each row keeps its own content hash
        assert artifacts.read_content_hashes(part) == ["h" + i[1:] for i in artifacts.read_embedding_ids(part)]


def test_efficientnet_on_actors_within_float_tolerance(local_ray, tmp_path):
    files = _digit_files(24)
    ids = [str(i) for i in range(len(files))]
    res = embed_parts(ids, files, ids, spec="efficientnet-lite0", dim=1280, parts_dir=tmp_path, batch_size=8, device="cpu",
                      ray=RayOptions(workers=2))
    got = _read_parts(res["parts"])
    local = l2_normalize(create_embedder("efficientnet-lite0").embed(files))
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), local, atol=1e-5)


def test_unreadable_input_is_skipped_and_recorded(local_ray, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    files = _digit_files(5) + [str(bad)]
    ids = [f"s{i}" for i in range(6)]
    res = embed_parts(ids, files, [f"h{i}" for i in range(6)], spec="pixels:8", dim=64, parts_dir=tmp_path / "parts", ray=RayOptions())
    assert list(res["errors"]) == ["s5"] and "cannot identify image file" in res["errors"]["s5"]
    [part] = res["parts"]
    assert sorted(artifacts.read_embedding_ids(part)) == ids[:5]
    assert artifacts.read_metadata(part)["skipped_content"] == ["h5"]


def test_a_driver_killed_after_a_part_keeps_that_part(local_ray, tmp_path):
    files = _digit_files(600)
    ids = [f"s{i}" for i in range(600)]

    class Killed(Exception):
        pass

    def kill(path):
        raise Killed(path)

    with pytest.raises(Killed):
        embed_parts(ids, files, ids, spec="pixels:8", dim=64, parts_dir=tmp_path, rows_per_part=200, ray=RayOptions(), on_part=kill)
    [part] = list(tmp_path.glob("part-*.parquet"))  # the part finished before the kill is on disk, whole
    assert len(artifacts.read_embedding_ids(part)) == 200
    assert not list(tmp_path.glob("*.tmp*"))


def test_knn_graph_on_actors_equals_local(local_ray):
    from labelkit import knn

    x = l2_normalize(create_embedder("pixels:8").embed(_digit_files()))
    for method in ("exact", "hnsw"):
        s_local, i_local = knn.knn_graph(x, 10, method=method, device="cpu")
        s_ray, i_ray, info = ray_knn_graph(x, 10, method=method, ray=RayOptions())
        np.testing.assert_array_equal(i_ray, i_local)
        np.testing.assert_array_equal(s_ray, s_local)
        assert info["method"] == method and info["workers"] == 1  # 1797 rows: one task of 4096


def test_cuda_on_a_cluster_without_gpus_is_refused(local_ray):
    with pytest.raises(BadInputError, match="the Ray cluster has no GPU"):
        placement(local_ray, "cuda", None)
    assert placement(local_ray, "auto", None) == (2, False)
    assert placement(local_ray, "auto", 5) == (5, False)


def test_without_ray_the_engine_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(DependencyError, match=r"pip install 'labelkit-ml\[ray\]'"):
        import_ray()


def test_bad_ray_options():
    with pytest.raises(BadInputError, match="'workers' must be a positive integer"):
        RayOptions(workers=0)


# -- through the CLI: the same artifacts as the local engine ---------------------------------


def _table(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas().sort_values("id").reset_index(drop=True)


def test_run_with_ray_writes_the_local_artifacts(local_ray, runner, digits, tmp_path):
    import json

    from labelkit.cli import app

    local = tmp_path / "local"
    shutil.copytree(digits, local)
    r = runner.invoke(app, ["run", str(local), "--until", "detect-noise", "--model", "pixels:8", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", str(digits), "--until", "detect-noise", "--model", "pixels:8", "--engine", "ray", "--json"])
    assert r.exit_code == 0, r.output
    stages = {s["stage"]: s for s in json.loads(r.stdout)["stages"]}
    assert stages["embed"]["engine"] == "ray" and stages["embed"]["num_workers"] == 2
    ws_local, ws_ray = local / ".labelkit", digits / ".labelkit"
    e_local, e_ray = _table(ws_local / "embeddings.parquet"), _table(ws_ray / "embeddings.parquet")
    assert e_local["id"].tolist() == e_ray["id"].tolist()
    np.testing.assert_allclose(np.stack(e_ray["embedding"]), np.stack(e_local["embedding"]), atol=1e-6)
    for name in ("knn.parquet",):
        assert _table_rows(ws_local / name) == _table_rows(ws_ray / name)
    p_local, p_ray = _table(ws_local / "pseudolabels.parquet"), _table(ws_ray / "pseudolabels.parquet")
    assert p_local[["id", "label", "accepted"]].equals(p_ray[["id", "label", "accepted"]])
    np.testing.assert_allclose(p_ray["confidence"], p_local["confidence"], atol=1e-6)
    i_local, i_ray = _table(ws_local / "label_issues.parquet"), _table(ws_ray / "label_issues.parquet")
    assert i_local[["id", "is_issue", "rank"]].equals(i_ray[["id", "is_issue", "rank"]])


def _table_rows(path: Path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_killed_ray_embed_resumes_with_the_missing_rows(local_ray, runner, digits, tmp_path, monkeypatch):
    import json

    from labelkit.cli import app
    from labelkit.engines import ray_embed

    cfg = tmp_path / "lk.toml"
    cfg.write_text('[embed]\nmodel = "pixels:8"\nrow_group_size = 300\n')
    real = ray_embed.embed_parts
    written = []

    def killed_after_two_parts(*args, **kwargs):
        def on_part(path):
            written.append(path)
            if len(written) == 2:
                raise KeyboardInterrupt  # the driver stops here, as on Ctrl-C
        return real(*args, **{**kwargs, "on_part": on_part})

    monkeypatch.setattr(ray_embed, "embed_parts", killed_after_two_parts)
    r = runner.invoke(app, ["embed", str(digits), "--engine", "ray", "--config", str(cfg)])
    assert r.exit_code == 130 and len(written) == 2
    assert not (digits / ".labelkit" / "embeddings.parquet").exists()
    monkeypatch.setattr(ray_embed, "embed_parts", real)
    r = runner.invoke(app, ["embed", str(digits), "--engine", "ray", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["engine"] == "ray"
    assert summary["n_reused"] == 600 and summary["n_embedded"] == 1797 - 600
