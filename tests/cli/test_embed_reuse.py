"""Reuse keyed by content, not by id (issue 14): a changed picture or a moved text row gets a new vector."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from labelkit import artifacts
from labelkit.cli import app
from tests.conftest import write_csv


def _embed(runner, data, *extra):
    r = runner.invoke(app, ["embed", str(data), "--json", *extra])
    assert r.exit_code == 0, r.output
    assert "Loading weights" not in r.stderr and "it/s]" not in r.stderr  # no third-party tqdm bars (issue 13)
    return json.loads(r.stdout)


def _vectors(data):
    ids, vecs = artifacts.read_embeddings(data / ".labelkit" / "embeddings.parquet")
    return dict(zip(ids, vecs))


def test_a_replaced_image_is_embedded_again_and_the_rest_reused(runner, digits):
    first = _embed(runner, digits, "--model", "pixels:8")
    assert first["n_embedded"] == 1797 and first["n_reused"] == 0
    target = digits / "0" / "digit_0020.png"
    before = _vectors(digits)["0/digit_0020.png"]
    pixels = np.asarray(Image.open(target))
    Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])).save(target)  # a different picture, same id
    again = _embed(runner, digits, "--model", "pixels:8")
    assert again["n_changed"] == 1 and again["n_embedded"] == 1 and again["n_reused"] == 1796
    after = _vectors(digits)["0/digit_0020.png"]
    assert float(before @ after) < 0.999
    # The new vector is what a fresh embedding of the new picture gives.
    fresh = np.asarray(artifacts.read_embeddings(digits / ".labelkit" / "embeddings.parquet")[1])
    assert fresh.shape == (1797, 64)
    _embed(runner, digits, "--model", "pixels:8", "--force")
    np.testing.assert_allclose(_vectors(digits)["0/digit_0020.png"], after, atol=1e-6)


def test_a_row_inserted_at_the_top_of_a_text_manifest_keeps_each_text_its_own_vector(runner, tmp_path):
    texts = ["how do I reset my card pin", "my transfer has not arrived", "what is the exchange rate today", "cancel my card"]
    data = write_csv(tmp_path / "t", "text,label\n" + "".join(f"{t},{'a' if i % 2 else 'b'}\n" for i, t in enumerate(texts)))
    _embed(runner, data, "--model", "minilm")
    by_text = {t: v for t, v in zip(texts, artifacts.read_embeddings(data / ".labelkit" / "embeddings.parquet")[1])}
    (data / "labels.csv").write_text("text,label\nwhere is my refund,a\n" + "".join(f"{t},{'a' if i % 2 else 'b'}\n" for i, t in enumerate(texts)))
    s = _embed(runner, data, "--model", "minilm")
    # Ids are row numbers, so every id now names another text: nothing is reused by id,
    # every known text is reused by content, and only the new one is embedded.
    assert s["n_embedded"] == 1 and s["n_reused"] == 4 and s["n_changed"] == 4
    ids, vecs = artifacts.read_embeddings(data / ".labelkit" / "embeddings.parquet")
    new_texts = ["where is my refund", *texts]
    for t, v in zip(new_texts[1:], vecs[1:]):
        np.testing.assert_allclose(v, by_text[t], atol=1e-6)


def test_huge_precomputed_vectors_keep_their_direction(runner, tmp_path):
    # Entries near 1e20 used to overflow float32 when squared and came out as all-zero vectors (issue 14).
    rows = [[1e20, 2e20, 0.0], [-3e20, 0.0, 4e20], [0.0, 1e-20, 0.0]]
    data = write_csv(tmp_path / "v", "id,label,embedding\n" + "".join(f'r{i},{"ab"[i % 2]},"{json.dumps(r)}"\n' for i, r in enumerate(rows)))
    _embed(runner, data)
    vecs = _vectors(data)
    np.testing.assert_allclose(vecs["r0"], [1 / 5**0.5, 2 / 5**0.5, 0], rtol=1e-6)
    np.testing.assert_allclose(vecs["r1"], [-0.6, 0, 0.8], rtol=1e-6)
    np.testing.assert_allclose(vecs["r2"], [0, 1, 0], rtol=1e-6)
