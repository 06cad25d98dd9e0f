"""The report's sections for a multi-label workspace (issue 16)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labelkit import artifacts

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
    g = meta.get("guarantee")  # --max-error: the certified share of wrong labels, or that none could be
    if g:
        stats.append(("wrong labels (certified)", f"≤ {g['error_bound']:.1%} at {g['confidence']:.0%}" if g["certified"] else "not certified"))
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
