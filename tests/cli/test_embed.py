"""`labelkit embed` and `labelkit status` end to end through the CLI on small real data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from labelkit import artifacts
from labelkit.cli import app
from tests.conftest import write_csv


def _embeddings(ws):
    t = pq.read_table(ws / ".labelkit" / "embeddings.parquet")
    vecs = np.asarray(t.column("embedding").to_pylist(), dtype=np.float32)
    return t.column("id").to_pylist(), vecs


def test_embed_digits_then_up_to_date(runner, digits):
    r = runner.invoke(app, ["embed", str(digits), "--model", "pixels:8"])
    assert r.exit_code == 0, r.output
    ids, vecs = _embeddings(digits)
    assert len(ids) == 1797 and vecs.shape == (1797, 64)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    meta = artifacts.read_metadata(digits / ".labelkit" / "embeddings.parquet")
    assert meta["model"] == "pixels:8" and meta["dim"] == 64
    r2 = runner.invoke(app, ["embed", str(digits), "--model", "pixels:8"])
    assert r2.exit_code == 0
    assert "embed: up to date, skipping" in r2.stderr
    r3 = runner.invoke(app, ["embed", str(digits), "--model", "pixels:8", "--force", "--json"])
    out = json.loads(r3.stdout)
    assert out["skipped"] is False and out["n_embedded"] == 1797


def test_status_done_then_stale_after_new_image(runner, digits):
    r = runner.invoke(app, ["status", str(digits), "--json"])
    assert json.loads(r.stdout)["stages"][0]["state"] == "missing"
    runner.invoke(app, ["embed", str(digits), "--model", "pixels:8"])
    r = runner.invoke(app, ["status", str(digits), "--json"])
    assert json.loads(r.stdout)["stages"][0]["state"] == "done"
    shutil.copy(digits / "unlabeled" / "digit_0000.png", digits / "unlabeled" / "zz_new.png")
    rows = json.loads(runner.invoke(app, ["status", str(digits), "--json"]).stdout)["stages"]
    assert rows[0]["state"] == "stale" and rows[0]["reason"] == "input samples.parquet changed"
    # A byte-identical copy reuses its twin's vector (reuse is keyed by content, issue 14).
    r = runner.invoke(app, ["embed", str(digits), "--model", "pixels:8", "--json"])
    out = json.loads(r.stdout)
    assert out["n_embedded"] == 0 and out["n_reused"] == 1798
    # A new picture: a rerun embeds only it; the rest are reused.
    from PIL import Image, ImageOps

    ImageOps.mirror(Image.open(digits / "unlabeled" / "digit_0000.png")).save(digits / "unlabeled" / "zz_other.png")
    out = json.loads(runner.invoke(app, ["embed", str(digits), "--model", "pixels:8", "--json"]).stdout)
    assert out["n_embedded"] == 1 and out["n_reused"] == 1798


def test_unreadable_images_are_skipped_and_named(runner, digits):
    (digits / "unlabeled" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (digits / "unlabeled" / "empty.png").write_bytes(b"")
    good = (digits / "unlabeled" / "digit_0000.png").read_bytes()
    (digits / "unlabeled" / "truncated.png").write_bytes(good[: len(good) // 2])
    r = runner.invoke(app, ["embed", str(digits), "--model", "pixels:8"])
    assert r.exit_code == 0, r.output
    assert "3 skipped" in r.stderr
    for name in ("broken.png", "empty.png", "truncated.png"):
        assert f"skipped unlabeled/{name}" in r.stderr
    ids, _ = _embeddings(digits)
    assert len(ids) == 1797


def test_resume_after_crash_embeds_only_missing(runner, digits, tmp_path, monkeypatch):
    from labelkit.embedders import pixels

    calls = {"n": 0}
    real = pixels.PixelsEmbedder.forward

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")  # a crash part-way through
        return real(self, batch)

    cfg = tmp_path / "lk.toml"
    cfg.write_text("[embed]\nrow_group_size = 128\nbatch_size = 64\n")
    args = ["embed", str(digits), "--model", "pixels:8", "--config", str(cfg), "--json"]
    monkeypatch.setattr(pixels.PixelsEmbedder, "forward", dying)
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert not (digits / ".labelkit" / "embeddings.parquet").exists()
    monkeypatch.setattr(pixels.PixelsEmbedder, "forward", real)
    out = json.loads(runner.invoke(app, args).stdout)
    assert out["n_reused"] == 256 and out["n_embedded"] == 1797 - 256  # two finished parts of 128
    assert not (digits / ".labelkit" / "embeddings.parts").exists()
    # A different model invalidates the parts and the previous vectors.
    out = json.loads(runner.invoke(app, ["embed", str(digits), "--model", "pixels:4", "--json"]).stdout)
    assert out["n_reused"] == 0 and out["dim"] == 16


def test_text_manifest_with_offline_encoder(runner, tmp_path):
    write_csv(tmp_path, "text,label\nthe movie was wonderful,pos\nterrible acting and a dull plot,neg\nI loved every minute,\n")
    r = runner.invoke(app, ["embed", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["model"] == "minilm" and out["dim"] == 384
    ids, vecs = _embeddings(tmp_path)
    assert ids == ["0", "1", "2"]
    assert vecs[2] @ vecs[0] > vecs[2] @ vecs[1]  # "loved" is closer to "wonderful" than to "terrible"
    ce = pq.read_table(tmp_path / ".labelkit" / "class_embeddings.parquet")
    assert ce.column("class").to_pylist() == ["neg", "pos"]


def test_precomputed_vectors_are_normalised(runner, tmp_path):
    write_csv(tmp_path, 'id,embedding,label\na,"[3, 4]",x\nb,"[0, 2]",\n')
    r = runner.invoke(app, ["embed", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == "precomputed"
    _, vecs = _embeddings(tmp_path)
    np.testing.assert_allclose(vecs, [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--weights", "/no/such/file.pt", "--model", "pixels"], "--weights /no/such/file.pt: no such file"),
    ],
)
def test_bad_options_give_one_line_errors(runner, digits, args, message):
    r = runner.invoke(app, ["embed", str(digits), *args])
    assert r.exit_code == 1
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert not (digits / ".labelkit" / "embeddings.parquet").exists()


def test_bad_manifest_keeps_existing_artifacts(runner, digits, tmp_path):
    ws = tmp_path / "ds"
    write_csv(ws, 'id,embedding,label\na,"[3, 4]",x\nb,"[0, 2]",\n')
    assert runner.invoke(app, ["embed", str(ws)]).exit_code == 0
    before = (ws / ".labelkit" / "embeddings.parquet").read_bytes()
    write_csv(ws, "id,embedding,lable\na,\"[3, 4]\",x\n")
    r = runner.invoke(app, ["embed", str(ws)])
    assert r.exit_code == 1
    assert "labels.csv: unknown column 'lable'" in r.stderr
    assert (ws / ".labelkit" / "embeddings.parquet").read_bytes() == before


def test_missing_data_folder(runner, tmp_path):
    r = runner.invoke(app, ["embed", str(tmp_path / "nope")])
    assert r.exit_code == 1
    assert "no such dataset folder" in r.stderr


def test_auto_model_picks_pixels_for_tiny_images(runner, digits):
    r = runner.invoke(app, ["embed", str(digits), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == "pixels:8"
