"""A workspace that checks itself, bad paths, and concurrent runs (issue 14).

Every case ends in one line on stderr and a non-zero exit, or in the damaged artifact rebuilt by
the stage that owns it; never a traceback, never the last-resort 'internal error' line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from labelkit import artifacts
from labelkit.cli import app
from labelkit.errors import DamagedArtifactError, LabelkitWarning
from labelkit.workspace import MANIFEST_INVALID

ROOT = Path(__file__).resolve().parents[2]
BUG = "internal error"


@pytest.fixture
def vectors(tmp_path) -> Path:
    """Bring-your-own vectors: 30 rows in 3 well-separated classes, a third unlabeled (the fastest real workspace)."""
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = (np.eye(3)[y] * 3 + rng.normal(size=(30, 3)) * 0.3).astype(np.float32)
    labels = [None if i % 3 == 0 else f"c{v}" for i, v in enumerate(y)]
    folder = tmp_path / "vec"
    folder.mkdir()
    pd.DataFrame({"id": [f"s{i:02d}" for i in range(30)], "embedding": list(x), "label": labels}).to_parquet(folder / "labels.parquet")
    return folder


@pytest.fixture
def ran(runner, vectors) -> Path:
    """``vectors`` after ``labelkit run --until pseudolabel``."""
    r = runner.invoke(app, ["run", str(vectors), "--until", "pseudolabel"])
    assert r.exit_code == 0, r.output
    return vectors


def truncate(path: Path) -> bytes:
    """Cut ``path`` in half, as a full disk or a killed copy would; its old bytes."""
    old = path.read_bytes()
    path.write_bytes(old[: len(old) // 2])
    return old


def clean(r, code: int) -> None:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and BUG not in r.output


def one_error(r) -> str:
    """The single 'error:' line of a failed command."""
    clean(r, r.exit_code)
    assert r.exit_code != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def ws(folder: Path) -> Path:
    return folder / ".labelkit"


# -- damaged artifacts are rebuilt by the stage that owns them --------------------------------


def test_run_after_a_truncated_embeddings_parquet_re_embeds(runner, ran):
    good = artifacts.read_embeddings(ws(ran) / artifacts.EMBEDDINGS)
    truncate(ws(ran) / artifacts.EMBEDDINGS)
    r = runner.invoke(app, ["run", str(ran), "--until", "pseudolabel", "--json"])
    clean(r, 0)
    assert f"warning: {ws(ran) / artifacts.EMBEDDINGS}: unreadable (not a complete Parquet file: no footer; truncated?); removed it: 'labelkit embed' rebuilds it" in r.stderr
    out = json.loads(r.stdout)
    assert [s["skipped"] for s in out["stages"]] == [False, True, True]  # re-embedded to the same vectors: the rest up to date
    ids, vecs = artifacts.read_embeddings(ws(ran) / artifacts.EMBEDDINGS)
    assert ids == good[0] and np.array_equal(vecs, good[1])


def test_a_later_stage_rebuilds_a_truncated_upstream_artifact_first(runner, ran):
    truncate(ws(ran) / artifacts.PROTOTYPES)
    r = runner.invoke(app, ["pseudolabel", str(ran), "--force", "--json"])
    clean(r, 0)
    up = json.loads(r.stdout)["upstream"]
    assert [u["stage"] for u in up] == ["prototype"] and up[0]["reason"] == "prototypes.parquet was missing, so prototype ran first with its defaults"
    assert artifacts.problem(ws(ran) / artifacts.PROTOTYPES, full=True) is None


@pytest.mark.parametrize("name", [artifacts.PSEUDOLABELS, artifacts.EMBEDDINGS])
def test_a_stage_whose_own_output_is_truncated_reruns(runner, ran, name):
    stage = artifacts.OWNER[name]
    truncate(ws(ran) / name)
    r = runner.invoke(app, [stage, str(ran), "--json"])
    clean(r, 0)
    assert json.loads(r.stdout)["skipped"] is False
    assert artifacts.problem(ws(ran) / name, full=True) is None


def test_own_output_damaged_past_its_footer_is_removed_before_the_rerun(ran):
    """Library use (no CLI pre-check): the stage's staleness check decodes a changed output in full."""
    from labelkit.stages._common import drop_damaged_outputs
    from labelkit.workspace import Workspace

    p = ws(ran) / artifacts.PSEUDOLABELS
    data = bytearray(p.read_bytes())
    data[4:200] = b"\xff" * 196  # the first pages, not the footer
    p.write_bytes(bytes(data))
    assert artifacts.problem(p) is None and artifacts.problem(p, full=True) is not None
    reason = drop_damaged_outputs(Workspace.open(ran), "pseudolabel")
    assert reason.startswith("pseudolabels.parquet was damaged (unreadable (") and reason.endswith("), so pseudolabel rebuilds it")
    assert not p.exists()


