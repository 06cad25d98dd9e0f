"""The Typer app: options -> config -> stages.*.run -> rich rendering. No math here.

Exit codes: 0 ok; 1 error (bad input, missing artifact, config); 2 usage (Click);
3 a CI threshold was breached (``detect-noise --fail-above``).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from labelkit import __version__
from labelkit._richprogress import RichProgress
from labelkit.config import DatasetConfig, build_config, load_config_file
from labelkit.dataset import parse_classes_option
from labelkit.errors import LabelkitError
from labelkit.workspace import Workspace

app = typer.Typer(
    name="labelkit",
    help="Pseudo-labeling and label cleaning: embed, prototype, pseudolabel, detect-noise, distill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
out_console = Console()

DataArg = Annotated[Path, typer.Argument(help="dataset folder (manifest labels.csv/.parquet, or class image folders)", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="workspace folder for artifacts [default: DATA/.labelkit]")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML file with one [section] per stage; options given here override it")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="class names 'a,b,c' or a file with one per line (needed for zero-shot; adds classes with no labeled sample)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="rerun even when the stage is up to date")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout and nothing else there")]


def handles_errors(fn: Callable) -> Callable:
    """Turn LabelkitError into one line on stderr and its exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelkitError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


class Context:
    """What every stage command resolves first: the workspace, the config file, the dataset options."""

    def __init__(self, data: Path, out: Path | None, config: Path | None, classes: str | None, json_out: bool):
        self.ws = Workspace.open(data, out)
        self.file_config = load_config_file(config)
        self.dcfg = build_config("dataset", self.file_config, {"classes": parse_classes_option(classes)})
        self.json = json_out
        self.progress = RichProgress(err_console, enabled=not json_out)

    def config(self, stage: str, **overrides: Any):
        return build_config(stage, self.file_config, overrides)

    def run_context(self):
        from labelkit.stages._common import RunContext

        return RunContext(self.ws, self.dcfg, self.file_config, self.progress)


def emit(ctx: Context, result) -> None:
    """Render a StageResult: JSON on stdout, or a rich summary on stderr."""
    from labelkit import render

    if ctx.json:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")
    else:
        render.result(err_console, result)
    if result.exit_code:
        err_console.print(f"[bold red]fail:[/] {result.message}", highlight=False)
        raise typer.Exit(result.exit_code)


@app.command()
@handles_errors
def embed(
    data: DataArg,
    model: Annotated[Optional[str], typer.Option("--model", help="backend: auto, efficientnet-lite0, pixels[:SIZE], minilm, sbert:PATH, clip:ARCH/PRETRAINED, precomputed")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="local weights file for the backend (e.g. an open_clip checkpoint)")] = None,
    allow_download: Annotated[Optional[bool], typer.Option("--allow-download/--no-download", help="let the backend download named weights from a hub (needs network)")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32 or float16 storage")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="inputs per forward pass [default: per backend]")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader decoding workers [default: automatic]")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda[:N]")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Embed every sample into L2-normalised vectors (embeddings.parquet)."""
    from labelkit.stages import embed as stage

    ctx = Context(data, out, config, classes, json_out)
    cfg = ctx.config("embed", model=model, weights=weights, allow_download=allow_download, dtype=dtype, batch_size=batch_size, num_workers=num_workers, device=device)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force))


