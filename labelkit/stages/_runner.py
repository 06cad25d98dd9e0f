"""One stage runner: every stage declares itself once (a :class:`Stage`), and :func:`run` does the rest.

DVC's ``Stage.reproduce`` is the model. A declaration names the stage, the artifacts it reads
(from which both the DAG and the fingerprinted inputs derive), the artifacts it writes, its config
class and its ``build`` (the stage's I/O and its one call into compute). :func:`run` then, in order:
takes the workspace lock (re-entrant: the CLI already holds it), reads DATA into samples.parquet,
runs the stage's own refusals, runs the producers of missing or damaged inputs with their defaults,
fingerprints, skips when up to date (the skipped run's summary is the one the manifest recorded),
calls ``build``, and commits the manifest record with the summary and the wall time.

Stages are found by name in :data:`MODULES` (a registry: ``labelkit.stages.<module>.SPEC``, or
``SPECS`` for a stage with more than one node, such as detect-noise's ``--dynamics`` pass).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelkit import artifacts
from labelkit.config import StageConfig
from labelkit.dataset import Samples
from labelkit.stages._common import RunContext, StageResult, drop_damaged_outputs, now, prepare_samples
from labelkit.workspace import Workspace, file_fingerprint

# The stage modules, in pipeline order (``labelkit run`` runs the nodes of this order whose
# ``in_pipeline`` is true). A module declares ``SPEC`` (one node) or ``SPECS`` (several).
MODULES = ("embed", "prototype", "pseudolabel", "discover", "detect_noise", "distill", "report")
STUDENT = "student"  # distill's output folder
DYNAMICS = "student/dynamics.parquet"  # distill's training dynamics, read by detect-noise --dynamics
METRICS = "student/metrics.json"


@dataclass
class Job:
    """One run of one stage: what ``build`` and the hooks read and may extend."""

    ctx: RunContext
    spec: Stage
    cfg: StageConfig
    force: bool = False
    samples: Samples | None = None
    inputs: dict[str, str | Future] = field(default_factory=dict)  # artifact (or file) -> content fingerprint, as recorded (Future: being hashed)
    params: dict[str, Any] = field(default_factory=dict)  # the parameters recorded (default: cfg.result_params())
    params_fp: str = ""  # what the skip check compares (default: cfg.fingerprint())
    outputs: list[str] = field(default_factory=list)  # what this run wrote (build may add optional ones)
    upstream: list[StageResult] = field(default_factory=list)
    started: float = field(default_factory=now)
    step: bool = False  # a pipeline step (see run)
    state: dict[str, Any] = field(default_factory=dict)  # what a hook found that build needs too (a file's fingerprint)

    @property
    def ws(self) -> Workspace:
        return self.ctx.ws

    @property
    def progress(self):
        return self.ctx.progress


Hook = Callable[[Job], None]


@dataclass(frozen=True)
class Stage:
    """A stage's one declaration.

    ``inputs`` are the artifacts it reads (a tuple, or a function of its config): each one's
    producer runs first when it is missing or damaged, and each is fingerprinted for the skip
    check. ``optional`` ones are fingerprinted when present and never make their producer run.
    ``files(cfg)`` names the user's own files it reads (input name -> path, e.g. --pred-probs):
    each is content-fingerprinted into ``job.inputs`` by a background thread started before DATA
    is read, so hashing a large file overlaps discovery (and, with --force, the build).
    ``build(job) -> summary`` does the work and writes ``outputs`` atomically (artifacts.write_table).
    Hooks, each optional: ``check`` refuses bad input before anything runs (after DATA is read);
    ``key`` adds what else the skip check must see (a user file's fingerprint, parameters that
    are not the config's) to ``job.inputs``/``job.params``/``job.params_fp``; ``explain`` rewords
    a stale reason; ``after`` runs on the result, skipped or not (CI gates).
    """

    name: str  # the command, and the stage's key in manifest.json
    config: type[StageConfig]
    build: Callable[[Job], dict[str, Any]]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    optional: tuple[str, ...] = ()
    files: Callable[[Any], dict[str, Path]] | None = None
    node: str = ""  # the DAG node's name when a stage has several (default: name)
    refines: str | None = None  # a node that rewrites this node's outputs with more evidence (its run keeps satisfying this node)
    in_pipeline: bool = True  # run by `labelkit run`
    samples: bool = True  # read DATA into samples.parquet first
    require_inputs: bool | Callable[[Any], bool] = True  # DATA must have inputs (paths, texts or vectors)
    configure: Callable[[Any], Any] | None = None  # the config this node runs with, from the one given
    check: Hook | None = None
    key: Hook | None = None
    explain: Callable[[Job, str], str] | None = None
    after: Callable[[Job, StageResult], None] | None = None

    @property
    def id(self) -> str:
        return self.node or self.name

    def reads(self, cfg) -> tuple[str, ...]:
        return self.inputs(cfg) if callable(self.inputs) else self.inputs


# -- the registry -----------------------------------------------------------------------------


def nodes() -> list[Stage]:
    """Every declared node, in pipeline order."""
    out = []
    for name in MODULES:
        module = importlib.import_module(f"labelkit.stages.{name}")
        out.extend(getattr(module, "SPECS", None) or [module.SPEC])
    return out


def node(name: str) -> Stage:
    for s in nodes():
        if s.id == name:
            return s
    raise KeyError(name)


def producer(artifact: str) -> Stage | None:
    """The pipeline node that writes ``artifact`` (None for DATA's own files and user files)."""
    for s in nodes():
        if s.in_pipeline and artifact in s.outputs:
            return s
    return None


# -- running ----------------------------------------------------------------------------------


def run(ctx: RunContext, spec: Stage, cfg: StageConfig, *, force: bool = False, step: bool = False) -> StageResult:
    """Run ``spec`` as the make-like step it is: up to date -> skipped, else built and recorded.

    ``step``: run as a pipeline step (``labelkit run``, a missing upstream), which a current run
    of a node that refines this one satisfies; a stage asked for by name is not.
    """
    with ctx.ws.lock(command=f"labelkit {spec.name}"):
        job = Job(ctx, spec, spec.configure(cfg) if spec.configure else cfg, force=force, step=step)
        hashing = {name: _hash_in_background(path) for name, path in (spec.files(job.cfg) if spec.files else {}).items()}
        if spec.samples:
            require = spec.require_inputs(job.cfg) if callable(spec.require_inputs) else spec.require_inputs
            job.samples, samples_fp = prepare_samples(ctx.ws, ctx.dcfg, require_inputs=require)
            job.inputs[artifacts.SAMPLES] = samples_fp
        if spec.check:
            spec.check(job)
        for name in spec.reads(job.cfg):
            job.upstream += ensure(ctx, name)
            job.inputs[name] = ctx.ws.fingerprint(name) or ""
        for name in spec.optional:
            if ctx.ws.path(name).exists():
                job.inputs[name] = ctx.ws.fingerprint(name) or ""
        job.params, job.params_fp = job.cfg.result_params(), job.cfg.fingerprint()
        if spec.key:
            spec.key(job)
        for name, path in hashing.items():  # after the key hook, which refuses a missing file with its own message
            job.inputs[name] = path if isinstance(path, Future) else file_fingerprint(path)
        if not job.force:  # the skip check needs them now; --force only records them
            _resolve(job.inputs)
        reason = stale_reason(job)
        if reason is None:
            res = StageResult(spec.name, skipped=True, reason="up to date", summary=recorded_summary(ctx.ws, spec.name),
                              outputs=list(spec.outputs), upstream=job.upstream)
        else:
            job.outputs = list(spec.outputs)
            summary = spec.build(job)
            _resolve(job.inputs)
            ctx.ws.commit(spec.name, params=job.params, params_fp=job.params_fp, inputs=job.inputs, outputs=job.outputs,
                          started=job.started, summary=summary, node=spec.id, refines=spec.refines,
                          base_params_fingerprint=_base_fp(spec, job),
                          task=job.samples.task if job.samples is not None else None)
            summary["wall_time_s"] = round(now() - job.started, 2)
            res = StageResult(spec.name, reason=reason, summary=summary, outputs=list(job.outputs), upstream=job.upstream)
        if spec.after:
            spec.after(job, res)
        return res


def _hash_in_background(path: Path) -> Future | Path:
    """A Future of ``path``'s content fingerprint, hashed by a daemon thread (hashlib and file reads
    release the GIL, so it runs beside the main thread); ``path`` itself when it is not a file.

    Read in 16 MB chunks: the thread takes the GIL back between chunks, and while the main thread
    runs Python it may wait a switch interval (5 ms) each time; larger chunks wait less often.
    """
    path = Path(path)
    if not path.is_file():
        return path
    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(file_fingerprint(path, chunk=1 << 24))  # the same digest whatever the chunk
        except BaseException as e:  # handed to whoever waits on the result
            fut.set_exception(e)

    threading.Thread(target=work, name=f"fingerprint {path.name}", daemon=True).start()
    return fut


def _resolve(inputs: dict[str, str | Future]) -> None:
    """Wait for the fingerprints still being hashed (a hashing error is raised here)."""
    for name, fp in inputs.items():
        if isinstance(fp, Future):
            inputs[name] = fp.result()


def _base_fp(spec: Stage, job: Job) -> str | None:
    """For a refining node: the params fingerprint of the node it refines, run with this config."""
    if spec.refines is None:
        return None
    if "base_params_fp" in job.state:  # the base node's key hook adds to its config's fingerprint
        return job.state["base_params_fp"]
    try:
        base = node(spec.refines)
    except KeyError:  # a node outside the registry (tests): the base runs with the same config
        return job.cfg.fingerprint()
    return (base.configure(job.cfg) if base.configure else job.cfg).fingerprint()


def stale_reason(job: Job) -> str | None:
    """None when the stage can be skipped; otherwise why it must run.

    A stage that must run first removes its own outputs that no longer open (truncated, corrupt):
    they are derived data it is about to rebuild, and a stage that resumes from its previous
    output (embed) must not trip over them. The reason then says so. A record written by a node
    that refines this one (detect-noise --dynamics) over the same inputs and base parameters
    satisfies this one. A record without a summary (an older labelkit's) is rebuilt.
    """
    ws, spec = job.ws, job.spec
    reason = "--force" if job.force else ws.staleness(spec.name, job.params_fp, job.inputs)
    if reason is not None and not job.force and job.step and _refined(job):
        return None
    if reason is None and "summary" not in (ws.manifest().get("stages", {}).get(spec.name) or {}):
        reason = "manifest.json records no summary of its last run (an older labelkit)"
    if reason is not None:
        removed = drop_damaged_outputs(ws, spec.name)
        if removed and not job.force:
            reason = removed
        elif spec.explain is not None:
            reason = spec.explain(job, reason)
    return reason


def _refined(job: Job) -> bool:
    raw = job.ws.manifest().get("stages", {}).get(job.spec.name) or {}
    return (raw.get("refines") == job.spec.id and raw.get("base_params_fingerprint") == job.params_fp
            and job.ws.staleness(job.spec.name, None, job.inputs) is None)


def recorded_summary(ws: Workspace, stage: str) -> dict[str, Any]:
    """The summary ``stage``'s last run stored in manifest.json ({} if none)."""
    raw = ws.manifest().get("stages", {}).get(stage) or {}
    summary = raw.get("summary")
    return dict(summary) if isinstance(summary, dict) else {}


def ensure(ctx: RunContext, artifact: str) -> list[StageResult]:
    """Run the producer of ``artifact`` (its own missing upstream first) when an output of it is missing or damaged.

    A damaged output (truncated, not Parquet) counts as missing: the stage that owns it rebuilds
    it (its own staleness check removes it first). Returns the results of what ran, each with
    ``reason`` saying why; [] for DATA's files and when nothing was missing.
    """
    spec = producer(artifact)
    if spec is None:
        return []
    why = missing_or_damaged(ctx.ws, spec)
    if why is None:
        return []
    res = run_node(ctx, spec)
    res.reason = f"{why}, so {spec.name} ran first with its defaults"
    return [res]


def run_node(ctx: RunContext, spec: Stage, cfg: StageConfig | None = None, *, force: bool = False) -> StageResult:
    """Run one node with ``cfg``, or its config from ``--config`` and the defaults."""
    return run(ctx, spec, cfg if cfg is not None else ctx.config(spec.name), force=force, step=True)


def missing_or_damaged(ws: Workspace, spec: Stage) -> str | None:
    """'X was missing' or 'X was damaged (what)' for the first such output of ``spec`` (recorded ones included), else None."""
    rec = ws.record(spec.name)
    for o in dict.fromkeys([*spec.outputs, *(rec.outputs if rec else ())]):
        path = ws.path(o)
        if not path.exists():
            if o in spec.outputs:
                return f"{o} was missing"
            continue
        if o.endswith(".parquet") and (what := artifacts.problem(path)) is not None:
            return f"{o} was damaged ({what})"
    return None
