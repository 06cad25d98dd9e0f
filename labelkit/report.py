"""The HTML report: pure builders from arrays to HTML/SVG strings (no files, no network).

Every chart is inline SVG written here; images are ``data:`` URIs; the page carries its own CSS
and a few lines of JavaScript, and a Content-Security-Policy that forbids any network fetch, so
``report.html`` opens the same offline, attached to an e-mail, or as a CI artifact.

Every user string (class names, ids, text snippets, the title) goes through :func:`esc`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelkit.errors import BadInputError

UNLABELED_COLOR = "#c3c7cc"
ISSUE_COLOR = "#d62728"
ACCEPT_COLOR = "#4e79a7"
ABSTAIN_COLOR = "#c3c7cc"
# Tableau-like categorical colours without red (kept for label issues) and grey (unlabeled).
_BASE_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#17becf", "#8cd17d")
_SERIES_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f")


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def class_colors(n_classes: int) -> list[str]:
    """One colour per class: a fixed palette up to 10 classes, evenly spread hues beyond."""
    if n_classes <= len(_BASE_COLORS):
        return list(_BASE_COLORS[:n_classes])
    # Golden-angle hues, alternating lightness, so neighbouring class indices stay apart.
    return [f"hsl({(210 + i * 137.508) % 360:.0f},{58 + 10 * (i % 2)}%,{44 + 10 * (i % 3 == 1)}%)" for i in range(n_classes)]


# -- numbers --------------------------------------------------------------------------------


def coverage_curve(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Share of samples whose confidence is >= each threshold (the coverage a fixed tau would give)."""
    c = np.sort(np.asarray(confidence, dtype=np.float64))
    if len(c) == 0:
        return np.zeros(len(thresholds))
    return 1.0 - np.searchsorted(c, thresholds, side="left") / len(c)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not np.isfinite(lo) or not np.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    t, out = math.ceil(lo / step - 1e-9) * step, []
    while t <= hi + 1e-9 * step:
        out.append(round(t, 10))
        t += step
    return out


def _fmt_tick(t: float) -> str:
    return f"{t:g}" if abs(t) < 1e5 else f"{t:.0e}"


def _f(v: float) -> str:
    """A coordinate with one decimal (keeps the page small)."""
    return f"{v:.1f}".rstrip("0").rstrip(".")


# -- SVG charts -----------------------------------------------------------------------------


@dataclass
class _Frame:
    """A plot area inside an SVG and the data ranges mapped onto it."""

    x0: float
    x1: float
    y0: float
    y1: float
    left: float
    top: float
    width: float
    height: float

    def sx(self, v):
        return self.left + (np.asarray(v, dtype=float) - self.x0) / ((self.x1 - self.x0) or 1) * self.width

    def sy(self, v):
        return self.top + self.height - (np.asarray(v, dtype=float) - self.y0) / ((self.y1 - self.y0) or 1) * self.height

    def axes(self, xticks: Iterable[float], yticks: Iterable[float], xlabel: str, ylabel: str, *, xfmt=_fmt_tick, yfmt=_fmt_tick) -> list[str]:
        out = []
        bottom = self.top + self.height
        for t in yticks:
            y = float(self.sy(t))
            out.append(f'<line class="grid" x1="{_f(self.left)}" x2="{_f(self.left + self.width)}" y1="{_f(y)}" y2="{_f(y)}"/>')
            out.append(f'<text class="tick" x="{_f(self.left - 6)}" y="{_f(y + 4)}" text-anchor="end">{esc(yfmt(t))}</text>')
        for t in xticks:
            x = float(self.sx(t))
            out.append(f'<line class="axis" x1="{_f(x)}" x2="{_f(x)}" y1="{_f(bottom)}" y2="{_f(bottom + 4)}"/>')
            out.append(f'<text class="tick" x="{_f(x)}" y="{_f(bottom + 17)}" text-anchor="middle">{esc(xfmt(t))}</text>')
        out.append(f'<line class="axis" x1="{_f(self.left)}" x2="{_f(self.left + self.width)}" y1="{_f(bottom)}" y2="{_f(bottom)}"/>')
        out.append(f'<text class="label" x="{_f(self.left + self.width / 2)}" y="{_f(bottom + 34)}" text-anchor="middle">{esc(xlabel)}</text>')
        cy = self.top + self.height / 2
        out.append(f'<text class="label" x="14" y="{_f(cy)}" text-anchor="middle" transform="rotate(-90 14 {_f(cy)})">{esc(ylabel)}</text>')
        return out


def _svg(width: float, height: float, body: Iterable[str], *, label: str, cls: str = "chart") -> str:
    return (f'<svg class="{cls}" viewBox="0 0 {_f(width)} {_f(height)}" width="{_f(width)}" height="{_f(height)}" role="img" '
            f'aria-label="{esc(label)}">' + "".join(body) + "</svg>")


