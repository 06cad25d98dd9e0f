"""embed: turn every sample into an L2-normalised vector, written to embeddings.parquet.

Resumable: finished chunks go to ``embeddings.parts/<fingerprint>/`` as they complete, so a rerun
after a kill embeds only the missing ids; a different model (fingerprint) starts afresh.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelkit import artifacts
from labelkit._validation import l2_normalize
from labelkit.config import EmbedConfig
from labelkit.dataset import Samples
from labelkit.device import resolve_device
from labelkit.errors import BadInputError
from labelkit.stages._common import RunContext, StageResult, now, prepare_samples, stale_reason
from labelkit.workspace import Workspace, file_fingerprint

STAGE = "embed"
PARTS = "embeddings.parts"
AUTO_MODELS = {"image": "efficientnet-lite0", "text": "minilm", "vectors": "precomputed"}
# Images this small are not natural photos: an ImageNet backbone sees an upsampled blur. On
# examples/digits (8x8) leave-one-out 1-NN accuracy is 0.99 with raw pixels against 0.76-0.90
# with EfficientNet-Lite0 at 32-112 px, and pixels are ~1000x faster.
TINY_IMAGE_SIDE = 32


def _largest_side(root: Path, samples: Samples, n: int = 32) -> int | None:
    """The largest width or height among the first ``n`` readable images (None if none is)."""
    from PIL import Image

    sides = []
    for src in samples.table["source"][:n]:
        try:
            with Image.open(root / src) as img:
                sides.append(max(img.size))
        except (OSError, ValueError, SyntaxError):
            continue
    return max(sides) if sides else None


def resolve_model(cfg: EmbedConfig, samples: Samples, ws_root: Path) -> str:
    if samples.kind == "labels-only":
        raise BadInputError("embed needs inputs: the manifest has no 'path', 'text' or 'embedding' column")
    if cfg.model == "auto":
        if samples.kind == "image":
            side = _largest_side(ws_root, samples)
            if side is not None and side <= TINY_IMAGE_SIDE:
                return f"pixels:{side}"
        return AUTO_MODELS[samples.kind]
    if samples.kind == "vectors" and cfg.model != "precomputed":
        raise BadInputError(f"the manifest carries its own vectors ('embedding' column); use --model precomputed, not '{cfg.model}'")
    if cfg.model == "precomputed" and samples.kind != "vectors":
        raise BadInputError("--model precomputed needs an 'embedding' column in the manifest")
    return cfg.model


def run(ctx: RunContext, cfg: EmbedConfig, *, force: bool = False) -> StageResult:
    started = now()
    ws, progress = ctx.ws, ctx.progress
    samples, samples_fp = prepare_samples(ws, ctx.dcfg)
    model = resolve_model(cfg, samples, ws.data)
    params = {**cfg.result_params(), "model": model}
    if cfg.weights:
        if not Path(cfg.weights).is_file():
            raise BadInputError(f"--weights {cfg.weights}: no such file")
        params["weights_fingerprint"] = file_fingerprint(Path(cfg.weights))
    params_fp = cfg.model_copy(update={"model": model}).fingerprint() + params.get("weights_fingerprint", "")
    inputs = {artifacts.SAMPLES: samples_fp}
    reason = stale_reason(ws, STAGE, cfg, inputs, force=force, params_fp=params_fp)
    if reason is None:
        return StageResult(STAGE, skipped=True, reason="up to date", outputs=[artifacts.EMBEDDINGS])

    if model == "precomputed":
        summary = _write_precomputed(ws, samples, cfg, params)
    else:
        summary = _embed_with_model(ws, samples, cfg, model, params, params_fp, force=force, progress=progress)
    outputs = [artifacts.EMBEDDINGS] + ([artifacts.CLASS_EMBEDDINGS] if summary.get("class_embeddings") else [])
    ws.commit(STAGE, params=params, params_fp=params_fp, inputs=inputs, outputs=outputs, started=started)
    summary["wall_time_s"] = round(now() - started, 2)
    return StageResult(STAGE, reason=reason, summary=summary, outputs=outputs)


def _metadata(model: str, dim: int, params: dict[str, Any], preprocessing: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    return {"model": model, "dim": dim, "params": params, "preprocessing": preprocessing, "normalized": "l2", "skipped": skipped}


def _write_precomputed(ws: Workspace, samples: Samples, cfg: EmbedConfig, params: dict[str, Any]) -> dict[str, Any]:
    vectors = l2_normalize(samples.vectors)
    if np.any(np.linalg.norm(samples.vectors, axis=1) == 0):
        raise BadInputError("the manifest's 'embedding' column has an all-zero vector; it has no direction to normalise")
    dim = vectors.shape[1]
    w = artifacts.EmbeddingsWriter(ws.path(artifacts.EMBEDDINGS), dim, cfg.dtype, _metadata("precomputed", dim, params, {}, []), cfg.row_group_size)
    ids = samples.table["id"].tolist()
    for s in range(0, len(ids), cfg.row_group_size):
        w.write(ids[s:s + cfg.row_group_size], vectors[s:s + cfg.row_group_size])
    w.close()
    return {"model": "precomputed", "n_embedded": len(ids), "n_reused": 0, "dim": dim, "skipped_ids": [], "n_skipped": 0}


# -- model path -----------------------------------------------------------------------------


class _Inputs:
    """A torch map-style dataset that decodes one input per item (runs in DataLoader workers)."""

    def __init__(self, embedder, sources: list[str]):
        self.embedder, self.sources = embedder, sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        try:
            return i, self.embedder.load(self.sources[i])
        except (OSError, ValueError, SyntaxError) as e:  # Pillow raises SyntaxError on some broken files
            return i, e


def _collate(items):
    return items


def _auto_workers(embedder, n: int) -> int:
    # Decoding is the cheap part for text and tiny images; workers there only add start-up cost.
    if embedder.modality != "image" or n < 256 or getattr(embedder, "cheap_decode", False):
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _done_parts(parts_dir: Path) -> tuple[list[str], list[np.ndarray], list[str]]:
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    skipped: list[str] = []
    if parts_dir.exists():
        for p in sorted(parts_dir.glob("part-*.parquet")):
            i, v = artifacts.read_embeddings(p)
            ids.extend(i)
            vecs.append(v)
            skipped.extend(artifacts.read_metadata(p).get("skipped", []))
    return ids, vecs, skipped


def _reusable(ws: Workspace, params_fp: str) -> tuple[list[str], np.ndarray | None]:
    """Vectors in a previous complete embeddings.parquet made with the same model and params."""
    path = ws.path(artifacts.EMBEDDINGS)
    if not path.exists() or artifacts.read_metadata(path).get("params_fingerprint") != params_fp:
        return [], None
    return artifacts.read_embeddings(path)


def _embed_with_model(ws, samples, cfg, model, params, params_fp, *, force, progress) -> dict[str, Any]:
    import torch

    from labelkit.embedders import EmbedderOptions, create_embedder

    device = resolve_device(cfg.device)
    embedder = create_embedder(model, EmbedderOptions(weights=cfg.weights, device=device, allow_download=cfg.allow_download))
    parts_dir = ws.path(PARTS) / params_fp
    if force and ws.path(PARTS).exists():
        shutil.rmtree(ws.path(PARTS))
    # Drop parts of other fingerprints: a different model invalidates them.
    if ws.path(PARTS).exists():
        for other in ws.path(PARTS).iterdir():
            if other.name != params_fp:
                shutil.rmtree(other, ignore_errors=True)

    table = samples.table
    wanted = set(table["id"])
    done_ids, done_vecs, skipped = _done_parts(parts_dir)
    old_ids, old_vecs = ([], None) if force else _reusable(ws, params_fp)
    have = set(done_ids) | set(old_ids) | set(skipped)
    todo = table[~table["id"].isin(have)]
    n_reused = len(wanted & (set(done_ids) | set(old_ids)))

    if samples.kind == "image":
        sources = [str(ws.data / s) for s in todo["source"]]
    else:
        sources = todo["source"].tolist()
    todo_ids = todo["id"].tolist()
    batch_size = cfg.batch_size or embedder.default_batch_size()
    workers = cfg.num_workers if cfg.num_workers is not None else _auto_workers(embedder, len(sources))
    loader = torch.utils.data.DataLoader(
        _Inputs(embedder, sources), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    part_no = len(list(parts_dir.glob("part-*.parquet"))) if parts_dir.exists() else 0
    buf_ids: list[str] = []
    buf_vecs: list[np.ndarray] = []
    buf_skipped: list[str] = []
    errors: dict[str, str] = {}

    def flush():
        nonlocal part_no, buf_ids, buf_vecs, buf_skipped
        if not buf_ids and not buf_skipped:
            return
        vecs = np.concatenate(buf_vecs) if buf_vecs else np.zeros((0, embedder.dim), np.float32)
        w = artifacts.EmbeddingsWriter(parts_dir / f"part-{part_no:06d}.parquet", embedder.dim, "float32", {"skipped": buf_skipped}, cfg.row_group_size)
        w.write(buf_ids, vecs)
        w.close()
        done_ids.extend(buf_ids)
        done_vecs.append(vecs)
        skipped.extend(buf_skipped)
        part_no += 1
        buf_ids, buf_vecs, buf_skipped = [], [], []

    with progress.task(f"embed ({model})", total=len(sources)) as task:
        for items in loader:
            ok = [(i, x) for i, x in items if not isinstance(x, Exception)]
            for i, x in items:
                if isinstance(x, Exception):
                    buf_skipped.append(todo_ids[i])
                    errors[todo_ids[i]] = f"{type(x).__name__}: {str(x).splitlines()[0] if str(x) else ''}"
            if ok:
                vecs = l2_normalize(embedder.forward([x for _, x in ok]))
                buf_ids.extend(todo_ids[i] for i, _ in ok)
                buf_vecs.append(vecs)
            task.advance(len(items))
            if len(buf_ids) + len(buf_skipped) >= cfg.row_group_size:
                flush()
    flush()

    # Assemble in samples order: reused rows, then the finished parts.
    all_ids = list(old_ids) + done_ids
    all_vecs = np.concatenate(([old_vecs] if old_vecs is not None else []) + done_vecs) if all_ids else np.zeros((0, embedder.dim), np.float32)
    pos = pd.Index(all_ids).get_indexer(table["id"])  # a new id reused from both takes the first
    keep = pos >= 0
    skipped_now = sorted(set(skipped) & wanted)
    if not keep.any():
        raise BadInputError(f"no input could be read: all {len(table)} samples were skipped (first: {skipped_now[:3]})")
    ordered_ids = table["id"][keep].tolist()
    ordered = all_vecs[pos[keep]]
    meta = _metadata(model, embedder.dim, params, embedder.preprocessing(), skipped_now)
    meta["params_fingerprint"] = params_fp
    w = artifacts.EmbeddingsWriter(ws.path(artifacts.EMBEDDINGS), embedder.dim, cfg.dtype, meta, cfg.row_group_size)
    for s in range(0, len(ordered_ids), cfg.row_group_size):
        w.write(ordered_ids[s:s + cfg.row_group_size], ordered[s:s + cfg.row_group_size])
    w.close()
    shutil.rmtree(ws.path(PARTS), ignore_errors=True)
    cache = ws.path(artifacts.EMBEDDINGS_CACHE)
    if cache.exists():
        cache.unlink()

    n_class = _write_class_embeddings(ws, embedder, samples.classes, model)
    return {
        "model": model, "device": device, "dim": embedder.dim, "n_embedded": len(todo_ids) - len([i for i in todo_ids if i in errors]),
        "n_reused": n_reused, "n_skipped": len(skipped_now), "skipped_ids": skipped_now[:20],
        "skip_errors": {k: errors[k] for k in skipped_now[:20] if k in errors}, "batch_size": batch_size, "num_workers": workers,
        "class_embeddings": n_class,
    }


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


def read_embeddings(ws: Workspace) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """(ids, float32 (N, D), metadata) through the memory-mapped cache."""
    path = artifacts.require(ws.path(artifacts.EMBEDDINGS), f"labelkit embed {ws.data}")
    ids, vecs = artifacts.read_embeddings(path, cache=ws.path(artifacts.EMBEDDINGS_CACHE))
    return ids, vecs, artifacts.read_metadata(path)

