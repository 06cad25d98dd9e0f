"""The report's sections, one per artifact, read from the workspace (labelkit.artifacts) and drawn
with labelkit.report; a missing artifact gives a placeholder naming the command that makes it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from labelkit import artifacts, projection
from labelkit import report as rep
from labelkit.config import ReportConfig
from labelkit.stages import _multilabel_report
from labelkit.stages._common import now
from labelkit.stages._report_galleries import Previews, discovery_gallery, issue_gallery, label_codes, outlier_gallery, pseudo_gallery
from labelkit.stages._runner import recorded_summary
from labelkit.workspace import Workspace

METRICS = "student/metrics.json"
SEED = 0  # the map's subsample is the same on every run


# -- sections -------------------------------------------------------------------------------


def build_sections(ws: Workspace, cfg: ReportConfig, have: dict[str, bool]) -> list[rep.Section]:
    """Every section in page order; missing artifacts give placeholders naming the command to run."""
    samples, meta = artifacts.read_samples(ws.path(artifacts.SAMPLES))
    classes = [str(c) for c in meta.get("classes") or sorted({str(v) for v in samples["label"].dropna()})]
    kind = meta.get("kind", "")
    if meta.get("task") == "multi-label":  # issue 16: counts, co-occurrence, labels to add and remove
        return _multilabel_report.report_sections(ws, samples, classes, have, embedder_section=lambda: _embedder(ws),
                                           student_section=lambda: _student(ws, classes) if have[METRICS] else rep.missing_section(
                                               "student", "Student model", METRICS, f"labelkit distill {ws.data}"))
    issues = _read_issues(ws) if have[artifacts.LABEL_ISSUES] else None
    data = str(ws.data)
    previews = Previews(ws.data, kind, samples)
    out = [_dataset(samples, classes, kind)]
    if have[artifacts.EMBEDDINGS]:
        out += [_embedder(ws), _map(ws, cfg, samples, classes, issues)]
    else:
        out += [rep.missing_section("embedder", "Embedder", artifacts.EMBEDDINGS, f"labelkit embed {data}"),
                rep.missing_section("map", "Embedding map", artifacts.EMBEDDINGS, f"labelkit embed {data}")]
    out.append(_prototypes(ws, classes) if have[artifacts.PROTOTYPES]
               else rep.missing_section("prototypes", "Prototypes", artifacts.PROTOTYPES, f"labelkit prototype {data}"))
    if have[artifacts.PSEUDOLABELS]:
        out += [_pseudolabels(ws, classes), pseudo_gallery(ws, classes, previews)]
    else:
        out += [rep.missing_section("pseudolabels", "Pseudo-labels", artifacts.PSEUDOLABELS, f"labelkit pseudolabel {data}"),
                rep.missing_section("pseudo_gallery", "Pseudo-labels by class", artifacts.PSEUDOLABELS, f"labelkit pseudolabel {data}")]
    out.append(discovery_gallery(ws, previews) if have.get(artifacts.DISCOVERIES)
               else rep.missing_section("discoveries", "New classes", artifacts.DISCOVERIES, f"labelkit discover {data}"))
    if issues is not None:
        out += [_noise(ws, classes), issue_gallery(cfg, issues, previews), outlier_gallery(ws, issues, previews)]
    else:
        out += [rep.missing_section(key, title, artifacts.LABEL_ISSUES, f"labelkit detect-noise {data}")
                for key, title in (("noise", "Noise matrix"), ("issues", "Label issues"), ("outliers", "Outliers and near-duplicates"))]
    out.append(_student(ws, classes) if have[METRICS]
               else rep.missing_section("student", "Student model", METRICS, f"labelkit distill {data}"))
    return out


def _read_issues(ws: Workspace) -> pd.DataFrame:
    cols = ["id", "given_label", "suggested_label", "label_quality", "is_issue", "issue_type", "rank"]
    df = artifacts.read_table(ws.path(artifacts.LABEL_ISSUES), columns=cols).to_pandas()
    return df.sort_values("rank", kind="stable").reset_index(drop=True)




def _dataset(samples: pd.DataFrame, classes: list[str], kind: str) -> rep.Section:
    codes = label_codes(samples["label"], classes)
    n, n_lab = len(codes), int((codes >= 0).sum())
    counts = np.bincount(codes[codes >= 0], minlength=len(classes))
    stats = [("samples", f"{n:,}"), ("labeled", f"{n_lab:,}"), ("unlabeled", f"{n - n_lab:,}"), ("classes", f"{len(classes):,}")]
    if kind:
        stats.append(("data", kind))
    body = rep.stat_cards(stats)
    if classes:
        chart = rep.bar_chart_svg(classes, counts, label="labeled samples per class", colors=rep.class_colors(len(classes)))
        smallest = classes[int(counts.argmin())]
        body += rep.figure(chart, f"Labeled samples per class (smallest: <b>{rep.esc(smallest)}</b>, {int(counts.min())}).")
    return rep.Section("dataset", "Dataset", body)


def _map(ws: Workspace, cfg: ReportConfig, samples: pd.DataFrame, classes: list[str], issues: pd.DataFrame | None) -> rep.Section:
    emb_ids, vecs = artifacts.read_embeddings(ws.path(artifacts.EMBEDDINGS), cache=ws.path(artifacts.EMBEDDINGS_CACHE))
    label_of = dict(zip(samples["id"].astype(str), samples["label"]))
    codes = label_codes(pd.Series([label_of.get(i) for i in emb_ids], dtype=object), classes)
    flagged: dict[str, str] = {}
    if issues is not None:
        f = issues[issues["is_issue"]]
        flagged = dict(zip(f["id"].astype(str), f["suggested_label"].astype(str)))
    is_issue = np.fromiter((i in flagged for i in emb_ids), bool, len(emb_ids))
    rows = projection.subsample(len(emb_ids), cfg.max_points, keep=is_issue, seed=SEED)
    t0 = now()
    proj = projection.project_2d(vecs[rows], seed=SEED)
    seconds = now() - t0
    names = np.asarray(classes + ["unlabeled"], dtype=object)
    titles = []
    for r in rows:
        t = f"{emb_ids[r]} · {names[codes[r]]}"
        if is_issue[r]:
            t += f" · label issue, suggested {flagged[emb_ids[r]]}"
        titles.append(t)
    svg = rep.scatter_svg(proj.xy, codes[rows], classes, issues=is_issue[rows], titles=titles)
    counts = np.bincount(codes[rows][codes[rows] >= 0], minlength=len(classes))
    legend = rep.legend_html(classes, counts, n_unlabeled=int((codes[rows] < 0).sum()), n_issues=int(is_issue[rows].sum()))
    shown = f"all {len(emb_ids):,} samples" if len(rows) == len(emb_ids) else f"{len(rows):,} of {len(emb_ids):,} samples (a seeded random subset; every label issue kept)"
    if proj.method == "t-SNE":
        how = (f"t-SNE (scikit-learn, Barnes-Hut, after PCA to {projection.TSNE_PCA_DIMS} dimensions; seed {SEED}; {seconds:.1f} s): "
               "near points are near in the embedding, but distances between islands and island sizes mean little")
    else:
        how = f"PCA (the two axes explain {proj.explained[0]:.0%} and {proj.explained[1]:.0%} of the variance)"
        how += f"; not t-SNE because {proj.fallback}" if proj.fallback else ""
    lead = (f'<p class="lead">{rep.esc(shown)}, projected to 2-D by {rep.esc(how)}. Colour = given label; grey = unlabeled; '
            f'red ring = flagged label issue. Hover a point for its id; click a legend entry to hide it.</p>')
    facts = {"projection": {"method": proj.method, "fallback": proj.fallback, "points": len(rows), "seconds": round(seconds, 2)}}
    return rep.Section("map", "Embedding map", lead + legend + rep.figure(svg), facts=facts)


def _prototypes(ws: Workspace, classes: list[str]) -> rep.Section:
    path = ws.path(artifacts.PROTOTYPES)
    t = artifacts.read_table(path, columns=["class", "support", "kind"]).to_pandas()
    meta = artifacts.read_metadata(path)
    names = classes + sorted(set(t["class"].astype(str)) - set(classes))
    support = t.groupby("class")["support"].sum().reindex(names, fill_value=0).to_numpy()
    n_protos = t.groupby("class").size().reindex(names, fill_value=0).to_numpy()
    kinds = ", ".join(f"{v} {k}" for k, v in t["kind"].value_counts().items())
    body = rep.stat_cards([("prototypes", f"{len(t):,}"), ("classes with one", f"{int((n_protos > 0).sum())} of {len(names)}"), ("kinds", kinds or "n/a")])
    chart = rep.bar_chart_svg(names, support, label="prototype support per class", colors=rep.class_colors(len(names)))
    body += rep.figure(chart, "Support: the labeled samples behind each class's prototypes (after cleaning). "
                               "A class with little support has a less reliable prototype.")
    pairs = (meta.get("summary") or {}).get("confusable_pairs") or []
    if pairs:
        items = ", ".join(f"<b>{rep.esc(p.get('a'))}</b> ~ <b>{rep.esc(p.get('b'))}</b> (cosine {float(p.get('cosine', float('nan'))):.3f})" for p in pairs[:5])
        body += f'<p class="hint">Most confusable prototypes: {items}.</p>'
    return rep.Section("prototypes", "Prototypes", body)


def _pseudolabels(ws: Workspace, classes: list[str]) -> rep.Section:
    path = ws.path(artifacts.PSEUDOLABELS)
    t = artifacts.read_table(path, columns=["label", "confidence", "accepted"]).to_pandas()
    meta = artifacts.read_metadata(path)
    params, summ = meta.get("params") or {}, meta.get("summary") or {}
    conf = t["confidence"].to_numpy(dtype=np.float64)
    acc = t["accepted"].to_numpy(dtype=bool)
    n = len(t)
    coverage = float(acc.mean()) if n else float("nan")
    rule, tau = params.get("threshold_rule"), params.get("threshold")
    stats = [("unlabeled", f"{n:,}"), ("accepted", f"{int(acc.sum()):,}"), ("coverage", "n/a" if not n else f"{coverage:.1%}")]
    if rule is not None:
        stats.append(("threshold", f"{rule} {tau:g}" if isinstance(tau, (int, float)) else str(rule)))
    if summ.get("ece") is not None:
        stats.append(("held-out ECE", f"{summ['ece']:.3f}"))
    body = rep.stat_cards(stats)
    if not n:
        return rep.Section("pseudolabels", "Pseudo-labels", body + '<p class="hint">There are no unlabeled samples to pseudo-label.</p>')
    hist = rep.histogram_svg(conf, split=acc, label="pseudo-label confidence")
    grid = np.linspace(0, 1, 101)
    point = vline = None
    if rule == "fixed" and isinstance(tau, (int, float)) and 0 <= tau <= 1:
        cov_tau = float(rep.coverage_curve(conf, np.array([tau]))[0])
        vline, point = tau, (tau, cov_tau, f"τ = {tau:g}: {cov_tau:.0%}")
    curve = rep.line_chart_svg(grid, {"coverage": rep.coverage_curve(conf, grid)}, xlabel="confidence threshold τ", ylabel="coverage",
                                label="coverage versus threshold", y_range=(0.0, 1.0), vline=vline, point=point, percent=True)
    figs = [
        rep.figure(hist, "Calibrated confidence of each unlabeled sample's best class; "
                          f'<span style="color:{rep.ACCEPT_COLOR}">■</span> accepted, <span style="color:#9aa0a6">■</span> abstained.'),
        rep.figure(curve, "Share of unlabeled samples a fixed threshold τ would accept."
                           + ("" if point else f" The {rep.esc(rule)} rule in use accepted {coverage:.1%}.")),
    ]
    if acc.any():
        per = t.loc[acc, "label"].astype(str).value_counts().reindex(classes, fill_value=0).to_numpy()
        figs.append(rep.figure(rep.bar_chart_svg(classes, per, label="accepted pseudo-labels per class", colors=rep.class_colors(len(classes))),
                                "Accepted pseudo-labels per class."))
    return rep.Section("pseudolabels", "Pseudo-labels", body + '<div class="grid2">' + "".join(figs) + "</div>")


def _noise(ws: Workspace, classes: list[str]) -> rep.Section:
    meta = artifacts.read_metadata(ws.path(artifacts.LABEL_ISSUES))
    summ = meta.get("summary") or {}
    names = [str(c) for c in meta.get("classes") or classes]
    nm = meta.get("noise_matrix")
    stats = []
    if summ.get("estimated_noise_rate") is not None:
        stats.append(("estimated noise rate", f"{summ['estimated_noise_rate']:.1%}"))
    body = rep.stat_cards(stats) if stats else ""
    if nm is None or np.asarray(nm).shape != (len(names), len(names)):
        return rep.Section("noise", "Noise matrix", body + '<p class="hint">label_issues.parquet carries no noise matrix; '
                                                            f'rerun <code>labelkit detect-noise {rep.esc(ws.data)} --force</code>.</p>')
    svg = rep.heatmap_svg(np.asarray(nm, dtype=float), names, row_title="given label", col_title="true label", label="estimated noise matrix")
    cap = ("Estimated P(given label | true label) by confident learning (Northcutt, Jiang &amp; Chuang, JAIR 2021): each column sums to 100%; "
           "off-diagonal cells are label noise. Colour ∝ √p so that small rates show.")
    pairs = summ.get("confused_pairs") or []
    if pairs:
        cap += " Most confused (given → true): " + ", ".join(
            f"<b>{rep.esc(p.get('given'))}</b> → <b>{rep.esc(p.get('true'))}</b> ({float(p.get('joint', 0)):.1%} of labels)" for p in pairs[:5]) + "."
    return rep.Section("noise", "Noise matrix", body + rep.figure(svg, cap))


def _embedder(ws: Workspace) -> rep.Section:
    meta = artifacts.read_metadata(ws.path(artifacts.EMBEDDINGS))
    summ = recorded_summary(ws, "embed")  # the run's summary lives in manifest.json, as for the banner
    model = str(meta.get("model") or summ.get("model") or "unknown")
    body = rep.embedder_html(model, dim=meta.get("dim"), choice=summ.get("model_choice"), separation=summ.get("separation"))
    return rep.Section("embedder", "Embedder", body)


def _student(ws: Workspace, classes: list[str]) -> rep.Section:
    path = ws.path(METRICS)
    try:
        metrics: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return rep.Section("student", "Student model", f'<p class="hint">{rep.esc(METRICS)} is unreadable ({rep.esc(e)}).</p>')
    if not isinstance(metrics, dict):
        return rep.Section("student", "Student model", f'<p class="hint">{rep.esc(METRICS)} is not a JSON object.</p>')
    return rep.Section("student", "Student model", rep.metrics_html(metrics, classes))
