"""The teacher: class prototypes, seed cleaning and scoring behind one ``fit`` / ``predict_proba`` pair.

This is the prototype and pseudolabel stages' recipe as a compute object (scikit-learn's
estimator shape; arrays in, arrays out, no files): the stages call it on the workspace's
arrays, and distill's refit teacher calls it again with some labels hidden (:class:`Relabeler`).
The teacher is transductive, as label spreading is: it scores the rows it was fitted on.

>>> import numpy as np
>>> x = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [0.98, 0.2], [0.2, 0.98]], np.float32)
>>> x /= np.linalg.norm(x, axis=1, keepdims=True)
>>> t = Teacher(pseudolabel=PseudolabelConfig(k=2, calibration_folds=0, probe_weights=()),
...             prototype=PrototypeConfig(clean=False)).fit(x, np.array([0, 0, 1, 1, -1, -1]))
>>> t.predict_proba().argmax(axis=1).tolist()
[0, 0, 1, 1, 0, 1]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from labelkit import prototypes, seeds
from labelkit import pseudolabel as compute
from labelkit._probability import topk_to_dense
from labelkit._progress import NULL, Progress
from labelkit.config import PrototypeConfig, PseudolabelConfig
from labelkit.errors import BadInputError


class Built(NamedTuple):
    """What :func:`build_prototypes` returns."""

    protos: prototypes.Prototypes
    n_dropped: int  # labeled samples the clean check left out
    n_iter: int  # refinement iterations
    n_doubted: int  # labeled samples the clean check doubted (= n_dropped unless it stood down)


def build_prototypes(vectors: np.ndarray, labels: np.ndarray, n_classes: int, cfg: PrototypeConfig, text: np.ndarray | None,
                     *, model: str | None = None, progress: Progress = NULL) -> Built:
    """Prototypes from ``labels`` (-1 = unlabeled), cleaned and refined as the prototype stage does.

    Parameters
    ----------
    vectors : ndarray of shape (n_samples, dim), unit-norm
    labels : ndarray of shape (n_samples,), -1 = unlabeled
    n_classes : int
    cfg : PrototypeConfig
    text : ndarray of shape (n_classes, dim) or None
        Class-name embeddings (a text tower), for text prototypes and zero-shot.
    model : str, optional
        The embedder's name, for the message when nothing is labeled and there is no text tower.
    progress : Progress, optional
        Bars for the labeled rows' kNN graph (cleaning).
    """
    labeled = labels >= 0
    kept, n_doubted = labels, 0
    if labeled.any() and cfg.clean and labeled.sum() > 2:
        keep = prototypes.select_clean(vectors, labels, k=cfg.k, min_agreement=cfg.min_agreement, progress=progress)
        n_doubted = int((labeled & ~keep).sum())
        # Past max_drop the disagreement is the embedding's, not the labels' (CIFAR-10 photos with 10
        # labels a class: 71 of 100 labels "unclean" under EfficientNet-Lite0): keep every label.
        if n_doubted <= cfg.max_drop * labeled.sum():
            kept = np.where(keep, labels, -1)
    protos, n_iter = _finish(vectors, kept, labels < 0, n_classes, cfg, text, model=model)
    return Built(protos, int((labeled & (kept < 0)).sum()), n_iter, n_doubted)


def _finish(vectors, kept, unlabeled_rows, n_classes, cfg, text, *, model=None) -> tuple[prototypes.Prototypes, int]:
    """Prototypes from the ``kept`` labels (or class names alone), refined on the unlabeled rows."""
    if (kept >= 0).any():
        protos = prototypes.class_prototypes(vectors, kept, n_classes, n_per_class=cfg.n_per_class, seed=cfg.seed)
        if text is not None and cfg.text_weight > 0:
            protos = prototypes.fuse_text(protos, text, weight=cfg.text_weight)
    elif text is not None:
        protos = prototypes.text_prototypes(text)  # zero-shot: class names only
    else:
        raise BadInputError(
            f"prototype: no sample is labeled and model '{model}' has no text tower for class names; "
            "label some samples, or embed with a text-tower model (minilm, clip:...) for zero-shot"
        )
    missing = sorted(set(range(n_classes)) - set(protos.classes.tolist()))
    if missing and text is not None:
        protos = prototypes.fuse_text(protos, text, weight=0.0)  # adds text prototypes for classes with none
    n_iter = 0
    unlabeled = np.flatnonzero(unlabeled_rows)  # read in blocks by refine_transductive, not gathered (9 GB at 10M x 512)
    if cfg.refine and len(unlabeled) and cfg.max_iter > 0:
        protos, n_iter = prototypes.refine_transductive(
            protos, vectors, rows=unlabeled, temperature=cfg.refine_temperature, min_confidence=cfg.min_confidence, max_iter=cfg.max_iter
        )
    return protos, n_iter


def prototypes_from_columns(class_names: list[str], vectors: np.ndarray, support: np.ndarray, kind: np.ndarray,
                            classes: list[str]) -> prototypes.Prototypes:
    """prototypes.parquet's columns (class names, vectors, support, kind) as :class:`labelkit.prototypes.Prototypes`."""
    index = {c: i for i, c in enumerate(classes)}
    cls = np.array([index[c] for c in class_names], dtype=np.int64)
    return prototypes.Prototypes(np.asarray(vectors, dtype=np.float32), cls, np.asarray(support), np.asarray(kind), len(classes))


