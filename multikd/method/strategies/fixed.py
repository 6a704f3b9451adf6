"""Weights given by hand, the same for every sample."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from multikd.errors import StrategyError
from multikd.method.strategies.base import Selection, Strategy, check_float, register_strategy


@register_strategy("fixed", "weights given by hand, one per teacher, normalised to sum to 1")
class Fixed(Strategy):
    """Weights given by the user, the same for every sample: ``w_k = v_k / sum_j v_j``
    for ``weights`` v (one non-negative number per teacher, in the ensemble's order, not
    all zero). A teacher with weight 0 is not kept. The static weighted average of
    teachers (You et al. 2017 average with equal weights; this generalises it to weights
    chosen by hand, e.g. proportional to each teacher's validation accuracy)."""

    def __init__(self, weights: Sequence[float] | None = None):
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise StrategyError(
                "strategy 'fixed' needs weights: a list of non-negative numbers, one per "
                f"teacher (e.g. weights=[0.5, 0.3, 0.2]); got {weights!r}"
            )
        values = [check_float("fixed", "weights", v) for v in weights]
        if not values or any(v < 0 for v in values) or sum(values) <= 0:
            raise StrategyError(
                f"strategy 'fixed' needs non-negative weights that are not all zero; got {values}"
            )
        self.weights_given = values
        self._column: torch.Tensor | None = None
        self._kept: torch.Tensor | None = None

    def _select(self, ce, logits, labels):
        if len(self.weights_given) != ce.shape[0]:
            raise StrategyError(
                f"strategy 'fixed' has {len(self.weights_given)} weights but there are "
                f"{ce.shape[0]} teachers; give one weight per teacher"
            )
        if (self._column is None or self._column.device != ce.device
                or self._column.dtype != ce.dtype):
            # built once per device: a host-to-device copy every step would wait for the device
            v = torch.tensor(self.weights_given, dtype=ce.dtype).unsqueeze(1)
            self._column = (v / v.sum()).to(ce.device)
            self._kept = self._column > 0
        return Selection(self._column.expand_as(ce), self._kept.expand_as(ce))


# --------------------------------------------------------------------------- helpers
