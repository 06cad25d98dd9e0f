"""The multi-label branch of the discover stage: new classes among the unlabeled samples (issue 16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from labelkit import artifacts
from labelkit.stages._common import input_warnings
from labelkit.stages._multilabel import TASK, _aligned

# ----------------------------------------------------------------------------- discover


def build_discoveries(job, warnings_for) -> dict[str, Any]:
    """discoveries.parquet for a multi-label task: new classes among the unlabeled samples.

    The known classes are anchored by the labeled samples that carry exactly one class (a sample
    with several sits between their clusters); the candidates are every unlabeled sample
    (``--pool unlabeled``) or those whose pseudo-label set is empty (``--pool novel``: no known
    class reaches its threshold). Then :func:`labelkit.discovery.discover_classes` as for
    multi-class data. ``warnings_for(n_candidates, n_clusters, cfg)`` is the stage's warning rule.
    """
    from labelkit import discovery

    ws, cfg, samples = job.ws, job.cfg, job.samples
    ids, vecs, y, classes, meta, n_missing = _aligned(ws, samples)
    one = (y == 1).sum(axis=1) == 1
    codes = np.where(one & (y[:, 0] >= 0), np.argmax(y == 1, axis=1), -1).astype(np.int64)
    table = artifacts.read_table(ws.path(artifacts.PSEUDOLABELS))
    pos = {i: n for n, i in enumerate(ids)}
    rows = np.array([pos.get(i, -1) for i in table.column("id").to_pylist()], np.int64)
    empty = np.array([not s for s in table.column("labels").to_pylist()], dtype=bool)
    known = rows >= 0
    candidates = np.zeros(len(ids), bool)
    candidates[rows[known]] = True if cfg.pool == "unlabeled" else empty[known]
    candidates &= y[:, 0] < 0
    d = discovery.discover_classes(vecs, codes, len(classes), candidates, max_new=cfg.max_new, n_clusters=cfg.n_clusters, seed=cfg.seed)
    out_rows = rows[known]
    clusters = [
        {"cluster": j, "size": int((d.cluster == j).sum()), "nearest_class": classes[int(c)] if c >= 0 else None,
         "nearest_similarity": round(float(s), 4)}
        for j, (c, s) in enumerate(zip(d.nearest_class, d.nearest_similarity))
    ]
    n_cand = int(candidates.sum())
    summary = {
        "task": TASK, "n_clusters": d.n_clusters, "pool": cfg.pool, "n_candidates": n_cand,
        "n_empty_label_sets": int(empty[known].sum()), "n_anchors": int((codes >= 0).sum()),
        "n_clustered": int((d.cluster[out_rows] >= 0).sum()), "n_joined_known": int(n_cand - (d.cluster >= 0).sum()),
        "clusters": clusters, "silhouettes": {str(k): v for k, v in d.silhouettes.items()}, "estimated": cfg.n_clusters is None,
    }
    summary["warnings"] = input_warnings(samples, warnings_for(n_cand, d.n_clusters, cfg))
    conf = d.confidence[out_rows]
    out = pa.table({
        "id": pa.array([ids[i] for i in out_rows], pa.string()),
        "cluster": pa.array(d.cluster[out_rows].astype(np.int64)),
        "confidence": pa.array(np.where(np.isnan(conf), 0, conf).astype(np.float32), mask=np.isnan(conf)),
    })
    artifacts.write_table(ws.path(artifacts.DISCOVERIES), out,
                          {"classes": classes, "task": TASK, "params": cfg.result_params(), "summary": summary, "clusters": clusters})
    return summary
