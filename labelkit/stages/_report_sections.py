"""The report's sections, one per artifact, read from the workspace (labelkit.artifacts) and drawn
with labelkit.report; a missing artifact gives a placeholder naming the command that makes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelkit import artifacts, projection
from labelkit import report as rep
from labelkit import report_samples as samples_html
from labelkit.config import ReportConfig
from labelkit.stages import _multilabel
from labelkit.stages._common import now
from labelkit.workspace import Workspace

METRICS = "student/metrics.json"
THUMBNAIL_PX = 96
TABLE_THUMBNAIL_PX = 48
TABLE_THUMBNAILS = 2000  # past this many rows the tables show ids only (about 1.5 KB of page per thumbnail)
PSEUDO_EXAMPLES = 4  # per group: most / least confident accepted, best rejected
DISCOVERY_EXAMPLES = 8  # per new cluster: its most confident members
PSEUDO_CLASSES = 100  # classes shown in the pseudo-label gallery (those with the most pseudo-labels)
SNIPPET_CHARS = 220
SEED = 0  # the map's subsample is the same on every run
ISSUE_TYPES = {"label": "wrong label", "duplicate": "conflicting duplicate", "outlier": "outlier"}


# -- sections -------------------------------------------------------------------------------


def build_sections(ws: Workspace, cfg: ReportConfig, have: dict[str, bool]) -> list[rep.Section]:
    """Every section in page order; missing artifacts give placeholders naming the command to run."""
    samples, meta = artifacts.read_samples(ws.path(artifacts.SAMPLES))
    classes = [str(c) for c in meta.get("classes") or sorted({str(v) for v in samples["label"].dropna()})]
    kind = meta.get("kind", "")
    if meta.get("task") == "multi-label":  # issue 16: counts, co-occurrence, labels to add and remove
        return _multilabel.report_sections(ws, samples, classes, have, embedder_section=lambda: _embedder(ws),
                                           student_section=lambda: _student(ws, classes) if have[METRICS] else rep.missing_section(
                                               "student", "Student model", METRICS, f"labelkit distill {ws.data}"))
    issues = _read_issues(ws) if have[artifacts.LABEL_ISSUES] else None
    data = str(ws.data)
    previews = _Previews(ws.data, kind, samples)
    out = [_dataset(samples, classes, kind)]
    if have[artifacts.EMBEDDINGS]:
        out += [_embedder(ws), _map(ws, cfg, samples, classes, issues)]
    else:
        out += [rep.missing_section("embedder", "Embedder", artifacts.EMBEDDINGS, f"labelkit embed {data}"),
                rep.missing_section("map", "Embedding map", artifacts.EMBEDDINGS, f"labelkit embed {data}")]
    out.append(_prototypes(ws, classes) if have[artifacts.PROTOTYPES]
               else rep.missing_section("prototypes", "Prototypes", artifacts.PROTOTYPES, f"labelkit prototype {data}"))
    if have[artifacts.PSEUDOLABELS]:
        out += [_pseudolabels(ws, classes), _pseudo_gallery(ws, classes, previews)]
    else:
        out += [rep.missing_section("pseudolabels", "Pseudo-labels", artifacts.PSEUDOLABELS, f"labelkit pseudolabel {data}"),
                rep.missing_section("pseudo_gallery", "Pseudo-labels by class", artifacts.PSEUDOLABELS, f"labelkit pseudolabel {data}")]
    out.append(_discoveries(ws, previews) if have.get(artifacts.DISCOVERIES)
               else rep.missing_section("discoveries", "New classes", artifacts.DISCOVERIES, f"labelkit discover {data}"))
    if issues is not None:
        out += [_noise(ws, classes), _gallery(cfg, issues, previews), _outliers(ws, issues, previews)]
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


def _label_codes(labels: pd.Series, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([-1 if v is None or (isinstance(v, float) and np.isnan(v)) else index.get(str(v), -1) for v in labels], dtype=np.int64)


def _dataset(samples: pd.DataFrame, classes: list[str], kind: str) -> rep.Section:
    codes = _label_codes(samples["label"], classes)
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
    codes = _label_codes(pd.Series([label_of.get(i) for i in emb_ids], dtype=object), classes)
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


def _gallery(cfg: ReportConfig, issues: pd.DataFrame, previews: "_Previews") -> rep.Section:
    flagged = issues[issues["is_issue"]]
    by_type = flagged["issue_type"].fillna("label").value_counts()
    stats = [("flagged", f"{len(flagged):,} of {len(issues):,}")] + [(ISSUE_TYPES.get(str(k), str(k)), f"{int(v):,}") for k, v in by_type.items()]
    body = rep.stat_cards(stats)
    if cfg.gallery > 0:
        top = _issue_items(flagged.head(cfg.gallery), previews, size=THUMBNAIL_PX)
        more = f" (the {len(top)} most likely wrong of {len(flagged)})" if len(flagged) > len(top) else ""
        body += (f'<p class="lead">Flagged samples, most likely wrong first{rep.esc(more)}: the given label struck through, '
                 "then the label the evidence suggests; quality is low when the given label is likely wrong.</p>")
        body += rep.gallery_html(top, snippet_chars=SNIPPET_CHARS)
    else:
        body += '<p class="hint">The gallery is off (gallery = 0).</p>'
    if len(flagged):
        body += (f'<h3 id="all-issues">Every flagged sample ({len(flagged):,})</h3><p class="lead">By rank; pick a given label or a type to filter. '
                 f"{_thumb_note(len(flagged))}Click a text to read it in full.</p>")
        body += samples_html.issue_table_html(_issue_items(flagged, previews, size=TABLE_THUMBNAIL_PX, limit=TABLE_THUMBNAILS), uid="issue-table")
    return rep.Section("issues", "Label issues", body)


def _outliers(ws: Workspace, issues: pd.DataFrame, previews: "_Previews") -> rep.Section:
    """Rows typed outlier or duplicate, flagged or only reported, and the summary's counts of the latter."""
    summ = artifacts.read_metadata(ws.path(artifacts.LABEL_ISSUES)).get("summary") or {}
    rows = issues[issues["issue_type"].isin(["outlier", "duplicate"])]
    reported = summ.get("reported_not_issues") or {}
    stats = [(name, f"{int((rows['issue_type'] == t).sum()):,}") for t, name in (("outlier", "outliers"), ("duplicate", "conflicting near-duplicates"))]
    stats += [(f"{t}s reported, not flagged", f"{int(v):,}") for t, v in reported.items() if isinstance(v, (int, float))]
    body = rep.stat_cards(stats)
    if not len(rows):
        return rep.Section("outliers", "Outliers and near-duplicates", body + '<p class="hint">detect-noise found no outlier and no conflicting near-duplicate.</p>')
    body += ('<p class="lead">An outlier is far from its labeled neighbours; a conflicting near-duplicate is almost the same sample as one '
             'with another label. Those that other evidence does not doubt are reported here only, not counted as label issues. '
             f"{_thumb_note(len(rows))}</p>")
    items = _issue_items(rows, previews, size=TABLE_THUMBNAIL_PX, limit=TABLE_THUMBNAILS)
    body += samples_html.issue_table_html(items, uid="outlier-table", flagged=rows["is_issue"].tolist())
    return rep.Section("outliers", "Outliers and near-duplicates", body)


