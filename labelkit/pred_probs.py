"""A user's out-of-sample probabilities (``labelkit detect-noise --pred-probs FILE``): read and validate.

:func:`load_pred_probs` reads a .npy or .parquet file into an (N, K) array in samples order;
:func:`normalise_rows` checks that each row is a probability distribution (within rounding) and
rescales it exactly. Every problem is a one-line BadInputError that names the file and the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.dataset import Samples
from labelkit.errors import BadInputError

# Row sums of --pred-probs may be off by rounding (IMDB's published file by ~1e-5, float16 by ~1e-3);
# past this absolute tolerance a row is not a probability distribution and needs --renormalize.
SUM_TOLERANCE = 1e-3


def load_pred_probs(path: Path, samples: Samples) -> np.ndarray:
    """(N, K) probabilities in samples order from .npy (rows = samples or labeled samples) or .parquet.

    A .parquet has an 'id' column (unique) and exactly one column per class: a column that is not a
    class, or a class without a column, is an error naming them (sums are checked by normalise_rows).
    """
    k, n = len(samples.classes), len(samples.table)
    labeled = samples.table["label"].notna().to_numpy()
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"--pred-probs {path.name}: cannot read ({e})") from None
        if arr.ndim != 2 or arr.shape[1] != k:
            raise BadInputError(f"--pred-probs {path.name}: expected shape (n, {k}) with columns in sorted class order {samples.classes[:5]}; got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise BadInputError(f"--pred-probs {path.name}: holds {arr.dtype} values, not probabilities")
        if arr.shape[0] == n:
            return arr.astype(np.float64)
        if arr.shape[0] == labeled.sum():
            out = np.full((n, k), np.nan)
            out[labeled] = arr
            return out
        raise BadInputError(f"--pred-probs {path.name}: {arr.shape[0]} rows, but there are {n} samples ({labeled.sum()} labeled)")
    if path.suffix == ".parquet":
        try:
            df = pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as e:
            raise BadInputError(f"--pred-probs {path.name}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        cols = [str(c) for c in df.columns]
        if "id" not in cols:
            raise BadInputError(f"--pred-probs {path.name}: no 'id' column (needs 'id' and one column per class)")
        extra = [c for c in cols if c != "id" and c not in samples.classes]
        if extra:
            raise BadInputError(f"--pred-probs {path.name}: column{'s' if len(extra) > 1 else ''} {_names(extra)} {'are' if len(extra) > 1 else 'is'} not among "
                                f"the dataset's classes {_names(samples.classes)}; the file must have 'id' and one column per class, nothing else")
        missing = [c for c in samples.classes if c not in cols]
        if missing:
            raise BadInputError(f"--pred-probs {path.name}: no column for class{'es' if len(missing) > 1 else ''} {_names(missing)} (needs 'id' and one column per class)")
        if df["id"].isna().any():
            raise BadInputError(f"--pred-probs {path.name}: row {int(np.flatnonzero(df['id'].isna().to_numpy())[0]) + 1} has no 'id'")
        ids = df["id"].astype(str)
        dup = ids[ids.duplicated()]
        if len(dup):
            raise BadInputError(f"--pred-probs {path.name}: duplicate id '{dup.iloc[0]}' ({int(ids.duplicated(keep=False).sum())} rows share an id); give each sample one row")
        try:
            values = df[samples.classes].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise BadInputError(f"--pred-probs {path.name}: the class columns must hold numbers") from None
        frame = pd.DataFrame(values, index=pd.Index(ids), columns=samples.classes)
        lab_ids = samples.table["id"][labeled]
        absent = lab_ids[~lab_ids.isin(frame.index)]
        if len(absent):
            raise BadInputError(f"--pred-probs {path.name}: no row for labeled id '{absent.iloc[0]}'")
        return frame.reindex(samples.table["id"]).to_numpy(dtype=np.float64)
    raise BadInputError(f"--pred-probs {path.name}: use a .npy or .parquet file")


def _names(names: list[str], n: int = 5) -> str:
    return ", ".join(repr(c) for c in names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def normalise_rows(p: np.ndarray, name: str, *, renormalize: bool = False, ids: np.ndarray | None = None) -> np.ndarray:
    """Rows that sum to 1 within SUM_TOLERANCE, rescaled exactly; others an error unless ``renormalize``."""
    where = (lambda i: f"id '{ids[i]}'") if ids is not None else (lambda i: f"row {i + 1}")
    finite = np.isfinite(p).all(axis=1)
    if not finite.all():
        raise BadInputError(f"{name}: probabilities contain NaN or infinite values for labeled samples (first: {where(int(np.argmin(finite)))})")
    if p.min() < -1e-6:
        raise BadInputError(f"{name}: probabilities must be >= 0 (first negative: {where(int(np.argmin(p.min(axis=1))))})")
    p = np.clip(p, 0, None)
    s = p.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise BadInputError(f"{name}: the row for {where(int(np.argmin(s[:, 0])))} sums to 0")
    off = np.abs(s[:, 0] - 1) > SUM_TOLERANCE
    if off.any() and not renormalize:
        i = int(np.argmax(off))
        raise BadInputError(f"{name}: {int(off.sum())} of {len(p)} rows do not sum to 1 within {SUM_TOLERANCE:g} "
                            f"(first: {where(i)} sums to {s[i, 0]:.6g}); pass --renormalize to rescale them, or fix the file")
    return p / s
