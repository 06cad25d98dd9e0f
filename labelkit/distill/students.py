"""Student architectures: the registry, building, saving and loading, and their initialisation.

Students are built from a plain JSON-able config dict (:func:`build_student`) so the stage layer can
save ``student_state(model)`` with safetensors next to ``config.json`` and rebuild the model later.

Architectures (the registry :data:`STUDENTS`):

``linear``
    Standardisation + one linear layer on embeddings (N, D).
``mlp``
    Standardisation + Linear(D, hidden) + GELU + dropout + Linear(hidden, K). The default: with the
    default TrainConfig it was 0.3 to 0.9 points of test accuracy above the linear head (best of
    lr 1e-3 and 1e-2) on
    BANKING77 MiniLM embeddings (0.922 vs 0.919 with all 10k labels, 0.837 vs 0.828 with 1k) and
    on digits pixels (0.978 vs 0.972; 0.849 vs 0.843 with 120 labels), at 1 to 4x the CPU time.
``cnn``
    A small convolutional network on image tensors (N, C, H, W), trained end to end from scratch.
    Meant for a GPU (mixed precision is used there); it runs on CPU too, slowly.
``finetune``
    EfficientNet-Lite0 started from its ImageNet weights (the packaged ones the default image
    embedder uses) with a new linear head, fine-tuned end to end on RGB image tensors. Meant for a
    GPU; on CPU a step at 224 x 224 takes seconds.

Every student starts with a :class:`Standardize` layer whose mean and std buffers are set from the
training rows at fit time: they are saved in the state dict and exported to ONNX with the model,
so callers feed raw embeddings or raw pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelkit.errors import BadInputError, DependencyError

__all__ = ["STUDENTS", "Architecture", "build_student", "load_student", "student_state"]


class Standardize(nn.Module):
    """(x - mean) / std with fixed buffers; per feature for (N, D), per channel for (N, C, H, W)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.mean)
        nn.init.ones_(self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeededDropout(nn.Module):
    """Dropout whose masks come from ``self.generator`` when one is attached (fit attaches a seeded one).

    ``torch.nn.Dropout`` draws from the global RNG; the training loop must not touch global state,
    so it attaches its own generator for the duration of a fit. In eval mode this is the identity.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LinearHead(nn.Module):
    """Standardize -> Linear(in_dim, n_classes)."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.norm = Standardize((in_dim,))
        self.fc = nn.Linear(in_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class MLPHead(nn.Module):
    """Standardize -> Linear(in_dim, hidden) -> GELU -> Dropout -> Linear(hidden, n_classes)."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = Standardize((in_dim,))
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = SeededDropout(dropout)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(self.norm(x)))))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """A small VGG-style network for (N, C, H, W) images (H, W >= 4), trained end to end.

    conv(w) conv(w) pool, conv(2w) pool, conv(4w), global average pool, dropout, linear.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int, dropout: float):
        super().__init__()
        self.norm = Standardize((in_channels, 1, 1))
        self.features = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.drop = SeededDropout(dropout)
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(self.norm(x))))


BACKBONE = "efficientnet-lite0"
BACKBONE_DIM = 1280
FINETUNE_SIDE = 224  # EfficientNet-Lite0's training resolution


