"""``sp``: similarity-preserving distillation (Tung & Mori, ICCV 2019).

mdistiller ``mdistiller/distillers/SP.py`` (``similarity_loss``, ``sp_loss``; the same as
RepDistiller ``distiller_zoo/SP.py``), on the last stage's map (``feats[-1]``) flattened to
``[B, D]``: the batch's Gram matrix ``G = f f^T [B, B]`` with each row L2-normalised, on
both sides, and

    l = (1/B^2) sum_ij (G_t,ij - G_s,ij)^2         (summed over the maps read: one)

one value for the whole batch (each sample's row is normalised over the batch). Reference
weight: γ = 3000 (mdistiller ``CFG.SP.LOSS.FEAT_WEIGHT``). Granularity: per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multikd.method.feature_losses.base import FeatureBatch, FeatureLoss, register_feature_loss
from multikd.method.precision import upcast


def normalized_gram(f: torch.Tensor) -> torch.Tensor:
    """``[B, B]``: the Gram matrix of ``f`` flattened per sample, each row L2-normalised."""
    f = f.reshape(f.shape[0], -1)
    return F.normalize(f @ f.t())


@register_feature_loss(
    "sp", "similarity-preserving: squared difference of the row-normalised batch Gram "
          "matrices, last stage (per batch; reference γ=3000)"
)
class SimilarityPreserving(FeatureLoss):
    """Similarity-preserving distillation (module doc), one value per batch."""

    reads = "last"
    per_sample = False
    reference_gamma = 3000.0

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        total = None
        for f_s, f_t in zip(student, teacher):
            f_s, f_t = upcast(f_s), upcast(f_t)
            b = f_s.shape[0]
            term = (normalized_gram(f_t) - normalized_gram(f_s)).pow(2).sum() / (b * b)
            total = term if total is None else total + term
        return total
