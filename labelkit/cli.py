"""The Typer app: options -> config -> stages.*.run -> rich rendering. No math here.

Exit codes: 0 ok; 1 error (bad input, missing artifact, bad config file, a bug); 2 usage (Click,
a bad option value, a bad ``--set``); 3 a CI threshold was breached (``detect-noise
--fail-above``); 4 warnings under ``--strict``; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import json
import sys
import tomllib
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from labelkit import __version__
from labelkit._richprogress import RichProgress
from labelkit.config import (
    STAGE_CONFIGS,
    Option,
    OptionError,
    build_config,
    load_config_file,
    option_of,
    options,
)
from labelkit.dataset import parse_classes_option
from labelkit.errors import LabelkitError, LabelkitWarning
from labelkit.health import STRICT_EXIT
from labelkit.workspace import Workspace

# What the running command holds until it ends (the workspace lock); set by Root.invoke, per invocation.
_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("labelkit_held", default=None)


class Root(TyperGroup):
    """The root command: every error ends as one line on stderr with an honest exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            # A LabelkitWarning (a cache rebuilt, manifest.json invalid) is one line, as text; what the
            # command holds (the workspace lock) is released when it ends, however it ends.
            with warnings.catch_warnings(), contextlib.ExitStack() as held:
                warnings.showwarning = _show_warning
                token = _HELD.set(held)
                try:
                    return super().invoke(ctx)
                finally:
                    _HELD.reset(token)
        except LabelkitError as e:
            _error(str(e))
            raise typer.Exit(e.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # exit codes and usage errors (Click's 2) pass through as they are
        except KeyboardInterrupt:
            console().print("interrupted", style="bold red")
            raise typer.Exit(130) from None
        except Exception as e:  # the last resort: a bug, said in one line unless --debug
            if ctx.params.get("debug"):
                raise
            _error(f"internal error: {type(e).__name__}: {e} (this is a bug in labelkit; rerun with --debug for the traceback and report it)")
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=Root,
    name="labelkit",
    help="Pseudo-labeling and label cleaning: embed, prototype, pseudolabel, detect-noise, distill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: "[default: 0.9]" and "cuda[:N]" print as written
)