def bar_chart_svg(names: Sequence[str], values: Sequence[float], *, label: str, value_format: str = "{:g}",
                  colors: Sequence[str] | None = None, max_rows: int = 40, width: int = 560) -> str:
    """Horizontal bars, one per name (the ``max_rows`` largest when there are more), values printed at the ends."""
    vals = np.asarray(values, dtype=float)
    names = [str(n) for n in names]
    if len(names) != len(vals):
        raise BadInputError(f"'names' and 'values' must have the same length. Got {len(names)} and {len(vals)} instead.")
    cols = list(colors) if colors is not None else [ACCEPT_COLOR] * len(names)
    rows = np.arange(len(names))
    hidden = 0
    if len(rows) > max_rows:
        rows = np.sort(np.argsort(-np.nan_to_num(vals, nan=-np.inf), kind="stable")[:max_rows])
        hidden = len(names) - max_rows
    name_w = min(180, 12 + 7 * max((len(names[i]) for i in rows), default=1))
    bar_h, gap, top = 16, 6, 6
    height = top + len(rows) * (bar_h + gap) + (22 if hidden else 4)
    plot_w = width - name_w - 70
    vmax = float(np.nanmax(vals[rows])) if len(rows) and np.isfinite(np.nanmax(vals[rows])) else 0.0
    vmax = vmax if vmax > 0 else 1.0
    out = []
    for r, i in enumerate(rows):
        y = top + r * (bar_h + gap)
        v = vals[i]
        w = 0.0 if not np.isfinite(v) else max(0.0, v) / vmax * plot_w
        shown = "n/a" if not np.isfinite(v) else value_format.format(v)
        out.append(f'<text class="tick" x="{name_w - 8}" y="{_f(y + bar_h - 4)}" text-anchor="end">{esc(_short(names[i], 24))}</text>')
        out.append(f'<rect x="{name_w}" y="{_f(y)}" width="{_f(w)}" height="{bar_h}" rx="2" fill="{esc(cols[i])}">'
                   f'<title>{esc(names[i])}: {esc(shown)}</title></rect>')
        out.append(f'<text class="value" x="{_f(name_w + w + 6)}" y="{_f(y + bar_h - 4)}">{esc(shown)}</text>')
    if hidden:
        out.append(f'<text class="note" x="{name_w}" y="{_f(height - 6)}">… and {hidden} more (the {max_rows} largest are shown)</text>')
    return _svg(width, height, out, label=label)


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def scatter_svg(xy: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, issues: np.ndarray | None = None,
                titles: Sequence[str] | None = None, uid: str = "map", width: int = 1000, height: int = 620) -> str:
    """Points coloured by class (label -1 = unlabeled, grey, drawn underneath), label issues ringed in red.

    Parameters
    ----------
    xy : ndarray of shape (n, 2)
    labels : ndarray of shape (n,), int; -1 = unlabeled
    classes : list of str, the class names ``labels`` index
    issues : ndarray of shape (n,), bool, default=None
    titles : list of str of length n, default=None
        Hover text per point (e.g. the sample id).
    uid : str, default="map"
        Prefix of the SVG group ids that the legend toggles.
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(xy)
    if labels.shape != (n,):
        raise BadInputError(f"'labels' must have shape ({n},). Got {labels.shape!r} instead.")
    if n and labels.max() >= len(classes):
        raise BadInputError(f"'labels' must be < {len(classes)} (the number of classes). Got {int(labels.max())!r} instead.")
    issues = np.zeros(n, bool) if issues is None else np.asarray(issues, bool)
    pad = 14
    if n:
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        scale = min((width - 2 * pad) / span[0], (height - 2 * pad) / span[1])  # equal aspect: distances are honest
        off = (np.array([width, height]) - span * scale) / 2
        px = (xy - lo) * scale + off
        px[:, 1] = height - px[:, 1]
    else:
        px = xy
    r = 2.6 if n > 2000 else 3.4 if n > 300 else 4.5
    colors = class_colors(len(classes))

    def circles(rows: np.ndarray, extra: str = "") -> str:
        parts = []
        for i in rows:
            t = f"<title>{esc(titles[i])}</title>" if titles is not None else ""
            parts.append(f'<circle cx="{_f(px[i, 0])}" cy="{_f(px[i, 1])}" r="{r}"{extra}>{t}</circle>')
        return "".join(parts)

    out = [f'<rect x="0" y="0" width="{width}" height="{height}" class="plotbg"/>']
    unl = np.flatnonzero(labels < 0)
    out.append(f'<g id="{esc(uid)}-unlabeled" fill="{UNLABELED_COLOR}" fill-opacity="0.55">{circles(unl)}</g>')
    for k in range(len(classes)):
        rows = np.flatnonzero(labels == k)
        if len(rows):
            out.append(f'<g id="{esc(uid)}-c{k}" fill="{colors[k]}" fill-opacity="0.85">{circles(rows)}</g>')
    ring = np.flatnonzero(issues)
    if len(ring):
        out.append(f'<g id="{esc(uid)}-issues" fill="none" stroke="{ISSUE_COLOR}" stroke-width="1.6">'
                   + circles(ring).replace(f'r="{r}"', f'r="{r + 3}"') + "</g>")
    if not n:
        out.append(f'<text class="note" x="{width / 2}" y="{height / 2}" text-anchor="middle">no points</text>')
    return _svg(width, height, out, label="2-D map of the embeddings", cls="chart map")


def legend_html(classes: Sequence[str], counts: Sequence[int], *, n_unlabeled: int = 0, n_issues: int = 0, uid: str = "map") -> str:
    """Clickable legend of :func:`scatter_svg` (click hides or shows a class)."""
    colors = class_colors(len(classes))
    items = []
    for k, (c, n) in enumerate(zip(classes, counts)):
        if n:
            items.append(f'<button type="button" class="key" data-toggle="{esc(uid)}-c{k}"><span class="sw" style="background:{colors[k]}"></span>'
                         f'{esc(c)} <span class="n">{int(n)}</span></button>')
    if n_unlabeled:
        items.append(f'<button type="button" class="key" data-toggle="{esc(uid)}-unlabeled"><span class="sw" style="background:{UNLABELED_COLOR}"></span>'
                     f'unlabeled <span class="n">{int(n_unlabeled)}</span></button>')
    if n_issues:
        items.append(f'<button type="button" class="key" data-toggle="{esc(uid)}-issues"><span class="sw ring"></span>'
                     f'label issue <span class="n">{int(n_issues)}</span></button>')
    return '<div class="legend">' + "".join(items) + "</div>"


def histogram_svg(values: np.ndarray, *, split: np.ndarray | None = None, split_names: tuple[str, str] = ("accepted", "abstained"),
                  bins: int = 20, value_range: tuple[float, float] = (0.0, 1.0), xlabel: str = "confidence",
                  label: str = "histogram", width: int = 520, height: int = 260) -> str:
    """Vertical histogram; with ``split`` (bool per value) the bars are stacked: true part, then false part."""
    v = np.asarray(values, dtype=float)
    split = np.ones(len(v), bool) if split is None else np.asarray(split, bool)
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    h_true = np.histogram(v[split], bins=edges)[0]
    h_false = np.histogram(v[~split], bins=edges)[0]
    total = h_true + h_false
    ymax = max(int(total.max()) if len(total) else 0, 1)
    yt = _nice_ticks(0, ymax, 4)
    fr = _Frame(edges[0], edges[-1], 0, max(yt[-1], ymax), 52, 12, width - 66, height - 58)
    out = fr.axes(_nice_ticks(edges[0], edges[-1], 5), yt, xlabel, "samples", yfmt=lambda t: f"{t:g}")
    for b in range(bins):
        x, w = float(fr.sx(edges[b])) + 0.5, float(fr.sx(edges[b + 1]) - fr.sx(edges[b])) - 1
        for lo, n, color, name in ((0, h_true[b], ACCEPT_COLOR, split_names[0]), (h_true[b], h_false[b], ABSTAIN_COLOR, split_names[1])):
            if n:
                y_top, y_bot = float(fr.sy(lo + n)), float(fr.sy(lo))
                out.append(f'<rect x="{_f(x)}" y="{_f(y_top)}" width="{_f(w)}" height="{_f(y_bot - y_top)}" fill="{color}">'
                           f'<title>{edges[b]:.2f}–{edges[b + 1]:.2f}: {int(n)} {esc(name)}</title></rect>')
    return _svg(width, height, out, label=label)


def line_chart_svg(x: np.ndarray, series: Mapping[str, np.ndarray], *, xlabel: str, ylabel: str, label: str,
                   y_range: tuple[float, float] | None = None, vline: float | None = None,
                   point: tuple[float, float, str] | None = None, percent: bool = False, width: int = 520, height: int = 260) -> str:
    """Lines over a shared x; NaN breaks a line. ``vline``: a dashed marker at that x; ``point`` = (x, y, caption)."""
    x = np.asarray(x, dtype=float)
    ys = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    finite = np.concatenate([y[np.isfinite(y)] for y in ys.values()] + [np.zeros(0)])
    if y_range is None:
        lo = float(finite.min()) if len(finite) else 0.0
        hi = float(finite.max()) if len(finite) else 1.0
        lo = min(lo, 0.0) if lo >= 0 and lo < 0.5 * hi else lo
        y_range = (lo, hi if hi > lo else lo + 1)
    yt = _nice_ticks(*y_range, 4)
    xt = _nice_ticks(float(x.min()) if len(x) else 0, float(x.max()) if len(x) else 1, 5)
    legend_h = 18 if len(ys) > 1 else 0
    fr = _Frame(min(xt[0], x.min()) if len(x) else 0, max(xt[-1], x.max()) if len(x) else 1, min(yt[0], y_range[0]), max(yt[-1], y_range[1]),
                52, 12 + legend_h, width - 70, height - 58 - legend_h)
    fmt = (lambda t: f"{t:.0%}") if percent else _fmt_tick
    out = fr.axes(xt, yt, xlabel, ylabel, yfmt=fmt)
    for j, (name, y) in enumerate(ys.items()):
        color = _SERIES_COLORS[j % len(_SERIES_COLORS)]
        seg: list[str] = []
        segs: list[list[str]] = [seg]
        for xi, yi in zip(x, y):
            if np.isfinite(yi):
                seg.append(f"{_f(fr.sx(xi))},{_f(fr.sy(yi))}")
            elif seg:
                seg = []
                segs.append(seg)
        for s in segs:
            if len(s) > 1:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(s)}"/>')
            elif len(s) == 1:
                cx, cy = s[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
        if len(ys) > 1:
            lx = fr.left + 8 + j * 130
            out.append(f'<line x1="{_f(lx)}" x2="{_f(lx + 18)}" y1="10" y2="10" stroke="{color}" stroke-width="2.5"/>'
                       f'<text class="tick" x="{_f(lx + 24)}" y="14">{esc(name)}</text>')
    if vline is not None:
        vx = float(fr.sx(vline))
        out.append(f'<line class="marker" x1="{_f(vx)}" x2="{_f(vx)}" y1="{_f(fr.top)}" y2="{_f(fr.top + fr.height)}"/>')
    if point is not None:
        px, py = float(fr.sx(point[0])), float(fr.sy(point[1]))
        anchor = "end" if px > fr.left + fr.width * 0.6 else "start"
        dx = -8 if anchor == "end" else 8
        out.append(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="4.5" fill="{ISSUE_COLOR}"/>'
                   f'<text class="callout" x="{_f(px + dx)}" y="{_f(py - 8)}" text-anchor="{anchor}">{esc(point[2])}</text>')
    return _svg(width, height, out, label=label)


def _heat_color(v: float) -> str:
    """White to deep blue; sqrt so that small off-diagonal rates stay visible."""
    t = math.sqrt(min(max(v, 0.0), 1.0)) if np.isfinite(v) else 0.0
    lo, hi = (247, 251, 255), (8, 48, 107)
    r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(matrix: np.ndarray, classes: Sequence[str], *, row_title: str, col_title: str, label: str) -> str:
    """A K x K matrix of values in [0, 1] as coloured cells, values printed when the cells are big enough."""
    m = np.asarray(matrix, dtype=float)
    k = len(classes)
    if m.shape != (k, k):
        raise BadInputError(f"'matrix' must have shape ({k}, {k}). Got {m.shape!r} instead.")
    cell = max(6.0, min(44.0, 560.0 / max(k, 1)))
    name_w = min(150, 14 + 7 * max((len(str(c)) for c in classes), default=1)) if cell >= 12 else 30
    left, top = name_w + 22, name_w + 26 if cell >= 12 else 40
    width, height = left + k * cell + 10, top + k * cell + 10
    out = [f'<text class="label" x="{_f(left + k * cell / 2)}" y="14" text-anchor="middle">{esc(col_title)}</text>',
           f'<text class="label" x="14" y="{_f(top + k * cell / 2)}" text-anchor="middle" transform="rotate(-90 14 {_f(top + k * cell / 2)})">{esc(row_title)}</text>']
    show_names = cell >= 12
    for j, c in enumerate(classes):
        if show_names:
            cx = left + (j + 0.5) * cell
            out.append(f'<text class="tick" x="{_f(cx + 4)}" y="{_f(top - 6)}" transform="rotate(-60 {_f(cx + 4)} {_f(top - 6)})">{esc(_short(str(c), 18))}</text>')
            out.append(f'<text class="tick" x="{_f(left - 6)}" y="{_f(top + (j + 0.5) * cell + 4)}" text-anchor="end">{esc(_short(str(c), 18))}</text>')
    for i in range(k):
        for j in range(k):
            v = m[i, j]
            x, y = left + j * cell, top + i * cell
            out.append(f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(cell)}" height="{_f(cell)}" fill="{_heat_color(v)}" stroke="#fff" stroke-width="0.5">'
                       f'<title>{esc(row_title)} {esc(classes[i])}, {esc(col_title)} {esc(classes[j])}: {v:.3f}</title></rect>')
            if cell >= 26 and np.isfinite(v) and v >= 0.005:
                ink = "#fff" if math.sqrt(max(v, 0)) > 0.55 else "#222"
                out.append(f'<text x="{_f(x + cell / 2)}" y="{_f(y + cell / 2 + 4)}" text-anchor="middle" class="cell" fill="{ink}">{v:.0%}</text>')
    return _svg(width, height, out, label=label)


# -- images ---------------------------------------------------------------------------------


def thumbnail_uri(image, *, size: int = 96) -> str:
    """A PIL image as a ``data:image/png;base64`` URI, downscaled to fit ``size`` x ``size`` (never upscaled)."""
    if size < 1:
        raise BadInputError(f"'size' must be >= 1. Got {size!r} instead.")
    im = image.copy()
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- HTML pieces ----------------------------------------------------------------------------


def stat_cards(items: Sequence[tuple[str, Any]]) -> str:
    """A row of big-number cards: (caption, value)."""
    cards = "".join(f'<div class="stat"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in items)
    return f'<div class="stats">{cards}</div>'


def figure(svg: str, caption: str = "") -> str:
    """An SVG with a caption; ``caption`` is HTML, so escape user strings in it with :func:`esc`."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure>{svg}{cap}</figure>'


