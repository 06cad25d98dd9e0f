"""The hyper-parameters of a student fit (:class:`TrainConfig`) and the student config they give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from labelkit.config import defaults, validate_options
from labelkit.distill.students import STUDENTS
from labelkit.errors import BadInputError

__all__ = ["TrainConfig", "student_config"]

_STAGE = defaults("distill")  # the distill stage's config: the shared fields' defaults and bounds are declared there, once
# The fields that are distill stage options (same name); ``architecture`` is the stage's ``student``, checked against STUDENTS.
_SHARED = ("hidden", "epochs", "batch_size", "lr", "weight_decay", "temperature", "alpha", "confidence_weighting", "soften_below",
           "val_fraction", "patience", "vat", "fixmatch", "fixmatch_threshold", "fixmatch_rule", "label_filter", "ema")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit_student`, checked on construction.

    Every field but ``width``, ``dropout``, ``label_smoothing`` and ``amp`` is an option of the
    distill stage (:class:`labelkit.config.DistillConfig`; ``architecture`` is its ``student``),
    with the default, bounds and checks declared there once (docs/options.md lists them).

    Parameters
    ----------
    architecture : str
        A key of :data:`labelkit.distill.students.STUDENTS`: mlp, linear, cnn, finetune.
    hidden : int
        Hidden width of the MLP head.
    width : int, default=32
        Channels of the first CNN stage (then 2x, 4x).
    dropout : float, default=0.1
        In [0, 1).
    epochs : int
        Maximum number of epochs.
    batch_size : int
    lr : float
        Peak AdamW learning rate; cosine-annealed to 0 over ``epochs``.
    weight_decay : float
        Weight decay of AdamW (decoupled).
    temperature : float
        Distillation temperature T (Hinton et al. 2015); the KL term is scaled by T**2.
    alpha : float
        Weight of the soft (KL) term for samples that have both a soft target and a trusted hard
        label; the hard cross-entropy gets ``1 - alpha``. Samples with only one kind of target
        get weight 1 on it.
    confidence_weighting : bool
        Weight each pseudo-labeled sample (soft target, no hard label) by the teacher's
        confidence max_k t_ik; trusted samples keep weight 1.
    soften_below : float
        FerKD-style target adaptation: a soft target whose confidence in its label (the trusted
        label when there is one, else its argmax) is below this is replaced by a label-smoothed
        one-hot of that label. 0 disables it.
    label_smoothing : float, default=0.1
        In [0, 1): smoothing epsilon of those replacement targets: (1 - eps) one-hot + eps / K.
    val_fraction : float
        Fraction of the trusted (hard-labeled) samples held out for early stopping when no
        explicit ``val`` set is given. If it rounds to 0 samples, there is no early stopping.
    patience : int
        Stop after this many epochs without a lower validation loss; the best epoch's weights
        are restored.
    vat : float
        Virtual adversarial training (:mod:`labelkit.distill.vat`): the radius of the adversarial
        perturbation as a multiple of the median nearest-neighbour distance between training rows
        (standardised); each batch adds ``KL(p(x) || p(x + r_adv))`` to the loss, at the cost of
        two more forward and one more backward pass. 0 disables it.
    fixmatch : float
        ``cnn`` and ``finetune``: weight of the FixMatch consistency term
        (:mod:`labelkit.distill.fixmatch`). Each step then also draws ``2 * batch_size`` images
        from the unlabeled pool (the ``unlabeled`` images given to :func:`fit_student` plus the
        training images), labels a weakly augmented view of each where the student is at least
        ``fixmatch_threshold`` confident, and trains a strongly augmented view on that label; the
        labeled batch gets the weak view too. An epoch is then the larger of a pass over the
        training rows and a pass over the pool. 0 disables it.
    fixmatch_threshold : float
        Confidence a weak view needs before its label becomes a target (FixMatch's tau).
    fixmatch_rule : {"fixed", "flexmatch"}
        ``fixed``: that threshold for every class (FixMatch); ``flexmatch``: per class, scaled
        down for the classes few pool images are yet confidently predicted as (FlexMatch,
        Zhang et al. 2021; :class:`labelkit.distill.fixmatch.FlexMatchThresholds`).
    label_filter : bool
        With ``fixmatch``: set aside (train as unlabeled) the trusted labels that the student's
        predictions on strongly augmented views of their image contradict, re-checked after every
        epoch once a fifth of the epochs have run
        (:class:`labelkit.distill.fixmatch.LabelFilter`). Ignored without FixMatch.
    ema : float
        Decay of an exponential moving average of the weights, updated after every step (0.999 in
        FixMatch), warmed up as ``min(ema, (1 + step) / (10 + step))``; when > 0 the average is
        what is validated, kept at the best epoch and returned. 0 disables it.
    amp : bool, default=True
        Mixed precision (torch.autocast, bf16 where supported else fp16 with loss scaling) on CUDA.
        Ignored on CPU.
    """

    architecture: str = _STAGE.student
    hidden: int = _STAGE.hidden
    width: int = 32
    dropout: float = 0.1
    epochs: int = _STAGE.epochs
    batch_size: int = _STAGE.batch_size
    lr: float = _STAGE.lr
    weight_decay: float = _STAGE.weight_decay
    temperature: float = _STAGE.temperature
    alpha: float = _STAGE.alpha
    confidence_weighting: bool = _STAGE.confidence_weighting
    soften_below: float = _STAGE.soften_below
    label_smoothing: float = 0.1
    val_fraction: float = _STAGE.val_fraction
    patience: int = _STAGE.patience
    vat: float = _STAGE.vat
    fixmatch: float = _STAGE.fixmatch
    fixmatch_threshold: float = _STAGE.fixmatch_threshold
    fixmatch_rule: str = _STAGE.fixmatch_rule
    label_filter: bool = _STAGE.label_filter
    ema: float = _STAGE.ema
    amp: bool = True

    def __post_init__(self):
        if self.architecture not in STUDENTS:
            raise BadInputError(f"'architecture' must be one of {sorted(STUDENTS)}. Got {self.architecture!r} instead.")
        # The distill stage's options: its config checks them (labelkit.config.DistillConfig).
        cfg = validate_options("distill", {name: getattr(self, name) for name in _SHARED}, int_word=True)
        for name in _SHARED:
            object.__setattr__(self, name, getattr(cfg, name))
        # The fit's own knobs, which no stage option sets.
        if not (isinstance(self.width, (int, np.integer)) and not isinstance(self.width, bool) and self.width >= 1):
            raise BadInputError(f"'width' must be an int >= 1. Got {self.width!r} instead.")
        for name in ("dropout", "label_smoothing"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise BadInputError(f"'{name}' must be in [0, 1). Got {v!r} instead.")
        if self.fixmatch > 0 and STUDENTS[self.architecture].input_ndim != 4:
            raise BadInputError(f"'fixmatch' augments images: it needs the cnn or finetune architecture. Got {self.architecture!r} instead.")


def student_config(config: TrainConfig, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """The JSON-able :func:`build_student` config for ``config.architecture`` on inputs of ``input_shape`` (no batch axis)."""
    return STUDENTS[config.architecture].config(config, input_shape, n_classes)
