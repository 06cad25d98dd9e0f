"""detect-noise: rank the labeled samples by how likely their given label is wrong.

Out-of-sample probabilities (cross-validated softmax head or leave-one-out kNN vote, whichever
predicts the given labels better, or the user's own ``--pred-probs``) feed confident learning;
embeddings add conflicting near-duplicates and outliers; with ``--dynamics`` (a second pass after
``labelkit distill``) the student's training dynamics add hard-to-learn samples; one label quality
per sample combines the evidence (labelkit.evidence).

The ``--dynamics`` pass is its own node in the DAG (after distill); the pipeline runs the first
pass, which a current ``--dynamics`` pass over the same inputs satisfies (labelkit.stages._runner).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import artifacts, cartography, evidence, health, noise
from labelkit.config import DetectNoiseConfig
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.errors import BadInputError, MissingArtifactError, ThresholdExceededError
from labelkit.pred_probs import load_pred_probs
from labelkit.pred_probs import normalise_rows as _normalise_rows
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages import _multilabel
from labelkit.stages._runner import Job, Stage
from labelkit.stages._runner import run as run_stage
from labelkit.stages._knn import knn_graph
from labelkit.workspace import Workspace, atomic_write, file_fingerprint, text_fingerprint

STAGE = "detect-noise"
EXIT_THRESHOLD = ThresholdExceededError.exit_code
DYNAMICS = "student/dynamics.parquet"  # written by labelkit distill (labelkit.stages.distill)
SELECT_BY = evidence.SelectBy.ACCURACY  # --probs auto's rule; see choose_probs and docs/stages/detect-noise.md


def _check(job: Job) -> None:
    samples = job.samples
    samples.require_labels(STAGE)
    if samples.n_labeled == 0:
        raise BadInputError(f"{STAGE} needs labeled samples: none of the {len(samples.table)} samples has a label")
    job.state["dyn_path"] = _dynamics_path(job.ws, job.cfg)


def _key(job: Job) -> None:
    cfg = job.cfg
    if cfg.pred_probs is not None:
        job.inputs["pred_probs"] = file_fingerprint(_existing(cfg.pred_probs))
    # The dynamics file is recorded with the parameters: the --dynamics node reads a file the user
    # names (or distill's), which never makes distill run first.
    dyn_path = job.state["dyn_path"]
    if dyn_path is not None:
        job.params["dynamics_fingerprint"] = file_fingerprint(dyn_path)
        job.params_fp = text_fingerprint(job.params_fp, job.params["dynamics_fingerprint"])


def _explain(job: Job, reason: str) -> str:
    """A --dynamics rerun whose only change is the dynamics file says so."""
    recorded = _recorded_config(job.ws)
    dyn_path = job.state["dyn_path"]
    if reason == "parameters changed" and dyn_path is not None and recorded is not None and recorded.fingerprint() == job.cfg.fingerprint():
        return f"{dyn_path.name} changed"
    return reason


def _build(job: Job) -> dict[str, Any]:
    if _multilabel.is_multilabel(job.samples):  # issue 16: label sets, one-vs-rest
        return _multilabel.build_label_issues(job)
    return _detect(job.ctx, job.cfg, job.samples, job.state["dyn_path"])


def _after(job: Job, res: StageResult) -> None:
    _apply_gates(job.ctx, job.cfg, job.samples, res)


def _first_pass(cfg: DetectNoiseConfig) -> DetectNoiseConfig:
    return cfg.model_copy(update={"dynamics": False, "dynamics_file": None})


def _reads(cfg: DetectNoiseConfig) -> tuple[str, ...]:
    return () if cfg.pred_probs is not None else (artifacts.EMBEDDINGS,)


_COMMON = dict(outputs=(artifacts.LABEL_ISSUES,), inputs=_reads, require_inputs=lambda cfg: cfg.pred_probs is None,
               check=_check, key=_key, explain=_explain, after=_after)
# Two nodes write label_issues.parquet: the first pass (in the pipeline; distill reads its output)
# and the --dynamics pass after distill, which refines it: a pipeline step finds the first pass
# satisfied by a current --dynamics pass over the same inputs, so the pipeline keeps it.
FIRST_PASS = Stage(STAGE, DetectNoiseConfig, _build, configure=_first_pass, **_COMMON)
DYNAMICS_PASS = Stage(STAGE, DetectNoiseConfig, _build, node=f"{STAGE} --dynamics", refines=STAGE, in_pipeline=False, **_COMMON)
SPECS = (FIRST_PASS, DYNAMICS_PASS)


def run(ctx: RunContext, cfg: DetectNoiseConfig, *, force: bool = False) -> StageResult:
    """The --dynamics pass when ``cfg`` asks for it, else the first pass."""
    return run_stage(ctx, DYNAMICS_PASS if (cfg.dynamics or cfg.dynamics_file) else FIRST_PASS, cfg, force=force)


def _recorded_config(ws: Workspace) -> DetectNoiseConfig | None:
    """The config of detect-noise's last recorded run (None if none, or unreadable)."""
    rec = ws.record(STAGE)
    if rec is None:
        return None
    try:
        return DetectNoiseConfig(**{k: v for k, v in rec.params.items() if k in DetectNoiseConfig.model_fields})
    except ValueError:
        return None


