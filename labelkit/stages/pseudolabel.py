"""pseudolabel: a label, a calibrated confidence and a soft label for every unlabeled sample.

Samples that are labeled but whose label confident learning rejects, with held-out odds of at
least ``clean_seeds_odds`` to 1 against it (``clean_seeds``), are not pseudo-labeled: their
given label is in doubt, which is detect-noise's business. When it rejects none, the final pass
reuses the seed-cleaning pass's held-out calibration (same labels, same folds) instead of
scoring the folds again. The summary's ``timings_s`` splits the wall time: kNN graph (read from
knn.parquet, or built), seed cleaning, scoring, writing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from labelkit import artifacts, health
from labelkit._probability import topk_to_dense
from labelkit import pseudolabel as compute
from labelkit import seeds
from labelkit import thresholds
from labelkit.config import PseudolabelConfig
from labelkit.errors import BadInputError
from labelkit.stages import pipeline
from labelkit.stages._common import RunContext, StageResult, input_warnings, now, prepare_samples, stale_reason, up_to_date
from labelkit.stages._inputs import aligned, class_embeddings
from labelkit.stages._knn import knn_graph
from labelkit.stages.prototype import build_prototypes, read_prototypes

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
        method=cfg.method, n_neighbors=cfg.k, alpha=cfg.alpha, gamma=cfg.gamma, one_way_weight=cfg.one_way_weight,
        reach_prior=cfg.reach_prior, refine=cfg.refine, weights=cfg.weights, probe_weights=cfg.probe_weights, threshold=cfg.threshold_rule,
        threshold_value=cfg.threshold, top_k=cfg.top_k, sharpen=cfg.sharpen, n_folds=cfg.calibration_folds,
        calibration_samples=cfg.calibration_samples or None, prior_correction=cfg.prior_correction, seed=cfg.seed,
    )


def _label(ctx: RunContext, cfg: PseudolabelConfig, samples) -> dict[str, Any]:
    ws = ctx.ws
    a = aligned(ws, samples)
    clock = _Clock()
    graph = knn_graph(ws, a.vectors, k=cfg.k, progress=ctx.progress)
    clock.lap("knn_graph")
    protos = read_prototypes(ws, a.classes)
    text = class_embeddings(ws, a.classes)
    # Two steps, each one or more label propagations: checking the seeds, then scoring.
    with ctx.progress.task("pseudolabel", total=2) as task:
        r, dropped = teach(a.vectors, a.labels, len(a.classes), graph, protos, text, cfg, task=task, clock=clock)
        task.update(step="done")
    del graph
    rows = np.flatnonzero(a.labels < 0)
    # Accept among the rows written (doubted seeds were scored as unlabeled but are not written).
    accepted = thresholds.accept(r.probs[rows], cfg.threshold_rule, cfg.threshold) if len(rows) else np.zeros(0, bool)
    label = r.label[rows]
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
        "accepted_per_class": {c: int(n) for c, n in zip(a.classes, np.bincount(label[accepted], minlength=len(a.classes)))},
        "confidence_histogram": np.histogram(r.confidence[rows], bins=10, range=(0.0, 1.0))[0].tolist(),
        "priors": [round(float(v), 4) for v in r.priors],
        "ensemble_weights": {k: round(float(v), 4) for k, v in (r.weights or {}).items()},
    }
    n_labeled = int((a.labels >= 0).sum())
    summary["warnings"] = (
        health.one_class(len(np.unique(a.labels[a.labels >= 0])))
        + health.dropped(summary["n_seeds_dropped"], n_labeled, by="seed cleaning", option="--no-clean-seeds")
        + health.none_accepted(summary["n_accepted"], summary["n_unlabeled"])
    )
    summary["warnings"] = input_warnings(samples, summary["warnings"])
    table = _table(a, r, rows, accepted)
    del r
    meta = {"classes": a.classes, "params": cfg.result_params(), "summary": summary, "model": a.meta.get("model")}
    artifacts.write_table(ws.path(artifacts.PSEUDOLABELS), table, meta)
    clock.lap("write")
    summary["timings_s"] = clock.laps
    return summary


def teach(vectors, labels, n_classes: int, graph, protos, text, cfg: PseudolabelConfig, *, task=None, clock=None):
    """(PseudolabelResult, dropped seeds mask): seed cleaning, then the scoring pass.

    The stage's compute, also replayed by distill with some labels hidden (:class:`Relabeler`).
    """
    options = _options(cfg)
    dropped, cal = np.zeros(len(labels), bool), None
    if task is not None:
        task.update(step="clean seeds")
    if cfg.clean_seeds:
        labels, dropped, cal = seeds.clean_and_calibrate(vectors, labels, n_classes, graph, protos, text_prototypes=text,
                                                         options=options, odds=cfg.clean_seeds_odds)
    if clock is not None:
        clock.lap("clean_seeds")
    if task is not None:
        task.advance()
        task.update(step="score")
    # With every seed kept, the folds just scored are those the final pass would score again.
    reuse = cal if cal is not None and not dropped.any() else None
    r = compute.pseudolabel(vectors, labels, n_classes, graph, protos, text_prototypes=text, options=options, calibration=reuse)
    if clock is not None:
        clock.lap("score")
    if task is not None:
        task.advance()
    return r, dropped


@dataclass
class Relabeled:
    """Pseudo-labels recomputed with some labels hidden, for the rows that are unlabeled then."""

    ids: list[str]  # those rows' sample ids
    probs: np.ndarray  # (n, K) calibrated class probabilities
    soft: np.ndarray  # (n, K) the soft label (top-k, renormalised), as pseudolabels.parquet holds it
    confidence: np.ndarray  # (n,)
    accepted: np.ndarray  # (n,) bool, by the stage's threshold rule


def replay_configs(ws):
    """(PseudolabelConfig, PrototypeConfig) that made pseudolabels.parquet and prototypes.parquet,
    or why they cannot be replayed (a missing artifact, parameters this version cannot read)."""
    from pydantic import ValidationError

    from labelkit.config import PrototypeConfig

    made = []
    for name, cls in ((artifacts.PSEUDOLABELS, PseudolabelConfig), (artifacts.PROTOTYPES, PrototypeConfig)):
        path = ws.path(name)
        if not path.exists():
            return f"{name} is missing"
        params = artifacts.read_metadata(path).get("params")
        try:
            made.append(cls(**params))
        except (TypeError, ValidationError):
            return f"{name} does not record parameters this version of labelkit can replay"
    return made[0], made[1]


class Relabeler:
    """The prototype and pseudolabel stages, replayed in memory with some labels hidden.

    Both stages' recorded parameters are reused (from their artifacts' metadata); the embeddings,
    class-name embeddings and the cached kNN graph are read once, so each call costs the
    prototype recipe, the seed cleaning and the scoring passes. Distill calls it so that the
    labels it evaluates the student on never reached the student through its teacher's
    pseudo-labels.
    """

    def __init__(self, ws, samples) -> None:
        configs = replay_configs(ws)
        if isinstance(configs, str):
            raise BadInputError(f"cannot recompute the pseudo-labels: {configs}")
        self.cfg, self.proto_cfg = configs
        self.a = aligned(ws, samples)
        self.ids = self.a.ids.to_pylist() if isinstance(self.a.ids, pa.Array) else list(self.a.ids)
        self.text = class_embeddings(ws, self.a.classes)
        self.graph = knn_graph(ws, self.a.vectors, k=self.cfg.k)

    def __call__(self, hide_ids) -> Relabeled:
        """Pseudo-labels for the rows that are unlabeled once the labels of ``hide_ids`` are hidden."""
        a, cfg, k = self.a, self.cfg, len(self.a.classes)
        at = pd.Index(self.ids).get_indexer(list(hide_ids))
        labels = a.labels.copy()
        labels[at[at >= 0]] = -1
        protos = build_prototypes(a.vectors, labels, k, self.proto_cfg, self.text, model=a.meta.get("model")).protos
        r, _ = teach(a.vectors, labels, k, self.graph, protos, self.text, cfg)
        rows = np.flatnonzero(labels < 0)
        top = r.top_labels[rows]
        soft = topk_to_dense(rows.size, k, np.repeat(np.arange(rows.size), top.shape[1]), top.ravel(), r.top_probs[rows].ravel())
        accepted = thresholds.accept(r.probs[rows], cfg.threshold_rule, cfg.threshold) if rows.size else np.zeros(0, bool)
        return Relabeled([self.ids[i] for i in rows], r.probs[rows], soft, r.confidence[rows], accepted)


def _table(a, r: compute.PseudolabelResult, rows: np.ndarray, accepted: np.ndarray) -> pa.Table:
    """The pseudolabels.parquet rows; class names by Arrow ``take`` (no Python objects per row)."""
    names = pa.array(list(a.classes), pa.string())
    k = r.top_labels.shape[1]
    ids = a.ids if isinstance(a.ids, pa.Array) else pa.array(a.ids, pa.string())
    return pa.table(
        {
            "id": ids.take(pa.array(rows)),
            "label": names.take(pa.array(r.label[rows])),
            "confidence": pa.array(r.confidence[rows].astype(np.float32)),
            "margin": pa.array(r.margin[rows].astype(np.float32)),
            "accepted": pa.array(accepted),
            "top_labels": pa.FixedSizeListArray.from_arrays(names.take(pa.array(r.top_labels[rows].reshape(-1))), k),
            "top_probs": pa.FixedSizeListArray.from_arrays(pa.array(r.top_probs[rows].astype(np.float32).reshape(-1)), k),
        }
    )


class _Clock:
    """Wall time of each phase, in seconds."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now_ = time.perf_counter()
        self.laps[name] = round(now_ - self._last, 2)
        self._last = now_