def console(*, stderr: bool = True, markup: bool = True) -> Console:
    """A console on the current stdout/stderr; piped (not a terminal), it never wraps lines."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, markup=markup, emoji=False, soft_wrap=not tty, width=None if tty else 100_000)


def _error(text: str) -> None:
    console().print(Text.assemble(("error:", "bold red"), " ", text))


def _waiting(text: str) -> None:
    console().print(Text(text, style="yellow"))


_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, LabelkitWarning):
        console().print(Text.assemble(("warning:", "yellow"), " ", str(message)))
    else:
        _showwarning(message, category, filename, lineno, file, line)


def flag(o: Option, *, help: str | None = None) -> Any:
    """The Typer option of a config field, all of it generated from the field (labelkit/config.py)."""
    ann = o.annotation
    if o.choices:
        ann = str  # the config model checks the value: the error names the flag and the choices
    elif o.repeatable:
        ann = list[typing.get_args(ann)[0]]
    metavar = f"[{'|'.join(o.choices)}]" if o.choices else f"<{typing.get_args(ann)[0].__name__}>" if o.repeatable else None
    return Annotated[ann | None, typer.Option(o.flag, help=help or o.help_text(), show_default=False, metavar=metavar)]


def stage_command(name: str, stage: str | None = None):
    """Register ``fn`` as command ``name`` with one option per field of the stage's config, after its arguments.

    ``fn`` takes ``**options`` (parameter name -> value, None when not given) and hands them to
    ``Context.config``; the flags, types, help and defaults are the config model's.
    """
    def register(fn):
        sig = inspect.signature(fn, eval_str=True)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        n_args = sum(p.default is inspect.Parameter.empty for p in params)
        generated = [inspect.Parameter(o.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=flag(o))
                     for o in options(stage or name) if o.cli]
        fn.__signature__ = sig.replace(parameters=[*params[:n_args], *generated, *params[n_args:]])
        return app.command(name)(fn)

    return register


DataArg = Annotated[Path, typer.Argument(help="dataset folder (manifest labels.csv/.parquet, or class image folders)", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", help="workspace folder for artifacts [default: DATA/.labelkit]")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file with one [section] per stage; options given here override it")]
ClassesOpt = Annotated[str | None, typer.Option("--classes", help=option_of("dataset", "classes").help)]
ForceOpt = Annotated[bool, typer.Option("--force", help="rerun even when the stage is up to date")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout and nothing else there")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="exit 1 at once when another labelkit run holds the workspace, instead of waiting for it")]
StrictOpt = Annotated[bool, typer.Option("--strict", help=f"exit {STRICT_EXIT} when any stage raised a warning (after printing the results)")]


def parse_set(items: list[str]) -> dict[tuple[str, str], tuple[Any, str]]:
    """``--set STAGE.KEY=VALUE`` items -> {(stage, key): (value, "--set STAGE.KEY")}; VALUE is TOML, else plain text."""
    out = {}
    for item in items:
        path, eq, raw = item.partition("=")
        stage, dot, key = path.strip().partition(".")
        if not (eq and dot and stage and key):
            raise OptionError(f"--set {item}: expected STAGE.KEY=VALUE, e.g. --set pseudolabel.threshold=0.9")
        if stage not in STAGE_CONFIGS:
            raise OptionError(f"--set {path}: unknown stage '{stage}'; known: {', '.join(sorted(STAGE_CONFIGS))}")
        try:
            parsed = tomllib.loads(f"v = {raw}")
        except tomllib.TOMLDecodeError:
            parsed = {}
        out[stage, key.strip()] = (parsed["v"] if list(parsed) == ["v"] else raw, f"--set {stage}.{key.strip()}")
    return out


class Context:
    """What every stage command resolves first: the workspace, the config (file, then --set), the dataset options."""

    def __init__(self, data: Path, out: Path | None, config: Path | None, classes: str | None, json_out: bool,
                 sets: dict[tuple[str, str], tuple[Any, str]] | None = None, *, wait: bool = True, lock: bool = True, what: str = "the artifacts"):
        self.ws = Workspace.open(data, out)
        self.wait, self.lock, self.what = wait, lock, what  # the workspace lock, taken by run_context: after every check, held to the end
        self.file_config = copy.deepcopy(load_config_file(config))
        # Where each value came from, for error messages; the command line wins over the file.
        self.origins = {(s, k): str(config) for s, body in self.file_config.items() for k in body}
        for (stage, key), (value, origin) in (sets or {}).items():
            self.file_config.setdefault(stage, {})[key] = value
            self.origins[stage, key] = origin
        self.dcfg = build_config("dataset", self.file_config, {"classes": parse_classes_option(classes)}, origins=self.origins)
        self.json = json_out
        self.progress = RichProgress(console(markup=False), enabled=not json_out)

    def config(self, stage: str, **given: Any):
        """The stage's config from its command's options (parameter name -> value, None = not given), after
        checking every other section given, so that a bad one fails before any stage runs."""
        self.check(s for s in self.file_config if s != stage)
        by_param = {o.param: o for o in options(stage)}
        overrides = {by_param[name].key: (tuple(v) or None if by_param[name].repeatable and v is not None else v) for name, v in given.items()}
        return build_config(stage, self.file_config, overrides, origins=self.origins)

    def check(self, stages) -> None:
        for s in stages:
            build_config(s, self.file_config, {}, origins=self.origins)

    def run_context(self):
        """The stages' context; a writing command first takes the workspace lock, held until the command ends (one lock across ``run``'s stages)."""
        from labelkit.stages._common import RunContext, drop_damaged_artifacts

        held = _HELD.get()
        if self.lock and held is not None and not self.ws.locked:
            held.enter_context(self.ws.lock(wait=self.wait, on_wait=_waiting, what=self.what))
            drop_damaged_artifacts(self.ws)  # a truncated artifact is rebuilt by its stage, never a traceback
        return RunContext(self.ws, self.dcfg, self.file_config, self.progress)


def show(ctx: Context, result) -> None:
    """Render a StageResult: JSON on stdout (warnings also on stderr), or a rich summary on stderr."""
    from labelkit import render

    if ctx.json:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")
        render.warnings(console(), result.all_warnings())
    else:
        render.result(console(), result)


def finish(results: list, strict: bool) -> None:
    """Exit with the highest stage exit code (a CI gate); else 4 under --strict when any warning was raised."""
    for res in results:
        if res.exit_code:
            console().print(Text.assemble(("fail:", "bold red"), f" {res.message}"))
    code = max((r.exit_code for r in results), default=0)
    n_warnings = sum(len(r.all_warnings()) for r in results)
    if not code and strict and n_warnings:
        console().print(Text.assemble(("fail:", "bold red"), f" --strict: {n_warnings} warning{'s' * (n_warnings > 1)} (above)"))
        code = STRICT_EXIT
    if code:
        raise typer.Exit(code)


def emit(ctx: Context, result, strict: bool = False) -> None:
    show(ctx, result)
    finish([result], strict)


@stage_command("embed")
def embed(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
          strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any) -> None:
    """Embed every sample into L2-normalised vectors (embeddings.parquet)."""
    from labelkit.stages import embed as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    emit(ctx, stage.run(ctx.run_context(), ctx.config("embed", **options), force=force), strict)


@stage_command("prototype")
def prototype(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
              strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any) -> None:
    """Compute class prototypes (prototypes.parquet), refined with unlabeled data."""
    from labelkit.stages import prototype as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    emit(ctx, stage.run(ctx.run_context(), ctx.config("prototype", **options), force=force), strict)


@stage_command("pseudolabel")
def pseudolabel(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
                strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any) -> None:
    """Label the unlabeled samples (pseudolabels.parquet), with calibrated confidence and soft labels."""
    from labelkit.stages import pseudolabel as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    emit(ctx, stage.run(ctx.run_context(), ctx.config("pseudolabel", **options), force=force), strict)


@stage_command("discover")
def discover(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
             strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any) -> None:
    """Group unlabeled samples of classes no one labeled into new classes (discoveries.parquet)."""
    from labelkit.stages import discover as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    emit(ctx, stage.run(ctx.run_context(), ctx.config("discover", **options), force=force), strict)


@stage_command("detect-noise")
def detect_noise(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
                 strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any) -> None:
    """Find and rank likely label errors (label_issues.parquet); --fail-above gates CI."""
    from labelkit.stages import detect_noise as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    emit(ctx, stage.run(ctx.run_context(), ctx.config("detect-noise", **options), force=force), strict)


@stage_command("distill")
def distill(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
            strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any) -> None:
    """Train a student on the cleaned labels plus the pseudo-labels (student/)."""
    from labelkit.stages import distill as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    emit(ctx, stage.run(ctx.run_context(), ctx.config("distill", **options), force=force), strict)


@stage_command("predict")
def predict(
    model_dir: Annotated[Path, typer.Argument(help="a student folder written by distill (e.g. DATA/.labelkit/student)", show_default=False)],
    data: Annotated[Path, typer.Argument(help="a dataset folder, a folder of images, an image file, or a .csv/.parquet/.txt of texts", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="workspace folder for the predictions [default: DATA/.labelkit; for a file DATA: <file>.labelkit beside it]")] = None,
    config: ConfigOpt = None, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any,
) -> None:
    """Apply a student to new data: embed it as the student expects, write predictions.parquet."""
    from labelkit.stages import predict as stage

    ctx = Context(data, out, config, None, json_out, wait=not no_wait, what="the predictions")
    emit(ctx, stage.run(model_dir, ctx.run_context(), ctx.config("predict", **options)), strict)


@stage_command("report")
def report(
    data: DataArg,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open report.html in a browser when done")] = False,
    out: OutOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False, **options: Any,
) -> None:
    """Write report.html: one self-contained page with plots and galleries of every artifact."""
    from labelkit.stages import report as stage

    ctx = Context(data, out, config, None, json_out, wait=not no_wait)
    res = stage.run(ctx.run_context(), ctx.config("report", **options), force=True)
    show(ctx, res)
    if open_browser:
        import webbrowser

        webbrowser.open(Path(res.summary["path"]).resolve().as_uri())
    finish([res], strict)


@app.command()
def run(
    data: DataArg,
    start: Annotated[str | None, typer.Option("--from", help="first stage to run (embed, prototype, pseudolabel, detect-noise, distill, report)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="last stage to run")] = None,
    model: flag(option_of("embed", "model"), help=f"the embed stage's model, as --set embed.model=...: {option_of('embed', 'model').help_text()}") = None,
    device: flag(option_of("embed", "device"), help=f"the device of every stage that has one (embed, detect-noise, distill), as --set STAGE.device=...: {option_of('embed', 'device').help_text()}") = None,
    engine: flag(option_of("embed", "engine"), help=f"the engine of every stage that has one (embed, pseudolabel, detect-noise), as --set STAGE.engine=...: {option_of('embed', 'engine').help_text()}") = None,
    ray_address: flag(option_of("embed", "ray_address"), help=f"with --engine ray, for every stage that has an engine: {option_of('embed', 'ray_address').help_text()}") = None,
    memory_budget: flag(option_of("pseudolabel", "memory_budget"), help=f"for every stage that builds the kNN graph, as --set STAGE.memory_budget=...: {option_of('pseudolabel', 'memory_budget').help_text()}") = None,
    sets: Annotated[list[str] | None, typer.Option("--set", metavar="STAGE.KEY=VALUE", help="one stage option, checked as in a --config file and overriding it; VALUE is read as TOML (0.9, true, \"a b\"), else as text; repeatable, e.g. --set pseudolabel.threshold=0.9")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Run the whole pipeline in order, each stage skipped when up to date; options via --config and --set."""
    from labelkit import render
    from labelkit.device import gpu_distill_defaults
    from labelkit.stages import pipeline

    given = parse_set(sets or [])
    if model is not None:
        given["embed", "model"] = (model, "--model")
    for key, value, where in (("device", device, "--device"), ("engine", engine, "--engine"), ("ray_address", ray_address, "--ray-address"),
                              ("memory_budget", memory_budget, "--memory-budget")):
        for name in pipeline.ORDER if value is not None else []:
            if key in STAGE_CONFIGS[name].model_fields:
                given[name, key] = (value, where)
    ctx = Context(data, out, config, classes, json_out, given, wait=not no_wait)
    ctx.check([*pipeline.ORDER, *ctx.file_config])  # every stage's config, before the first one runs
    gpu_student, note = gpu_distill_defaults(ctx.ws.data, ctx.config("distill").device, {k for s, k in ctx.origins if s == "distill"})
    ctx.file_config.setdefault("distill", {}).update(gpu_student)
    ctx.origins.update({("distill", k): "run's default on a GPU with images" for k in gpu_student})
    if note:
        console().print(Text(f"note: {note}", style="cyan"))
    results = pipeline.run_pipeline(ctx.run_context(), start=start, until=until, force=force)
    if json_out:
        warnings = [w for r in results for w in r.all_warnings()]
        sys.stdout.write(json.dumps({"stages": [r.to_json() for r in results], "warnings": warnings}, default=str) + "\n")
        render.warnings(console(), warnings)
    else:
        render.pipeline(console(), results)
    finish(results, strict)


