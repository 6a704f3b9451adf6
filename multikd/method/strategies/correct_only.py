"""Uniform over the teachers that predict the label: a label-filtering baseline."""

from __future__ import annotations

import torch

from multikd.method.strategies.base import Selection, Strategy, best_mask, register_strategy


@register_strategy(
    "correct-only",
    "uniform over the teachers whose top-1 is the label (the lowest-CE one if none is)",
)
class CorrectOnly(Strategy):
    """Uniform over the teachers whose top-1 prediction is the label, per sample:

        w_ki = c_ki / sum_j c_ji,  c_ki = [argmax_c logits_kic == y_i]

    and, for a sample that no teacher gets right, all weight on the teacher with the
    lowest CE on it. A label-filtering baseline defined by multikd: the hard-decision
    counterpart of ca-mkd's confidence weighting (Zhang et al. 2022), which also uses the
    labels to judge teachers."""

    def _select(self, ce, logits, labels):
        correct = logits.argmax(-1) == labels.unsqueeze(0)
        kept = torch.where(correct.any(0, keepdim=True), correct, best_mask(ce))
        weights = kept.to(ce.dtype)
        return Selection(weights / weights.sum(0, keepdim=True), kept)