def _dynamics_path(ws: Workspace, cfg: DetectNoiseConfig) -> Path | None:
    """The dynamics file this run reads (None without --dynamics); missing is an error."""
    if not (cfg.dynamics or cfg.dynamics_file):
        return None
    path = Path(cfg.dynamics_file) if cfg.dynamics_file else ws.path(DYNAMICS)
    if not path.is_file():
        raise MissingArtifactError(
            f"--dynamics: {path} not found; run 'labelkit distill {ws.data}' first, "
            f"then 'labelkit detect-noise {ws.data} --dynamics' as a second pass"
        )
    return path


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"--pred-probs {path}: no such file")
    return p


# -- probabilities --------------------------------------------------------------------------


def _crossval_probs(ctx: RunContext, cfg: DetectNoiseConfig, labels: np.ndarray, vecs: np.ndarray, k_classes: int) -> np.ndarray:
    from labelkit.probe import cross_val_probs

    folds = max(2, min(cfg.folds, len(labels)))
    return cross_val_probs(vecs, labels, k_classes, n_folds=folds, seed=cfg.seed, device=resolve_device(cfg.device), progress=ctx.progress)


def _propagation_probs(ctx: RunContext, cfg: DetectNoiseConfig, emb_labels: np.ndarray, emb_rows: np.ndarray, vecs: np.ndarray,
                       full_graph, classes: list[str]) -> np.ndarray:
    """Held-out label spreading over the graph of every sample, labeled or not: (len(emb_rows), K).

    Each labeled sample's probabilities come from the fold of labels that hides its own (the
    pseudolabel stage's calibrated ensemble, labelkit.pseudolabel.heldout_calibration).
    """
    from labelkit import pseudolabel as compute
    from labelkit.stages._inputs import class_embeddings

    options = compute.PseudolabelOptions(n_neighbors=cfg.k, n_folds=max(2, cfg.folds), seed=cfg.seed)
    text = class_embeddings(ctx.ws, classes)  # class-name anchors, when the embedder has a text tower
    cal = compute.heldout_calibration(vecs, emb_labels, len(classes), full_graph, None, text_prototypes=text, options=options)
    at = np.full(len(vecs), -1)
    at[cal.rows] = np.arange(cal.rows.size)
    if (at[emb_rows] < 0).any():
        raise BadInputError(f"{STAGE} --probs propagation needs at least 2 labeled samples and --folds >= 2")
    return cal.probs[at[emb_rows]].astype(np.float64)