class Clock:
    """Wall time of each phase, in seconds."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now_ = time.perf_counter()
        self.laps[name] = round(now_ - self._last, 2)
        self._last = now_


def pseudolabel_options(cfg: PseudolabelConfig) -> compute.PseudolabelOptions:
    """The compute options (labelkit.pseudolabel.PseudolabelOptions) a pseudolabel config gives."""
    return compute.PseudolabelOptions.from_config(cfg)  # the key mapping lives with the options class


def teach(vectors, labels, n_classes: int, graph, protos, text, cfg: PseudolabelConfig, *, task=None, clock=None,
          accept_rows=None):
    """(PseudolabelResult, dropped seeds mask): seed cleaning, then the scoring pass.

    ``accept_rows`` are the rows the threshold rule accepts among (default: those unlabeled after
    seed cleaning); the pseudolabel stage passes the rows it writes, so acceptance is computed once.
    """
    options = pseudolabel_options(cfg)
    dropped, cal = np.zeros(len(labels), bool), None
    if task is not None:
        task.update(step="clean seeds")
    if cfg.clean_seeds:
        labels, dropped, cal = seeds.clean_and_calibrate(vectors, labels, n_classes, graph, protos, text_prototypes=text,
                                                         options=options, odds=cfg.clean_seeds_odds)
    if clock is not None:
        clock.lap("clean_seeds")
    if task is not None:
        task.advance()
        task.update(step="score")
    # With every seed kept, the folds just scored are those the final pass would score again.
    reuse = cal if cal is not None and not dropped.any() else None
    del cal  # (n_labeled, K) held-out probabilities: not kept through the final pass unless reused
    # --max-error certifies on held-out rows: score the unlabeled rows the same way (labelkit.guarantee).
    r = compute.pseudolabel(vectors, labels, n_classes, graph, protos, text_prototypes=text, options=options, calibration=reuse,
                            accept_rows=accept_rows, unlabeled_by_fold=cfg.max_error is not None)
    if clock is not None:
        clock.lap("score")
    if task is not None:
        task.advance()
    return r, dropped


class Teacher:
    """Prototypes + seed cleaning + scoring: the pseudo-labeling recipe as an estimator.

    Parameters
    ----------
    pseudolabel : PseudolabelConfig, default=PseudolabelConfig()
        Scoring, calibration, seed cleaning and threshold options (``k`` = graph neighbours).
    prototype : PrototypeConfig, default=PrototypeConfig()
        How prototypes are built when :meth:`fit` is not given them.

    Attributes (after fit)
    ----------------------
    prototypes_ : Prototypes
    result_ : labelkit.pseudolabel.PseudolabelResult
        Every row's probabilities, label, confidence, margin, soft label; ``accepted`` among the
        rows unlabeled in the ``labels`` given to fit.
    seeds_dropped_ : ndarray of shape (n_samples,), bool
        Labeled rows seed cleaning set aside (scored as unlabeled).
    timings_ : dict of str to float
        Seconds per phase: knn_graph (when built here), clean_seeds, score.
    """

    def __init__(self, *, pseudolabel: PseudolabelConfig | None = None, prototype: PrototypeConfig | None = None) -> None:
        self.pseudolabel = pseudolabel if pseudolabel is not None else PseudolabelConfig()
        self.prototype = prototype if prototype is not None else PrototypeConfig()

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None, graph=None,
            text: np.ndarray | None = None, prototypes: prototypes.Prototypes | None = None, progress: Progress = NULL,
            model: str | None = None) -> Teacher:
        """Fit on ``embeddings`` (N, D) unit-norm and ``labels`` (N,) with -1 for unlabeled.

        ``graph``: (sims, idx) of shape (N, >= k), self excluded (built here when None); ``text``:
        (K, D) class-name embeddings; ``prototypes``: use these instead of building them.
        """
        labels = np.asarray(labels, dtype=np.int64)
        if embeddings.ndim != 2 or len(embeddings) != len(labels):
            raise BadInputError(f"'embeddings' must be (n_samples, dim) with one row per label. Got {embeddings.shape} for {len(labels)} labels instead.")
        n_cls = int(n_classes if n_classes is not None else (labels.max() + 1 if (labels >= 0).any() else 0))
        if n_cls < 1:
            raise BadInputError("'n_classes' must be given when no sample is labeled.")
        clock = Clock()
        if graph is None:
            from labelkit import knn

            graph = knn.knn_graph(embeddings, min(self.pseudolabel.k, max(1, len(embeddings) - 1)), exclude_self=True, progress=progress)
            clock.lap("knn_graph")
        if prototypes is None:
            prototypes = build_prototypes(embeddings, labels, n_cls, self.prototype, text, model=model, progress=progress).protos
        with progress.task("pseudolabel", total=2) as task:  # two steps: checking the seeds, then scoring
            self.result_, self.seeds_dropped_ = teach(embeddings, labels, n_cls, graph, prototypes, text, self.pseudolabel, task=task,
                                                      clock=clock, accept_rows=np.flatnonzero(labels < 0))
            task.update(step="done")
        self.prototypes_, self.n_classes_, self.timings_ = prototypes, n_cls, clock.laps
        return self

    def predict_proba(self) -> np.ndarray:
        """(n_samples, n_classes) calibrated probabilities of the rows fitted on (transductive)."""
        return self.result_.probs

    def soft_labels(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_classes) the soft label (top-k, renormalised) as pseudolabels.parquet holds it, dense."""
        top = self.result_.top_labels[rows]
        n = len(rows)
        return topk_to_dense(n, self.n_classes_, np.repeat(np.arange(n), top.shape[1]), top.ravel(), self.result_.top_probs[rows].ravel())


