"""CA-MKD: confidence-aware teacher weights (Zhang, Chen & Wang, ICASSP 2022)."""

from __future__ import annotations

import torch

from multikd.method.strategies.base import Selection, Strategy, register_strategy


@register_strategy(
    "ca-mkd",
    "(1 - softmax_k CE_ki) / (K - 1): confidence-aware weights (Zhang et al. 2022)",
)
class ConfidenceAware(Strategy):
    """Confidence-aware weights (Zhang, Chen & Wang, "Confidence-aware multi-teacher
    knowledge distillation", ICASSP 2022): per sample,

        w_ki = (1 - softmax_k(CE_ki)) / (K - 1)

    so a teacher more confident in the true label weighs more; the K terms 1 - softmax
    sum to K - 1, hence each column sums to 1. A single teacher gets weight 1.

    Reference: CA-MKD's public code (github.com/Rorozhl/CA-MKD), ``helper/loops.py``
    ``train_distill_multi_teacher``, branch ``CAMKD``: ``attention = (1 - softmax(loss_t,
    dim=0)) / (teacher_num - 1)`` on per-sample teacher CE, and ``loss_div = (attention *
    loss_div).sum() / (bsz * teacher_num)``: the weighted sum over teachers is divided by
    K, the ``loss.teacher_reduction: mean`` that ``reference`` resolves to here (``sum``
    gives K times that distillation weight). With features (``loss.gamma`` > 0) the
    reference (``distiller_zoo/CAMKD.py`` ``CAMKD.forward``, ``models/util.py``
    ``CalWeight``) weights teacher k's feature MSE not by these weights but by
    ``(1 - softmax_k CE(head_k(embed_k(f_s)), y)) / (K - 1)``, the CE of teacher k's own
    classifier head on the adapted student feature, gradient included
    (``loss.feature_weights: teacher-head``), with an ``embed`` adapter (1x1 conv + BN +
    ReLU), the features of the last stage, the same ``/ (B K)`` reduction, and no feature
    term in the first epoch (``if epoch == 1``); all of these are its ``reference``."""

    reference = {
        "teacher_reduction": "mean",
        "feature_weights": "teacher-head",
        "adapter": "embed",
        "feature_start_epoch": 2,
    }

    def _select(self, ce, logits, labels):
        k = ce.shape[0]
        kept = torch.ones_like(ce, dtype=torch.bool)
        if k == 1:
            return Selection(torch.ones_like(ce), kept)
        return Selection((1.0 - torch.softmax(ce, dim=0)) / (k - 1), kept)