def _model_probs(ctx: RunContext, cfg: DetectNoiseConfig, labels: np.ndarray, vecs: np.ndarray, graph, k_classes: int,
                 propagation, transductive: bool) -> tuple[np.ndarray, dict]:
    """The probabilities --probs asks for; auto computes the sources that apply and keeps the most
    accurate (evidence.choose_probs). ``propagation()`` gives the propagation source, which auto
    uses when some samples are unlabeled (``transductive``): without them it sees what the kNN
    vote sees."""
    candidates = {}
    if cfg.probs in ("auto", "crossval"):
        candidates["crossval"] = _crossval_probs(ctx, cfg, labels, vecs, k_classes)
    if cfg.probs in ("auto", "knn"):
        candidates["knn"] = evidence.knn_vote_probs(labels, *graph, k_classes)
    if cfg.probs == "propagation" or (cfg.probs == "auto" and transductive):
        candidates["propagation"] = propagation()
    choice = evidence.choose_probs(labels, candidates, by=SELECT_BY)
    scores = {src: {m: round(v, 4) for m, v in sc.items()} for src, sc in choice.scores.items()}
    return candidates[choice.chosen], {"requested": cfg.probs, "chosen": choice.chosen, "by": choice.by, "scores": scores}, candidates


def _second_opinion(ctx, cfg, chosen: str, candidates: dict, labels, vecs, graph, k_classes: int) -> np.ndarray:
    """Out-of-sample probabilities from the other model family: the kNN vote for the linear probe,
    the linear probe for the graph-based sources (kNN vote, propagation)."""
    other = "knn" if chosen == "crossval" else "crossval"
    if other not in candidates:
        candidates[other] = evidence.knn_vote_probs(labels, *graph, k_classes) if other == "knn" else _crossval_probs(ctx, cfg, labels, vecs, k_classes)
    return candidates[other]


# --pred-probs are never cut (they must equal cleanlab's results), only warned about below this accuracy.
WEAK_PRED_PROBS_ACCURACY = 0.8
FILTER_COLUMNS = ("set_aside", "view_confidence")  # written by distill --fixmatch's label filter; absent in older files


def _dynamics(path: Path, ids: np.ndarray, given: np.ndarray) -> tuple[cartography.DynamicsEvidence, dict]:
    """Cartography evidence for the analysed rows: a row counts when the student trained on its given label.

    Where the file has the FixMatch label filter's columns, a label it set aside is an issue too,
    and the strong views' probability of the label caps its quality.
    """
    try:
        present = set(pq.read_schema(path).names)
        extra = [c for c in FILTER_COLUMNS if c in present]
        dyn = pq.read_table(path, columns=["id", "label", "confidence", "variability", "is_pseudo", *extra]).to_pandas()  # a user file: its own message below
    except (OSError, KeyError, pa.ArrowInvalid) as e:
        raise BadInputError(f"--dynamics {path}: cannot read id, label, confidence, variability, is_pseudo ({e})") from None
    dyn = dyn[~dyn["is_pseudo"].astype(bool)].assign(id=lambda d: d["id"].astype(str)).drop_duplicates("id").set_index("id")
    at = dyn.reindex(pd.Index(ids.astype(str)))
    same = (at["label"].to_numpy(dtype=object) == given) & at["confidence"].notna().to_numpy()
    conf = np.where(same, at["confidence"].to_numpy(dtype=np.float64), np.nan)
    var = np.where(same, at["variability"].to_numpy(dtype=np.float64), np.nan)
    ev = cartography.dynamics_evidence(conf, var)
    hard_to_learn = int(ev.is_issue.sum())
    aside = same & (at["set_aside"].fillna(False).to_numpy(dtype=bool) if "set_aside" in extra else False)
    views = np.where(same, at["view_confidence"].to_numpy(dtype=np.float64), np.nan) if "view_confidence" in extra else np.full(len(ids), np.nan)
    quality = np.fmin(ev.label_quality, np.clip(views, 0.0, 1.0))  # fmin: NaN views leave the quality as it was
    ev = cartography.DynamicsEvidence(np.where(np.isnan(ev.score) & np.isnan(views), np.nan, 1.0 - quality), quality, ev.is_issue | aside)
    return ev, {"file": str(path), "n_with_dynamics": int(same.sum()), "n_hard_to_learn": hard_to_learn, "n_set_aside": int(np.sum(aside))}


