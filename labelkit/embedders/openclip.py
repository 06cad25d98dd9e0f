"""``clip:<arch>/<pretrained>``: OpenCLIP image and text towers in one embedding space.

Named ``openclip.py`` (not ``open_clip.py``) so that the module can never be mistaken for the
``open_clip`` library it wraps.

Weights come from one of two places:

* ``--weights PATH``: a local checkpoint (state dict, ``.pt``/``.bin``/``.safetensors``) for
  ``<arch>``. A ``/<pretrained>`` tag, if given with it, is used only for what the checkpoint
  cannot say: QuickGELU and the image mean/std the weights were trained with.
* a named tag (``clip:ViT-B-32/openai``) with ``allow_download``: fetched from the hub by
  open_clip. Without ``allow_download`` this is a DependencyError saying how to supply weights;
  random weights are never used.

Class names are embedded with a prompt-template ensemble: each name is put into every template,
the normalised text embeddings are averaged and renormalised (Radford et al. 2021, Sec. 3.1.4).

References
----------
Radford, A. et al. "Learning Transferable Visual Models From Natural Language Supervision." ICML 2021.
Cherti, M. et al. "Reproducible scaling laws for contrastive language-image learning." CVPR 2023.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from labelkit.embedders.base import Embedder, EmbedderOptions, open_image, register
from labelkit.errors import BadInputError, DependencyError

# A handful of general-purpose templates from the CLIP paper's ImageNet prompt set.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of the {}.",
    "a low resolution photo of a {}.",
    "a good photo of the {}.",
)
_TEXT_CHUNK = 256


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise DependencyError("clip models need the package 'open_clip_torch' (pip install open_clip_torch)") from e
    return open_clip


class OpenClipEmbedder(Embedder):
    """An OpenCLIP model: ``forward`` embeds images, ``embed_texts`` embeds texts, same space."""

    modality = "image"

    def __init__(self, arch: str, tag: str | None = None, *, weights: str | None = None,
                 allow_download: bool = False, device: str = "cpu"):
        import torch

        open_clip = _import_open_clip()
        self.arch, self.tag, self.weights = arch, tag, weights
        self.spec = f"clip:{arch}/{tag}" if tag else f"clip:{arch}"
        cfg = _check_source(open_clip, arch, tag, weights, allow_download, self.spec)
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
        kwargs: dict[str, Any] = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}
        if weights and tag_cfg:
            # The file has no preprocessing record; take the tag's, as a download would.
            kwargs.update(image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"),
                          image_interpolation=tag_cfg.get("interpolation"), image_resize_mode=tag_cfg.get("resize_mode"))
        self.device = torch.device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=weights or tag, device=self.device, **kwargs)
        except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
            if weights:
                raise BadInputError(f"--weights {weights}: not a checkpoint for {arch} ({_first_line(e)})") from e
            raise DependencyError(f"{self.spec}: could not download weights; are you offline? ({_first_line(e)})") from e
        self._model = model.eval()
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(arch)
        self._pp = dict(model.visual.preprocess_cfg)
        self.dim = int(cfg["embed_dim"])

    @property
    def has_text_tower(self) -> bool:
        return True

    def preprocessing(self) -> dict[str, Any]:
        pp = self._pp
        return {
            "mode": "RGB",
            "size": list(pp["size"]) if isinstance(pp["size"], (tuple, list)) else [pp["size"], pp["size"]],
            "resize_mode": pp.get("resize_mode"),
            "interpolation": pp.get("interpolation"),
            "mean": list(pp["mean"]),
            "std": list(pp["std"]),
            "weights": Path(self.weights).name if self.weights else self.tag,
            "templates": list(TEMPLATES),
        }

    def load(self, source: str):
        size = self._pp["size"]
        draft = max(size) if isinstance(size, (tuple, list)) else int(size)
        return self._preprocess(open_image(source, "RGB", draft=draft))

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")

    def forward(self, batch: list) -> np.ndarray:
        import torch

        if not batch:
            return np.zeros((0, self.dim), np.float32)
        x = torch.stack(batch).to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            return self._model.encode_image(x).float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        with torch.inference_mode(), self._autocast():
            for s in range(0, len(texts), _TEXT_CHUNK):
                tokens = self._tokenizer(list(texts[s:s + _TEXT_CHUNK])).to(self.device)
                out.append(self._model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(out)

    def embed_class_names(self, classes: list[str]) -> np.ndarray:
        """Prompt-ensembled class embeddings (K, dim), unit norm; '_' in names reads as a space."""
        names = [c.replace("_", " ") for c in classes]
        acc = np.zeros((len(names), self.dim), np.float64)
        for template in TEMPLATES:
            e = self.embed_texts([template.format(n) for n in names]).astype(np.float64)
            acc += e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
        return acc.astype(np.float32)

    def default_batch_size(self) -> int:
        return 32


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_source(open_clip, arch: str, tag: str | None, weights: str | None, allow_download: bool, spec: str) -> dict:
    """The arch's config, after checking that weights can be had without surprises."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise BadInputError(f"unknown CLIP architecture '{arch}' in '{spec}'; see open_clip.list_models() for the names")
    if tag:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not open_clip.get_pretrained_cfg(arch, tag):
            listed = ", ".join(tags) if tags else "none"
            raise BadInputError(f"unknown pretrained tag '{tag}' for CLIP architecture '{arch}'. Known tags: {listed}")
    if not weights and not tag:
        raise DependencyError(
            f"{spec} needs weights: pass --weights PATH to a local checkpoint, or name pretrained weights "
            f"(clip:{arch}/TAG) with --allow-download when online"
        )
    if not weights and not allow_download:
        raise DependencyError(f"{spec} needs weights: pass --weights PATH to a local checkpoint, or --allow-download when online")
    text_cfg, vision_cfg = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
    hf = text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")
    if hf and not allow_download:
        raise DependencyError(f"{spec} builds its text tower from the Hugging Face model '{hf}', which needs --allow-download")
    if "timm_model_name" in vision_cfg:
        try:
            import timm  # noqa: F401
        except ImportError as e:
            raise DependencyError(f"{spec} needs the package 'timm' for its image tower (pip install timm)") from e
    return cfg