def _thumb_note(n: int) -> str:
    return f"Previews for the first {TABLE_THUMBNAILS:,} rows only. " if n > TABLE_THUMBNAILS else ""


def _issue_items(rows: pd.DataFrame, previews: "_Previews", *, size: int, limit: int | None = None) -> list[rep.GalleryItem]:
    items = []
    for i, r in enumerate(rows.itertuples(index=False)):
        thumb, text = previews.get(str(r.id), size=size, image=limit is None or i < limit)
        items.append(rep.GalleryItem(rank=int(r.rank), id=str(r.id), given=str(r.given_label), suggested=str(r.suggested_label),
                                     quality=float(r.label_quality), issue_type=None if pd.isna(r.issue_type) else str(r.issue_type),
                                     thumbnail=thumb, text=text))
    return items


class _Previews:
    """A sample's preview by id: an image's thumbnail (data URI) or a text; (None, None) when there is none."""

    def __init__(self, data: Path, kind: str, samples: pd.DataFrame):
        self.data, self.kind = data, kind
        self.source = dict(zip(samples["id"].astype(str), samples["source"]))

    def get(self, sample_id: str, *, size: int, image: bool = True) -> tuple[str | None, str | None]:
        src = self.source.get(sample_id)
        if src is None:
            return None, None
        if self.kind == "text":
            return None, str(src)
        return (_thumbnail(self.data, src, size) if self.kind == "image" and image else None), None


