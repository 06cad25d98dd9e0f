"""Choosing an embedder on evidence: how well each candidate's vectors separate the labeled classes.

Pure computation (numpy in, numpy out). The embed stage embeds a capped, stratified sample of the
labeled samples with every candidate, scores each by leave-one-out kNN accuracy on that sample, and
keeps the best; a cheaper candidate wins a near tie. The same score, on the final vectors, is the
health check that warns when an embedding separates the classes poorly.

Leave-one-out kNN accuracy is the score because it is what the downstream stages rely on (a kNN
graph, prototypes): a backbone whose neighbours share labels propagates them well. On CIFAR-10
photos it separates grey pixels (~0.3) from EfficientNet-Lite0 (~0.8); on 8x8 digits it prefers
raw pixels (0.97) to an ImageNet backbone seeing an upsampled blur (~0.9).
"""

from __future__ import annotations

import numpy as np

from labelkit.errors import BadInputError

SCORE_K = 10


def stratified_sample(labels: np.ndarray, *, per_class: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``per_class`` labeled rows of each class, at most ``cap`` in all, sorted.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        int class codes, -1 for unlabeled (never drawn).
    per_class, cap : int
        Limits; when ``cap`` binds, every class keeps an equal share (rounded down, at least 1).
    rng : numpy Generator

    Examples
    --------
    >>> stratified_sample(np.array([0, 0, 0, 1, 1, -1]), per_class=2, cap=10, rng=np.random.default_rng(0)).size
    4
    """
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if classes.size == 0:
        return np.zeros(0, dtype=np.int64)
    per = max(1, min(per_class, cap // classes.size))
    picked = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        picked.append(rows if rows.size <= per else rng.choice(rows, per, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def loo_knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, *, k: int = SCORE_K) -> float:
    """Leave-one-out accuracy of a similarity-weighted kNN vote among the given rows.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, dim)
        Unit-norm rows (cosine similarity is their dot product).
    labels : ndarray of shape (n_samples,)
        int class codes, all >= 0.
    k : int, default=10
        Neighbours voting (fewer when there are fewer other rows).

    Returns
    -------
    float in [0, 1]: share of rows whose neighbours' vote (weights max(cos, 0) + 1e-6, ties to the
    nearest neighbour's class) is their own label.

    Examples
    --------
    >>> x = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    >>> loo_knn_accuracy(x, np.array([0, 0, 1, 1]), k=1)
    1.0
    """
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    n = len(y)
    if x.ndim != 2 or len(x) != n:
        raise BadInputError(f"'embeddings' must be (n_samples, dim) with one row per label. Got {x.shape} for {n} labels instead.")
    if n < 2:
        raise BadInputError(f"leave-one-out needs at least 2 samples. Got {n} instead.")
    if y.min() < 0:
        raise BadInputError("'labels' must all be >= 0 (labeled rows only).")
    k = min(k, n - 1)
    codes, y = np.unique(y, return_inverse=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sim, nn, axis=1), 0.0) + 1e-6
    votes = np.zeros((n, codes.size))
    np.add.at(votes, (np.repeat(np.arange(n), k), y[nn].reshape(-1)), w.reshape(-1))
    # A tied vote goes to the nearest neighbour's class.
    nearest = y[np.argmax(sim, axis=1)]
    best = votes.max(axis=1, keepdims=True)
    pred = np.where(votes[np.arange(n), nearest] >= best[:, 0], nearest, votes.argmax(axis=1))
    return float(np.mean(pred == y))


def pick(scores: dict[str, float], *, tie: float) -> str:
    """The best-scoring candidate; ``scores`` is ordered cheapest first, and a candidate within ``tie``
    of the best that comes earlier (cheaper) wins.

    Examples
    --------
    >>> pick({"pixels": 0.95, "efficientnet-lite0": 0.955}, tie=0.01)
    'pixels'
    """
    if not scores:
        raise BadInputError("no embedder candidate to choose from")
    best = max(scores.values())
    return next(spec for spec, s in scores.items() if s >= best - tie)


def score_candidates(candidates: list[tuple[str, str | None]], sources: list[str], labels: np.ndarray, *, batch_size: int | None,
                     device: str, allow_download: bool, tie: float, progress=None) -> tuple[dict, tuple | None]:
    """Embed ``sources`` (paths or texts, labeled ``labels``) with each (spec, weights) candidate and keep the best.

    Every candidate is scored by leave-one-out kNN accuracy on the rows all of them could read; a
    cheaper candidate (earlier in the list) within ``tie`` wins. A candidate that cannot run is
    recorded with its error. Returns the choice record (chosen, weights, by, scores, seconds) and
    (embedder, readable mask, L2-normalised vectors) of the chosen one, whose vectors can be reused.
    """
    import time

    from labelkit._progress import NULL
    from labelkit._validation import l2_normalize
    from labelkit.embedders import EmbedderOptions, create_embedder
    from labelkit.embedding import embed_some
    from labelkit.errors import LabelkitError

    scores: dict[str, dict] = {}
    embedded: dict[str, tuple] = {}
    with (progress or NULL).task("choose embedder", total=len(candidates) * len(sources)) as task:
        for spec, weights in candidates:
            t0 = time.perf_counter()
            try:
                emb = create_embedder(spec, EmbedderOptions(weights=weights, device=device, allow_download=allow_download))
                ok, vecs = embed_some(emb, sources, batch_size)
            except LabelkitError as e:
                scores[spec] = {"score": None, "error": str(e)}
                task.advance(len(sources))
                continue
            task.advance(len(sources))
            embedded[spec] = (emb, ok, vecs)
            scores[spec] = {"seconds": round(time.perf_counter() - t0, 2), "weights": weights}
    if not embedded:
        raise BadInputError("no embedder candidate could run: " + "; ".join(f"{k}: {v.get('error')}" for k, v in scores.items()))
    common = np.logical_and.reduce([embedded[s][1] for s in embedded])
    for spec, (_, ok, vecs) in embedded.items():
        scores[spec]["score"] = round(loo_knn_accuracy(l2_normalize(vecs[common[ok]]), labels[common]), 4)
        scores[spec]["n"] = int(common.sum())
    chosen = pick({s: scores[s]["score"] for s in embedded}, tie=tie)
    emb, ok, vecs = embedded[chosen]
    record = {
        "chosen": chosen, "weights": scores[chosen].pop("weights"),
        "by": f"leave-one-out {SCORE_K}-NN accuracy on {int(common.sum())} labeled samples",
        "scores": {k: {kk: vv for kk, vv in v.items() if kk != "weights"} for k, v in scores.items()},
        "seconds": round(sum(v.get("seconds", 0) for v in scores.values()), 2),
    }
    return record, (emb, ok, l2_normalize(vecs))