@app.command()
@handles_errors
def prototype(
    data: DataArg,
    n_per_class: Annotated[Optional[int], typer.Option("--n-per-class", help="prototypes per class (k-means inside the class when > 1) [default: 1]")] = None,
    clean: Annotated[Optional[bool], typer.Option("--clean/--no-clean", help="drop labeled samples whose neighbours disagree before averaging [default: clean]")] = None,
    text_weight: Annotated[Optional[float], typer.Option("--text-weight", help="weight of class-name embeddings fused in (text-tower models) [default: 0.25]")] = None,
    refine: Annotated[Optional[bool], typer.Option("--refine/--no-refine", help="refine with confident unlabeled samples (soft k-means) [default: refine]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed (k-means)")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Compute class prototypes (prototypes.parquet), refined with unlabeled data."""
    from labelkit.stages import prototype as stage

    ctx = Context(data, out, config, classes, json_out)
    cfg = ctx.config("prototype", n_per_class=n_per_class, clean=clean, text_weight=text_weight, refine=refine, seed=seed)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force))


@app.command()
@handles_errors
def pseudolabel(
    data: DataArg,
    method: Annotated[Optional[str], typer.Option("--method", help="ensemble (default), propagation, prototype, knn")] = None,
    threshold_rule: Annotated[Optional[str], typer.Option("--threshold-rule", help="fixed (default), flexmatch, top_per_class, margin")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="tau for fixed/flexmatch, N for top_per_class, minimum margin for margin [default: 0.95]")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="neighbours in the kNN graph [default: 10]")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="label spreading: weight of neighbours against the seeds, in [0, 1) [default: 0.9]")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="graph edge weight max(cos, 0)^gamma [default: 3]")] = None,
    one_way_weight: Annotated[Optional[float], typer.Option("--one-way-weight", help="weight of non-mutual kNN edges, 0 (mutual kNN) to 1 [default: 0.1]")] = None,
    reach_prior: Annotated[Optional[float], typer.Option("--reach-prior", help="shrink samples no label reaches toward uniform, 0 = off [default: 0.1]")] = None,
    refine: Annotated[Optional[bool], typer.Option("--refine/--no-refine", help="second propagation round from certainty-weighted pseudo-labels [default: refine]")] = None,
    weights: Annotated[Optional[tuple[float, float, float]], typer.Option("--weights", help="ensemble weights: propagation prototype knn [default: 1 0.5 0]")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="classes kept in the soft label [default: 3]")] = None,
    sharpen: Annotated[Optional[float], typer.Option("--sharpen", help="soft-label temperature, < 1 sharpens [default: 1]")] = None,
    calibration_folds: Annotated[Optional[int], typer.Option("--calibration-folds", help="folds for held-out temperature calibration, 0 = off [default: 5]")] = None,
    calibration_samples: Annotated[Optional[int], typer.Option("--calibration-samples", help="held-out samples the final temperatures are fitted on, 0 = every fold [default: 2000]")] = None,
    clean_seeds: Annotated[Optional[bool], typer.Option("--clean-seeds/--no-clean-seeds", help="drop labeled samples confident learning doubts before propagating [default: clean-seeds]")] = None,
    clean_seeds_odds: Annotated[Optional[float], typer.Option("--clean-seeds-odds", help="drop a doubted seed only if its held-out scores favour another class this many to 1, >= 1 [default: 5]")] = None,
    prior_correction: Annotated[Optional[bool], typer.Option("--prior-correction/--no-prior-correction", help="EM re-estimation of unlabeled class priors (label shift)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="seed of the calibration folds")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Label the unlabeled samples (pseudolabels.parquet), with calibrated confidence and soft labels."""
    from labelkit.stages import pseudolabel as stage

    ctx = Context(data, out, config, classes, json_out)
    cfg = ctx.config("pseudolabel", method=method, threshold_rule=threshold_rule, threshold=threshold, k=k, alpha=alpha, gamma=gamma,
                     one_way_weight=one_way_weight, reach_prior=reach_prior, refine=refine, weights=weights, top_k=top_k, sharpen=sharpen,
                     calibration_folds=calibration_folds, calibration_samples=calibration_samples, clean_seeds=clean_seeds,
                     clean_seeds_odds=clean_seeds_odds, prior_correction=prior_correction, seed=seed)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force))


