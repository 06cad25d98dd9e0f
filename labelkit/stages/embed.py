"""embed: turn every sample into an L2-normalised vector, written to embeddings.parquet.

Resumable: finished chunks go to ``embeddings.parts/<fingerprint>/`` as they complete, so a rerun
after a kill embeds only the missing ids; a different model (fingerprint) starts afresh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from labelkit import artifacts, embedding
from labelkit._validation import l2_normalize
from labelkit.config import EmbedConfig
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.embedder_choice import score_candidates, stratified_sample
from labelkit.embedders.base import image_size
from labelkit.errors import BadInputError
from labelkit.manifest_vectors import require_direction
from labelkit.stages import _vectors
from labelkit.stages._common import RunContext, StageResult, input_warnings
from labelkit.stages._runner import Job, Stage, recorded_summary
from labelkit.stages._runner import run as run_stage
from labelkit.workspace import Workspace, file_fingerprint, text_fingerprint

STAGE = "embed"
DEFAULT_MODELS = {"image": "efficientnet-lite0", "text": "minilm", "vectors": "precomputed"}
# The pixels candidate's side: the images' own up to this (CIFAR's 32 px), enough for a raw-pixel
# baseline and cheap; larger images are shrunk to it.
PIXELS_MAX_SIDE = 32
PIXELS_MIN_SIDE = 8


def _largest_side(root: Path, samples: Samples, n: int = 32) -> int | None:
    """The largest width or height among the first ``n`` readable images (None if none is)."""
    sides = [max(size) for src in samples.table["source"][:n] if (size := image_size(str(root / src)))]
    return max(sides) if sides else None


def check_model(cfg: EmbedConfig, samples: Samples) -> None:
    """Refuse a model that cannot read these samples, before anything runs."""
    if samples.kind == "labels-only":
        raise BadInputError("embed needs inputs: the manifest has no 'path', 'text' or 'embedding' column")
    if samples.kind == "vectors" and cfg.model not in ("precomputed", "auto"):
        raise BadInputError(f"the manifest carries its own vectors ('embedding' column); use --model precomputed, not '{cfg.model}'")
    if cfg.model == "precomputed" and samples.kind != "vectors":
        raise BadInputError("--model precomputed needs an 'embedding' column in the manifest")


def candidates(cfg: EmbedConfig, samples: Samples, ws_root: Path) -> list[tuple[str, str | None]]:
    """(spec, weights file) of every backend ``--model auto`` scores, cheapest first."""
    out: list[tuple[str, str | None]] = []
    if samples.kind == "image":
        side = _largest_side(ws_root, samples) or PIXELS_MAX_SIDE
        out.append((f"pixels:{int(np.clip(side, PIXELS_MIN_SIDE, PIXELS_MAX_SIDE))}", None))
        out.append(("efficientnet-lite0", None))
        from labelkit.embedders.openclip import cached_checkpoints

        out.extend(cached_checkpoints())
    elif samples.kind == "text":
        out.append(("minilm", None))
    out.extend((spec, cfg.weights) for spec in cfg.candidates if spec not in {c for c, _ in out})
    return out


def _check(job: Job) -> None:
    cfg = job.cfg
    check_model(cfg, job.samples)
    job.state["weights_fp"] = ""
    if cfg.weights:
        if not Path(cfg.weights).is_file():
            raise BadInputError(f"--weights {cfg.weights}: no such file")
        job.state["weights_fp"] = file_fingerprint(Path(cfg.weights))


def _key(job: Job) -> None:
    # Staleness is keyed by the config as given ('auto' stays 'auto'), so an up-to-date stage is
    # skipped without scoring the candidates again.
    job.params_fp = job.cfg.fingerprint() + job.state["weights_fp"]


def _build(job: Job) -> dict[str, Any]:
    ws, samples, cfg, progress = job.ws, job.samples, job.cfg, job.progress
    weights_fp = job.state["weights_fp"]
    choice, chosen, hashes = None, None, None
    if samples.kind != "vectors":
        t = samples.table  # content hashes, read once: they key the auto choice and the reuse of vectors
        hashes = embedding.content_hashes(samples.kind, t["id"].tolist(), t["source"].tolist(), ws.data)
    if samples.kind == "vectors":
        model = "precomputed"
    elif cfg.model == "auto":
        choice, chosen = _choose(ws, samples, cfg, candidates(cfg, samples, ws.data), hashes, progress)
        model = choice["chosen"]
        if choice.get("weights"):
            cfg = cfg.model_copy(update={"weights": choice["weights"]})
            weights_fp = file_fingerprint(Path(cfg.weights))
    else:
        model = cfg.model
    params = {**cfg.result_params(), "model": model}
    if weights_fp:
        params["weights_fingerprint"] = weights_fp
    if choice is not None:
        params["model_choice"] = {k: v for k, v in choice.items() if k != "weights"}
    job.params = params
    # Vectors (resumed parts, a previous embeddings.parquet) are reused only for the same backend.
    vectors_fp = cfg.model_copy(update={"model": model, "candidates": ()}).fingerprint() + weights_fp

    if model == "precomputed":
        summary = _write_precomputed(ws, samples, cfg, params, progress)
    else:
        summary = _embed_with_model(ws, samples, cfg, model, params, vectors_fp, hashes, force=job.force, progress=progress, chosen=chosen)
    job.outputs = [artifacts.EMBEDDINGS] + ([artifacts.CLASS_EMBEDDINGS] if summary.get("class_embeddings") else [])
    return summary


SPEC = Stage(STAGE, EmbedConfig, _build, outputs=(artifacts.EMBEDDINGS,), check=_check, key=_key)


def run(ctx: RunContext, cfg: EmbedConfig, *, force: bool = False) -> StageResult:
    return run_stage(ctx, SPEC, cfg, force=force)


# -- choosing the backend on evidence -------------------------------------------------------


def _choose(ws: Workspace, samples: Samples, cfg: EmbedConfig, cands: list[tuple[str, str | None]], hashes: list[str],
            progress) -> tuple[dict[str, Any], Any]:
    """Score each candidate on a stratified sample of the labeled samples; the best (cheaper on a tie).

    Returns the choice record and (embedder, sample ids, sample vectors) of the chosen backend,
    whose vectors the full run reuses.
    """
    default = DEFAULT_MODELS[samples.kind]
    codes = samples.single_label_codes()  # multi-label: the samples with one class score the choice
    counts = np.bincount(codes[codes >= 0], minlength=len(samples.classes))
    if len(cands) < 2 or (counts >= 2).sum() < 2:
        why = "one candidate" if len(cands) < 2 else "fewer than 2 classes with 2 labeled samples to score on"
        spec, weights = cands[0] if len(cands) == 1 else (default, None)
        return {"chosen": spec, "by": f"default for {samples.kind} ({why})", "scores": {}, "weights": weights}, None
    rows = stratified_sample(codes, per_class=cfg.choice_per_class, cap=cfg.choice_max, rng=np.random.default_rng(0))
    table = samples.table.iloc[rows]
    sources = [str(ws.data / s) for s in table["source"]] if samples.kind == "image" else table["source"].tolist()
    # The same candidates on the same scoring sample (content and labels) give the same choice:
    # reuse the last one (as the manifest recorded it) instead of loading and running every candidate again.
    key = text_fingerprint(json.dumps([cands, cfg.choice_per_class, cfg.choice_max, cfg.choice_tie,
                                       [hashes[r] for r in rows], codes[rows].tolist()]))
    last = recorded_summary(ws, STAGE).get("model_choice") or {}
    if last.get("key") == key and last.get("chosen") in dict(cands):
        return {**last, "weights": dict(cands)[last["chosen"]], "reused": True, "seconds": 0.0}, None
    record, (emb, ok, vecs) = score_candidates(cands, sources, codes[rows], batch_size=cfg.batch_size, device=resolve_device(cfg.device),
                                               allow_download=cfg.allow_download, tie=cfg.choice_tie, progress=progress)
    record = {"chosen": record["chosen"], "weights": record["weights"], "key": key, "reused": False,
              "by": f"{record['by']} (up to {cfg.choice_per_class} per class); a cheaper candidate within {cfg.choice_tie} wins",
              "scores": record["scores"], "seconds": record["seconds"]}
    return record, (emb, table["id"].to_numpy()[ok].tolist(), vecs)


def separation_check(samples: Samples, ids: list[str], vectors: np.ndarray, model: str) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """Leave-one-out kNN accuracy of the labeled samples on the final vectors, and its warnings."""
    return embedding.separation(samples.single_label_codes(), samples.table["id"], ids, vectors, model)


def _metadata(model: str, dim: int, params: dict[str, Any], preprocessing: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    return {"model": model, "dim": dim, "params": params, "preprocessing": preprocessing, "normalized": "l2", "skipped": skipped}


def _write_precomputed(ws: Workspace, samples: Samples, cfg: EmbedConfig, params: dict[str, Any], progress) -> dict[str, Any]:
    """The manifest's own vectors, L2-normalised, written batch by batch (memory: one batch)."""
    vecs = samples.vectors
    dim, ids = vecs.dim, samples.table["id"].tolist()
    sample = embedding.separation_sample(samples.single_label_codes(), samples.table["id"], ids)
    picked = np.zeros((sample.rows.size, dim), np.float32)  # the separation sample's unit vectors, gathered as they pass
    order = np.argsort(sample.rows, kind="stable")
    w = artifacts.EmbeddingsWriter(ws.path(artifacts.EMBEDDINGS), dim, cfg.dtype, {}, cfg.row_group_size)
    row = 0
    try:
        with progress.task("embed (precomputed): normalise and write", total=len(ids)) as task:
            for block in vecs.batches(cfg.row_group_size):
                require_direction(block)
                unit = l2_normalize(block)
                lo, hi = np.searchsorted(sample.rows[order], [row, row + len(block)])
                picked[order[lo:hi]] = unit[sample.rows[order[lo:hi]] - row]
                w.write(ids[row : row + len(block)], unit)
                row += len(block)
                task.advance(len(block))
        sep, warnings = embedding.sampled_separation(sample, picked, "precomputed")
        summary = {"model": "precomputed", "n_embedded": len(ids), "n_reused": 0, "dim": dim, "skipped_ids": [], "n_skipped": 0,
                   "separation": sep, "warnings": input_warnings(samples, warnings)}
        w.close({**_metadata("precomputed", dim, params, {}, []), "summary": summary})
    except BaseException:
        w.abort()
        raise
    return summary


