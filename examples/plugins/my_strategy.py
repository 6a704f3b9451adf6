"""A plugin strategy: ``softmin-ce``, teachers weighted by a softmin of their cross-entropy.

    w_ki = exp(-CE_ki / tau) / sum_j exp(-CE_ji / tau)      (per sample i; every teacher kept)

tau -> 0 keeps only the teacher with the lowest CE on each sample, tau -> inf is the plain
average. A sketch of an idea, not a published method. Use it without forking multikd:

    multikd distill --plugin examples/plugins/my_strategy.py --strategy softmin-ce \\
        --strategy-param tau=0.5 ...
"""

import torch

from multikd.method.strategies import Selection, Strategy, check_float, register_strategy


@register_strategy("softmin-ce", "softmax(-CE/tau) over the teachers, per sample")
class SoftminCE(Strategy):
    """``w_ki = softmax_k(-CE_ki / tau)``: the lower a teacher's cross-entropy on a sample,
    the larger its say; everyone is kept."""

    def __init__(self, tau: float = 1.0):
        self.tau = check_float("softmin-ce", "tau", tau)

    def _select(self, ce, logits, labels):
        weights = torch.softmax(-ce / self.tau, dim=0)  # [K,B], columns sum to 1
        return Selection(weights, torch.ones_like(weights, dtype=torch.bool))