@app.command("detect-noise")
@handles_errors
def detect_noise(
    data: DataArg,
    probs: Annotated[Optional[str], typer.Option("--probs", help="out-of-sample probabilities: auto, crossval (K-fold softmax head), knn (leave-one-out vote), propagation (K-fold label spreading over all samples)")] = None,
    pred_probs: Annotated[Optional[str], typer.Option("--pred-probs", help="your own probabilities: .npy (samples order, sorted class columns) or .parquet (id + a column per class); needs no embeddings")] = None,
    filter_by: Annotated[Optional[str], typer.Option("--filter-by", help="prune_by_noise_rate, prune_by_class, both, confident_learning, predicted_neq_given")] = None,
    rank_by: Annotated[Optional[str], typer.Option("--rank-by", help="self_confidence, normalized_margin, confidence_weighted_entropy")] = None,
    folds: Annotated[Optional[int], typer.Option("--folds", help="cross-validation folds [default: 5]")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="neighbours in the kNN graph [default: 10]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="seed for the fold assignment")] = None,
    dynamics: Annotated[Optional[bool], typer.Option("--dynamics/--no-dynamics", help="second pass after 'labelkit distill': add the student's training dynamics as evidence")] = None,
    dynamics_file: Annotated[Optional[str], typer.Option("--dynamics-file", help="dynamics.parquet to read (implies --dynamics) [default: WORKSPACE/student/dynamics.parquet]")] = None,
    fail_above: Annotated[Optional[float], typer.Option("--fail-above", help="exit with code 3 when the label-issue rate is above this fraction (for CI)")] = None,
    export_review: Annotated[Optional[str], typer.Option("--export-review", help="write a CSV review queue for annotators, most useful first")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda[:N]")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Find and rank likely label errors (label_issues.parquet); --fail-above gates CI."""
    from labelkit.stages import detect_noise as stage

    ctx = Context(data, out, config, classes, json_out)
    cfg = ctx.config("detect-noise", probs=probs, pred_probs=pred_probs, filter_by=filter_by, rank_by=rank_by, folds=folds, k=k, seed=seed,
                     dynamics=dynamics, dynamics_file=dynamics_file, fail_above=fail_above, export_review=export_review, device=device)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force))


@app.command()
@handles_errors
def distill(
    data: DataArg,
    student: Annotated[Optional[str], typer.Option("--student", help="mlp or linear head on the embeddings; on the pixels, end to end (use a GPU): cnn (small, from scratch) or finetune (EfficientNet-Lite0 from ImageNet weights)")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="cnn/finetune: side the images are resized to; 0 = auto (cnn: largest side clipped to 8-64; finetune: 224) [default: 0]")] = None,
    keep_issues: Annotated[Optional[bool], typer.Option("--keep-issues/--drop-issues", help="keep labeled samples that detect-noise flagged [default: drop]")] = None,
    use_pseudolabels: Annotated[Optional[bool], typer.Option("--with-pseudolabels/--without-pseudolabels", help="train on the pseudolabel stage's labels too, or on the trusted labels alone (with --fixmatch the student makes its own) [default: with]")] = None,
    pseudolabels: Annotated[Optional[str], typer.Option("--pseudolabels", help="all (each weighted by its confidence) or accepted [default: all]")] = None,
    soft: Annotated[Optional[bool], typer.Option("--soft/--hard", help="distil soft pseudo-labels (KL at --temperature) or their hard labels [default: hard]")] = None,
    confidence_weighting: Annotated[Optional[bool], typer.Option("--confidence-weighting/--no-confidence-weighting", help="weight pseudo-labeled samples by confidence [default: on]")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="maximum epochs [default: 100]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="labeled samples per step (--fixmatch adds twice as many unlabeled images) [default: 256]")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="distillation temperature T [default: 2]")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="self-training rounds (the student becomes the teacher) [default: 1]")] = None,
    vat: Annotated[Optional[float], typer.Option("--vat", help="virtual adversarial training radius, relative to the median nearest-neighbour distance, e.g. 0.5; 0 = off [default: 0]")] = None,
    fixmatch: Annotated[Optional[float], typer.Option("--fixmatch", help="cnn/finetune: weight of the FixMatch consistency term on augmented unlabeled images, e.g. 1; 0 = off [default: 0]")] = None,
    fixmatch_threshold: Annotated[Optional[float], typer.Option("--fixmatch-threshold", help="confidence a weakly augmented view needs to become a FixMatch target [default: 0.95]")] = None,
    fixmatch_rule: Annotated[Optional[str], typer.Option("--fixmatch-rule", help="fixed (one threshold) or flexmatch (per class, lower for classes learned late) [default: flexmatch]")] = None,
    label_filter: Annotated[Optional[bool], typer.Option("--label-filter/--no-label-filter", help="with --fixmatch: set aside the trusted labels the student contradicts on strongly augmented views of their image [default: on]")] = None,
    ema: Annotated[Optional[float], typer.Option("--ema", help="decay of a moving average of the weights that is validated and saved instead of the last ones, e.g. 0.999; 0 = off [default: 0]")] = None,
    folds: Annotated[Optional[int], typer.Option("--folds", help="cross-fitting folds for the metrics when too few trusted labels to hold out; 0 = off [default: 5]")] = None,
    refit_teacher: Annotated[Optional[bool], typer.Option("--refit-teacher/--shared-teacher", help="recompute the pseudo-labels without the labels the metrics are measured on, so the metrics are honest [default: refit]")] = None,
    onnx: Annotated[Optional[bool], typer.Option("--onnx/--no-onnx", help="also export student/model.onnx")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda[:N]")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Train a student on the cleaned labels plus the pseudo-labels (student/)."""
    from labelkit.stages import distill as stage

    ctx = Context(data, out, config, classes, json_out)
    cfg = ctx.config("distill", student=student, image_size=image_size, keep_issues=keep_issues, use_pseudolabels=use_pseudolabels, pseudolabels=pseudolabels, soft=soft,
                     confidence_weighting=confidence_weighting, epochs=epochs, batch_size=batch_size, temperature=temperature, rounds=rounds, vat=vat,
                     fixmatch=fixmatch, fixmatch_threshold=fixmatch_threshold, fixmatch_rule=fixmatch_rule, label_filter=label_filter, ema=ema, folds=folds, refit_teacher=refit_teacher, onnx=onnx, seed=seed, device=device)
    emit(ctx, stage.run(ctx.run_context(), cfg, force=force))


@app.command()
@handles_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(help="a student folder written by distill (e.g. DATA/.labelkit/student)", show_default=False)],
    data: DataArg,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="classes kept in top_labels/top_probs [default: 3]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="rows per forward pass")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda[:N]")] = None,
    out: OutOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """Apply a student to new data: embed it as the student expects, write predictions.parquet."""
    from labelkit.stages import predict as stage

    ctx = Context(data, out, config, None, json_out)
    cfg = ctx.config("predict", top_k=top_k, batch_size=batch_size, device=device)
    emit(ctx, stage.run(model_dir, ctx.run_context(), cfg))


