"""Feature losses: how the student's features are compared with a teacher's (a registry).

:mod:`~multikd.method.feature_losses.base` holds the registry, the two forms a loss takes
(a hint function on adapted maps, or a :class:`FeatureLoss` module per teacher) and what a
loss may read; each loss lives in its own module, cited to its reference code:

- ``mse`` (:mod:`.hint`): FitNets' hint through an adapter, the default;
- ``at`` (:mod:`.at`): attention transfer;
- ``reviewkd`` (:mod:`.reviewkd`): knowledge review, attention-based fusion of the
  student's maps deep to shallow against the teacher's by HCL (per sample; trains its ABFs);
- ``nst`` (:mod:`.nst`): neuron selectivity transfer (per sample);
- ``pkt`` (:mod:`.pkt`): probabilistic knowledge transfer (per sample);
- ``sp`` (:mod:`.sp`): similarity-preserving (per batch);
- ``rkd`` (:mod:`.rkd`): relational KD, distance and angle (per batch);
- ``crd`` (:mod:`.crd`): contrastive representation distillation, embeddings and memory
  banks with their NCE (per batch; needs the training set's labels and sample indices);
- ``vid`` (:mod:`.vid`): variational information distillation, a Gaussian likelihood under
  per-stage regressors (per sample; the variance untrained, as mdistiller's);
- ``ofd`` (:mod:`.ofd`): overhaul of feature distillation, partial L2 on pre-ReLU maps
  with margins from the teacher's BN (per sample; reads ``preact_feature_names``).

Importing this package registers them all.
"""

from multikd.method.feature_losses.base import (
    FEATURE_LOSS_REGISTRY, READS, FeatureBatch, FeatureLoss, FeatureSetup,
    feature_loss_per_teacher, is_hint, loss_info, register_feature_loss, run_per_teacher,
    tap_names,
)
from multikd.method.feature_losses.hint import hint_mse
from multikd.method.feature_losses import at  # noqa: F401  (registers)
from multikd.method.feature_losses import nst, pkt, rkd, sp  # noqa: F401  (register)
from multikd.method.feature_losses import reviewkd  # noqa: F401  (registers)
from multikd.method.feature_losses import crd  # noqa: F401  (registers)
from multikd.method.feature_losses import ofd, vid  # noqa: F401  (register)

__all__ = [
    "FEATURE_LOSS_REGISTRY", "READS", "FeatureBatch", "FeatureLoss", "FeatureSetup",
    "feature_loss_per_teacher", "hint_mse", "is_hint", "loss_info", "register_feature_loss",
    "run_per_teacher", "tap_names",
]
