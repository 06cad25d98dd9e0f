"""Judging the given labels: confident learning once, the evidence combined, and a second model
family's confirmation that decides whether the flags are strong evidence or only a review queue.

Numpy in, numpy out (labelkit.noise, labelkit.evidence underneath).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from labelkit import evidence, health, noise

# The user's --pred-probs are never cut (they must equal cleanlab's results), only warned about below this accuracy.
WEAK_USER_PROBS_ACCURACY = 0.8


class Judgement(NamedTuple):
    """What :func:`judge` returns."""

    quality: evidence.LabelQuality  # per row: label quality, is_issue, issue type, rank, suggested label
    cl: noise.ConfidentLearning  # the one confident-learning analysis (joint and noise matrices too)
    accuracy: float  # the chosen probabilities' accuracy on the given labels
    n_candidates: int  # label flags before the confirmation
    consensus: float | None  # confirmation of the label flags by the second opinion (None without one)
    weak: bool  # consensus below the minimum: only confirmed flags within the budget stay issues


def judge(labels: np.ndarray, probs: np.ndarray, *, second: np.ndarray | None = None, duplicates=None, outliers=None, dynamics=None,
          filter_by: str, rank_by: str, min_consensus: float, review_budget: float, check_input: bool = True) -> Judgement:
    """Confident learning on ``probs`` (once), the evidence combined, and the second opinion's say.

    Parameters
    ----------
    labels : ndarray of shape (n,)
    probs : ndarray of shape (n, K)
        Out-of-sample probabilities.
    second : ndarray of shape (n, K), optional
        Another model family's out-of-sample probabilities; none for the user's own probabilities.
    duplicates, outliers, dynamics : optional evidence (labelkit.evidence, labelkit.cartography)
    filter_by, rank_by : str
        Confident learning's filter and score methods (the detect-noise config's ``filter_by``, ``rank_by``).
    min_consensus : float
        Below this confirmation the evidence is weak (config ``min_consensus``).
    review_budget : float
        Share of the rows that may stay flagged when the evidence is weak (config ``review_budget``).
    check_input : bool, default=True
        False when ``labels`` and ``probs`` are already checked (labelkit.pred_probs checks and
        rescales every row it reads): confident learning then skips its own passes over them.
    """
    cl = noise.confident_learning(labels, probs, method=filter_by, score_method=rank_by, check_input=check_input)
    # Confident learning doubts a label when the row falls off the diagonal of the confident joint,
    # C[y][j], j != y (another class clears its threshold t_j; Northcutt et al. 2021, eq. 1): only
    # such outliers are issues. Measured on digits, an outlier alone was a flipped label 0-19% of the time.
    # p_{i, y_i} and the argmax come from that analysis (which validated ``probs``): no second pass over (n, K).
    predicted = cl.predicted
    if (predicted < 0).any():  # unlabeled rows are not analysed; their suggestion is still the argmax
        predicted = predicted.copy()
        predicted[predicted < 0] = np.asarray(probs)[predicted < 0].argmax(axis=1)
    q = evidence.combine_scored(labels, cl.self_confidence, predicted, label_issues=cl.issues.is_issue, duplicates=duplicates,
                                outliers=outliers, dynamics=dynamics, doubted=cl.off_diagonal)
    accuracy = float(np.mean(predicted == labels))
    label_flags = q.is_issue & (q.issue_type == "label")
    # A wrong label is contradicted by any good model; a weak model's own errors are idiosyncratic.
    # So when the other model family (linear probe vs kNN vote) confirms few of the chosen source's
    # label flags beyond chance, most flags are the models' errors, not the labels': weak evidence.
    # Measured: digits with 10% flipped 0.73, synthetic clusters with 20% flipped 0.83; CIFAR-10 on
    # EfficientNet-Lite0 features (0.5% wrong labels) 0.23; random vectors 0.
    consensus = weak = None
    if second is not None:
        also = noise.detect_label_issues(labels, second, method=filter_by, score_method=rank_by).is_issue
        consensus = confirmation(label_flags, also)
        weak = consensus < min_consensus
        if weak:
            q = q._replace(is_issue=within_budget(q, also, budget=int(np.ceil(review_budget * len(labels)))))
    return Judgement(q, cl, accuracy, int(label_flags.sum()), consensus, bool(weak))


def confirmation(flags: np.ndarray, other: np.ndarray) -> float:
    """How far a second source's flags ``other`` confirm ``flags`` beyond chance, in [-1, 1] (kappa-like):
    (p_o - p_e) / (1 - p_e), with p_o the share of ``flags`` that ``other`` also flags and p_e the
    share of all rows ``other`` flags. 1 when none is flagged (nothing to doubt).

    >>> confirmation(np.array([True, True, False, False]), np.array([True, True, False, False]))
    1.0
    >>> confirmation(np.array([True, True, True, True]), np.array([True, True, False, False]))
    0.0
    """
    if not flags.any():
        return 1.0
    p_o = float((flags & other).sum() / flags.sum())
    p_e = float(other.mean())
    return 1.0 if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def within_budget(q: evidence.LabelQuality, also: np.ndarray, *, budget: int) -> np.ndarray:
    """``is_issue`` keeping only the label flags that the second source ``also`` flags, at most the
    ``budget`` most likely (by rank); other issue types kept.

    >>> q = evidence.LabelQuality(np.zeros(4), np.zeros(4, int), np.array([True, True, True, True]),
    ...                           np.array(["label", "label", "label", "outlier"], dtype=object), np.array([3, 1, 2, 4]))
    >>> within_budget(q, np.array([True, True, False, False]), budget=1).tolist()
    [False, True, False, True]
    """
    label = q.is_issue & (q.issue_type == "label")
    out = q.is_issue & ~(label & ~also)
    flagged = np.flatnonzero(label & also)
    out[flagged[np.argsort(q.rank[flagged], kind="stable")][budget:]] = False
    return out


def warnings(summary: dict[str, Any], *, review_budget: float, user_probs: bool, n_classes: int, n_candidates: int) -> list[dict[str, str]]:
    """The health warnings (labelkit.health) of a :func:`summary`: one class, weak evidence, a high noise rate."""
    acc, rate = summary["out_of_sample_accuracy"], summary["estimated_noise_rate"]
    out = health.one_class(n_classes)
    if summary["weak_evidence"]:
        out.append(health.warning(
            "weak_evidence",
            f"a second out-of-sample classifier hardly confirms the label flags (agreement beyond chance {summary['flag_consensus']:.2f}) "
            f"(the chosen one is {acc:.0%} accurate on the given labels): most flags are the models' errors, not the labels'. "
            f"Of {n_candidates} candidate label flags, the {summary['issues_by_type'].get('label', 0)} that both flag and rank highest "
            f"are kept (review budget {review_budget:.0%}); the rest stay ranked in label_issues.parquet",
            "review by rank from the top; a stronger embedder (labelkit embed --model ...) sharpens the evidence",
        ))
    elif user_probs and acc < WEAK_USER_PROBS_ACCURACY:
        out.append(health.warning(
            "weak_evidence",
            f"your probabilities are only {acc:.0%} accurate on the given labels: many flags may be the model's errors",
            "review by rank from the top, or use a stronger model's out-of-sample probabilities",
        ))
    return out + health.noise_rate(rate)


def summary(issues: pd.DataFrame, joint: np.ndarray, classes: list[str], *, top: int, filter_by: str, choice: dict, dynamics: dict | None,
            n_labeled: int, n_analysed: int) -> dict[str, Any]:
    """The detect-noise summary of ``issues`` (label_issues.parquet's rows, by rank) and the estimated ``joint``."""
    flagged = issues[issues["is_issue"]]
    reported = issues[~issues["is_issue"] & issues["issue_type"].notna()]
    by_type = flagged["issue_type"].value_counts().to_dict()
    by_class = flagged.groupby("given_label").size().sort_values(ascending=False).to_dict()
    off = joint.copy()
    np.fill_diagonal(off, 0)
    pairs = []
    for flat in np.argsort(off, axis=None)[::-1][:5]:
        i, j = divmod(int(flat), len(classes))
        if off[i, j] <= 0:
            break
        pairs.append({"given": classes[i], "true": classes[j], "joint": round(float(off[i, j]), 4)})
    top = flagged.head(top)
    return {
        "n_labeled": n_labeled,
        "n_analysed": n_analysed,
        "n_issues": int(len(flagged)),
        "issue_rate": round(len(flagged) / max(n_analysed, 1), 4),
        "estimated_noise_rate": round(float(1 - np.trace(joint)), 4),
        "issues_by_type": {str(k): int(v) for k, v in by_type.items()},
        "reported_not_issues": {str(k): int(v) for k, v in reported["issue_type"].value_counts().items()},
        "issues_by_class": {str(k): int(v) for k, v in by_class.items()},
        "confused_pairs": pairs,
        "top_issues": [
            {"rank": int(r.rank), "id": r.id, "given": r.given_label, "suggested": r.suggested_label, "quality": round(float(r.label_quality), 4), "type": r.issue_type}
            for r in top.itertuples()
        ],
        "probs": choice["chosen"],
        "probs_choice": choice,
        "filter_by": filter_by,
        "dynamics": dynamics,
    }


QUEUE_COLUMNS = ("rank", "id", "source", "given_label", "suggested_label", "label_quality", "issue_type")


def queue(issues: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
    """The review queue for annotators: the rows flagged ``is_issue``, most likely wrong first, with each
    sample's ``source`` (from ``sources``: id, source)."""
    return issues[issues["is_issue"]].merge(sources, on="id", how="left")[list(QUEUE_COLUMNS)]


def issues_frame(ids: np.ndarray, given: np.ndarray, suggested: np.ndarray, q: evidence.LabelQuality) -> pd.DataFrame:
    """label_issues.parquet's rows (its column contract, docs/artifacts.md), most likely wrong first."""
    order = np.argsort(q.rank, kind="stable")
    return pd.DataFrame({
        "id": ids[order], "given_label": given[order], "suggested_label": suggested[order],
        "label_quality": q.label_quality[order].astype(np.float32), "is_issue": q.is_issue[order],
        "issue_type": q.issue_type[order], "rank": q.rank[order].astype(np.int64),
    })
