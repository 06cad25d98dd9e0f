"""One frozen pydantic model per stage: every option, validated, with its default in one place.

``--config FILE.toml`` holds one table per stage (``[embed]``, ``[pseudolabel]``, …); options given
on the command line override it.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labelkit.errors import ConfigError


class StageConfig(BaseModel):
    """Base: forbids unknown keys; ``fingerprint`` hashes every field that changes results."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields that change how fast a stage runs, never what it writes.
    runtime_fields: ClassVar[frozenset[str]] = frozenset()

    def fingerprint(self) -> str:
        payload = self.model_dump_json(exclude=set(self.runtime_fields))
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()

    def result_params(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DatasetConfig(StageConfig):
    """How DATA is read (shared by every stage)."""

    classes: tuple[str, ...] | None = Field(None, description="class names, also those with no labeled sample")


class EmbedConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "num_workers", "device", "allow_download"})

    model: str = Field("auto", description="backend spec; auto = score every candidate that can run here on a sample of the labeled samples (leave-one-out kNN accuracy) and keep the best: pixels and efficientnet-lite0 (+ open_clip models on disk) for images, minilm for text, precomputed for vectors")
    candidates: tuple[str, ...] = Field((), description="with model auto: more backends to score, e.g. 'sbert:/path/to/model' or 'clip:ViT-B-32/openai' (its weights on disk, or allow_download)")
    choice_per_class: int = Field(30, ge=2, description="with model auto: labeled samples per class in the scoring sample")
    choice_max: int = Field(300, ge=4, description="with model auto: labeled samples scored at most")
    choice_tie: float = Field(0.02, ge=0, le=1, description="with model auto: a cheaper candidate this close to the best score wins")
    weights: str | None = Field(None, description="local weights file for the backend")
    allow_download: bool = Field(False, description="let the backend fetch named weights from a hub")
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int | None = Field(None, gt=0)
    num_workers: int | None = Field(None, ge=0)
    device: str = "auto"
    row_group_size: int = Field(8192, gt=0)


class PrototypeConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset()

    n_per_class: int = Field(1, ge=1, description="prototypes per class (k-means inside the class when > 1)")
    clean: bool = Field(True, description="drop labeled samples whose neighbours disagree with their label, or far from their class, before averaging")
    min_agreement: float = Field(0.5, ge=0, le=1, description="share of a sample's labeled neighbours that must agree with its label to keep it")
    max_drop: float = Field(0.4, ge=0, le=1, description="if the clean check would drop more than this share of the labeled samples, it is measuring a weak embedding rather than wrong labels: keep them all and warn")
    k: int = Field(10, ge=1, description="neighbours used by the clean-sample check")
    text_weight: float = Field(0.25, ge=0, le=1, description="weight of the class-name (text) embedding fused into each prototype, when the model has a text tower")
    refine: bool = Field(True, description="refine prototypes transductively with confident unlabeled samples (soft k-means)")
    refine_temperature: float = Field(0.05, gt=0)
    min_confidence: float = Field(0.8, ge=0, le=1, description="unlabeled samples at least this confident take part in refinement")
    max_iter: int = Field(10, ge=0)
    seed: int = 0


class PseudolabelConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset()

    method: Literal["ensemble", "propagation", "prototype", "knn"] = Field(
        "ensemble", description="scores: label propagation + prototypes (ensemble), label spreading alone, prototype softmax, or kNN vote"
    )
    k: int = Field(10, ge=1, description="neighbours in the kNN graph")
    alpha: float = Field(0.9, ge=0, lt=1, description="label spreading: weight of neighbours against the seeds")
    gamma: float = Field(3.0, ge=0, description="propagation graph edge weight max(cos, 0)^gamma (and the kNN vote's power)")
    one_way_weight: float = Field(0.1, ge=0, le=1, description="weight of a kNN edge that is not mutual: 0 = mutual kNN graph, 1 = plain symmetrised graph")
    reach_prior: float = Field(0.1, ge=0, description="shrink samples that no label reaches toward uniform confidence (0 = off)")
    refine: bool = Field(True, description="second propagation round seeded by every sample's pseudo-label, weighted by its certainty")
    weights: tuple[float, float, float] = Field((1.0, 0.5, 0.0), description="ensemble weights of the propagation, prototype and kNN-vote scores")
    probe_weights: tuple[float, ...] = Field((0.5, 1.0, 2.0), description="ensemble: weights to try for a linear softmax probe on the labeled samples as a fourth member; the held-out calibration folds keep the best (or none); empty = no probe")
    threshold_rule: Literal["fixed", "flexmatch", "top_per_class", "margin"] = Field("fixed", description="which rule accepts a pseudo-label")
    threshold: float = Field(0.95, ge=0, description="tau for fixed/flexmatch, N for top_per_class, minimum margin for margin")
    top_k: int = Field(3, ge=1, description="classes kept in the soft label")
    sharpen: float = Field(1.0, gt=0, description="soft-label temperature (< 1 sharpens)")
    calibration_folds: int = Field(5, ge=0, description="folds of labeled samples for held-out temperature calibration (0 = off)")
    calibration_samples: int = Field(
        2000, ge=0, description="held-out labeled samples the final temperatures are fitted on: whole folds are scored until this many (0 = every fold; each fold costs one propagation)"
    )
    prior_correction: bool = Field(False, description="re-estimate the unlabeled class priors by EM (Saerens et al. 2002)")
    clean_seeds: bool = Field(True, description="first drop labeled samples that confident learning flags on their held-out scores")
    clean_seeds_odds: float = Field(5.0, ge=1, description="drop a flagged seed only if its held-out scores favour another class at least this many to 1 (1 = every flagged seed)")
    seed: int = 0

    @field_validator("weights")
    @classmethod
    def _weights_usable(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or sum(v) <= 0:
            raise ValueError("must be 3 non-negative numbers, not all zero")
        return v


class DetectNoiseConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "fail_above", "export_review", "top"})

    probs: Literal["auto", "crossval", "knn", "propagation"] = Field(
        "auto", description="out-of-sample probabilities: crossval (K-fold softmax head), knn (leave-one-out vote), propagation (K-fold label spreading over every sample, labeled or not); auto = each that applies (propagation when some samples are unlabeled), keep the one more accurate on the given labels"
    )
    pred_probs: str | None = Field(None, description="your own probabilities: .npy (samples order, sorted class columns) or .parquet (id + one column per class)")
    renormalize: bool = Field(False, description="--pred-probs rows must sum to 1 within 0.001; with this, rows are rescaled to sum to 1 instead")
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"] = "prune_by_noise_rate"
    rank_by: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = "self_confidence"
    folds: int = Field(5, ge=2, description="cross-validation folds")
    k: int = Field(10, ge=1, description="neighbours in the kNN graph")
    duplicate_threshold: float = Field(0.98, gt=0, le=1, description="cosine similarity above which two samples are near-duplicates")
    outlier_cut: float = Field(3.5, gt=0, description="robust z-score (median/MAD) of kNN distance above which a sample is an outlier")
    min_consensus: float = Field(0.5, ge=0, le=1, description="a label flag of the chosen probabilities is confirmed when a second model family (linear probe vs kNN vote) flags it too; when fewer than this share are confirmed, the evidence is weak: only confirmed flags, at most review_budget of them, stay is_issue, the rest stay ranked")
    review_budget: float = Field(0.05, gt=0, le=1, description="under weak evidence: the share of the labeled samples that may be flagged as label issues (the most likely first)")
    dynamics: bool = Field(False, description="second pass after distill: add the student's training dynamics (dataset cartography) as evidence")
    dynamics_file: str | None = Field(None, description="dynamics.parquet to read (implies dynamics) [default: WORKSPACE/student/dynamics.parquet]")
    seed: int = 0
    device: str = "auto"
    fail_above: float | None = Field(None, ge=0, le=1, description="exit 3 when the estimated label-issue rate is above this")
    export_review: str | None = Field(None, description="write a CSV review queue here, most useful first")

    @field_validator("export_review")
    @classmethod
    def _review_is_a_file(cls, v: str | None) -> str | None:
        # Checked before anything runs: a folder here used to be found only after label_issues.parquet was written.
        if v is not None and Path(v).is_dir():
            raise ValueError("is a folder; give a file name for the CSV review queue")
        return v
    top: int = Field(10, ge=0, description="issues listed in the printed summary")


class DistillConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "threads"})

    student: Literal["mlp", "linear", "cnn", "finetune"] = Field(
        "mlp", description="mlp or linear head on the embeddings; on the images' pixels, trained end to end (use a GPU): cnn = a small network from scratch, finetune = EfficientNet-Lite0 from its ImageNet weights"
    )
    image_size: int = Field(0, ge=0, description="cnn and finetune: side of the square the images are resized to (0 = their largest side clipped to 8-64 for cnn, 224 for finetune)")
    keep_issues: bool = Field(False, description="keep labeled samples that detect-noise flagged")
    use_pseudolabels: bool = Field(True, description="train on the pseudo-labels too")
    pseudolabels: Literal["all", "accepted"] = Field("all", description="which pseudo-labels to train on: all (each weighted by its confidence) or only those the pseudolabel stage accepted")
    soft: bool = Field(False, description="distil the pseudo-labels' soft labels (KL at --temperature) rather than their hard labels")
    confidence_weighting: bool = Field(True, description="weight pseudo-labeled samples by their confidence")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    hidden: int = Field(512, ge=1, description="hidden width of the mlp student")
    temperature: float = Field(2.0, gt=0, description="distillation temperature T (Hinton et al. 2015)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft (KL) term where a sample has both targets")
    soften_below: float = Field(0.5, ge=0, le=1, description="targets less confident than this are softened toward the hard label (FerKD)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of the trusted labels for early stopping and metrics")
    folds: int = Field(5, ge=0, description="folds of cross-fitting that estimate the metrics when the trusted labels are too few to hold out (0 = off)")
    refit_teacher: bool = Field(True, description="recompute the pseudo-labels without the labels the metrics are measured on (held-out part, or each fold), so that they never reach the student through its teacher")
    patience: int = Field(10, ge=1, description="epochs without improvement before early stopping")
    vat: float = Field(0.0, ge=0, description="virtual adversarial training: perturbation radius as a multiple of the median nearest-neighbour distance between training samples (0 = off; 0.5 gained 1-2 points on pixel and text embeddings, lost 1.4 on CIFAR EfficientNet features, and costs 2.5x the training time)")
    fixmatch: float = Field(0.0, ge=0, description="cnn and finetune: weight of the FixMatch consistency term (Sohn et al. 2020): each step also draws 2x --batch-size images without a trusted label, labels a shifted view of each where the student is at least --fixmatch-threshold confident, and trains a strongly augmented view (affine warp, contrast, cutout) on that label (0 = off)")
    fixmatch_threshold: float = Field(0.95, ge=0, le=1, description="confidence a weakly augmented view needs before its label becomes a FixMatch target")
    fixmatch_rule: Literal["fixed", "flexmatch"] = Field("flexmatch", description="FixMatch thresholds: fixed (--fixmatch-threshold for every class) or flexmatch (per class, lower for the classes the student is confident about on fewer images; Zhang et al. 2021)")
    label_filter: bool = Field(True, description="with --fixmatch: set aside (train as unlabeled) the trusted labels that the student's predictions on strongly augmented views of their image contradict, re-checked every epoch after the first fifth; they are listed in metrics.json and dynamics.parquet")
    ema: float = Field(0.0, ge=0, lt=1, description="decay of an exponential moving average of the student's weights, updated every step, which is what gets validated and saved (FixMatch uses 0.999; 0 = off)")
    rounds: int = Field(1, ge=1, description="self-training rounds: after each, the student becomes the teacher")
    onnx: bool = Field(False, description="also export student/model.onnx")
    seed: int = 0
    device: str = "auto"
    threads: int = Field(0, ge=0, description="CPU threads while training (0 = 1 for mlp and linear, whose small matrices gain nothing from more and lose much on a busy machine; torch's default for cnn and finetune)")


class PredictConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})

    top_k: int = Field(3, ge=1, description="classes kept in top_labels/top_probs")
    batch_size: int = Field(1024, ge=1)
    device: str = "auto"


class ReportConfig(StageConfig):
    max_points: int = Field(5000, ge=10, description="points drawn in the embedding map")
    gallery: int = Field(24, ge=0, description="label issues shown in the gallery")
    title: str | None = Field(None, description="page title [default: the dataset folder name]")


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "report": ReportConfig,
    "distill": DistillConfig,
    "predict": PredictConfig,
    "dataset": DatasetConfig,
    "embed": EmbedConfig,
    "prototype": PrototypeConfig,
    "pseudolabel": PseudolabelConfig,
    "detect-noise": DetectNoiseConfig,
}


class OptionError(ConfigError):
    """A command-line option (a flag or ``--set``) has an unknown key or a bad value: a usage error."""

    exit_code = 2


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}


def _what(first: dict[str, Any]) -> str:
    """A pydantic error in scikit-learn's words: 'must be < 1'."""
    kind, ctx = first["type"], first.get("ctx") or {}
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {bound:g}" if isinstance(bound, float) else f"must be {_BOUNDS[kind]} {bound}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind.split("_")[0] in _KINDS and kind.endswith(("_type", "_parsing", "_from_float")):
        return f"must be {_KINDS[kind.split('_')[0]]}"
    msg = first["msg"].removeprefix("Value error, ")
    return re.sub(r"^Input should be ", "must be ", msg)


def _explain(first: dict[str, Any], stage: str, source: str) -> str:
    """One line: where the bad value came from, what is wrong with it, what it was."""
    key = str(first["loc"][0]) if first["loc"] else "?"
    cli = source.startswith("--")
    if first["type"] == "extra_forbidden":
        where = f"{source}: unknown key '{key}' in [{stage}]" if cli else f"{source} [{stage}]: unknown key '{key}'"
        return f"{where}; known: {', '.join(STAGE_CONFIGS[stage].model_fields)}"
    where = source if cli else f"{source} [{stage}] {key}"
    sub = "".join(f"[{p}]" for p in first["loc"][1:])
    return f"{where}{sub}: {_what(first)}. Got {first.get('input')!r} instead."


def load_config_file(path: Path | str | None) -> dict[str, dict[str, Any]]:
    """Read a TOML config; an unknown section is a ConfigError naming it."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder; --config takes a TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); TOML files are UTF-8: re-save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    for section, body in data.items():
        if section not in STAGE_CONFIGS:
            raise ConfigError(f"{p}: unknown section [{section}]; known: {', '.join(sorted(STAGE_CONFIGS))}")
        if not isinstance(body, dict):
            raise ConfigError(f"{p}: [{section}] must be a table")
    return data


def build_config(
    stage: str,
    file_config: dict[str, dict[str, Any]],
    overrides: dict[str, Any],
    *,
    origins: dict[tuple[str, str], str] | None = None,
    flags: dict[str, str] | None = None,
) -> StageConfig:
    """The stage's config: file section, then command-line ``overrides`` (None = not given).

    A bad or unknown key is an error that names where it came from: ``flags`` maps an override's
    key to its flag (``--alpha``); ``origins`` maps a ``(stage, key)`` of ``file_config`` to its
    source, a file (``lk.toml``, shown as ``lk.toml [pseudolabel] alpha``) or a command-line
    option (``--set pseudolabel.alpha``, anything that starts with ``--``). A value from the
    command line is an OptionError (exit 2); one from a file is a ConfigError (exit 1).
    """
    cls = STAGE_CONFIGS[stage]
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**file_config.get(stage, {}), **given}
    try:
        return cls(**values)
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        if key in given:
            source = (flags or {}).get(key, "--" + key.replace("_", "-"))
        else:
            source = (origins or {}).get((stage, key), "config")
        raise (OptionError if source.startswith("--") else ConfigError)(_explain(first, stage, source)) from None
