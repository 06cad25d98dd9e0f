"""distill: train a student on the trusted labels plus the pseudo-labels; write student/.

Trusted = the given labels minus those detect-noise flagged (unless ``--keep-issues``); a random
``val_fraction`` of them is held out for early stopping and the metrics ("holdout"), or, when that
part would be too small to stop on, the metrics are cross-fitted ("crossfit"). Pseudo-labeled = the
unlabeled samples with a pseudo-label (by default every one, weighted by its confidence). The
procedure is :func:`labelkit.distill.procedure.distil` over arrays; this module reads its inputs
(embeddings or pixels, issues, pseudo-labels, the teacher's recipe for refitting it), makes that
one call, and writes the student folder atomically (built beside it, then swapped in).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit import __version__, artifacts, health
from labelkit._probability import topk_to_dense
from labelkit.config import DistillConfig
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.distill.pixels import load_pixels, pixel_spec
from labelkit.distill.students import STUDENTS
from labelkit.distill.training_set import (
    Frame,
    PseudoLabels,
    TrainingSet,
    acceptance_threshold,
    assemble,
    select_pseudolabels,
    split_trusted,
)
from labelkit.errors import BadInputError, DependencyError
from labelkit.stages import _multilabel, pipeline
from labelkit.stages._common import (
    RunContext,
    StageResult,
    input_warnings,
    now,
    prepare_samples,
    stale_reason,
)

__all__ = ["IMAGE_STUDENTS", "acceptance_threshold", "load_pixels", "run"]  # load_pixels: predict reads images as distill does

STAGE = "distill"
STUDENT = "student"  # the output folder in the workspace
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
DYNAMICS_FILE = "dynamics.parquet"
ONNX_FILE = "model.onnx"
FORMAT = "labelkit-student"
FORMAT_VERSION = 1
IMAGE_STUDENTS = tuple(name for name, arch in STUDENTS.items() if arch.input_kind == "pixels")  # trained end to end on pixels


def run(ctx: RunContext, cfg: DistillConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws = ctx.ws
    samples, samples_fp = prepare_samples(ws, ctx.dcfg)
    samples.require_labels(STAGE)
    if samples.n_labeled == 0:
        raise BadInputError(f"{STAGE} needs labeled samples: none of the {len(samples.table)} samples has a label")
    if cfg.student in IMAGE_STUDENTS and samples.kind != "image":
        raise BadInputError(f"--student {cfg.student} trains on image pixels, but DATA holds {samples.kind}; use --student mlp or linear")
    if cfg.fixmatch > 0 and cfg.student not in IMAGE_STUDENTS:
        raise BadInputError(f"--fixmatch augments images: use --student cnn or finetune (got --student {cfg.student})")
    if cfg.onnx:
        _require_onnx()
    upstream = pipeline.ensure(ctx, "embed")
    if not cfg.keep_issues:
        upstream += pipeline.ensure(ctx, "detect-noise")
    if cfg.use_pseudolabels:
        upstream += pipeline.ensure(ctx, "pseudolabel")
    inputs = {artifacts.SAMPLES: samples_fp, artifacts.EMBEDDINGS: ws.fingerprint(artifacts.EMBEDDINGS) or ""}
    if not cfg.keep_issues:
        inputs[artifacts.LABEL_ISSUES] = ws.fingerprint(artifacts.LABEL_ISSUES) or ""
    if cfg.use_pseudolabels:
        inputs[artifacts.PSEUDOLABELS] = ws.fingerprint(artifacts.PSEUDOLABELS) or ""
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force)
    if reason is None:
        res = StageResult(STAGE, skipped=True, reason="up to date", outputs=[STUDENT], upstream=upstream)
        res.summary = _read_json(ws.path(STUDENT) / METRICS_FILE).get("summary", {})
        return res

    summary = _distill(ctx, cfg, samples)
    ws.commit(STAGE, params=cfg.result_params(), params_fp=cfg.fingerprint(), inputs=inputs, outputs=[STUDENT], started=started)
    summary["wall_time_s"] = round(now() - started, 2)
    return StageResult(STAGE, reason=reason, summary=summary, outputs=[STUDENT], upstream=upstream)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise DependencyError("--onnx needs the 'onnx' package; install it with 'pip install onnx onnxruntime'") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# -- reading the inputs ----------------------------------------------------------------------


def _issue_mask(ctx: RunContext, ids: np.ndarray) -> np.ndarray:
    """(N,) True for the samples detect-noise flagged."""
    path = artifacts.require(ctx.ws.path(artifacts.LABEL_ISSUES), f"labelkit detect-noise {ctx.ws.data}")
    t = artifacts.read_table(path, columns=["id", "is_issue"]).to_pandas()
    return np.isin(ids, list(set(t.loc[t["is_issue"].astype(bool), "id"].astype(str))))


def _pseudolabels(ctx: RunContext) -> tuple[pa.Table, dict[str, Any]]:
    path = artifacts.require(ctx.ws.path(artifacts.PSEUDOLABELS), f"labelkit pseudolabel {ctx.ws.data}")
    cols = ["id", "label", "confidence", "accepted", "top_labels", "top_probs"]
    try:
        names = pq.read_schema(path).names
        missing = [c for c in cols if c not in names]
        if missing:
            raise BadInputError(f"{path.name}: missing column '{missing[0]}'; rerun 'labelkit pseudolabel {ctx.ws.data} --force'")
        t = artifacts.read_table(path, columns=[c for c in cols if c != "label"])  # the label is top_labels[0]: not read
    except (OSError, pa.ArrowInvalid) as e:
        raise BadInputError(f"{path.name}: cannot read ({e}); rerun 'labelkit pseudolabel {ctx.ws.data} --force'") from None
    return t, artifacts.read_metadata(path)


def _soft_matrix(t: pa.Table, classes: list[str]) -> np.ndarray:
    """(n, n_classes) soft labels from the rows' top_labels/top_probs (renormalised over the classes kept)."""
    import pyarrow.compute as pc

    labels, probs = (t.column(c).combine_chunks() for c in ("top_labels", "top_probs"))
    lengths = [pc.list_value_length(a).fill_null(0).to_numpy(zero_copy_only=False) for a in (labels, probs)]
    if not np.array_equal(*lengths):
        raise BadInputError("pseudolabels.parquet: top_labels and top_probs differ in length; rerun 'labelkit pseudolabel --force'")
    flat = labels.flatten().to_numpy(zero_copy_only=False).astype(str)
    p = probs.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    cols = pd.Index(classes).get_indexer(flat)
    if (cols < 0).any():
        raise BadInputError(f"pseudolabels.parquet names class '{flat[cols < 0][0]}', which is not among the dataset's classes; rerun 'labelkit pseudolabel --force'")
    return topk_to_dense(t.num_rows, len(classes), pc.list_parent_indices(labels).to_numpy(), cols, p)


