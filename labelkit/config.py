"""One frozen pydantic model per stage: every option's name, type, bounds, default and help, once.

Everything else is generated from these declarations: the Typer options of every command and their
``--help`` (labelkit/cli.py), the CLI reference (``python -m labelkit.clidoc``), the options table
(docs/options.md) and the defaults and checks of the compute option classes
(:func:`validate_options`). ``--config FILE.toml`` holds one table per stage (``[embed]``,
``[pseudolabel]``, …); options given on the command line override it.

Adding an option is one line here: ``name: type = option(default, "help", ge=..., le=...)``. It then
has a flag (``--name``; ``--name/--no-name`` for a boolean; ``flag=`` to spell it otherwise), a row in
the reference and in docs/options.md, a ``[stage] name`` TOML key and ``--set stage.name=``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from labelkit import sysmem
from labelkit.errors import BadInputError, ConfigError


def option(default: Any, help: str, *, flag: str | None = None, shown: str | None = None, cli: bool = True, **bounds: Any) -> Any:
    """A config field: its default, help and bounds (``ge``, ``gt``, ``le``, ``lt``), and its flag.

    ``flag``: the command-line spelling when it is not the field's name dashed (``--soft/--hard``; a
    boolean is ``--name/--no-name`` otherwise); a variable-length tuple's flag is repeatable.
    ``shown``: what ``--help`` shows as the default when the default is None (``per backend``).
    ``cli``: False for a key that only a ``--config`` file or ``--set`` can give.
    """
    extra = {"flag": flag, "shown": shown, "cli": cli}
    return Field(default, description=help, json_schema_extra={k: v for k, v in extra.items() if v is not None}, **bounds)


# Options that several stages share, declared once each.
DEVICE_HELP = "auto (CUDA when present), cpu, cuda[:N]"


def _device() -> Any:
    return option("auto", DEVICE_HELP)


def _graph_k() -> Any:
    return option(10, "neighbours in the kNN graph", ge=1)


def _engine() -> Any:
    return option("local", "where the work that grows with N runs: local (this process) or ray (a Ray cluster: docs/scale.md); same results")


def _ray_address() -> Any:
    return option(None, "with engine ray: the cluster to join (HOST:6379, ray://HOST:10001 or auto)", shown="RAY_ADDRESS, else a local Ray")


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_size(text: str) -> int | None:
    """A size as written ('8GB', '500 MB', '1.5GiB', '2000000' bytes) in bytes; None for 0 (no budget).

    >>> byte_size("8GB"), byte_size("1.5 GiB"), byte_size("0")
    (8000000000, 1610612736, None)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b|b)?\s*", str(text), flags=re.IGNORECASE)
    if m is None:
        raise ValueError("must be a size such as 8GB, 500MB or 1.5GiB, auto, or 0 for no budget")
    return int(float(m[1]) * _SIZE_UNITS[(m[2] or "").lower()]) or None


def _size_text(v: Any) -> Any:
    """A TOML or --set number of bytes (8000000000) as text; checked as a size (or ``auto``)."""
    v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(v, str):
        if v.strip().lower() == sysmem.AUTO:
            return sysmem.AUTO
        byte_size(v)
        return v.strip()
    return v


def budget_bytes(text: str) -> int | None:
    """A ``--memory-budget`` in bytes: ``auto`` is half the memory available now (labelkit.sysmem; None where unknown), 0 is None.

    >>> budget_bytes("2GB"), budget_bytes("0"), budget_bytes("auto") is None or budget_bytes("auto") > 0
    (2000000000, None, True)
    """
    return sysmem.auto_budget(sysmem.memory()[1]) if text == sysmem.AUTO else byte_size(text)


def budget_kwargs(text: str) -> dict[str, Any]:
    """``memory_budget`` (bytes) and ``auto_budget`` for the kNN layer (:func:`labelkit.knn.choose_method`) from a ``--memory-budget``."""
    return {"memory_budget": budget_bytes(text), "auto_budget": text == sysmem.AUTO}


