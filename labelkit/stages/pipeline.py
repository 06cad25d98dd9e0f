"""The stage DAG (declared by the stages themselves, see labelkit.stages._runner): run it, or show its status."""

from __future__ import annotations

from dataclasses import dataclass

from labelkit import artifacts
from labelkit.errors import BadInputError, LabelkitError
from labelkit.stages import _runner
from labelkit.stages._common import RunContext, StageResult, prepare_samples


def pipeline_nodes() -> list[_runner.Stage]:
    """The nodes `labelkit run` runs, in order (detect-noise's --dynamics pass is asked for by hand)."""
    return [s for s in _runner.nodes() if s.in_pipeline]


# The stage each registered module declares for `labelkit run`, named without importing the modules
# (importing them all costs seconds before the lock is taken; tests/unit/test_runner.py checks the names).
ORDER = [m.replace("_", "-") for m in _runner.MODULES]


def run_stage(ctx: RunContext, name: str, cfg=None, *, force: bool = False) -> StageResult:
    """Run one stage as a pipeline step (its config from ``--config`` and defaults unless given)."""
    return _runner.run_node(ctx, _runner.node(name), cfg, force=force)


def run_pipeline(ctx: RunContext, *, start: str | None = None, until: str | None = None, force: bool = False) -> list[StageResult]:
    """Every stage in order (each skipped when up to date), from ``start`` to ``until`` inclusive."""
    order = [s.id for s in pipeline_nodes()]
    for name in (start, until):
        if name is not None and name not in order:
            raise BadInputError(f"unknown stage '{name}'. Choose one of: {', '.join(order)}")
    lo = order.index(start) if start else 0
    hi = order.index(until) if until else len(order) - 1
    if lo > hi:
        raise BadInputError(f"--from {start} comes after --until {until}")
    return [run_stage(ctx, name, force=force) for name in order[lo:hi + 1]]


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
    for spec in pipeline_nodes():
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