def build_training_set(ctx: RunContext, cfg: DistillConfig, samples: Samples, has_input: np.ndarray) -> TrainingSet:
    """Trusted rows (minus flagged issues), the held-out split, and the pseudo-labels trained on."""
    codes, classes = samples.label_codes(), list(samples.classes)
    ids = samples.table["id"].astype(str).to_numpy()
    issue = np.zeros(len(ids), bool) if cfg.keep_issues else _issue_mask(ctx, ids)
    trusted, val_rows, n_dropped = split_trusted(codes, has_input, issue, len(classes), val_fraction=cfg.val_fraction, seed=cfg.seed)
    unlabeled = np.flatnonzero((codes < 0) & has_input)
    pseudo, threshold = PseudoLabels.none(len(classes)), acceptance_threshold({})
    if cfg.use_pseudolabels:
        t, meta = _pseudolabels(ctx)
        threshold = acceptance_threshold(meta)
        pos = pd.Index(t.column("id").to_numpy(zero_copy_only=False).astype(str)).get_indexer(ids)  # samples row -> pseudolabels row (-1: none)
        taken = np.ones(t.num_rows, bool) if cfg.pseudolabels == "all" else t.column("accepted").to_numpy(zero_copy_only=False).astype(bool)
        rows, at = select_pseudolabels(pos, taken, (codes < 0) & has_input)
        chosen = t.take(pa.array(at))
        pseudo = PseudoLabels(rows, _soft_matrix(chosen, classes), chosen.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64))
    frame = Frame(codes, val_rows, unlabeled, n_dropped, threshold)
    return assemble(frame, trusted, pseudo, soft=cfg.soft, confidence_weighting=cfg.confidence_weighting)


