"""The student folder's format: the files ``labelkit distill`` writes and ``labelkit predict`` reads.

``student/`` holds the weights (safetensors), ``config.json`` (``format``, architecture, classes,
how inputs are read, the embedder), ``metrics.json``, the training dynamics and, with ``--onnx``,
the ONNX export. docs/artifacts.md describes each.
"""

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
DYNAMICS_FILE = "dynamics.parquet"
ONNX_FILE = "model.onnx"
FORMAT = "labelkit-student"  # config.json's "format": what predict checks before reading the folder
FORMAT_VERSION = 1

__all__ = ["CONFIG_FILE", "DYNAMICS_FILE", "FORMAT", "FORMAT_VERSION", "METRICS_FILE", "MODEL_FILE", "ONNX_FILE"]