def _thumbnail(data: Path, source: str, size: int = THUMBNAIL_PX) -> str | None:
    """The image at DATA/source as a small PNG data URI; None when it is unreadable or outside DATA."""
    from PIL import Image

    root = data.resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        return None
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced size
            return rep.thumbnail_uri(im, size=size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _embedder(ws: Workspace) -> rep.Section:
    meta = artifacts.read_metadata(ws.path(artifacts.EMBEDDINGS))
    summ = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
    model = str(meta.get("model") or summ.get("model") or "unknown")
    body = rep.embedder_html(model, dim=meta.get("dim"), choice=summ.get("model_choice"), separation=summ.get("separation"))
    return rep.Section("embedder", "Embedder", body)


def _pseudo_gallery(ws: Workspace, classes: list[str], previews: _Previews) -> rep.Section:
    path = ws.path(artifacts.PSEUDOLABELS)
    names = pq.read_schema(path).names
    t = artifacts.read_table(path, columns=["id", "label", "confidence", "accepted"] + (["reason"] if "reason" in names else [])).to_pandas()
    names_all = classes + sorted(set(t["label"].astype(str)) - set(classes))
    codes = _label_codes(t["label"], names_all)
    ex = samples_html.pick_pseudolabel_examples(codes, t["confidence"].to_numpy(), t["accepted"].to_numpy(bool), n_classes=len(names_all), k=PSEUDO_EXAMPLES)
    order = sorted((c for c in range(len(names_all)) if ex[c].n_accepted + ex[c].n_rejected), key=lambda c: -(ex[c].n_accepted + ex[c].n_rejected))
    hidden = max(0, len(order) - PSEUDO_CLASSES)
    order = sorted(order[:PSEUDO_CLASSES])
    ids, conf, acc = t["id"].astype(str).to_numpy(), t["confidence"].to_numpy(), t["accepted"].to_numpy(bool)
    reason = t["reason"].to_numpy() if "reason" in t else None
    blocks = []
    for c in order:
        tiles = {}
        for r in np.concatenate([ex[c].most, ex[c].least, ex[c].rejected]):
            thumb, text = previews.get(ids[r], size=THUMBNAIL_PX)
            # The group says "below the bar"; a tile names only another reason (novel, uncertified).
            why = None if acc[r] or reason is None or pd.isna(reason[r]) or reason[r] == "below_threshold" else str(reason[r])
            tiles[int(r)] = samples_html.PseudoTile(ids[r], float(conf[r]), thumbnail=thumb, text=text, reason=why)
        blocks.append((names_all[c], ex[c], tiles))
    lead = (f'<p class="lead">Per class (the best class of each unlabeled sample): the {PSEUDO_EXAMPLES} most and least confident accepted '
            f"pseudo-labels, and the {PSEUDO_EXAMPLES} most confident rejected ones. Wrong images among the most confident mean the "
            "embedding confuses classes; good ones among the rejected mean the threshold is stricter than it needs to be.</p>")
    more = f'<p class="hint">… and {hidden} more classes (the {PSEUDO_CLASSES} with the most pseudo-labels are shown).</p>' if hidden else ""
    return rep.Section("pseudo_gallery", "Pseudo-labels by class", lead + samples_html.pseudolabel_gallery_html(blocks) + more)


def _discoveries(ws: Workspace, previews: _Previews) -> rep.Section:
    """A gallery per new cluster (its most confident members), under its nearest known class."""
    path = ws.path(artifacts.DISCOVERIES)
    meta = artifacts.read_metadata(path)
    summary = meta.get("summary") or {}
    t = artifacts.read_table(path, columns=["id", "cluster", "confidence"]).to_pandas()
    clusters = meta.get("clusters") or []
    lead = (f'<p class="lead">{summary.get("n_candidates", 0)} unlabeled samples were judged novel (unlike every labeled class; '
            f'novelty at least {float(summary.get("novelty_threshold", float("nan"))):.2f}); clustered with the known classes held fixed, '
            f'they form {len(clusters)} new cluster(s) ({summary.get("n_joined_known", 0)} joined a known class). Each cluster shows its '
            f"{DISCOVERY_EXAMPLES} most confident members and the known class it lies nearest to: a new class to name, or part of "
            "that class the labels missed.</p>")
    if not clusters:
        return rep.Section("discoveries", "New classes", lead + '<p class="hint">No new cluster.</p>')
    blocks = []
    for c in clusters:
        members = t[t["cluster"] == c["cluster"]].sort_values("confidence", ascending=False, kind="stable").head(DISCOVERY_EXAMPLES)
        tiles = []
        for sid, conf in zip(members["id"].astype(str), members["confidence"]):
            thumb, text = previews.get(sid, size=THUMBNAIL_PX)
            media = rep.media_html(thumb, text, alt=sid, snippet_chars=SNIPPET_CHARS)
            tiles.append(f'<div class="tile"><div class="media">{media}</div><div class="meta"><code>{rep.esc(sid)}</code> '
                         f"confidence {float(conf):.2f}</div></div>")
        near = c.get("nearest_class")
        head = (f'<h3>New cluster {int(c["cluster"])}: {int(c["size"])} samples; nearest known class '
                f'<b>{rep.esc(near) if near is not None else "none"}</b> (cosine {float(c.get("nearest_similarity") or 0):.2f})</h3>')
        blocks.append(head + '<div class="gallery">' + "".join(tiles) + "</div>")
    return rep.Section("discoveries", "New classes", lead + "".join(blocks))


def _student(ws: Workspace, classes: list[str]) -> rep.Section:
    path = ws.path(METRICS)
    try:
        metrics: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return rep.Section("student", "Student model", f'<p class="hint">{rep.esc(METRICS)} is unreadable ({rep.esc(e)}).</p>')
    if not isinstance(metrics, dict):
        return rep.Section("student", "Student model", f'<p class="hint">{rep.esc(METRICS)} is not a JSON object.</p>')
    return rep.Section("student", "Student model", rep.metrics_html(metrics, classes))
