"""Health warnings: what a stage says when its own evidence makes its result doubtful.

A warning is a plain dict ``{"code", "message", "hint"}`` so that it travels unchanged through
``--json``, manifest.json, the Parquet metadata of the stage's artifact and the report. Every
stage summary carries a ``warnings`` list (empty when all is well); the CLI prints each in yellow,
the report shows them in a banner, and ``--strict`` turns any of them into exit code 4.

The checks here are pure (numbers in, warnings out) so that their thresholds are tested directly.
"""

from __future__ import annotations

from typing import Any

STRICT_EXIT = 4

# An embedding "separates the labeled classes poorly" when its out-of-sample kNN accuracy is
# within this share of the gap between chance and perfect: with 10 classes, below 0.10 + 0.3 * 0.9
# = 0.37. CIFAR-10 grey pixels scored 0.2-0.3 by leave-one-out; any ImageNet backbone scores > 0.6.
POOR_SEPARATION = 0.3
DROPPED_SHARE = 1 / 3  # labeled samples dropped by prototype or seed cleaning
NOISE_RATE = 0.30  # estimated label-noise rate
POOR_ECE = 0.15  # held-out expected calibration error of a student
POOR_ACCURACY_GAIN = 0.3  # a student's held-out accuracy, same scale as POOR_SEPARATION


def warning(code: str, message: str, hint: str) -> dict[str, str]:
    """One warning: a stable ``code`` for scripts, a ``message`` for people, a ``hint`` on what to try."""
    return {"code": code, "message": message, "hint": hint}


def above_chance(accuracy: float, n_classes: int) -> float:
    """Share of the way from chance (1/K) to perfect accuracy: 0 at chance, 1 when perfect."""
    chance = 1.0 / max(n_classes, 1)
    return (accuracy - chance) / (1.0 - chance) if n_classes > 1 else 0.0


def separation(accuracy: float | None, n_classes: int, *, what: str) -> list[dict[str, str]]:
    """Warn when out-of-sample kNN accuracy on the labeled samples is near chance."""
    if accuracy is None or n_classes < 2 or above_chance(accuracy, n_classes) >= POOR_SEPARATION:
        return []
    return [warning(
        "poor_separation",
        f"{what} separates the labeled classes poorly: out-of-sample kNN accuracy {accuracy:.2f} "
        f"where chance is {1 / n_classes:.2f}",
        "try another embedder (labelkit embed DATA --model ..., e.g. efficientnet-lite0 or clip:ARCH/PRETRAINED "
        "for photos, minilm for text), or check that the labels mean what you think",
    )]


def one_class(n_classes: int) -> list[dict[str, str]]:
    if n_classes != 1:
        return []
    return [warning(
        "one_class",
        "only one class has labeled samples: every confidence is trivially 1.0",
        "label samples of at least two classes, or name the others with --classes",
    )]


def dropped(n_dropped: int, n_labeled: int, *, by: str, option: str) -> list[dict[str, str]]:
    if n_labeled == 0 or n_dropped <= DROPPED_SHARE * n_labeled:
        return []
    return [warning(
        f"many_dropped_{by.replace(' ', '_')}",
        f"{by} dropped {n_dropped} of {n_labeled} labeled samples ({n_dropped / n_labeled:.0%}): "
        "the embedding or the labels disagree with each other",
        f"check the embedder's score (labelkit embed), or turn the cleaning off with {option}",
    )]


def noise_rate(rate: float) -> list[dict[str, str]]:
    if rate <= NOISE_RATE:
        return []
    return [warning(
        "high_noise_rate",
        f"estimated label-noise rate {rate:.0%}: more likely a weak out-of-sample classifier than "
        "that many wrong labels",
        "review the top of label_issues.parquet by rank rather than every flag, or use a stronger embedder",
    )]


def none_accepted(n_accepted: int, n_unlabeled: int) -> list[dict[str, str]]:
    if n_unlabeled == 0 or n_accepted > 0:
        return []
    return [warning(
        "none_accepted",
        f"no pseudo-label of the {n_unlabeled} unlabeled samples passed the threshold",
        "lower --threshold, try --threshold-rule flexmatch, label more samples, or use a stronger embedder",
    )]


def student(accuracy: float | None, ece: float | None, n_classes: int) -> list[dict[str, str]]:
    out = []
    if accuracy is not None and n_classes > 1 and above_chance(accuracy, n_classes) < POOR_ACCURACY_GAIN:
        out.append(warning(
            "poor_student_accuracy",
            f"the student's held-out accuracy is {accuracy:.2f} where chance is {1 / n_classes:.2f}",
            "use a stronger embedder, label more samples, or check the label issues first",
        ))
    if ece is not None and ece > POOR_ECE:
        out.append(warning(
            "poor_student_calibration",
            f"the student's held-out expected calibration error is {ece:.2f}: its confidences are not probabilities",
            "treat its confidences as a ranking only, or train with more trusted labels",
        ))
    return out


def of(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The warnings recorded in a stage summary (none for summaries written before they existed)."""
    return list(summary.get("warnings") or [])
