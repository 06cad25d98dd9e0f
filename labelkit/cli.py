"""The Typer app: options -> config -> stages.*.run -> rich rendering. No math here.

Exit codes: 0 ok; 1 error (bad input, missing artifact, bad config file, a bug); 2 usage (Click,
a bad option value, a bad ``--set``); 3 a CI threshold was breached (``detect-noise
--fail-above``); 4 warnings under ``--strict``; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from labelkit import __version__
from labelkit._richprogress import RichProgress
from labelkit.config import STAGE_CONFIGS, OptionError, build_config, load_config_file
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


def default_of(stage: str, key: str, names: list[str]) -> str | None:
    """A config field's default as shown in --help: 0.9, 3, 1 0.5 0, the flag of a boolean."""
    value = STAGE_CONFIGS[stage].model_fields[key].default
    if value is None:
        return None
    if isinstance(value, bool):
        return names[0 if value else 1].lstrip("-") if len(names) == 2 else ("on" if value else "off")
    if isinstance(value, (tuple, list)):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# (stage, config key) -> its flag, filled by opt() as the commands are declared: errors name the flag.
FLAGS: dict[tuple[str, str], str] = {}


def opt(stage: str, decl: str, help: str, *, key: str | None = None, default: str | None = None) -> Any:
    """A typer.Option for a config field whose help ends with the field's default (declared once, in config.py)."""
    names = decl.split("/")
    key = key or names[0].lstrip("-").replace("-", "_")
    FLAGS[stage, key] = decl
    shown = default or default_of(stage, key, names)
    return typer.Option(decl, help=f"{help} [default: {shown}]" if shown is not None else help, show_default=False)


DataArg = Annotated[Path, typer.Argument(help="dataset folder (manifest labels.csv/.parquet, or class image folders)", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="workspace folder for artifacts [default: DATA/.labelkit]")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML file with one [section] per stage; options given here override it")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="class names 'a,b,c' or a file with one per line (needed for zero-shot; adds classes with no labeled sample)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="rerun even when the stage is up to date")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout and nothing else there")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="exit 1 at once when another labelkit run holds the workspace, instead of waiting for it")]
StrictOpt = Annotated[bool, typer.Option("--strict", help=f"exit {STRICT_EXIT} when any stage raised a warning (after printing the results)")]
DEVICE_HELP = "auto (CUDA when present), cpu, cuda[:N]"


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

    def config(self, stage: str, **overrides: Any):
        """The stage's config, after checking every other section given, so that a bad one fails before any stage runs."""
        self.check(s for s in self.file_config if s != stage)
        flags = {key: flag for (s, key), flag in FLAGS.items() if s == stage}
        return build_config(stage, self.file_config, overrides, origins=self.origins, flags=flags)

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


@app.command()
def embed(
    data: DataArg,
    model: Annotated[Optional[str], opt("embed", "--model", "backend: auto, efficientnet-lite0, pixels[:SIZE], minilm, sbert:PATH, clip:ARCH/PRETRAINED, precomputed")] = None,
    weights: Annotated[Optional[str], opt("embed", "--weights", "local weights file for the backend (e.g. an open_clip checkpoint)")] = None,
    allow_download: Annotated[Optional[bool], opt("embed", "--allow-download/--no-download", "let the backend download named weights from a hub (needs network)")] = None,
    dtype: Annotated[Optional[str], opt("embed", "--dtype", "float32 or float16 storage")] = None,
    batch_size: Annotated[Optional[int], opt("embed", "--batch-size", "inputs per forward pass", default="per backend")] = None,
    num_workers: Annotated[Optional[int], opt("embed", "--num-workers", "DataLoader decoding workers", default="automatic")] = None,
    device: Annotated[Optional[str], opt("embed", "--device", DEVICE_HELP)] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Embed every sample into L2-normalised vectors (embeddings.parquet)."""
    from labelkit.stages import embed as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    cfg = ctx.config("embed", model=model, weights=weights, allow_download=allow_download, dtype=dtype, batch_size=batch_size, num_workers=num_workers, device=device)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force), strict)


@app.command()
def prototype(
    data: DataArg,
    n_per_class: Annotated[Optional[int], opt("prototype", "--n-per-class", "prototypes per class (k-means inside the class when > 1)")] = None,
    clean: Annotated[Optional[bool], opt("prototype", "--clean/--no-clean", "drop labeled samples whose neighbours disagree before averaging")] = None,
    text_weight: Annotated[Optional[float], opt("prototype", "--text-weight", "weight of class-name embeddings fused in (text-tower models)")] = None,
    refine: Annotated[Optional[bool], opt("prototype", "--refine/--no-refine", "refine with confident unlabeled samples (soft k-means)")] = None,
    seed: Annotated[Optional[int], opt("prototype", "--seed", "random seed (k-means)")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Compute class prototypes (prototypes.parquet), refined with unlabeled data."""
    from labelkit.stages import prototype as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    cfg = ctx.config("prototype", n_per_class=n_per_class, clean=clean, text_weight=text_weight, refine=refine, seed=seed)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force), strict)


