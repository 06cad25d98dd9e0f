"""Export a trained student to ONNX (optional: needs the ``onnx`` package; check with onnxruntime)."""

from __future__ import annotations

import copy
import io
import os
import warnings
from typing import BinaryIO

import torch
from torch import nn

from labelkit.errors import BadInputError, DependencyError

__all__ = ["export_onnx"]


class _LogitsAndProbs(nn.Module):
    """Wraps a student so the graph returns both logits and probabilities (softmax, or per-class sigmoid)."""

    def __init__(self, model: nn.Module, sigmoid: bool = False):
        super().__init__()
        self.model = model
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)


def export_onnx(model: nn.Module, f: str | os.PathLike | BinaryIO, in_dim: int | tuple[int, ...], *, opset: int = 17,
                multi_label: bool = False) -> None:
    """Write ``model`` as an ONNX graph with a dynamic batch axis.

    The graph has one input ``input`` of shape (batch, *in_dim) float32 and two outputs,
    ``logits`` and ``probs`` (softmax), both (batch, n_classes). The student's standardisation
    buffers are part of the graph, so it takes raw embeddings (or raw pixels).

    Parameters
    ----------
    model : torch.nn.Module
        A student from :func:`labelkit.distill.fit_student` or ``load_student``; it is copied to
        CPU in eval mode (the caller's model is not changed).
    f : path-like or binary file object (e.g. io.BytesIO)
        Where to write the ``.onnx`` bytes.
    in_dim : int or tuple of int
        Input shape without the batch axis: ``D`` for heads on embeddings, ``(C, H, W)`` for ``cnn`` and ``finetune``.
    opset : int, default=17
    multi_label : bool, default=False
        ``probs`` is then the per-class sigmoid of the logits (multi-label students), not the softmax.

    Raises
    ------
    DependencyError
        When the ``onnx`` package is not installed (``pip install onnx onnxruntime``).
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise DependencyError("ONNX export needs the 'onnx' package; install it with 'pip install onnx onnxruntime'") from exc
    if not isinstance(model, nn.Module):
        raise BadInputError(f"'model' must be a torch.nn.Module. Got {type(model).__name__} instead.")
    shape = (in_dim,) if isinstance(in_dim, int) else tuple(in_dim)
    if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise BadInputError(f"'in_dim' must be a positive int or a tuple of them. Got {in_dim!r} instead.")
    wrapped = _LogitsAndProbs(copy.deepcopy(model).to("cpu").eval(), sigmoid=multi_label).eval()
    example = torch.zeros((2, *shape), dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo (which needs onnxscript);
        # it is exact for these small graphs and needs only 'onnx'.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # EfficientNet's 'SAME' padding slices cannot be constant-folded; the graph is still exact.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            buf,
            input_names=["input"],
            output_names=["logits", "probs"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "probs": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    data = buf.getvalue()
    if hasattr(f, "write"):
        f.write(data)
    else:
        with open(f, "wb") as fh:
            fh.write(data)
