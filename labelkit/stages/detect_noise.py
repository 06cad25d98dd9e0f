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
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import artifacts, cartography, evidence, probability_sources, review
from labelkit.config import DetectNoiseConfig, budget_kwargs
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.errors import BadInputError, MissingArtifactError, ThresholdExceededError
from labelkit.pred_probs import read_pred_probs
from labelkit.stages import _runner
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages._knn import graph_info, knn_graph, recall_warnings
from labelkit.stages._runner import Job, Stage
from labelkit.stages._runner import run as run_stage
from labelkit.workspace import Workspace, atomic_write, file_fingerprint, text_fingerprint

STAGE = "detect-noise"
EXIT_THRESHOLD = ThresholdExceededError.exit_code
DYNAMICS = _runner.DYNAMICS  # written by labelkit distill


def _check(job: Job) -> None:
    samples = job.samples
    samples.require_labels(STAGE)
    if samples.n_labeled == 0:
        raise BadInputError(f"{STAGE} needs labeled samples: none of the {len(samples.table)} samples has a label")
    job.state["dyn_path"] = _dynamics_path(job.ws, job.cfg)


def _key(job: Job) -> None:
    cfg = job.cfg
    if cfg.pred_probs is not None and not Path(cfg.pred_probs).is_file():  # its fingerprint: _COMMON's files (the runner hashes it)
        raise BadInputError(f"--pred-probs {cfg.pred_probs}: no such file")
    # The dynamics file is recorded with the parameters: the --dynamics node reads a file the user
    # names (or distill's), which never makes distill run first.
    base = _first_pass(cfg).fingerprint()  # what the first pass records: a --dynamics pass over it refines it
    if cfg.pred_probs is None and cfg.probs in ("auto", "propagation"):  # the propagation source's options (issue 15)
        job.params["propagation"] = probability_sources.shared_params(job.ctx.config("pseudolabel"))
        shared = json.dumps(job.params["propagation"], sort_keys=True)
        job.params_fp, base = text_fingerprint(job.params_fp, shared), text_fingerprint(base, shared)
    job.state["base_params_fp"] = base
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
    if job.samples.task == "multi-label":  # issue 16: label sets, one-vs-rest
        from labelkit.stages import _multilabel  # imported here: the teacher's stack costs --pred-probs 0.35 s at start

        return _multilabel.build_label_issues(job)
    return _detect(job.ctx, job.cfg, job.samples, job.state["dyn_path"])


def _first_pass(cfg: DetectNoiseConfig) -> DetectNoiseConfig:
    return cfg.model_copy(update={"dynamics": False, "dynamics_file": None})


_COMMON = dict(outputs=(artifacts.LABEL_ISSUES,), inputs=lambda cfg: () if cfg.pred_probs is not None else (artifacts.EMBEDDINGS,),
               require_inputs=lambda cfg: cfg.pred_probs is None, files=lambda cfg: {} if cfg.pred_probs is None else {"pred_probs": Path(cfg.pred_probs)},
               check=_check, key=_key, explain=_explain, after=lambda job, res: _apply_gates(job, res))
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
    try:
        return None if rec is None else DetectNoiseConfig(**{k: v for k, v in rec.params.items() if k in DetectNoiseConfig.model_fields})
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


# -- probabilities --------------------------------------------------------------------------

