"""The multi-label branch of the prototype, pseudolabel and detect-noise stages (issue 16).

Each stage's ``_build`` hands a multi-label dataset (``samples.task == "multi-label"``) to the
function here: read the embeddings and the label sets aligned with them, one call into
:mod:`labelkit.multilabel`, write the artifact atomically with ``task: multi-label`` in its
metadata (columns in docs/artifacts.md, "Multi-label data"). ``job`` is the runner's Job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from labelkit import artifacts
from labelkit import multilabel as ml
from labelkit.errors import BadInputError
from labelkit.guarantee import BELOW_THRESHOLD, UNCERTIFIED
from labelkit.stages._common import input_warnings
from labelkit.stages._guarantee import guarantee_summary, uncertified_warning
from labelkit.stages._inputs import read_embeddings

TASK = "multi-label"


def is_multilabel(samples) -> bool:
    return samples is not None and getattr(samples, "task", "multi-class") == TASK


def _aligned(ws, samples) -> tuple[list[str], np.ndarray, np.ndarray, list[str], dict, int]:
    """(ids, vectors, (N, K) label matrix with -1 rows, classes, embeddings metadata, samples not embedded)."""
    ids, vecs, meta = read_embeddings(ws)
    y_all = samples.label_matrix()
    pos = pd.Index(samples.table["id"]).get_indexer(ids)
    y = np.where((pos >= 0)[:, None], y_all[np.maximum(pos, 0)], -1).astype(np.int8)
    n_missing = int(len(samples.table) - (pos >= 0).sum())
    return list(ids), vecs, y, list(samples.classes), meta, n_missing


def _strings(sets) -> pa.Array:
    return pa.array(sets, pa.list_(pa.string()))


def _names(mask_row: np.ndarray, names: np.ndarray) -> list[str]:
    return names[np.flatnonzero(mask_row)].tolist()


def _labeled_count(y: np.ndarray) -> int:
    return int((y[:, 0] >= 0).sum()) if y.shape[1] else 0


def _check_labeled(stage: str, y: np.ndarray, n_samples: int) -> None:
    if _labeled_count(y) == 0:
        raise BadInputError(f"{stage} needs labeled samples: none of the {n_samples} embedded samples has a label set")


# ----------------------------------------------------------------------------- prototype


def build_prototypes(job) -> dict[str, Any]:
    """prototypes.parquet: one visual prototype per class, from every sample carrying it."""
    ws, cfg, samples = job.ws, job.cfg, job.samples
    ids, vecs, y, classes, meta, n_missing = _aligned(ws, samples)
    _check_labeled("prototype", y, len(ids))
    protos, support = ml.class_prototypes(vecs, y)
    keep = np.flatnonzero(support > 0)  # a class nobody carries has no visual prototype
    dim = protos.shape[1]
    summary = {
        "task": TASK,
        "n_prototypes": int(keep.size),
        "n_classes": len(classes),
        "kinds": {"visual": int(keep.size)},
        "n_not_embedded": n_missing,
        "per_class": [{"class": c, "prototypes": int(support[i] > 0), "support": int(support[i])} for i, c in enumerate(classes)],
        "classes_without_samples": [classes[i] for i in np.flatnonzero(support == 0)],
    }
    summary["warnings"] = input_warnings(samples, [])
    table = pa.table({
        "class": pa.array([classes[i] for i in keep], pa.string()),
        "prototype": pa.array(np.zeros(keep.size, dtype=np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(protos[keep].reshape(-1)), dim),
        "support": pa.array(support[keep]),
        "kind": pa.array(["visual"] * keep.size, pa.string()),
    })
    artifacts.write_table(ws.path(artifacts.PROTOTYPES), table,
                          {"classes": classes, "task": TASK, "params": cfg.result_params(), "summary": summary})
    return summary


# ----------------------------------------------------------------------------- pseudolabel


def build_pseudolabels(job) -> dict[str, Any]:
    """pseudolabels.parquet for the unlabeled samples: a label set and per-class probabilities."""
    ws, cfg, samples = job.ws, job.cfg, job.samples
    ids, vecs, y, classes, meta, n_missing = _aligned(ws, samples)
    _check_labeled("pseudolabel", y, len(ids))
    if _labeled_count(y) < 5:
        raise BadInputError(f"pseudolabel on multi-label data needs at least 5 labeled samples for its held-out folds. Got {_labeled_count(y)} instead.")
    target, guaranteed = cfg.target_precision, cfg.max_error is not None
    if guaranteed and target is not None:
        raise BadInputError("--max-error and --target-precision on multi-label data: choose one (--max-error certifies the "
                            "label sets cut at the expected-F1 peak, whose cut reads no label; --target-precision's cut reads "
                            "the held-out labels the certificate is made on)")
    # The labels one-vs-rest confident learning doubts get no weight in the heads (and count as
    # corrected when the thresholds are chosen): benchmarks/multilabel.py measures this default.
    issues, _, c = ml.multilabel_label_issues(vecs, y, seed=0)
    doubted = issues.to_add | issues.to_remove
    # --max-error: each unlabeled row scored by one fold's heads, as a held-out row (labelkit.guarantee).
    r = ml.multilabel_pseudolabels(vecs, y, trust=np.where(doubted, 0.0, 1.0), target_precision=target, seed=0, C=c,
                                   unlabeled_by_fold=guaranteed)
    rows = np.flatnonzero(y[:, 0] < 0)
    names = np.asarray(classes, dtype=object)
    probs = r.probs[rows]
    best = probs.argmax(axis=1) if len(classes) else np.zeros(len(rows), dtype=np.int64)
    sets = [_names(m, names) for m in r.label_sets[rows]]
    if guaranteed:
        accepted, reason, set_conf, cert = ml.certify_label_sets(y, r, rows, max_error=cfg.max_error, error_confidence=cfg.error_confidence)
    else:
        accepted, set_conf, cert = r.accepted[rows], ml.set_confidence(probs, r.label_sets[rows]), None
        reason = np.where(accepted, None, "below_target_precision")
    t = r.thresholds
    summary = {
        "task": TASK,
        "n_unlabeled": int(len(rows)),
        "n_accepted": int(accepted.sum()),
        "coverage": round(float(accepted.mean()), 4) if len(rows) else None,
        "n_not_embedded": n_missing,
        "method": "one-vs-rest logistic heads, doubted labels unweighted",
        "C": r.C,
        "target_precision": target,
        "n_labels_doubted": int(doubted.sum()),
        "mean_labels_per_sample": round(float(r.label_sets[rows].sum(axis=1).mean()), 4) if len(rows) else None,
        "n_empty_label_sets": int((r.label_sets[rows].sum(axis=1) == 0).sum()),
        "per_class": [
            {"class": c, "threshold": round(float(t.value[i]), 4),
             "held_out_precision": None if np.isnan(t.precision[i]) else round(float(t.precision[i]), 4),
             "held_out_recall": None if np.isnan(t.recall[i]) else round(float(t.recall[i]), 4),
             "target_reached": bool(t.reached[i]), "n_pseudolabeled": int(r.label_sets[rows, i].sum())}
            for i, c in enumerate(classes)
        ],
    }
    warnings = []
    if target is not None and not t.reached.all():
        missed = [classes[i] for i in np.flatnonzero(~t.reached)]
        warnings.append({"code": "target_precision_not_reached",
                         "message": f"{len(missed)} class{'es' if len(missed) != 1 else ''} never reach the target precision {target} on held-out samples ({', '.join(missed[:5])})",
                         "hint": "samples whose set contains them are not accepted; label more samples of these classes or lower --target-precision"})
    if cert is not None:
        summary["reasons"] = {k: int((reason == k).sum()) for k in (BELOW_THRESHOLD, UNCERTIFIED)}
        summary.update(guarantee_summary(cert, target=cfg.max_error, confidence=cfg.error_confidence, accepted=accepted, scores=set_conf))
        if not cert.certified:
            warnings.append(uncertified_warning(summary["guarantee"]))
    summary["warnings"] = input_warnings(samples, warnings)
    k = len(classes)
    table = pa.table({
        "id": pa.array([ids[i] for i in rows], pa.string()),
        "label": pa.array(names[best].tolist() if k else [None] * len(rows), pa.string()),
        "confidence": pa.array(probs.max(axis=1) if k else np.zeros(len(rows)), pa.float32()),
        "labels": _strings(sets),
        "label_probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1).astype(np.float32)), max(k, 1)) if k else pa.array([[]] * len(rows), pa.list_(pa.float32())),
        "set_confidence": pa.array(set_conf.astype(np.float32)),
        "accepted": pa.array(accepted),
        "reason": pa.array(reason.tolist(), pa.string()),
    })
    meta_out = {"classes": classes, "task": TASK, "thresholds": [float(v) for v in t.value],
                "params": cfg.result_params(), "summary": summary, "model": meta.get("model"),
                **({"guarantee": summary["guarantee"]} if cert is not None else {})}
    artifacts.write_table(ws.path(artifacts.PSEUDOLABELS), table, meta_out)
    return summary


# ----------------------------------------------------------------------------- detect-noise


def build_label_issues(job) -> dict[str, Any]:
    """label_issues.parquet for the labeled samples: labels to add and to remove, pooled quality."""
    ws, cfg, samples = job.ws, job.cfg, job.samples
    if getattr(cfg, "pred_probs", None) is not None:
        raise BadInputError("detect-noise --pred-probs on multi-label data is not supported yet: drop --pred-probs "
                            "and labelkit computes held-out per-class probabilities from the embeddings")
    ids, vecs, y, classes, meta, n_missing = _aligned(ws, samples)
    _check_labeled("detect-noise", y, len(ids))
    if _labeled_count(y) < 5:
        raise BadInputError(f"detect-noise on multi-label data needs at least 5 labeled samples for its held-out folds. Got {_labeled_count(y)} instead.")
    issues, probs, c = ml.multilabel_label_issues(vecs, y, seed=0)
    rows = np.flatnonzero(y[:, 0] >= 0)
    names = np.asarray(classes, dtype=object)
    given = y[rows] == 1
    add, remove = issues.to_add[rows], issues.to_remove[rows]
    suggested = (given | add) & ~remove
    quality = issues.label_quality[rows]
    rank = np.empty(len(rows), dtype=np.int64)
    rank[np.argsort(quality, kind="stable")] = np.arange(1, len(rows) + 1)
    is_issue = issues.is_issue[rows]
    joined = lambda m: "|".join(_names(m, names))  # noqa: E731
    table = pa.table({
        "id": pa.array([ids[i] for i in rows], pa.string()),
        "given_label": pa.array([joined(m) for m in given], pa.string()),
        "suggested_label": pa.array([joined(m) for m in suggested], pa.string()),
        "given_labels": _strings([_names(m, names) for m in given]),
        "suggested_labels": _strings([_names(m, names) for m in suggested]),
        "labels_to_add": _strings([_names(m, names) for m in add]),
        "labels_to_remove": _strings([_names(m, names) for m in remove]),
        "label_quality": pa.array(quality, pa.float64()),
        "is_issue": pa.array(is_issue),
        "issue_type": pa.array(["label" if v else None for v in is_issue], pa.string()),
        "rank": pa.array(rank),
    })
    summary = {
        "task": TASK,
        "n_labeled": int(len(rows)),
        "n_analysed": int(len(rows)),
        "n_not_embedded": n_missing,
        "n_issues": int(is_issue.sum()),
        "issue_rate": round(float(is_issue.mean()), 4) if len(rows) else 0.0,
        "n_labels_to_add": int(add.sum()),
        "n_labels_to_remove": int(remove.sum()),
        "method": f"one-vs-rest confident learning ({ml_default_method()}), pooled label quality",
        "C": c,
        "per_class": [{"class": cl, "given": int(given[:, i].sum()), "to_add": int(add[:, i].sum()), "to_remove": int(remove[:, i].sum())}
                      for i, cl in enumerate(classes)],
    }
    summary["warnings"] = input_warnings(samples, [])
    artifacts.write_table(ws.path(artifacts.LABEL_ISSUES), table,
                          {"classes": classes, "task": TASK, "params": cfg.result_params(), "summary": summary})
    return summary


def ml_default_method() -> str:
    from labelkit.multilabel_noise import DEFAULT_METHOD

    return DEFAULT_METHOD.value