@dataclass(frozen=True)
class GalleryItem:
    """One label issue in the gallery; ``thumbnail`` is a data: URI, ``text`` a snippet (either may be None)."""

    rank: int
    id: str
    given: str
    suggested: str
    quality: float
    issue_type: str | None = None
    thumbnail: str | None = None
    text: str | None = None


def snippet(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters, an ellipsis marking the cut."""
    return text if len(text) <= n else text[: n - 1] + "…"


def media_html(thumbnail: str | None, text: str | None, *, alt: str, snippet_chars: int = 220, expandable: bool = False) -> str:
    """A sample's preview: its thumbnail (a data:image URI), else a text snippet, else "no preview".

    ``expandable``: a longer text becomes a ``<details>`` whose summary is the snippet and whose body
    is the full text, so nothing is out of reach.
    """
    if thumbnail is not None:
        if not thumbnail.startswith("data:image/"):
            raise BadInputError(f"'thumbnail' must be a data:image URI. Got {thumbnail[:30]!r} instead.")
        return f'<img src="{esc(thumbnail)}" alt="{esc(alt)}">'
    if text is not None:
        short = snippet(text, snippet_chars)
        if expandable and short != text:
            return f'<details class="fulltext"><summary>{esc(short)}</summary><blockquote>{esc(text)}</blockquote></details>'
        return f'<blockquote>{esc(short)}</blockquote>'
    return '<div class="noimg">no preview</div>'


def gallery_html(items: Sequence[GalleryItem], *, snippet_chars: int = 220) -> str:
    """Cards of label issues: thumbnail or text snippet, given and suggested label, quality, type."""
    if not items:
        return '<p class="hint">No sample is flagged as a label issue.</p>'
    cards = []
    for it in items:
        media = media_html(it.thumbnail, it.text, alt=it.id, snippet_chars=snippet_chars)
        kind = f'<span class="badge {esc(it.issue_type)}">{esc(it.issue_type)}</span>' if it.issue_type else ""
        same = it.given == it.suggested
        change = (f'<span class="given">{esc(it.given)}</span>' if same else
                  f'<span class="given">{esc(it.given)}</span> <span class="arrow">→</span> <span class="sugg">{esc(it.suggested)}</span>')
        cards.append(
            f'<div class="tile"><div class="media">{media}</div>'
            f'<div class="meta"><div class="rank">#{int(it.rank)} {kind}</div>'
            f'<div class="change" title="given → suggested">{change}</div>'
            f'<div class="q">quality {it.quality:.3f}</div>'
            f'<div class="id" title="{esc(it.id)}">{esc(it.id)}</div></div></div>'
        )
    return '<div class="gallery">' + "".join(cards) + "</div>"


_PERCENT_KEYS = {"accuracy", "macro_f1", "val_accuracy", "val_acc", "val_macro_f1", "coverage"}
_METRIC_NAMES = {
    "accuracy": "held-out accuracy", "macro_f1": "macro-F1", "ece": "ECE (calibration error)", "n_val": "held-out samples",
    "n_trusted": "trusted labels", "n_pseudo": "pseudo-labels used", "n_dropped_issues": "issues dropped",
    "n_set_aside": "labels set aside by the student",
    "val_accuracy": "val accuracy", "val_macro_f1": "val macro-F1", "val_ece": "val ECE", "epochs_run": "epochs", "best_epoch": "best epoch",
}


def _metric_value(key: str, v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v).lower()
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "n/a"
        return f"{v:.1%}" if key in _PERCENT_KEYS else f"{v:.4g}"
    return _short(str(v), 40)


def find_curve(metrics: Mapping[str, Any]) -> dict[str, list[float]]:
    """Training curves in a metrics dict, wherever they are: ``curve``, the last of ``rounds``, or top level."""
    candidates: list[Mapping[str, Any]] = []
    if isinstance(metrics.get("curve"), Mapping):
        candidates.append(metrics["curve"])
    rounds = metrics.get("rounds")
    if isinstance(rounds, list) and rounds and isinstance(rounds[-1], Mapping) and isinstance(rounds[-1].get("curve"), Mapping):
        candidates.append(rounds[-1]["curve"])
    candidates.append(metrics)
    for c in candidates:
        found = {k: [float("nan") if x is None else float(x) for x in c[k]]
                 for k in ("train_loss", "val_loss", "val_accuracy", "val_acc") if _is_series(c.get(k))}
        found = {k: v for k, v in found.items() if np.isfinite(v).any()}
        if found:
            return found
    return {}


def _is_series(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(x is None or isinstance(x, (int, float)) for x in v)


def metrics_html(metrics: Mapping[str, Any], classes: Sequence[str] | None = None) -> str:
    """The student's metrics: headline numbers, per-class accuracy, and the training curves; shows what is there."""
    order = ["accuracy", "macro_f1", "ece", "n_val", "n_trusted", "n_pseudo", "n_dropped_issues", "n_set_aside"]
    scalars = [(k, metrics[k]) for k in order if isinstance(metrics.get(k), (int, float, str, bool))]
    scalars += [(k, v) for k, v in metrics.items() if k not in order and isinstance(v, (int, float, str, bool))]
    parts = []
    if scalars:
        parts.append(stat_cards([(_METRIC_NAMES.get(k, k.replace("_", " ")), _metric_value(k, v)) for k, v in scalars[:12]]))
    if "accuracy" in metrics and metrics["accuracy"] is None:
        parts.append('<p class="hint">No held-out labels were left for evaluation, so accuracy, macro-F1 and ECE were not measured.</p>')
    figs = []
    pca = metrics.get("per_class_accuracy")
    if isinstance(pca, Mapping) and pca:
        names = list(pca) if classes is None else [c for c in classes if c in pca] + [c for c in pca if c not in set(classes)]
        vals = [float("nan") if pca[c] is None else float(pca[c]) for c in names]
        figs.append(figure(bar_chart_svg(names, vals, label="per-class accuracy", value_format="{:.0%}"), "Held-out accuracy per class."))
    curve = find_curve(metrics)
    if curve:
        losses = {k: v for k, v in curve.items() if "loss" in k}
        accs = {k: v for k, v in curve.items() if "acc" in k}
        if losses:
            n = max(len(v) for v in losses.values())
            padded = {k.replace("_", " "): list(v) + [float("nan")] * (n - len(v)) for k, v in losses.items()}
            figs.append(figure(line_chart_svg(np.arange(1, n + 1), padded, xlabel="epoch", ylabel="loss", label="training curve"),
                               "Loss per epoch (the last self-training round)."))
        if accs:
            name, v = next(iter(accs.items()))
            figs.append(figure(line_chart_svg(np.arange(1, len(v) + 1), {name.replace("_", " "): v}, xlabel="epoch", ylabel="accuracy", label="validation accuracy",
                                              y_range=(_acc_floor(v), 1.0), percent=True),
                               "Validation accuracy per epoch."))
    if figs:
        parts.append('<div class="grid2">' + "".join(figs) + "</div>")
    if not parts:
        parts.append('<p class="hint">metrics.json holds no numbers this report knows how to show.</p>')
    return "".join(parts)


def _acc_floor(v: Sequence[float]) -> float:
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    return 0.0 if not len(a) else max(0.0, math.floor(a.min() * 10) / 10)


# -- warnings and the embedder ---------------------------------------------------------------


def warnings_banner_html(warnings: Sequence[Mapping[str, Any]]) -> str:
    """The yellow banner atop the page: each warning's stage, message and hint (see labelkit.health).

    ``warnings`` are ``{stage, code, message, hint}`` dicts; none gives a one-line "no warnings" note.
    """
    if not warnings:
        return '<p class="nowarn" id="warnings">No stage reported a warning.</p>'
    items = []
    for w in warnings:
        hint = f'<div class="hint">try: {esc(w.get("hint"))}</div>' if w.get("hint") else ""
        items.append(f'<li data-code="{esc(w.get("code", ""))}"><b class="stage">{esc(w.get("stage", "?"))}</b> '
                     f'<span class="msg">{esc(w.get("message", ""))}</span>{hint}</li>')
    n = len(warnings)
    return (f'<div class="banner" id="warnings" role="alert"><div class="title">⚠ {n} warning{"s" if n != 1 else ""}: '
            f'results below may be doubtful</div><ul>{"".join(items)}</ul></div>')


def embedder_html(model: str, *, dim: int | None = None, choice: Mapping[str, Any] | None = None,
                  separation: Mapping[str, Any] | None = None) -> str:
    """The embedder in use and, when ``--model auto`` chose it, every candidate's score (best first).

    ``choice`` = ``{"chosen", "by", "scores": {spec: {"score", "n", "seconds"}}}``; ``separation`` =
    ``{"knn_accuracy", "chance", "k", "n"}``. Either may be None (an older or hand-named embedding).
    """
    stats: list[tuple[str, Any]] = [("embedder", model)]
    if dim:
        stats.append(("dimensions", f"{int(dim):,}"))
    if separation and isinstance(separation.get("knn_accuracy"), (int, float)):
        chance = separation.get("chance")
        stats.append(("kNN accuracy" + (f" (chance {chance:.2f})" if isinstance(chance, (int, float)) else ""), f"{separation['knn_accuracy']:.1%}"))
    parts = [stat_cards(stats)]
    scores = (choice or {}).get("scores") if isinstance(choice, Mapping) else None
    if not isinstance(scores, Mapping) or not scores:
        parts.append('<p class="hint">The embedder was named (not chosen by <code>--model auto</code>), so no candidates were scored.</p>')
        return "".join(parts)
    chosen = choice.get("chosen", model)

    def num(v: Any, fmt: str) -> str:
        return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else "n/a"

    def key(item: tuple[str, Any]) -> float:
        v = item[1].get("score") if isinstance(item[1], Mapping) else None
        return -v if isinstance(v, (int, float)) and np.isfinite(v) else np.inf

    rows = []
    for spec, sc in sorted(scores.items(), key=key):
        sc = sc if isinstance(sc, Mapping) else {}
        mark = ' class="chosen"' if spec == chosen else ""
        score = sc.get("score")
        bar = f'<span class="bar" style="width:{max(0.0, min(1.0, score)) * 100:.0f}px"></span>' if isinstance(score, (int, float)) and np.isfinite(score) else ""
        rows.append(f'<tr{mark}><td>{esc(spec)}{" ✓ chosen" if spec == chosen else ""}</td><td class="num">{bar}{num(score, "{:.3f}")}</td>'
                    f'<td class="num">{num(sc.get("n"), "{:,}")}</td><td class="num">{num(sc.get("seconds"), "{:.1f} s")}</td></tr>')
    by = f' Scored by {esc(choice["by"])}.' if choice.get("by") else ""
    parts.append(f'<p class="lead"><code>--model auto</code> compared {len(scores)} candidate{"s" if len(scores) != 1 else ""}.{by}</p>'
                 '<table class="data scores"><thead><tr><th>candidate</th><th>score</th><th>samples</th><th>time</th></tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>')
    return "".join(parts)


# -- the page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One part of the report; ``body`` is HTML built from escaped pieces. ``present=False``: its artifact
    is missing and ``body`` says what to run."""

    key: str
    title: str
    body: str
    present: bool = True
    facts: Mapping[str, Any] | None = None  # machine-readable results (the map's projection), for the stage summary


def missing_section(key: str, title: str, artifact: str, command: str) -> Section:
    """A placeholder: which artifact is missing and the command that makes it."""
    body = f'<p class="hint">No <code>{esc(artifact)}</code> in the workspace yet: run <code>{esc(command)}</code>, then <code>labelkit report</code> again.</p>'
    return Section(key, title, body, present=False)


_CSS = """
:root{--ink:#1f2328;--muted:#59636e;--line:#d8dee4;--bg:#f6f8fa;--card:#fff;--accent:#4e79a7;--issue:#d62728}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#24292f;color:#fff;padding:22px 32px 14px}
header h1{margin:0 0 4px;font-size:24px;font-weight:600}
header .sub{margin:0 0 10px;color:#c9d1d9;font-size:13px}
nav a{color:#c9d1d9;text-decoration:none;margin-right:16px;font-size:13px;white-space:nowrap}
nav a:hover{color:#fff}
nav a.off{color:#8b949e;text-decoration:line-through}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:18px 22px;margin:0 0 18px}
section h2{margin:0 0 12px;font-size:18px;font-weight:600}
section.missing{background:transparent;border-style:dashed}
section.missing h2{color:var(--muted)}
p.hint,.note{color:var(--muted);font-size:13px}
p.lead{margin:0 0 12px;color:var(--muted);font-size:14px}
code{background:#eff1f3;padding:1px 5px;border-radius:4px;font-size:13px}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin:0 0 14px}
.stat{border:1px solid var(--line);border-radius:6px;padding:8px 14px;min-width:120px}
.stat .v{font-size:22px;font-weight:600}
.stat .k{color:var(--muted);font-size:12px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px 24px;align-items:start}
figure{margin:0}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
svg.chart{max-width:100%;height:auto;display:block}
svg.map{width:100%}
svg text{font-family:inherit}
svg .tick{font-size:11px;fill:#57606a}
svg .value{font-size:11px;fill:#24292f}
svg .label{font-size:12px;fill:#24292f}
svg .note{font-size:11px;fill:#57606a}
svg .cell{font-size:10px}
svg .callout{font-size:12px;fill:var(--issue);font-weight:600}
svg .grid{stroke:#eaeef2;stroke-width:1}
svg .axis{stroke:#8c959f;stroke-width:1}
svg .marker{stroke:var(--issue);stroke-width:1.5;stroke-dasharray:4 3}
svg .plotbg{fill:#fbfcfd;stroke:var(--line)}
svg g.off{display:none}
.legend{display:flex;flex-wrap:wrap;gap:6px;margin:10px 0 4px}
.key{font:inherit;font-size:13px;border:1px solid var(--line);background:#fff;border-radius:14px;padding:2px 10px 2px 6px;cursor:pointer;color:var(--ink)}
.key:hover{border-color:#8c959f}
.key.off{opacity:.4;text-decoration:line-through}
.key .n{color:var(--muted);font-size:12px}
.sw{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:5px;vertical-align:-1px}
.sw.ring{border:2px solid var(--issue);background:transparent}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.tile{border:1px solid var(--line);border-radius:6px;overflow:hidden;background:#fff}
.tile .media{height:110px;display:flex;align-items:center;justify-content:center;background:#f0f2f4}
.tile img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated}
.tile blockquote{margin:0;padding:8px;font-size:12px;line-height:1.35;max-height:110px;overflow:hidden;align-self:stretch;background:#fff}
.tile .noimg{color:var(--muted);font-size:12px}
.tile .meta{padding:6px 8px 8px;font-size:13px}
.tile .rank{color:var(--muted);font-size:12px}
.tile .change{font-weight:600}
.tile .given{color:var(--issue);text-decoration:line-through}
.tile .arrow{color:var(--muted)}
.tile .sugg{color:#1a7f37}
.tile .q{color:var(--muted);font-size:12px}
.tile .id{color:var(--muted);font-size:11px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.badge{display:inline-block;font-size:11px;border-radius:8px;padding:0 6px;background:#fde2e1;color:#a40e26;margin-left:4px}
.badge.duplicate{background:#fff1c2;color:#7d4e00}
.badge.outlier{background:#ddf4ff;color:#0550ae}
.banner{background:#fff8c5;border:1px solid #d4a72c;border-radius:8px;padding:12px 18px;margin:0 0 18px}
.banner .title{font-weight:600;color:#7d4e00;margin-bottom:4px}
.banner ul{margin:0;padding-left:20px}
.banner li{margin:6px 0}
.banner .stage{color:#7d4e00;margin-right:4px}
.banner .hint{color:var(--muted);font-size:13px}
.nowarn{color:var(--muted);font-size:13px;margin:0 0 12px}
table.data{border-collapse:collapse;font-size:13px;width:100%}
table.data th{text-align:left;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);padding:4px 8px;position:sticky;top:0;background:#fff}
table.data td{border-bottom:1px solid #eef1f4;padding:4px 8px;vertical-align:middle}
table.data td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
table.data tr.chosen td{font-weight:600}
table.data img{width:40px;height:40px;object-fit:contain;image-rendering:pixelated;background:#f0f2f4}
table.data blockquote{margin:0;font-size:12px;max-width:520px}
table.scores{width:auto;min-width:460px}
.bar{display:inline-block;height:9px;background:var(--accent);border-radius:2px;margin-right:8px;vertical-align:0}
.scroll{max-height:640px;overflow:auto;border:1px solid var(--line);border-radius:6px}
.filter{margin:0 0 8px;font-size:13px;color:var(--muted)}
.filter select{font:inherit;margin:0 12px 0 4px}
details.fulltext summary{cursor:pointer}
details.fulltext blockquote{background:#f6f8fa;padding:6px;margin:4px 0 0}
.pclass{margin:0 0 14px}
.pclass h3{font-size:15px;margin:6px 0}
.pclass h3 .n{color:var(--muted);font-weight:400;font-size:13px}
.pgroups{display:grid;grid-template-columns:repeat(3,1fr);gap:10px}
.pgroup .cap{color:var(--muted);font-size:12px;margin-bottom:4px}
.pgroup .gallery{grid-template-columns:repeat(4,minmax(0,1fr));gap:5px}
.pgroup .tile .media{height:62px}
.pgroup .tile img{width:56px;height:56px}
.pgroup .tile blockquote{max-height:62px;font-size:11px;padding:4px}
.pgroup .tile .meta{padding:2px 4px 4px;font-size:11px}
.pgroup .tile .q,.pgroup .tile .id{font-size:10px}
.pgroup.rejected .tile{border-style:dashed}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 28px}
"""

_JS = """
(function(){
  document.querySelectorAll('[data-toggle]').forEach(function(btn){
    btn.addEventListener('click', function(){
      var g = document.getElementById(btn.getAttribute('data-toggle'));
      if (!g) { return; }
      var off = g.classList.toggle('off');
      btn.classList.toggle('off', off);
    });
  });
  document.querySelectorAll('select[data-filter]').forEach(function(sel){
    sel.addEventListener('change', function(){
      var table = document.getElementById(sel.getAttribute('data-filter'));
      var shown = 0;
      table.querySelectorAll('tbody tr').forEach(function(tr){
        var ok = true;
        document.querySelectorAll('select[data-filter="' + table.id + '"]').forEach(function(s){
          if (s.value && tr.getAttribute('data-' + s.getAttribute('data-col')) !== s.value) { ok = false; }
        });
        tr.hidden = !ok;
        if (ok) { shown += 1; }
      });
      var count = document.getElementById(table.id + '-count');
      if (count) { count.textContent = shown; }
    });
  });
  document.body.setAttribute('data-report-ready', '1');
})();
"""

# Forbid every network fetch: only inline styles/scripts and data: images may load.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def page(title: str, sections: Sequence[Section], *, subtitle: str = "", footer: str = "", banner: str = "",
         meta: Mapping[str, str] | None = None) -> str:
    """The whole self-contained document: header with a section index, ``banner`` (HTML), the sections, the footer.

    ``meta`` becomes ``<meta name=... content=...>`` tags (machine-readable facts about the page).
    """
    metas = "".join(f'<meta name="{esc(k)}" content="{esc(v)}">' for k, v in (meta or {}).items())
    off, missing = ' class="off"', ' class="missing"'
    nav = "".join(f'<a href="#{esc(s.key)}"{"" if s.present else off}>{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.key)}"{"" if s.present else missing}><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">' + metas +
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f'<header><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p><nav>{nav}</nav></header>\n'
        f"<main>{banner}{body}</main>\n<footer>{esc(footer)}</footer><script>{_JS}</script></body></html>\n"
    )