@app.command()
@handles_errors
def report(
    data: DataArg,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open report.html in a browser when done")] = False,
    out: OutOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """Write report.html: one self-contained page with plots and galleries of every artifact."""
    from labelkit.stages import report as stage

    ctx = Context(data, out, config, None, json_out)
    res = stage.run(ctx.run_context(), ctx.config("report"), force=True)
    emit(ctx, res)
    if open_browser:
        import webbrowser

        webbrowser.open(Path(res.summary["path"]).resolve().as_uri())


@app.command()
@handles_errors
def run(
    data: DataArg,
    start: Annotated[Optional[str], typer.Option("--from", help="first stage to run (embed, prototype, pseudolabel, detect-noise, distill, report)")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="last stage to run")] = None,
    out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Run the whole pipeline in order, each stage skipped when up to date; options via --config."""
    from labelkit import render
    from labelkit.stages import pipeline

    ctx = Context(data, out, config, classes, json_out)
    results = pipeline.run_pipeline(ctx.run_context(), start=start, until=until, force=force)
    if json_out:
        sys.stdout.write(json.dumps({"stages": [r.to_json() for r in results]}, default=str) + "\n")
    else:
        render.pipeline(err_console, results)
    code = max((r.exit_code for r in results), default=0)
    if code:
        raise typer.Exit(code)


@app.command()
@handles_errors
def status(data: DataArg, out: OutOpt = None, config: ConfigOpt = None, classes: ClassesOpt = None, json_out: JsonOpt = False) -> None:
    """Show each stage: done, stale (and why), or missing."""
    from labelkit import render
    from labelkit.stages import pipeline

    ctx = Context(data, out, config, classes, json_out)
    rows = pipeline.status(ctx.run_context())
    if json_out:
        sys.stdout.write(json.dumps({"stages": [r.__dict__ for r in rows]}) + "\n")
    else:
        render.status(out_console, rows)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"labelkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False) -> None:
    """Pseudo-labeling and label cleaning: embed, prototype, pseudolabel, detect-noise, distill."""


def main() -> None:
    app()
