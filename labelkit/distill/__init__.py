"""Student models, their training loop, and the distill stage's procedure (torch, numpy).

Nothing here touches files except :mod:`~labelkit.distill.pixels`, which reads the images an
image student trains on; every other function takes arrays and returns arrays or a model. The
package is split by what each module owns:

:mod:`~labelkit.distill.students`
    The architectures (registry :data:`STUDENTS` of :class:`~labelkit.distill.students.Architecture`
    entries: ``linear``, ``mlp``, ``cnn``, ``finetune``, each with its input kind, image side and
    thread policy), building a student from its JSON-able config, its state dict, and seeded
    initialisation.
:mod:`~labelkit.distill.train_config`
    :class:`TrainConfig`, the fit's hyper-parameters, and :func:`student_config`.
:mod:`~labelkit.distill.targets`
    Targets and the loss: FerKD softening, Hinton tempering, confidence weights,
    :func:`distillation_loss`.
:mod:`~labelkit.distill.training`
    :func:`fit_student` and :class:`FitResult`: a short loop over ``train_epoch``,
    ``record_dynamics`` and ``evaluate``, with early stopping and mixed precision.
:mod:`~labelkit.distill.regularisers`
    One object per regulariser, each with its own loss term or hook: VAT, FixMatch's consistency
    (with FlexMatch's thresholds), the label filter, the EMA of the weights.
:mod:`~labelkit.distill.fixmatch`
    FixMatch for image students: weak and strong augmentations, FlexMatch thresholds, the
    consistency loss, the label filter. :mod:`labelkit.distill.vat` is its counterpart for embeddings.
:mod:`~labelkit.distill.inference`
    :func:`predict_proba`.
:mod:`~labelkit.distill.training_set`
    What the student trains on, as arrays: trusted rows and the held-out split, the pseudo-labels
    taken, the targets, the next self-training round's set.
:mod:`~labelkit.distill.procedure`
    The distill stage's one call, :func:`~labelkit.distill.procedure.distil`: self-training rounds,
    cross-fitting with a refit teacher, the held-out metrics, CPU thread control.
:mod:`~labelkit.distill.pixels`
    How image students read images (the spec saved with the student) and reading them.
:mod:`~labelkit.distill.folder`
    The student folder's file names and format tag (written by distill, read by predict).

The cross-validated probe lives in :mod:`labelkit.probe`, the metrics in :mod:`labelkit.metrics`,
ONNX export in :mod:`labelkit.onnx_export`.
"""

from labelkit.distill.inference import predict_proba
from labelkit.distill.students import (
    STUDENTS,
    build_student,
    load_student,
    student_state,
)
from labelkit.distill.targets import distillation_loss
from labelkit.distill.train_config import TrainConfig, student_config
from labelkit.distill.training import FitResult, fit_student

__all__ = [
    "STUDENTS",
    "FitResult",
    "TrainConfig",
    "build_student",
    "distillation_loss",
    "fit_student",
    "load_student",
    "predict_proba",
    "student_config",
    "student_state",
]