def test_truncated_samples_parquet_is_rewritten_from_data(runner, ran):
    truncate(ws(ran) / artifacts.SAMPLES)
    r = runner.invoke(app, ["prototype", str(ran)])
    clean(r, 0)
    df, meta = artifacts.read_samples(ws(ran) / artifacts.SAMPLES)
    assert len(df) == 30 and meta["content_fingerprint"]


def test_report_after_a_truncated_pseudolabels_parquet(runner, ran):
    truncate(ws(ran) / artifacts.PSEUDOLABELS)
    r = runner.invoke(app, ["report", str(ran)])
    clean(r, 0)
    assert f"warning: {ws(ran) / artifacts.PSEUDOLABELS}: unreadable (not a complete Parquet file: no footer; truncated?); removed it: 'labelkit pseudolabel' rebuilds it" in r.stderr
    assert (ws(ran) / "report.html").exists()


def test_reading_a_damaged_artifact_names_the_file_what_and_what_to_run(ran):
    p = ws(ran) / artifacts.EMBEDDINGS
    truncate(p)
    fix = f"run 'labelkit embed {ran} --force' to rebuild it"
    for read in (artifacts.read_metadata, artifacts.read_embeddings, artifacts.read_embedding_ids, artifacts.content_key):
        with pytest.raises(DamagedArtifactError, match=r"unreadable \(not a complete Parquet file: no footer; truncated\?\)") as e:
            read(p)
        assert str(e.value).startswith(f"{p}: ") and str(e.value).endswith(fix)
    with pytest.raises(DamagedArtifactError, match="not a samples table"):
        artifacts.read_samples(ws(ran) / artifacts.PROTOTYPES)


# -- the embeddings.arrow cache: validated by fingerprint, rebuilt when unreadable -------------


def test_corrupt_embeddings_arrow_is_rebuilt_and_said(runner, ran):
    cache = ws(ran) / artifacts.EMBEDDINGS_CACHE
    assert cache.exists()
    cache.write_bytes(b"not arrow at all")
    r = runner.invoke(app, ["prototype", str(ran), "--force"])
    clean(r, 0)
    assert f"warning: {cache}: unreadable (" in r.stderr and "; rebuilt it from embeddings.parquet" in r.stderr
    table = ipc.open_file(pa.memory_map(str(cache))).read_all()
    assert table.schema.metadata[artifacts.CACHE_KEY] == artifacts.content_key(ws(ran) / artifacts.EMBEDDINGS).encode()


def test_cache_follows_the_parquet_content_not_its_mtime(ran, tmp_path):
    """Issue 14: an older-dated embeddings.parquet copied in was ignored in favour of the cache."""
    p, cache = ws(ran) / artifacts.EMBEDDINGS, ws(ran) / artifacts.EMBEDDINGS_CACHE
    ids, old = artifacts.read_embeddings(p, cache=cache)
    other = tmp_path / "other.parquet"
    w = artifacts.EmbeddingsWriter(other, 3, "float32", {"model": "precomputed"}, 1024)
    w.write(ids, -old)
    w.close()
    shutil.copyfile(other, p)
    os.utime(p, (1_000_000, 1_000_000))  # dated 1970: older than the cache
    assert p.stat().st_mtime < cache.stat().st_mtime
    _, new = artifacts.read_embeddings(p, cache=cache)
    assert np.array_equal(new, -old)
    with pytest.warns(LabelkitWarning, match="rebuilt it from embeddings.parquet"):
        cache.write_bytes(cache.read_bytes()[:100])
        _, again = artifacts.read_embeddings(p, cache=cache)
    assert np.array_equal(again, -old)


