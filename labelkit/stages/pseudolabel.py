"""pseudolabel: a label, a calibrated confidence and a soft label for every unlabeled sample.

Samples that are labeled but whose label confident learning rejects, with held-out odds of at
least ``clean_seeds_odds`` to 1 against it (``clean_seeds``), are not pseudo-labeled: their
given label is in doubt, which is detect-noise's business. When it rejects none, the final pass
reuses the seed-cleaning pass's held-out calibration (same labels, same folds) instead of
scoring the folds again. The summary's ``timings_s`` splits the wall time: kNN graph (read from
knn.parquet, or built), seed cleaning, scoring, acceptance (novelty and the threshold rule or
certificate), writing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from labelkit import artifacts, guarantee, health
from labelkit import pseudolabel as compute
from labelkit.config import PseudolabelConfig, budget_kwargs
from labelkit.errors import ThresholdExceededError
from labelkit.stages import _multilabel
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages._guarantee import guarantee_summary, uncertified_warning
from labelkit.stages._inputs import aligned, class_embeddings, read_prototypes
from labelkit.stages._knn import graph_info, knn_graph, recall_shortfall, recall_warnings
from labelkit.stages._runner import Job, Stage
from labelkit.stages._runner import run as run_stage
from labelkit.teacher import Clock, Teacher

STAGE = "pseudolabel"


def _check(job: Job) -> None:
    job.samples.require_labels(STAGE)


def _build(job: Job) -> dict[str, Any]:
    if _multilabel.is_multilabel(job.samples):  # issue 16: label sets, one-vs-rest
        return _multilabel.build_pseudolabels(job)
    ws, cfg, samples = job.ws, job.cfg, job.samples
    a = aligned(ws, samples)
    clock = Clock()
    budget = budget_kwargs(cfg.memory_budget)  # one reading of the free memory for the graph and novelty's search
    graph = knn_graph(ws, a.vectors, k=cfg.k, progress=job.progress, engine=cfg.engine, ray_address=cfg.ray_address,
                      **budget)
    clock.lap("knn_graph")
    protos = read_prototypes(ws, a.classes)
    text = class_embeddings(ws, a.classes)
    teacher = Teacher(pseudolabel=cfg).fit(a.vectors, a.labels, n_classes=len(a.classes), graph=graph, text=text, prototypes=protos,
                                           progress=job.progress)
    del graph
    clock.lap("teacher")  # split by the teacher itself: clean_seeds, score
    # Nothing below reads the (N, K) probabilities: let them go before novelty and the table (issue 17).
    r, dropped, timings = teacher.result_.without_probs(), teacher.seeds_dropped_, teacher.timings_
    del teacher
    # Written and accepted among: the unlabeled rows (doubted seeds were scored as unlabeled but are not written).
    rows = np.flatnonzero(a.labels < 0)
    # Open set and the error guarantee: novelty, then the threshold rule or the certified threshold (labelkit.guarantee).
    decided = guarantee.accept_pseudolabels(a.vectors, a.labels, len(a.classes), r, dropped, rows, reject_novel=cfg.reject_novel,
                                            novelty_rate=cfg.novelty_rate, max_error=cfg.max_error, error_confidence=cfg.error_confidence,
                                            progress=job.progress, **budget)
    clock.lap("accept")  # novelty scores (a kNN search to the labeled rows, under the same budget) and the threshold or certificate
    accepted = decided.accepted
    summary = _summary(a, cfg, r, rows, accepted, dropped)
    opened = _open_set_summary(cfg, decided, r.confidence[rows])
    summary.update(opened)
    summary["knn"] = graph_info(ws)  # the index used and why (a --memory-budget may have chosen the cells method or IVF-PQ)
    if decided.certificate is not None and not decided.certificate.certified:  # nothing accepted: say why, not "lower --threshold"
        summary["warnings"] = [w for w in summary["warnings"] if w["code"] != "none_accepted"] + [uncertified_warning(opened["guarantee"])]
    summary["warnings"] = input_warnings(samples, summary["warnings"] + recall_warnings(summary["knn"]) + _novelty_recall(opened["novelty"]))
    table = _table(a, r, rows, accepted, decided)
    del r
    meta = {"classes": a.classes, "params": cfg.result_params(), "summary": summary, "model": a.meta.get("model"),
            "novelty": opened["novelty"], **({"guarantee": opened["guarantee"]} if "guarantee" in opened else {})}
    artifacts.write_table(ws.path(artifacts.PSEUDOLABELS), table, meta)
    clock.lap("write")
    summary["timings_s"] = {"knn_graph": clock.laps["knn_graph"], **timings, "accept": clock.laps["accept"], "write": clock.laps["write"]}
    return summary


def _gate(job: Job, res: StageResult) -> None:
    """--max-error that the labels cannot certify: exit 3 (the CI code), skipped or not."""
    g = res.summary.get("guarantee")
    if isinstance(g, dict) and g.get("certified") is False:
        res.exit_code = ThresholdExceededError.exit_code
        res.message = g.get("message", "the error guarantee could not be certified")


SPEC = Stage(STAGE, PseudolabelConfig, _build, outputs=(artifacts.PSEUDOLABELS,), inputs=(artifacts.EMBEDDINGS, artifacts.PROTOTYPES), check=_check,
             after=_gate)


def run(ctx: RunContext, cfg: PseudolabelConfig, *, force: bool = False) -> StageResult:
    return run_stage(ctx, SPEC, cfg, force=force)


def _summary(a, cfg: PseudolabelConfig, r: compute.PseudolabelResult, rows: np.ndarray, accepted: np.ndarray, dropped: np.ndarray) -> dict[str, Any]:
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
    return summary




def _open_set_summary(cfg: PseudolabelConfig, decided: guarantee.Acceptance, confidence: np.ndarray) -> dict[str, Any]:
    """The summary's novelty, reason counts and (with --max-error) guarantee entries."""
    out: dict[str, Any] = {
        "n_novel": int(decided.novel.sum()),
        "novelty": {"threshold": round(float(decided.novelty_threshold), 6) if np.isfinite(decided.novelty_threshold) else None,
                    "reject_rate": cfg.novelty_rate, "reject": cfg.reject_novel, "n_reference": decided.n_reference,
                    "knn": decided.novelty_knn},  # its search of the labeled rows: method and why (the cells method or IVF-PQ under --memory-budget)
        "reasons": {k: int((decided.reason == k).sum()) for k in (guarantee.BELOW_THRESHOLD, guarantee.NOVEL, guarantee.UNCERTIFIED)},
    }
    c = decided.certificate
    if c is None:
        return out
    out.update(guarantee_summary(c, target=cfg.max_error, confidence=cfg.error_confidence, accepted=decided.accepted, scores=confidence))
    return out


