"""The multi-label branch of the distill and predict stages: a sigmoid student and label-set predictions (issue 16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from labelkit import artifacts
from labelkit import multilabel as ml
from labelkit.stages._common import input_warnings
from labelkit.stages._multilabel import TASK, _aligned, _check_labeled, _names, _strings

# ----------------------------------------------------------------------------- distill


def _list_column(table, name: str) -> list:
    return table.column(name).to_pylist()


def build_student(ctx, cfg, samples, write_student) -> dict[str, Any]:
    """student/ for a multi-label task: a sigmoid head trained by BCE on the trusted label sets and
    the pseudo-labels' per-class probabilities; per-class thresholds saved in config.json.

    ``write_student(dest, model, config, metrics, dynamics, onnx_shape)`` is the distill stage's
    atomic folder writer.
    """
    import time

    from labelkit import __version__
    from labelkit.distill.multilabel import distil_multilabel

    ws = ctx.ws
    ids, vecs, y, classes, meta, n_missing = _aligned(ws, samples)
    _check_labeled("distill", y, len(ids))
    index = {c: i for i, c in enumerate(classes)}
    row_of = {i: r for r, i in enumerate(ids)}
    trust = np.ones(y.shape, dtype=np.float32)
    n_doubted = 0
    if not cfg.keep_issues:  # the labels detect-noise doubts get no weight
        t = artifacts.read_table(ws.path(artifacts.LABEL_ISSUES))
        for i, add, rem in zip(_list_column(t, "id"), _list_column(t, "labels_to_add"), _list_column(t, "labels_to_remove")):
            r = row_of.get(i)
            for c in (add or []) + (rem or []):
                if r is not None and c in index:
                    trust[r, index[c]] = 0.0
                    n_doubted += 1
    pseudo = np.zeros(y.shape, dtype=np.float32)
    weight = np.zeros(len(ids), dtype=np.float32)
    if cfg.use_pseudolabels:
        t = artifacts.read_table(ws.path(artifacts.PSEUDOLABELS))
        for i, p, ok in zip(_list_column(t, "id"), _list_column(t, "label_probs"), _list_column(t, "accepted")):
            r = row_of.get(i)
            if r is not None and y[r, 0] < 0 and (ok or cfg.pseudolabels == "all"):
                pseudo[r] = p
                weight[r] = 1.0
    fit = distil_multilabel(vecs, y, trust, pseudo, weight, val_fraction=max(cfg.val_fraction, 0.1), seed=0,
                            architecture=cfg.student, hidden=cfg.hidden, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    summary = {
        "task": TASK, "student": cfg.student, "n_classes": len(classes),
        "n_trusted": int((y[:, 0] >= 0).sum()), "n_labels_doubted": n_doubted, "n_pseudo": int((weight > 0).sum()),
        "n_not_embedded": n_missing, **{k: v for k, v in fit.metrics.items() if k != "val_per_class_f1"},
        "thresholds": {c: round(float(v), 4) for c, v in zip(classes, fit.thresholds)},
        "model_dir": str(ws.path("student")), "onnx": cfg.onnx,
    }
    summary["warnings"] = input_warnings(samples, [])
    embedder = {k: meta.get(k) for k in ("model", "dim", "preprocessing", "normalized")}
    embedder["params"] = meta.get("params", {})
    config = {
        "format": "labelkit-student", "format_version": 1, "labelkit_version": __version__, "task": TASK,
        "architecture": cfg.student, "student_config": fit.student_config, "classes": classes,
        "thresholds": [float(v) for v in fit.thresholds],
        "input": {"kind": "embedding", "dim": int(vecs.shape[1]), "normalized": "l2"}, "embedder": embedder,
        "train_params": cfg.result_params(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    metrics = {**fit.metrics, "per_class": dict(zip(classes, fit.metrics["val_per_class_f1"])), "summary": summary}
    dyn = pd.DataFrame({"id": pd.Series([], dtype=str), "label": pd.Series([], dtype=str),
                        **{c: pd.Series([], dtype=np.float32) for c in ("confidence", "variability", "correctness")},
                        "is_pseudo": pd.Series([], dtype=bool), "set_aside": pd.Series([], dtype=bool),
                        "view_confidence": pd.Series([], dtype=np.float32)})
    write_student(ws.path("student"), fit.model, config, metrics, dyn, (vecs.shape[1],) if cfg.onnx else None)
    return summary


# ----------------------------------------------------------------------------- predict


PREDICTIONS_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float32()),
                                ("labels", pa.list_(pa.string())), ("label_probs", pa.list_(pa.float32()))])


def write_predictions(ctx, cfg, found, student, x, rows: np.ndarray, skipped: dict[str, str]) -> dict[str, Any]:
    """predictions.parquet of a multi-label student: label sets at its saved per-class thresholds."""
    from pathlib import Path

    from labelkit.distill.multilabel import predict_multilabel_proba

    classes = list(student["classes"])
    thresholds = np.asarray(student["config"]["thresholds"], dtype=np.float64)
    probs = predict_multilabel_proba(student["model"], x) if len(rows) else np.zeros((0, len(classes)), np.float32)
    sets = ml.label_sets(probs, thresholds)
    names = np.asarray(classes, dtype=object)
    best = probs.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    ids = found.samples.table["id"].to_numpy()[rows].astype(str)
    table = pa.table({
        "id": pa.array(ids.tolist(), pa.string()),
        "label": pa.array(names[best].tolist(), pa.string()),
        "confidence": pa.array(probs.max(axis=1) if len(rows) else np.zeros(0), pa.float32()),
        "labels": _strings([_names(m, names) for m in sets]),
        "label_probs": pa.array([p.tolist() for p in probs.astype(np.float32)], pa.list_(pa.float32())),
    }, schema=PREDICTIONS_SCHEMA)
    meta = {"model_dir": str(Path(student["dir"]).resolve()), "classes": classes, "task": TASK, "thresholds": thresholds.tolist(),
            "embedder": student["config"]["embedder"].get("model"), "architecture": student["config"].get("architecture"),
            "params": cfg.result_params(), "skipped": sorted(skipped)}
    artifacts.write_table(ctx.ws.path(artifacts.PREDICTIONS), table, meta)
    return {
        "task": TASK, "model_dir": str(student["dir"]), "input": found.origin, "predictions": str(ctx.ws.path(artifacts.PREDICTIONS)),
        "student": student["config"].get("architecture"), "embedder": student["config"]["embedder"].get("model"),
        "n_predicted": int(len(rows)), "n_skipped": len(skipped), "skipped_ids": sorted(skipped)[:20],
        "skip_errors": {i: skipped[i] for i in sorted(skipped)[:20]},
        "mean_labels_per_sample": round(float(sets.sum(axis=1).mean()), 4) if len(rows) else None,
        "class_counts": {c: int(sets[:, i].sum()) for i, c in enumerate(classes)},
    }