def _memory_budget() -> Any:
    return option(
        sysmem.AUTO, "memory each kNN search may take beyond the embeddings (the kNN graph; in pseudolabel also novelty's search of the labeled "
        "rows), e.g. 8GB or 500MB (GB = 10^9 bytes, GiB = 2^30); when the index chosen by size (exact; HNSW; the cells method for a graph of 200k rows or "
        "more) would need more, the cells method (exact search within each row's nearest k-means cells, no copy of the rows), else an IVF-PQ index with codes small "
        "enough to fit (docs/scale.md); auto = half the memory available when the stage starts; 0 = no budget"
    )


MemoryBudget = Annotated[str, BeforeValidator(_size_text)]


def _usable_weights(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if min(v) < 0 or sum(v) <= 0:
        raise ValueError("must be 3 non-negative numbers, not all zero")
    return v


def _positive_each(v: tuple[float, ...]) -> tuple[float, ...]:
    if any(not w > 0 for w in v):
        raise ValueError("must be numbers > 0")
    return v


class StageConfig(BaseModel):
    """Base: forbids unknown keys; ``fingerprint`` hashes every field that changes results."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Fields that change how fast a stage runs, never what it writes.
    runtime_fields: ClassVar[frozenset[str]] = frozenset()

    def fingerprint(self) -> str:
        payload = self.model_dump_json(exclude=set(self.runtime_fields))
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()

    def result_params(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DatasetConfig(StageConfig):
    """How DATA is read (shared by every stage)."""

    classes: tuple[str, ...] | None = option(
        None, "class names 'a,b,c' or a file with one per line (needed for zero-shot; adds classes with no labeled sample)", cli=False
    )  # its flag is every command's --classes (labelkit/cli.py), parsed by dataset.parse_classes_option


class EmbedConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "num_workers", "device", "allow_download", "engine", "ray_address"})

    model: str = option(
        "auto", "backend: auto, efficientnet-lite0, pixels[:SIZE], minilm, sbert:PATH, clip:ARCH/PRETRAINED, precomputed; auto = score every "
        "candidate that can run here on a sample of the labeled samples (leave-one-out kNN accuracy) and keep the best: pixels and "
        "efficientnet-lite0 (+ open_clip models on disk) for images, minilm for text, precomputed for vectors"
    )
    candidates: tuple[str, ...] = option(
        (), "with model auto: more backends to score, e.g. 'sbert:/path/to/model' or 'clip:ViT-B-32/openai' (its weights on disk, or allow_download)",
        flag="--candidate",
    )
    choice_per_class: int = option(30, "with model auto: labeled samples per class in the scoring sample", ge=2)
    choice_max: int = option(300, "with model auto: labeled samples scored at most", ge=4)
    choice_tie: float = option(0.02, "with model auto: a cheaper candidate this close to the best score wins", ge=0, le=1)
    weights: str | None = option(None, "local weights file for the backend (e.g. an open_clip checkpoint)")
    allow_download: bool = option(False, "let the backend download named weights from a hub (needs network)", flag="--allow-download/--no-download")
    dtype: Literal["float32", "float16"] = option("float32", "storage of the vectors: float32 or float16")
    batch_size: int | None = option(None, "inputs per forward pass", shown="per backend", gt=0)
    num_workers: int | None = option(None, "DataLoader decoding workers", shown="automatic", ge=0)
    device: str = _device()
    engine: Literal["local", "ray"] = _engine()
    ray_address: str | None = _ray_address()
    row_group_size: int = option(8192, "embeddings per Parquet row group (and per resumable chunk)", gt=0)


class PrototypeConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset()

    n_per_class: int = option(1, "prototypes per class (k-means inside the class when > 1)", ge=1)
    clean: bool = option(True, "drop labeled samples whose neighbours disagree with their label, or far from their class, before averaging")
    min_agreement: float = option(0.5, "share of a sample's labeled neighbours that must agree with its label to keep it", ge=0, le=1)
    max_drop: float = option(
        0.4, "if the clean check would drop more than this share of the labeled samples, it is measuring a weak embedding rather than wrong labels: keep them all and say so",
        ge=0, le=1,
    )
    k: int = option(10, "neighbours used by the clean-sample check", ge=1)
    text_weight: float = option(0.25, "weight of the class-name (text) embedding fused into each prototype, when the model has a text tower", ge=0, le=1)
    refine: bool = option(True, "refine prototypes transductively with confident unlabeled samples (soft k-means)")
    refine_temperature: float = option(0.05, "refinement: temperature of the soft assignment of unlabeled samples to prototypes", gt=0)
    min_confidence: float = option(0.8, "refinement: unlabeled samples at least this confident take part", ge=0, le=1)
    max_iter: int = option(10, "refinement: soft k-means iterations at most (0 = no refinement)", ge=0)
    seed: int = option(0, "random seed (k-means)")


class PseudolabelConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"engine", "ray_address"})

    method: Literal["ensemble", "propagation", "prototype", "knn"] = option(
        "ensemble", "scores: label propagation + prototypes (ensemble), label spreading alone, prototype softmax, or kNN vote"
    )
    k: int = _graph_k()
    alpha: float = option(0.9, "label spreading: weight of neighbours against the seeds", ge=0, lt=1)
    gamma: float = option(3.0, "graph edge weight max(cos, 0)^gamma (and the kNN vote's power)", ge=0)
    one_way_weight: float = option(0.1, "weight of a kNN edge that is not mutual: 0 = mutual kNN graph, 1 = plain symmetrised graph", ge=0, le=1)
    reach_prior: float = option(0.1, "shrink samples that no label reaches toward uniform confidence (0 = off)", ge=0)
    refine: bool = option(True, "second propagation round seeded by every sample's pseudo-label, weighted by its certainty")
    weights: Annotated[tuple[float, float, float], AfterValidator(_usable_weights)] = option(
        (1.0, 0.5, 0.0), "ensemble weights of the propagation, prototype and kNN-vote scores"
    )
    probe_weights: Annotated[tuple[float, ...], AfterValidator(_positive_each)] = option(
        (0.5, 1.0, 2.0), "ensemble: weights to try for a linear softmax probe on the labeled samples as a fourth member; the held-out calibration "
        "folds keep the best (or none); empty = no probe", flag="--probe-weight",
    )
    threshold_rule: Literal["fixed", "flexmatch", "top_per_class", "margin"] = option("fixed", "which rule accepts a pseudo-label: fixed, flexmatch, top_per_class or margin")
    threshold: float = option(0.95, "tau for fixed/flexmatch, N for top_per_class, minimum margin for margin", ge=0)
    top_k: int = option(3, "classes kept in the soft label", ge=1)
    sharpen: float = option(1.0, "soft-label temperature (< 1 sharpens)", gt=0)
    calibration_folds: int = option(5, "folds of labeled samples for held-out temperature calibration (0 = off)", ge=0)
    calibration_samples: int = option(
        2000, "held-out labeled samples the final temperatures are fitted on: whole folds are scored until this many (0 = every fold; each fold costs one propagation)",
        ge=0,
    )
    prior_correction: bool = option(False, "re-estimate the unlabeled class priors by EM (Saerens et al. 2002; label shift)")
    clean_seeds: bool = option(True, "first drop labeled samples that confident learning flags on their held-out scores")
    clean_seeds_odds: float = option(5.0, "drop a flagged seed only if its held-out scores favour another class at least this many to 1 (1 = every flagged seed)", ge=1)
    seed: int = option(0, "seed of the calibration folds")
    engine: Literal["local", "ray"] = _engine()
    ray_address: str | None = _ray_address()
    memory_budget: MemoryBudget = _memory_budget()
    max_error: float | None = option(
        None, "certify that at most this share of the accepted pseudo-labels is wrong (Learn then Test on the held-out labeled samples); "
        "when the labels cannot certify it, accept nothing and exit 3", shown="off", gt=0, lt=1)
    error_confidence: float = option(0.9, "confidence of the --max-error certificate (1 - the chance that it is wrong)", gt=0, lt=1)
    novelty_rate: float = option(0.05, "share of known-class samples that may be wrongly judged novel (far from every labeled class)", gt=0, lt=1)
    reject_novel: bool = option(True, "do not accept the pseudo-label of a sample judged novel (reason 'novel')")
    target_precision: float | None = option(
        None, "multi-label data: cut each class at the lowest threshold whose held-out precision reaches this, and accept only the "
        "samples whose classes all reach it", shown="the expected-F1 peak", gt=0, le=1)

    @field_validator("threshold")
    @classmethod
    def _threshold_fits_its_rule(cls, v: float, info: ValidationInfo) -> float:
        rule = info.data.get("threshold_rule")
        if rule == "top_per_class" and v != int(v):
            raise ValueError("must be an integer >= 0 for threshold_rule top_per_class")
        if rule is not None and rule != "top_per_class" and v > 1:
            raise ValueError(f"must be <= 1 for threshold_rule {rule}")
        return v


class DetectNoiseConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "fail_above", "export_review", "top", "engine", "ray_address"})

    probs: Literal["auto", "crossval", "knn", "propagation"] = option(
        "auto", "out-of-sample probabilities: crossval (K-fold softmax head), knn (leave-one-out vote), propagation (K-fold label spreading over every "
        "sample, labeled or not); auto = each that applies (propagation when some samples are unlabeled), keep the one more accurate on the given labels"
    )
    pred_probs: str | None = option(None, "your own probabilities: .npy (samples order, sorted class columns) or .parquet (id + one column per class); needs no embeddings")
    renormalize: bool = option(False, "pred_probs rows must sum to 1 within 0.001; with this, rows are rescaled to sum to 1 instead")
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"] = option(
        "prune_by_noise_rate", "confident learning's rule for which labels are issues (Northcutt et al. 2021)"
    )
    rank_by: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = option("self_confidence", "label-quality score that ranks the issues")
    folds: int = option(5, "cross-validation folds", ge=2)
    k: int = _graph_k()
    duplicate_threshold: float = option(0.98, "cosine similarity above which two samples are near-duplicates", gt=0, le=1)
    outlier_cut: float = option(3.5, "robust z-score (median/MAD) of kNN distance above which a sample is an outlier", gt=0)
    min_consensus: float = option(
        0.5, "a label flag of the chosen probabilities is confirmed when a second model family (linear probe vs kNN vote) flags it too; when fewer than "
        "this share are confirmed, the evidence is weak: only confirmed flags, at most review_budget of them, stay is_issue, the rest stay ranked",
        ge=0, le=1,
    )
    review_budget: float = option(0.05, "under weak evidence: the share of the labeled samples that may be flagged as label issues (the most likely first)", gt=0, le=1)
    dynamics: bool = option(False, "second pass after 'labelkit distill': add the student's training dynamics (dataset cartography) as evidence")
    dynamics_file: str | None = option(None, "dynamics.parquet to read (implies dynamics)", shown="WORKSPACE/student/dynamics.parquet")
    seed: int = option(0, "seed for the fold assignment")
    device: str = _device()
    engine: Literal["local", "ray"] = _engine()
    ray_address: str | None = _ray_address()
    memory_budget: MemoryBudget = _memory_budget()
    fail_above: float | None = option(None, "exit with code 3 when the estimated label-issue rate is above this fraction (for CI)", ge=0, le=1)
    export_review: str | None = option(None, "write a CSV review queue for annotators here, most useful first")
    top: int = option(10, "issues listed in the printed summary", ge=0)

    @field_validator("export_review")
    @classmethod
    def _review_is_a_file(cls, v: str | None) -> str | None:
        # Checked before anything runs: a folder here used to be found only after label_issues.parquet was written.
        if v is not None and Path(v).is_dir():
            raise ValueError("is a folder; give a file name for the CSV review queue")
        return v


class DistillConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "threads"})

    student: Literal["mlp", "linear", "cnn", "finetune"] = option(
        "mlp", "mlp or linear head on the embeddings; on the images' pixels, trained end to end (use a GPU): cnn = a small network from scratch, "
        "finetune = EfficientNet-Lite0 from its ImageNet weights"
    )
    image_size: int = option(0, "cnn and finetune: side of the square the images are resized to (0 = their largest side clipped to 8-64 for cnn, 224 for finetune)", ge=0)
    keep_issues: bool = option(False, "keep labeled samples that detect-noise flagged", flag="--keep-issues/--drop-issues")
    use_pseudolabels: bool = option(
        True, "train on the pseudolabel stage's labels too, or on the trusted labels alone (with fixmatch the student makes its own)",
        flag="--with-pseudolabels/--without-pseudolabels",
    )
    pseudolabels: Literal["all", "accepted"] = option("all", "which pseudo-labels to train on: all (each weighted by its confidence) or only those the pseudolabel stage accepted")
    soft: bool = option(False, "distil the pseudo-labels' soft labels (KL at temperature) rather than their hard labels", flag="--soft/--hard")
    confidence_weighting: bool = option(True, "weight pseudo-labeled samples by their confidence")
    epochs: int = option(100, "maximum epochs", ge=1)
    batch_size: int = option(256, "labeled samples per step (fixmatch adds twice as many unlabeled images)", ge=1)
    lr: float = option(1e-3, "peak AdamW learning rate, cosine-annealed to 0", gt=0)
    weight_decay: float = option(1e-2, "AdamW decoupled weight decay", ge=0)
    hidden: int = option(512, "hidden width of the mlp student", ge=1)
    temperature: float = option(2.0, "distillation temperature T (Hinton et al. 2015)", gt=0)
    alpha: float = option(0.5, "weight of the soft (KL) term where a sample has both targets", ge=0, le=1)
    soften_below: float = option(0.5, "targets less confident than this are softened toward the hard label (FerKD)", ge=0, le=1)
    val_fraction: float = option(0.1, "held-out share of the trusted labels for early stopping and metrics", ge=0, lt=1)
    folds: int = option(5, "folds of cross-fitting that estimate the metrics when the trusted labels are too few to hold out (0 = off)", ge=0)
    refit_teacher: bool = option(
        True, "recompute the pseudo-labels without the labels the metrics are measured on (held-out part, or each fold), so that they never reach "
        "the student through its teacher and the metrics are honest", flag="--refit-teacher/--shared-teacher",
    )
    patience: int = option(10, "epochs without improvement before early stopping", ge=1)
    vat: float = option(
        0.0, "virtual adversarial training: perturbation radius as a multiple of the median nearest-neighbour distance between training samples, "
        "e.g. 0.5 (0 = off; costs 2.5x the training time)", ge=0,
    )
    fixmatch: float = option(
        0.0, "cnn and finetune: weight of the FixMatch consistency term (Sohn et al. 2020): each step also draws 2x batch_size images without a "
        "trusted label, labels a shifted view of each where the student is at least fixmatch_threshold confident, and trains a strongly augmented "
        "view (affine warp, contrast, cutout) on that label, e.g. 1 (0 = off)", ge=0,
    )
    fixmatch_threshold: float = option(0.95, "confidence a weakly augmented view needs before its label becomes a FixMatch target", ge=0, le=1)
    fixmatch_rule: Literal["fixed", "flexmatch"] = option(
        "flexmatch", "FixMatch thresholds: fixed (fixmatch_threshold for every class) or flexmatch (per class, lower for the classes the student is "
        "confident about on fewer images; Zhang et al. 2021)"
    )
    label_filter: bool = option(
        True, "with fixmatch: set aside (train as unlabeled) the trusted labels that the student's predictions on strongly augmented views of their "
        "image contradict, re-checked every epoch after the first fifth; they are listed in metrics.json and dynamics.parquet"
    )
    ema: float = option(
        0.0, "decay of an exponential moving average of the student's weights, updated every step, which is what gets validated and saved "
        "(FixMatch uses 0.999; 0 = off)", ge=0, lt=1,
    )
    rounds: int = option(1, "self-training rounds: after each, the student becomes the teacher", ge=1)
    onnx: bool = option(False, "also export student/model.onnx")
    seed: int = option(0, "random seed")
    device: str = _device()
    threads: int = option(
        0, "CPU threads while training (0 = 1 for mlp and linear, whose small matrices gain nothing from more and lose much on a busy machine; "
        "torch's default for cnn and finetune)", ge=0,
    )


class PredictConfig(StageConfig):
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})

    top_k: int = option(3, "classes kept in top_labels/top_probs", ge=1)
    batch_size: int = option(1024, "rows per forward pass", ge=1)
    device: str = _device()


class ReportConfig(StageConfig):
    max_points: int = option(5000, "the most points drawn in the embedding map (a seeded random subset; every flagged label issue is kept)", ge=10)
    gallery: int = option(
        24, "label issues shown in the top-issues gallery, most likely wrong first (0 = no gallery; the full table below it always lists every flagged sample)", ge=0
    )
    title: str | None = option(None, "the page title", shown="'labelkit report: <dataset folder name>'")


class DiscoverConfig(StageConfig):
    pool: Literal["novel", "unlabeled"] = option(
        "novel", "samples to cluster into new classes: those pseudolabel judged novel, or every unlabeled sample")
    max_new: int = option(20, "the most new classes tried when estimating how many there are", ge=1)
    n_clusters: int | None = option(None, "use this many new classes instead of estimating the number", shown="estimated", ge=0)
    seed: int = option(0, "seed of the k-means++ initialisation")


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "report": ReportConfig,
    "distill": DistillConfig,
    "predict": PredictConfig,
    "dataset": DatasetConfig,
    "embed": EmbedConfig,
    "prototype": PrototypeConfig,
    "pseudolabel": PseudolabelConfig,
    "discover": DiscoverConfig,
    "detect-noise": DetectNoiseConfig,
}


# -- the declarations, as the command line, --help and the docs show them ---------------------------


_BOUND_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


@dataclass(frozen=True)
class Option:
    """One config field as a flag, a ``--help`` line and a docs row (all generated from the field)."""

    stage: str
    key: str
    flag: str  # "--alpha"; "--soft/--hard"
    help: str
    default: Any
    annotation: Any  # the field's type, Optional unwrapped
    shown: str | None  # the default as --help writes it; None: none shown
    cli: bool
    limits: tuple[tuple[str, Any], ...]  # (("ge", 0), ("lt", 1))

    @property
    def names(self) -> list[str]:
        return self.flag.split("/")

    @property
    def param(self) -> str:
        """The command function's parameter name: the key, or a repeatable flag's name (``--candidate``)."""
        return self.names[0].lstrip("-").replace("-", "_") if self.repeatable else self.key

    @property
    def choices(self) -> tuple[str, ...] | None:
        return typing.get_args(self.annotation) if typing.get_origin(self.annotation) is Literal else None

    @property
    def repeatable(self) -> bool:
        args = typing.get_args(self.annotation)
        return typing.get_origin(self.annotation) is tuple and len(args) == 2 and args[1] is Ellipsis

    @property
    def bounds(self) -> str:
        """'in [0, 1)', '>= 1', or '' (written from the field's ge/gt/le/lt)."""
        lim = dict(self.limits)
        lo = next(((k, lim[k]) for k in ("ge", "gt") if k in lim), None)
        hi = next(((k, lim[k]) for k in ("le", "lt") if k in lim), None)
        if lo and hi:
            return f"in {'[' if lo[0] == 'ge' else '('}{_num(lo[1])}, {_num(hi[1])}{']' if hi[0] == 'le' else ')'}"
        return " ".join(f"{_BOUND_SIGNS[k]} {_num(v)}" for k, v in (lo or hi,)) if (lo or hi) else ""

    def help_text(self) -> str:
        """The --help line: the help, its bounds, repeatable, then [default: ...]."""
        text = self.help + (f", {self.bounds}" if self.bounds else "") + ("; repeatable" if self.repeatable else "")
        return f"{text} [default: {self.shown}]" if self.shown is not None else text


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _shown(value: Any, names: list[str], given: str | None) -> str | None:
    """A default as --help writes it: 0.9, 3, 1 0.5 0, the flag of a boolean (no-clean), or the worded one."""
    if value is None or value == ():
        return given
    if isinstance(value, bool):
        return names[0 if value else 1].lstrip("-")
    if isinstance(value, tuple):
        return " ".join(_num(v) for v in value)
    return _num(value)


@functools.cache
def options(stage: str) -> tuple[Option, ...]:
    """Every option of a stage's config, in declaration order."""
    out = []
    for key, f in STAGE_CONFIGS[stage].model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        ann = f.annotation
        if typing.get_origin(ann) in (typing.Union, __import__("types").UnionType):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        dashed = "--" + key.replace("_", "-")
        flag = extra.get("flag") or (f"{dashed}/--no-{key.replace('_', '-')}" if ann is bool else dashed)
        limits = tuple((k, getattr(m, k)) for m in f.metadata for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None)
        out.append(Option(stage, key, flag, f.description or "", f.default, ann, _shown(f.default, flag.split("/"), extra.get("shown")),
                          extra.get("cli", True), limits))
    return tuple(out)


def option_of(stage: str, key: str) -> Option:
    return next(o for o in options(stage) if o.key == key)


def defaults(stage: str) -> StageConfig:
    """The stage's config with every default (what compute falls back to)."""
    return _defaults(stage)


@functools.cache
def _defaults(stage: str) -> StageConfig:
    return STAGE_CONFIGS[stage]()


# -- errors that name what the user wrote ----------------------------------------------------------


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
    if kind == "finite_number":
        return "must be a finite number"
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

    A bad or unknown key is an error that names where it came from: an override's flag is the
    field's declared one (``--alpha``, ``--keep-issues/--drop-issues``) unless ``flags`` maps its key to
    another; ``origins`` maps a ``(stage, key)`` of ``file_config`` to its source, a file
    (``lk.toml``, shown as ``lk.toml [pseudolabel] alpha``) or a command-line option (``--set
    pseudolabel.alpha``, anything that starts with ``--``). A value from the command line is an
    OptionError (exit 2); one from a file is a ConfigError (exit 1).
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
            declared = {o.key: o.flag for o in options(stage)}
            source = (flags or {}).get(key) or declared.get(key, "--" + key.replace("_", "-"))
        else:
            source = (origins or {}).get((stage, key), "config")
        raise (OptionError if source.startswith("--") else ConfigError)(_explain(first, stage, source)) from None


# -- compute option classes: the same declarations, in the compute layer's words ---------------------


def validate_options(stage: str, values: dict[str, Any], *, names: dict[str, str] | None = None, int_word: bool = False) -> StageConfig:
    """``values`` (config keys) checked by the stage's config model, for a compute option class.

    The compute layer's options are the config's fields under the compute argument names
    (``names`` maps a config key to one, e.g. ``{"k": "n_neighbors"}``): the same types, bounds and
    validators, declared once above. A bad value is a BadInputError in scikit-learn's template that
    names the compute argument and the field's whole range: ``'alpha' must be in [0, 1). Got 1.0
    instead.`` (``int_word``: integers say ``an int >= 1``). Returns the validated model.
    """
    try:
        return STAGE_CONFIGS[stage](**values)
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        o = option_of(stage, key) if key in STAGE_CONFIGS[stage].model_fields else None
        if o is not None and first["type"] in _BOUNDS and o.bounds:
            kind = "an int " if int_word and o.annotation is int else ""
            what = f"must be {kind}{o.bounds}"
        else:
            what = _what(first)
        name = (names or {}).get(key, key)
        raise BadInputError(f"'{name}' {what}. Got {values.get(key, first.get('input'))!r} instead.") from None
