"""Nearest-neighbour search on unit-norm embeddings: the one kNN layer every stage uses.

Similarities are cosines (inner products of L2-normalised rows). Three methods:

* ``"exact"`` -- brute force, computed as a blocked matrix product plus top-k. On CPU the product
  runs through numpy's BLAS and the top-k through ``torch.topk``: on the reference machine (2-core
  AMD EPYC, AVX2) numpy's OpenBLAS reaches ~150 GFLOP/s while the OpenBLAS bundled in the
  faiss-cpu wheel falls back to a generic kernel (~45 GFLOP/s), so ``faiss.IndexFlatIP`` would be
  about 3x slower for the same exact answer. (Computing each symmetric tile of ``X X^T`` once
  was tried and dropped: the column-wise top-k it needs costs about what it saves.) Scratch
  memory is bounded by ``batch_size * EXACT_BASE_BLOCK * 4`` bytes.
* ``"hnsw"`` -- ``faiss.IndexHNSWFlat`` (Malkov & Yashunin 2018), the default approximate index
  on CPU. ``efSearch`` is tuned on a sample of queries until recall@k against exact search reaches
  ``target_recall`` (default 0.95).
* ``"ivf"`` -- ``faiss.IndexIVFFlat`` (an inverted file over k-means cells, Jegou et al. 2011);
  ``nprobe`` is tuned the same way. This is the approximate index used on GPU.
* ``"ivfpq"`` -- ``faiss.IndexIVFPQ``: the same inverted file, each row stored as a product-quantised
  code of ``pq_m`` bytes instead of ``4 * dim`` (Jegou et al. 2011). Each query's
  ``rerank * max(k, 12)`` best candidates by code are re-ranked by exact inner product with the
  original rows (read in blocks from the array the index was built from, which holds no copy of
  it), so the similarities returned are exact cosines; ``nprobe`` is tuned as for IVF. The index
  a memory budget takes on a faiss GPU, or where the cells method does not fit.
* ``"cells"`` -- :mod:`labelkit.knn_cells`: spherical k-means cells, each query compared exactly with
  the rows of its ``nprobe`` nearest cells, scanned cell by cell as BLAS products. It holds no
  copy of the rows (48 bytes a row), its similarities are exact, and its recall on the tuning sample
  is read off the exact neighbours. Where the neighbours of a row lie in cells whose centroids are
  far from it, it needs many probes: a whole graph then probes at most ``GRAPH_MAX_PROBE`` cells and
  refines itself from each row's neighbours' neighbours (``knn_cells.refine``) until its tuning
  sample reaches the target (1M x 512 synthetic rows: 212 s at recall 0.98, HNSW 820 s).

``"auto"`` picks exact search when the work is small (``n_queries * n_base <= EXACT_MAX_PAIRS``,
i.e. a self-kNN graph over at most ``EXACT_MAX_ROWS`` rows), else the approximate index: on CPU
the cells method for a self-kNN graph of ``CELLS_MIN_ROWS`` rows or more (HNSW after all when
its tuning sample finds under ``CELLS_MIN_PROBE_RECALL`` at ``GRAPH_MAX_PROBE`` probes:
``AnnParams.cells_fallback``), HNSW otherwise. Under a
memory budget (:func:`choose_method`) it keeps that choice when :func:`memory_estimate` says it
fits, else (on CPU) takes the cells method, else IVF-PQ with the largest code that fits.

Device: ``"cpu"``; ``"auto"`` (faiss's GPU indexes when the faiss GPU build sees a GPU, else CPU);
``"cuda"`` / ``"cuda:N"`` (faiss GPU indexes when present; otherwise exact search runs as a torch
matrix product on that device and the approximate indexes run on CPU). HNSW always runs on CPU:
faiss has no GPU HNSW.

Missing neighbours (``k`` larger than what exists) are padded with index ``-1`` and similarity
``-inf``; the output shape is always ``(n, k)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from labelkit import knn_cells
from labelkit._progress import NULL, Progress
from labelkit._validation import check_embeddings, l2_normalize, unit_embeddings
from labelkit.errors import BadInputError, LabelkitWarning


class _OnFirstUse:
    """A module imported when first used: importing labelkit.knn (every stage does) must not cost
    torch's and faiss's import (seconds) on paths that never search, e.g. detect-noise --pred-probs."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._name)
        globals()[self._name] = module  # later uses go straight to the module
        return getattr(module, attr)


faiss = _OnFirstUse("faiss")
torch = _OnFirstUse("torch")

Method = Literal["auto", "exact", "hnsw", "ivf", "ivfpq", "cells"]
METHODS = ("auto", "exact", "hnsw", "ivf", "ivfpq", "cells")
_APPROX = ("hnsw", "ivf", "ivfpq", "cells")

# Measured with benchmarks/knn.py (kNN graph, k=10, 512-d clustered data, 2 cores shared with other
# jobs, so CPU seconds are quoted; they are steadier than wall time): exact search 42 CPU-s at 50k
# rows and 179 at 100k (quadratic); HNSW build + tuned search 21 and 49 CPU-s at recall@10 0.98.
# At 50k exact costs ~20 s on two idle cores and is exact whatever the data (HNSW recall falls to
# 0.2-0.3 on unstructured data); past it the gap grows linearly (2x at 50k, 3.6x at 100k, ~30x at
# 1M), so "auto" switches to the approximate index there.
EXACT_MAX_ROWS = 50_000
EXACT_MAX_PAIRS = EXACT_MAX_ROWS**2
# Not measured (no GPU here): a GPU brute-force product is ~100x faster than 2 CPU cores.
EXACT_MAX_ROWS_GPU = 200_000
# A self-kNN graph of this many rows or more on CPU: the cells method, not HNSW (clustered 512-d rows:
# 62 s at recall 0.999 at 200k, where HNSW's 300k graph cost 744-1,231 CPU-s; 212 s at 0.983 at 1M
# against HNSW's 820 s at 0.989; 1M x 128 Gaussian classes in docs/performance.md). Between 50k and
# 200k not measured. Searches of other queries stay HNSW: only a graph can be refined.
CELLS_MIN_ROWS = 200_000
# ... unless the cells fit the rows badly: where auto chose cells by size and the tuning sample's recall
# at GRAPH_MAX_PROBE probes is under this, the graph is built with HNSW instead. Refinement gains about
# a quarter of recall a round there, each round costing more than the scan: a 10% sample of the
# 10M set (999,881 rows in 10,000 sparse 8-d clusters) read 0.467 at 16 probes, 0.727 after a round of
# ~6 min, where the whole 1M x 512 graph (one round) took 212 s.
CELLS_MIN_PROBE_RECALL = 0.6
EXACT_BASE_BLOCK = 16_384  # base rows per exact-search tile
HNSW_DENSE_BUILD_ROWS = 300_000  # above, in HNSW_DENSE_BUILD_DIM dimensions or more: efConstruction 160, not 64
HNSW_DENSE_BUILD_DIM = 256  # (hnsw_ef_construction)
HNSW_DENSE_BUILD_ROWS_LOW_DIM = 500_000  # above, in fewer dimensions: efConstruction 160 too
DEFAULT_BATCH_SIZE = 4_096  # query rows per block
_RECALL_MARGIN = 0.01  # the tuning sample must beat the target by this (sampling error of ~256 queries)
# IVF-PQ: codes of PQ_NBITS bits per sub-quantiser; pq_m (code bytes per row) is one of
# PQ_M_CHOICES, the sizes faiss's GPU IVFPQ supports, by default about one byte per
# PQ_DIMS_PER_BYTE dimensions (measured in docs/performance.md, "IVF-PQ under a memory budget").
PQ_NBITS = 8
PQ_M_CHOICES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
PQ_DIMS_PER_BYTE = 8
IVF_ADD_CHUNK = 32_768  # rows added to an IVF index at a time
# faiss encodes PQ codes of 16 or more dimensions per byte through a (rows, 2^nbits, pq_m) float32 table
# (ProductQuantizer.compute_codes): IVF-PQ then adds rows in chunks whose table is at most this
# (measured: 4-byte codes of 100k x 512 rows in 32k-row chunks peaked at 610 MB, against 281 estimated without it)
PQ_TABLE_BYTES = 32 << 20
RERANK_BLOCK_BYTES = 8 << 20  # gathered candidate rows per re-ranking block
RERANK_MIN_K = 12  # IVF-PQ re-ranks rerank * max(k, RERANK_MIN_K) candidates: few candidates lose recall at small k
# IVF-PQ's tuning stops at this nprobe: past it the codes, not the cells, limit recall (4-byte codes of 128-d rows:
# 0.872 / 0.877 / 0.879 at nprobe 8 / 16 / 32, 0.881 scanning all 1,265 cells for 8x the time and 2.5x the memory)
IVFPQ_MAX_NPROBE = 256
# Tuning doubles IVF-PQ's re-ranked candidates up to this factor when nprobe alone stops short of
# the recall target: at 1M x 512 the codes' best 96 missed true neighbours (recall 0.909 at
# nprobe 256) that a longer candidate list holds.
RERANK_MAX = 64
_GROWTH = 2  # faiss grows its code arrays by doubling: while one is copied, old and new are both held
FAISS_WORKING_BYTES = 24 << 20  # faiss's and OpenMP's own working memory: measured 10-23 MB above the rest of the model