@app.command()
def pseudolabel(
    data: DataArg,
    method: Annotated[Optional[str], opt("pseudolabel", "--method", "ensemble, propagation, prototype or knn")] = None,
    threshold_rule: Annotated[Optional[str], opt("pseudolabel", "--threshold-rule", "fixed, flexmatch, top_per_class or margin")] = None,
    threshold: Annotated[Optional[float], opt("pseudolabel", "--threshold", "tau for fixed/flexmatch, N for top_per_class, minimum margin for margin")] = None,
    k: Annotated[Optional[int], opt("pseudolabel", "--k", "neighbours in the kNN graph")] = None,
    alpha: Annotated[Optional[float], opt("pseudolabel", "--alpha", "label spreading: weight of neighbours against the seeds, in [0, 1)")] = None,
    gamma: Annotated[Optional[float], opt("pseudolabel", "--gamma", "graph edge weight max(cos, 0)^gamma")] = None,
    one_way_weight: Annotated[Optional[float], opt("pseudolabel", "--one-way-weight", "weight of non-mutual kNN edges, 0 (mutual kNN) to 1")] = None,
    reach_prior: Annotated[Optional[float], opt("pseudolabel", "--reach-prior", "shrink samples no label reaches toward uniform, 0 = off")] = None,
    refine: Annotated[Optional[bool], opt("pseudolabel", "--refine/--no-refine", "second propagation round from certainty-weighted pseudo-labels")] = None,
    weights: Annotated[Optional[tuple[float, float, float]], opt("pseudolabel", "--weights", "ensemble weights: propagation prototype knn")] = None,
    top_k: Annotated[Optional[int], opt("pseudolabel", "--top-k", "classes kept in the soft label")] = None,
    sharpen: Annotated[Optional[float], opt("pseudolabel", "--sharpen", "soft-label temperature, < 1 sharpens")] = None,
    calibration_folds: Annotated[Optional[int], opt("pseudolabel", "--calibration-folds", "folds for held-out temperature calibration, 0 = off")] = None,
    calibration_samples: Annotated[Optional[int], opt("pseudolabel", "--calibration-samples", "held-out samples the final temperatures are fitted on, 0 = every fold")] = None,
    clean_seeds: Annotated[Optional[bool], opt("pseudolabel", "--clean-seeds/--no-clean-seeds", "drop labeled samples confident learning doubts before propagating")] = None,
    clean_seeds_odds: Annotated[Optional[float], opt("pseudolabel", "--clean-seeds-odds", "drop a doubted seed only if its held-out scores favour another class this many to 1, >= 1")] = None,
    prior_correction: Annotated[Optional[bool], opt("pseudolabel", "--prior-correction/--no-prior-correction", "EM re-estimation of unlabeled class priors (label shift)")] = None,
    seed: Annotated[Optional[int], opt("pseudolabel", "--seed", "seed of the calibration folds")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Label the unlabeled samples (pseudolabels.parquet), with calibrated confidence and soft labels."""
    from labelkit.stages import pseudolabel as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    cfg = ctx.config("pseudolabel", method=method, threshold_rule=threshold_rule, threshold=threshold, k=k, alpha=alpha, gamma=gamma,
                     one_way_weight=one_way_weight, reach_prior=reach_prior, refine=refine, weights=weights, top_k=top_k, sharpen=sharpen,
                     calibration_folds=calibration_folds, calibration_samples=calibration_samples, clean_seeds=clean_seeds,
                     clean_seeds_odds=clean_seeds_odds, prior_correction=prior_correction, seed=seed)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force), strict)


@app.command("detect-noise")
def detect_noise(
    data: DataArg,
    probs: Annotated[Optional[str], opt("detect-noise", "--probs", "out-of-sample probabilities: auto, crossval (K-fold softmax head), knn (leave-one-out vote), propagation (K-fold label spreading over all samples)")] = None,
    pred_probs: Annotated[Optional[str], opt("detect-noise", "--pred-probs", "your own probabilities: .npy (samples order, sorted class columns) or .parquet (id + a column per class); needs no embeddings")] = None,
    renormalize: Annotated[Optional[bool], opt("detect-noise", "--renormalize/--no-renormalize", "rescale --pred-probs rows to sum to 1 (without it, a row off by more than 0.001 is an error)")] = None,
    filter_by: Annotated[Optional[str], opt("detect-noise", "--filter-by", "prune_by_noise_rate, prune_by_class, both, confident_learning or predicted_neq_given")] = None,
    rank_by: Annotated[Optional[str], opt("detect-noise", "--rank-by", "self_confidence, normalized_margin or confidence_weighted_entropy")] = None,
    folds: Annotated[Optional[int], opt("detect-noise", "--folds", "cross-validation folds")] = None,
    k: Annotated[Optional[int], opt("detect-noise", "--k", "neighbours in the kNN graph")] = None,
    seed: Annotated[Optional[int], opt("detect-noise", "--seed", "seed for the fold assignment")] = None,
    dynamics: Annotated[Optional[bool], opt("detect-noise", "--dynamics/--no-dynamics", "second pass after 'labelkit distill': add the student's training dynamics as evidence")] = None,
    dynamics_file: Annotated[Optional[str], opt("detect-noise", "--dynamics-file", "dynamics.parquet to read (implies --dynamics)", default="WORKSPACE/student/dynamics.parquet")] = None,
    fail_above: Annotated[Optional[float], opt("detect-noise", "--fail-above", "exit with code 3 when the label-issue rate is above this fraction (for CI)")] = None,
    export_review: Annotated[Optional[str], opt("detect-noise", "--export-review", "write a CSV review queue for annotators, most useful first")] = None,
    device: Annotated[Optional[str], opt("detect-noise", "--device", DEVICE_HELP)] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Find and rank likely label errors (label_issues.parquet); --fail-above gates CI."""
    from labelkit.stages import detect_noise as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    cfg = ctx.config("detect-noise", probs=probs, pred_probs=pred_probs, renormalize=renormalize, filter_by=filter_by, rank_by=rank_by, folds=folds, k=k, seed=seed,
                     dynamics=dynamics, dynamics_file=dynamics_file, fail_above=fail_above, export_review=export_review, device=device)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force), strict)


