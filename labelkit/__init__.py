"""labelkit: pseudo-labeling and label-cleaning toolkit.

The command line (``labelkit --help``) runs the pipeline; the names below are its compute layer for
notebooks and scripts (docs/python-api.md): arrays in, arrays out, no files, except
:class:`Workspace`, which reads what the command line wrote.

- :func:`find_label_issues` — cleanlab's call over labelkit's confident learning.
- :func:`knn_graph` — the cosine kNN graph (exact or approximate faiss search).
- :func:`label_spreading` — class probabilities by label spreading over that graph.
- :class:`Teacher` — prototypes, seed cleaning and calibrated scoring behind ``fit``/``predict_proba``.
- :class:`Workspace` — any artifact of a workspace as an Arrow table or a pandas DataFrame.

Each is imported on first use (module ``__getattr__``), so ``import labelkit`` and ``labelkit
--help`` load neither numpy's heavier neighbours nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute): the documented API; tests/unit/test_public_api.py keeps it importable.
_PUBLIC = {
    "find_label_issues": ("labelkit.api", "find_label_issues"),
    "Workspace": ("labelkit.api", "Workspace"),
    "knn_graph": ("labelkit.knn", "knn_graph"),
    "label_spreading": ("labelkit.pseudolabel", "label_spreading_scores"),
    "Teacher": ("labelkit.teacher", "Teacher"),
    "PseudolabelConfig": ("labelkit.config", "PseudolabelConfig"),
    "PrototypeConfig": ("labelkit.config", "PrototypeConfig"),
    "LabelkitError": ("labelkit.errors", "LabelkitError"),
}

__all__ = ["LabelkitError", "PrototypeConfig", "PseudolabelConfig", "Teacher", "Workspace", "__version__", "find_label_issues", "knn_graph", "label_spreading"]

if TYPE_CHECKING:
    from labelkit.api import Workspace as Workspace
    from labelkit.api import find_label_issues as find_label_issues
    from labelkit.config import PrototypeConfig as PrototypeConfig
    from labelkit.config import PseudolabelConfig as PseudolabelConfig
    from labelkit.errors import LabelkitError as LabelkitError
    from labelkit.knn import knn_graph as knn_graph
    from labelkit.pseudolabel import label_spreading_scores as label_spreading
    from labelkit.teacher import Teacher as Teacher


def __getattr__(name: str) -> Any:
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'labelkit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
