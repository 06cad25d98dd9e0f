"""Student models and their training loop (torch): distillation and training dynamics.

Nothing here touches files; every function takes arrays and returns arrays or a model. The
package is split by what each module owns:

:mod:`~labelkit.distill.students`
    The architectures (registry :data:`STUDENTS`: ``linear``, ``mlp``, ``cnn``), building a
    student from its JSON-able config, its state dict, and seeded initialisation.
:mod:`~labelkit.distill.train_config`
    :class:`TrainConfig`, the fit's hyper-parameters, and :func:`student_config`.
:mod:`~labelkit.distill.targets`
    Targets and the loss: FerKD softening, Hinton tempering, confidence weights,
    :func:`distillation_loss`.
:mod:`~labelkit.distill.training`
    :func:`fit_student` and :class:`FitResult`: the loop, early stopping, training dynamics.
:mod:`~labelkit.distill.fixmatch`
    FixMatch for image students: weak and strong augmentations, FlexMatch thresholds, the
    consistency loss. :mod:`~labelkit.distill.vat` is its counterpart for embeddings.
:mod:`~labelkit.distill.inference`
    :func:`predict_proba`.

The cross-validated probe lives in :mod:`labelkit.probe`, the metrics in :mod:`labelkit.metrics`,
ONNX export in :mod:`labelkit.onnx_export`.
"""

from labelkit.distill.inference import predict_proba
from labelkit.distill.students import STUDENTS, build_student, load_student, student_state
from labelkit.distill.targets import distillation_loss
from labelkit.distill.train_config import TrainConfig, student_config
from labelkit.distill.training import FitResult, fit_student

__all__ = [
    "STUDENTS",
    "TrainConfig",
    "FitResult",
    "build_student",
    "load_student",
    "student_state",
    "student_config",
    "fit_student",
    "predict_proba",
    "distillation_loss",
]
