"""prototype: class prototypes from the labeled embeddings (and class names), refined with unlabeled ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from labelkit import artifacts, health, prototypes
from labelkit.config import PrototypeConfig
from labelkit.stages import _multilabel
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages._inputs import aligned, class_embeddings
from labelkit.stages._runner import Job, Stage
from labelkit.stages._runner import run as run_stage
from labelkit.teacher import build_prototypes

STAGE = "prototype"


def _check(job: Job) -> None:
    job.samples.require_labels(STAGE)


def _build(job: Job) -> dict[str, Any]:
    if _multilabel.is_multilabel(job.samples):  # issue 16: label sets, one-vs-rest
        return _multilabel.build_prototypes(job)
    ws, cfg, samples = job.ws, job.cfg, job.samples
    a = aligned(ws, samples)
    text = class_embeddings(ws, a.classes)
    b = build_prototypes(a.vectors, a.labels, len(a.classes), cfg, text, model=a.meta.get("model"), progress=job.progress)
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


SPEC = Stage(STAGE, PrototypeConfig, _build, outputs=(artifacts.PROTOTYPES,), inputs=(artifacts.EMBEDDINGS,),
             optional=(artifacts.CLASS_EMBEDDINGS,), check=_check)


def run(ctx: RunContext, cfg: PrototypeConfig, *, force: bool = False) -> StageResult:
    return run_stage(ctx, SPEC, cfg, force=force)


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
