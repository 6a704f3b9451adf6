"""All weight on the single best teacher: a selection baseline."""

from __future__ import annotations

import torch

from multikd.method.strategies.base import (
    GRANULARITIES,
    Selection,
    Strategy,
    best_mask,
    check_choice,
    register_strategy,
    score_of,
)


@register_strategy("best", "all weight on the teacher of lowest CE, per batch or per sample")
class Best(Strategy):
    """All weight on the single best teacher: ``w_ki = 1`` iff k = argmin_j s_j (lower
    index on ties), with s the batch-mean CE (``granularity="batch"``, default) or the
    per-sample CE (``"sample"``). A selection baseline defined by multikd: ce-filter
    with ``keep=1`` (equivalently tau -> 0), so the effect of weighting several survivors
    can be measured against choosing one."""

    def __init__(self, granularity: str = "batch"):
        self.granularity = check_choice("best", "granularity", granularity, GRANULARITIES)

    def _select(self, ce, logits, labels):
        best = best_mask(score_of(ce, self.granularity)).expand_as(ce)
        return Selection(best.to(ce.dtype), best)