# -- manifest.json: checked against its schema; invalid = never run, with a warning -----------


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
        ("[1, 2]", "not a labelkit manifest (input should be a valid dictionary"),
        ('{"stages": [1]}', "not a labelkit manifest (stages: input should be a valid dictionary)"),
    ],
)
def test_invalid_manifest_is_reported_and_the_stages_rerun(runner, ran, text, what):
    m = ws(ran) / "manifest.json"
    m.write_text(text)
    r = runner.invoke(app, ["status", str(ran), "--json"])
    clean(r, 0)
    assert f"warning: {m}: {what}" in r.stderr and "treating every stage as never run (it reruns)" in r.stderr
    rows = json.loads(r.stdout)["stages"]
    assert {s["state"] for s in rows} == {"missing"} and rows[0]["reason"].startswith(f"never run (manifest.json: {what}")
    assert m.read_text() == text  # status reads, never writes
    r = runner.invoke(app, ["run", str(ran), "--until", "prototype", "--json"])
    clean(r, 0)
    assert r.stderr.count(f"warning: {m}: ") == 1  # once, although the manifest is read before every check
    assert [s["skipped"] for s in json.loads(r.stdout)["stages"]] == [False, False]
    assert (ws(ran) / MANIFEST_INVALID).read_text() == text  # nothing lost: kept beside the fresh one
    assert set(json.loads(m.read_text())["stages"]) == {"embed", "prototype"}


def test_a_stage_record_with_missing_fields_is_that_stage_never_run(runner, ran):
    m = ws(ran) / "manifest.json"
    doc = json.loads(m.read_text())
    del doc["stages"]["prototype"]["outputs"]
    doc["stages"]["pseudolabel"]["params_fingerprint"] = 7
    m.write_text(json.dumps(doc))
    r = runner.invoke(app, ["run", str(ran), "--until", "pseudolabel", "--json"])
    clean(r, 0)
    assert f"warning: {m}: the record of stage 'prototype' is invalid (stages.prototype.outputs: field required)" in r.stderr
    assert "the record of stage 'pseudolabel' is invalid (stages.pseudolabel.params_fingerprint: input should be a valid string)" in r.stderr
    stages = json.loads(r.stdout)["stages"]
    assert [s["skipped"] for s in stages] == [True, False, False]
    assert stages[1]["reason"].startswith("never run (manifest.json: the record of stage 'prototype' is invalid")


# -- paths: one line, non-zero, nothing written ------------------------------------------------


