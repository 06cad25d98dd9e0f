"""What every stage shares: the result type, sample preparation, and the skip check."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelkit import artifacts
from labelkit.config import DatasetConfig, StageConfig
from labelkit.dataset import MAX_LISTED, Samples, discover
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
    upstream: list["StageResult"] = field(default_factory=list)
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


def samples_fingerprint(samples: Samples, data_root) -> str:
    """Content fingerprint of the dataset: ids, sources, labels, and each source file's size and mtime."""
    h = hashlib.blake2b(digest_size=16)
    t = samples.table
    for col in ("id", "source", "label", "split"):
        h.update("\x1f".join("" if v is None else str(v) for v in t[col]).encode())
        h.update(b"\x1e")
    h.update("\x1f".join("" if v is None else "|".join(v) for v in t["labels"]).encode())
    h.update(("\x1f".join(samples.classes)).encode())
    if samples.kind == "image":
        for src in t["source"]:
            try:
                st = os.stat(os.path.join(data_root, src))
                h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(b"missing;")
    if samples.vectors is not None:
        h.update(np.ascontiguousarray(samples.vectors).tobytes())
    return h.hexdigest()


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
        "content_fingerprint": fp, "classes": samples.classes, "kind": samples.kind, "origin": samples.origin,
        "notices": samples.notices, "n_skipped": len(samples.skipped), "skipped": [list(s) for s in samples.skipped[:MAX_LISTED]],
    }
    current = artifacts.read_metadata(path) if path.exists() else {}
    if any(current.get(k) != meta[k] for k in ("content_fingerprint", "notices", "skipped")):
        artifacts.write_samples(path, samples.table, meta)
    return samples, fp


def input_warnings(samples: Samples, warnings: list[dict[str, str]]) -> list[dict[str, str]]:
    """The input's notices, then the stage's own ``warnings`` (a code the stage also reports, e.g. one_class, once)."""
    own = {w["code"] for w in warnings}
    return [n for n in samples.notices if n["code"] not in own] + list(warnings)


def stale_reason(ws: Workspace, stage: str, cfg: StageConfig, inputs: dict[str, str], *, force: bool, params_fp: str | None = None) -> str | None:
    """None when the stage can be skipped; otherwise why it must run."""
    if force:
        return "--force"
    return ws.staleness(stage, params_fp or cfg.fingerprint(), inputs)


def up_to_date(ws: Workspace, stage: str, output: str, upstream: list[StageResult]) -> StageResult:
    """The result of a skipped stage, with the summary its last run stored in the artifact."""
    res = StageResult(stage, skipped=True, reason="up to date", outputs=[output], upstream=upstream)
    res.summary = artifacts.read_metadata(ws.path(output)).get("summary", {})
    return res


def now() -> float:
    return time.perf_counter()
