"""discover: group unlabeled samples that belong to no labeled class into new classes (discoveries.parquet).

The candidates (``pool``) are the rows of pseudolabels.parquet whose ``novelty`` reaches the
threshold the pseudolabel stage recorded (``novel``, the default: its metadata's
``novelty.threshold``, the conformal rule of :mod:`labelkit.novelty`), or every row
(``unlabeled``: GCD's setting). They are clustered with the labeled samples fixed to their classes
(:func:`labelkit.discovery.discover_classes`); a candidate that lands in a known class's cluster
gets cluster -1, as do the samples that are not candidates. On examples/digits with the 9s
unlabeled, ``novel`` puts 107 of the 179 9s in clusters of 9s, while ``unlabeled`` lets the
9s join known digits and splits 7s and 1s instead; on BANKING77 and CIFAR-10 ``unlabeled`` found
more of the unseen classes (docs/performance.md). Neither estimates the number of classes well.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from labelkit import artifacts, discovery, health
from labelkit.config import DiscoverConfig
from labelkit.errors import BadInputError
from labelkit.stages import _multilabel, _multilabel_discover
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages._inputs import aligned
from labelkit.stages._runner import Job, Stage
from labelkit.stages._runner import run as run_stage

STAGE = "discover"


def _check(job: Job) -> None:
    job.samples.require_labels(STAGE)


def _build(job: Job) -> dict[str, Any]:
    if _multilabel.is_multilabel(job.samples):  # issue 16: anchors from one-class samples
        return _multilabel_discover.build_discoveries(job, _warnings)
    ws, cfg, samples = job.ws, job.cfg, job.samples
    a = aligned(ws, samples)
    path = ws.path(artifacts.PSEUDOLABELS)
    meta = artifacts.read_metadata(path)
    table = artifacts.read_table(path)
    threshold = (meta.get("novelty") or {}).get("threshold")
    if "novelty" not in table.column_names or "novelty" not in meta:
        raise BadInputError(f"{artifacts.PSEUDOLABELS} has no novelty scores (made by an older labelkit); run 'labelkit pseudolabel {ws.data} --force'")
    if threshold is None:
        raise BadInputError(f"{artifacts.PSEUDOLABELS} has no novelty threshold: no labeled sample was scored without its label to "
                            "calibrate it on; label a few samples per class and rerun 'labelkit pseudolabel'")
    pos = {i: n for n, i in enumerate(a.ids)}
    rows = np.array([pos.get(i, -1) for i in table.column("id").to_pylist()], np.int64)
    novelty = table.column("novelty").to_numpy(zero_copy_only=False)
    known = rows >= 0
    candidates = np.zeros(len(a.ids), bool)
    candidates[rows[known]] = True if cfg.pool == "unlabeled" else novelty[known] >= float(threshold)
    n_novel = int((novelty[known] >= float(threshold)).sum())
    expected, p_chance = discovery.novel_by_chance(n_novel, int(known.sum()), float((meta.get("novelty") or {}).get("reject_rate") or 0.0))
    # As many "novel" samples as the rule lets through by chance: the known classes' tail, not a new class.
    by_chance = cfg.pool == "novel" and cfg.n_clusters is None and p_chance > discovery.NO_EVIDENCE_P
    d = discovery.discover_classes(a.vectors, a.labels, len(a.classes), candidates & (a.labels < 0) & (not by_chance), max_new=cfg.max_new,
                                   n_clusters=cfg.n_clusters, seed=cfg.seed)
    out_rows = rows[known]
    clusters = [
        {"cluster": j, "size": int((d.cluster == j).sum()), "nearest_class": a.classes[int(c)] if c >= 0 else None,
         "nearest_similarity": round(float(s), 4)}
        for j, (c, s) in enumerate(zip(d.nearest_class, d.nearest_similarity))
    ]
    n_cand = int(candidates.sum())
    summary = {
        "n_clusters": d.n_clusters,
        "pool": cfg.pool,
        "n_candidates": n_cand,
        "n_novel": n_novel,
        "novel_expected_by_chance": round(expected, 1),
        "novel_chance_p": round(p_chance, 4),
        "by_chance": by_chance,
        "n_clustered": int((d.cluster[out_rows] >= 0).sum()),
        "n_joined_known": int(n_cand - (d.cluster >= 0).sum()),
        "novelty_threshold": float(threshold),
        "clusters": clusters,
        "silhouettes": {str(k): v for k, v in d.silhouettes.items()},
        "estimated": cfg.n_clusters is None,
    }
    summary["warnings"] = input_warnings(samples, _warnings(0 if by_chance else n_cand, d.n_clusters, cfg))
    ids = pa.array([a.ids[i] for i in out_rows], pa.string())
    conf = d.confidence[out_rows]
    out = pa.table({
        "id": ids,
        "cluster": pa.array(d.cluster[out_rows].astype(np.int64)),
        "confidence": pa.array(np.where(np.isnan(conf), 0, conf).astype(np.float32), mask=np.isnan(conf)),
    })
    artifacts.write_table(ws.path(artifacts.DISCOVERIES), out,
                          {"classes": a.classes, "params": cfg.result_params(), "summary": summary, "clusters": clusters})
    return summary


def _warnings(n_candidates: int, n_clusters: int, cfg: DiscoverConfig) -> list[dict[str, str]]:
    if n_candidates and not n_clusters and cfg.n_clusters is None:
        return [health.warning(
            "no_new_class",
            f"none of the {n_candidates} candidate samples forms a cluster apart from the known classes",
            "look at the most novel samples in the report; if they are one new class, rerun with --n-clusters 1",
        )]
    return []


SPEC = Stage(STAGE, DiscoverConfig, _build, outputs=(artifacts.DISCOVERIES,), inputs=(artifacts.EMBEDDINGS, artifacts.PSEUDOLABELS),
             check=_check)


def run(ctx: RunContext, cfg: DiscoverConfig, *, force: bool = False) -> StageResult:
    return run_stage(ctx, SPEC, cfg, force=force)