# -- the stage's work -----------------------------------------------------------------------


def _detect(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples, dyn_path: Path | None) -> dict[str, Any]:
    ws = ctx.ws
    classes = samples.classes
    codes = samples.label_codes()
    table = samples.table
    dup = out = None
    if cfg.pred_probs is not None:
        probs_all = load_pred_probs(Path(cfg.pred_probs), samples)
        rows = np.flatnonzero(codes >= 0)
        probs = _normalise_rows(probs_all[rows], f"--pred-probs {Path(cfg.pred_probs).name}", renormalize=cfg.renormalize,
                                ids=table["id"].to_numpy()[rows])
        choice = {"requested": "pred_probs", "chosen": "pred_probs", "by": None, "scores": {}}
    else:
        from labelkit import knn
        from labelkit.stages._inputs import read_embeddings

        emb_ids, vecs, _ = read_embeddings(ws)
        pos = pd.Index(emb_ids).get_indexer(table["id"])  # -1: no embedding (unreadable input)
        rows = np.flatnonzero((codes >= 0) & (pos >= 0))
        if len(rows) < 2:
            raise BadInputError(f"{STAGE} needs at least 2 labeled samples with embeddings; found {len(rows)}")
        lab_vecs = vecs[pos[rows]]
        # One graph among the labeled samples serves the kNN vote and the duplicates; the graph of
        # every sample, the outliers and the propagation.
        graph = knn.knn_graph(lab_vecs, min(cfg.k, len(rows) - 1), exclude_self=True)
        fs, fi = knn_graph(ws, vecs, k=cfg.k, progress=ctx.progress)
        emb_labels = np.full(len(vecs), -1, dtype=np.int64)
        emb_labels[pos[rows]] = codes[rows]
        propagation = lambda: _propagation_probs(ctx, cfg, emb_labels, pos[rows], vecs, (fs, fi), classes)  # noqa: E731
        probs, choice, candidates = _model_probs(ctx, cfg, codes[rows], lab_vecs, graph, len(classes), propagation, len(rows) < len(vecs))
        second = _second_opinion(ctx, cfg, choice["chosen"], candidates, codes[rows], lab_vecs, graph, len(classes))
        dup = evidence.find_conflicting_duplicates(codes[rows], *graph, threshold=cfg.duplicate_threshold, probs=probs)
        full = evidence.find_outliers(fs, fi, cut=cfg.outlier_cut)
        out = type(full)(*(field[pos[rows]] for field in full))
    labels = codes[rows]
    names = np.asarray(classes, dtype=object)
    ids = table["id"].to_numpy()[rows]
    dyn, dyn_summary = _dynamics(dyn_path, ids, names[labels]) if dyn_path is not None else (None, None)
    cl = noise.detect_label_issues(labels, probs, method=cfg.filter_by, score_method=cfg.rank_by)
    est = noise.estimate_noise_matrices(labels, probs)
    joint = noise.estimate_joint(labels, probs)
    # Confident learning doubts a label when the row falls off the diagonal of the confident joint,
    # C[y][j], j != y (another class clears its threshold t_j; Northcutt et al. 2021, eq. 1): only
    # such outliers are issues. Measured on digits, an outlier alone was a flipped label 0-19% of the time.
    doubted = noise.detect_label_issues(labels, probs, method="confident_learning").is_issue
    q = evidence.combine_evidence(labels, probs=probs, label_issues=cl.is_issue, duplicates=dup, outliers=out, dynamics=dyn, doubted=doubted)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    n_candidates = int((q.is_issue & (q.issue_type == "label")).sum())
    # A wrong label is contradicted by any good model; a weak model's own errors are idiosyncratic.
    # So when the other model family (linear probe vs kNN vote) confirms few of the chosen source's
    # label flags beyond chance, most flags are the models' errors, not the labels': weak evidence.
    # Measured: digits with 10% flipped 0.73, synthetic clusters with 20% flipped 0.83; CIFAR-10 on
    # EfficientNet-Lite0 features (0.5% wrong labels) 0.23; random vectors 0.
    consensus = None
    if cfg.pred_probs is None:
        also = noise.detect_label_issues(labels, second, method=cfg.filter_by, score_method=cfg.rank_by).is_issue
        label_flags = q.is_issue & (q.issue_type == "label")
        consensus = confirmation(label_flags, also)
    weak = consensus is not None and consensus < cfg.min_consensus
    if weak:
        q = q._replace(is_issue=_within_budget(q, also, budget=int(np.ceil(cfg.review_budget * len(labels)))))
    order = np.argsort(q.rank, kind="stable")
    issues = pd.DataFrame(
        {
            "id": ids[order],
            "given_label": names[labels][order],
            "suggested_label": names[q.suggested_label][order],
            "label_quality": q.label_quality[order].astype(np.float32),
            "is_issue": q.is_issue[order],
            "issue_type": q.issue_type[order],
            "rank": q.rank[order].astype(np.int64),
        }
    )
    summary = _summary(issues, joint, classes, cfg, choice, dyn_summary, n_labeled=int((codes >= 0).sum()), n_analysed=len(rows))
    summary["out_of_sample_accuracy"] = round(accuracy, 4)
    summary["flag_consensus"] = None if consensus is None else round(consensus, 4)
    summary["weak_evidence"] = weak
    summary["n_label_candidates"] = n_candidates
    summary["warnings"] = input_warnings(samples, _warnings(summary, cfg, n_classes=len(np.unique(labels)), n_candidates=n_candidates))
    meta = {
        "classes": classes, "params": cfg.result_params(), "probs": choice["chosen"], "summary": summary,
        "noise_matrix": est.noise_matrix.tolist(), "joint": joint.tolist(), "py": est.py.tolist(),
    }
    schema = pa.schema([("id", pa.string()), ("given_label", pa.string()), ("suggested_label", pa.string()), ("label_quality", pa.float32()),
                        ("is_issue", pa.bool_()), ("issue_type", pa.string()), ("rank", pa.int64())])
    artifacts.write_table(ws.path(artifacts.LABEL_ISSUES), pa.Table.from_pandas(issues, schema=schema, preserve_index=False), meta)
    return summary


