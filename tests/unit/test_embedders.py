"""labelkit/embedders: every backend on hand-made inputs with known answers, all offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelkit._validation import l2_normalize
from labelkit.embedders import Embedder, EmbedderOptions, available, create_embedder, open_image
from labelkit.errors import BadInputError, DependencyError


def _png(path: Path, array, mode: str | None = None) -> str:
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return str(path)


def _noise_image(path: Path, fmt: str, size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, fmt)
    return path.read_bytes()


# -- registry ---------------------------------------------------------------------------------


def test_available_lists_every_backend():
    assert available() == ["clip", "efficientnet-lite0", "minilm", "pixels", "precomputed", "sbert"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuch", "unknown model 'nosuch'. Choose one of: clip, efficientnet-lite0, minilm, pixels, precomputed, sbert"),
        ("pixels:abc", "'pixels' size must be an integer in [1, 512]. Got 'abc' instead."),
        ("pixels:0", "'pixels' size must be an integer in [1, 512]. Got '0' instead."),
        ("efficientnet-lite0:b3", "model 'efficientnet-lite0' takes no argument. Got 'efficientnet-lite0:b3' instead."),
        ("minilm:large", "model 'minilm' takes no argument. Got 'minilm:large' instead."),
        ("clip", "model 'clip' needs an architecture: --model clip:ARCH/PRETRAINED, e.g. clip:ViT-B-32/openai"),
        ("clip:NoSuchArch/openai", "unknown CLIP architecture 'NoSuchArch' in 'clip:NoSuchArch/openai'"),
        ("clip:ViT-B-32/nosuchtag", "unknown pretrained tag 'nosuchtag' for CLIP architecture 'ViT-B-32'. Known tags: openai,"),
        ("sbert", "model 'sbert' needs a folder or hub name: --model sbert:PATH"),
    ],
)
def test_bad_specs_raise_bad_input(spec, message):
    with pytest.raises(BadInputError) as info:
        create_embedder(spec)
    assert str(info.value).startswith(message)


# -- image decoding ---------------------------------------------------------------------------


def test_unreadable_files_raise_from_load(tmp_path):
    good_png = _noise_image(tmp_path / "good.png", "PNG")
    good_jpg = _noise_image(tmp_path / "good.jpg", "JPEG")
    bad = {
        "empty.png": b"",
        "garbage.png": b"this is not an image at all",
        "broken_header.png": b"\x89PNG\r\n\x1a\nnot really",
        "truncated.png": good_png[: len(good_png) // 2],
        "truncated.jpg": good_jpg[: len(good_jpg) // 2],
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    emb = create_embedder("pixels:4")
    for name in [*bad, "missing.png"]:
        with pytest.raises((OSError, ValueError)):
            emb.load(str(tmp_path / name))
    with pytest.raises((OSError, ValueError)):
        emb.load(str(tmp_path))  # a folder
    assert emb.load(str(tmp_path / "good.png")).shape == (16,)  # the intact originals still decode
    assert emb.load(str(tmp_path / "good.jpg")).shape == (16,)


def test_open_image_composites_transparency_on_white_and_applies_exif(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    img = open_image(_png(tmp_path / "t.png", rgba, "RGBA"), "L")
    assert np.asarray(img).tolist() == [[255, 255], [255, 255]]
    # EXIF orientation 6 (rotate 90 degrees clockwise): a 3 wide x 1 high strip becomes 1 x 3.
    strip = Image.fromarray(np.array([[0, 128, 255]], np.uint8), "L")
    exif = Image.Exif()
    exif[0x0112] = 6
    strip.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert open_image(str(tmp_path / "rot.jpg"), "L").size == (1, 3)


def test_open_image_rescales_16_bit_grayscale(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 30000], [65535, 1000]], np.uint16)).save(path)
    assert np.asarray(open_image(str(path), "L")).tolist() == [[0, 117], [255, 3]]  # x >> 8, not clipped at 255


# -- pixels -----------------------------------------------------------------------------------


def test_pixels_known_values(tmp_path):
    emb = create_embedder("pixels:2")
    assert (emb.spec, emb.dim, emb.modality) == ("pixels:2", 4, "image")
    x = emb.embed([_png(tmp_path / "check.png", [[0, 255], [255, 0]])])
    assert x.dtype == np.float32 and x.shape == (1, 4)
    np.testing.assert_allclose(x, [[-0.5, 0.5, 0.5, -0.5]])
    # ITU-R 601-2 luma: pure red -> 76 of 255.
    red = emb.embed([_png(tmp_path / "red.png", np.full((2, 2, 3), [255, 0, 0]))])
    np.testing.assert_allclose(red, np.full((1, 4), 76 / 255 - 0.5), rtol=1e-6)


def test_pixels_default_size_shape_norm_and_determinism(tmp_path):
    emb = create_embedder("pixels")
    assert emb.spec == "pixels:16" and emb.dim == 256
    rng = np.random.default_rng(0)
    paths = [_png(tmp_path / f"{i}.png", rng.integers(0, 256, (8, 8))) for i in range(3)]
    paths.append(_png(tmp_path / "white.png", np.full((8, 8), 255)))
    x = emb.embed(paths)
    assert x.shape == (4, 256)
    np.testing.assert_array_equal(x, emb.embed(paths))
    np.testing.assert_allclose(x[3], 0.5)  # centred white: 1 - 0.5 everywhere
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(x), axis=1), 1.0, rtol=1e-6)
    assert np.abs(x[:3]).max() <= 0.5 and x[:3].min() < 0  # centred, so cosine is meaningful


def test_pixels_rejects_weights(tmp_path):
    with pytest.raises(BadInputError, match="model 'pixels' has no weights; drop --weights"):
        create_embedder("pixels", EmbedderOptions(weights=str(tmp_path / "w.pt")))


# -- efficientnet-lite0 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet() -> Embedder:
    return create_embedder("efficientnet-lite0")


def test_efficientnet_classifies_the_sample_daisy(effnet, tmp_path):
    from sklearn.datasets import load_sample_image

    path = _png(tmp_path / "flower.png", load_sample_image("flower.jpg"))
    batch = [effnet.load(path)]
    assert batch[0].shape == (224, 224, 3) and batch[0].dtype == np.uint8
    top = np.argsort(-effnet.logits(batch)[0])[:3]
    assert 985 in top  # ImageNet class 985 = 'daisy'
    feats = effnet.forward(batch)
    assert feats.shape == (1, 1280) and feats.dtype == np.float32 and np.all(np.isfinite(feats))
    np.testing.assert_array_equal(feats, effnet.forward(batch))


def test_efficientnet_speedups_keep_the_reference_outputs(effnet, tmp_path):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from labelkit.embedders.efficientnet import packaged_weights

    rng = np.random.default_rng(0)
    batch = [effnet.load(_png(tmp_path / f"{i}.png", rng.integers(0, 256, (230, 250, 3)))) for i in range(2)]
    plain = EfficientNet.from_name("efficientnet-lite0")
    plain.load_state_dict(torch.load(packaged_weights(), map_location="cpu", weights_only=True))
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().sub(127).div(128).contiguous()
    with torch.inference_mode():
        reference = plain.eval().extract_features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(effnet.forward(batch), reference, atol=1e-4)
    # --weights PATH replaces the packaged file: the same file gives the same vectors.
    same = create_embedder("efficientnet-lite0", EmbedderOptions(weights=packaged_weights()))
    np.testing.assert_array_equal(same.forward(batch), effnet.forward(batch))


def test_efficientnet_grayscale_inputs_become_rgb(effnet, tmp_path):
    x = effnet.load(_png(tmp_path / "g.png", np.arange(64).reshape(8, 8) * 4))
    assert x.shape == (224, 224, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert effnet.spec == "efficientnet-lite0" and effnet.dim == 1280 and effnet.preprocessing()["scale"] == "(x - 127) / 128"


def test_efficientnet_bad_weights_files(tmp_path):
    import torch

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="not a readable PyTorch state dict"):
        create_embedder("efficientnet-lite0", EmbedderOptions(weights=str(garbage)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(BadInputError, match="not efficientnet-lite0 weights"):
        create_embedder("efficientnet-lite0", EmbedderOptions(weights=str(wrong)))


# -- minilm / sbert ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return create_embedder("minilm")


def test_minilm_similarity_ordering(minilm):
    assert (minilm.spec, minilm.dim, minilm.modality, minilm.has_text_tower) == ("minilm", 384, "text", True)
    texts = ["a cat sat on the mat", "a kitten on a rug", "stock markets fell"]
    x = minilm.embed(texts)
    assert x.shape == (3, 384) and x.dtype == np.float32
    sim = l2_normalize(x) @ l2_normalize(x).T
    assert sim[0, 1] > sim[0, 2] + 0.3
    np.testing.assert_array_equal(x, minilm.embed(texts))
    classes = minilm.embed_class_names(["cats", "finance"])
    assert classes.shape == (2, 384)
    assert (l2_normalize(classes) @ l2_normalize(x).T).argmax(axis=0).tolist() == [0, 0, 1]  # zero-shot works


def test_minilm_load_rejects_empty_text(minilm):
    assert minilm.load("hello") == "hello"
    with pytest.raises(ValueError, match="empty text"):
        minilm.load("   ")


def test_sbert_local_folder_matches_minilm_and_hub_name_needs_download(minilm):
    from labelkit.embedders.text import packaged_minilm

    local = create_embedder(f"sbert:{packaged_minilm()}")
    assert local.spec == f"sbert:{packaged_minilm().resolve()}" and local.dim == 384
    np.testing.assert_allclose(local.embed_texts(["hello world"]), minilm.embed_texts(["hello world"]), atol=1e-6)
    with pytest.raises(DependencyError) as info:
        create_embedder("sbert:sentence-transformers/all-mpnet-base-v2")
    assert str(info.value) == (
        "sbert:sentence-transformers/all-mpnet-base-v2 needs weights: pass --model sbert:PATH to a local "
        "sentence-transformers folder, or --allow-download when online"
    )
    with pytest.raises(BadInputError, match="ships its own weights"):
        create_embedder("minilm", EmbedderOptions(weights="/some/file.pt"))


# -- clip (open_clip) -------------------------------------------------------------------------

TINY = "labelkit-tiny-vit"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_clip(tmp_path, monkeypatch):
    """A tiny architecture registered with open_clip (undone after the test) and random weights saved to disk."""
    import open_clip
    import torch
    from open_clip import factory

    # add_model_config mutates open_clip's registry; give it private copies that monkeypatch restores.
    monkeypatch.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    cfg_path = tmp_path / f"{TINY}.json"
    cfg_path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return model, str(weights)


def test_clip_round_trip_through_weights_file(tiny_clip, tmp_path):
    import torch

    reference, weights = tiny_clip
    emb = create_embedder(f"clip:{TINY}", EmbedderOptions(weights=weights))
    assert (emb.spec, emb.dim, emb.modality, emb.has_text_tower) == (f"clip:{TINY}", 32, "image", True)
    rng = np.random.default_rng(0)
    paths = [_png(tmp_path / f"{i}.png", rng.integers(0, 256, (40, 48, 3))) for i in range(3)]
    batch = [emb.load(p) for p in paths]
    assert tuple(batch[0].shape) == (3, 32, 32)
    x = emb.forward(batch)
    assert x.shape == (3, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, emb.forward([emb.load(p) for p in paths]))
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(x), axis=1), 1.0, rtol=1e-6)
    with torch.inference_mode():  # the file's weights were loaded, not a fresh random init
        np.testing.assert_allclose(x, reference.encode_image(torch.stack(batch)).numpy(), atol=1e-5)
    classes = emb.embed_class_names(["cat", "golden_retriever"])
    assert classes.shape == (2, x.shape[1])
    np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(classes, emb.embed_class_names(["cat", "golden_retriever"]))
    texts = emb.embed_texts(["a photo of a cat.", "a photo of a dog."])
    assert texts.shape == (2, 32) and not np.allclose(texts[0], texts[1])
    assert emb.preprocessing()["size"] == [32, 32] and emb.preprocessing()["weights"] == "tiny.pt"


def test_clip_weights_for_another_architecture_are_bad_input(tiny_clip, tmp_path):
    import torch

    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BadInputError, match=f"--weights {wrong}: not a checkpoint for {TINY}"):
        create_embedder(f"clip:{TINY}", EmbedderOptions(weights=str(wrong)))


def test_clip_without_weights_needs_download_or_a_file(tmp_path):
    with pytest.raises(DependencyError) as info:
        create_embedder("clip:ViT-B-32/openai")
    assert str(info.value) == (
        "clip:ViT-B-32/openai needs weights: pass --weights PATH to a local checkpoint, or --allow-download when online"
    )
    with pytest.raises(DependencyError, match=r"clip:ViT-B-32 needs weights: .*clip:ViT-B-32/TAG"):
        create_embedder("clip:ViT-B-32")  # random weights are useless
    fake = tmp_path / "w.pt"
    fake.write_bytes(b"x")
    with pytest.raises(DependencyError, match="Hugging Face model 'roberta-base', which needs --allow-download"):
        create_embedder("clip:roberta-ViT-B-32/laion2b_s12b_b32k", EmbedderOptions(weights=str(fake)))


def test_failed_downloads_say_offline(monkeypatch):
    import open_clip
    import sentence_transformers

    def no_network(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_network)
    offline = r"clip:ViT-B-32/openai: could not download weights; are you offline\? \(Failed to download"
    with pytest.raises(DependencyError, match=offline):
        create_embedder("clip:ViT-B-32/openai", EmbedderOptions(allow_download=True))

    def hub_unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", hub_unreachable)
    with pytest.raises(DependencyError, match="could not download 'org/model' from the Hugging Face hub; are you offline"):
        create_embedder("sbert:org/model", EmbedderOptions(allow_download=True))


# -- precomputed ------------------------------------------------------------------------------


def test_precomputed_passes_vectors_through():
    emb = create_embedder("precomputed")
    assert emb.modality == "vector" and emb.dim is None
    x = emb.embed([[3, 4], [0, 2]])
    assert emb.dim == 2
    np.testing.assert_array_equal(x, np.array([[3, 4], [0, 2]], np.float32))
    with pytest.raises(BadInputError, match=r"embeddings must all have length 2. Got lengths \[2, 3\] instead."):
        emb.embed([[1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        emb.load([1.0, float("nan")])