# -- model path -----------------------------------------------------------------------------


def _embed_with_model(ws, samples, cfg, model, params, params_fp, hashes: list[str], *, force, progress, chosen=None) -> dict[str, Any]:
    from labelkit.embedders import EmbedderOptions, create_embedder

    device = resolve_device(cfg.device)
    if chosen is not None:  # --model auto already loaded it and embedded the scoring sample
        embedder = chosen[0]
    else:
        embedder = create_embedder(model, EmbedderOptions(weights=cfg.weights, device=device, allow_download=cfg.allow_download))
    parts_dir = _vectors.parts_dir(ws, params_fp, force=force)
    ids = samples.table["id"].tolist()
    have, n_changed = _vectors.reusable(ws, ids, hashes, embedder.dim, parts_dir, params_fp, force=force)
    n_reused = sum(1 for h in hashes if h in have.where)
    n_scored = 0
    if chosen is not None:  # the scoring sample's vectors, embedded already
        by_id = dict(zip(ids, hashes))
        sample_hashes = [by_id[i] for i in chosen[1]]
        n_scored = sum(1 for h in set(sample_hashes) if h not in have.where)
        have.add(chosen[2], sample_hashes)
    todo_rows = [r for r, h in enumerate(hashes) if h not in have.where and h not in have.unreadable]
    if cfg.engine == "ray":  # the same parts, written from what Ray actors return (labelkit/engines, docs/scale.md)
        from labelkit.engines.ray_embed import embed_missing
    else:
        embed_missing = _vectors.embed_missing
    errors, batch_size, workers = embed_missing(ws, samples, cfg, embedder, model, have, todo_rows, hashes, parts_dir, progress)
    # Assemble in samples order, every vector found by its content.
    keep, ordered = have.take(hashes)
    skipped_now = sorted(i for i, k in zip(ids, keep) if not k)
    if not keep.any():
        raise BadInputError(f"no input could be read: all {len(ids)} samples were skipped (first: {skipped_now[:3]})")
    ordered_ids = [i for i, k in zip(ids, keep) if k]
    n_class = _write_class_embeddings(ws, embedder, samples.classes, model)
    sep, warnings = separation_check(samples, ordered_ids, ordered, model)
    summary = {
        "model": model, "device": device, "dim": embedder.dim, "n_embedded": n_scored + len(todo_rows) - len(errors),
        "n_reused": n_reused, "n_changed": n_changed, "n_skipped": len(skipped_now), "skipped_ids": skipped_now[:20],
        "skip_errors": {k: errors[k] for k in skipped_now[:20] if k in errors}, "batch_size": batch_size, "num_workers": workers, "engine": cfg.engine,
        "class_embeddings": n_class, "model_choice": params.get("model_choice"), "separation": sep, "warnings": input_warnings(samples, warnings),
    }
    meta = _metadata(model, embedder.dim, params, embedder.preprocessing(), skipped_now)
    meta["params_fingerprint"] = params_fp
    meta["skipped_content"] = sorted(h for h, k in zip(hashes, keep) if not k)
    meta["summary"] = summary
    _vectors.write_final(ws, cfg, embedder.dim, ordered_ids, ordered, [h for h, k in zip(hashes, keep) if k], meta)
    return summary


def _write_class_embeddings(ws: Workspace, embedder, classes: list[str], model: str) -> int:
    """Class-name embeddings from the text tower (prompt-template ensemble), for text prototypes."""
    path = ws.path(artifacts.CLASS_EMBEDDINGS)
    if not classes or not embedder.has_text_tower:
        if path.exists():
            path.unlink()
        return 0
    vecs = l2_normalize(embedder.embed_class_names(list(classes)))
    import pyarrow as pa

    emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])
    table = pa.table({"class": pa.array(classes, pa.string()), "embedding": emb})
    artifacts.write_table(path, table, {"model": model, "dim": int(vecs.shape[1])})
    return len(classes)