def confirmation(flags: np.ndarray, other: np.ndarray) -> float:
    """How far a second source's flags ``other`` confirm ``flags`` beyond chance, in [-1, 1] (kappa-like):
    (p_o - p_e) / (1 - p_e), with p_o the share of ``flags`` that ``other`` also flags and p_e the
    share of all rows ``other`` flags. 1 when none is flagged (nothing to doubt).

    >>> confirmation(np.array([True, True, False, False]), np.array([True, True, False, False]))
    1.0
    >>> confirmation(np.array([True, True, True, True]), np.array([True, True, False, False]))
    0.0
    """
    if not flags.any():
        return 1.0
    p_o = float((flags & other).sum() / flags.sum())
    p_e = float(other.mean())
    return 1.0 if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def _within_budget(q, also: np.ndarray, *, budget: int) -> np.ndarray:
    """``is_issue`` keeping only the label flags that the second source ``also`` flags, at most the
    ``budget`` most likely (by rank); other issue types kept."""
    label = q.is_issue & (q.issue_type == "label")
    out = q.is_issue & ~(label & ~also)
    flagged = np.flatnonzero(label & also)
    out[flagged[np.argsort(q.rank[flagged], kind="stable")][budget:]] = False
    return out


def _warnings(summary: dict[str, Any], cfg, *, n_classes: int, n_candidates: int) -> list[dict[str, str]]:
    acc, rate = summary["out_of_sample_accuracy"], summary["estimated_noise_rate"]
    out = health.one_class(n_classes)
    if summary["weak_evidence"]:
        out.append(health.warning(
            "weak_evidence",
            f"a second out-of-sample classifier hardly confirms the label flags (agreement beyond chance {summary['flag_consensus']:.2f}) "
            f"(the chosen one is {acc:.0%} accurate on the given labels): most flags are the models' errors, not the labels'. "
            f"Of {n_candidates} candidate label flags, the {summary['issues_by_type'].get('label', 0)} that both flag and rank highest "
            f"are kept (review budget {cfg.review_budget:.0%}); the rest stay ranked in label_issues.parquet",
            "review by rank from the top; a stronger embedder (labelkit embed --model ...) sharpens the evidence",
        ))
    elif cfg.pred_probs is not None and acc < WEAK_PRED_PROBS_ACCURACY:
        out.append(health.warning(
            "weak_evidence",
            f"your probabilities are only {acc:.0%} accurate on the given labels: many flags may be the model's errors",
            "review by rank from the top, or use a stronger model's out-of-sample probabilities",
        ))
    return out + health.noise_rate(rate)


