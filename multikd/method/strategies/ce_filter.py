"""CE screening and CE-ranked weighting (multikd's reading of Gu et al. 2023)."""

from __future__ import annotations

import math

import torch

from multikd.errors import StrategyError
from multikd.method.strategies.base import (
    GRANULARITIES,
    Selection,
    Strategy,
    best_mask,
    check_choice,
    check_float,
    check_positive_float,
    check_positive_int,
    register_strategy,
    score_of,
)


@register_strategy(
    "ce-filter", "drop teachers of CE > mean + margin, softmax(-CE/tau) over the rest (Gu et al. 2023)"
)
class CEFilter(Strategy):
    """CE screening and CE-ranked weighting: multikd's reading of Gu et al. 2023, "A
    multi-teacher knowledge distillation model compression algorithm for deep neural
    network" (teachers screened by the cross-entropy of their predictions, the better ones
    guide the student with a larger say; the paper's exact rule is not public).

    Score s_k: the batch-mean CE of teacher k (``granularity="batch"``, one decision per
    batch, broadcast over its samples) or its per-sample CE_ki (``"sample"``). Survivors:

    - ``margin`` m (default, m = 0.0): keep k iff s_k <= mean_j s_j + m;
    - ``keep`` n (instead of margin): keep the n lowest scores (ties: lower index first);

    and the best teacher (lowest score, lower index on ties) is always kept, so the
    filter can never drop everyone. Weights: softmax over the survivors with temperature
    ``tau`` > 0 (default 1.0), ``w_k = kept_k exp(-s_k/tau) / sum_j kept_j exp(-s_j/tau)``.
    ``margin=inf`` keeps all teachers (pure CE-softmax weighting); tau -> 0 tends to
    ``best``, tau -> inf to uniform over the survivors.
    """

    def __init__(
        self,
        margin: float | None = None,
        keep: int | None = None,
        tau: float = 1.0,
        granularity: str = "batch",
    ):
        if margin is not None and keep is not None:
            raise StrategyError(
                "ce-filter takes either margin (drop teachers whose CE exceeds the mean by "
                "more than margin) or keep (keep the best n teachers), not both"
            )
        self.keep = None if keep is None else check_positive_int("ce-filter", "keep", keep)
        self.margin = None if self.keep is not None else check_float(
            "ce-filter", "margin", 0.0 if margin is None else margin, allow_inf=True
        )
        self.tau = check_positive_float("ce-filter", "tau", tau)
        self.granularity = check_choice("ce-filter", "granularity", granularity, GRANULARITIES)

    def _select(self, ce, logits, labels):
        score = score_of(ce, self.granularity)
        if self.keep is not None:
            rank = torch.argsort(torch.argsort(score, dim=0, stable=True), dim=0)
            kept = rank < self.keep
        else:
            kept = score <= score.mean(0, keepdim=True) + self.margin
        kept = kept | best_mask(score)
        weights = torch.softmax((-score / self.tau).masked_fill(~kept, -math.inf), dim=0)
        return Selection(weights.expand_as(ce), kept.expand_as(ce))
