"""The report's galleries: flagged samples, outliers, pseudo-labels by class and new classes, with
thumbnails (images) or snippets (texts) of the samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelkit import artifacts
from labelkit import report as rep
from labelkit import report_samples as samples_html
from labelkit.config import ReportConfig
from labelkit.workspace import Workspace

THUMBNAIL_PX = 96
TABLE_THUMBNAIL_PX = 48
TABLE_THUMBNAILS = 2000  # past this many rows the tables show ids only (about 1.5 KB of page per thumbnail)
PSEUDO_EXAMPLES = 4  # per group: most / least confident accepted, best rejected
DISCOVERY_EXAMPLES = 8  # per new cluster: its most confident members
PSEUDO_CLASSES = 100  # classes shown in the pseudo-label gallery (those with the most pseudo-labels)
SNIPPET_CHARS = 220
ISSUE_TYPES = {"label": "wrong label", "duplicate": "conflicting duplicate", "outlier": "outlier"}


def issue_gallery(cfg: ReportConfig, issues: pd.DataFrame, previews: Previews) -> rep.Section:
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


def outlier_gallery(ws: Workspace, issues: pd.DataFrame, previews: Previews) -> rep.Section:
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


def _issue_items(rows: pd.DataFrame, previews: Previews, *, size: int, limit: int | None = None) -> list[rep.GalleryItem]:
    items = []
    for i, r in enumerate(rows.itertuples(index=False)):
        thumb, text = previews.get(str(r.id), size=size, image=limit is None or i < limit)
        items.append(rep.GalleryItem(rank=int(r.rank), id=str(r.id), given=str(r.given_label), suggested=str(r.suggested_label),
                                     quality=float(r.label_quality), issue_type=None if pd.isna(r.issue_type) else str(r.issue_type),
                                     thumbnail=thumb, text=text))
    return items


class Previews:
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


def pseudo_gallery(ws: Workspace, classes: list[str], previews: Previews) -> rep.Section:
    path = ws.path(artifacts.PSEUDOLABELS)
    names = pq.read_schema(path).names
    t = artifacts.read_table(path, columns=["id", "label", "confidence", "accepted"] + (["reason"] if "reason" in names else [])).to_pandas()
    names_all = classes + sorted(set(t["label"].astype(str)) - set(classes))
    codes = label_codes(t["label"], names_all)
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


def discovery_gallery(ws: Workspace, previews: Previews) -> rep.Section:
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
    if summary.get("by_chance"):  # as many novel samples as the rule lets through with no new class
        lead = (f'<p class="lead">{summary.get("n_novel", 0)} unlabeled samples were judged novel, about '
                f'{float(summary.get("novel_expected_by_chance") or 0):.0f} would be among the known classes alone by chance '
                f'(p = {float(summary.get("novel_chance_p") or 0):.2f}): no evidence of a new class, so none was clustered. '
                "Each sample's score is the novelty column of pseudolabels.parquet.</p>")
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


def label_codes(labels: pd.Series, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([-1 if v is None or (isinstance(v, float) and np.isnan(v)) else index.get(str(v), -1) for v in labels], dtype=np.int64)
