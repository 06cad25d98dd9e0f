"""The GPU paths, checked on a machine with a CUDA GPU (none of the project's CI machines has one).

    python benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json     # about 2-5 minutes on one GPU

Each check prints one line (ok / FAIL / skip, with its numbers) and the script exits 1 when any
check fails; a check whose requirement is absent is skipped and says how to get it:

1. **doctor** sees the GPU torch sees (``labelkit.doctor.devices``: name and memory).
2. **torch CUDA embed**: efficientnet-lite0 on ``cuda`` (fp16 autocast) against ``cpu`` on the same
   N images: cosine of every pair of vectors >= 0.999, and the throughput of both.
3. **faiss GPU index** (needs the ``gpu`` extra, ``faiss-gpu-cu12``): ``knn_graph`` of 100k random
   unit vectors on ``cuda`` (exact, a GPU flat index) equals the CPU's (neighbour agreement >= 0.999
   — float sums in another order may swap near-ties), and an IVF graph on the GPU reaches the
   target recall; timings of both.
4. **Ray GPU actor** (needs the ``ray`` extra): ``embed_parts`` on a local Ray with 1 GPU picks one
   GPU actor by itself (``device`` auto) and writes the same vectors as the local CUDA pass.
5. **distill on CUDA**: ``labelkit distill examples/digits --student mlp --device cuda`` runs, and
   its summary says it trained on cuda.

Nothing here downloads: the images are CIFAR-10 test JPEGs from ../shared/data when present, else
crops of scikit-learn's sample photos.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS: list[dict[str, Any]] = []


def check(name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one check; it returns its numbers, raises AssertionError (FAIL) or LookupError (skip)."""
    t = time.perf_counter()
    try:
        out = {"check": name, "status": "ok", **fn()}
    except LookupError as e:
        out = {"check": name, "status": "skip", "why": str(e)}
    except AssertionError as e:
        out = {"check": name, "status": "FAIL", "why": str(e)}
    out["seconds"] = round(time.perf_counter() - t, 2)
    RESULTS.append(out)
    print(json.dumps(out), flush=True)


def _cuda():
    import torch

    if not torch.cuda.is_available():
        raise LookupError("torch sees no CUDA device (a CUDA build of torch and a GPU are needed)")
    return torch


def check_doctor() -> dict[str, Any]:
    from labelkit.doctor import devices, faiss_info

    _cuda()
    d = devices()
    assert d["cuda"]["available"] and d["cuda"]["devices"], f"doctor sees no CUDA device: {d['cuda']}"
    return {"devices": d["cuda"]["devices"], "faiss": faiss_info()}


def _embed(spec: str, files: list[str], device: str) -> tuple[np.ndarray, float]:
    from labelkit._validation import l2_normalize
    from labelkit.embedders import EmbedderOptions, create_embedder

    emb = create_embedder(spec, EmbedderOptions(device=device))
    bs = 128 if device.startswith("cuda") else emb.default_batch_size()
    emb.forward([emb.load(f) for f in files[:bs]])  # warm-up (cuDNN autotune, allocations)
    t = time.perf_counter()
    out = np.concatenate([l2_normalize(emb.forward([emb.load(f) for f in files[s:s + bs]])) for s in range(0, len(files), bs)])
    return out, len(files) / (time.perf_counter() - t)


def check_torch_embed(files: list[str]) -> dict[str, Any]:
    _cuda()
    gpu, gpu_rate = _embed("efficientnet-lite0", files, "cuda")
    cpu, cpu_rate = _embed("efficientnet-lite0", files, "cpu")
    cos = np.sum(gpu * cpu, axis=1)
    assert cos.min() >= 0.999, f"CUDA (fp16 autocast) vectors differ from CPU: min cosine {cos.min():.5f}"
    return {"n": len(files), "min_cosine": round(float(cos.min()), 6), "cuda_rows_per_s": round(gpu_rate, 1),
            "cpu_rows_per_s": round(cpu_rate, 1)}


