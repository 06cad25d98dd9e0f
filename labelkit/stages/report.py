"""report: one self-contained report.html of whatever artifacts the workspace holds.

It never runs another stage: each section appears when its artifact exists, and otherwise says
which command makes it. Only an empty workspace (no embeddings and no label issues) is an error.
"""

from __future__ import annotations

import time
from typing import Any

from labelkit import __version__, artifacts
from labelkit import report as rep
from labelkit.config import ReportConfig
from labelkit.errors import MissingArtifactError
from labelkit.stages._common import RunContext, StageResult
from labelkit.stages._report_sections import METRICS, build_sections
from labelkit.stages._runner import Job, Stage, recorded_summary
from labelkit.stages._runner import run as run_stage
from labelkit.workspace import Workspace, atomic_write

STAGE = "report"
REPORT = "report.html"


READS = (artifacts.SAMPLES, artifacts.EMBEDDINGS, artifacts.PROTOTYPES, artifacts.PSEUDOLABELS, artifacts.LABEL_ISSUES, METRICS,
         artifacts.DISCOVERIES)


def _check(job: Job) -> None:
    ws = job.ws
    have = {name: ws.path(name).exists() for name in READS}
    if (not have[artifacts.EMBEDDINGS] and not have[artifacts.LABEL_ISSUES]) or not have[artifacts.SAMPLES]:
        missing = artifacts.EMBEDDINGS if not have[artifacts.EMBEDDINGS] else artifacts.SAMPLES
        raise MissingArtifactError(f"{missing} not found in {ws.out}; nothing to report yet: run 'labelkit run {ws.data}' first")
    job.state["have"] = have


def _key(job: Job) -> None:
    job.inputs.update(_input_fingerprints(job.ws, job.state["have"]))


def _build(job: Job) -> dict[str, Any]:
    ws, cfg, have = job.ws, job.cfg, job.state["have"]
    path = ws.path(REPORT)
    sections = build_sections(ws, cfg, have)
    included = [s.key for s in sections if s.present]
    shown = collect_warnings(ws, have)
    title = cfg.title or f"labelkit report: {ws.data.resolve().name}"
    subtitle = f"dataset {ws.data} · workspace {ws.out} · {time.strftime('%Y-%m-%d %H:%M')}"
    doc = rep.page(title, sections, subtitle=subtitle, footer=f"labelkit {__version__} · a self-contained page: it opens offline, with no network",
                   banner=rep.warnings_banner_html(shown), meta={"labelkit:sections": ",".join(included)})
    with atomic_write(path, "wb") as f:
        f.write(doc.encode("utf-8"))
    return {
        "path": str(path),
        "sections": included,
        "missing": [s.key for s in sections if not s.present],
        "size_kb": round(path.stat().st_size / 1024, 1),
        "warnings_shown": len(shown),  # the upstream stages' warnings in the banner (already counted by their stages)
        **{k: v for s in sections for k, v in (s.facts or {}).items()},
        "warnings": [],
    }


# It never runs another stage: what it reads is fingerprinted when present (see _key).
SPEC = Stage(STAGE, ReportConfig, _build, outputs=(REPORT,), samples=False, check=_check, key=_key)


def run(ctx: RunContext, cfg: ReportConfig, *, force: bool = False) -> StageResult:
    return run_stage(ctx, SPEC, cfg, force=force)


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


# -- warnings -------------------------------------------------------------------------------

# The stages whose warnings the banner shows, with the artifact that must be there (their summaries
# are read from manifest.json, as a skipped stage reports them).
WARNING_SOURCES = (("embed", artifacts.EMBEDDINGS), ("prototype", artifacts.PROTOTYPES), ("pseudolabel", artifacts.PSEUDOLABELS),
                   ("discover", artifacts.DISCOVERIES), ("detect-noise", artifacts.LABEL_ISSUES), ("distill", METRICS))


def collect_warnings(ws: Workspace, have: dict[str, bool]) -> list[dict[str, str]]:
    """Every recorded stage summary's ``warnings``, in pipeline order, each tagged with its stage."""
    out = []
    for stage, name in WARNING_SOURCES:
        if not have.get(name):
            continue
        summary = recorded_summary(ws, stage)
        found = summary.get("warnings") if isinstance(summary, dict) else None
        for w in found if isinstance(found, list) else []:
            w = w if isinstance(w, dict) else {"message": str(w)}
            out.append({"stage": stage, "code": str(w.get("code", "")), "message": str(w.get("message", "")), "hint": str(w.get("hint", ""))})
    return out