@app.command()
def status(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, json_out: JsonOpt = False) -> None:
    """Show each stage: done, stale (and why), or missing."""
    from labelkit import render
    from labelkit.stages import pipeline

    ctx = Context(data, out, config, classes, json_out, lock=False)  # reads without the lock
    rows = pipeline.status(ctx.run_context())
    if json_out:
        sys.stdout.write(json.dumps({"stages": [r.__dict__ for r in rows]}) + "\n")
    else:
        render.status(console(stderr=False), rows)


@app.command()
def doctor(
    data: Annotated[Path | None, typer.Argument(help="a dataset folder: free disk is measured under its workspace [default: the current folder]", show_default=False)] = None,
    engine: flag(option_of("embed", "engine"), help="check what this engine needs (ray: installed, and the cluster reachable)") = None,
    ray_address: flag(option_of("embed", "ray_address")) = None,
    model: flag(option_of("embed", "model"), help="check that this embed backend's weights are here") = None,
    device: flag(option_of("embed", "device"), help="check that this device exists") = None,
    network: Annotated[bool, typer.Option("--network/--no-network", help="probe the network (one connect to pypi.org:443, 2 s)")] = True,
    out: OutOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show what labelkit would use here (versions, devices, faiss GPU, Ray, weights, network, disk); exit 1 when the config needs something missing."""
    from labelkit import doctor as checks
    from labelkit import render
    from labelkit.engines import ENGINES, resolve_address

    if engine not in (None, *ENGINES):
        raise typer.BadParameter(f"must be one of {', '.join(ENGINES)}. Got {engine!r} instead.", param_hint="--engine")
    given = {"engine": engine, "ray_address": ray_address, "model": model, "device": device}
    embed = {**load_config_file(config).get("embed", {}), **{k: v for k, v in given.items() if v is not None}}
    needs = checks.Needs(engine=embed.get("engine", "local"), ray_address=resolve_address(embed.get("ray_address")), model=embed.get("model"),
                         weights=embed.get("weights"), device=embed.get("device", "auto"))
    report = checks.diagnose(needs, workspace=out or (data / ".labelkit" if data else None), network=network)
    if json_out:
        sys.stdout.write(json.dumps(report) + "\n")
        render.doctor_needs(console(), report)
    else:
        render.doctor(console(), report)
    if not report["ok"]:
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"labelkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="let an unexpected error end with its full traceback instead of one line")] = False,
) -> None:
    """Pseudo-labeling and label cleaning: embed, prototype, pseudolabel, detect-noise, distill."""
    _small_pages()


_PR_SET_THP_DISABLE = 41  # linux/prctl.h


def _small_pages() -> None:
    """This command's memory in 4 KB pages: transparent huge pages off for the process (Linux).

    numpy advises huge pages for every array of 4 MB or more and Arrow's allocator (mimalloc) gets
    its fresh memory in them; with the kernel's default defrag policy a 2 MB fault may first compact
    memory, and each is zeroed whole however little of it is used: perf found a fifth of the
    detect-noise --pred-probs command's time in that zeroing (docs/performance.md).
    prctl(PR_SET_THP_DISABLE) turns them off for this process (and what it starts), whatever numpy
    and mimalloc advise; a process-wide setting, so the CLI (the process's owner) makes it and
    library callers keep the system's. Where the call fails (an old kernel), only speed differs.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)


def main() -> None:
    app()
