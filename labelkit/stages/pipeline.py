"""The stage DAG: what each stage reads and writes, running missing upstream stages, and status."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from labelkit import artifacts
from labelkit.errors import BadInputError, LabelkitError
from labelkit.stages._common import RunContext, StageResult, prepare_samples


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str  # labelkit.stages.<module>.run(ctx, cfg, force=...)
    needs: tuple[str, ...]  # upstream stages whose outputs this one reads
    outputs: tuple[str, ...]
    entry: str = "run"  # the function the pipeline calls; detect-noise's never reads distill's output


STAGES: tuple[StageSpec, ...] = (
    StageSpec("embed", "embed", (), (artifacts.EMBEDDINGS,)),
    StageSpec("prototype", "prototype", ("embed",), (artifacts.PROTOTYPES,)),
    StageSpec("pseudolabel", "pseudolabel", ("prototype",), (artifacts.PSEUDOLABELS,)),
    StageSpec("detect-noise", "detect_noise", ("embed",), (artifacts.LABEL_ISSUES,), entry="run_first_pass"),
    StageSpec("distill", "distill", ("pseudolabel", "detect-noise"), ("student",)),
    StageSpec("report", "report", (), ("report.html",)),
)
BY_NAME = {s.name: s for s in STAGES}


def run_stage(ctx: RunContext, name: str, cfg=None, *, force: bool = False) -> StageResult:
    """Run one stage as a pipeline step (its config from ``--config`` and defaults unless given)."""
    spec = BY_NAME[name]
    module = importlib.import_module(f"labelkit.stages.{spec.module}")
    return getattr(module, spec.entry)(ctx, cfg if cfg is not None else ctx.config(name), force=force)


def ensure(ctx: RunContext, name: str) -> list[StageResult]:
    """Run ``name`` (and, first, its own upstream) when an output of it is missing or does not open.

    A damaged output (truncated, not Parquet) counts as missing: the stage that owns it rebuilds
    it (its own staleness check removes it first). Returns the results of what ran, each with
    ``reason`` saying why.
    """
    spec = BY_NAME[name]
    why = _missing_or_damaged(ctx, spec)
    if why is None:
        return []
    ran: list[StageResult] = []
    for up in spec.needs:
        ran.extend(ensure(ctx, up))
    res = run_stage(ctx, name)
    res.reason = f"{why}, so {name} ran first with its defaults"
    ran.append(res)
    return ran


def _missing_or_damaged(ctx: RunContext, spec: StageSpec) -> str | None:
    """'X was missing' or 'X was damaged (what)' for the first such output of ``spec`` (recorded ones included), else None."""
    rec = ctx.ws.record(spec.name)
    for o in dict.fromkeys([*spec.outputs, *(rec.outputs if rec else ())]):
        path = ctx.ws.path(o)
        if not path.exists():
            if o in spec.outputs:
                return f"{o} was missing"
            continue
        if o.endswith(".parquet") and (what := artifacts.problem(path)) is not None:
            return f"{o} was damaged ({what})"
    return None


ORDER = [s.name for s in STAGES]


def run_pipeline(ctx: RunContext, *, start: str | None = None, until: str | None = None, force: bool = False) -> list[StageResult]:
    """Every stage in order (each skipped when up to date), from ``start`` to ``until`` inclusive."""
    for name in (start, until):
        if name is not None and name not in BY_NAME:
            raise BadInputError(f"unknown stage '{name}'. Choose one of: {', '.join(ORDER)}")
    lo = ORDER.index(start) if start else 0
    hi = ORDER.index(until) if until else len(ORDER) - 1
    if lo > hi:
        raise BadInputError(f"--from {start} comes after --until {until}")
    results = []
    for name in ORDER[lo:hi + 1]:
        results.append(run_stage(ctx, name, force=force))
    return results


@dataclass
class StageStatus:
    stage: str
    state: str  # done, stale, missing
    reason: str = ""
    wall_time_s: float | None = None
    finished_at: str = ""


def status(ctx: RunContext) -> list[StageStatus]:
    """Each stage: done, stale (and why), or missing; compares recorded fingerprints with disk."""
    ws = ctx.ws
    try:
        _, samples_fp = prepare_samples(ws, ctx.dcfg, require_inputs=False)
    except LabelkitError:
        samples_fp = None
    out = []
    for spec in STAGES:
        rec = ws.record(spec.name)
        if rec is None:
            problem = ws.record_problem(spec.name)
            out.append(StageStatus(spec.name, "missing", f"never run (manifest.json: {problem})" if problem else "never run"))
            continue
        current = {name: (samples_fp if name == artifacts.SAMPLES else ws.fingerprint(name)) for name in rec.inputs}
        gone = [k for k, v in current.items() if v is None]
        reason = ws.staleness(spec.name, None, {k: v for k, v in current.items() if v is not None})
        if reason is None and gone:
            reason = f"input {gone[0]} is missing"
        if reason and reason.endswith(" was changed outside labelkit"):
            name = reason.split(" ", 1)[0]
            if name.endswith(".parquet") and (what := artifacts.problem(ws.path(name))) is not None:
                reason = f"{name} is damaged ({what}); the next run of {spec.name} rebuilds it"
        if reason and any(reason == f"{o} is missing" for o in spec.outputs):
            out.append(StageStatus(spec.name, "missing", reason))
        elif reason:
            out.append(StageStatus(spec.name, "stale", reason, rec.wall_time_s, rec.finished_at))
        else:
            out.append(StageStatus(spec.name, "done", "", rec.wall_time_s, rec.finished_at))
    return out
