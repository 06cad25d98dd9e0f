"""labelkit.report: the HTML/SVG builders on tiny hand-made arrays."""

from __future__ import annotations

import base64
import io
import re
import sys
import types

import numpy as np
import pytest
from PIL import Image

from labelkit import report as rep
from labelkit.errors import BadInputError

EVIL = '<script>alert("x")</script>&'


def _n(tag: str, text: str) -> int:
    return len(re.findall(rf"<{tag}[\s>]", text))


# -- numbers --------------------------------------------------------------------------------


def test_subsample_keeps_priority_rows_and_is_seeded():
    keep = np.zeros(100, bool)
    keep[[3, 50, 97]] = True
    rows = rep.subsample(100, 10, keep=keep, seed=1)
    assert len(rows) == 10 and np.all(np.diff(rows) > 0)
    assert {3, 50, 97} <= set(rows.tolist())
    assert np.array_equal(rows, rep.subsample(100, 10, keep=keep, seed=1))
    assert np.array_equal(rep.subsample(5, 10), np.arange(5))
    # More priority rows than room: a subset of them only.
    assert set(rep.subsample(100, 2, keep=keep).tolist()) <= {3, 50, 97}


def test_subsample_rejects_nonpositive_max_points():
    with pytest.raises(BadInputError, match="'max_points' must be >= 1. Got 0 instead."):
        rep.subsample(10, 0)


def test_pca_of_points_on_a_line_is_that_line():
    # Four points along direction (3, 4)/5, offsets on the orthogonal axis uncorrelated with t.
    t = np.array([-3.0, -1.0, 1.0, 3.0])
    d, o = np.array([0.6, 0.8]), np.array([-0.8, 0.6])
    x = 7.0 + t[:, None] * d + np.array([0.01, -0.01, -0.01, 0.01])[:, None] * o
    p = rep.project_2d(x, method="pca")
    assert p.method == "PCA"
    # First axis: the positions along the line (sign fixed so the largest loading is positive).
    assert np.allclose(p.xy[:, 0], t, atol=1e-9)
    assert np.allclose(np.abs(p.xy[:, 1]), 0.01, atol=1e-9)
    var_t, var_o = (t**2).sum(), 4 * 0.01**2
    assert p.explained[0] == pytest.approx(var_t / (var_t + var_o))


def test_randomised_pca_of_a_large_input_matches_the_exact_one(rng):
    # 300 x 250 (past EXACT_PCA_MAX): a clear top-2 subspace plus small isotropic noise.
    n, d = 300, 250
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    x = rng.normal(size=(n, 2)) * [5.0, 3.0] @ basis + 0.05 * rng.normal(size=(n, d))
    assert min(n, d) > rep.EXACT_PCA_MAX
    fast = rep.project_2d(x, method="pca")
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    exact = xc @ vt[:2].T
    for j in range(2):
        assert abs(np.corrcoef(fast.xy[:, j], exact[:, j])[0, 1]) > 1 - 1e-6
    assert np.allclose(fast.explained, s[:2] ** 2 / (s**2).sum(), rtol=1e-6)


def test_pca_handles_one_dimension_and_no_rows():
    p = rep.project_2d(np.array([[1.0], [2.0], [4.0]]), method="pca")
    assert p.xy.shape == (3, 2) and np.allclose(p.xy[:, 1], 0)
    assert rep.project_2d(np.zeros((0, 5)), method="pca").xy.shape == (0, 2)


def test_auto_projection_uses_umap_only_when_importable(monkeypatch):
    x = np.random.default_rng(0).normal(size=(20, 4))
    monkeypatch.setitem(sys.modules, "umap", None)  # import fails
    assert rep.project_2d(x).method == "PCA"
    with pytest.raises(BadInputError, match="umap package is not installed"):
        rep.project_2d(x, method="umap")

    class FakeUMAP:
        def __init__(self, **kw):
            self.kw = kw

        def fit_transform(self, a):
            return a[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    p = rep.project_2d(x)
    assert p.method == "UMAP" and np.allclose(p.xy, x[:, :2] * 2)


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
