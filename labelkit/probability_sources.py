"""Out-of-sample probabilities of the labeled samples, for confident learning: the sources
detect-noise chooses among, the choice, and the other model family's second opinion.

Numpy in, numpy out. The sources: ``crossval`` (a K-fold linear softmax probe,
labelkit.probe), ``knn`` (the leave-one-out vote of each sample's labeled neighbours,
labelkit.evidence) and ``propagation`` (held-out label spreading over the graph of every sample,
labelled or not: the pseudolabel stage's calibrated ensemble, labelkit.pseudolabel). Each is
computed once, when first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from labelkit import evidence, knn
from labelkit._progress import NULL, Progress
from labelkit.config import defaults
from labelkit.errors import BadInputError


class Source(str, Enum):
    """An out-of-sample probability source (``--probs``; ``auto`` picks among them)."""

    CROSSVAL = "crossval"
    KNN = "knn"
    PROPAGATION = "propagation"


SELECT_BY = evidence.SelectBy.ACCURACY  # auto's rule; see evidence.choose_probs and docs/stages/detect-noise.md

_DETECT = defaults("detect-noise")  # k and folds default to the detect-noise stage's


@dataclass
class Sources:
    """The sources over the analysed (labeled) rows, each computed at most once.

    ``labels`` (n,) class codes and ``vectors`` (n, D) unit-norm of the analysed rows;
    ``propagation`` computes that source (it needs the graph of every sample, not only these rows).
    """

    labels: np.ndarray
    vectors: np.ndarray
    n_classes: int
    k: int = _DETECT.k
    folds: int = _DETECT.folds
    seed: int = 0
    device: str = "cpu"
    progress: Progress = NULL
    propagation: Callable[[], np.ndarray] | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _graph: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def graph(self) -> tuple[np.ndarray, np.ndarray]:
        """The kNN graph among the analysed rows (the vote's and the duplicates'), built once."""
        if self._graph is None:
            self._graph = knn.knn_graph(self.vectors, min(self.k, len(self.labels) - 1), exclude_self=True, progress=self.progress)
        return self._graph

    def get(self, name: Source | str) -> np.ndarray:
        """(n, K) probabilities of source ``name``."""
        name = Source(name)
        if name.value not in self._cache:
            self._cache[name.value] = self._compute(name)
        return self._cache[name.value]

    def computed(self) -> dict[str, np.ndarray]:
        return dict(self._cache)

    def _compute(self, name: Source) -> np.ndarray:
        if name is Source.CROSSVAL:
            from labelkit.probe import cross_val_probs

            folds = max(2, min(self.folds, len(self.labels)))
            return cross_val_probs(self.vectors, self.labels, self.n_classes, n_folds=folds, seed=self.seed, device=self.device,
                                   progress=self.progress)
        if name is Source.KNN:
            return evidence.knn_vote_probs(self.labels, *self.graph, self.n_classes)
        if self.propagation is None:
            raise BadInputError("the propagation source needs the graph of every sample")
        return self.propagation()


def choose(sources: Sources, requested: str, *, transductive: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """The probabilities ``requested`` asks for; ``auto`` computes the sources that apply and keeps the
    most accurate on the given labels (evidence.choose_probs). Propagation joins ``auto`` when some
    samples are unlabeled (``transductive``): without them it sees what the kNN vote sees.

    Returns (probs, {"requested", "chosen", "by", "scores"}).
    """
    names = []
    if requested in ("auto", "crossval"):
        names.append(Source.CROSSVAL)
    if requested in ("auto", "knn"):
        names.append(Source.KNN)
    if requested == "propagation" or (requested == "auto" and transductive):
        names.append(Source.PROPAGATION)
    candidates = {n.value: sources.get(n) for n in names}
    choice = evidence.choose_probs(sources.labels, candidates, by=SELECT_BY)
    scores = {src: {m: round(v, 4) for m, v in sc.items()} for src, sc in choice.scores.items()}
    return candidates[choice.chosen], {"requested": requested, "chosen": choice.chosen, "by": choice.by, "scores": scores}


def second_opinion(sources: Sources, chosen: str) -> np.ndarray:
    """Out-of-sample probabilities from the other model family: the kNN vote for the linear probe,
    the linear probe for the graph-based sources (kNN vote, propagation)."""
    return sources.get(Source.KNN if chosen == Source.CROSSVAL.value else Source.CROSSVAL)


def heldout_propagation(vectors: np.ndarray, labels: np.ndarray, rows: np.ndarray, graph, n_classes: int, *, text=None,
                        options) -> np.ndarray:
    """Held-out label spreading over the graph of every sample: (len(rows), K) for the labeled ``rows``.

    ``labels`` (N,) over every sample (-1 unlabeled); each labeled row's probabilities come from the
    fold of labels that hides its own (labelkit.pseudolabel.heldout_calibration with ``options``).
    """
    from labelkit import pseudolabel

    cal = pseudolabel.heldout_calibration(vectors, labels, n_classes, graph, None, text_prototypes=text, options=options)
    at = np.full(len(vectors), -1)
    at[cal.rows] = np.arange(cal.rows.size)
    if (at[rows] < 0).any():
        raise BadInputError("--probs propagation needs at least 2 labeled samples and --folds >= 2")
    return cal.probs[at[rows]].astype(np.float64)


# The pseudolabel stage's options that shape its held-out label spreading: the propagation source
# is that calibrated ensemble, so a [pseudolabel] value in --config reaches it too (issue 15);
# k, the folds and the seed are detect-noise's own.
SHARED_PROPAGATION = ("method", "alpha", "gamma", "one_way_weight", "reach_prior", "refine", "weights", "probe_weights", "calibration_samples")


def shared_params(pseudolabel_cfg) -> dict[str, Any]:
    """The pseudolabel config's values of SHARED_PROPAGATION (JSON types), as detect-noise records them."""
    params = pseudolabel_cfg.result_params()
    return {k: params[k] for k in SHARED_PROPAGATION}


def propagation_options(pseudolabel_cfg, *, k: int, folds: int, seed: int):
    """labelkit.pseudolabel.PseudolabelOptions of the propagation source: the pseudolabel config's, with
    detect-noise's ``k`` neighbours, ``folds`` (at least 2) and ``seed``."""
    from dataclasses import replace

    from labelkit.teacher import pseudolabel_options

    return replace(pseudolabel_options(pseudolabel_cfg), n_neighbors=k, n_folds=max(2, folds), seed=seed)