@register("clip")
def _make(arg: str | None, options: EmbedderOptions) -> OpenClipEmbedder:
    if not arg:
        raise BadInputError("model 'clip' needs an architecture: --model clip:ARCH/PRETRAINED, e.g. clip:ViT-B-32/openai")
    arch, _, tag = arg.partition("/")
    return OpenClipEmbedder(
        arch, tag or None, weights=options.weights, allow_download=options.allow_download, device=options.device
    )


def checkpoint_in_cache(arch: str, tag: str) -> str | None:
    """The local file of open_clip's pretrained ``arch``/``tag`` in the Hugging Face cache, or None
    (not downloaded yet, a tag not hosted on the hub, or open_clip / huggingface_hub missing)."""
    try:
        import open_clip
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    names: tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    if repo.count("/") > 1:  # some tags name the file too: 'owner/repo/file.bin'
        repo, _, filename = repo.rpartition("/")
        names = (filename,)
    for name in names:
        path = try_to_load_from_cache(repo, name)
        if isinstance(path, str) and Path(path).is_file():
            return path
    return None


def cached_checkpoints() -> list[tuple[str, str]]:
    """(``clip:ARCH/TAG``, local file) for every open_clip pretrained tag whose weights are already
    in the Hugging Face cache (a download made earlier), so ``--model auto`` can score them offline."""
    try:
        import open_clip
    except ImportError:
        return []
    return [(f"clip:{arch}/{tag}", path) for arch, tag in open_clip.list_pretrained() if (path := checkpoint_in_cache(arch, tag))]