def _sources(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples, codes: np.ndarray) -> tuple[probability_sources.Sources, np.ndarray, Any]:
    """The probability sources over the labeled rows with embeddings, those rows, and the graph of every sample."""
    from labelkit.stages._inputs import class_embeddings, read_embeddings

    emb_ids, vecs, _ = read_embeddings(ctx.ws, keep_half=True)  # float16 stays float16 (compute converts row blocks)
    pos = pd.Index(emb_ids).get_indexer(samples.table["id"])  # -1: no embedding (unreadable input)
    rows = np.flatnonzero((codes >= 0) & (pos >= 0))
    if len(rows) < 2:
        raise BadInputError(f"{STAGE} needs at least 2 labeled samples with embeddings; found {len(rows)}")
    # The graph among the labeled rows (Sources.graph) serves the kNN vote and the duplicates; the
    # cached graph of every sample, the outliers and the propagation.
    full = knn_graph(ctx.ws, vecs, k=cfg.k, progress=ctx.progress, engine=cfg.engine, ray_address=cfg.ray_address,
                     **budget_kwargs(cfg.memory_budget))
    emb_labels = np.full(len(vecs), -1, dtype=np.int64)
    emb_labels[pos[rows]] = codes[rows]

    def propagation() -> np.ndarray:
        text = class_embeddings(ctx.ws, samples.classes)  # class-name anchors, when the embedder has a text tower
        return probability_sources.heldout_propagation(vecs, emb_labels, pos[rows], full, len(samples.classes), text=text,
                                                       options=probability_sources.propagation_options(
                                                           ctx.config("pseudolabel"), k=cfg.k, folds=cfg.folds, seed=cfg.seed))

    src = probability_sources.Sources(codes[rows], vecs[pos[rows]], len(samples.classes), k=cfg.k, folds=cfg.folds, seed=cfg.seed,
                                      device=resolve_device(cfg.device), progress=ctx.progress, propagation=propagation)
    return src, rows, (full, pos[rows], len(rows) < len(vecs))




def _dynamics(path: Path, ids: np.ndarray, given: np.ndarray) -> tuple[cartography.DynamicsEvidence, dict]:
    """Cartography evidence for the analysed rows: a row counts when the student trained on its given label.

    Where the file has the FixMatch label filter's columns, a label it set aside is an issue too,
    and the strong views' probability of the label caps its quality.
    """
    try:
        present = set(pq.read_schema(path).names)
        extra = [c for c in cartography.FILTER_COLUMNS if c in present]
        dyn = pq.read_table(path, columns=["id", "label", "confidence", "variability", "is_pseudo", *extra]).to_pandas()  # a user file: its own message below
    except (OSError, KeyError, pa.ArrowInvalid) as e:
        raise BadInputError(f"--dynamics {path}: cannot read id, label, confidence, variability, is_pseudo ({e})") from None
    ev, counts = cartography.evidence_from_table(dyn, ids, given)
    return ev, {"file": str(path), **counts}


# -- the stage's work -----------------------------------------------------------------------


def _evidence(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples, codes: np.ndarray) -> dict[str, Any]:
    """The analysed rows, their out-of-sample probabilities (and the second opinion) and embedding evidence."""
    if cfg.pred_probs is not None:
        rows = np.flatnonzero(codes >= 0)
        probs = read_pred_probs(Path(cfg.pred_probs), samples, rows, renormalize=cfg.renormalize, progress=ctx.progress)
        choice = {"requested": "pred_probs", "chosen": "pred_probs", "by": None, "scores": {}}
        return {"rows": rows, "probs": probs, "choice": choice, "second": None, "duplicates": None, "outliers": None}
    src, rows, (full, at, transductive) = _sources(ctx, cfg, samples, codes)
    probs, choice = probability_sources.choose(src, cfg.probs, transductive=transductive)
    second = probability_sources.second_opinion(src, choice["chosen"])
    dup = evidence.find_conflicting_duplicates(codes[rows], *src.graph, threshold=cfg.duplicate_threshold, probs=probs)
    out = evidence.find_outliers(*full, cut=cfg.outlier_cut)
    return {"rows": rows, "probs": probs, "choice": choice, "second": second, "duplicates": dup,
            "outliers": type(out)(*(f[at] for f in out))}