class FinetuneNet(nn.Module):
    """EfficientNet-Lite0 + dropout + a new linear head, for (N, 3, H, W) pixels in [0, 1].

    The input scaling is fixed to the one the Lite models were trained with, ``(255 x - 127) /
    128``, in the ``norm`` buffers (:meth:`init_pretrained` sets them; training does not refit
    them). Drop-connect is off: its masks would come from the global RNG.
    """

    fixed_norm = True

    def __init__(self, n_classes: int, dropout: float):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise DependencyError("the finetune student needs 'efficientnet-lite-pytorch' (pip install efficientnet-lite-pytorch)") from e
        self.norm = Standardize((3, 1, 1))
        self.backbone = EfficientNet.from_name(BACKBONE, drop_connect_rate=0.0)
        self.backbone._fc = nn.Identity()  # its ImageNet head: replaced by ``fc``
        self.drop = SeededDropout(dropout)
        self.fc = nn.Linear(BACKBONE_DIM, n_classes)

    def init_pretrained(self) -> None:
        """Load the packaged ImageNet weights into the backbone and set the fixed input scaling."""
        from labelkit.embedders.efficientnet import _read_state_dict, packaged_weights

        state = {key: v for key, v in _read_state_dict(packaged_weights()).items() if not key.startswith("_fc.")}
        self.backbone.load_state_dict(state, strict=True)
        with torch.no_grad():
            self.norm.mean.fill_(127.0 / 255.0)
            self.norm.std.fill_(128.0 / 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.backbone.extract_features(self.norm(x)).mean(dim=(2, 3))))


