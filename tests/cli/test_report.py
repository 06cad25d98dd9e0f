"""`labelkit report` through the CLI on examples/digits, and the page in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelkit import artifacts
from labelkit.cli import app
from labelkit.config import DatasetConfig, ReportConfig
from labelkit.stages import report as stage
from labelkit.stages._common import RunContext
from labelkit.workspace import Workspace
from tests.conftest import DIGITS, write_csv

ALL_SECTIONS = ["dataset", "embedder", "map", "prototypes", "pseudolabels", "pseudo_gallery", "noise", "issues", "outliers", "student"]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def pipeline_done(tmp_path_factory) -> tuple[Path, bool]:
    """A private digits copy after detect-noise, pseudolabel and (if it works) a short distill."""
    data = tmp_path_factory.mktemp("report") / "digits"
    shutil.copytree(DIGITS, data, ignore=shutil.ignore_patterns(".labelkit"))
    runner = CliRunner()
    for args in (["detect-noise", str(data), "--probs", "knn"], ["pseudolabel", str(data)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    distilled = runner.invoke(app, ["distill", str(data), "--epochs", "3"]).exit_code == 0
    return data, distilled


def _self_contained(doc: str) -> None:
    assert "http://" not in doc and "https://" not in doc
    assert "<link" not in doc and "@import" not in doc and "url(" not in doc
    srcs = re.findall(r'\bsrc="([^"]*)"', doc)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), srcs[:3]


def _issue_gallery(doc: str) -> str:
    """The top-issues gallery: the issues section up to its full table."""
    return re.search(r'<section id="issues">(.*?)(?:<h3 id="all-issues"|</section>)', doc).group(1)


def test_report_on_a_fresh_dataset_says_run_the_pipeline_first(runner, digits):
    r = runner.invoke(app, ["report", str(digits)])
    assert r.exit_code == 1
    assert f"embeddings.parquet not found in {digits / '.labelkit'}; nothing to report yet: run 'labelkit run {digits}' first" in r.stderr
    assert not (digits / ".labelkit" / "report.html").exists()


def test_report_of_embeddings_only_shows_placeholders_and_runs_no_stage(runner, pipeline_done, tmp_path):
    # A workspace (--out) holding only what embed writes.
    data, _ = pipeline_done
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("samples.parquet", "embeddings.parquet"):
        shutil.copy(data / ".labelkit" / name, ws / name)
    r = runner.invoke(app, ["report", str(data), "--out", str(ws), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["sections"] == ["dataset", "embedder", "map"]
    assert out["missing"] == ["prototypes", "pseudolabels", "pseudo_gallery", "discoveries", "noise", "issues", "outliers", "student"]
    assert out["projection"] == {"method": "t-SNE", "fallback": None, "points": 1797, "seconds": pytest.approx(out["projection"]["seconds"])}
    assert out["path"] == str(ws / "report.html")
    # Dot files (the workspace lock) aside, the report added report.html and its manifest entry only.
    assert sorted(p.name for p in ws.iterdir() if not p.name.startswith(".")) == ["embeddings.arrow", "embeddings.parquet", "manifest.json", "report.html", "samples.parquet"]
    doc = (ws / "report.html").read_text(encoding="utf-8")
    assert f"run <code>labelkit prototype {data}</code>" in doc
    assert f"run <code>labelkit detect-noise {data}</code>" in doc
    assert "1,797" in doc and "grey = unlabeled" in doc and "projected to 2-D by t-SNE (scikit-learn" in doc
    assert 'id="map-issues"' not in doc
    _self_contained(doc)


def test_report_without_embeddings_after_pred_probs_shows_text_snippets(runner, tmp_path):
    # detect-noise --pred-probs needs no embeddings; the report then shows what exists.
    rows = ["I loved it,pos", "great film,pos", "<b>awful</b> & dull,pos", "terrible,neg", "boring,neg", "bad,neg", "fine,"]
    write_csv(tmp_path, "text,label\n" + "\n".join(rows) + "\n")
    np.save(tmp_path / "p.npy", np.array([[.1, .9], [.1, .9], [.95, .05], [.9, .1], [.9, .1], [.8, .2]]))
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy"), "--filter-by", "predicted_neq_given"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["sections"] == ["dataset", "noise", "issues", "outliers"]
    doc = Path(out["path"]).read_text(encoding="utf-8")
    assert f"run <code>labelkit embed {tmp_path}</code>" in doc
    assert "<blockquote>&lt;b&gt;awful&lt;/b&gt; &amp; dull</blockquote>" in doc and "<b>awful" not in doc
    assert '<span class="given">pos</span> <span class="arrow">→</span> <span class="sugg">neg</span>' in doc
    # The full table of flagged rows carries the texts too, one row per flagged sample.
    import pyarrow.parquet as pq

    n_flagged = int(pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet", columns=["is_issue"]).column(0).to_numpy().sum())
    table = re.search(r'<table class="data issues" id="issue-table">(.*?)</table>', doc).group(1)
    assert n_flagged >= 1 and table.count("<tr data-given=") == table.count("<blockquote>") == n_flagged
    _self_contained(doc)


def test_full_report_is_self_contained_with_every_section(runner, pipeline_done):
    data, distilled = pipeline_done
    r = runner.invoke(app, ["report", str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    path = Path(out["path"])
    assert path == data / ".labelkit" / "report.html" and path.is_file()
    expected = ALL_SECTIONS if distilled else [s for s in ALL_SECTIONS if s != "student"]
    assert out["sections"] == expected
    assert out["size_kb"] == pytest.approx(path.stat().st_size / 1024, abs=0.1)
    doc = path.read_text(encoding="utf-8")
    _self_contained(doc)
    for key in expected:
        assert f'<section id="{key}">' in doc
    # The map: every sample drawn (1,797 <= 5,000), every flagged issue ringed.
    issues_group = re.search(r'<g id="map-issues"[^>]*>(.*?)</g>', doc).group(1)
    import pyarrow.parquet as pq

    issues = pq.read_table(data / ".labelkit" / "label_issues.parquet").to_pandas()
    n_issues = int(issues["is_issue"].sum())
    assert issues_group.count("<circle") == n_issues
    assert doc.count("<circle") >= 1797 + n_issues
    # The gallery: one PNG thumbnail per shown issue (24 by default), the top one first.
    assert _issue_gallery(doc).count('<img src="data:image/png;base64,') == min(24, n_issues)
    top = issues[issues["is_issue"]].iloc[0]
    assert f'title="{top["id"]}">{top["id"]}</div>' in doc
    assert "true label" in doc and "coverage" in doc
    # Every flagged sample is in the full table, in rank order, each with a thumbnail (<= TABLE_THUMBNAILS).
    table = re.search(r'<table class="data issues" id="issue-table">(.*?)</table>', doc).group(1)
    assert re.findall(r'<tr data-given="[^"]*" data-type="[^"]*"><td class="num">(\d+)</td>', table) == [str(v) for v in issues.loc[issues["is_issue"], "rank"]]
    assert table.count('<img src="data:image/png;base64,') == n_issues
    # Outliers and near-duplicates: every row of those types, flagged or only reported.
    typed = issues[issues["issue_type"].isin(["outlier", "duplicate"])]
    outliers = re.search(r'<section id="outliers">(.*?)</section>', doc).group(1)
    assert outliers.count("<tr data-given=") == len(typed)
    assert outliers.count(">reported only<") == int((~typed["is_issue"]).sum())
    # Pseudo-labels by class: one block per class with pseudo-labels, three groups each.
    pl = pq.read_table(data / ".labelkit" / "pseudolabels.parquet").to_pandas()
    gallery = re.search(r'<section id="pseudo_gallery">(.*?)</section>', doc).group(1)
    assert gallery.count('class="pclass"') == pl["label"].nunique()
    first = pl[(pl["label"] == pl["label"].iloc[0]) & pl["accepted"]]
    assert any(f'title="{i}"' in gallery for i in first.loc[first["confidence"] == first["confidence"].max(), "id"])
    assert out["projection"]["method"] == "t-SNE"
    # The embedder: its model from embeddings.parquet's metadata.
    meta = pq.read_schema(data / ".labelkit" / "embeddings.parquet").metadata
    model = json.loads(meta[b"labelkit:model"])
    assert f'<div class="v">{model}</div><div class="k">embedder</div>' in doc
    rec = json.loads((data / ".labelkit" / "manifest.json").read_text())["stages"]["report"]
    assert set(rec["inputs"]) >= {"samples.parquet", "embeddings.parquet", "prototypes.parquet", "pseudolabels.parquet", "label_issues.parquet"}
    assert list(rec["outputs"]) == ["report.html"]


def test_options_from_config_title_escaped_and_gallery_size(runner, pipeline_done, tmp_path):
    data, _ = pipeline_done
    cfg = tmp_path / "lk.toml"
    cfg.write_text('[report]\ntitle = "<script>alert(1)</script> digits"\ngallery = 3\nmax_points = 500\n')
    r = runner.invoke(app, ["report", str(data), "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    doc = Path(json.loads(r.stdout)["path"]).read_text(encoding="utf-8")
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt; digits</title>" in doc and "<script>alert" not in doc
    assert _issue_gallery(doc).count('<img src="data:image/png;base64,') == 3
    assert "500 of 1,797 samples" in doc


def test_report_is_skipped_when_nothing_changed_unless_forced(runner, pipeline_done):
    data, _ = pipeline_done
    assert runner.invoke(app, ["report", str(data)]).exit_code == 0
    ctx = RunContext(Workspace.open(data), DatasetConfig())
    again = stage.run(ctx, ReportConfig(), force=False)
    assert again.skipped and again.reason == "up to date"
    assert again.summary["sections"][:3] == ["dataset", "embedder", "map"]
    assert not stage.run(ctx, ReportConfig(gallery=5), force=False).skipped  # parameters changed
    r = runner.invoke(app, ["status", str(data), "--json"])
    states = {s["stage"]: s["state"] for s in json.loads(r.stdout)["stages"]}
    assert states["report"] == "done"


def test_report_renders_in_headless_chromium_without_console_errors(runner, pipeline_done, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    data, distilled = pipeline_done
    r = runner.invoke(app, ["report", str(data), "--json"])
    assert r.exit_code == 0, r.output
    page = Path(json.loads(r.stdout)["path"]).resolve()
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()]
    # Files, not pipes: Chromium's helper processes may outlive it holding inherited pipe ends open.
    out, err = tmp_path / "dom.html", tmp_path / "chromium.log"
    with out.open("w") as fo, err.open("w") as fe:
        subprocess.run(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, timeout=120, check=False)
    # Console messages (errors, uncaught exceptions, CSP refusals of any network fetch) are logged as CONSOLE lines.
    console = [line for line in err.read_text(errors="replace").splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []
    dom = out.read_text(errors="replace")
    assert 'data-report-ready="1"' in dom  # the page's script ran to its end
    for key in ["dataset", "embedder", "map", "pseudo_gallery", "noise", "issues", "outliers"] + (["student"] if distilled else []):
        assert f'<section id="{key}">' in dom
    import pyarrow.parquet as pq

    n_issues = int(pq.read_table(data / ".labelkit" / "label_issues.parquet", columns=["is_issue"]).column(0).to_numpy().sum())
    table = re.search(r'<table class="data issues" id="issue-table">(.*?)</table>', dom, re.S).group(1)
    assert table.count("<tr data-given=") == n_issues  # one row per flagged sample, as the browser parsed it
    assert dom.count('class="pclass"') >= 2
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.size == (1280, 2400)
    assert len(im.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 100  # charts and colours, not a blank page


def test_issue_table_filter_hides_the_other_classes_in_chromium(runner, pipeline_done, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    data, _ = pipeline_done
    r = runner.invoke(app, ["report", str(data), "--json"])
    assert r.exit_code == 0, r.output
    doc = Path(json.loads(r.stdout)["path"]).read_text(encoding="utf-8")
    rows = re.findall(r'<tr data-given="([^"]*)" data-type="[^"]*">', re.search(r'id="issue-table">(.*?)</table>', doc).group(1))
    pick = rows[0]
    assert len(set(rows)) > 1  # else the filter would hide nothing and the test could not fail
    # A user picking the first given label in the table's menu, scripted after the page's own script.
    act = ("<script>var s = document.querySelector('select[data-filter=\"issue-table\"][data-col=\"given\"]');"
           f"s.value = '{pick}'; s.dispatchEvent(new Event('change'));</script></body>")
    page = tmp_path / "report.html"
    page.write_text(doc.replace("</body>", act), encoding="utf-8")
    out, err = tmp_path / "dom.html", tmp_path / "chromium.log"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    with out.open("w") as fo, err.open("w") as fe:
        subprocess.run(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, timeout=120, check=False)
    table = re.search(r'id="issue-table">(.*?)</table>', out.read_text(errors="replace"), re.S).group(1)
    shown = re.findall(r'<tr data-given="([^"]*)" data-type="[^"]*">', table)
    hidden = re.findall(r'<tr data-given="([^"]*)" data-type="[^"]*" hidden="">', table)
    assert shown == [g for g in rows if g == pick] and len(shown) + len(hidden) == len(rows)
    assert set(hidden) == set(rows) - {pick}
    assert f'id="issue-table-count">{len(shown)}</b>' in out.read_text(errors="replace")


def _set_summary(path: Path, **changes) -> None:
    """Rewrite the summary manifest.json recorded for the stage that wrote ``path``, as that stage would have."""
    owner = {"metrics.json": "distill"}.get(path.name) or artifacts.OWNER[path.name]
    manifest = path.parent / "manifest.json" if path.name != "metrics.json" else path.parent.parent / "manifest.json"
    m = json.loads(manifest.read_text())
    m["stages"][owner].setdefault("summary", {}).update(changes)
    manifest.write_text(json.dumps(m))


def _workspace_copy(data: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(data / ".labelkit", ws, ignore=shutil.ignore_patterns("report.html"))
    return ws


def test_banner_shows_every_stored_warning_with_its_stage_and_hint(runner, pipeline_done, tmp_path):
    data, _ = pipeline_done
    ws = _workspace_copy(data, tmp_path)
    w = {"code": "poor_separation", "message": "pixels:8 separates the labeled classes poorly: 0.21 <b>", "hint": "try --model minilm"}
    _set_summary(ws / "embeddings.parquet", warnings=[w])
    _set_summary(ws / "prototypes.parquet", warnings=[])
    _set_summary(ws / "pseudolabels.parquet", warnings=[])
    _set_summary(ws / "label_issues.parquet", warnings=[{"code": "high_noise_rate", "message": "estimated label-noise rate 41%", "hint": "review by rank"}])
    if (ws / "student" / "metrics.json").exists():
        _set_summary(ws / "student" / "metrics.json", warnings=[])
    r = runner.invoke(app, ["report", str(data), "--out", str(ws), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["warnings_shown"] == 2 and out["warnings"] == []  # shown, not counted again under --strict
    doc = (ws / "report.html").read_text(encoding="utf-8")
    banner = re.search(r'<div class="banner" id="warnings" role="alert">(.*?)</ul></div>', doc).group(1)
    assert "2 warnings" in banner
    assert ('<li data-code="poor_separation"><b class="stage">embed</b> <span class="msg">pixels:8 separates the labeled classes poorly: '
            '0.21 &lt;b&gt;</span><div class="hint">try: try --model minilm</div></li>') in banner
    assert '<b class="stage">detect-noise</b> <span class="msg">estimated label-noise rate 41%</span>' in banner
    assert doc.index('id="warnings"') < doc.index('<section id="dataset">')
    # With every warning gone: no banner, one quiet line.
    _set_summary(ws / "embeddings.parquet", warnings=[])
    _set_summary(ws / "label_issues.parquet", warnings=[])
    assert runner.invoke(app, ["report", str(data), "--out", str(ws)]).exit_code == 0
    doc = (ws / "report.html").read_text(encoding="utf-8")
    assert 'class="banner"' not in doc and "No stage reported a warning." in doc


def test_embedder_section_shows_candidate_scores_and_tolerates_their_absence(runner, pipeline_done, tmp_path):
    data, _ = pipeline_done
    ws = _workspace_copy(data, tmp_path)
    choice = {"chosen": "pixels:8", "by": "leave-one-out kNN accuracy on 179 labeled samples",
              "scores": {"pixels:8": {"score": 0.7821, "n": 179, "seconds": 0.01}, "efficientnet-lite0": {"score": 0.6313, "n": 179, "seconds": 15.61}}}
    _set_summary(ws / "embeddings.parquet", model_choice=choice)
    assert runner.invoke(app, ["report", str(data), "--out", str(ws)]).exit_code == 0
    section = re.search(r'<section id="embedder">(.*?)</section>', (ws / "report.html").read_text(encoding="utf-8")).group(1)
    assert re.findall(r"<tr[^>]*><td>(.*?)</td>", section) == ["pixels:8 ✓ chosen", "efficientnet-lite0"]
    assert ">0.782<" in section and ">0.631<" in section and ">15.6 s<" in section
    assert "Scored by leave-one-out kNN accuracy on 179 labeled samples." in section
    _set_summary(ws / "embeddings.parquet", model_choice=None)
    assert runner.invoke(app, ["report", str(data), "--out", str(ws)]).exit_code == 0
    section = re.search(r'<section id="embedder">(.*?)</section>', (ws / "report.html").read_text(encoding="utf-8")).group(1)
    assert "no candidates were scored" in section and "<table" not in section
