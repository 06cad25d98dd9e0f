"""detect-noise: rank the labeled samples by how likely their given label is wrong.

Out-of-sample probabilities (cross-validated softmax head, leave-one-out kNN vote, or the user's
own ``--pred-probs``) feed confident learning; embeddings add conflicting near-duplicates and
outliers; one label quality per sample combines the evidence (labelkit.evidence).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import artifacts, evidence, noise
from labelkit.config import DetectNoiseConfig
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.errors import BadInputError, ThresholdExceededError
from labelkit.stages import pipeline
from labelkit.stages._common import RunContext, StageResult, now, prepare_samples, stale_reason, up_to_date
from labelkit.stages._knn import knn_graph
from labelkit.workspace import atomic_write, file_fingerprint

STAGE = "detect-noise"
EXIT_THRESHOLD = ThresholdExceededError.exit_code


def run(ctx: RunContext, cfg: DetectNoiseConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws = ctx.ws
    with_file = cfg.pred_probs is not None
    samples, samples_fp = prepare_samples(ws, ctx.dcfg, require_inputs=not with_file)
    samples.require_labels(STAGE)
    if samples.n_labeled == 0:
        raise BadInputError(f"{STAGE} needs labeled samples: none of the {len(samples.table)} samples has a label")
    upstream = [] if with_file else pipeline.ensure(ctx, "embed")
    inputs = {artifacts.SAMPLES: samples_fp}
    if with_file:
        inputs["pred_probs"] = file_fingerprint(_existing(cfg.pred_probs))
    else:
        inputs[artifacts.EMBEDDINGS] = ws.fingerprint(artifacts.EMBEDDINGS) or ""
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force)
    if reason is None:
        res = up_to_date(ws, STAGE, artifacts.LABEL_ISSUES, upstream)
    else:
        summary = _detect(ctx, cfg, samples)
        ws.commit(STAGE, params=cfg.result_params(), params_fp=cfg.fingerprint(), inputs=inputs, outputs=[artifacts.LABEL_ISSUES], started=started)
        summary["wall_time_s"] = round(now() - started, 2)
        res = StageResult(STAGE, reason=reason, summary=summary, outputs=[artifacts.LABEL_ISSUES], upstream=upstream)
    _apply_gates(ctx, cfg, samples, res)
    return res


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"--pred-probs {path}: no such file")
    return p


# -- probabilities --------------------------------------------------------------------------


def load_pred_probs(path: Path, samples: Samples) -> np.ndarray:
    """(N, K) probabilities in samples order from .npy (rows = samples or labeled samples) or .parquet."""
    k, n = len(samples.classes), len(samples.table)
    labeled = samples.table["label"].notna().to_numpy()
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"--pred-probs {path.name}: cannot read ({e})") from None
        if arr.ndim != 2 or arr.shape[1] != k:
            raise BadInputError(f"--pred-probs {path.name}: expected shape (n, {k}) with columns in sorted class order {samples.classes[:5]}; got {arr.shape}")
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
        except (OSError, pa.ArrowInvalid) as e:
            raise BadInputError(f"--pred-probs {path.name}: cannot read ({e})") from None
        missing = [c for c in ["id", *samples.classes] if c not in df.columns]
        if missing:
            raise BadInputError(f"--pred-probs {path.name}: missing column '{missing[0]}' (needs 'id' and one column per class)")
        df = df.set_index(df["id"].astype(str))
        lab_ids = samples.table["id"][labeled]
        absent = lab_ids[~lab_ids.isin(df.index)]
        if len(absent):
            raise BadInputError(f"--pred-probs {path.name}: no row for labeled id '{absent.iloc[0]}'")
        out = df.reindex(samples.table["id"])[samples.classes].to_numpy(dtype=np.float64)
        return out
    raise BadInputError(f"--pred-probs {path.name}: use a .npy or .parquet file")


def _normalise_rows(p: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(p)):
        raise BadInputError(f"{name}: probabilities contain NaN or infinite values for labeled samples")
    if p.min() < -1e-6:
        raise BadInputError(f"{name}: probabilities must be >= 0")
    # Published probability files are often off by rounding (e.g. IMDB's 1.00001): clip, renormalise.
    p = np.clip(p, 0, None)
    s = p.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise BadInputError(f"{name}: a row of probabilities sums to 0")
    return p / s


def _model_probs(ctx: RunContext, cfg: DetectNoiseConfig, labels: np.ndarray, vecs: np.ndarray, k_classes: int) -> tuple[np.ndarray, str]:
    method = "crossval" if cfg.probs == "auto" else cfg.probs
    if method == "crossval":
        from labelkit.probe import cross_val_probs

        n_lab = len(labels)
        folds = max(2, min(cfg.folds, n_lab))
        probs = cross_val_probs(vecs, labels, k_classes, n_folds=folds, seed=cfg.seed, device=resolve_device(cfg.device), progress=ctx.progress)
        return probs, method
    from labelkit import knn

    sims, idx = knn.knn_graph(vecs, min(cfg.k, len(vecs) - 1), exclude_self=True)
    return evidence.knn_vote_probs(labels, sims, idx, k_classes), method


# -- the stage's work -----------------------------------------------------------------------


def _detect(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples) -> dict[str, Any]:
    ws = ctx.ws
    classes = samples.classes
    codes = samples.label_codes()
    table = samples.table
    dup = out = None
    if cfg.pred_probs is not None:
        probs_all = load_pred_probs(Path(cfg.pred_probs), samples)
        rows = np.flatnonzero(codes >= 0)
        probs = _normalise_rows(probs_all[rows], f"--pred-probs {Path(cfg.pred_probs).name}")
        prob_source = "pred_probs"
    else:
        from labelkit.stages.embed import read_embeddings

        emb_ids, vecs, _ = read_embeddings(ws)
        pos = pd.Index(emb_ids).get_indexer(table["id"])  # -1: no embedding (unreadable input)
        rows = np.flatnonzero((codes >= 0) & (pos >= 0))
        if len(rows) < 2:
            raise BadInputError(f"{STAGE} needs at least 2 labeled samples with embeddings; found {len(rows)}")
        lab_vecs = vecs[pos[rows]]
        probs, prob_source = _model_probs(ctx, cfg, codes[rows], lab_vecs, len(classes))
        # Evidence from embeddings alone: duplicates among labeled samples, outliers among all.
        from labelkit import knn

        ls, li = knn.knn_graph(lab_vecs, min(cfg.k, len(rows) - 1), exclude_self=True)
        dup = evidence.find_conflicting_duplicates(codes[rows], ls, li, threshold=cfg.duplicate_threshold)
        fs, fi = knn_graph(ws, vecs, k=cfg.k, progress=ctx.progress)
        full = evidence.find_outliers(fs, fi, cut=cfg.outlier_cut)
        out = type(full)(*(field[pos[rows]] for field in full))
    labels = codes[rows]
    cl = noise.detect_label_issues(labels, probs, method=cfg.filter_by, score_method=cfg.rank_by)
    est = noise.estimate_noise_matrices(labels, probs)
    joint = noise.estimate_joint(labels, probs)
    q = evidence.combine_evidence(labels, probs=probs, label_issues=cl.is_issue, duplicates=dup, outliers=out)
    order = np.argsort(q.rank, kind="stable")
    names = np.asarray(classes, dtype=object)
    issues = pd.DataFrame(
        {
            "id": table["id"].to_numpy()[rows][order],
            "given_label": names[labels][order],
            "suggested_label": names[q.suggested_label][order],
            "label_quality": q.label_quality[order].astype(np.float32),
            "is_issue": q.is_issue[order],
            "issue_type": q.issue_type[order],
            "rank": q.rank[order].astype(np.int64),
        }
    )
    summary = _summary(issues, joint, classes, cfg, prob_source, n_labeled=int((codes >= 0).sum()), n_analysed=len(rows))
    meta = {
        "classes": classes, "params": cfg.result_params(), "probs": prob_source, "summary": summary,
        "noise_matrix": est.noise_matrix.tolist(), "joint": joint.tolist(), "py": est.py.tolist(),
    }
    schema = pa.schema([("id", pa.string()), ("given_label", pa.string()), ("suggested_label", pa.string()), ("label_quality", pa.float32()),
                        ("is_issue", pa.bool_()), ("issue_type", pa.string()), ("rank", pa.int64())])
    artifacts.write_table(ws.path(artifacts.LABEL_ISSUES), pa.Table.from_pandas(issues, schema=schema, preserve_index=False), meta)
    return summary


def _summary(issues: pd.DataFrame, joint: np.ndarray, classes: list[str], cfg, prob_source: str, *, n_labeled: int, n_analysed: int) -> dict[str, Any]:
    flagged = issues[issues["is_issue"]]
    by_type = flagged["issue_type"].value_counts().to_dict()
    by_class = flagged.groupby("given_label").size().sort_values(ascending=False).to_dict()
    off = joint.copy()
    np.fill_diagonal(off, 0)
    pairs = []
    for flat in np.argsort(off, axis=None)[::-1][:5]:
        i, j = divmod(int(flat), len(classes))
        if off[i, j] <= 0:
            break
        pairs.append({"given": classes[i], "true": classes[j], "joint": round(float(off[i, j]), 4)})
    top = flagged.head(cfg.top)
    return {
        "n_labeled": n_labeled,
        "n_analysed": n_analysed,
        "n_issues": int(len(flagged)),
        "issue_rate": round(len(flagged) / max(n_analysed, 1), 4),
        "estimated_noise_rate": round(float(1 - np.trace(joint)), 4),
        "issues_by_type": {str(k): int(v) for k, v in by_type.items()},
        "issues_by_class": {str(k): int(v) for k, v in by_class.items()},
        "confused_pairs": pairs,
        "top_issues": [
            {"rank": int(r.rank), "id": r.id, "given": r.given_label, "suggested": r.suggested_label, "quality": round(float(r.label_quality), 4), "type": r.issue_type}
            for r in top.itertuples()
        ],
        "probs": prob_source,
        "filter_by": cfg.filter_by,
    }


def _apply_gates(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples, res: StageResult) -> None:
    """--export-review writes the review queue; --fail-above sets the CI exit code."""
    if cfg.export_review:
        issues = pq.read_table(ctx.ws.path(artifacts.LABEL_ISSUES)).to_pandas()
        queue = issues[issues["is_issue"]].merge(samples.table[["id", "source"]], on="id", how="left")
        buf = io.StringIO()
        queue[["rank", "id", "source", "given_label", "suggested_label", "label_quality", "issue_type"]].to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
        with atomic_write(Path(cfg.export_review), "w") as f:
            f.write(buf.getvalue())
        res.summary["review_file"] = str(cfg.export_review)
        res.summary["review_rows"] = int(len(queue))
    if cfg.fail_above is not None:
        rate = res.summary.get("issue_rate", 0.0)
        if rate > cfg.fail_above:
            res.exit_code = EXIT_THRESHOLD
            res.message = f"label-issue rate {rate:.2%} is above --fail-above {cfg.fail_above:.2%}"