def _head_config(config, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    out = {"architecture": config.architecture, "in_dim": int(input_shape[0]), "n_classes": int(n_classes)}
    if config.architecture == "mlp":
        out.update(hidden=config.hidden, dropout=config.dropout)
    return out


def _cnn_config(config, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    return {"architecture": "cnn", "in_channels": int(input_shape[0]), "n_classes": int(n_classes), "width": config.width, "dropout": config.dropout}


def _finetune_config(config, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    if int(input_shape[0]) != 3:
        raise BadInputError(f"the finetune student reads RGB images (3 channels). Got {int(input_shape[0])} channels.")
    return {"architecture": "finetune", "n_classes": int(n_classes), "dropout": config.dropout}


@dataclass(frozen=True)
class Architecture:
    """One student architecture: adding one means adding one entry to :data:`STUDENTS`.

    Attributes
    ----------
    name : str
    input_kind : {"embeddings", "pixels"}
        What it trains on: the embed stage's vectors (N, D), or the images' pixels (N, C, H, W).
    build : callable
        Student config dict -> untrained module (built on the meta device by :func:`build_student`).
    keys : tuple of str
        Required student config keys besides ``"architecture"``.
    config : callable
        ``(TrainConfig, input shape without the batch axis, n_classes) -> student config dict``.
    image_side : int
        pixels: the default square side the images are resized to; 0 = their largest side,
        clipped to 8-64 (:mod:`labelkit.distill.pixels`).
    image_mode : str or None
        pixels: PIL mode the images are read in ("RGB"); None = grayscale when every image is.
    threads : {"one", "torch"}
        CPU threads while training when none are asked for: one (small matrices gain nothing
        from more and lose much on a busy machine), or torch's default.
    """

    name: str
    input_kind: str
    build: Callable[[dict], nn.Module]
    keys: tuple[str, ...]
    config: Callable[[Any, tuple[int, ...], int], dict[str, Any]]
    image_side: int = 0
    image_mode: str | None = None
    threads: str = "one"

    @property
    def input_ndim(self) -> int:
        """2 for (N, D) embeddings, 4 for (N, C, H, W) images."""
        return 4 if self.input_kind == "pixels" else 2


STUDENTS: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("linear", "embeddings", lambda c: LinearHead(c["in_dim"], c["n_classes"]), ("in_dim", "n_classes"), _head_config),
        Architecture(
            "mlp", "embeddings", lambda c: MLPHead(c["in_dim"], c["n_classes"], c["hidden"], c["dropout"]),
            ("in_dim", "n_classes", "hidden", "dropout"), _head_config,
        ),
        Architecture(
            "cnn", "pixels", lambda c: SmallCNN(c["in_channels"], c["n_classes"], c["width"], c["dropout"]),
            ("in_channels", "n_classes", "width", "dropout"), _cnn_config, threads="torch",
        ),
        Architecture(
            "finetune", "pixels", lambda c: FinetuneNet(c["n_classes"], c["dropout"]), ("n_classes", "dropout"), _finetune_config,
            image_side=FINETUNE_SIDE, image_mode="RGB", threads="torch",
        ),
    )
}
"""Registry of student architectures: name -> :class:`Architecture`."""


def build_student(config: dict[str, Any]) -> nn.Module:
    """Build a fresh (untrained) student from a JSON-able config dict.

    Parameters
    ----------
    config : dict
        ``{"architecture": "linear", "in_dim": D, "n_classes": K}``,
        ``{"architecture": "mlp", "in_dim": D, "n_classes": K, "hidden": H, "dropout": p}`` or
        ``{"architecture": "cnn", "in_channels": C, "n_classes": K, "width": W, "dropout": p}`` or
        ``{"architecture": "finetune", "n_classes": K, "dropout": p}`` (untrained: its ImageNet
        weights are loaded by :func:`init_weights`), as returned in
        :attr:`FitResult.student_config`. Extra keys are ignored (so a config.json
        may also carry class names or the embedder).

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on CPU. Load trained weights with ``model.load_state_dict(state)`` or use
        :func:`load_student`.

    Examples
    --------
    >>> m = build_student({"architecture": "linear", "in_dim": 4, "n_classes": 3})
    >>> tuple(m(torch.zeros(2, 4)).shape)
    (2, 3)
    """
    if not isinstance(config, dict):
        raise BadInputError(f"'config' must be a dict. Got {type(config).__name__} instead.")
    name = config.get("architecture")
    if name not in STUDENTS:
        raise BadInputError(f"'architecture' must be one of {sorted(STUDENTS)}. Got {name!r} instead.")
    arch = STUDENTS[name]
    missing = [key for key in arch.keys if key not in config]
    if missing:
        raise BadInputError(f"student config for {name!r} is missing {missing}; it needs {list(arch.keys)}.")
    for key in arch.keys:
        if key == "dropout":
            if not 0.0 <= float(config[key]) < 1.0:
                raise BadInputError(f"'dropout' must be in [0, 1). Got {config[key]!r} instead.")
        elif not (isinstance(config[key], (int, np.integer)) and config[key] >= 1):
            raise BadInputError(f"'{key}' must be a positive int. Got {config[key]!r} instead.")
    # Built on the meta device, then initialised from a local generator: the global RNG is not used.
    with torch.device("meta"):
        model = arch.build(config)
    model = model.to_empty(device="cpu")
    _reset_parameters(model, torch.Generator().manual_seed(0))
    return model.eval()


def student_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers as contiguous CPU tensors (ready for safetensors' save_file)."""
    return {key: v.detach().to("cpu").contiguous().clone() for key, v in model.state_dict().items()}


def load_student(config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a trained student: :func:`build_student` then ``load_state_dict(state, strict=True)``; eval mode."""
    model = build_student(config)
    model.load_state_dict(state, strict=True)
    return model.eval()



# -- initialisation (used by the training loop; no global RNG) ---------------------------------


def _reset_parameters(model: nn.Module, gen: torch.Generator) -> None:
    """(Re-)initialise every layer from ``gen`` (PyTorch's default schemes, without the global RNG)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)
        elif isinstance(m, (nn.BatchNorm2d, Standardize)):
            m.reset_parameters()


def init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """A fresh student's starting weights: every layer from ``gen``, then pretrained weights where the
    architecture has them (``finetune``)."""
    _reset_parameters(model, gen)
    if hasattr(model, "init_pretrained"):
        model.init_pretrained()


def _set_standardize(model: nn.Module, x: np.ndarray) -> None:
    """Fit the Standardize buffers on the training rows (features, or channels for images); a
    student with a fixed input scaling (``fixed_norm``) keeps its own."""
    if getattr(model, "fixed_norm", False):
        return
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 1e-6, std, 1.0)  # constant features pass through unscaled
    norm = model.norm
    norm.mean.copy_(torch.from_numpy(mean.reshape(norm.mean.shape)).float())
    norm.std.copy_(torch.from_numpy(std.reshape(norm.std.shape)).float())


def _attach_generator(model: nn.Module, gen: torch.Generator | None) -> None:
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.generator = gen

