"""EBKD: entropy-based teacher weights (Kwon et al., ICASSP 2020)."""

from __future__ import annotations

import torch

from multikd.method.losses import upcast
from multikd.method.strategies.base import Selection, Strategy, register_strategy


@register_strategy(
    "ebkd",
    "(1 - H_ki / sum_j H_ji) / (K - 1), H the prediction entropy (Kwon et al. 2020)",
)
class EntropyBased(Strategy):
    """Entropy-based weights (EBKD; Kwon et al., "Adaptive knowledge distillation based on
    entropy", ICASSP 2020): a more certain teacher gets a larger weight. The form is the
    one the field's comparisons run, the EBKD baseline in the public code of CA-MKD (Zhang
    et al., ICASSP 2022), whose results Gu et al. 2023 compare against: per sample the
    prediction entropy ``H_ki = -sum_c p_kic log p_kic`` with ``p = softmax(logits)``
    (T = 1), and

        w_ki = (1 - H_ki / sum_j H_ji) / (K - 1)

    That code uses ``1 - H_ki / sum_j H_ji`` (summing to K - 1) and divides every
    strategy's summed loss by K; the 1 / (K - 1) here makes the weights sum to 1 like every
    strategy's, so strategies differ only in how they share the weight. One teacher gets
    weight 1; where every teacher is certain (``sum_j H_ji = 0``) the weights are 1 / K.
    Labels are not used. Everyone is kept.

    ``loss.teacher_reduction: reference`` is that code's ``mean``: ``loss_div =
    (weight * loss_div).sum() / (bsz * teacher_num)`` on its own weights, which sum to
    K - 1 (``helper/loops.py`` ``train_distill_multi_teacher``, branch ``EBKD``), i.e.
    (K - 1) / K times the ``sum`` form on the weights above."""

    reference = {"teacher_reduction": "mean"}
    reference_weight_mass = staticmethod(lambda k: k - 1)

    def _select(self, ce, logits, labels):
        k = ce.shape[0]
        kept = torch.ones_like(ce, dtype=torch.bool)
        if k == 1:
            return Selection(torch.ones_like(ce), kept)
        entropy = torch.special.entr(torch.softmax(upcast(logits), dim=-1)).sum(-1)  # [K,B]
        total = entropy.sum(0, keepdim=True)
        share = torch.where(total > 0, entropy / total, 1.0 / k)
        return Selection((1.0 - share) / (k - 1), kept)
