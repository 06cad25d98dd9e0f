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
from labelkit.stages._common import input_warnings
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
    target = cfg.target_precision
    # The labels one-vs-rest confident learning doubts get no weight in the heads (and count as
    # corrected when the thresholds are chosen): benchmarks/multilabel.py measures this default.
    issues, _, c = ml.multilabel_label_issues(vecs, y, seed=0)
    doubted = issues.to_add | issues.to_remove
    r = ml.multilabel_pseudolabels(vecs, y, trust=np.where(doubted, 0.0, 1.0), target_precision=target, seed=0, C=c)
    rows = np.flatnonzero(y[:, 0] < 0)
    names = np.asarray(classes, dtype=object)
    probs = r.probs[rows]
    best = probs.argmax(axis=1) if len(classes) else np.zeros(len(rows), dtype=np.int64)
    sets = [_names(m, names) for m in r.label_sets[rows]]
    accepted = r.accepted[rows]
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
    summary["warnings"] = input_warnings(samples, warnings)
    k = len(classes)
    table = pa.table({
        "id": pa.array([ids[i] for i in rows], pa.string()),
        "label": pa.array(names[best].tolist() if k else [None] * len(rows), pa.string()),
        "confidence": pa.array(probs.max(axis=1) if k else np.zeros(len(rows)), pa.float32()),
        "labels": _strings(sets),
        "label_probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1).astype(np.float32)), max(k, 1)) if k else pa.array([[]] * len(rows), pa.list_(pa.float32())),
        "accepted": pa.array(accepted),
        "reason": pa.array([None if a else "below_target_precision" for a in accepted], pa.string()),
    })
    meta_out = {"classes": classes, "task": TASK, "thresholds": [float(v) for v in t.value],
                "params": cfg.result_params(), "summary": summary, "model": meta.get("model")}
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


# ----------------------------------------------------------------------------- report


def report_sections(ws, samples: pd.DataFrame, classes: list[str], have: dict[str, bool], *, embedder_section, student_section) -> list:
    """The report's sections for a multi-label workspace: per-class counts and co-occurrence, the
    pseudo-label sets, the flagged samples with the labels to add and to remove, the student."""
    from labelkit import report as rep

    data = str(ws.data)
    sets = samples["labels"].tolist()
    k = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    y = np.full((len(sets), k), -1, dtype=np.int8)
    for r, v in enumerate(sets):
        if v is not None:
            y[r] = 0
            y[r, [index[c] for c in v if c in index]] = 1
    lab = y[:, 0] >= 0 if k else np.zeros(len(sets), bool)
    yl = (y[lab] == 1).astype(np.int64)
    counts = yl.sum(axis=0)
    sizes = yl.sum(axis=1)
    stats = [("samples", f"{len(sets):,}"), ("labeled", f"{int(lab.sum()):,}"), ("unlabeled", f"{int((~lab).sum()):,}"),
             ("classes", f"{k:,}"), ("task", "multi-label"),
             ("labels a sample", f"{sizes.mean():.2f}" if len(sizes) else "n/a"), ("with no class", f"{int((sizes == 0).sum()):,}")]
    body = rep.stat_cards(stats)
    facts = {"multilabel_class_counts": {c: int(n) for c, n in zip(classes, counts)}}
    if k:
        body += rep.figure(rep.bar_chart_svg(classes, counts, label="labeled samples carrying each class", colors=rep.class_colors(k)),
                           "Labeled samples carrying each class (a sample counts for each of its classes).")
        co = yl.T @ yl
        cond = co / np.maximum(counts[:, None], 1)  # P(column class | row class)
        body += rep.figure(rep.heatmap_svg(cond, classes, row_title="class", col_title="also carries", label="label co-occurrence"),
                           "Co-occurrence: the share of the labeled samples carrying the row's class that also carry the column's "
                           "(the diagonal is 100% for every class that occurs).")
        pairs = [(classes[i], classes[j], int(co[i, j])) for i in range(k) for j in range(i + 1, k) if co[i, j]]
        pairs.sort(key=lambda p: -p[2])
        facts["multilabel_top_pairs"] = [{"a": a, "b": b, "n": n} for a, b, n in pairs[:10]]
    out = [rep.Section("dataset", "Dataset", body, facts=facts)]
    out.append(embedder_section() if have.get(artifacts.EMBEDDINGS)
               else rep.missing_section("embedder", "Embedder", artifacts.EMBEDDINGS, f"labelkit embed {data}"))
    if have.get(artifacts.PSEUDOLABELS):
        out.append(_report_pseudolabels(rep, ws, classes))
    else:
        out.append(rep.missing_section("pseudolabels", "Pseudo-labels", artifacts.PSEUDOLABELS, f"labelkit pseudolabel {data}"))
    if have.get(artifacts.LABEL_ISSUES):
        out.append(_report_issues(rep, ws, classes))
    else:
        out.append(rep.missing_section("issues", "Label issues", artifacts.LABEL_ISSUES, f"labelkit detect-noise {data}"))
    out.append(student_section())
    return out


