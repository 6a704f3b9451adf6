"""``nst``: neuron selectivity transfer (Huang & Wang, "Like What You Like", 2017).

mdistiller ``mdistiller/distillers/NST.py`` (``single_stage_nst_loss``, ``poly_kernel``,
``nst_loss``; the same as RepDistiller ``distiller_zoo/NST.py``), per stage s of every stage
but the stem (``feats[1:]``), after average-pooling the larger map to the smaller's size:
each channel's map ``[H*W]`` is L2-normalised per sample and channel, ``f_i [C, H*W]``, and
with the squared polynomial kernel ``k(a, b) = (a . b)^2`` over every pair of channels,

    MMD_i(s) = mean_cc' k(t_ic, t_ic') + mean_cc' k(s_ic, s_ic') - 2 mean_cc' k(s_ic, t_ic')
    l_i      = sum_s MMD_i(s)

(the teacher-teacher term detached, as the reference does). The reference takes each
kernel's mean over the batch and the channel pairs at once; per sample it is the mean over
the channel pairs, whose batch mean is the reference's value, and sample i's value reads
sample i's maps only. Stages are paired as the reference's ``zip`` pairs them: the first
``min(n_student, n_teacher)`` of each. Reference weight: γ = 50 (mdistiller
``CFG.NST.LOSS.FEAT_WEIGHT``). Granularity: per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multikd.method.feature_losses.base import (
    FeatureBatch, FeatureLoss, pool_to_smaller, register_feature_loss,
)
from multikd.method.precision import upcast


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B]``: per sample, the mean over channel pairs (c of ``a``, c' of ``b``) of
    ``(a_c . b_c')^2`` for ``a [B, C, N]``, ``b [B, C', N]`` (mdistiller's ``poly_kernel``
    before its mean over the batch)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).flatten(1).mean(1)


@register_feature_loss(
    "nst", "neuron selectivity transfer: squared-polynomial-kernel MMD between the "
           "normalised channel maps, every stage (per sample; reference γ=50)"
)
class NeuronSelectivityTransfer(FeatureLoss):
    """Neuron selectivity transfer (module doc), per sample."""

    reads = "stages"
    reference_gamma = 50.0

    def __init__(self, student_shapes, teacher_shapes):
        super().__init__(student_shapes, teacher_shapes)

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        total = None
        for f_s, f_t in zip(student, teacher):
            f_s, f_t = pool_to_smaller(upcast(f_s), upcast(f_t))
            f_s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
            f_t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
            term = (poly_kernel_mean(f_t, f_t).detach() + poly_kernel_mean(f_s, f_s)
                    - 2 * poly_kernel_mean(f_s, f_t))
            total = term if total is None else total + term
        return total
