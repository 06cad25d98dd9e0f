"""predict: apply a student folder written by distill to DATA; write predictions.parquet.

DATA is whatever a user has (labelkit.predict_inputs): a dataset folder, a plain folder of images,
one image file, or a .csv/.parquet/.txt file of texts.
DATA's inputs are turned into what the student was trained on, straight from the files: the
student's own embedder (config.json) embeds images or texts, a manifest's ``embedding`` column is
used as it is (its dimension checked), and a ``cnn`` or ``finetune`` student gets pixels read as at training.
The embed stage's artifacts in DATA's workspace are not used: the student fixes the embedder,
whatever DATA's workspace holds. DATA needs no labels; where it has some, the summary reports
the student's accuracy on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from labelkit import artifacts, embedding
from labelkit._validation import l2_normalize
from labelkit.config import PredictConfig
from labelkit.dataset import samples_fingerprint
from labelkit.device import resolve_device
from labelkit.distill.folder import CONFIG_FILE, FORMAT, MODEL_FILE  # the student folder's format
from labelkit.distill.pixels import load_pixels
from labelkit.errors import BadInputError
from labelkit.predict_inputs import MODALITY_KIND, PredictInputs, check_fits, discover_inputs, modality_error
from labelkit.stages import _multilabel_student
from labelkit.stages._common import RunContext, StageResult, now
from labelkit.workspace import Workspace, text_fingerprint

STAGE = "predict"
PREVIEW_ROWS = 10
PREDICTIONS_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float32()),
                                ("top_labels", pa.list_(pa.string())), ("top_probs", pa.list_(pa.float32()))])


def run(model_dir: Path | str, ctx: RunContext, cfg: PredictConfig) -> StageResult:
    started = now()
    ws = ctx.ws
    student = load_student_dir(Path(model_dir))
    found = discover_inputs(ws.data, classes=ctx.dcfg.classes)
    samples = found.samples
    check_fits(student["config"], samples)
    samples_fp = _write_samples(ws, found)
    device = resolve_device(cfg.device)
    x, rows, skipped = _inputs(ctx, found, student, device)
    if student["config"].get("task") == "multi-label":  # issue 16: label sets at the student's thresholds
        summary = _multilabel_student.write_predictions(ctx, cfg, found, student, x, rows, skipped)
    else:
        from labelkit.distill import predict_proba

        probs = predict_proba(student["model"], x, batch_size=cfg.batch_size, device=device) if len(rows) else np.zeros((0, len(student["classes"])))
        summary = _write_predictions(ctx, cfg, found, student, rows, probs, skipped)
    inputs = {artifacts.SAMPLES: samples_fp, "student": student["fingerprint"]}
    params = {**cfg.result_params(), "model_dir": str(Path(model_dir).resolve())}
    ws.commit(STAGE, params=params, params_fp=cfg.fingerprint(), inputs=inputs, outputs=[artifacts.PREDICTIONS], started=started)
    summary["wall_time_s"] = round(now() - started, 2)
    return StageResult(STAGE, reason=f"student {model_dir}", summary=summary, outputs=[artifacts.PREDICTIONS])


# -- the student folder ---------------------------------------------------------------------


def load_student_dir(model_dir: Path) -> dict[str, Any]:
    """config.json and the model of a student folder; every problem is a one-line BadInputError."""
    hint = "point predict at a student folder written by 'labelkit distill' (e.g. DATA/.labelkit/student)"
    if not model_dir.exists():
        raise BadInputError(f"{model_dir}: no such folder; {hint}")
    if not model_dir.is_dir():
        raise BadInputError(f"{model_dir}: not a folder; {hint}")
    cfg_path = model_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise BadInputError(f"{model_dir}: no {CONFIG_FILE} here; {hint}")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{cfg_path}: not valid JSON ({e}); rerun 'labelkit distill'") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BadInputError(f"{cfg_path}: not a labelkit student config (no \"format\": \"{FORMAT}\"); {hint}")
    missing = [k for k in ("student_config", "classes", "input", "embedder") if k not in config]
    if missing:
        raise BadInputError(f"{cfg_path}: missing key '{missing[0]}'; rerun 'labelkit distill'")
    weights = model_dir / MODEL_FILE
    if not weights.is_file():
        raise BadInputError(f"{model_dir}: no {MODEL_FILE} here; rerun 'labelkit distill'")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from labelkit.distill import load_student

    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as e:
        raise BadInputError(f"{weights}: cannot read ({e}); rerun 'labelkit distill'") from None
    try:
        model = load_student(config["student_config"], state)
    except RuntimeError as e:  # load_state_dict: the weights do not fit the architecture
        raise BadInputError(f"{weights}: does not match config.json's student ({str(e).splitlines()[0]})") from None
    fp = text_fingerprint(cfg_path.read_text(), str(weights.stat().st_size), str(weights.stat().st_mtime_ns))
    return {"config": config, "model": model, "classes": list(config["classes"]), "fingerprint": fp, "dir": model_dir}


# -- inputs ---------------------------------------------------------------------------------


def _write_samples(ws: Workspace, found: PredictInputs) -> str:
    """samples.parquet in the workspace, rewritten only when its content changed; its fingerprint."""
    _make_workspace(ws.out)
    fp = samples_fingerprint(found.samples, found.root)
    path = ws.path(artifacts.SAMPLES)
    current = artifacts.read_metadata(path).get("content_fingerprint") if path.exists() else None
    if current != fp:
        s = found.samples
        artifacts.write_samples(path, s.table, {"content_fingerprint": fp, "classes": s.classes, "kind": s.kind, "origin": s.origin})
    return fp


def _make_workspace(out: Path) -> None:
    """Fail at once, in one line, where the predictions could not be written (a read-only place)."""
    hint = "pass --out DIR to write the predictions elsewhere"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"{out}: cannot create the workspace folder ({e.strerror}); {hint}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BadInputError(f"{out}: the workspace folder is not writable; {hint}")


def _inputs(ctx: RunContext, found: PredictInputs, student: dict[str, Any], device: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(x for the rows that could be read, those rows (samples order), {skipped id: why})."""
    samples = found.samples
    spec = student["config"]["input"]
    embedder = student["config"]["embedder"]
    table = samples.table
    if spec.get("kind") == "pixels":
        paths = [str(found.root / s) for s in table["source"]]
        x, ok = load_pixels(paths, spec, ctx.progress, "read images")
        return x, np.flatnonzero(ok), {i: "unreadable image" for i in table["id"][~ok]}
    if samples.kind == "vectors":
        return l2_normalize(samples.vectors.load()), np.arange(len(table)), {}
    return _embed(ctx, found, embedder, int(spec["dim"]), device)