def _inputs(ctx: RunContext, cfg: DistillConfig, samples: Samples) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """(x for every samples row (zeros where none), has_input mask, input spec, embedder spec)."""
    path = artifacts.require(ctx.ws.path(artifacts.EMBEDDINGS), f"labelkit embed {ctx.ws.data}")
    emb_ids, vecs = artifacts.read_embeddings(path, cache=ctx.ws.path(artifacts.EMBEDDINGS_CACHE))
    meta = artifacts.read_metadata(path)
    pos = pd.Index(emb_ids).get_indexer(samples.table["id"])
    has = pos >= 0
    embedder = {k: meta.get(k) for k in ("model", "dim", "preprocessing", "normalized")}
    embedder["params"] = meta.get("params", {})
    if cfg.student not in IMAGE_STUDENTS:
        x = np.zeros((len(pos), vecs.shape[1]), dtype=np.float32)
        x[has] = vecs[pos[has]]
        return x, has, {"kind": "embedding", "dim": int(vecs.shape[1]), "normalized": "l2"}, embedder
    root, sources = ctx.ws.data, samples.table["source"].tolist()
    spec = pixel_spec(root, [s for s, h in zip(sources, has) if h], student=cfg.student, size=cfg.image_size)
    rows = np.flatnonzero(has)
    px, ok = load_pixels([str(root / sources[r]) for r in rows], spec, ctx.progress)
    x = np.zeros((len(pos), spec["channels"], *spec["size"]), dtype=np.float32)
    x[rows[ok]] = px
    has = np.zeros(len(pos), dtype=bool)
    has[rows[ok]] = True
    return x, has, spec, embedder


def _teacher(ctx: RunContext, cfg: DistillConfig, samples: Samples, evaluated: int):
    """("refit", hidden rows -> PseudoLabels) when the metrics' labels get a teacher of their own, else (why the shared one is used, None)."""
    from labelkit.stages.pseudolabel import Relabeler, replay_configs

    if not cfg.use_pseudolabels or not evaluated:
        return "shared", None
    if not cfg.refit_teacher:
        return "shared (--shared-teacher)", None
    why = replay_configs(ctx.ws)
    if isinstance(why, str):
        return f"shared ({why})", None
    relabel = Relabeler(ctx.ws, samples)
    ids = samples.table["id"].astype(str)

    def teacher(hidden: np.ndarray) -> PseudoLabels:
        rel = relabel(ids.to_numpy()[hidden])
        return PseudoLabels(pd.Index(ids).get_indexer(rel.ids), rel.soft, rel.confidence, rel.accepted)

    return "refit", teacher


# -- the student ----------------------------------------------------------------------------