@app.command()
def distill(
    data: DataArg,
    student: Annotated[Optional[str], opt("distill", "--student", "mlp or linear head on the embeddings; on the pixels, end to end (use a GPU): cnn (small, from scratch) or finetune (EfficientNet-Lite0 from ImageNet weights)")] = None,
    image_size: Annotated[Optional[int], opt("distill", "--image-size", "cnn/finetune: side the images are resized to; 0 = auto (cnn: largest side clipped to 8-64; finetune: 224)")] = None,
    keep_issues: Annotated[Optional[bool], opt("distill", "--keep-issues/--drop-issues", "keep labeled samples that detect-noise flagged")] = None,
    use_pseudolabels: Annotated[Optional[bool], opt("distill", "--with-pseudolabels/--without-pseudolabels", "train on the pseudolabel stage's labels too, or on the trusted labels alone (with --fixmatch the student makes its own)", key="use_pseudolabels")] = None,
    pseudolabels: Annotated[Optional[str], opt("distill", "--pseudolabels", "all (each weighted by its confidence) or accepted")] = None,
    soft: Annotated[Optional[bool], opt("distill", "--soft/--hard", "distil soft pseudo-labels (KL at --temperature) or their hard labels")] = None,
    confidence_weighting: Annotated[Optional[bool], opt("distill", "--confidence-weighting/--no-confidence-weighting", "weight pseudo-labeled samples by confidence")] = None,
    epochs: Annotated[Optional[int], opt("distill", "--epochs", "maximum epochs")] = None,
    batch_size: Annotated[Optional[int], opt("distill", "--batch-size", "labeled samples per step (--fixmatch adds twice as many unlabeled images)")] = None,
    temperature: Annotated[Optional[float], opt("distill", "--temperature", "distillation temperature T")] = None,
    rounds: Annotated[Optional[int], opt("distill", "--rounds", "self-training rounds (the student becomes the teacher)")] = None,
    vat: Annotated[Optional[float], opt("distill", "--vat", "virtual adversarial training radius, relative to the median nearest-neighbour distance, e.g. 0.5; 0 = off")] = None,
    fixmatch: Annotated[Optional[float], opt("distill", "--fixmatch", "cnn/finetune: weight of the FixMatch consistency term on augmented unlabeled images, e.g. 1; 0 = off")] = None,
    fixmatch_threshold: Annotated[Optional[float], opt("distill", "--fixmatch-threshold", "confidence a weakly augmented view needs to become a FixMatch target")] = None,
    fixmatch_rule: Annotated[Optional[str], opt("distill", "--fixmatch-rule", "fixed (one threshold) or flexmatch (per class, lower for classes learned late)")] = None,
    label_filter: Annotated[Optional[bool], opt("distill", "--label-filter/--no-label-filter", "with --fixmatch: set aside the trusted labels the student contradicts on strongly augmented views of their image")] = None,
    ema: Annotated[Optional[float], opt("distill", "--ema", "decay of a moving average of the weights that is validated and saved instead of the last ones, e.g. 0.999; 0 = off")] = None,
    folds: Annotated[Optional[int], opt("distill", "--folds", "cross-fitting folds for the metrics when too few trusted labels to hold out; 0 = off")] = None,
    refit_teacher: Annotated[Optional[bool], opt("distill", "--refit-teacher/--shared-teacher", "recompute the pseudo-labels without the labels the metrics are measured on, so the metrics are honest")] = None,
    onnx: Annotated[Optional[bool], opt("distill", "--onnx/--no-onnx", "also export student/model.onnx")] = None,
    seed: Annotated[Optional[int], opt("distill", "--seed", "random seed")] = None,
    device: Annotated[Optional[str], opt("distill", "--device", DEVICE_HELP)] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Train a student on the cleaned labels plus the pseudo-labels (student/)."""
    from labelkit.stages import distill as stage

    ctx = Context(data, out, config, classes, json_out, wait=not no_wait)
    cfg = ctx.config("distill", student=student, image_size=image_size, keep_issues=keep_issues, use_pseudolabels=use_pseudolabels, pseudolabels=pseudolabels, soft=soft,
                     confidence_weighting=confidence_weighting, epochs=epochs, batch_size=batch_size, temperature=temperature, rounds=rounds, vat=vat,
                     fixmatch=fixmatch, fixmatch_threshold=fixmatch_threshold, fixmatch_rule=fixmatch_rule, label_filter=label_filter, ema=ema, folds=folds, refit_teacher=refit_teacher, onnx=onnx, seed=seed, device=device)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force), strict)


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="a student folder written by distill (e.g. DATA/.labelkit/student)", show_default=False)],
    data: Annotated[Path, typer.Argument(help="a dataset folder, a folder of images, an image file, or a .csv/.parquet/.txt of texts", show_default=False)],
    top_k: Annotated[Optional[int], opt("predict", "--top-k", "classes kept in top_labels/top_probs")] = None,
    batch_size: Annotated[Optional[int], opt("predict", "--batch-size", "rows per forward pass")] = None,
    device: Annotated[Optional[str], opt("predict", "--device", DEVICE_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="workspace folder for the predictions [default: DATA/.labelkit; for a file DATA: <file>.labelkit beside it]")] = None,
    config: ConfigOpt = None, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Apply a student to new data: embed it as the student expects, write predictions.parquet."""
    from labelkit.stages import predict as stage

    ctx = Context(data, out, config, None, json_out, wait=not no_wait, what="the predictions")
    cfg = ctx.config("predict", top_k=top_k, batch_size=batch_size, device=device)
    emit(ctx, stage.run(model_dir, ctx.run_context(), cfg), strict)


@app.command()
def report(
    data: DataArg,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open report.html in a browser when done")] = False,
    out: OutOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Write report.html: one self-contained page with plots and galleries of every artifact."""
    from labelkit.stages import report as stage

    ctx = Context(data, out, config, None, json_out, wait=not no_wait)
    res = stage.run(ctx.run_context(), ctx.config("report"), force=True)
    show(ctx, res)
    if open_browser:
        import webbrowser

        webbrowser.open(Path(res.summary["path"]).resolve().as_uri())
    finish([res], strict)


@app.command()
def run(
    data: DataArg,
    start: Annotated[Optional[str], typer.Option("--from", help="first stage to run (embed, prototype, pseudolabel, detect-noise, distill, report)")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="last stage to run")] = None,
    model: Annotated[Optional[str], opt("embed", "--model", "the embed stage's backend, as in 'labelkit embed --model' (same as --set embed.model=...)")] = None,
    device: Annotated[Optional[str], opt("embed", "--device", f"{DEVICE_HELP}, for every stage with a device (embed, detect-noise, distill)")] = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", metavar="STAGE.KEY=VALUE", help="one stage option, checked as in a --config file and overriding it; VALUE is read as TOML (0.9, true, \"a b\"), else as text; repeatable, e.g. --set pseudolabel.threshold=0.9")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False, strict: StrictOpt = False, no_wait: NoWaitOpt = False,
) -> None:
    """Run the whole pipeline in order, each stage skipped when up to date; options via --config and --set."""
    from labelkit import render
    from labelkit.stages import pipeline

    given = parse_set(sets or [])
    if model is not None:
        given["embed", "model"] = (model, "--model")
    for name in pipeline.ORDER if device is not None else []:
        if "device" in STAGE_CONFIGS[name].model_fields:
            given[name, "device"] = (device, "--device")
    ctx = Context(data, out, config, classes, json_out, given, wait=not no_wait)
    ctx.check([*pipeline.ORDER, *ctx.file_config])  # every stage's config, before the first one runs
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


def main() -> None:
    app()
