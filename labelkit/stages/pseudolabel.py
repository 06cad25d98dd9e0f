"""pseudolabel: a label, a calibrated confidence and a soft label for every unlabeled sample.

Samples that are labeled but whose label confident learning rejects (``clean_seeds``) are not
pseudo-labeled: their given label is in doubt, which is detect-noise's business.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from labelkit import artifacts
from labelkit import pseudolabel as compute
from labelkit.config import PseudolabelConfig
from labelkit.seeds import clean_seeds
from labelkit.stages import pipeline
from labelkit.stages._common import RunContext, StageResult, now, prepare_samples, stale_reason, up_to_date
from labelkit.stages._inputs import aligned, class_embeddings
from labelkit.stages._knn import knn_graph
from labelkit.stages.prototype import read_prototypes

STAGE = "pseudolabel"


def run(ctx: RunContext, cfg: PseudolabelConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws = ctx.ws
    samples, samples_fp = prepare_samples(ws, ctx.dcfg)
    samples.require_labels(STAGE)
    upstream = pipeline.ensure(ctx, "prototype")
    inputs = {
        artifacts.SAMPLES: samples_fp,
        artifacts.EMBEDDINGS: ws.fingerprint(artifacts.EMBEDDINGS) or "",
        artifacts.PROTOTYPES: ws.fingerprint(artifacts.PROTOTYPES) or "",
    }
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force)
    if reason is None:
        return up_to_date(ws, STAGE, artifacts.PSEUDOLABELS, upstream)
    summary = _label(ctx, cfg, samples)
    ws.commit(STAGE, params=cfg.result_params(), params_fp=cfg.fingerprint(), inputs=inputs, outputs=[artifacts.PSEUDOLABELS], started=started)
    summary["wall_time_s"] = round(now() - started, 2)
    return StageResult(STAGE, reason=reason, summary=summary, outputs=[artifacts.PSEUDOLABELS], upstream=upstream)


def _options(cfg: PseudolabelConfig) -> compute.PseudolabelOptions:
    return compute.PseudolabelOptions(
        method=cfg.method, n_neighbors=cfg.k, alpha=cfg.alpha, threshold=cfg.threshold_rule, threshold_value=cfg.threshold,
        top_k=cfg.top_k, sharpen=cfg.sharpen, n_folds=cfg.calibration_folds, prior_correction=cfg.prior_correction, seed=cfg.seed,
    )


def _label(ctx: RunContext, cfg: PseudolabelConfig, samples) -> dict[str, Any]:
    ws = ctx.ws
    a = aligned(ws, samples)
    graph = knn_graph(ws, a.vectors, k=cfg.k, progress=ctx.progress)
    protos = read_prototypes(ws, a.classes)
    text = class_embeddings(ws, a.classes)
    options = _options(cfg)
    labels, dropped = a.labels, np.zeros(len(a.labels), bool)
    with ctx.progress.task("pseudolabel", total=None):
        if cfg.clean_seeds:
            labels, dropped = clean_seeds(a.vectors, a.labels, len(a.classes), graph, protos, text_prototypes=text, options=options)
        r = compute.pseudolabel(a.vectors, labels, len(a.classes), graph, protos, text_prototypes=text, options=options)
    rows = np.flatnonzero(a.labels < 0)
    # Accept among the rows written (doubted seeds were scored as unlabeled but are not written).
    accepted = compute.accept(r.probs[rows], cfg.threshold_rule, cfg.threshold) if len(rows) else np.zeros(0, bool)
    names = np.asarray(a.classes, dtype=object)
    k = r.top_labels.shape[1]
    table = pa.table(
        {
            "id": pa.array([a.ids[i] for i in rows], pa.string()),
            "label": pa.array(names[r.label[rows]].tolist(), pa.string()),
            "confidence": pa.array(r.confidence[rows].astype(np.float32)),
            "margin": pa.array(r.margin[rows].astype(np.float32)),
            "accepted": pa.array(accepted),
            "top_labels": pa.array(names[r.top_labels[rows]].tolist(), pa.list_(pa.string(), k)),
            "top_probs": pa.FixedSizeListArray.from_arrays(pa.array(r.top_probs[rows].astype(np.float32).reshape(-1)), k),
        }
    )
    summary = {
        "n_unlabeled": int(len(rows)),
        "n_accepted": int(accepted.sum()),
        "coverage": round(float(accepted.mean()), 4) if len(rows) else None,
        "method": r.method,
        "threshold_rule": cfg.threshold_rule,
        "threshold": cfg.threshold,
        "temperature": round(float(r.temperature), 4),
        "ece": None if np.isnan(r.ece) else round(float(r.ece), 4),
        "ece_uncalibrated": None if np.isnan(r.ece_uncalibrated) else round(float(r.ece_uncalibrated), 4),
        "n_calibration": int(r.n_calibration),
        "n_seeds_dropped": int(dropped.sum()),
        "accepted_per_class": {c: int(n) for c, n in zip(a.classes, np.bincount(r.label[rows][accepted], minlength=len(a.classes)))},
        "confidence_histogram": np.histogram(r.confidence[rows], bins=10, range=(0.0, 1.0))[0].tolist(),
        "priors": [round(float(v), 4) for v in r.priors],
    }
    meta = {"classes": a.classes, "params": cfg.result_params(), "summary": summary, "model": a.meta.get("model")}
    artifacts.write_table(ws.path(artifacts.PSEUDOLABELS), table, meta)
    return summary
