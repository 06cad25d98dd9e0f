"""labelkit.report: the HTML/SVG builders on tiny hand-made arrays."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from labelkit import report as rep
from labelkit.errors import BadInputError
from labelkit.report_samples import PseudoTile, issue_table_html, pick_pseudolabel_examples, pseudolabel_gallery_html

EVIL = '<script>alert("x")</script>&'


def _n(tag: str, text: str) -> int:
    return len(re.findall(rf"<{tag}[\s>]", text))


# -- numbers --------------------------------------------------------------------------------


def test_coverage_curve_counts_confidence_at_or_above_each_threshold():
    conf = np.array([0.2, 0.5, 0.5, 0.9])
    cov = rep.coverage_curve(conf, np.array([0.0, 0.5, 0.6, 0.9, 1.0]))
    assert cov.tolist() == [1.0, 0.75, 0.25, 0.25, 0.0]
    assert rep.coverage_curve(np.zeros(0), np.array([0.5])).tolist() == [0.0]


# -- charts ---------------------------------------------------------------------------------


def test_scatter_groups_points_by_class_and_rings_issues():
    xy = np.array([[0, 0], [1, 1], [2, 0], [3, 3], [4, 1]], float)
    labels = np.array([0, 1, -1, 1, -1])
    issues = np.array([False, True, False, False, False])
    svg = rep.scatter_svg(xy, labels, ["cat", EVIL], issues=issues, titles=["a", "b", "c", "d", EVIL])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert _n("circle", svg) == 6  # five points and one ring
    groups = dict(re.findall(r'<g id="map-([^"]+)"[^>]*>(.*?)</g>', svg))
    assert _n("circle", groups["unlabeled"]) == 2
    assert _n("circle", groups["c0"]) == 1 and _n("circle", groups["c1"]) == 2
    assert _n("circle", groups["issues"]) == 1
    # Unlabeled points are drawn first (underneath), rings last (on top).
    assert svg.index("map-unlabeled") < svg.index("map-c0") < svg.index("map-issues")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    # Equal aspect: the x span (4) maps to a longer extent than the y span (3).
    cx = [float(v) for v in re.findall(r'cx="([\d.]+)"', groups["c0"] + groups["c1"] + groups["unlabeled"])]
    assert max(cx) - min(cx) > 0


def test_scatter_rejects_labels_out_of_range():
    with pytest.raises(BadInputError, match="'labels' must be < 2"):
        rep.scatter_svg(np.zeros((2, 2)), np.array([0, 2]), ["a", "b"])


def test_legend_toggles_the_groups_of_the_map():
    legend = rep.legend_html(["a", EVIL], [3, 0], n_unlabeled=2, n_issues=1)
    assert re.findall(r'data-toggle="([^"]+)"', legend) == ["map-c0", "map-unlabeled", "map-issues"]  # empty class left out
    assert "unlabeled <span class=\"n\">2</span>" in legend


def test_bar_chart_prints_values_and_escapes_names():
    svg = rep.bar_chart_svg(["a", EVIL], [3, 1.5], label="support")
    assert _n("rect", svg) == 2
    assert ">3<" in svg and ">1.5<" in svg
    assert "<script>" not in svg
    widths = [float(w) for w in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1], rel=1e-2)


def test_bar_chart_keeps_the_largest_rows_when_there_are_many():
    svg = rep.bar_chart_svg([f"c{i}" for i in range(50)], np.arange(50), label="x", max_rows=5)
    assert _n("rect", svg) == 5 and ">c49<" in svg and ">c0<" not in svg
    assert "… and 45 more" in svg


def test_histogram_stacks_accepted_over_abstained():
    conf = np.array([0.05, 0.95, 0.96, 0.97, 0.5])
    acc = np.array([False, True, True, False, False])
    svg = rep.histogram_svg(conf, split=acc, bins=10)
    titles = re.findall(r"<title>([^<]+)</title>", svg)
    assert "0.90–1.00: 2 accepted" in titles and "0.90–1.00: 1 abstained" in titles
    assert "0.00–0.10: 1 abstained" in titles and "0.50–0.60: 1 abstained" in titles


def test_line_chart_breaks_lines_at_nan_and_marks_a_point():
    svg = rep.line_chart_svg(np.arange(5), {"loss": [3, 2, np.nan, 1, 0.5], EVIL: [1, 1, 1, 1, 1]}, xlabel="epoch", ylabel="loss",
                             label="curve", point=(2, 1.5, "τ = 0.9: 50%"))
    assert svg.count("<polyline") == 3  # loss in two pieces, the other series whole
    assert "τ = 0.9: 50%" in svg and "<script>" not in svg


def test_heatmap_prints_percentages_and_checks_shape():
    m = np.array([[0.9, 0.2], [0.1, 0.8]])
    svg = rep.heatmap_svg(m, ["a", EVIL], row_title="given label", col_title="true label", label="noise")
    assert _n("rect", svg) == 4
    assert ">90%<" in svg and ">20%<" in svg
    assert "given label a, true label &lt;script&gt;" in svg
    with pytest.raises(BadInputError, match=r"'matrix' must have shape \(3, 3\)"):
        rep.heatmap_svg(m, ["a", "b", "c"], row_title="r", col_title="c", label="x")


# -- images and HTML pieces -----------------------------------------------------------------


def test_thumbnail_is_a_downscaled_png_data_uri():
    uri = rep.thumbnail_uri(Image.new("RGB", (200, 100), (255, 0, 0)), size=96)
    assert uri.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "PNG" and im.size == (96, 48)
    small = Image.open(io.BytesIO(base64.b64decode(rep.thumbnail_uri(Image.new("L", (8, 8)), size=96).split(",", 1)[1])))
    assert small.size == (8, 8)  # never upscaled (the page scales it, pixelated)


def test_gallery_escapes_labels_and_truncates_snippets():
    items = [
        rep.GalleryItem(1, "img/1.png", given="cat", suggested=EVIL, quality=0.01, issue_type="label", thumbnail="data:image/png;base64,AAAA"),
        rep.GalleryItem(2, EVIL, given="dog", suggested="dog", quality=0.3, issue_type="outlier", text="x" * 500),
        rep.GalleryItem(3, "v", given="a", suggested="b", quality=0.5),
    ]
    out = rep.gallery_html(items, snippet_chars=50)
    assert out.count('class="tile"') == 3
    assert "<script>" not in out and out.count("&lt;script&gt;") == 3  # suggested, id in text and in title attribute
    assert '<img src="data:image/png;base64,AAAA"' in out
    assert "x" * 49 + "…" in out and "x" * 50 not in out
    assert "no preview" in out
    assert rep.gallery_html([]).startswith('<p class="hint">No sample')


def test_gallery_refuses_non_data_image_sources():
    with pytest.raises(BadInputError, match="'thumbnail' must be a data:image URI"):
        rep.gallery_html([rep.GalleryItem(1, "a", "x", "y", 0.1, thumbnail="https://example.org/a.png")])


def test_find_curve_looks_in_curve_rounds_and_top_level():
    assert rep.find_curve({"curve": {"train_loss": [2, 1]}}) == {"train_loss": [2.0, 1.0]}
    rounds = {"rounds": [{"curve": {"train_loss": [9]}}, {"curve": {"train_loss": [3, None, 1], "val_loss": [None, None]}}]}
    out = rep.find_curve(rounds)
    assert list(out) == ["train_loss"]  # an all-missing series is left out
    assert out["train_loss"][0] == 3 and np.isnan(out["train_loss"][1])
    assert rep.find_curve({"val_acc": [0.5, 0.7]}) == {"val_acc": [0.5, 0.7]}
    assert rep.find_curve({"accuracy": 0.9}) == {}


def test_metrics_shows_what_is_there():
    full = rep.metrics_html({"accuracy": 0.875, "macro_f1": 0.8, "ece": 0.0312, "per_class_accuracy": {"a": 1.0, "b": None},
                             "curve": {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_acc": [0.6, 0.8]}, EVIL: 3}, ["a", "b"])
    assert "87.5%" in full and "80.0%" in full and "0.0312" in full
    assert full.count("<svg") == 3  # per-class bars, losses, accuracy
    assert ">n/a<" in full  # class b has no held-out sample
    assert "<script>" not in full
    no_val = rep.metrics_html({"accuracy": None, "n_val": 0, "rounds": [{"curve": {"train_loss": [1, 0.5]}}]})
    assert "were not measured" in no_val and no_val.count("<svg") == 1
    assert "no numbers this report knows" in rep.metrics_html({})


def test_full_page_is_self_contained_and_escaped():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(30, 2))
    labels = rng.integers(-1, 3, size=30)
    classes = ["a", "b", EVIL]
    sections = [
        rep.Section("dataset", "Dataset", rep.stat_cards([("samples", 30), (EVIL, EVIL)])),
        rep.Section("map", "Embedding map", rep.legend_html(classes, [1, 1, 1]) + rep.scatter_svg(xy, labels, classes, issues=labels == 0)),
        rep.Section("noise", "Noise", rep.heatmap_svg(np.eye(3), classes, row_title="given label", col_title="true label", label="n")),
        rep.Section("pl", "Pseudo-labels", rep.line_chart_svg(np.linspace(0, 1, 11), {"coverage": np.linspace(1, 0, 11)}, xlabel="t", ylabel="c", label="c")),
        rep.Section("issues", "Label issues", rep.gallery_html([rep.GalleryItem(1, EVIL, "a", "b", 0.1, thumbnail=rep.thumbnail_uri(Image.new("RGB", (4, 4))))])),
        rep.Section("student", "Student", rep.metrics_html({"accuracy": 0.5, "curve": {"train_loss": [1, 0]}})),
        rep.missing_section("prototypes", "Prototypes", "prototypes.parquet", "labelkit prototype data/"),
    ]
    doc = rep.page(EVIL, sections, subtitle=EVIL, footer="f", meta={"labelkit:sections": "dataset,map"})
    assert doc.startswith("<!doctype html>") and doc.rstrip().endswith("</html>")
    assert "http://" not in doc and "https://" not in doc
    assert "<link" not in doc and "@import" not in doc and "url(" not in doc
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', doc))
    assert "Content-Security-Policy" in doc and "default-src 'none'" in doc
    # The only <script> is the page's own; the user's title never becomes markup.
    assert doc.count("<script>") == 1 and "<title>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;</title>" in doc
    assert '<section id="prototypes" class="missing">' in doc and "<code>labelkit prototype data/</code>" in doc
    assert '<meta name="labelkit:sections" content="dataset,map">' in doc
    assert [m for m in re.findall(r'<a href="#([^"]+)"', doc)] == [s.key for s in sections]


# -- warnings banner, embedder, previews ------------------------------------------------------


def test_banner_lists_each_warning_with_stage_message_and_hint_escaped():
    warnings = [{"stage": "embed", "code": "poor_separation", "message": "separates poorly: 0.21", "hint": "try --model minilm"},
                {"stage": "distill", "code": "x", "message": EVIL, "hint": ""}]
    out = rep.warnings_banner_html(warnings)
    assert out.startswith('<div class="banner" id="warnings" role="alert">')
    assert "2 warnings" in out and _n("li", out) == 2
    assert '<b class="stage">embed</b> <span class="msg">separates poorly: 0.21</span><div class="hint">try: try --model minilm</div>' in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert out.count('class="hint"') == 1  # an empty hint adds no line
    assert rep.warnings_banner_html([]) == '<p class="nowarn" id="warnings">No stage reported a warning.</p>'


def test_embedder_lists_candidates_best_first_and_marks_the_chosen_one():
    choice = {"chosen": "pixels:8", "by": "leave-one-out kNN accuracy on 179 labeled samples",
              "scores": {"efficientnet-lite0": {"score": 0.631, "n": 179, "seconds": 15.6}, "pixels:8": {"score": 0.782, "n": 179, "seconds": 0.01},
                         EVIL: {"score": None, "n": 0}}}
    out = rep.embedder_html("pixels:8", dim=64, choice=choice, separation={"knn_accuracy": 0.782, "chance": 0.1})
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td>", out)
    assert rows == ["pixels:8 ✓ chosen", "efficientnet-lite0", "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"]  # no score sorts last
    assert '<tr class="chosen">' in out and out.count("chosen") == 2
    assert ">0.782<" in out and ">15.6 s<" in out and ">n/a<" in out
    assert "compared 3 candidates. Scored by leave-one-out kNN accuracy on 179 labeled samples." in out
    assert "78.2%" in out and "kNN accuracy (chance 0.10)" in out
    named = rep.embedder_html("clip:ViT-B-32/openai")
    assert "clip:ViT-B-32/openai" in named and "no candidates were scored" in named and "<table" not in named


def test_media_puts_long_text_in_details_when_expandable():
    long = "word " * 100
    out = rep.media_html(None, long, alt="a", snippet_chars=20, expandable=True)
    assert out.startswith('<details class="fulltext"><summary>') and long.strip() in out
    assert "<summary>" + "word " * 3 + "word…</summary>" in out
    assert rep.media_html(None, "short", alt="a", expandable=True) == "<blockquote>short</blockquote>"
    assert rep.media_html(None, None, alt="a") == '<div class="noimg">no preview</div>'


def test_page_puts_the_banner_above_the_first_section():
    doc = rep.page("t", [rep.Section("dataset", "Dataset", "x")], banner=rep.warnings_banner_html([{"stage": "s", "message": "m", "hint": "h"}]))
    assert doc.index('id="warnings"') < doc.index('<section id="dataset">')


# -- report_samples: pseudo-label gallery and issue tables ----------------------------------------


def test_pick_pseudolabel_examples_never_repeats_a_row_and_keeps_rejected_apart():
    # Class 0: accepted rows 0-5 (confidence 0.99 .. 0.94), rejected rows 6, 7; class 1: one accepted, no rejected.
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.90, 0.93, 0.97])
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1])
    acc = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1], bool)
    c0, c1, c2 = pick_pseudolabel_examples(labels, conf, acc, n_classes=3, k=4)
    assert c0.most.tolist() == [0, 1, 2, 3] and c0.least.tolist() == [5, 4]  # six accepted: the last two only
    assert c0.rejected.tolist() == [7, 6] and (c0.n_accepted, c0.n_rejected) == (6, 2)
    assert c1.most.tolist() == [8] and c1.least.tolist() == [] and c1.rejected.tolist() == []
    assert c2.n_accepted == c2.n_rejected == 0
    with pytest.raises(BadInputError, match="'k' must be >= 1. Got 0 instead."):
        pick_pseudolabel_examples(labels, conf, acc, n_classes=2, k=0)


def test_pseudolabel_gallery_shows_three_groups_per_class():
    ex = pick_pseudolabel_examples(np.array([0, 0, 1]), np.array([0.9, 0.5, 0.8]), np.array([1, 0, 1], bool), n_classes=2, k=2)
    tiles = {0: PseudoTile("u/a.png", 0.9, thumbnail="data:image/png;base64,AAAA"), 1: PseudoTile(EVIL, 0.5, text="t", reason="novel"),
             2: PseudoTile("u/c", 0.8)}
    out = pseudolabel_gallery_html([("zero", ex[0], tiles), (EVIL, ex[1], tiles)])
    assert out.count('class="pclass"') == 2 and out.count('class="tile"') == 3
    assert "1 accepted, 1 rejected" in out and ">novel<" in out and 'title="u/a.png">a.png<' in out
    assert "<script>" not in out
    blocks = re.findall(r'<div class="pgroup (\w+)">', out)
    assert blocks == ["most", "least", "rejected"] * 2
    assert pseudolabel_gallery_html([]).startswith('<p class="hint">')


def test_issue_table_has_one_row_per_item_filters_and_full_text():
    items = [rep.GalleryItem(i + 1, f"id{i}", given="a" if i % 2 else EVIL, suggested="b", quality=0.1 * i,
                             issue_type="outlier" if i == 3 else None, text="long text " * 30 if i == 0 else None) for i in range(5)]
    out = issue_table_html(items, uid="t1", flagged=[True, True, False, True, True])
    assert out.count("<tr data-given=") == 5 and out.count(">reported only<") == 1
    assert re.findall(r'data-col="(\w+)"', out) == ["given", "type"]
    assert '<option value="a">a</option>' in out and '<option value="outlier">outlier</option>' in out
    assert 'id="t1-count">5</b> of 5' in out
    assert '<details class="fulltext">' in out and ("long text " * 30).strip() in out
    assert "<script>" not in out
    with pytest.raises(BadInputError, match="'flagged' must have one entry per item. Got 1 for 5 items instead."):
        issue_table_html(items, uid="t", flagged=[True])
