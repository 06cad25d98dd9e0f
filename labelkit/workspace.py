"""The workspace: artifact paths, manifest.json, content fingerprints, staleness, atomic writes, the lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from labelkit.dataset import MANIFEST_NAMES
from labelkit.errors import BadInputError, LabelkitWarning, WorkspaceBusyError

MANIFEST = "manifest.json"
MANIFEST_INVALID = "manifest.json.invalid"  # an invalid manifest, kept aside when a stage writes a fresh one
LOCK = ".lock"  # held (an OS-level flock, via filelock) by every command that writes the workspace
LOCK_HOLDER = ".lock.json"  # pid, command and start time of the holder, for the message of a run that waits
FILE_WORKSPACE_SUFFIX = ".labelkit"  # a single-file DATA's workspace: <file>.labelkit


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp makes 0600 files; artifacts are for sharing (CI uploads, web servers): 0666 - umask.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _oserror(e: OSError) -> str:
    return e.strerror or str(e)


def _temp_beside(path: Path) -> tuple[int, str]:
    """mkstemp beside ``path``, with a one-line BadInputError when ``path`` cannot be written (a folder there, a file in the way, no permission, a name too long)."""
    try:
        if path.is_dir():
            raise BadInputError(f"{path}: is a folder; give a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise BadInputError(f"{path}: cannot write it ({_oserror(e)})") from None


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or exception part-way leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
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
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# Files this large or larger keep their content fingerprint in the user's cache, keyed by their
# stat; smaller ones are hashed every time (in milliseconds).
CACHED_FINGERPRINT_BYTES = 1 << 26
# A file changed less than this before its hash began is not cached: a second write within one
# timestamp tick (a few ms on Linux; 2 s on FAT) could leave size and times as they were (git's
# "racily clean" entries).
RACY_NS = 2_000_000_000


def file_fingerprint(path: Path, *, chunk: int = 1 << 22) -> str:
    """Content hash (blake2b, 16 bytes) of one file.

    A file of CACHED_FINGERPRINT_BYTES or more is hashed once per version: its fingerprint is
    kept in the user's cache (:func:`fingerprint_cache_dir`) under its device, inode, size,
    mtime and ctime, and read back while all five are unchanged. Any write changes the ctime (a
    tool that restores the mtime cannot restore it), a touch changes both (then the file is
    hashed again, to the same fingerprint), and a file changed within RACY_NS of its hash is not
    cached. DVC keeps such a stat-keyed state of hashes in a cache directory too.
    """
    path = Path(path)
    before = os.stat(path)
    if before.st_size < CACHED_FINGERPRINT_BYTES:
        return _hash_file(path, chunk)
    key = _stat_key(before)
    entry = _cache_file(path)
    cached = _read_cache(entry)
    if cached is not None and cached.get("stat") == key and isinstance(cached.get("fingerprint"), str):
        return cached["fingerprint"]
    started = time.time_ns()
    fp = _hash_file(path, chunk)
    after = os.stat(path)
    if _stat_key(after) == key and max(after.st_mtime_ns, after.st_ctime_ns) < started - RACY_NS:
        _write_cache(entry, {"path": str(path.resolve()), "stat": key, "fingerprint": fp})
    return fp


def _hash_file(path: Path, chunk: int) -> str:
    """blake2b (16 bytes) of the file's bytes, read into one reused buffer (no fresh allocation per chunk)."""
    h = hashlib.blake2b(digest_size=16)
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def fingerprint_cache_dir() -> Path:
    """Where large files' fingerprints are cached: $LABELKIT_CACHE_DIR, else $XDG_CACHE_HOME/labelkit, else ~/.cache/labelkit."""
    if os.environ.get("LABELKIT_CACHE_DIR"):
        return Path(os.environ["LABELKIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labelkit"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _cache_file(path: Path) -> Path:
    name = hashlib.blake2b(os.fsencode(path.resolve()), digest_size=16).hexdigest()
    return fingerprint_cache_dir() / "fingerprints" / f"{name}.json"


def _read_cache(entry: Path) -> dict[str, Any] | None:
    """A cache entry, or None when there is none or it does not parse (then the file is hashed)."""
    try:
        out = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def _write_cache(entry: Path, value: dict[str, Any]) -> None:
    """Write a cache entry atomically; a cache that cannot be written only costs the next run a hash."""
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(value, f)
            os.replace(tmp, entry)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


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


class RecordSchema(BaseModel):
    """The schema of one stage's record in manifest.json (extra keys are kept, for newer labelkits)."""

    model_config = ConfigDict(extra="allow")
    params: dict[str, Any]
    params_fingerprint: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    versions: dict[str, str] = {}
    wall_time_s: float = 0.0
    finished_at: str = ""


class ManifestSchema(BaseModel):
    """The schema of manifest.json: ``{"stages": {stage: record}, "labelkit_manifest_version": 1}``."""

    model_config = ConfigDict(extra="allow")
    stages: dict[str, dict[str, Any]] = {}
    labelkit_manifest_version: int = 1


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg'].lower()}" if where else err["msg"].lower()


def _holder(path: Path, *, patience_s: float = 1.0) -> str:
    """'another labelkit run (pid 123, 'labelkit run DATA', started 12:01:02)', from the holder's sidecar file.

    The holder writes that file just after taking the lock, so a waiter that arrives in between
    gives it up to ``patience_s`` to appear before saying less.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            info = json.loads(path.read_text())
            return f"another labelkit run (pid {int(info['pid'])}, '{info['command']}', started {info['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "another labelkit run"
            time.sleep(0.05)


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
    def from_dict(cls, d: dict[str, Any]) -> StageRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _warn(message: str) -> None:
    warnings.warn(message, LabelkitWarning, stacklevel=3)


def _check_out(out: Path, *, given: bool) -> Path:
    """The workspace folder ``out``, unless a file is there (a file in the way is found when the lock makes the folder)."""
    name = f"--out {out}" if given else f"workspace {out}"
    try:
        if out.exists() and not out.is_dir():
            raise BadInputError(f"{name}: it is a file, not a folder; give a folder for the artifacts")
    except OSError as e:
        raise BadInputError(f"{name}: cannot use it ({_oserror(e)})") from None
    return out


@dataclass
class Workspace:
    """A dataset folder and the folder its artifacts go to (default ``DATA/.labelkit``)."""

    data: Path
    out: Path
    _problems: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)  # stage ('' = whole file) -> what is wrong
    _reported: set[str] = field(default_factory=set, init=False, repr=False, compare=False)  # warned once per object, not per read
    _lock: Any = field(default=None, init=False, repr=False, compare=False)
    _lock_depth: int = field(default=0, init=False, repr=False, compare=False)

    @classmethod
    def open(cls, data: Path | str, out: Path | str | None = None) -> Workspace:
        """DATA is a folder (default out: ``DATA/.labelkit``) or, for predict, one file.

        A manifest file (``DATA/labels.csv`` or ``labels.parquet``) stands for its folder. Any
        other file gets a workspace of its own beside it, ``<file>.labelkit`` (``photo.jpg`` ->
        ``photo.jpg.labelkit/``), so it never overwrites the artifacts of a dataset folder it sits in.
        """
        data = Path(data)
        try:
            if not data.exists():
                raise BadInputError(f"{data}: no such dataset folder or file")
            if data.is_file() and data.name in MANIFEST_NAMES:
                data = data.parent
            elif data.is_file():
                out_path = Path(out) if out is not None else data.with_name(data.name + FILE_WORKSPACE_SUFFIX)
                return cls(data=data, out=_check_out(out_path, given=out is not None))
            if not data.is_dir():
                raise BadInputError(f"{data}: not a folder or a regular file; DATA must be a dataset folder")
        except OSError as e:  # a name too long, a loop of links, no permission to look
            raise BadInputError(f"{data}: cannot read it ({_oserror(e)})") from None
        out_path = Path(out) if out is not None else data / ".labelkit"
        return cls(data=data, out=_check_out(out_path, given=out is not None))

    def path(self, name: str) -> Path:
        return self.out / name

    # -- the lock ---------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        """Whether this Workspace object holds its lock now."""
        return self._lock_depth > 0

    def _remove_orphan_temps(self) -> None:
        """Delete the temporary files of atomic writes whose process was killed (SIGKILL skips the
        cleanup): with the lock held no other writer can own one, and each may be artifact-sized."""
        if not self.out.is_dir():
            return
        for tmp in self.out.rglob(".*.tmp"):  # also in student/ and embeddings.parts/<fingerprint>/
            with contextlib.suppress(OSError):
                tmp.unlink()

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None, command: str | None = None,
             what: str = "the artifacts") -> Iterator[None]:
        """Hold ``OUT/.lock`` for the block: one writer per workspace at a time.

        Re-entrant within this Workspace object. Another process holding it makes this one wait,
        after calling ``on_wait`` once with what it waits for (default: a LabelkitWarning), or, with
        ``wait=False``, raise WorkspaceBusyError at once. The lock is the OS's (flock, through
        filelock): a holder killed even by SIGKILL releases it, so a stale lock cannot block anyone.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        import filelock

        try:
            created = not self.out.exists()
            self._lock = self._lock or filelock.FileLock(self.path(LOCK))
            try:
                self._acquire(timeout=0)
            except filelock.Timeout:
                holder = _holder(self.path(LOCK_HOLDER))
                if not wait:
                    raise WorkspaceBusyError(f"{self.out} is in use by {holder}; wait for it to finish, or rerun without --no-wait to wait") from None
                (on_wait or _warn)(f"waiting for {holder} on {self.out} ...")
                self._acquire(timeout=-1)
        except OSError as e:
            raise BadInputError(f"{self.out}: cannot create the workspace folder ({_oserror(e)}); pass --out DIR to write {what} elsewhere") from None
        self._lock_depth = 1
        try:
            self._remove_orphan_temps()
            with contextlib.suppress(OSError):  # the holder's name is a courtesy to waiters, never a reason to fail
                info = {"pid": os.getpid(), "command": command or " ".join(["labelkit", *sys.argv[1:]]), "started": time.strftime("%H:%M:%S")}
                with atomic_write(self.path(LOCK_HOLDER), "w") as f:
                    json.dump(info, f)
            yield
        finally:
            self._lock_depth = 0
            with contextlib.suppress(OSError):
                self.path(LOCK_HOLDER).unlink()
            # A command that failed before writing anything leaves no workspace behind (nothing
            # written), when it made the folder itself and nothing but the lock is in it.
            bare = created and [q.name for q in self.out.iterdir()] == [LOCK]
            with contextlib.suppress(OSError):
                if bare:
                    self.path(LOCK).unlink()
                    self.out.rmdir()
            self._lock.release()

    def _acquire(self, timeout: float) -> None:
        for _ in range(100):
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                self._lock.acquire(timeout=timeout)
                return
            except FileNotFoundError:
                continue  # the holder removed a workspace it had made and left empty: make it again
        raise FileNotFoundError(2, "No such file or directory", str(self.path(LOCK)))

    # -- manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """manifest.json checked against ManifestSchema/RecordSchema.

        It only records history, so an invalid one is not fatal: the whole file (not JSON, not an
        object) or one stage's record (a missing or mistyped field) is set aside as "never run",
        with a warning naming the file and what is wrong; that stage reruns. ``record_problem``
        says why; the invalid file is kept as manifest.json.invalid when a stage next writes.
        """
        p = self.path(MANIFEST)
        self._problems.clear()
        try:
            raw = p.read_text()
        except FileNotFoundError:
            return {"stages": {}}
        except (OSError, UnicodeDecodeError) as e:
            return self._invalid("", f"unreadable ({_oserror(e) if isinstance(e, OSError) else 'not UTF-8'})")
        try:
            m = ManifestSchema.model_validate(json.loads(raw)).model_dump()
        except json.JSONDecodeError as e:
            return self._invalid("", f"not valid JSON ({e.msg} at line {e.lineno})")
        except ValidationError as e:
            return self._invalid("", f"not a labelkit manifest ({_first_error(e)})")
        for stage, rec in list(m["stages"].items()):
            try:
                m["stages"][stage] = RecordSchema.model_validate(rec).model_dump()
            except ValidationError as e:
                del m["stages"][stage]
                self._invalid(stage, f"the record of stage '{stage}' is invalid (stages.{stage}.{_first_error(e)})")
        return m

    def _invalid(self, stage: str, what: str) -> dict[str, Any]:
        first = stage not in self._reported
        self._problems[stage] = what
        if first:
            self._reported.add(stage)
            _warn(f"{self.path(MANIFEST)}: {what}; treating {'every stage' if not stage else repr(stage)} as never run (it reruns)")
        return {"stages": {}}

    def record_problem(self, stage: str) -> str | None:
        """Why ``stage``'s record could not be used (manifest.json invalid, as a whole or for it), else None."""
        self.manifest()
        return self._problems.get("") or self._problems.get(stage)

    def record(self, stage: str) -> StageRecord | None:
        d = self.manifest().get("stages", {}).get(stage)
        return StageRecord.from_dict(d) if d else None

    def save_record(self, stage: str, rec: StageRecord, extra: dict[str, Any] | None = None) -> None:
        m = self.manifest()
        if self._problems:  # nothing lost: the invalid file is kept beside the fresh one
            with contextlib.suppress(OSError):
                shutil.copyfile(self.path(MANIFEST), self.path(MANIFEST_INVALID))
        m.setdefault("stages", {})[stage] = {**rec.__dict__, **(extra or {})}
        m["labelkit_manifest_version"] = 1
        with atomic_write(self.path(MANIFEST), "w") as f:
            json.dump(m, f, indent=2, sort_keys=True)
        self._problems.clear()

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
            problem = self._problems.get("") or self._problems.get(stage)
            return f"never run (manifest.json: {problem})" if problem else "never run"
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

    def commit(self, stage: str, *, params: dict[str, Any], params_fp: str, inputs: dict[str, str], outputs: list[str], started: float,
               summary: dict[str, Any] | None = None, **extra: Any) -> StageRecord:
        """Record ``stage``'s run; ``summary`` (what a skipped run reports) and ``extra`` keys are kept in its record."""
        rec = StageRecord(
            params=params,
            params_fingerprint=params_fp,
            inputs=inputs,
            outputs={name: self.fingerprint(name) or "" for name in outputs},
            versions=library_versions(),
            wall_time_s=round(time.perf_counter() - started, 3),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        more = {k: v for k, v in extra.items() if v is not None}
        if summary is not None:
            more["summary"] = json.loads(json.dumps(summary, default=str))  # as --json prints it
        self.save_record(stage, rec, more)
        return rec
