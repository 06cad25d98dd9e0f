"""The stage DAG: which artifacts each stage reads and writes, and ``status`` over all of them."""

from __future__ import annotations

from dataclasses import dataclass

from labelkit import artifacts
from labelkit.config import DatasetConfig
from labelkit.errors import LabelkitError
from labelkit.stages._common import prepare_samples
from labelkit.workspace import Workspace


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[str, ...]  # artifact names (samples.parquet is every stage's input)
    outputs: tuple[str, ...]


STAGES: tuple[StageSpec, ...] = (
    StageSpec("embed", (artifacts.SAMPLES,), (artifacts.EMBEDDINGS,)),
)


@dataclass
class StageStatus:
    stage: str
    state: str  # done, stale, missing
    reason: str = ""
    wall_time_s: float | None = None
    finished_at: str = ""


def status(ws: Workspace, dcfg: DatasetConfig) -> list[StageStatus]:
    """Each stage: done, stale (and why), or missing; compares recorded fingerprints with disk."""
    try:
        _, samples_fp = prepare_samples(ws, dcfg, require_inputs=False)
    except LabelkitError:
        samples_fp = None
    out = []
    for spec in STAGES:
        rec = ws.record(spec.name)
        if rec is None:
            out.append(StageStatus(spec.name, "missing", "never run"))
            continue
        current = {}
        for name in spec.inputs:
            current[name] = samples_fp if name == artifacts.SAMPLES else ws.fingerprint(name)
        reason = ws.staleness(spec.name, None, {k: v for k, v in current.items() if v is not None})
        missing_inputs = [k for k, v in current.items() if v is None]
        if reason is None and missing_inputs:
            reason = f"input {missing_inputs[0]} is missing"
        if reason and "is missing" in reason and reason.startswith(spec.outputs[0]):
            out.append(StageStatus(spec.name, "missing", reason))
        elif reason:
            out.append(StageStatus(spec.name, "stale", reason, rec.wall_time_s, rec.finished_at))
        else:
            out.append(StageStatus(spec.name, "done", "", rec.wall_time_s, rec.finished_at))
    return out