def _embed(ctx: RunContext, found: PredictInputs, embedder_spec: dict[str, Any], dim: int, device: str):
    """Embed DATA's images or texts with the student's embedder (as the embed stage does)."""
    from labelkit.embedders import EmbedderOptions, create_embedder

    samples = found.samples
    model = str(embedder_spec["model"])
    params = embedder_spec.get("params") or {}
    weights = params.get("weights")
    if weights and not Path(weights).is_file():
        raise BadInputError(f"the student's embedder {model} used weights {weights}, which are not there; put them back to embed DATA")
    embedder = create_embedder(model, EmbedderOptions(weights=weights, device=device, allow_download=bool(params.get("allow_download", False))))
    if samples.kind != MODALITY_KIND.get(embedder.modality):
        raise modality_error(model, embedder.modality, samples.kind)
    if embedder.dim != dim:
        raise BadInputError(f"embedder {model} gives {embedder.dim}-d vectors, but this student expects {dim}")
    table = samples.table
    sources = [str(found.root / s) for s in table["source"]] if samples.kind == "image" else table["source"].tolist()
    vecs, rows, skipped = [], [], {}
    with ctx.progress.task(f"embed ({model})", total=len(sources)) as task:
        for ok, v, failed in embedding.embed_batches(embedder, sources, batch_size=embedder.default_batch_size(),
                                                     num_workers=embedding.auto_workers(embedder, len(sources))):
            for i, e in failed:
                skipped[table["id"].iloc[i]] = embedding.error_text(e)
            if ok:
                vecs.append(v)
                rows.extend(ok)
            task.advance(len(ok) + len(failed))
    x = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    return x, np.asarray(rows, dtype=np.int64), skipped


# -- output ---------------------------------------------------------------------------------


def _write_predictions(ctx, cfg: PredictConfig, found: PredictInputs, student, rows: np.ndarray, probs: np.ndarray, skipped: dict[str, str]) -> dict[str, Any]:
    samples = found.samples
    classes = student["classes"]
    names = np.asarray(classes, dtype=object)
    width = min(cfg.top_k, len(classes))  # classes kept in top_labels
    top = np.argsort(-probs, axis=1, kind="stable")[:, :width]
    top_p = np.take_along_axis(probs, top, axis=1).astype(np.float32)
    ids = samples.table["id"].to_numpy()[rows]
    df = pd.DataFrame({
        "id": ids.astype(str),
        "label": names[top[:, 0]] if len(rows) else np.zeros(0, dtype=object),
        "confidence": top_p[:, 0] if len(rows) else np.zeros(0, np.float32),
        "top_labels": [names[t].tolist() for t in top],
        "top_probs": [p.tolist() for p in top_p],
    })
    meta = {"model_dir": str(Path(student["dir"]).resolve()), "classes": classes, "embedder": student["config"]["embedder"].get("model"),
            "architecture": student["config"].get("architecture"), "params": cfg.result_params(), "skipped": sorted(skipped)}
    artifacts.write_table(ctx.ws.path(artifacts.PREDICTIONS), pa.Table.from_pandas(df, schema=PREDICTIONS_SCHEMA, preserve_index=False), meta)
    summary: dict[str, Any] = {
        "model_dir": str(student["dir"]),
        "input": found.origin,
        "predictions": str(ctx.ws.path(artifacts.PREDICTIONS)),
        "student": student["config"].get("architecture"),
        "embedder": student["config"]["embedder"].get("model"),
        "n_predicted": int(len(df)),
        "n_skipped": len(skipped),
        "skipped_ids": sorted(skipped)[:20],
        "skip_errors": {i: skipped[i] for i in sorted(skipped)[:20]},
        "mean_confidence": round(float(df["confidence"].mean()), 4) if len(df) else None,
        "class_counts": {str(c): int(n) for c, n in df["label"].value_counts().sort_index().items()},
        "preview": [{"id": r.id, "label": r.label, "confidence": round(float(r.confidence), 4)} for r in df.head(PREVIEW_ROWS).itertuples()],
    }
    given = samples.table["label"].to_numpy()[rows]
    known = np.array([g is not None and g in set(classes) for g in given], dtype=bool)
    if known.any():
        summary["n_labeled"] = int(known.sum())
        summary["accuracy"] = round(float(np.mean(df["label"].to_numpy()[known] == given[known])), 4)
    return summary
