"""prototype: class prototypes from the labeled embeddings (and class names), refined with unlabeled ones."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from labelkit import artifacts, health, prototypes
from labelkit.config import PrototypeConfig
from labelkit.errors import BadInputError
from labelkit.stages import pipeline
from labelkit.stages._common import RunContext, StageResult, input_warnings, now, prepare_samples, stale_reason, up_to_date
from labelkit.stages._inputs import aligned, class_embeddings

STAGE = "prototype"


def run(ctx: RunContext, cfg: PrototypeConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws = ctx.ws
    samples, samples_fp = prepare_samples(ws, ctx.dcfg)
    samples.require_labels(STAGE)
    upstream = pipeline.ensure(ctx, "embed")
    inputs = {artifacts.SAMPLES: samples_fp, artifacts.EMBEDDINGS: ws.fingerprint(artifacts.EMBEDDINGS) or ""}
    if ws.path(artifacts.CLASS_EMBEDDINGS).exists():
        inputs[artifacts.CLASS_EMBEDDINGS] = ws.fingerprint(artifacts.CLASS_EMBEDDINGS) or ""
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force)
    if reason is None:
        return up_to_date(ws, STAGE, artifacts.PROTOTYPES, upstream)
    summary = _build(ctx, cfg, samples)
    ws.commit(STAGE, params=cfg.result_params(), params_fp=cfg.fingerprint(), inputs=inputs, outputs=[artifacts.PROTOTYPES], started=started)
    summary["wall_time_s"] = round(now() - started, 2)
    return StageResult(STAGE, reason=reason, summary=summary, outputs=[artifacts.PROTOTYPES], upstream=upstream)


def _build(ctx: RunContext, cfg: PrototypeConfig, samples) -> dict[str, Any]:
    ws = ctx.ws
    a = aligned(ws, samples)
    text = class_embeddings(ws, a.classes)
    b = build_prototypes(a.vectors, a.labels, len(a.classes), cfg, text, model=a.meta.get("model"))
    spread = prototypes.class_spread(a.vectors, a.labels, b.protos)
    pairs = prototypes.confusable_pairs(b.protos, top=5)
    summary = _summary(b.protos, a.classes, spread, pairs, b.n_dropped, b.n_iter, text is not None)
    n_labeled = int((a.labels >= 0).sum())
    summary["n_doubted_unclean"] = b.n_doubted
    summary["clean_stood_down"] = b.n_doubted > b.n_dropped
    # Standing down is reported in the summary, not warned about: with ~10 labels a class the
    # check doubts half of them on every real set (its k=10 neighbours span other classes), while
    # the pseudo-labels there beat scikit-learn's (docs/performance.md).
    summary["warnings"] = health.one_class(len(np.unique(a.labels[a.labels >= 0]))) + health.dropped(
        b.n_dropped, n_labeled, by="prototype cleaning", option="--no-clean")
    summary["warnings"] = input_warnings(samples, summary["warnings"])
    _write(ws, b.protos, a.classes, cfg, summary)
    return summary


class Built(NamedTuple):
    protos: prototypes.Prototypes
    n_dropped: int  # labeled samples the clean check left out
    n_iter: int  # refinement iterations
    n_doubted: int  # labeled samples the clean check doubted (= n_dropped unless it stood down)


def build_prototypes(vectors: np.ndarray, labels: np.ndarray, k_classes: int, cfg: PrototypeConfig, text: np.ndarray | None,
                     *, model: str | None = None) -> Built:
    """Prototypes from ``labels`` (-1 = unlabeled), cleaned and refined as the stage does.

    The stage's whole recipe, also replayed by distill with some labels hidden.
    """
    labeled = labels >= 0
    kept, n_doubted = labels, 0
    if labeled.any() and cfg.clean and labeled.sum() > 2:
        keep = prototypes.select_clean(vectors, labels, k=cfg.k, min_agreement=cfg.min_agreement)
        n_doubted = int((labeled & ~keep).sum())
        # Past max_drop the disagreement is the embedding's, not the labels' (CIFAR-10 photos with 10
        # labels a class: 71 of 100 labels "unclean" under EfficientNet-Lite0): keep every label.
        if n_doubted <= cfg.max_drop * labeled.sum():
            kept = np.where(keep, labels, -1)
    protos, n_iter = _finish(vectors, kept, labels < 0, k_classes, cfg, text, model=model)
    return Built(protos, int((labeled & (kept < 0)).sum()), n_iter, n_doubted)


def _finish(vectors, kept, unlabeled_rows, k_classes, cfg, text, *, model=None) -> tuple[prototypes.Prototypes, int]:
    """Prototypes from the ``kept`` labels (or class names alone), refined on the unlabeled rows."""
    if (kept >= 0).any():
        protos = prototypes.class_prototypes(vectors, kept, k_classes, n_per_class=cfg.n_per_class, seed=cfg.seed)
        if text is not None and cfg.text_weight > 0:
            protos = prototypes.fuse_text(protos, text, weight=cfg.text_weight)
    elif text is not None:
        protos = prototypes.text_prototypes(text)  # zero-shot: class names only
    else:
        raise BadInputError(
            f"{STAGE}: no sample is labeled and model '{model}' has no text tower for class names; "
            "label some samples, or embed with a text-tower model (minilm, clip:...) for zero-shot"
        )
    missing = sorted(set(range(k_classes)) - set(protos.classes.tolist()))
    if missing and text is not None:
        protos = prototypes.fuse_text(protos, text, weight=0.0)  # adds text prototypes for classes with none
    n_iter = 0
    unlabeled = vectors[unlabeled_rows]
    if cfg.refine and len(unlabeled) and cfg.max_iter > 0:
        protos, n_iter = prototypes.refine_transductive(
            protos, unlabeled, temperature=cfg.refine_temperature, min_confidence=cfg.min_confidence, max_iter=cfg.max_iter
        )
    return protos, n_iter


def _summary(protos, classes, spread, pairs, n_dropped, n_iter, has_text) -> dict[str, Any]:
    support = np.bincount(protos.classes, weights=protos.support, minlength=len(classes))
    counts = np.bincount(protos.classes, minlength=len(classes))
    return {
        "n_prototypes": int(len(protos.vectors)),
        "n_classes": len(classes),
        "kinds": {str(k): int(v) for k, v in zip(*np.unique(protos.kind, return_counts=True))},
        "n_dropped_unclean": n_dropped,
        "refine_iterations": int(n_iter),
        "text_prototypes": bool(has_text),
        "per_class": [
            {"class": c, "prototypes": int(counts[i]), "support": int(support[i]), "spread": None if np.isnan(spread[i]) else round(float(spread[i]), 4)}
            for i, c in enumerate(classes)
        ],
        "confusable_pairs": [{"a": classes[i], "b": classes[j], "cosine": round(float(cos), 4)} for i, j, cos in pairs],
    }


def _write(ws, protos, classes, cfg, summary) -> None:
    rank = np.zeros(len(protos.classes), dtype=np.int64)
    for c in np.unique(protos.classes):
        members = np.flatnonzero(protos.classes == c)
        rank[members] = np.arange(len(members))
    names = np.asarray(classes, dtype=object)
    dim = protos.vectors.shape[1]
    table = pa.table(
        {
            "class": pa.array(names[protos.classes].tolist(), pa.string()),
            "prototype": pa.array(rank),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(protos.vectors.reshape(-1)), dim),
            "support": pa.array(protos.support.astype(np.int64)),
            "kind": pa.array(protos.kind.tolist(), pa.string()),
        }
    )
    artifacts.write_table(ws.path(artifacts.PROTOTYPES), table, {"classes": classes, "params": cfg.result_params(), "summary": summary})


def read_prototypes(ws, classes: list[str]):
    """prototypes.parquet back into a :class:`labelkit.prototypes.Prototypes`."""

    t = artifacts.read_table(artifacts.require(ws.path(artifacts.PROTOTYPES), f"labelkit prototype {ws.data}"))
    index = {c: i for i, c in enumerate(classes)}
    cls = np.array([index[c] for c in t.column("class").to_pylist()], dtype=np.int64)
    vecs = np.asarray(t.column("vector").to_pylist(), dtype=np.float32)
    return prototypes.Prototypes(vecs, cls, np.asarray(t.column("support").to_pylist()), np.asarray(t.column("kind").to_pylist()), len(classes))