def _report_pseudolabels(rep, ws, classes: list[str]):
    path = ws.path(artifacts.PSEUDOLABELS)
    t = artifacts.read_table(path, columns=["labels", "accepted"])
    meta = artifacts.read_metadata(path)
    sets, acc = t.column("labels").to_pylist(), np.asarray(t.column("accepted").to_pylist(), dtype=bool)
    per = np.array([sum(c in s for s in sets) for c in classes], dtype=np.int64)
    stats = [("unlabeled", f"{len(sets):,}"), ("accepted", f"{int(acc.sum()):,}"),
             ("labels a sample", f"{np.mean([len(s) for s in sets]):.2f}" if sets else "n/a"),
             ("with no class", f"{sum(not s for s in sets):,}")]
    body = rep.stat_cards(stats)
    if classes and sets:
        thr = meta.get("thresholds") or []
        cap = "Unlabeled samples given each class (probability at or above the class's threshold"
        if len(thr) == len(classes):
            cap += ": " + ", ".join(f"{rep.esc(c)} {float(v):.2f}" for c, v in zip(classes, thr))
        body += rep.figure(rep.bar_chart_svg(classes, per, label="pseudo-labels per class", colors=rep.class_colors(len(classes))), cap + ").")
    return rep.Section("pseudolabels", "Pseudo-labels", body)


def _report_issues(rep, ws, classes: list[str], limit: int = 200):
    t = artifacts.read_table(ws.path(artifacts.LABEL_ISSUES)).to_pandas().sort_values("rank", kind="stable")
    flagged = t[t["is_issue"]]
    add = np.array([sum(c in (s if s is not None else []) for s in flagged["labels_to_add"]) for c in classes], dtype=np.int64)
    rem = np.array([sum(c in (s if s is not None else []) for s in flagged["labels_to_remove"]) for c in classes], dtype=np.int64)
    stats = [("labeled", f"{len(t):,}"), ("flagged", f"{len(flagged):,}"), ("labels to add", f"{int(add.sum()):,}"),
             ("labels to remove", f"{int(rem.sum()):,}")]
    body = rep.stat_cards(stats)
    if classes:
        body += '<div class="grid2">' + rep.figure(rep.bar_chart_svg(classes, add, label="labels to add per class", colors=rep.class_colors(len(classes))),
                                                   "Labels likely missing, per class.")
        body += rep.figure(rep.bar_chart_svg(classes, rem, label="labels to remove per class", colors=rep.class_colors(len(classes))),
                           "Labels likely wrong, per class.") + "</div>"
    rows = "".join(
        f"<tr><td>{int(r['rank'])}</td><td>{rep.esc(r['id'])}</td><td>{rep.esc(', '.join(r['given_labels']))}</td>"
        f"<td>{rep.esc(', '.join(r['labels_to_add']))}</td><td>{rep.esc(', '.join(r['labels_to_remove']))}</td>"
        f"<td>{float(r['label_quality']):.3f}</td></tr>"
        for _, r in flagged.head(limit).iterrows())
    more = f'<p class="hint">The {limit} lowest-quality of {len(flagged):,} flagged samples; label_issues.parquet has them all.</p>' if len(flagged) > limit else ""
    body += ("<table><thead><tr><th>rank</th><th>id</th><th>given</th><th>add</th><th>remove</th><th>quality</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>{more}") if len(flagged) else '<p class="hint">No sample is flagged.</p>'
    return rep.Section("issues", "Label issues", body, facts={"multilabel_flagged": int(len(flagged))})


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