@dataclass(frozen=True)
class AnnParams:
    """Parameters of the approximate indexes. ``None`` means "choose automatically".

    Attributes
    ----------
    hnsw_m : int, default=32
        Graph degree M of HNSW (level 0 keeps up to 2M neighbours).
    ef_construction : int or None, default=None
        Candidate list size while building HNSW; None chooses by the number of rows
        (:func:`hnsw_ef_construction`: 160 past HNSW_DENSE_BUILD_ROWS rows of HNSW_DENSE_BUILD_DIM
        dimensions or more and past HNSW_DENSE_BUILD_ROWS_LOW_DIM rows of fewer, else 64). Below 2M
        it starves level 0: on 100k x 512 clustered vectors (benchmarks/knn.py data), M=32
        reached recall@10 0.83 / 0.93 / 0.96 at efSearch 16 / 64 / 128 with efConstruction=40,
        but 0.94 / 0.98 / 1.00 at efSearch 16 / 32 / 64 with efConstruction=64, for 10% more
        build time. M=24 and M=48 cost about the same for the same recall; M=16 needs twice the
        efSearch. A denser build pays off when the graph is large: see docs/performance.md,
        "The kNN graph".
    ef_search : int or None, default=None
        Candidate list size while searching; None tunes it on a sample to ``target_recall``.
    nlist : int or None, default=None
        IVF (and the cells method's) cells; None uses ``4 * sqrt(n_base)``.
    nprobe : int or None, default=None
        IVF (and the cells method's) cells visited per query; None tunes it on a sample to
        ``target_recall`` (the cells method: up to ``knn_cells.MAX_PROBE``).
    target_recall : float, default=0.95
        Recall@k against exact search that tuning aims for.
    n_tune_queries : int, default=256
        Queries sampled for tuning (their exact neighbours cost ``n_tune_queries * n_base`` dot
        products).
    pq_m : int or None, default=None
        IVF-PQ code bytes per row (sub-quantisers of PQ_NBITS bits); must divide the dimension.
        None: :func:`default_pq_m` (or, under a memory budget, the largest that fits).
    rerank : int, default=8
        IVF-PQ: each query's ``rerank * max(k, RERANK_MIN_K)`` best candidates by code are
        re-ranked by exact inner product with the original rows; 0 returns the codes'
        approximate similarities instead. On 5,000 x 32 clustered rows with k=5, 48 candidates
        reached recall 0.85 and 96 reached 0.998. When no nprobe reaches the recall target,
        tuning doubles it (up to RERANK_MAX) until one does (``rerank_``).
    cells_fallback : bool, default=False
        A cells graph whose tuning sample reaches less than ``CELLS_MIN_PROBE_RECALL`` at
        ``knn_cells.GRAPH_MAX_PROBE`` probes is built with HNSW instead (``fell_back_``). Set by
        :func:`choose_method` where ``auto`` chose cells by size and HNSW fits; ``KnnIndex("auto")``
        does the same.
    """

    hnsw_m: int = 32
    ef_construction: int | None = None
    ef_search: int | None = None
    nlist: int | None = None
    nprobe: int | None = None
    target_recall: float = 0.95
    n_tune_queries: int = 256
    pq_m: int | None = None
    rerank: int = 8
    cells_fallback: bool = False

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "n_tune_queries", "pq_m"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise BadInputError(f"'{name}' must be a positive integer. Got {value!r} instead.")
        if isinstance(self.rerank, bool) or not isinstance(self.rerank, (int, np.integer)) or self.rerank < 0:
            raise BadInputError(f"'rerank' must be an integer >= 0. Got {self.rerank!r} instead.")
        if not 0 < self.target_recall <= 1:
            raise BadInputError(f"'target_recall' must be in (0, 1]. Got {self.target_recall!r} instead.")


# ----------------------------------------------------------------------------------------------
# device


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return (
        hasattr(faiss, "get_num_gpus")
        and hasattr(faiss, "StandardGpuResources")
        and hasattr(faiss, "index_cpu_to_gpu")
        and faiss.get_num_gpus() > 0
    )


@dataclass(frozen=True)
class _Device:
    """Where each part runs: faiss GPU id (or None), and the torch device for exact search."""

    faiss_gpu: int | None
    torch_device: str


def _resolve_device(device: str) -> _Device:
    """Map the ``device`` option to a faiss GPU id and a torch device."""
    if not isinstance(device, str):
        raise BadInputError(f"'device' must be 'auto', 'cpu' or 'cuda[:N]'. Got {device!r} instead.")
    if device == "cpu":
        return _Device(None, "cpu")
    if device == "auto":
        return _Device(0, "cpu") if faiss_gpu_available() else _Device(None, "cpu")
    if device == "cuda" or device.startswith("cuda:"):
        gpu_id = int(device.split(":", 1)[1]) if ":" in device else 0
        if faiss_gpu_available():
            return _Device(gpu_id, "cpu")
        if not torch.cuda.is_available():
            raise BadInputError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        return _Device(None, device)
    raise BadInputError(f"'device' must be 'auto', 'cpu' or 'cuda[:N]'. Got {device!r} instead.")


_GPU_RESOURCES: dict[int, object] = {}


def _to_gpu(index, gpu_id: int):
    """Copy a CPU faiss index to GPU ``gpu_id`` (one StandardGpuResources per GPU, reused)."""
    res = _GPU_RESOURCES.get(gpu_id)
    if res is None:
        res = _GPU_RESOURCES[gpu_id] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, gpu_id, index)


# ----------------------------------------------------------------------------------------------
# validation helpers


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadInputError(f"'k' must be a positive integer. Got {k!r} instead.")
    return int(k)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BadInputError(f"'batch_size' must be a positive integer. Got {batch_size!r} instead.")
    return int(batch_size)


def _check_method(method) -> str:
    if method not in METHODS:
        raise BadInputError(f"'method' must be one of {', '.join(METHODS)}. Got {method!r} instead.")
    return method


def _prepare(x, name: str) -> np.ndarray:
    return unit_embeddings(x, name=name)  # float16 rows stay float16: faiss gets float32 blocks (_f32)


def _f32(a: np.ndarray) -> np.ndarray:
    """A block as the C-contiguous float32 faiss and BLAS need (no copy when it is one)."""
    return np.ascontiguousarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# exact search


def _gpu_flat(base: np.ndarray, gpu_id: int):
    """faiss's brute-force inner-product index of ``base`` on GPU ``gpu_id``."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(_f32(base))
    return _to_gpu(index, gpu_id)


def _topk_merge(best_s, best_i, s, offset: int, k: int):
    """Merge a tile's similarities ``s`` (columns start at ``offset``) into the running top-k."""
    kt = min(k, s.shape[1])
    v, i = torch.topk(s, kt, dim=1, sorted=True)
    i = i.to(torch.int64) + offset
    if best_s is None:
        return v, i
    return knn_cells.merge_topk(best_s, best_i, v, i, k)


def _exact_search_impl(base, queries, k, *, batch_size, device, task, flat=None):
    """Blocked brute-force top-k by inner product; returns (sims, idx) of shape (nq, min(k, nb)).

    ``flat`` is an already-built faiss GPU flat index of ``base`` (reused across calls)."""
    nq, nb = len(queries), len(base)
    kk = min(k, nb)
    sims = np.empty((nq, kk), np.float32)
    idx = np.empty((nq, kk), np.int64)
    if kk == 0 or nq == 0:
        task.advance(nq)
        return sims, idx
    if device.faiss_gpu is not None:
        index = flat if flat is not None else _gpu_flat(base, device.faiss_gpu)
        for qs in range(0, nq, batch_size):
            q = _f32(queries[qs : qs + batch_size])
            sims[qs : qs + len(q)], idx[qs : qs + len(q)] = index.search(q, kk)
            task.advance(len(q))
        return sims, idx
    if device.torch_device != "cpu":
        base_t = torch.from_numpy(_f32(base)).to(device.torch_device)
        for qs in range(0, nq, batch_size):
            q = torch.from_numpy(_f32(queries[qs : qs + batch_size])).to(device.torch_device)
            best_s = best_i = None
            for bs in range(0, nb, EXACT_BASE_BLOCK):
                best_s, best_i = _topk_merge(best_s, best_i, q @ base_t[bs : bs + EXACT_BASE_BLOCK].T, bs, kk)
            sims[qs : qs + len(q)] = best_s.cpu().numpy()
            idx[qs : qs + len(q)] = best_i.cpu().numpy()
            task.advance(len(q))
        return sims, idx
    # CPU: numpy's BLAS for the product (see the module docstring), torch.topk for the selection
    # (np.argpartition is ~20x slower on these shapes). One scratch buffer bounds the memory.
    block = min(EXACT_BASE_BLOCK, nb)
    scratch = np.empty(min(batch_size, nq) * block, np.float32)
    for qs in range(0, nq, batch_size):
        q = _f32(queries[qs : qs + batch_size])
        best_s = best_i = None
        for bs in range(0, nb, block):
            b = _f32(base[bs : bs + block])
            s = scratch[: len(q) * len(b)].reshape(len(q), len(b))
            np.matmul(q, b.T, out=s)
            best_s, best_i = _topk_merge(best_s, best_i, torch.from_numpy(s), bs, kk)
        sims[qs : qs + len(q)] = best_s.numpy()
        idx[qs : qs + len(q)] = best_i.numpy()
        task.advance(len(q))
    return sims, idx


