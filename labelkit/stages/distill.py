"""distill: train a student on the trusted labels plus the pseudo-labels; write student/.

The procedure is :func:`labelkit.distill.procedure.distil` over arrays (docs/stages/distill.md).
This module reads its inputs (embeddings or pixels, issues, pseudo-labels, the teacher's recipe to
refit it without the evaluated labels), makes that one call, and writes the student folder
atomically (built beside it, then swapped in).
"""

from __future__ import annotations

import importlib.util
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
from labelkit.distill.folder import CONFIG_FILE, DYNAMICS_FILE, FORMAT, FORMAT_VERSION, METRICS_FILE, MODEL_FILE, ONNX_FILE
from labelkit.distill.pixels import read_inputs
from labelkit.distill.students import STUDENTS
from labelkit.distill.training_set import Frame, PseudoLabels, TrainingSet, acceptance_threshold, assemble, select_pseudolabels, split_trusted
from labelkit.errors import BadInputError, DependencyError
from labelkit.stages import _multilabel, _multilabel_student
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages._inputs import read_embeddings, relabeler, replay_configs
from labelkit.stages._runner import Job, Stage
from labelkit.stages._runner import run as run_stage

__all__ = ["IMAGE_STUDENTS", "SPEC", "run"]

STAGE = "distill"
STUDENT = "student"  # the output folder in the workspace (labelkit.distill.folder: its files)
IMAGE_STUDENTS = tuple(name for name, arch in STUDENTS.items() if arch.input_kind == "pixels")  # trained end to end on pixels


def _reads(cfg: DistillConfig) -> tuple[str, ...]:
    """The embeddings, the label issues (unless --keep-issues), the pseudo-labels (unless --without-pseudolabels)."""
    return (artifacts.EMBEDDINGS, *(() if cfg.keep_issues else (artifacts.LABEL_ISSUES,)),
            *((artifacts.PSEUDOLABELS,) if cfg.use_pseudolabels else ()))


def _check(job: Job) -> None:
    """Refusals before any upstream stage runs."""
    cfg, samples = job.cfg, job.samples
    samples.require_labels(STAGE)
    if samples.n_labeled == 0:
        raise BadInputError(f"{STAGE} needs labeled samples: none of the {len(samples.table)} samples has a label")
    if cfg.student in IMAGE_STUDENTS and samples.kind != "image":
        raise BadInputError(f"--student {cfg.student} trains on image pixels, but DATA holds {samples.kind}; use --student mlp or linear")
    if cfg.fixmatch > 0 and cfg.student not in IMAGE_STUDENTS:
        raise BadInputError(f"--fixmatch augments images: use --student cnn or finetune (got --student {cfg.student})")
    if cfg.onnx and importlib.util.find_spec("onnx") is None:
        raise DependencyError("--onnx needs the 'onnx' package; install it with 'pip install onnx onnxruntime'")


def _build(job: Job) -> dict[str, Any]:
    return _distill(job.ctx, job.cfg, job.samples)


SPEC = Stage(STAGE, DistillConfig, _build, outputs=(STUDENT,), inputs=_reads, check=_check)


def run(ctx: RunContext, cfg: DistillConfig, *, force: bool = False) -> StageResult:
    return run_stage(ctx, SPEC, cfg, force=force)


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
    emb_ids, vecs, meta = read_embeddings(ctx.ws)
    pos = pd.Index(emb_ids).get_indexer(samples.table["id"])
    has = pos >= 0
    embedder = {key: meta.get(key) for key in ("model", "dim", "preprocessing", "normalized")}
    embedder["params"] = meta.get("params", {})
    if cfg.student not in IMAGE_STUDENTS:
        x = np.zeros((len(pos), vecs.shape[1]), dtype=np.float32)
        x[has] = vecs[pos[has]]
        return x, has, {"kind": "embedding", "dim": int(vecs.shape[1]), "normalized": "l2"}, embedder
    x, has, spec = read_inputs(ctx.ws.data, samples.table["source"].tolist(), has, student=cfg.student, size=cfg.image_size, progress=ctx.progress)
    return x, has, spec, embedder


def _teacher(ctx: RunContext, cfg: DistillConfig, samples: Samples, evaluated: int):
    """("refit", hidden rows -> PseudoLabels) when the metrics' labels get a teacher of their own, else (why the shared one is used, None)."""
    if not cfg.use_pseudolabels or not evaluated:
        return "shared", None
    if not cfg.refit_teacher:
        return "shared (--shared-teacher)", None
    why = replay_configs(ctx.ws)
    if isinstance(why, str):
        return f"shared ({why})", None
    relabel = relabeler(ctx.ws, samples)  # labelkit.teacher.Relabeler over the workspace's arrays, read once
    ids = samples.table["id"].astype(str)

    def teacher(hidden: np.ndarray) -> PseudoLabels:
        rel = relabel(ids.to_numpy()[hidden])
        return PseudoLabels(pd.Index(ids).get_indexer(rel.ids), rel.soft, rel.confidence, rel.accepted)

    return "refit", teacher


# -- the student ----------------------------------------------------------------------------


def _distill(ctx: RunContext, cfg: DistillConfig, samples: Samples) -> dict[str, Any]:
    from labelkit.distill.procedure import distil, n_folds

    if _multilabel.is_multilabel(samples):  # issue 16: a sigmoid head on label sets
        return _multilabel_student.build_student(ctx, cfg, samples, _write_student)
    device = resolve_device(cfg.device)
    x, has_input, input_spec, embedder = _inputs(ctx, cfg, samples)
    ts = build_training_set(ctx, cfg, samples, has_input)
    classes = list(samples.classes)
    note, teacher = _teacher(ctx, cfg, samples, n_folds(cfg.folds, ts) or ts.frame.val_rows.size)
    d = distil(x, ts, classes, cfg, teacher=teacher, progress=ctx.progress, device=device)
    summary = {"student": cfg.student, "device": device, "embedder": embedder["model"], "n_classes": len(classes), **d.counts(),
               "teacher": note, **d.outcome(), "model_dir": str(ctx.ws.path(STUDENT)), "onnx": cfg.onnx}
    summary["warnings"] = input_warnings(samples, health.student(d.held_out["accuracy"], d.held_out["ece"], len(classes)))
    ids = samples.table["id"].astype(str).to_numpy()
    metrics = {**d.held_out, "teacher": note, **{key: summary[key] for key in ("n_trusted", "n_pseudo", "n_dropped_issues", "n_set_aside")},
               "set_aside": ids[d.ts.train_rows[d.fit.set_aside]].tolist(), "crossfit": d.folds, "rounds": d.rounds, "summary": summary}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "labelkit_version": __version__, "architecture": cfg.student,
              "student_config": d.fit.student_config, "classes": classes, "input": input_spec, "embedder": embedder,
              "train_params": cfg.result_params(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    dyn = pd.DataFrame(d.dynamics(ids, classes))
    _write_student(ctx.ws.path(STUDENT), d.fit.model, config, metrics, dyn, x.shape[1:] if cfg.onnx else None)
    return summary


DYNAMICS_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float32()), ("variability", pa.float32()),
                             ("correctness", pa.float32()), ("is_pseudo", pa.bool_()), ("set_aside", pa.bool_()), ("view_confidence", pa.float32())])


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
