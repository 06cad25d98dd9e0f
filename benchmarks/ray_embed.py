"""Embed throughput: the local engine's model pass against the Ray engine with 1..W actors.

    nice -n 10 python benchmarks/ray_embed.py                        # 256 CIFAR-10 JPEGs, efficientnet-lite0, 1 and 2 actors
    nice -n 10 python benchmarks/ray_embed.py --n 512 --workers 1 2 --json benchmarks/results/ray_embed.json

Measured on the same N images (CIFAR-10 test JPEGs from ../shared/data, upscaled to 224 by the
backend; scikit-learn's sample photos when CIFAR is absent):

- **local**: one process, the backend's ``load`` then ``forward`` in batches of its default size,
  after one untimed warm-up batch: what the local engine's model pass costs without DataLoader
  workers; once with torch's own threads (one per core) and once with 1 thread, as in an actor;
- **ray, W actors**: :func:`labelkit.engines.ray_embed.embed_parts` on a local Ray started with
  ``--cpus`` CPUs, one CPU per actor (torch single-threaded in each), parts written to a temporary
  folder. Ray's start (``ray.init``) is timed apart and not in the throughput; the actors' model
  build is in it (each actor builds its model once, as on a cluster);
- **per-worker**: ray rows/s divided by W, the number docs/scale.md projects N workers from;
- **rows per CPU-second**: rows over the CPU time spent (the local process's, all its threads; the
  actors' own, summed): what a dedicated core gives, the number that a shared machine's load does
  not distort (wall times here do depend on it).

The vectors of every Ray run are checked against the local ones (max abs difference; the batches
differ, so float32 rounding may differ by ~1e-6). On a shared machine timings are noisy: the
script repeats each measurement ``--repeat`` times and keeps the best.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def images(folder: Path, n: int) -> list[str]:
    from embed import make_cifar, make_photos  # the embed benchmark's data builders

    made = make_cifar(folder, n) or make_photos(folder, n)
    return sorted(str(p) for p in made.rglob("*.jpg"))[:n]


def local_pass(spec: str, files: list[str]) -> tuple[float, float, np.ndarray]:
    from labelkit._validation import l2_normalize
    from labelkit.embedders import EmbedderOptions, create_embedder

    emb = create_embedder(spec, EmbedderOptions(device="cpu"))
    bs = emb.default_batch_size()
    emb.forward([emb.load(f) for f in files[:bs]])  # warm-up
    t, c = time.perf_counter(), time.process_time()
    out = [l2_normalize(emb.forward([emb.load(f) for f in files[s:s + bs]])) for s in range(0, len(files), bs)]
    return time.perf_counter() - t, time.process_time() - c, np.concatenate(out)


def ray_pass(spec: str, dim: int, files: list[str], workers: int, folder: Path) -> tuple[float, float, np.ndarray]:
    from labelkit import artifacts
    from labelkit.engines import RayOptions
    from labelkit.engines.ray_embed import embed_parts

    parts = folder / f"parts-{workers}-{time.time_ns()}"
    ids = [str(i) for i in range(len(files))]
    t = time.perf_counter()
    res = embed_parts(ids, files, ids, spec=spec, dim=dim, parts_dir=parts, device="cpu", rows_per_part=128,
                      ray=RayOptions(workers=workers))
    seconds = time.perf_counter() - t
    vecs = np.zeros((len(files), dim), np.float32)
    for p in res["parts"]:
        got_ids, got = artifacts.read_embeddings(p)
        vecs[[int(i) for i in got_ids]] = got
    return seconds, res["actor_cpu_s"], vecs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import ray
    import torch

    from labelkit.embedders import create_embedder

    with tempfile.TemporaryDirectory() as tmp:
        files = images(Path(tmp) / "data", args.n)
        dim = create_embedder(args.model).dim
        local_s, local_cpu, ref = min((local_pass(args.model, files) for _ in range(args.repeat)), key=lambda r: r[0])
        rows = [{"engine": "local", "workers": 1, "threads": torch.get_num_threads(), "seconds": round(local_s, 2),
                 "rows_per_s": round(len(files) / local_s, 1), "rows_per_cpu_s": round(len(files) / local_cpu, 1)}]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the actors' setting (Ray gives each 1 CPU, so OMP_NUM_THREADS=1): separates engine from threading
        try:
            local_s, local_cpu, _ = min((local_pass(args.model, files) for _ in range(args.repeat)), key=lambda r: r[0])
        finally:
            torch.set_num_threads(threads)
        rows.append({"engine": "local", "workers": 1, "threads": 1, "seconds": round(local_s, 2),
                     "rows_per_s": round(len(files) / local_s, 1), "rows_per_cpu_s": round(len(files) / local_cpu, 1)})
        t = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, object_store_memory=1 << 30, include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - t
        try:
            for w in args.workers:
                secs, cpu, vecs = min((ray_pass(args.model, dim, files, w, Path(tmp)) for _ in range(args.repeat)), key=lambda r: r[0])
                rows.append({"engine": "ray", "workers": w, "seconds": round(secs, 2), "rows_per_s": round(len(files) / secs, 1),
                             "per_worker_rows_per_s": round(len(files) / secs / w, 1), "rows_per_cpu_s": round(len(files) / cpu, 1),
                             "max_abs_diff_vs_local": float(np.abs(vecs - ref).max())})
        finally:
            ray.shutdown()
    result = {"model": args.model, "n": len(files), "ray_start_s": round(start_s, 2), "cpus": args.cpus, "rows": rows}
    for r in rows:
        assert r.get("max_abs_diff_vs_local", 0) < 1e-4, r  # the same vectors, whatever the engine
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