# ----------------------------------------------------------------------------------------------
# the index


class KnnIndex:
    """A searchable set of unit-norm vectors: exact, HNSW or IVF, on CPU or GPU.

    Build with :meth:`build`, then call :meth:`search` (queries) or :meth:`graph` (the indexed
    rows themselves) as often as needed. ``method`` and ``device`` are resolved at build time:
    ``method_`` and ``on_gpu_`` say what was chosen, and ``tuned_`` maps each number of
    neighbours searched (``k``, or ``k + 1`` for a graph, which drops self afterwards) to the
    efSearch (HNSW) or nprobe (IVF, IVF-PQ) that tuning picked. The IVF-PQ index re-ranks by
    reading the array it was built from: keep it unchanged while the index is used.

    Parameters
    ----------
    method : {"auto", "exact", "hnsw", "ivf", "ivfpq"}, default="auto"
        ``"auto"``: exact when ``n_base <= EXACT_MAX_ROWS`` (``EXACT_MAX_ROWS_GPU`` on GPU), else
        IVF on a faiss GPU, and on CPU the cells method from ``CELLS_MIN_ROWS`` rows (a build for a
        graph is assumed) and HNSW below (no memory budget: see :func:`choose_method`).
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (see the module docstring).
    ann : AnnParams or None, default=None
        Approximate-index parameters; None uses ``AnnParams()``.
    seed : int, default=0
        Seeds the tuning sample and the IVF training sample.

    References
    ----------
    Malkov, Yashunin, "Efficient and robust approximate nearest neighbor search using
    Hierarchical Navigable Small World graphs", IEEE TPAMI 2018.
    Jegou, Douze, Schmid, "Product quantization for nearest neighbor search", IEEE TPAMI 2011
    (the IVF index). Johnson, Douze, Jegou, "Billion-scale similarity search with GPUs",
    IEEE TBD 2019 (faiss).
    """

    def __init__(self, method: Method = "auto", *, device: str = "auto", ann: AnnParams | None = None, seed: int = 0):
        self.method = _check_method(method)
        self.device = _resolve_device(device)
        if ann is not None and not isinstance(ann, AnnParams):
            raise BadInputError(f"'ann' must be an AnnParams or None. Got {type(ann).__name__} instead.")
        self.ann = ann if ann is not None else AnnParams()
        self.seed = int(seed)
        self.method_: str | None = None
        self.on_gpu_ = False
        self._base: np.ndarray | None = None
        self._index = None
        self.tuned_: dict[int, int] = {}  # k -> efSearch / nprobe reaching target recall
        self.recall_: dict[int, float] = {}  # k -> recall@k of the tuned knob on the tuning sample
        self.rerank_: dict[int, int] = {}  # k -> IVF-PQ re-rank factor tuning settled on (when it grew it)
        self.refined_: dict[int, int] = {}  # k -> refinement rounds a cells graph took (knn_cells.refine)
        self.fell_back_: str | None = None  # why a cells graph was built with HNSW instead (AnnParams.cells_fallback)
        self._graph_sample: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # k -> a graph's tuning rows and their exact neighbours

    # -- build ------------------------------------------------------------------------------
    def build(self, embeddings, *, progress: Progress = NULL) -> KnnIndex:
        """Index ``embeddings`` of shape (n_base, dim); rows are L2-normalised if they are not."""
        base = _prepare(embeddings, "embeddings")
        return self._build_impl(base, progress=progress)

    def _build_impl(self, base: np.ndarray, *, progress: Progress, method: str | None = None) -> KnnIndex:
        self._base = base
        self.tuned_ = {}
        self.recall_ = {}
        self.rerank_ = {}
        self.refined_ = {}
        self.fell_back_ = None
        self._graph_sample = {}
        method = method or self.method
        self._may_leave_cells = self.ann.cells_fallback or method == "auto"
        if method == "auto":  # a self-search (n_queries == n_base) is assumed
            method = _auto_method(len(base), len(base), self.device)
        if len(base) == 0:
            method = "exact"
        self.method_ = method
        self.on_gpu_ = self.device.faiss_gpu is not None and method in ("exact", "ivf", "ivfpq")  # cells: CPU (BLAS) only
        if method == "hnsw":
            self._index = self._build_hnsw(base, progress)
        elif method in ("ivf", "ivfpq"):
            self._index = self._build_ivf(base, progress, pq=method == "ivfpq")
        elif method == "cells":
            self._index = None
            self._build_cells(base, progress)
        else:
            self.on_gpu_ = self.device.faiss_gpu is not None or self.device.torch_device != "cpu"
            # on a faiss GPU the base is copied once; otherwise exact search reads self._base
            on_faiss_gpu = self.device.faiss_gpu is not None and len(base) > 0
            self._index = _gpu_flat(base, self.device.faiss_gpu) if on_faiss_gpu else None
        return self

    def _build_hnsw(self, base, progress):
        index = faiss.IndexHNSWFlat(base.shape[1], self.ann.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ann.ef_construction or hnsw_ef_construction(*base.shape)
        chunk = 16_384
        with progress.task("knn: build HNSW index", total=len(base)) as task:
            for s in range(0, len(base), chunk):
                index.add(_f32(base[s : s + chunk]))
                task.advance(min(chunk, len(base) - s))
        return index

    def _build_ivf(self, base, progress, *, pq: bool):
        """IVF over k-means cells trained on a sample; rows stored flat, or as PQ codes (``pq``)."""
        n, d = base.shape
        nlist = _ivf_nlist(n, self.ann.nlist)
        n_train = _ivf_train_rows(n, nlist, pq=pq)
        quantizer = faiss.IndexFlatIP(d)
        if pq:
            m = self.ann.pq_m or default_pq_m(d)
            if d % m:
                raise BadInputError(f"'pq_m' must divide the dimension {d}. Got {m} instead.")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, _pq_nbits(n_train), faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.min_points_per_centroid = 1
            index.pq.cp.seed = self.seed
            chunk = _ivf_add_chunk(d, m, index.pq.nbits)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            chunk = IVF_ADD_CHUNK
        index.cp.min_points_per_centroid = 1  # no stderr warning for small training sets
        index.cp.seed = self.seed
        rng = np.random.default_rng(self.seed)
        train = base if n_train == n else base[np.sort(rng.choice(n, n_train, replace=False))]
        with progress.task(f"knn: build {'IVF-PQ' if pq else 'IVF'} index", total=n) as task:
            if self.device.faiss_gpu is not None:
                index = _to_gpu(index, self.device.faiss_gpu)  # train on the GPU too
            index.train(_f32(train))
            del train
            for s in range(0, n, chunk):
                index.add(_f32(base[s : s + chunk]))
                task.advance(min(chunk, n - s))
        self._quantizer = quantizer  # keep the quantizer alive as long as the CPU index
        return index

    def _build_cells(self, base, progress):
        """Spherical k-means cells, the cell of every row, and each cell's nearest cells (:mod:`labelkit.knn_cells`)."""
        nlist = _ivf_nlist(len(base), self.ann.nlist)
        centroids = knn_cells.train_centroids(base, nlist, seed=self.seed, progress=progress)
        with progress.task("knn: assign rows to cells", total=len(base)) as task:
            # each row's GRAPH_MAX_PROBE nearest cells, kept: a graph's scan probes them without a second
            # (rows, nlist) product pass (not measured apart: docs/performance.md, session 14); 32 bytes a row
            near = knn_cells.probes(base, centroids, knn_cells.GRAPH_MAX_PROBE, task=task, dtype=knn_cells.cell_dtype(nlist))
        cell_of = near[:, 0].astype(np.int64)
        order, offsets = knn_cells.cell_lists(cell_of, nlist)
        self._cells = {"centroids": centroids, "cell_of": cell_of, "near": near, "order": order, "offsets": offsets}

    # -- search -----------------------------------------------------------------------------
    def graph(
        self, k: int, *, exclude_self: bool = True, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress = NULL,
        rows: slice | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The kNN graph of the indexed rows themselves: :func:`knn_graph` on a built index.

        ``rows`` (a step-1 slice) computes only those rows of the graph, as the whole graph would
        have them: a Ray engine spreads the slices over actors after :meth:`tune_graph`.
        """
        if self._base is None:
            raise BadInputError("the index is empty; call build(embeddings) before graph()")
        rows = rows or slice(0, len(self._base))
        start, stop, step = rows.indices(len(self._base))
        if step != 1:
            raise BadInputError(f"'rows' must be a slice with step 1. Got {rows!r} instead.")
        return self._search_impl(
            self._base[start:stop],
            _check_k(k),
            batch_size=_check_batch_size(batch_size),
            progress=progress,
            drop_self_offset=start if exclude_self else None,
        )

    def tune_graph(self, k: int, *, exclude_self: bool = True, progress: Progress = NULL) -> KnnIndex:
        """Tune an approximate index for :meth:`graph` with ``k`` over every indexed row, as a whole
        graph would, so that later ``graph(k, rows=...)`` slices (after pickling, on other
        processes) share that knob instead of tuning on their slice; put together, they go through
        :meth:`finish_graph`. A no-op for exact search."""
        if self._base is None:
            raise BadInputError("the index is empty; call build(embeddings) before tune_graph()")
        if self.method_ in _APPROX and len(self._base) > 0:
            self._knob(_check_k(k) + bool(exclude_self), self._base, 0 if exclude_self else None, progress)
        return self

    def finish_graph(self, sims: np.ndarray, idx: np.ndarray, k: int, *, progress: Progress = NULL) -> None:
        """After ``graph(k, rows=...)`` slices (tuned by :meth:`tune_graph`) have been put together into the
        whole graph, what :meth:`graph` does to a whole one: a cells graph's refinement, in place (and its
        recall warning). A no-op for the other methods."""
        kq = _check_k(k) + 1
        if self.method_ == "cells" and kq in self._graph_sample:
            self._refine(sims, idx, kq, progress)

    def tune_search(self, queries, k: int, *, progress: Progress = NULL) -> KnnIndex:
        """Tune an approximate index for :meth:`search` with ``k`` on a sample of all ``queries``, so that
        searching them block by block (a caller that reduces each block's results) uses one knob, as
        one whole search would. A no-op for exact search."""
        if self._base is None:
            raise BadInputError("the index is empty; call build(embeddings) before tune_search()")
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self._base.shape[1]:
            raise BadInputError(f"'queries' must be 2-D with dim {self._base.shape[1]} like the index. Got shape {q.shape} instead.")
        if self.method_ in _APPROX and len(self._base) > 0 and len(q) > 0:
            self._knob(_check_k(k), q, None, progress)  # only its sample is read (and normalised), not a pass over every query
        return self

    def tuning(self, kq: int) -> dict | None:
        """The knob tuning picked for ``kq`` searched neighbours and its recall on the tuning sample, as
        stage summaries report it (``ef_search`` or ``nprobe``, ``sample_recall``, ``target_recall``,
        ``rerank`` when it grew, ``refine_rounds`` when a cells graph was refined, its sample recall then
        measured after them); None when nothing was tuned (exact search, or a knob given)."""
        if kq not in self.recall_:
            return None
        return {"ef_search" if self.method_ == "hnsw" else "nprobe": self.tuned_[kq], "sample_recall": round(float(self.recall_[kq]), 4),
                "target_recall": self.ann.target_recall, **({"rerank": self.rerank_[kq]} if kq in self.rerank_ else {}),
                **({"refine_rounds": self.refined_[kq]} if kq in self.refined_ else {})}

    def search(self, queries, k: int, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress = NULL):
        """Top-``k`` neighbours of each query among the indexed rows.

        Parameters
        ----------
        queries : ndarray of shape (n_queries, dim)
        k : int
        batch_size : int, default=4096
            Queries per block; bounds memory.
        progress : Progress, default=NULL

        Returns
        -------
        sims : ndarray of shape (n_queries, k), float32
            Cosine similarities, descending; ``-inf`` where missing.
        idx : ndarray of shape (n_queries, k), int64
            Row indices into the indexed embeddings; ``-1`` where missing.
        """
        if self._base is None:
            raise BadInputError("the index is empty; call build(embeddings) before search()")
        q = _prepare(queries, "queries")
        if q.shape[1] != self._base.shape[1]:
            raise BadInputError(f"'queries' must have dim {self._base.shape[1]} like the index. Got {q.shape[1]} instead.")
        return self._search_impl(q, _check_k(k), batch_size=_check_batch_size(batch_size), progress=progress)

    def _search_impl(self, queries, k, *, batch_size, progress, drop_self_offset=None):
        """Search; ``drop_self_offset`` (knn_graph) removes each query's own row ``offset + i``.

        An approximate index drops self and pads block by block into the (nq, k) result, so its
        peak is one result plus one block (:func:`memory_estimate`)."""
        kq = k + (drop_self_offset is not None)
        nq = len(queries)
        if self.method_ == "exact" or len(self._base) == 0:
            with progress.task("knn: exact search", total=nq) as task:
                s, i = _exact_search_impl(self._base, queries, kq, batch_size=batch_size, device=self.device, task=task, flat=self._index)
            if drop_self_offset is not None:
                s, i = _drop_self(s, i, drop_self_offset + np.arange(nq))
            return _pad(s, i, k)
        knob = self._knob(kq, queries, drop_self_offset, progress)
        if self.method_ == "cells":
            sims, idx = self._cells_search(queries, k, knob, progress, drop_self_offset)
            if kq in self._graph_sample and drop_self_offset == 0 and nq == len(self._base):
                self._refine(sims, idx, kq, progress)  # a slice of the graph (Ray) is refined whole: finish_graph
            return sims, idx
        params = self._search_params(knob)
        if kq in self.rerank_:  # a longer candidate list: smaller batches keep a block's candidates the size memory_estimate counts
            batch_size = max(1, batch_size * self.ann.rerank // self.rerank_[kq])
        sims = np.empty((nq, k), np.float32)
        idx = np.empty((nq, k), np.int64)
        with progress.task(f"knn: {self.method_} search", total=nq) as task:
            for qs in range(0, nq, batch_size):
                qb = queries[qs : qs + batch_size]
                s, i = self._ann_search(qb, kq, params)
                if drop_self_offset is not None:
                    s, i = _drop_self(s, i, drop_self_offset + qs + np.arange(len(qb)))
                sims[qs : qs + len(qb)], idx[qs : qs + len(qb)] = _pad(s, i, k)
                task.advance(len(qb))
        return sims, idx

    def _refine(self, sims, idx, kq, progress) -> None:
        """Refinement rounds (:func:`knn_cells.refine`) while the tuning sample's recall is short of the target and
        improving; the recall measured after them is the one reported."""
        rows, exact, more = self._graph_sample[kq]
        goal = min(1.0, self.ann.target_recall + _RECALL_MARGIN)
        recall = _recall_impl(idx[rows], exact)  # of this graph (equal to the tuned estimate up to ties)
        rounds = 0
        while recall < goal and rounds < knn_cells.REFINE_ROUNDS:
            with progress.task(f"knn: refine the graph from its neighbours' neighbours (round {rounds + 1})", total=len(idx)) as task:
                knn_cells.refine(self._base, sims, idx, order=self._cells["order"], task=task)
            rounds += 1
            before, recall = recall, _recall_impl(idx[rows], exact)
            if recall - before < knn_cells.REFINE_MIN_GAIN:
                break
        if recall < goal:  # neighbours' neighbours did not get there (high intrinsic dimension): probe the cells tuning asked for
            sims[:], idx[:] = self._cells_search(self._base, kq - 1, more, progress, 0)
            self.tuned_[kq], recall, rounds = more, _recall_impl(idx[rows], exact), 0
        self.recall_[kq] = recall
        if rounds:
            self.refined_[kq] = rounds
        self._warn_recall(kq - 1, recall)

    def _cells_search(self, queries, k, n_probe, progress, drop_self_offset):
        """Exact search within each query's ``n_probe`` nearest cells; self dropped by index in a graph.

        Queries go in blocks ordered by their nearest cell, so that a block probes the cells around a
        few of them, not every cell: each probed cell is gathered once a block."""
        cells = self._cells
        nq = len(queries)
        kq = k + (drop_self_offset is not None)
        sims = np.empty((nq, k), np.float32)
        idx = np.empty((nq, k), np.int64)
        if drop_self_offset is not None:  # the graph's queries are indexed rows, whose cells are known
            home = cells["cell_of"][drop_self_offset : drop_self_offset + nq]
        else:
            with progress.task("knn: nearest cell of each query", total=nq) as task:
                home = knn_cells.assign(queries, cells["centroids"], task=task)
        by_home = np.argsort(home, kind="stable")
        del home
        block = _cells_query_block(n_probe, kq, queries.shape[1])
        with progress.task(f"knn: cells search ({n_probe} of {len(cells['centroids']):,} cells a query)", total=nq) as task:
            for bs in range(0, nq, block):
                rows = np.sort(by_home[bs : bs + block])
                q = _f32(queries[rows])  # gathered per probe below: float32 rows copy, float16 ones convert
                if drop_self_offset is not None and n_probe <= cells["near"].shape[1]:
                    probed = cells["near"][drop_self_offset + rows, :n_probe].astype(np.int32)  # kept at build
                else:
                    probed = knn_cells.probes(q, cells["centroids"], n_probe)
                s, i = knn_cells.search(self._base, q, probed, kq, order=cells["order"], offsets=cells["offsets"], task=task)
                if drop_self_offset is not None:
                    s, i = _drop_self(s, i, drop_self_offset + rows)
                sims[rows], idx[rows] = _pad(s, i, k)
        return sims, idx

    def _ann_search(self, queries, kq, params, rerank: int | None = None):
        """One block of an approximate search; IVF-PQ re-ranks its best candidates by exact inner product."""
        queries = _f32(queries)
        rerank = self.rerank_.get(kq, self.ann.rerank) if rerank is None else rerank
        if self.method_ != "ivfpq" or not rerank:
            return self._index.search(queries, kq, params=params)
        _, cand = self._index.search(queries, _n_candidates(kq, rerank), params=params)
        return _rerank(self._base, queries, cand, kq)

    def _search_params(self, knob: int):
        if self.method_ == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=int(knob))
        if self.on_gpu_:  # GPU IVF takes nprobe on the index, not through SearchParameters
            self._index.nprobe = int(knob)
            return None
        return faiss.SearchParametersIVF(nprobe=int(knob))

    def _knob(self, kq, queries, drop_self_offset, progress) -> int:
        """efSearch (HNSW) or nprobe (IVF): given, or the smallest reaching ``target_recall``."""
        fixed = self.ann.ef_search if self.method_ == "hnsw" else self.ann.nprobe
        if fixed is not None:
            return max(fixed, kq) if self.method_ == "hnsw" else fixed
        if kq in self.tuned_:
            return self.tuned_[kq]
        knob, recall = self._tune(kq, queries, drop_self_offset, progress)
        if kq not in self._graph_sample:  # a cells graph warns after its refinement
            self._warn_recall(kq - (drop_self_offset is not None), recall)
        self.tuned_[kq] = knob
        self.recall_[kq] = recall
        return knob

    def _leave_cells(self, n_probe: int, recall: float, progress) -> None:
        """Rebuild as HNSW: the cells fit the rows too badly for probes and refinement to be cheap (CELLS_MIN_PROBE_RECALL)."""
        self.fell_back_ = (f"the cells method's tuning sample reached recall {recall:.3f} at {n_probe} probes, under "
                           f"{CELLS_MIN_PROBE_RECALL}: HNSW instead")
        self._cells = None
        self.method_ = "hnsw"
        self._index = self._build_hnsw(self._base, progress)

    def _warn_recall(self, k, recall) -> None:
        if recall >= self.ann.target_recall:
            return
        codes = " or longer IVF-PQ codes (a larger memory budget)" if self.method_ == "ivfpq" else ""
        warnings.warn(
            f"approximate kNN ({self.method_}) reached recall@{k} ~{recall:.3f} < {self.ann.target_recall} on a sample of "
            f"queries even at its most thorough setting; the data may have little neighbourhood structure. Use method='exact' "
            f"for exact neighbours{codes}.",
            LabelkitWarning,
            stacklevel=5,
        )

    def _tune(self, kq, queries, drop_self_offset, progress):
        """Geometric search over the knob on a sample (efSearch by sqrt(2), nprobe by 2; the cells' n_probe by sqrt(2),
        whose recall is read off the exact neighbours without searching); returns (knob, its sample recall)."""
        rng = np.random.default_rng(self.seed)
        n_s = min(self.ann.n_tune_queries, len(queries))
        rows = np.sort(rng.choice(len(queries), n_s, replace=False))
        sample = _f32(_prepare(queries[rows], "queries"))
        k = kq - (drop_self_offset is not None)
        with progress.task("knn: tune recall on a sample", total=n_s) as task:
            s, i = _exact_search_impl(self._base, sample, kq, batch_size=DEFAULT_BATCH_SIZE, device=self.device, task=task)
        if drop_self_offset is not None:
            s, i = _drop_self(s, i, drop_self_offset + rows)
        exact = _pad(s, i, k)[1]
        goal = min(1.0, self.ann.target_recall + _RECALL_MARGIN)
        if self.method_ == "cells":
            cells = self._cells
            ladder = knn_cells.probe_ladder(len(cells["centroids"]))
            recalls = knn_cells.probe_recall(exact, knn_cells.probes(sample, cells["centroids"], ladder[-1]), cells["cell_of"], ladder)
            best = next((j for j, r in enumerate(recalls) if r >= goal), len(ladder) - 1)
            cap = max(j for j, p in enumerate(ladder) if p <= knn_cells.GRAPH_MAX_PROBE)
            whole_graph = drop_self_offset == 0 and len(queries) == len(self._base)
            if whole_graph and self._may_leave_cells and recalls[cap] < min(goal, CELLS_MIN_PROBE_RECALL):
                self._leave_cells(ladder[cap], recalls[cap], progress)  # then tuned below as HNSW, on the same sample
            elif whole_graph and ladder[best] > knn_cells.GRAPH_MAX_PROBE:
                # a whole graph probes at most GRAPH_MAX_PROBE cells and is refined (_refine); ladder[best] if that falls short
                self._graph_sample[kq] = (rows, exact, ladder[best])
                return ladder[cap], recalls[cap]
            else:
                return ladder[best], recalls[best]
        if self.method_ == "hnsw":
            # efSearch up to 64x in steps of sqrt(2): search time grows with efSearch, and doubling
            # overshot the 1M x 128 graph's target by 2x (0.946 at 64, 0.972 at 128).
            knobs = sorted({round(max(16, kq) * 2 ** (j / 2)) for j in range(13)})
            knobs = [v for v in knobs if v <= max(1024, kq)] or [kq]
        else:
            nlist = self._index.nlist
            knobs = sorted({min(nlist, 2**j) for j in range(0, int(math.log2(max(1, nlist))) + 2)})
            knobs = [v for v in knobs if self.method_ == "ivf" or v <= IVFPQ_MAX_NPROBE]
        reranks = [self.ann.rerank]
        if self.method_ == "ivfpq" and self.ann.rerank:
            reranks += [self.ann.rerank * 2**j for j in range(1, 7) if self.ann.rerank * 2**j <= RERANK_MAX]
        for rerank in reranks:  # the cheapest list of candidates first; longer ones only where nprobe plateaus
            recall = 0.0
            for knob in knobs:
                s, i = self._ann_search(sample, kq, self._search_params(knob), rerank)
                if drop_self_offset is not None:
                    s, i = _drop_self(s, i, drop_self_offset + rows)
                recall = _recall_impl(_pad(s, i, k)[1], exact)
                if recall >= goal:
                    break
            if recall >= goal:
                break
        if rerank != self.ann.rerank:
            self.rerank_[kq] = rerank
        return knob, recall


def hnsw_ef_construction(n: int, d: int) -> int:
    """HNSW's efConstruction for ``n`` rows of dimension ``d``, from the measured trade-off curve.

    A self-kNN graph searches every row it builds, so the cost is build(efConstruction) plus
    n * search(efSearch), and with a sparse build the efSearch that reaches the recall target
    grows with n, fast in high dimension (docs/performance.md, "The HNSW trade-off curve"): with
    efConstruction 64, 512-d rows needed efSearch 32 at 100k, 64 at 300k and 512 at 1M (52
    CPU-minutes; the dense build took 31); 128-d rows needed 16 at 100k and 32 at 300k, where the
    dense build cost 2.4x as much in all, but at 1M (pseudolabel_scale's Gaussian classes) the
    sparse build stayed at recall 0.92 at efSearch 512 where the dense one reached 0.97 at 128
    for about 26 CPU-minutes. Between 300k and 1M rows of low dimension the switch (500k) is
    interpolated, not measured.

    >>> hnsw_ef_construction(300_000, 128), hnsw_ef_construction(1_000_000, 128), hnsw_ef_construction(300_000, 512)
    (64, 160, 64)
    """
    dense_from = HNSW_DENSE_BUILD_ROWS if d >= HNSW_DENSE_BUILD_DIM else HNSW_DENSE_BUILD_ROWS_LOW_DIM
    return 160 if n > dense_from else 64


def _auto_method(n_queries: int, n_base: int, device: _Device) -> str:
    """Exact search when it costs at most EXACT_MAX_PAIRS dot products, else an approximate index."""
    limit = EXACT_MAX_ROWS_GPU if device.faiss_gpu is not None else EXACT_MAX_ROWS
    if n_queries * n_base <= limit * limit:
        return "exact"
    if device.faiss_gpu is not None:
        return "ivf"
    # a large self-graph on CPU: the cells method, which refines a graph (a search of other queries cannot be)
    return "cells" if n_queries == n_base >= CELLS_MIN_ROWS else "hnsw"


def _ivf_nlist(n: int, nlist: int | None) -> int:
    """IVF cells: given, else 4 sqrt(n); at most n."""
    return max(1, min(nlist or int(np.clip(round(4 * math.sqrt(n)), 1, 65_536)), n))


def _cells_query_block(n_probe: int, kq: int, d: int) -> int:
    """Queries the cells method searches at once: their float32 rows, their probe lists sorted by cell
    (24 bytes a probe) and their slots (``kq`` neighbours of 12 bytes a probe) fill PROBE_BLOCK_BYTES."""
    return max(knn_cells.QUERY_CHUNK, knn_cells.PROBE_BLOCK_BYTES // (4 * d + max(1, n_probe) * (24 + 12 * kq)))


def _ivf_train_rows(n: int, nlist: int, *, pq: bool) -> int:
    """Rows of the k-means training sample: 64 per cell for IVF; for IVF-PQ, whose sample and its
    residuals are both held while training, 39 per cell (faiss's own minimum) and at least 2^16."""
    return min(n, max(39 * nlist, 1 << 16) if pq else 64 * nlist)


def _ivf_add_chunk(d: int, m: int, nbits: int) -> int:
    """Rows per IVF-PQ add: IVF_ADD_CHUNK, fewer when faiss encodes through a table (PQ_TABLE_BYTES)."""
    if d // m < 16:
        return IVF_ADD_CHUNK
    return int(np.clip(PQ_TABLE_BYTES // (2**nbits * m * 4), 256, IVF_ADD_CHUNK))


def _pq_nbits(n_train: int) -> int:
    """PQ_NBITS, or fewer when the training sample cannot fill 2^PQ_NBITS centroids."""
    return int(min(PQ_NBITS, max(1, math.floor(math.log2(max(2, n_train))))))


def default_pq_m(d: int) -> int:
    """IVF-PQ code bytes per row for dimension ``d``: the largest of PQ_M_CHOICES that divides ``d``
    and is at most ``d / PQ_DIMS_PER_BYTE`` (1 at least).

    >>> default_pq_m(128), default_pq_m(512), default_pq_m(100)
    (16, 64, 4)
    """
    return max(m for m in PQ_M_CHOICES if d % m == 0 and m <= max(1, d // PQ_DIMS_PER_BYTE))


def _rerank(base: np.ndarray, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each query's candidate rows ``cand`` (-1: none) by exact inner product with ``base``."""
    nq, c = cand.shape
    sims = np.empty((nq, c), np.float32)
    rows = max(1, RERANK_BLOCK_BYTES // max(1, c * base.shape[1] * 4))
    for s in range(0, nq, rows):
        block = base[np.maximum(cand[s : s + rows], 0)]  # (rows, c, d), gathered block by block
        sims[s : s + rows] = np.matmul(block, queries[s : s + rows, :, None])[:, :, 0]
    sims[cand < 0] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, c)]
    return np.take_along_axis(sims, top, axis=1), np.take_along_axis(cand, top, axis=1)


def _n_candidates(kq: int, rerank: int) -> int:
    """IVF-PQ candidates re-ranked per query."""
    return rerank * max(kq, RERANK_MIN_K)


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise BadInputError(f"'{name}' must be an integer >= 0. Got {value!r} instead.")
    return int(value)


def memory_estimate(
    method: str, n: int, d: int, k: int, *, n_queries: int | None = None, ann: AnnParams | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, result_rows: int | None = None,
) -> int:
    """Peak bytes that building an index of ``n`` rows of dimension ``d`` and searching it for ``k``
    neighbours of ``n_queries`` rows (default ``n``: the graph) adds to the embeddings themselves.

    The embeddings (``n * d * 4`` bytes as float32 unit rows, held by the caller or memory-mapped)
    are not counted. The model, term by term (``kq = k + 1``; ``G = 2``, the capacity of an array
    that faiss grows by doubling):

    * results: ``n_queries * k * 12`` (float32 + int64); exact search holds three (raw, self
      dropped, padded) of width ``kq``, an approximate one pads block by block into one;
    * exact: a ``min(batch_size, n_queries) * min(EXACT_BASE_BLOCK, n) * 4`` scratch tile;
    * hnsw: ``G * n * (4 d + 4 (2 M + 1))`` (its float32 copy of the rows and the links of level 0,
      2M per row, plus the upper levels) and ``12 n`` of level tables;
    * ivf: ``G * n * (4 d + 8)`` (rows and ids in the inverted lists), ``4 d nlist`` centroids, a
      training sample of ``64 nlist`` rows when it is a copy;
    * ivfpq: ``G * n * (pq_m + 8)`` (codes and ids), ``4 d (nlist + 2^PQ_NBITS)`` centroids; while
      training, the sample of ``max(39 nlist, 65536)`` rows (when a copy) and its residuals; while
      adding, one chunk's residuals (and, with 16 or more dimensions per code byte, its encoding
      table, at most PQ_TABLE_BYTES); while searching, one block of ``rerank * max(kq, 12)`` candidates
      (their ids and sims, and their rows gathered, at most RERANK_BLOCK_BYTES);
    * ivf and ivfpq: each block's probed cells, ``2 * batch * nprobe * 12`` at the largest nprobe
      tuning may pick (``nlist``; IVFPQ_MAX_NPROBE for ivfpq);
    * approximate indexes: a tuning tile of ``n_tune_queries * min(EXACT_BASE_BLOCK, n) * 4``, and
      FAISS_WORKING_BYTES.

    The peak is the index plus the larger of its build transients and its search (results and
    scratch). With ``G = 2`` it is an upper bound: an array's last doubling copy holds between
    1x and 2x its final size, by how ``n`` falls between powers of two of the add chunks. Measured
    peaks against it are in docs/performance.md ("IVF-PQ under a memory budget").

    Parameters
    ----------
    method : {"exact", "hnsw", "ivf", "ivfpq"}
    n, d, k : int
        Indexed rows, dimension, neighbours per query.
    n_queries : int or None, default=None
        Query rows; None: ``n`` (a kNN graph).
    ann : AnnParams or None, default=None
        ``hnsw_m``, ``nlist``, ``pq_m`` (None: :func:`default_pq_m`), ``rerank``, ``n_tune_queries``.
    batch_size : int, default=4096
        Query rows per block, as in :func:`knn_graph`.
    result_rows : int or None, default=None
        Query rows whose results are held at once, for a caller that searches in blocks and
        reduces each (novelty); None: ``n_queries``.

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> memory_estimate("exact", 1000, 8, 10)  # scratch 1000*1000*4 + 3 results 1000*11*12
    4396000
    >>> memory_estimate("ivfpq", 10**6, 128, 10) < memory_estimate("hnsw", 10**6, 128, 10) // 4
    True
    """
    if method not in METHODS or method == "auto":
        raise BadInputError(f"'method' must be one of exact, hnsw, ivf, ivfpq. Got {method!r} instead.")
    n, d, k = _check_count(n, "n"), _check_count(d, "d"), _check_count(k, "k")
    q = n if n_queries is None else _check_count(n_queries, "n_queries")
    held = q if result_rows is None else min(q, _check_count(result_rows, "result_rows"))
    ann = ann if ann is not None else AnnParams()
    batch = min(_check_batch_size(batch_size), max(held, 1))
    kq = k + 1
    if method == "exact":
        return batch * min(EXACT_BASE_BLOCK, n) * 4 + 3 * held * kq * 12
    tune = min(ann.n_tune_queries, q) * min(EXACT_BASE_BLOCK, n) * 4
    if method == "cells":
        nlist = _ivf_nlist(n, ann.nlist)
        n_train = min(n, max(nlist, knn_cells.TRAIN_ROWS_PER_CELL * nlist))
        tile_rows = max(64, min(65_536, knn_cells.ASSIGN_SCRATCH_BYTES // max(1, 4 * nlist)))
        near = knn_cells.GRAPH_MAX_PROBE * np.dtype(knn_cells.cell_dtype(nlist)).itemsize * n  # each row's nearest cells
        index = 16 * n + near + 4 * d * nlist + 8 * q  # the cell of each row, the rows by cell; centroids; queries by nearest cell
        build = n_train * d * 4 + min(tile_rows, n) * nlist * 4 + 12 * n  # the k-means sample, an assignment tile, the cells of n rows
        per_query = 4 * d + min(nlist, knn_cells.MAX_PROBE) * (24 + 12 * kq)  # as _cells_query_block, at the most probes tuning picks
        block = min(q * per_query, max(knn_cells.PROBE_BLOCK_BYTES, knn_cells.QUERY_CHUNK * per_query))
        cand = min(knn_cells.CANDIDATE_BLOCK, n)
        chunk = min(knn_cells.QUERY_CHUNK, max(q, 1))
        scan = chunk * cand * 4 * 2 + cand * d * 4 + chunk * d * 4 + min(tile_rows, max(q, 1)) * nlist * 4  # a product tile and its top-k; a probes tile
        tune += min(ann.n_tune_queries, q) * nlist * 4
        # a graph that falls back from refinement to more probes holds a second result while it copies
        return index + max(build, tune, 2 * held * k * 12 + block + scan)  # numpy and torch only: no faiss working memory
    block = 3 * batch * kq * 12  # one block's raw, self-dropped and padded results
    build = 0
    if method == "hnsw":
        index = _GROWTH * n * (4 * d + 4 * (2 * ann.hnsw_m + 1)) + 12 * n
    else:
        nlist = _ivf_nlist(n, ann.nlist)
        n_train = _ivf_train_rows(n, nlist, pq=method == "ivfpq")
        copy = n_train * d * 4 if n_train < n else 0
        block += 2 * batch * (nlist if method == "ivf" else min(nlist, IVFPQ_MAX_NPROBE)) * 12  # the cells each query probes
        if method == "ivf":
            index = _GROWTH * n * (4 * d + 8) + 4 * d * nlist
            build = copy
        else:
            m = ann.pq_m or default_pq_m(d)
            index = _GROWTH * n * (m + 8) + 4 * d * (nlist + 2**PQ_NBITS)
            chunk = min(_ivf_add_chunk(d, m, PQ_NBITS), n)
            table = chunk * 2**PQ_NBITS * m * 4 if d // m >= 16 else 0
            build = max(copy + n_train * d * 4, chunk * (4 * d + 8 + m) + table)
            cand = _n_candidates(kq, ann.rerank)  # a longer list that tuning picks is searched in proportionally smaller batches
            block += (batch * cand * 12 + min(RERANK_BLOCK_BYTES, batch * cand * d * 4)) if ann.rerank else 0
    return index + max(build, tune, held * k * 12 + block) + FAISS_WORKING_BYTES


def _fmt_bytes(b: float) -> str:
    """'1.2 GB', '500 MB', '12 kB' (powers of 1000, as the memory budget is written)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{int(b)} B"


@dataclass(frozen=True)
class MethodChoice:
    """What :func:`choose_method` picked, and why.

    Attributes
    ----------
    method : {"exact", "hnsw", "ivf", "ivfpq"}
    pq_m : int or None
        IVF-PQ code bytes per row (None for the other methods).
    estimate_bytes : int
        :func:`memory_estimate` of the choice.
    memory_budget : int or None
        The budget in bytes (None: none).
    reason : str
        One sentence, for summaries and logs.
    cells_fallback : bool
        ``auto`` chose the cells method by size and HNSW fits too: a graph whose cells fit the rows
        badly is built with HNSW instead (:class:`AnnParams`).
    """

    method: str
    pq_m: int | None
    estimate_bytes: int
    memory_budget: int | None
    reason: str
    cells_fallback: bool = False

    def ann(self, ann: AnnParams | None = None) -> AnnParams:
        """``ann`` (default ``AnnParams()``) with this choice's ``pq_m`` and ``cells_fallback``."""
        ann = ann if ann is not None else AnnParams()
        ann = dataclasses.replace(ann, cells_fallback=True) if self.cells_fallback else ann
        return dataclasses.replace(ann, pq_m=self.pq_m) if self.pq_m is not None else ann

    def to_dict(self) -> dict:
        """What summaries report: the index and why (``cells_fallback`` is an instruction to the index, not a result)."""
        out = dataclasses.asdict(self)
        del out["cells_fallback"]
        return out


def choose_method(
    n: int, d: int, k: int, *, method: Method = "auto", memory_budget: int | None = None, n_queries: int | None = None,
    device: str = "auto", ann: AnnParams | None = None, batch_size: int = DEFAULT_BATCH_SIZE, result_rows: int | None = None,
    auto_budget: bool = False,
) -> MethodChoice:
    """The kNN method for ``n`` rows of dimension ``d`` and ``k`` neighbours, under a memory budget.

    ``"auto"`` takes today's choice (exact up to EXACT_MAX_ROWS rows, else on CPU HNSW, or cells for
    a graph of CELLS_MIN_ROWS rows or more, IVF on a faiss GPU) when :func:`memory_estimate` says it fits in ``memory_budget``, else IVF-PQ with the
    largest code (at most ``ann.pq_m`` or :func:`default_pq_m`) that fits. A named method is kept
    if it fits (IVF-PQ shrinking its code to fit when ``ann.pq_m`` is None).

    Parameters
    ----------
    n, d, k : int
        Indexed rows, dimension, neighbours.
    method : {"auto", "exact", "hnsw", "ivf", "ivfpq"}, default="auto"
    memory_budget : int or None, default=None
        Bytes the kNN layer may add to the embeddings (see :func:`memory_estimate`); None or 0:
        no budget.
    n_queries : int or None, default=None
        None: ``n`` (a kNN graph).
    device : str, default="auto"
        As in :func:`knn_graph`; it moves ``"auto"``'s choice (IVF and a higher exact limit on a
        faiss GPU). Estimates are of host memory, as if on CPU.
    ann : AnnParams or None, default=None
    batch_size : int, default=4096
    result_rows : int or None, default=None
        As in :func:`memory_estimate`: ``n_queries`` sets the work (exact or approximate), this
        the results held at once.
    auto_budget : bool, default=False
        ``memory_budget`` was derived from this machine's free memory (``--memory-budget auto``):
        when the index chosen by size fits, the choice is the one without a budget (``memory_budget``
        None in it), so that two runs on the same data record the same choice whatever was free.

    Returns
    -------
    MethodChoice

    Raises
    ------
    BadInputError
        When nothing fits: the message says what the index chosen by size and the smallest IVF-PQ index need.

    Examples
    --------
    >>> choose_method(100_000, 128, 10, device="cpu").method
    'hnsw'
    >>> c = choose_method(100_000, 128, 10, memory_budget=100_000_000, device="cpu")
    >>> c.method, c.pq_m
    ('ivfpq', 16)
    """
    n, d, k = _check_count(n, "n"), _check_count(d, "d"), _check_count(k, "k")
    budget = None if memory_budget in (None, 0) else _check_count(memory_budget, "memory_budget")
    q = n if n_queries is None else _check_count(n_queries, "n_queries")
    ann = ann if ann is not None else AnnParams()
    wanted = _check_method(method)
    dev = _resolve_device(device)
    device_is_cpu = dev.faiss_gpu is None  # the cells method runs on CPU; a faiss GPU takes IVF-PQ
    first = _auto_method(q, n, dev) if wanted == "auto" else wanted
    why = f"auto: {first} for {n:,} x {d}" if wanted == "auto" else f"method {first} given"
    first_m = (ann.pq_m or default_pq_m(d)) if first == "ivfpq" else None
    need = memory_estimate(first, n, d, k, n_queries=q, ann=dataclasses.replace(ann, pq_m=first_m), batch_size=batch_size, result_rows=result_rows)
    fallback = wanted == "auto" and first == "cells" and (
        budget is None or memory_estimate("hnsw", n, d, k, n_queries=q, ann=ann, batch_size=batch_size, result_rows=result_rows) <= budget)
    if budget is None:
        return MethodChoice(first, first_m, need, None, why, fallback)
    if need <= budget:
        if auto_budget:
            return MethodChoice(first, first_m, need, None, why, fallback)
        return MethodChoice(first, first_m, need, budget, f"{why}: needs about {_fmt_bytes(need)}, within the memory budget of {_fmt_bytes(budget)}",
                            fallback)
    if wanted not in ("auto", "ivfpq") or (wanted == "ivfpq" and ann.pq_m is not None):
        raise BadInputError(
            f"method {first} needs about {_fmt_bytes(need)} for a kNN graph of {n:,} x {d} with k={k}, over the memory budget of "
            f"{_fmt_bytes(budget)}; use method 'auto' (IVF-PQ when the budget needs it) or give a larger budget"
        )
    named = f"memory budget of {_fmt_bytes(budget)}" + (" (auto: half the memory available)" if auto_budget else "")
    cells = None
    if wanted == "auto" and device_is_cpu and first == "cells":  # size chose cells: HNSW may still fit (a cells block is 1 GiB)
        hnsw = memory_estimate("hnsw", n, d, k, n_queries=q, ann=ann, batch_size=batch_size, result_rows=result_rows)
        if hnsw <= budget:
            return MethodChoice("hnsw", None, hnsw, budget, f"{named}: {first} needs about {_fmt_bytes(need)}, so HNSW (about {_fmt_bytes(hnsw)})")
        cells = need
    elif wanted == "auto" and device_is_cpu:
        cells = memory_estimate("cells", n, d, k, n_queries=q, ann=ann, batch_size=batch_size, result_rows=result_rows)
        if cells <= budget:
            return MethodChoice("cells", None, cells, budget, f"{named}: {first} needs about {_fmt_bytes(need)}, so exact search "
                                f"within each query's nearest cells, which holds no copy of the rows (about {_fmt_bytes(cells)})")
    sizes = [m for m in PQ_M_CHOICES if d % m == 0 and m <= (ann.pq_m or default_pq_m(d))][::-1]
    for m in sizes:
        est = memory_estimate("ivfpq", n, d, k, n_queries=q, ann=dataclasses.replace(ann, pq_m=m), batch_size=batch_size,
                              result_rows=result_rows)
        if est <= budget:
            return MethodChoice("ivfpq", m, est, budget, f"{named}: {first} needs about {_fmt_bytes(need)}, "
                                f"so IVF-PQ with {m}-byte codes (about {_fmt_bytes(est)})")
    least = min(need, est, cells or est)
    raise BadInputError(
        f"'memory_budget' of {_fmt_bytes(budget)} is too small for a kNN graph of {n:,} x {d} with k={k}: {first} needs about "
        f"{_fmt_bytes(need)}, {f'the cells method about {_fmt_bytes(cells)}, ' if cells else ''}IVF-PQ with {sizes[-1]}-byte codes "
        f"about {_fmt_bytes(est)}; give at least {_fmt_bytes(least * 1.01)}, or 0 for no budget"
    )


def _drop_self(s: np.ndarray, i: np.ndarray, self_rows) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (``self_rows[r]``) from its neighbours; keep order, drop one.

    Exact duplicates tie at similarity 1, so the query's own row is matched by index, never by
    similarity. Rows where self is absent lose their last (least similar) neighbour instead.
    """
    self_rows = np.asarray(self_rows, dtype=np.int64)
    is_self = i == self_rows[:, None]
    # push the first self hit (or the last column) to the end with a stable sort, then cut it
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), i.shape[1] - 1)
    keep = np.ones(i.shape, bool)
    keep[np.arange(len(i)), drop] = False
    order = np.argsort(~keep, axis=1, kind="stable")[:, :-1]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _pad(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape (n, k): pad with -inf / -1 and mark faiss's missing entries the same way."""
    n, kk = i.shape
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    m = min(k, kk)
    sims[:, :m] = s[:, :m]
    idx[:, :m] = i[:, :m]
    sims[idx < 0] = -np.inf
    return sims, idx


# ----------------------------------------------------------------------------------------------
# public functions


def knn_graph(
    embeddings,
    k: int,
    *,
    method: Method = "auto",
    exclude_self: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str = "auto",
    ann: AnnParams | None = None,
    memory_budget: int | None = None,
    progress: Progress = NULL,
) -> tuple[np.ndarray, np.ndarray]:
    """The k-nearest-neighbour graph of a set of embeddings under cosine similarity.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Rows are L2-normalised if they are not already.
    k : int
        Neighbours per row. When fewer exist (``k >= n_samples``), the rest is padded with
        index -1 and similarity -inf.
    method : {"auto", "exact", "hnsw", "ivf", "ivfpq"}, default="auto"
        ``"auto"``: exact for ``n_samples <= EXACT_MAX_ROWS`` (50k; 200k on a faiss GPU), else
        HNSW on CPU / IVF on a faiss GPU, tuned to ``ann.target_recall``; IVF-PQ when that
        does not fit ``memory_budget`` (:func:`choose_method`).
    exclude_self : bool, default=True
        Remove each row from its own neighbours, by row index (exact duplicates of a row are kept
        as neighbours).
    batch_size : int, default=4096
        Queries per block; exact search uses ``batch_size * 16384 * 4`` bytes of scratch (256 MB
        at the default).
    seed : int, default=0
        Seeds the tuning sample and IVF training; HNSW's parallel build is not bit-reproducible.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ann : AnnParams or None, default=None
        Approximate-index parameters.
    memory_budget : int or None, default=None
        Bytes the kNN layer may use beyond the embeddings (:func:`memory_estimate`); None or 0:
        no budget. A BadInputError when even IVF-PQ cannot fit.
    progress : Progress, default=NULL

    Returns
    -------
    sims : ndarray of shape (n_samples, k), float32
        Cosine similarity to each neighbour, descending.
    idx : ndarray of shape (n_samples, k), int64
        Row indices of the neighbours.

    References
    ----------
    Malkov, Yashunin, "Efficient and robust approximate nearest neighbor search using
    Hierarchical Navigable Small World graphs", IEEE TPAMI 2018.
    Johnson, Douze, Jegou, "Billion-scale similarity search with GPUs", IEEE TBD 2019.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    >>> sims, idx = knn_graph(x, 1, device="cpu")
    >>> idx[:, 0].tolist()
    [1, 0, 1]
    """
    x = _prepare(embeddings, "embeddings")
    k = _check_k(k)
    batch_size = _check_batch_size(batch_size)
    choice = choose_method(*x.shape, k, method=method, memory_budget=memory_budget, device=device, ann=ann, batch_size=batch_size)
    index = KnnIndex(choice.method, device=device, ann=choice.ann(ann), seed=seed)
    index._build_impl(x, progress=progress)
    return index._search_impl(
        x, k, batch_size=batch_size, progress=progress, drop_self_offset=0 if exclude_self else None
    )


def search(
    index_embeddings,
    queries,
    k: int,
    *,
    method: Method = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str = "auto",
    ann: AnnParams | None = None,
    memory_budget: int | None = None,
    progress: Progress = NULL,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of each query in a base set (no self-exclusion).

    Parameters
    ----------
    index_embeddings : ndarray of shape (n_base, dim)
    queries : ndarray of shape (n_queries, dim)
    k : int
        Neighbours per query; when ``k > n_base`` the rest is padded with -1 / -inf.
    method : {"auto", "exact", "hnsw", "ivf", "ivfpq"}, default="auto"
        ``"auto"``: exact when ``n_queries * n_base <= EXACT_MAX_PAIRS`` (50k squared; building
        an index does not pay for a few queries), else approximate (HNSW on CPU, IVF on GPU;
        IVF-PQ when that does not fit ``memory_budget``).
    batch_size, seed, device, ann, memory_budget, progress
        As in :func:`knn_graph`.

    Returns
    -------
    sims : ndarray of shape (n_queries, k), float32
    idx : ndarray of shape (n_queries, k), int64
        Row indices into ``index_embeddings``.

    References
    ----------
    Malkov, Yashunin, IEEE TPAMI 2018 (HNSW); Johnson, Douze, Jegou, IEEE TBD 2019 (faiss).

    Examples
    --------
    >>> base = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    >>> sims, idx = search(base, np.array([[0.6, 0.8]], dtype=np.float32), 2, device="cpu")
    >>> idx.tolist(), [round(float(v), 2) for v in sims[0]]
    ([[1, 0]], [0.8, 0.6])
    """
    base = _prepare(index_embeddings, "index_embeddings")
    q = _prepare(queries, "queries")
    if q.shape[1] != base.shape[1]:
        raise BadInputError(f"'queries' must have dim {base.shape[1]} like 'index_embeddings'. Got {q.shape[1]} instead.")
    k = _check_k(k)
    batch_size = _check_batch_size(batch_size)
    choice = choose_method(*base.shape, k, method=method, memory_budget=memory_budget, n_queries=len(q), device=device, ann=ann,
                           batch_size=batch_size)
    index = KnnIndex(choice.method, device=device, ann=choice.ann(ann), seed=seed)
    index._build_impl(base, progress=progress)
    return index._search_impl(q, k, batch_size=batch_size, progress=progress)


def recall_at_k(approx_idx, exact_idx) -> float:
    """Mean fraction of each row's exact neighbours that the approximate search found.

    Parameters
    ----------
    approx_idx : ndarray of shape (n, k_approx), int
    exact_idx : ndarray of shape (n, k), int
        ``-1`` entries are ignored; rows without any exact neighbour are skipped.

    Returns
    -------
    float
        Recall@k in [0, 1] (1.0 when there is nothing to find).

    Examples
    --------
    >>> recall_at_k(np.array([[1, 2], [0, 3], [0, 1]]), np.array([[1, 2], [0, 2], [1, 0]]))
    0.8333333333333334
    """
    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.ndim != 2 or e.ndim != 2:
        raise BadInputError(f"'approx_idx' and 'exact_idx' must be 2-D. Got shapes {a.shape} and {e.shape} instead.")
    if len(a) != len(e):
        raise BadInputError(f"'approx_idx' must have {len(e)} rows like 'exact_idx'. Got {len(a)} instead.")
    return _recall_impl(a, e)


def _recall_impl(a: np.ndarray, e: np.ndarray) -> float:
    found = 0
    total = 0
    for s in range(0, len(e), 65_536):  # (rows, k, k) comparisons, chunked
        ea, aa = e[s : s + 65_536], a[s : s + 65_536]
        valid = ea >= 0
        hit = (aa[:, :, None] == ea[:, None, :]).any(axis=1) & valid
        found += int(hit.sum())
        total += int(valid.sum())
    return found / total if total else 1.0


def kmeans(
    x,
    n_clusters: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    spherical: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means through ``faiss.Kmeans``; spherical (unit centroids, cosine) by default.

    Parameters
    ----------
    x : ndarray of shape (n_samples, dim)
        With ``spherical=True`` rows are L2-normalised if they are not already.
    n_clusters : int
        At most ``n_samples``.
    n_iter : int, default=20
    seed : int, default=0
        Seeds the initial centroids (a sample of ``x``).
    spherical : bool, default=True
        Normalise centroids after each step and assign by cosine (Dhillon & Modha 2001).

    Returns
    -------
    centroids : ndarray of shape (n_clusters, dim), float32
    assignment : ndarray of shape (n_samples,), int64
        Nearest centroid of each row (some clusters may end up empty when ``x`` has duplicates).

    References
    ----------
    Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 1982.
    Dhillon, Modha, "Concept decompositions for large sparse text data using clustering",
    Machine Learning 2001 (spherical k-means).

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    >>> centroids, assignment = kmeans(x, 2)
    >>> bool(assignment[0] == assignment[1] != assignment[2])
    True
    """
    x = check_embeddings(x, name="x")
    if spherical:
        x = unit_embeddings(x, name="x")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise BadInputError(f"'n_clusters' must be a positive integer. Got {n_clusters!r} instead.")
    if n_clusters > len(x):
        raise BadInputError(f"'n_clusters' must be <= n_samples={len(x)}. Got {n_clusters!r} instead.")
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise BadInputError(f"'n_iter' must be a positive integer. Got {n_iter!r} instead.")
    return _kmeans_impl(x, int(n_clusters), n_iter=int(n_iter), seed=int(seed), spherical=bool(spherical))


def _kmeans_impl(x, n_clusters, *, n_iter, seed, spherical):
    km = faiss.Kmeans(
        x.shape[1],
        n_clusters,
        niter=n_iter,
        seed=seed,
        spherical=spherical,
        verbose=False,
        min_points_per_centroid=1,  # faiss otherwise warns on stderr about small training sets
        max_points_per_centroid=1 << 30,  # use every point, no subsampling
    )
    km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    if spherical:
        centroids = l2_normalize(centroids)
        assignment = np.empty(len(x), np.int64)
        for s in range(0, len(x), 65_536):
            assignment[s : s + 65_536] = np.argmax(x[s : s + 65_536] @ centroids.T, axis=1)
    else:
        assignment = km.index.search(x, 1)[1][:, 0].astype(np.int64)
    return centroids, assignment


__all__ = [
    "AnnParams",
    "EXACT_MAX_PAIRS",
    "EXACT_MAX_ROWS",
    "KnnIndex",
    "MethodChoice",
    "choose_method",
    "default_pq_m",
    "faiss_gpu_available",
    "hnsw_ef_construction",
    "kmeans",
    "knn_graph",
    "memory_estimate",
    "recall_at_k",
    "search",
]