@dataclass
class Relabeled:
    """Pseudo-labels recomputed with some labels hidden, for the rows that are unlabeled then."""

    ids: list[str]  # those rows' sample ids
    probs: np.ndarray  # (n, K) calibrated class probabilities
    soft: np.ndarray  # (n, K) the soft label (top-k, renormalised), as pseudolabels.parquet holds it
    confidence: np.ndarray  # (n,)
    accepted: np.ndarray  # (n,) bool, by the stage's threshold rule


class Relabeler:
    """The prototype and pseudolabel stages' recipe, replayed in memory with some labels hidden.

    Holds the arrays once (embeddings, labels, class-name embeddings, the kNN graph); each call
    costs the prototype recipe, the seed cleaning and the scoring passes. Distill calls it so that
    the labels it evaluates the student on never reached the student through its teacher's
    pseudo-labels. ``labelkit.stages._inputs.relabeler`` builds one from a workspace.
    """

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, ids: list[str], n_classes: int, *, graph, text: np.ndarray | None,
                 pseudolabel: PseudolabelConfig, prototype: PrototypeConfig, model: str | None = None) -> None:
        self.vectors, self.labels, self.ids, self.n_classes = vectors, np.asarray(labels, dtype=np.int64), list(ids), n_classes
        self.graph, self.text, self.model = graph, text, model
        self.cfg, self.proto_cfg = pseudolabel, prototype

    def __call__(self, hide_ids) -> Relabeled:
        """Pseudo-labels for the rows that are unlabeled once the labels of ``hide_ids`` are hidden."""
        import pandas as pd

        at = pd.Index(self.ids).get_indexer(list(hide_ids))
        labels = self.labels.copy()
        labels[at[at >= 0]] = -1
        t = Teacher(pseudolabel=self.cfg, prototype=self.proto_cfg).fit(
            self.vectors, labels, n_classes=self.n_classes, graph=self.graph, text=self.text, model=self.model)
        rows = np.flatnonzero(labels < 0)
        r = t.result_
        return Relabeled([self.ids[i] for i in rows], r.probs[rows], t.soft_labels(rows), r.confidence[rows], r.accepted[rows])
