"""report: one self-contained report.html of whatever artifacts the workspace holds.

It never runs another stage: each section appears when its artifact exists, and otherwise says
which command makes it. Only an empty workspace (no embeddings and no label issues) is an error.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelkit import __version__, artifacts
from labelkit import report as rep
from labelkit.config import ReportConfig
from labelkit.errors import MissingArtifactError
from labelkit.stages._common import RunContext, StageResult, now, stale_reason
from labelkit.workspace import Workspace, atomic_write

STAGE = "report"
REPORT = "report.html"
METRICS = "student/metrics.json"
THUMBNAIL_PX = 96
SNIPPET_CHARS = 220
SEED = 0  # the map's subsample is the same on every run
ISSUE_TYPES = {"label": "wrong label", "duplicate": "conflicting duplicate", "outlier": "outlier"}
_SECTIONS_META = re.compile(r'<meta name="labelkit:sections" content="([^"]*)">')


def run(ctx: RunContext, cfg: ReportConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws = ctx.ws
    have = {name: ws.path(name).exists() for name in (artifacts.SAMPLES, artifacts.EMBEDDINGS, artifacts.PROTOTYPES,
                                                      artifacts.PSEUDOLABELS, artifacts.LABEL_ISSUES, METRICS)}
    if (not have[artifacts.EMBEDDINGS] and not have[artifacts.LABEL_ISSUES]) or not have[artifacts.SAMPLES]:
        missing = artifacts.EMBEDDINGS if not have[artifacts.EMBEDDINGS] else artifacts.SAMPLES
        raise MissingArtifactError(f"{missing} not found in {ws.out}; nothing to report yet: run 'labelkit run {ws.data}' first")
    inputs = _input_fingerprints(ws, have)
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force)
    path = ws.path(REPORT)
    if reason is None:
        m = _SECTIONS_META.search(path.read_text(encoding="utf-8", errors="replace")[:20000])
        summary = {"path": str(path), "sections": m.group(1).split(",") if m and m.group(1) else [], "size_kb": round(path.stat().st_size / 1024, 1)}
        return StageResult(STAGE, skipped=True, reason="up to date", summary=summary, outputs=[REPORT])
    sections = build_sections(ws, cfg, have)
    included = [s.key for s in sections if s.present]
    title = cfg.title or f"labelkit report: {ws.data.resolve().name}"
    subtitle = f"dataset {ws.data} · workspace {ws.out} · {time.strftime('%Y-%m-%d %H:%M')}"
    doc = rep.page(title, sections, subtitle=subtitle, footer=f"labelkit {__version__} · a self-contained page: it opens offline, with no network",
                    meta={"labelkit:sections": ",".join(included)})
    with atomic_write(path, "wb") as f:
        f.write(doc.encode("utf-8"))
    ws.commit(STAGE, params=cfg.result_params(), params_fp=cfg.fingerprint(), inputs=inputs, outputs=[REPORT], started=started)
    summary = {
        "path": str(path),
        "sections": included,
        "missing": [s.key for s in sections if not s.present],
        "size_kb": round(path.stat().st_size / 1024, 1),
        "wall_time_s": round(now() - started, 2),
    }
    return StageResult(STAGE, reason=reason, summary=summary, outputs=[REPORT])


def _input_fingerprints(ws: Workspace, have: dict[str, bool]) -> dict[str, str]:
    """Fingerprints of what the report reads; samples by content, as every other stage records it."""
    out = {}
    for name, present in have.items():
        if not present:
            continue
        if name == artifacts.SAMPLES:
            out[name] = artifacts.read_metadata(ws.path(name)).get("content_fingerprint") or ws.fingerprint(name) or ""
        else:
            out[name] = ws.fingerprint(name) or ""
    return out


# -- sections -------------------------------------------------------------------------------


def build_sections(ws: Workspace, cfg: ReportConfig, have: dict[str, bool]) -> list[rep.Section]:
    """Every section in page order; missing artifacts give placeholders naming the command to run."""
    samples, meta = artifacts.read_samples(ws.path(artifacts.SAMPLES))
    classes = [str(c) for c in meta.get("classes") or sorted({str(v) for v in samples["label"].dropna()})]
    kind = meta.get("kind", "")
    issues = _read_issues(ws) if have[artifacts.LABEL_ISSUES] else None
    data = str(ws.data)
    out = [_dataset(samples, classes, kind)]
    out.append(_map(ws, cfg, samples, classes, issues) if have[artifacts.EMBEDDINGS]
               else rep.missing_section("map", "Embedding map", artifacts.EMBEDDINGS, f"labelkit embed {data}"))
    out.append(_prototypes(ws, classes) if have[artifacts.PROTOTYPES]
               else rep.missing_section("prototypes", "Prototypes", artifacts.PROTOTYPES, f"labelkit prototype {data}"))
    out.append(_pseudolabels(ws, classes) if have[artifacts.PSEUDOLABELS]
               else rep.missing_section("pseudolabels", "Pseudo-labels", artifacts.PSEUDOLABELS, f"labelkit pseudolabel {data}"))
    if issues is not None:
        out.append(_noise(ws, classes))
        out.append(_gallery(ws, cfg, samples, kind, issues))
    else:
        out.append(rep.missing_section("noise", "Noise matrix", artifacts.LABEL_ISSUES, f"labelkit detect-noise {data}"))
        out.append(rep.missing_section("issues", "Label issues", artifacts.LABEL_ISSUES, f"labelkit detect-noise {data}"))
    out.append(_student(ws, classes) if have[METRICS]
               else rep.missing_section("student", "Student model", METRICS, f"labelkit distill {data}"))
    return out


def _read_issues(ws: Workspace) -> pd.DataFrame:
    cols = ["id", "given_label", "suggested_label", "label_quality", "is_issue", "issue_type", "rank"]
    df = pq.read_table(ws.path(artifacts.LABEL_ISSUES), columns=cols).to_pandas()
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
    rows = rep.subsample(len(emb_ids), cfg.max_points, keep=is_issue, seed=SEED)
    proj = rep.project_2d(vecs[rows], seed=SEED)
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
    how = proj.method if proj.explained is None else f"{proj.method} (the two axes explain {proj.explained[0]:.0%} and {proj.explained[1]:.0%} of the variance)"
    lead = (f'<p class="lead">{rep.esc(shown)}, projected to 2-D by {rep.esc(how)}. Colour = given label; grey = unlabeled; '
            f'red ring = flagged label issue. Hover a point for its id; click a legend entry to hide it.</p>')
    return rep.Section("map", "Embedding map", lead + legend + rep.figure(svg))


def _prototypes(ws: Workspace, classes: list[str]) -> rep.Section:
    path = ws.path(artifacts.PROTOTYPES)
    t = pq.read_table(path, columns=["class", "support", "kind"]).to_pandas()
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
    t = pq.read_table(path, columns=["label", "confidence", "accepted"]).to_pandas()
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


def _gallery(ws: Workspace, cfg: ReportConfig, samples: pd.DataFrame, kind: str, issues: pd.DataFrame) -> rep.Section:
    flagged = issues[issues["is_issue"]]
    by_type = flagged["issue_type"].fillna("label").value_counts()
    stats = [("flagged", f"{len(flagged):,} of {len(issues):,}")] + [(ISSUE_TYPES.get(str(k), str(k)), f"{int(v):,}") for k, v in by_type.items()]
    body = rep.stat_cards(stats)
    if cfg.gallery == 0:
        return rep.Section("issues", "Label issues", body + '<p class="hint">The gallery is off (gallery = 0).</p>')
    top = flagged.head(cfg.gallery)
    source = dict(zip(samples["id"].astype(str), samples["source"]))
    items = []
    for r in top.itertuples(index=False):
        src = source.get(str(r.id))
        thumb = _thumbnail(ws.data, src) if kind == "image" and src else None
        text = str(src) if kind == "text" and src is not None else None
        items.append(rep.GalleryItem(rank=int(r.rank), id=str(r.id), given=str(r.given_label), suggested=str(r.suggested_label),
                                      quality=float(r.label_quality), issue_type=None if pd.isna(r.issue_type) else str(r.issue_type),
                                      thumbnail=thumb, text=text))
    more = f" (the {len(top)} most likely wrong of {len(flagged)})" if len(flagged) > len(top) else ""
    lead = (f'<p class="lead">Flagged samples, most likely wrong first{rep.esc(more)}: the given label struck through, '
            "then the label the evidence suggests; quality is low when the given label is likely wrong.</p>")
    return rep.Section("issues", "Label issues", body + lead + rep.gallery_html(items, snippet_chars=SNIPPET_CHARS))


def _thumbnail(data: Path, source: str) -> str | None:
    """The image at DATA/source as a small PNG data URI; None when it is unreadable or outside DATA."""
    from PIL import Image

    root = data.resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        return None
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))  # JPEG: decode at reduced size
            return rep.thumbnail_uri(im, size=THUMBNAIL_PX)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _student(ws: Workspace, classes: list[str]) -> rep.Section:
    path = ws.path(METRICS)
    try:
        metrics: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return rep.Section("student", "Student model", f'<p class="hint">{rep.esc(METRICS)} is unreadable ({rep.esc(e)}).</p>')
    if not isinstance(metrics, dict):
        return rep.Section("student", "Student model", f'<p class="hint">{rep.esc(METRICS)} is not a JSON object.</p>')
    return rep.Section("student", "Student model", rep.metrics_html(metrics, classes))
