"""Workspace: atomic writes survive a crash, fingerprints, staleness, and the manifest."""

from __future__ import annotations

import os
import time

import pytest

from labelkit import workspace
from labelkit.config import EmbedConfig, build_config, load_config_file
from labelkit.errors import BadInputError, ConfigError
from labelkit.workspace import Workspace, atomic_write, file_fingerprint


def test_atomic_write_replaces_on_success(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with atomic_write(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_crash_mid_write_leaves_old_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("half of the new con")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind


def test_fingerprint_is_content_based(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert file_fingerprint(a) == file_fingerprint(b)
    b.write_bytes(b"diff")
    assert file_fingerprint(a) != file_fingerprint(b)


@pytest.fixture
def cached_fingerprints(tmp_path, monkeypatch):
    """Every file's fingerprint cached (in tmp_path/cache) once it is 0.2 s old; counts the files actually hashed."""
    monkeypatch.setenv("LABELKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(workspace, "CACHED_FINGERPRINT_BYTES", 1)
    monkeypatch.setattr(workspace, "RACY_NS", 200_000_000)
    hashed = []
    real = workspace._hash_file
    monkeypatch.setattr(workspace, "_hash_file", lambda path, chunk: hashed.append(path.name) or real(path, chunk))
    return hashed


def _entries(tmp_path):
    return sorted((tmp_path / "cache" / "fingerprints").glob("*.json")) if (tmp_path / "cache").exists() else []


def test_a_large_files_fingerprint_is_cached_until_a_same_size_rewrite_with_its_old_mtime(tmp_path, cached_fingerprints):
    p = tmp_path / "probs.bin"
    p.write_bytes(b"a" * 1000)
    time.sleep(0.3)  # older than RACY_NS: cacheable
    first = file_fingerprint(p)
    assert file_fingerprint(p) == first and cached_fingerprints == ["probs.bin"]  # the second read the cache
    assert len(_entries(tmp_path)) == 1
    st = p.stat()
    p.write_bytes(b"a" * 999 + b"b")  # same size, one byte changed, and the mtime put back: the ctime still moves
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    changed = file_fingerprint(p)
    assert changed != first and changed == workspace._hash_file(p, 1 << 20)
    assert cached_fingerprints == ["probs.bin", "probs.bin", "probs.bin"]


def test_a_touched_file_is_hashed_again_to_the_same_fingerprint(tmp_path, cached_fingerprints):
    p = tmp_path / "probs.bin"
    p.write_bytes(b"abc" * 100)
    time.sleep(0.3)
    first = file_fingerprint(p)
    os.utime(p)  # touch: new mtime and ctime, same bytes
    time.sleep(0.3)
    assert file_fingerprint(p) == first and cached_fingerprints == ["probs.bin", "probs.bin"]
    assert file_fingerprint(p) == first and len(cached_fingerprints) == 2  # that hash is cached in turn


def test_a_file_written_just_before_its_hash_is_not_cached(tmp_path, cached_fingerprints):
    p = tmp_path / "probs.bin"
    p.write_bytes(b"x" * 100)
    assert file_fingerprint(p) == file_fingerprint(p)  # within RACY_NS of the write: hashed each time
    assert cached_fingerprints == ["probs.bin", "probs.bin"] and _entries(tmp_path) == []


def test_a_damaged_cache_entry_is_hashed_over(tmp_path, cached_fingerprints):
    p = tmp_path / "probs.bin"
    p.write_bytes(b"y" * 100)
    time.sleep(0.3)
    first = file_fingerprint(p)
    [entry] = _entries(tmp_path)
    entry.write_text("{not json")
    assert file_fingerprint(p) == first and len(cached_fingerprints) == 2


def test_small_files_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELKIT_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "a.bin"
    p.write_bytes(b"z" * 100)
    os.utime(p, ns=(0, 0))
    file_fingerprint(p)
    assert not (tmp_path / "cache").exists()


def test_staleness_reasons(tmp_path):
    ws = Workspace.open(tmp_path)
    out = ws.path("x.parquet")
    out.parent.mkdir()
    out.write_bytes(b"data")
    assert ws.staleness("s", "p1", {"in": "f1"}) == "never run"
    ws.commit("s", params={"k": 1}, params_fp="p1", inputs={"in": "f1"}, outputs=["x.parquet"], started=time.perf_counter())
    assert ws.staleness("s", "p1", {"in": "f1"}) is None
    assert ws.staleness("s", "p2", {"in": "f1"}) == "parameters changed"
    assert ws.staleness("s", "p1", {"in": "f2"}) == "input in changed"
    out.write_bytes(b"edited")
    assert ws.staleness("s", "p1", {"in": "f1"}) == "x.parquet was changed outside labelkit"
    out.unlink()
    assert ws.staleness("s", "p1", {"in": "f1"}) == "x.parquet is missing"
    rec = ws.record("s")
    assert rec.params == {"k": 1} and "numpy" in rec.versions and rec.wall_time_s >= 0


def test_workspace_rejects_missing_data(tmp_path):
    with pytest.raises(BadInputError, match="no such dataset folder"):
        Workspace.open(tmp_path / "missing")


def test_config_fingerprint_ignores_runtime_fields():
    a = EmbedConfig(model="pixels", batch_size=8)
    b = EmbedConfig(model="pixels", batch_size=64, device="cpu")
    c = EmbedConfig(model="pixels:16")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_config_file_sections_and_overrides(tmp_path):
    f = tmp_path / "lk.toml"
    f.write_text('[embed]\nmodel = "pixels"\nbatch_size = 32\n')
    fc = load_config_file(f)
    cfg = build_config("embed", fc, {"batch_size": 8, "device": None})
    assert cfg.model == "pixels" and cfg.batch_size == 8 and cfg.device == "auto"


def test_config_unknown_key_and_section_are_named(tmp_path):
    f = tmp_path / "lk.toml"
    f.write_text('[embed]\nmodle = "pixels"\n')
    with pytest.raises(ConfigError, match=r"\[embed\]: unknown key 'modle'"):
        build_config("embed", load_config_file(f), {})
    f.write_text("[embedd]\n")
    with pytest.raises(ConfigError, match=r"unknown section \[embedd\]"):
        load_config_file(f)
    f.write_text("[embed]\nbatch_size = -1\n")
    with pytest.raises(ConfigError, match=r"\[embed\] batch_size: must be > 0. Got -1 instead."):
        build_config("embed", load_config_file(f), {})


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os
    import stat

    p = tmp_path / "shared.txt"
    with atomic_write(p, "w") as f:
        f.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
