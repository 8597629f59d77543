"""A demo use case with trained weights: fundus photographs with synthetic lesions.

No pretrained weights can be downloaded, and an untrained network's occlusion
heatmap is texture: every patch moves the output a little. The demo gives the
three deployed architectures something real to explain. Views of
scikit-image's fundus photograph (``skimage.data.retina``) get one of three
kinds of synthetic lesion, or none, and a short fine-tune teaches each model to
tell them apart. Its heatmaps then show what clinicians expect: the
probability drops where the lesion is and nowhere else.

Knows nothing of occlusion or of the service: it makes images, labels and
checkpoints that :mod:`krypton.models` loads like any other.
"""

from __future__ import annotations

from krypton.demo.lesions import (
    LABELS,
    SAMPLE_SEED,
    VALIDATION_SEED,
    FundusLesions,
    LesionBatch,
    lesion_batch,
    lesion_samples,
)
from krypton.demo.training import (
    TrainingReport,
    accuracy,
    confusion_matrix,
    default_steps,
    demo_checkpoint,
    per_class,
    save_checkpoint,
    train_demo_model,
)

__all__ = [
    "LABELS",
    "SAMPLE_SEED",
    "VALIDATION_SEED",
    "FundusLesions",
    "LesionBatch",
    "TrainingReport",
    "accuracy",
    "confusion_matrix",
    "default_steps",
    "demo_checkpoint",
    "lesion_batch",
    "lesion_samples",
    "per_class",
    "save_checkpoint",
    "train_demo_model",
]