def _distill(ctx: RunContext, cfg: DistillConfig, samples: Samples) -> dict[str, Any]:
    from labelkit.distill.procedure import distil, n_folds

    if _multilabel.is_multilabel(samples):  # issue 16: a sigmoid head on label sets
        return _multilabel.build_student(ctx, cfg, samples, _write_student)
    device = resolve_device(cfg.device)
    x, has_input, input_spec, embedder = _inputs(ctx, cfg, samples)
    ts = build_training_set(ctx, cfg, samples, has_input)
    classes = list(samples.classes)
    note, teacher = _teacher(ctx, cfg, samples, n_folds(cfg.folds, ts) or ts.frame.val_rows.size)
    d = distil(x, ts, classes, cfg, teacher=teacher, progress=ctx.progress, device=device)
    last, held, fit, ts = d.rounds[-1], d.held_out, d.fit, d.ts
    summary = {
        "student": cfg.student, "device": device, "embedder": embedder["model"], "n_classes": len(classes),
        "n_trusted": last["n_trusted"], "n_pseudo": last["n_pseudo"], "n_pseudo_teacher": d.n_pseudo_teacher,
        "n_dropped_issues": ts.frame.n_dropped_issues, "n_set_aside": last["n_set_aside"], "n_val": held["n_val"],
        "estimate": held["estimate"], "folds": held["folds"], "teacher": note, "rounds": cfg.rounds, "accept_threshold": ts.frame.threshold,
        "epochs_run": last["epochs_run"], "best_epoch": last["best_epoch"], "stopped_early": last["stopped_early"],
        "val_accuracy": held["accuracy"], "val_macro_f1": held["macro_f1"], "val_ece": held["ece"],
        "model_dir": str(ctx.ws.path(STUDENT)), "onnx": cfg.onnx,
    }
    summary["warnings"] = input_warnings(samples, health.student(held["accuracy"], held["ece"], len(classes)))
    ids = samples.table["id"].astype(str).to_numpy()
    metrics = {**held, "teacher": note, "n_trusted": last["n_trusted"], "n_pseudo": last["n_pseudo"], "n_dropped_issues": ts.frame.n_dropped_issues,
               "n_set_aside": last["n_set_aside"], "set_aside": ids[ts.train_rows[fit.set_aside]].tolist(), "crossfit": d.folds, "rounds": d.rounds, "summary": summary}
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "labelkit_version": __version__,
        "architecture": cfg.student, "student_config": fit.student_config, "classes": classes,
        "input": input_spec, "embedder": embedder, "train_params": cfg.result_params(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dyn = pd.DataFrame({
        "id": ids[ts.train_rows], "label": np.asarray(classes, dtype=object)[fit.target_labels],
        "confidence": fit.confidence.astype(np.float32), "variability": fit.variability.astype(np.float32),
        "correctness": fit.correctness.astype(np.float32), "is_pseudo": ts.is_pseudo, "set_aside": fit.set_aside,
        "view_confidence": fit.view_confidence.astype(np.float32),
    })
    _write_student(ctx.ws.path(STUDENT), fit.model, config, metrics, dyn, x.shape[1:] if cfg.onnx else None)
    return summary


DYNAMICS_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float32()), ("variability", pa.float32()),
                             ("correctness", pa.float32()), ("is_pseudo", pa.bool_()),
                             ("set_aside", pa.bool_()), ("view_confidence", pa.float32())])


def _write_student(dest: Path, model, config: dict, metrics: dict, dynamics: pd.DataFrame, onnx_shape: tuple[int, ...] | None) -> None:
    """Build the folder beside ``dest``, then swap it in: a crash leaves the previous student whole."""
    from safetensors.torch import save_file

    from labelkit.distill import student_state

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        save_file(student_state(model), str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        table = pa.Table.from_pandas(dynamics, schema=DYNAMICS_SCHEMA, preserve_index=False)
        artifacts.write_table(tmp / DYNAMICS_FILE, table, {"reference": "Swayamdipta et al. 2020, dataset cartography"})
        if onnx_shape is not None:
            from labelkit.onnx_export import export_onnx

            export_onnx(model, tmp / ONNX_FILE, onnx_shape[0] if len(onnx_shape) == 1 else tuple(int(s) for s in onnx_shape),
                        multi_label=config.get("task") == "multi-label")
        # mkdtemp/mkstemp make owner-only entries; a student is meant to be shipped and read by others.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, dest: Path) -> None:
    """Rename the old folder away, the new one in, then delete the old one."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