def check_faiss_gpu(n: int) -> dict[str, Any]:
    from labelkit import knn

    if not knn.faiss_gpu_available():
        raise LookupError("this faiss has no GPU support or sees no GPU: pip install 'labelkit-ml[gpu]' (faiss-gpu-cu12)")
    x = np.random.default_rng(0).standard_normal((n, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    s_gpu, i_gpu = knn.knn_graph(x, 10, method="exact", device="cuda")
    gpu_s = time.perf_counter() - t
    t = time.perf_counter()
    s_cpu, i_cpu = knn.knn_graph(x, 10, method="exact", device="cpu")
    cpu_s = time.perf_counter() - t
    agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_gpu, i_cpu)]))
    assert agree >= 0.999, f"GPU exact graph agrees with CPU on {agree:.4f} of neighbours"
    index = knn.KnnIndex("ivf", device="cuda").build(x)
    assert index.on_gpu_, "the IVF index was not placed on the GPU"
    t = time.perf_counter()
    _, i_ivf = index.graph(10)
    ivf_s = time.perf_counter() - t
    recall = knn.recall_at_k(i_ivf, i_cpu)
    assert recall >= knn.AnnParams().target_recall - 0.02, f"GPU IVF recall@10 {recall:.3f}"
    return {"n": n, "exact_gpu_s": round(gpu_s, 2), "exact_cpu_s": round(cpu_s, 2), "agreement": round(agree, 5),
            "ivf_gpu_s": round(ivf_s, 2), "ivf_recall": round(recall, 4)}


def check_ray_gpu(files: list[str], tmp: Path) -> dict[str, Any]:
    torch = _cuda()
    try:
        import ray
    except ImportError as e:
        raise LookupError("ray is not installed: pip install 'labelkit-ml[ray]'") from e
    from labelkit import artifacts
    from labelkit.engines import RayOptions
    from labelkit.engines.ray_embed import embed_parts

    ref, _ = _embed("efficientnet-lite0", files, "cuda")
    ray.init(address="local", num_cpus=4, num_gpus=1, object_store_memory=2 << 30, include_dashboard=False)
    try:
        ids = [str(i) for i in range(len(files))]
        t = time.perf_counter()
        res = embed_parts(ids, files, ids, spec="efficientnet-lite0", dim=1280, parts_dir=tmp / "parts", device="auto",
                          batch_size=128, ray=RayOptions())
        secs = time.perf_counter() - t
    finally:
        ray.shutdown()
    assert res["device"] == "cuda" and res["workers"] == 1, f"expected one GPU actor, got {res['workers']} on {res['device']}"
    vecs = np.zeros_like(ref)
    for p in res["parts"]:
        got_ids, got = artifacts.read_embeddings(p)
        vecs[[int(i) for i in got_ids]] = got
    cos = np.sum(vecs * ref, axis=1)
    assert cos.min() >= 0.999, f"Ray GPU actor vectors differ from the local CUDA pass: min cosine {cos.min():.5f}"
    return {"workers": res["workers"], "device": res["device"], "rows_per_s": round(len(files) / secs, 1),
            "min_cosine": round(float(cos.min()), 6), "gpu": torch.cuda.get_device_name(0)}


def check_distill(tmp: Path) -> dict[str, Any]:
    import shutil

    from typer.testing import CliRunner

    from labelkit.cli import app

    _cuda()
    data = tmp / "digits"
    shutil.copytree(ROOT / "examples" / "digits", data)
    r = CliRunner().invoke(app, ["distill", str(data), "--student", "mlp", "--device", "cuda", "--json"])
    assert r.exit_code == 0, f"distill --device cuda exited {r.exit_code}: {r.output[-500:]}"
    summary = json.loads(r.stdout)["summary"]
    assert summary["device"].startswith("cuda"), f"the student trained on {summary['device']}"
    return {"device": summary["device"], "val_accuracy": summary["val_accuracy"], "wall_time_s": summary.get("wall_time_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="images for the embed checks")
    ap.add_argument("--n-vectors", type=int, default=100_000, help="vectors for the faiss check")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from ray_embed import images

    with tempfile.TemporaryDirectory() as tmp:
        files = images(Path(tmp) / "data", args.n)
        check("doctor", check_doctor)
        check("torch CUDA embed", lambda: check_torch_embed(files))
        check("faiss GPU index", lambda: check_faiss_gpu(args.n_vectors))
        check("Ray GPU actor", lambda: check_ray_gpu(files, Path(tmp)))
        check("distill on CUDA", lambda: check_distill(Path(tmp)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(RESULTS, indent=1))
    failed = [r["check"] for r in RESULTS if r["status"] == "FAIL"]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed or skipped; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