def _novelty_recall(novelty: dict[str, Any]) -> list[dict[str, str]]:
    """A ``knn_recall`` warning when novelty's approximate search of the labeled rows stayed under its recall target."""
    info = novelty.get("knn") or {}
    tuned = recall_shortfall(info)
    if tuned is None:
        return []
    return [health.warning("knn_recall", f"novelty's {info['method']} search of the labeled rows reached recall@k {tuned['sample_recall']} on "
                           f"its tuning sample, under the target {tuned['target_recall']}: its kNN distances are approximate",
                           "raise --memory-budget (or 0 for none)")]


def _table(a, r: compute.PseudolabelResult, rows: np.ndarray, accepted: np.ndarray, decided: guarantee.Acceptance) -> pa.Table:
    """The pseudolabels.parquet rows; class names by Arrow ``take`` (no Python objects per row)."""
    names = pa.array(list(a.classes), pa.string())
    width = r.top_labels.shape[1]  # the soft label's top_k
    ids = a.ids if isinstance(a.ids, pa.Array) else pa.array(a.ids, pa.string())
    return pa.table(
        {
            "id": ids.take(pa.array(rows)),
            "label": names.take(pa.array(r.label[rows])),
            "confidence": pa.array(r.confidence[rows].astype(np.float32)),
            "margin": pa.array(r.margin[rows].astype(np.float32)),
            "accepted": pa.array(accepted),
            "top_labels": pa.FixedSizeListArray.from_arrays(names.take(pa.array(r.top_labels[rows].reshape(-1))), width),
            "top_probs": pa.FixedSizeListArray.from_arrays(pa.array(r.top_probs[rows].astype(np.float32).reshape(-1)), width),
            "novelty": pa.array(decided.novelty.astype(np.float32), from_pandas=True),  # NaN (nothing to calibrate on) -> null
            "reason": pa.array(decided.reason.tolist(), pa.string()),
        }
    )
