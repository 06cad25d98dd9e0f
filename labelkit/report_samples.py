"""The report's sample-level pieces: pseudo-labels per class, and tables of every flagged sample.

:func:`pick_pseudolabel_examples` chooses which rows to show (numpy in, indices out); the
``*_html`` builders turn chosen rows into escaped HTML. Previews (thumbnails as ``data:`` URIs,
text) are made by the caller, which knows where the samples live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labelkit.errors import BadInputError
from labelkit.report import GalleryItem, esc, media_html


@dataclass(frozen=True)
class PseudoExamples:
    """Row indices of one class's examples: most and least confident accepted, best rejected."""

    most: np.ndarray
    least: np.ndarray
    rejected: np.ndarray
    n_accepted: int
    n_rejected: int


def pick_pseudolabel_examples(labels: np.ndarray, confidence: np.ndarray, accepted: np.ndarray, *, n_classes: int, k: int = 4) -> list[PseudoExamples]:
    """For each class, the ``k`` most and ``k`` least confident accepted rows and the ``k`` most confident rejected ones.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,), int
        Each row's best class (0 .. n_classes - 1).
    confidence : ndarray of shape (n_samples,)
    accepted : ndarray of shape (n_samples,), bool
        The row passed the threshold; rejected rows are the near misses worth a look.
    n_classes : int
    k : int, default=4
        Rows per group. ``least`` never repeats a row of ``most``: a class with fewer than ``2 k``
        accepted rows shows each once.

    Returns
    -------
    list of PseudoExamples, one per class, indices ordered by confidence (highest first; ``least``: lowest first).

    Examples
    --------
    >>> ex = pick_pseudolabel_examples(np.array([0, 0, 0, 1]), np.array([.9, .5, .7, .6]), np.array([1, 1, 0, 0], bool), n_classes=2, k=1)
    >>> ex[0].most.tolist(), ex[0].least.tolist(), ex[0].rejected.tolist(), ex[1].rejected.tolist()
    ([0], [1], [2], [3])
    """
    labels = np.asarray(labels, dtype=np.int64)
    confidence = np.asarray(confidence, dtype=np.float64)
    accepted = np.asarray(accepted, dtype=bool)
    if not (labels.shape == confidence.shape == accepted.shape) or labels.ndim != 1:
        raise BadInputError(f"'labels', 'confidence' and 'accepted' must be 1-D of one length. Got {labels.shape}, {confidence.shape}, {accepted.shape} instead.")
    if k < 1:
        raise BadInputError(f"'k' must be >= 1. Got {k!r} instead.")
    order = np.argsort(-confidence, kind="stable")
    out = []
    for c in range(n_classes):
        rows = order[labels[order] == c]
        acc, rej = rows[accepted[rows]], rows[~accepted[rows]]
        most = acc[:k]
        least = acc[max(k, len(acc) - k):][::-1]
        out.append(PseudoExamples(most, least, rej[:k], len(acc), len(rej)))
    return out


@dataclass(frozen=True)
class PseudoTile:
    """One pseudo-labeled sample: its preview and confidence; ``reason`` why it was rejected (None if accepted).

    The tile shows the id's last path part (the folder is often just ``unlabeled/``); hovering shows it whole."""

    id: str
    confidence: float
    thumbnail: str | None = None
    text: str | None = None
    reason: str | None = None


def _tiles(tiles: Sequence[PseudoTile], snippet_chars: int) -> str:
    cards = []
    for t in tiles:
        why = f'<div class="q">{esc(t.reason.replace("_", " "))}</div>' if t.reason else ""
        cards.append(f'<div class="tile"><div class="media">{media_html(t.thumbnail, t.text, alt=t.id, snippet_chars=snippet_chars)}</div>'
                     f'<div class="meta"><div class="change">{t.confidence:.3f}</div>{why}'
                     f'<div class="id" title="{esc(t.id)}">{esc(t.id.rsplit("/", 1)[-1])}</div></div></div>')
    return '<div class="gallery">' + "".join(cards) + "</div>"


def pseudolabel_gallery_html(blocks: Sequence[tuple[str, PseudoExamples, dict[int, PseudoTile]]], *, snippet_chars: int = 120) -> str:
    """One row per class: its most and least confident accepted pseudo-labels and its best rejected ones.

    ``blocks`` = (class name, the rows :func:`pick_pseudolabel_examples` chose, a tile per chosen row).
    """
    if not blocks:
        return '<p class="hint">No class has a pseudo-label.</p>'
    out = []
    for name, ex, tiles in blocks:
        groups = []
        for cls, cap, rows in (("most", "most confident accepted", ex.most), ("least", "least confident accepted", ex.least),
                               ("rejected", "best rejected (below the bar)", ex.rejected)):
            body = _tiles([tiles[int(r)] for r in rows], snippet_chars) if len(rows) else '<p class="hint">none</p>'
            groups.append(f'<div class="pgroup {cls}"><div class="cap">{cap}</div>{body}</div>')
        out.append(f'<div class="pclass" data-class="{esc(name)}"><h3>{esc(name)} <span class="n">{ex.n_accepted:,} accepted, '
                   f'{ex.n_rejected:,} rejected</span></h3><div class="pgroups">{"".join(groups)}</div></div>')
    return "".join(out)


def issue_table_html(items: Sequence[GalleryItem], *, uid: str, flagged: Sequence[bool] | None = None, snippet_chars: int = 120) -> str:
    """Every row in one scrollable table (rank, preview, id, given, suggested, quality, type), filterable by
    given label and by type with two selects; a text longer than ``snippet_chars`` opens in full on click.

    ``flagged``: one bool per item, adding a column that says whether the row counts as an issue.
    """
    if flagged is not None and len(flagged) != len(items):
        raise BadInputError(f"'flagged' must have one entry per item. Got {len(flagged)} for {len(items)} items instead.")
    if not items:
        return '<p class="hint">None.</p>'
    rows = []
    for i, it in enumerate(items):
        kind = it.issue_type or "label"
        flag = "" if flagged is None else f'<td>{"issue" if flagged[i] else "reported only"}</td>'
        rows.append(f'<tr data-given="{esc(it.given)}" data-type="{esc(kind)}"><td class="num">{int(it.rank)}</td>'
                    f'<td>{media_html(it.thumbnail, it.text, alt=it.id, snippet_chars=snippet_chars, expandable=True)}</td>'
                    f'<td>{esc(it.id)}</td><td>{esc(it.given)}</td><td>{esc(it.suggested)}</td>'
                    f'<td class="num">{it.quality:.3f}</td><td><span class="badge {esc(kind)}">{esc(kind)}</span></td>{flag}</tr>')
    givens = sorted({it.given for it in items})
    types = sorted({it.issue_type or "label" for it in items})

    def select(col: str, label: str, values: Sequence[str]) -> str:
        opts = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
        return f'<label>{label}<select data-filter="{esc(uid)}" data-col="{col}"><option value="">all</option>{opts}</select></label>'

    head = "<th>rank</th><th>sample</th><th>id</th><th>given</th><th>suggested</th><th>quality</th><th>type</th>" + ("" if flagged is None else "<th>status</th>")
    return (f'<div class="filter">{select("given", "given label", givens)}{select("type", "type", types)}'
            f'showing <b id="{esc(uid)}-count">{len(items)}</b> of {len(items)}</div>'
            f'<div class="scroll"><table class="data issues" id="{esc(uid)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
