"""The hyper-parameters of a student fit (:class:`TrainConfig`) and the student config they give."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelkit.distill.students import STUDENTS
from labelkit.errors import BadInputError

__all__ = ["TrainConfig", "student_config"]

FIXMATCH_RULES = ("fixed", "flexmatch")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit_student` (defaults in one place; checked on construction).

    Parameters
    ----------
    architecture : {"mlp", "linear", "cnn", "finetune"}, default="mlp"
    hidden : int, default=512
        Hidden width of the MLP head.
    width : int, default=32
        Channels of the first CNN stage (then 2x, 4x).
    dropout : float, default=0.1
    epochs : int, default=100
        Maximum number of epochs.
    batch_size : int, default=256
    lr : float, default=1e-3
        Peak AdamW learning rate; cosine-annealed to 0 over ``epochs``.
    weight_decay : float, default=1e-2
        AdamW decoupled weight decay.
    temperature : float, default=2.0
        Distillation temperature T (Hinton et al. 2015); the KL term is scaled by T**2.
    alpha : float, default=0.5
        Weight of the soft (KL) term for samples that have both a soft target and a trusted hard
        label; the hard cross-entropy gets ``1 - alpha``. Samples with only one kind of target
        get weight 1 on it.
    confidence_weighting : bool, default=True
        Weight each pseudo-labeled sample (soft target, no hard label) by the teacher's
        confidence max_k t_ik; trusted samples keep weight 1.
    soften_below : float, default=0.5
        FerKD-style target adaptation: a soft target whose confidence in its label (the trusted
        label when there is one, else its argmax) is below this is replaced by a label-smoothed
        one-hot of that label. 0 disables it.
    label_smoothing : float, default=0.1
        Smoothing epsilon of those replacement targets: (1 - eps) one-hot + eps / K.
    val_fraction : float, default=0.1
        Fraction of the trusted (hard-labeled) samples held out for early stopping when no
        explicit ``val`` set is given. If it rounds to 0 samples, there is no early stopping.
    patience : int, default=10
        Stop after this many epochs without a lower validation loss; the best epoch's weights
        are restored.
    vat : float, default=0.0
        Virtual adversarial training (:mod:`labelkit.distill.vat`): the radius of the adversarial
        perturbation as a multiple of the median nearest-neighbour distance between training rows
        (standardised); each batch adds ``KL(p(x) || p(x + r_adv))`` to the loss, at the cost of
        two more forward and one more backward pass. 0 disables it (the distill stage's default too).
    fixmatch : float, default=0.0
        ``cnn`` and ``finetune``: weight of the FixMatch consistency term
        (:mod:`labelkit.distill.fixmatch`). Each step then also draws ``2 * batch_size`` images
        from the unlabeled pool (the ``unlabeled`` images given to :func:`fit_student` plus the
        training images), labels a weakly augmented view of each where the student is at least
        ``fixmatch_threshold`` confident, and trains a strongly augmented view on that label; the
        labeled batch gets the weak view too. An epoch is then the larger of a pass over the
        training rows and a pass over the pool. 0 disables it.
    fixmatch_threshold : float, default=0.95
        Confidence a weak view needs before its label becomes a target (FixMatch's tau).
    fixmatch_rule : {"fixed", "flexmatch"}, default="flexmatch"
        ``fixed``: that threshold for every class (FixMatch); ``flexmatch``: per class, scaled
        down for the classes few pool images are yet confidently predicted as (FlexMatch,
        Zhang et al. 2021; :class:`labelkit.distill.fixmatch.FlexMatchThresholds`).
    label_filter : bool, default=True
        With ``fixmatch``: set aside (train as unlabeled) the trusted labels that the student's
        predictions on strongly augmented views of their image contradict, re-checked after every
        epoch once a fifth of the epochs have run
        (:class:`labelkit.distill.fixmatch.LabelFilter`). Ignored without FixMatch.
    ema : float, default=0.0
        Decay of an exponential moving average of the weights, updated after every step (0.999 in
        FixMatch), warmed up as ``min(ema, (1 + step) / (10 + step))``; when > 0 the average is
        what is validated, kept at the best epoch and returned. 0 disables it.
    amp : bool, default=True
        Mixed precision (torch.autocast, bf16 where supported else fp16 with loss scaling) on CUDA.
        Ignored on CPU.
    """

    architecture: str = "mlp"
    hidden: int = 512
    width: int = 32
    dropout: float = 0.1
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    temperature: float = 2.0
    alpha: float = 0.5
    confidence_weighting: bool = True
    soften_below: float = 0.5
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    patience: int = 10
    vat: float = 0.0
    fixmatch: float = 0.0
    fixmatch_threshold: float = 0.95
    fixmatch_rule: str = "flexmatch"
    label_filter: bool = True
    ema: float = 0.0
    amp: bool = True

    def __post_init__(self):
        if self.architecture not in STUDENTS:
            raise BadInputError(f"'architecture' must be one of {sorted(STUDENTS)}. Got {self.architecture!r} instead.")
        for name in ("hidden", "width", "epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                raise BadInputError(f"'{name}' must be an int >= 1. Got {v!r} instead.")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise BadInputError(f"'{name}' must be > 0. Got {v!r} instead.")
        ranges = {
            "dropout": (0.0, 1.0, False),
            "weight_decay": (0.0, math.inf, True),
            "alpha": (0.0, 1.0, True),
            "soften_below": (0.0, 1.0, True),
            "label_smoothing": (0.0, 1.0, False),
            "val_fraction": (0.0, 1.0, False),
            "vat": (0.0, math.inf, False),
            "fixmatch": (0.0, math.inf, False),
            "fixmatch_threshold": (0.0, 1.0, True),
            "ema": (0.0, 1.0, False),
        }
        for name, (lo, hi, hi_incl) in ranges.items():
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and lo <= v and (v <= hi if hi_incl else v < hi)
            if not ok:
                bracket = "]" if hi_incl else ")"
                raise BadInputError(f"'{name}' must be in [{lo}, {hi}{bracket}. Got {v!r} instead.")
        if self.fixmatch_rule not in FIXMATCH_RULES:
            raise BadInputError(f"'fixmatch_rule' must be one of {list(FIXMATCH_RULES)}. Got {self.fixmatch_rule!r} instead.")
        if self.fixmatch > 0 and STUDENTS[self.architecture].input_ndim != 4:
            raise BadInputError(f"'fixmatch' augments images: it needs the cnn or finetune architecture. Got {self.architecture!r} instead.")


def student_config(config: TrainConfig, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """The JSON-able :func:`build_student` config for ``config.architecture`` on inputs of ``input_shape`` (no batch axis)."""
    return STUDENTS[config.architecture].config(config, input_shape, n_classes)
