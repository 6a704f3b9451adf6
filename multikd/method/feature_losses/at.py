"""``at``: attention transfer (Zagoruyko & Komodakis, ICLR 2017).

mdistiller ``mdistiller/distillers/AT.py`` (``single_stage_at_loss``, ``at_loss``; the same
as RepDistiller ``distiller_zoo/AT.py`` ``Attention``), per stage s of every stage but the
stem (``feats[1:]``), after average-pooling the larger map to the smaller's size:

    a(f) = normalize_2(mean_c f_c^p)            (one vector of H*W per sample)
    l_i  = sum_s mean_hw (a(f_s,s)_i - a(f_t,s)_i)^2

The reference takes the mean over the batch and the pixels at once; per sample it is the
mean over the pixels, whose batch mean is the reference's value. Stages are paired as the
reference's ``zip`` pairs them: the first ``min(n_student, n_teacher)`` stages of each, in
order (a vgg13 teacher has one stage more than a resnet8x4 student; its last is not read).
Reference weight: γ = 1000 (mdistiller ``CFG.AT.LOSS.FEAT_WEIGHT``), ``p = 2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multikd.method.feature_losses.base import (
    FeatureBatch, FeatureLoss, pool_to_smaller, register_feature_loss,
)
from multikd.method.precision import upcast


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """``[B, H*W]``: the channel mean of ``f ** p``, L2-normalised per sample."""
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))


@register_feature_loss(
    "at", "attention transfer: squared difference of normalised channel-mean maps f^p, every "
          "stage (per sample; reference γ=1000)"
)
class AttentionTransfer(FeatureLoss):
    """Attention transfer (module doc), per sample."""

    reads = "stages"
    reference_gamma = 1000.0

    def __init__(self, student_shapes, teacher_shapes, p: float = 2.0):
        super().__init__(student_shapes, teacher_shapes)
        self.p = float(p)

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        total = None
        for f_s, f_t in zip(student, teacher):
            f_s, f_t = pool_to_smaller(upcast(f_s), upcast(f_t))
            term = (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean(1)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"p={self.p}, {super().extra_repr()}"