def test_out_on_a_regular_file(runner, vectors, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    r = runner.invoke(app, ["embed", str(vectors), "--out", str(f)])
    assert one_error(r) == f"error: --out {f}: it is a file, not a folder; give a folder for the artifacts"
    assert f.read_text() == "keep me"
    r = runner.invoke(app, ["run", str(vectors), "--out", str(f / "ws")])
    assert one_error(r) == f"error: {f / 'ws'}: cannot create the workspace folder (Not a directory); pass --out DIR to write the artifacts elsewhere"
    assert not ws(vectors).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; test_out_on_a_regular_file covers the file in the way")
def test_out_on_a_read_only_folder(runner, vectors, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = runner.invoke(app, ["embed", str(vectors), "--out", str(ro)])
        assert one_error(r) == f"error: {ro}: cannot create the workspace folder (Permission denied); pass --out DIR to write the artifacts elsewhere"
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_export_review_given_a_folder(runner, ran, tmp_path):
    folder = tmp_path / "review"
    folder.mkdir()
    issues = ran / ".labelkit" / "label_issues.parquet"
    before = issues.stat().st_mtime_ns if issues.exists() else None
    r = runner.invoke(app, ["detect-noise", str(ran), "--probs", "knn", "--export-review", str(folder)])
    # Checked up front, as a bad option value (exit 2), before anything runs or is written.
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: --export-review: is a folder; give a file name for the CSV review queue. Got '{folder}' instead."
    assert list(folder.iterdir()) == []
    assert (issues.stat().st_mtime_ns if issues.exists() else None) == before


def test_config_given_a_folder_or_latin_1(runner, vectors, tmp_path):
    r = runner.invoke(app, ["run", str(vectors), "--config", str(tmp_path)])
    assert one_error(r) == f"error: {tmp_path}: is a folder; --config takes a TOML file"
    latin = tmp_path / "lk.toml"
    latin.write_bytes('[embed]\nmodel = "café"\n'.encode("latin-1"))
    r = runner.invoke(app, ["embed", str(vectors), "--config", str(latin)])
    assert one_error(r) == f"error: {latin}: not UTF-8 text (byte 0xe9 at offset 20); TOML files are UTF-8: re-save it as UTF-8"
    assert not ws(vectors).exists()


def test_path_component_longer_than_255(runner, vectors):
    long = "a" * 300
    r = runner.invoke(app, ["embed", str(vectors / long)])
    assert one_error(r) == f"error: {vectors / long}: cannot read it (File name too long)"
    r = runner.invoke(app, ["embed", str(vectors), "--out", str(vectors / long)])
    assert one_error(r) == f"error: --out {vectors / long}: cannot use it (File name too long)"
    r = runner.invoke(app, ["embed", str(vectors), "--config", str(vectors / long)])
    assert one_error(r) == f"error: {vectors / long}: cannot read it (File name too long)"
    assert sorted(p.name for p in vectors.iterdir()) == ["labels.parquet"]


# -- concurrent runs ---------------------------------------------------------------------------

HOLDER = """
import sys, time
from labelkit.workspace import Workspace
with Workspace.open(sys.argv[1]).lock(command="labelkit run held-by-test"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(data: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "locked"
    return p


def _labelkit(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labelkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_no_wait_exits_at_once_when_the_workspace_is_held(runner, vectors):
    holder = _hold(vectors)
    try:
        r = runner.invoke(app, ["run", str(vectors), "--no-wait"])
        assert one_error(r) == (f"error: {ws(vectors)} is in use by another labelkit run (pid {holder.pid}, 'labelkit run held-by-test', "
                                f"started {json.loads((ws(vectors) / '.lock.json').read_text())['started']}); "
                                "wait for it to finish, or rerun without --no-wait to wait")
        assert r.exit_code == 1
        assert sorted(p.name for p in ws(vectors).iterdir()) == [".lock", ".lock.json"]  # nothing written
        r = runner.invoke(app, ["status", str(vectors)])  # reads without the lock
        clean(r, 0)
    finally:
        holder.kill()
        holder.wait(10)


def test_a_second_run_waits_saying_for_what_and_takes_over_a_killed_holder(vectors):
    holder = _hold(vectors)
    run = _labelkit("run", str(vectors), "--until", "prototype", "--json")
    try:
        time.sleep(3)
        assert run.poll() is None  # waiting
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing anything itself
        out, err = run.communicate(timeout=120)
    finally:
        holder.kill()
        run.kill()
    assert run.returncode == 0, err
    assert err.count("waiting for another labelkit run") == 1
    assert f"waiting for another labelkit run (pid {holder.pid}, 'labelkit run held-by-test', started " in err and f"on {ws(vectors)} ..." in err
    assert [s["stage"] for s in json.loads(out)["stages"]] == ["embed", "prototype"]


def test_two_concurrent_forced_runs_both_finish_and_agree(runner, vectors):
    a = _labelkit("run", str(vectors), "--until", "pseudolabel", "--force", "--json")
    b = _labelkit("run", str(vectors), "--until", "pseudolabel", "--force", "--json")
    (_, err_a), (_, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert "Traceback" not in err_a + err_b and (err_a + err_b).count("waiting for another labelkit run") == 1
    r = runner.invoke(app, ["status", str(vectors), "--json"])
    states = {s["stage"]: s["state"] for s in json.loads(r.stdout)["stages"]}
    assert [states[s] for s in ("embed", "prototype", "pseudolabel")] == ["done"] * 3
    assert not [p.name for p in ws(vectors).iterdir() if p.name.endswith(".tmp") or p.name == "parts"]