def _summary(issues: pd.DataFrame, joint: np.ndarray, classes: list[str], cfg, choice: dict, dynamics: dict | None, *,
             n_labeled: int, n_analysed: int) -> dict[str, Any]:
    flagged = issues[issues["is_issue"]]
    reported = issues[~issues["is_issue"] & issues["issue_type"].notna()]
    by_type = flagged["issue_type"].value_counts().to_dict()
    by_class = flagged.groupby("given_label").size().sort_values(ascending=False).to_dict()
    off = joint.copy()
    np.fill_diagonal(off, 0)
    pairs = []
    for flat in np.argsort(off, axis=None)[::-1][:5]:
        i, j = divmod(int(flat), len(classes))
        if off[i, j] <= 0:
            break
        pairs.append({"given": classes[i], "true": classes[j], "joint": round(float(off[i, j]), 4)})
    top = flagged.head(cfg.top)
    return {
        "n_labeled": n_labeled,
        "n_analysed": n_analysed,
        "n_issues": int(len(flagged)),
        "issue_rate": round(len(flagged) / max(n_analysed, 1), 4),
        "estimated_noise_rate": round(float(1 - np.trace(joint)), 4),
        "issues_by_type": {str(k): int(v) for k, v in by_type.items()},
        "reported_not_issues": {str(k): int(v) for k, v in reported["issue_type"].value_counts().items()},
        "issues_by_class": {str(k): int(v) for k, v in by_class.items()},
        "confused_pairs": pairs,
        "top_issues": [
            {"rank": int(r.rank), "id": r.id, "given": r.given_label, "suggested": r.suggested_label, "quality": round(float(r.label_quality), 4), "type": r.issue_type}
            for r in top.itertuples()
        ],
        "probs": choice["chosen"],
        "probs_choice": choice,
        "filter_by": cfg.filter_by,
        "dynamics": dynamics,
    }


def _apply_gates(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples, res: StageResult) -> None:
    """--export-review writes the review queue; --fail-above sets the CI exit code."""
    if cfg.export_review:
        issues = artifacts.read_table(ctx.ws.path(artifacts.LABEL_ISSUES)).to_pandas()
        queue = issues[issues["is_issue"]].merge(samples.table[["id", "source"]], on="id", how="left")
        buf = io.StringIO()
        queue[["rank", "id", "source", "given_label", "suggested_label", "label_quality", "issue_type"]].to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
        with atomic_write(Path(cfg.export_review), "w") as f:
            f.write(buf.getvalue())
        res.summary["review_file"] = str(cfg.export_review)
        res.summary["review_rows"] = int(len(queue))
    if cfg.fail_above is not None:
        rate = res.summary.get("issue_rate", 0.0)
        if rate > cfg.fail_above:
            res.exit_code = EXIT_THRESHOLD
            res.message = f"label-issue rate {rate:.2%} is above --fail-above {cfg.fail_above:.2%}"
