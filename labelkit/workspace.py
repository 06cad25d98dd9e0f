"""The workspace: artifact paths, manifest.json, content fingerprints, staleness, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from labelkit.dataset import MANIFEST_NAMES
from labelkit.errors import BadInputError

MANIFEST = "manifest.json"
FILE_WORKSPACE_SUFFIX = ".labelkit"  # a single-file DATA's workspace: <file>.labelkit


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp makes 0600 files; artifacts are for sharing (CI uploads, web servers): 0666 - umask.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or exception part-way leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for writers that want a filename (pyarrow, torch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_fingerprint(path: Path, *, chunk: int = 1 << 22) -> str:
    """Content hash (blake2b, 16 bytes) of one file."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_fingerprint(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the artifacts."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("labelkit-ml", "numpy", "pyarrow", "torch", "faiss-cpu", "open_clip_torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


@dataclass
class StageRecord:
    """What one stage did, as kept in manifest.json."""

    params: dict[str, Any]
    params_fingerprint: str
    inputs: dict[str, str]  # artifact name -> content fingerprint
    outputs: dict[str, str]  # artifact name -> content fingerprint
    versions: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0
    finished_at: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageRecord":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Workspace:
    """A dataset folder and the folder its artifacts go to (default ``DATA/.labelkit``)."""

    data: Path
    out: Path

    @classmethod
    def open(cls, data: Path | str, out: Path | str | None = None) -> "Workspace":
        """DATA is a folder (default out: ``DATA/.labelkit``) or, for predict, one file.

        A manifest file (``DATA/labels.csv`` or ``labels.parquet``) stands for its folder. Any
        other file gets a workspace of its own beside it, ``<file>.labelkit`` (``photo.jpg`` ->
        ``photo.jpg.labelkit/``), so it never overwrites the artifacts of a dataset folder it sits in.
        """
        data = Path(data)
        if not data.exists():
            raise BadInputError(f"{data}: no such dataset folder or file")
        if data.is_file() and data.name in MANIFEST_NAMES:
            data = data.parent
        elif data.is_file():
            return cls(data=data, out=Path(out) if out is not None else data.with_name(data.name + FILE_WORKSPACE_SUFFIX))
        if not data.is_dir():
            raise BadInputError(f"{data}: not a folder or a regular file; DATA must be a dataset folder")
        out_path = Path(out) if out is not None else data / ".labelkit"
        return cls(data=data, out=out_path)

    def path(self, name: str) -> Path:
        return self.out / name

    # -- manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        p = self.path(MANIFEST)
        if not p.exists():
            return {"stages": {}}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{p}: corrupt manifest ({e.msg}); delete it to start the workspace afresh") from None

    def record(self, stage: str) -> StageRecord | None:
        d = self.manifest().get("stages", {}).get(stage)
        return StageRecord.from_dict(d) if d else None

    def save_record(self, stage: str, rec: StageRecord) -> None:
        m = self.manifest()
        m.setdefault("stages", {})[stage] = rec.__dict__
        m["labelkit_manifest_version"] = 1
        with atomic_write(self.path(MANIFEST), "w") as f:
            json.dump(m, f, indent=2, sort_keys=True)

    def fingerprint(self, name: str) -> str | None:
        p = self.path(name)
        if not p.exists():
            return None
        if p.is_dir():
            return text_fingerprint(*(f"{q.relative_to(p)}:{file_fingerprint(q)}" for q in sorted(p.rglob("*")) if q.is_file()))
        return file_fingerprint(p)

    def staleness(self, stage: str, params_fp: str | None, inputs: dict[str, str]) -> str | None:
        """None when ``stage`` is up to date for these params and inputs, else the reason it is not."""
        rec = self.record(stage)
        if rec is None:
            return "never run"
        for name, fp in rec.outputs.items():
            cur = self.fingerprint(name)
            if cur is None:
                return f"{name} is missing"
            if cur != fp:
                return f"{name} was changed outside labelkit"
        if params_fp is not None and rec.params_fingerprint != params_fp:
            changed = "parameters changed"
            return changed
        for name, fp in inputs.items():
            if rec.inputs.get(name) != fp:
                return f"input {name} changed"
        return None

    def commit(self, stage: str, *, params: dict[str, Any], params_fp: str, inputs: dict[str, str], outputs: list[str], started: float) -> StageRecord:
        rec = StageRecord(
            params=params,
            params_fingerprint=params_fp,
            inputs=inputs,
            outputs={name: self.fingerprint(name) or "" for name in outputs},
            versions=library_versions(),
            wall_time_s=round(time.perf_counter() - started, 3),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self.save_record(stage, rec)
        return rec
