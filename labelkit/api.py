"""The notebook API: label issues from your own probabilities, and read access to a workspace.

``labelkit.find_label_issues`` takes the arguments cleanlab's function of that name takes (the
same names, the same two return shapes) over labelkit's confident learning
(:mod:`labelkit.noise`). ``labelkit.Workspace`` reads what the command line wrote, any artifact as
an Arrow table or a pandas DataFrame. Both are re-exported from ``labelkit``; docs/python-api.md
shows them in use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelkit.config import defaults, validate_options
from labelkit.errors import BadInputError, MissingArtifactError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["Workspace", "find_label_issues"]

_DETECT = defaults("detect-noise")  # filter_by and rank_by default to the detect-noise stage's (docs/options.md)


def find_label_issues(
    labels,
    pred_probs,
    *,
    filter_by: str = _DETECT.filter_by,
    return_indices_ranked_by: str | None = None,
    frac_noise: float = 1.0,
    num_to_remove_per_class=None,
    min_examples_per_class: int = 1,
) -> np.ndarray:
    """Likely label errors in ``labels``, by confident learning on out-of-sample ``pred_probs``.

    The call and the result are cleanlab's ``cleanlab.filter.find_label_issues`` (its first six
    arguments); the work is :func:`labelkit.noise.detect_label_issues`, whose results match
    cleanlab's on the same inputs (tests/unit/test_noise.py compares them).

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        Given labels, integers in [0, n_classes); -1 marks an unlabeled row (never an issue).
    pred_probs : array-like of shape (n_samples, n_classes)
        Out-of-sample predicted probabilities (from cross-validation, or ``labelkit detect-noise``),
        rows summing to 1.
    filter_by : {"prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"}, default: detect-noise's ``filter_by``
        Which rule decides that a label is an issue (Northcutt et al. 2021, section 3.2).
    return_indices_ranked_by : {"self_confidence", "normalized_margin", "confidence_weighted_entropy"} or None, default=None
        None returns a boolean mask; a score name returns the issues' row indices, most likely
        wrong first under that label-quality score.
    frac_noise : float, default=1.0
        In (0, 1]: the share of the estimated number of issues to return (pruning rules only).
    num_to_remove_per_class : array-like of shape (n_classes,), default=None
        With ``prune_by_class``/``prune_by_noise_rate``: how many issues to return per given class.
    min_examples_per_class : int, default=1
        Never leave a class with fewer labeled rows than this.

    Returns
    -------
    ndarray
        Boolean mask of shape (n_samples,), or int64 row indices of the issues, ranked.

    References
    ----------
    Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
    JAIR 70, 2021.

    Examples
    --------
    >>> import numpy as np, labelkit
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05]])
    >>> labelkit.find_label_issues(np.array([0, 0, 1, 1, 1]), p).tolist()
    [False, False, False, False, True]
    >>> labelkit.find_label_issues(np.array([0, 0, 1, 1, 1]), p, return_indices_ranked_by="self_confidence").tolist()
    [4]
    """
    from labelkit import noise

    score = return_indices_ranked_by if return_indices_ranked_by is not None else _DETECT.rank_by
    # The choices are detect-noise's --filter-by and --rank-by, declared once (labelkit.config).
    validate_options("detect-noise", {"filter_by": filter_by, "rank_by": score}, names={"rank_by": "return_indices_ranked_by"})
    issues = noise.detect_label_issues(
        labels, pred_probs, method=filter_by, score_method=score, frac_noise=frac_noise,
        num_to_remove_per_class=num_to_remove_per_class, min_examples_per_class=min_examples_per_class,
    )
    return issues.is_issue if return_indices_ranked_by is None else issues.ranked


class Workspace:
    """Read access to a labelkit workspace: every artifact as Arrow or pandas, never a write.

    ``Workspace("data")`` (a dataset folder: its ``data/.labelkit``) or
    ``Workspace("data/.labelkit")`` (the workspace itself, e.g. one given to ``--out``). An
    artifact is named with or without its extension: ``"pseudolabels"``,
    ``"label_issues.parquet"``, ``"student/dynamics"``. docs/artifacts.md gives every column.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_dir():
            raise BadInputError(f"{path}: no such workspace folder; give a dataset folder or its .labelkit workspace")
        inner = path / ".labelkit"
        self.path = inner if inner.is_dir() and not (path / "manifest.json").exists() else path

    def __repr__(self) -> str:
        return f"labelkit.Workspace({str(self.path)!r})"

    def artifacts(self) -> list[str]:
        """The names of the tables present, sorted (``"embeddings"``, ``"student/dynamics"``, …)."""
        found = set()
        for p in self.path.rglob("*.parquet"):
            rel = p.relative_to(self.path)
            if any(part.startswith(".") for part in rel.parts):
                continue  # temporary files of atomic writes
            top = rel.parts[0]
            # A folder of Parquet parts (DATA/.labelkit/x.parquet/part-0.parquet) is one artifact.
            found.add(top.removesuffix(".parquet") if top.endswith(".parquet") else rel.with_suffix("").as_posix())
        return sorted(found)

    def _file(self, name: str) -> Path:
        rel = name if name.endswith(".parquet") else f"{name}.parquet"
        path = self.path / rel
        if ".." in Path(rel).parts:
            raise BadInputError(f"'name' must be an artifact inside the workspace. Got {name!r} instead.")
        if not path.exists():
            from labelkit.artifacts import OWNER

            owner = OWNER.get(Path(rel).name)
            hint = f"; run 'labelkit {owner} {self._data_hint()}' to make it" if owner else ""
            present = ", ".join(self.artifacts()) or "none"
            raise MissingArtifactError(f"{rel} not found in {self.path}{hint} (present: {present})")
        return path

    def _data_hint(self) -> str:
        return str(self.path.parent) if self.path.name == ".labelkit" else f"DATA --out {self.path}"

    def read(self, name: str, *, columns: list[str] | None = None) -> pa.Table:
        """The artifact ``name`` as a pyarrow Table (a file, or a folder of Parquet parts)."""
        import pyarrow.parquet as pq

        from labelkit.artifacts import reading

        path = self._file(name)
        with reading(path):
            return pq.read_table(path, columns=columns)

    def to_pandas(self, name: str, *, columns: list[str] | None = None) -> pd.DataFrame:
        """The artifact ``name`` as a pandas DataFrame."""
        return self.read(name, columns=columns).to_pandas()

    def metadata(self, name: str) -> dict[str, Any]:
        """What labelkit stored in the artifact's key-value metadata (the parameters that made it, …)."""
        from labelkit.artifacts import read_metadata, reading

        path = self._file(name)
        if path.is_dir():
            path = min(path.rglob("*.parquet"))
        with reading(path):
            return read_metadata(path)

    def embeddings(self) -> tuple[list[str], np.ndarray]:
        """The sample ids and their vectors, (n_samples, dim) float32, in embeddings.parquet's order."""
        from labelkit.artifacts import read_embeddings

        return read_embeddings(self._file("embeddings"))

    def manifest(self) -> dict[str, Any]:
        """manifest.json: per stage, its parameters, input fingerprints, outputs and summary."""
        path = self.path / "manifest.json"
        if not path.is_file():
            raise MissingArtifactError(f"manifest.json not found in {self.path}; run a stage first, e.g. 'labelkit run {self._data_hint()}'")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInputError(f"{path}: not valid JSON ({e}); rerun a stage to rewrite it") from None
