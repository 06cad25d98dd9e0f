"""What every stage shares: the result type, sample preparation, and the skip check."""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from labelkit import artifacts
from labelkit.config import DatasetConfig, StageConfig
from labelkit.dataset import MAX_LISTED, Samples, discover, samples_fingerprint
from labelkit.errors import LabelkitWarning
from labelkit.workspace import Workspace


@dataclass
class RunContext:
    """What every stage run gets: the workspace, dataset options, the config file, progress."""

    ws: Workspace
    dcfg: DatasetConfig
    file_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: Any = None

    def __post_init__(self):
        if self.progress is None:
            from labelkit._progress import NULL

            self.progress = NULL

    def config(self, stage: str, **overrides: Any) -> StageConfig:
        from labelkit.config import build_config

        return build_config(stage, self.file_config, overrides)


@dataclass
class StageResult:
    """What a stage did, for the CLI to render (``summary`` is also the ``--json`` payload)."""

    stage: str
    skipped: bool = False
    reason: str = ""  # why it ran (or why it was skipped)
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    upstream: list[StageResult] = field(default_factory=list)
    exit_code: int = 0  # non-zero when a CI gate was breached (the summary is still printed)
    message: str = ""

    @property
    def warnings(self) -> list[dict[str, str]]:
        """This stage's own health warnings (``summary["warnings"]``; see labelkit.health)."""
        return list(self.summary.get("warnings") or [])

    def all_warnings(self) -> list[dict[str, str]]:
        """This stage's warnings and those of the upstream stages it ran first, each tagged with its stage."""
        out = [w for u in self.upstream for w in u.all_warnings()]
        return out + [{"stage": self.stage, **w} for w in self.warnings]

    def to_json(self) -> dict[str, Any]:
        out = {"stage": self.stage, "skipped": self.skipped, "reason": self.reason, "outputs": self.outputs, **self.summary}
        if self.exit_code:
            out["exit_code"], out["message"] = self.exit_code, self.message
        if self.upstream:
            out["upstream"] = [u.to_json() for u in self.upstream]
        return out


def prepare_samples(ws: Workspace, dcfg: DatasetConfig, *, require_inputs: bool = True) -> tuple[Samples, str]:
    """Discover DATA; (re)write samples.parquet only when its content (or what was skipped) changed.

    ``samples.notices`` are the input's warnings (labels read as unlabeled, merged spellings,
    skipped files, ...): a stage adds them to its summary with :func:`input_warnings`. They and the
    skipped files (``[path, reason]``, the first MAX_LISTED) are also in samples.parquet's metadata.
    """
    samples = discover(ws.data, classes=dcfg.classes, require_inputs=require_inputs)
    fp = samples_fingerprint(samples, ws.data)
    path = ws.path(artifacts.SAMPLES)
    meta = {
        "content_fingerprint": fp, "classes": samples.classes, "kind": samples.kind, "task": samples.task, "origin": samples.origin,
        "notices": samples.notices, "n_skipped": len(samples.skipped), "skipped": [list(s) for s in samples.skipped[:MAX_LISTED]],
    }
    current = artifacts.stored_metadata(path)  # {} when missing or damaged: then rewritten from DATA
    if any(current.get(k) != meta[k] for k in ("content_fingerprint", "task", "notices", "skipped")):
        artifacts.write_samples(path, samples.table, meta)
    return samples, fp


def input_warnings(samples: Samples, warnings: list[dict[str, str]]) -> list[dict[str, str]]:
    """The input's notices, then the stage's own ``warnings`` (a code the stage also reports, e.g. one_class, once)."""
    own = {w["code"] for w in warnings}
    return [n for n in samples.notices if n["code"] not in own] + list(warnings)


def drop_damaged_artifacts(ws: Workspace) -> list[str]:
    """Remove every derived Parquet artifact of ``ws`` that does not open (its footer), each with a LabelkitWarning.

    Derived data only (artifacts.OWNER): the stage that owns each rebuilds it when next needed, as
    if it were missing, so no command trips over it. Run by a writing command once it holds the
    lock; a footer read per artifact, so milliseconds. Returns the names removed.
    """
    removed = []
    for name, owner in artifacts.OWNER.items():
        path = ws.path(name)
        if not path.exists() or (what := artifacts.problem(path)) is None:
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        then = "the next stage rewrites it from DATA" if name == artifacts.SAMPLES else f"'labelkit {owner}' rebuilds it (stages that need it run it first)"
        warnings.warn(f"{path}: {what}; removed it: {then}", LabelkitWarning, stacklevel=2)
        removed.append(name)
    return removed


def drop_damaged_outputs(ws: Workspace, stage: str) -> str | None:
    """Delete ``stage``'s Parquet outputs that do not open; what was wrong with the first, else None.

    An output whose content is as recorded was readable when written, so only its footer is
    checked; one changed since (or never recorded) is decoded in full, one row group at a time.
    """
    rec = ws.record(stage)
    recorded = rec.outputs if rec is not None else {}
    owned = {name for name, owner in artifacts.OWNER.items() if owner == stage and name != artifacts.SAMPLES}
    first = None
    for name in sorted({*recorded, *owned}):
        path = ws.path(name)
        if not name.endswith(".parquet") or not path.exists():
            continue
        what = artifacts.problem(path)
        if what is None and recorded.get(name) != ws.fingerprint(name):
            what = artifacts.problem(path, full=True)
        if what is not None:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            first = first or f"{name} was damaged ({what}), so {stage} rebuilds it"
    return first


def now() -> float:
    return time.perf_counter()