def _detect(ctx: RunContext, cfg: DetectNoiseConfig, samples: Samples, dyn_path: Path | None) -> dict[str, Any]:
    classes, codes = samples.classes, samples.label_codes()
    ev = _evidence(ctx, cfg, samples, codes)
    rows = ev["rows"]
    labels, names = codes[rows], np.asarray(classes, dtype=object)
    ids = samples.table["id"].to_numpy()[rows]
    dyn, dyn_summary = _dynamics(dyn_path, ids, names[labels]) if dyn_path is not None else (None, None)
    j = review.judge(labels, ev["probs"], second=ev["second"], duplicates=ev["duplicates"], outliers=ev["outliers"], dynamics=dyn,
                     filter_by=cfg.filter_by, rank_by=cfg.rank_by, min_consensus=cfg.min_consensus, review_budget=cfg.review_budget,
                     check_input=cfg.pred_probs is None)  # read_pred_probs checked (and rescaled) every row
    q = j.quality
    shown = np.flatnonzero(q.is_issue | pd.notna(q.issue_type))  # the rows the summary reads: flagged, or reported with a type
    issues = review.issues_frame(ids[shown], names[labels[shown]], names[q.suggested_label[shown]], type(q)(*(f[shown] for f in q)))
    summary = review.summary(issues, j.cl.joint, classes, top=cfg.top, filter_by=cfg.filter_by, choice=ev["choice"], dynamics=dyn_summary,
                             n_labeled=int((codes >= 0).sum()), n_analysed=len(rows))
    summary["out_of_sample_accuracy"] = round(j.accuracy, 4)
    summary["flag_consensus"] = None if j.consensus is None else round(j.consensus, 4)
    summary["weak_evidence"] = j.weak
    summary["n_label_candidates"] = j.n_candidates
    knn_info = None if cfg.pred_probs is not None else graph_info(ctx.ws)  # the index used and why (--memory-budget)
    if knn_info is not None:
        summary["knn"] = knn_info
    summary["warnings"] = input_warnings(samples, review.warnings(summary, review_budget=cfg.review_budget, user_probs=cfg.pred_probs is not None,
                                                                  n_classes=len(np.unique(labels)), n_candidates=j.n_candidates)
                                         + (recall_warnings(knn_info) if knn_info is not None else []))
    est = j.cl.estimates
    meta = {
        "classes": classes, "params": cfg.result_params(), "probs": ev["choice"]["chosen"], "summary": summary,
        "noise_matrix": est.noise_matrix.tolist(), "joint": j.cl.joint.tolist(), "py": est.py.tolist(),
    }
    artifacts.write_table(ctx.ws.path(artifacts.LABEL_ISSUES), _issues_table(samples.arrow_column("id").take(rows), labels, q, classes), meta)
    return summary


def _issues_table(ids: pa.Array, labels: np.ndarray, q: evidence.LabelQuality, classes: list[str]) -> pa.Table:
    """label_issues.parquet's rows (its column contract, docs/artifacts.md), most likely wrong first.

    Built in Arrow: class names are taken by index from the K names, not made a Python string per
    row, and the ids (``ids``: the analysed rows' ids, as Arrow strings) are taken by rank.
    """
    order = _by_rank(q.rank)
    names = pa.array(classes, type=pa.string())
    return pa.table({
        "id": ids.take(order).cast(pa.string()), "given_label": names.take(labels[order]),
        "suggested_label": names.take(q.suggested_label[order]), "label_quality": q.label_quality[order].astype(np.float32),
        "is_issue": q.is_issue[order], "issue_type": pa.array(q.issue_type[order], type=pa.string(), from_pandas=True),
        "rank": q.rank[order].astype(np.int64),
    })


def _by_rank(rank: np.ndarray) -> np.ndarray:
    """Row positions in rank order: a scatter when the ranks are 1..n (every row analysed), else a stable sort."""
    n = len(rank)
    if n and rank.min() == 1 and rank.max() == n:
        order = np.full(n, -1, dtype=np.int64)
        order[rank - 1] = np.arange(n)
        if (order >= 0).all():  # n ranks filled n places: a permutation
            return order
    return np.argsort(rank, kind="stable")


def _apply_gates(job: Job, res: StageResult) -> None:
    """--export-review writes the review queue; --fail-above sets the CI exit code (skipped or not)."""
    cfg = job.cfg
    if cfg.export_review:
        issues = artifacts.read_table(job.ws.path(artifacts.LABEL_ISSUES)).to_pandas()
        queue = review.queue(issues, job.samples.table[["id", "source"]])
        with atomic_write(Path(cfg.export_review), "w") as f:
            f.write(queue.to_csv(index=False, quoting=csv.QUOTE_MINIMAL))
        res.summary["review_file"] = str(cfg.export_review)
        res.summary["review_rows"] = int(len(queue))
    if cfg.fail_above is not None:
        rate = res.summary.get("issue_rate", 0.0)
        if rate > cfg.fail_above:
            res.exit_code = EXIT_THRESHOLD
            res.message = f"label-issue rate {rate:.2%} is above --fail-above {cfg.fail_above:.2%}"
