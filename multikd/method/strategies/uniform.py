"""Uniform weights: the plain average of the teachers (AVER)."""

from __future__ import annotations

from multikd.method.strategies.base import Strategy, register_strategy, uniform_selection


@register_strategy("uniform", "1/K each: the plain average of the teachers (AVER; You et al. 2017)")
class Uniform(Strategy):
    """Plain average of the teachers (AVER; You et al. 2017, "Learning from multiple
    teacher networks", KDD): ``w_ki = 1/K``. Everyone is kept.

    Equal to the ``AVERAGE_LOSS`` baseline of CA-MKD's public code (``helper/loops.py``,
    ``train_distill_multi_teacher``: ``torch.stack(loss_div_list).mean(0)``) under either
    ``loss.teacher_reduction``: its own weights are 1 each (mass K), so ``mean`` and
    ``sum`` coincide."""

    reference_weight_mass = staticmethod(lambda k: k)

    def _select(self, ce, logits, labels):
        return uniform_selection(ce)
