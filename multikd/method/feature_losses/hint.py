"""``mse``: FitNets' hint, the feature loss of CA-MKD, MTKD-RL and MMKD (a hint loss: it
reads one stage, the student's through the teacher's adapter)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from multikd.method.feature_losses.base import register_feature_loss
from multikd.method.precision import upcast


@register_feature_loss(
    "mse", "FitNets hint: mean squared difference of the adapted student and the teacher maps"
)
def hint_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """FitNets hints (Romero et al., ICLR 2015), per sample ``[B]``:

        l_i = sum_s mean_e (a(f_s)_s,ie - f_t,s,ie)^2

    the mean over the elements of one sample's map, summed over the stages (one stage:
    FitNets' hint; MTKD-RL's ``FeatureMSELoss`` and MMKD's ``MatchFeature`` before their
    weighting)."""
    total = None
    for s, t in zip(student, teacher):
        term = (upcast(s) - upcast(t)).pow(2).flatten(1).mean(1)
        total = term if total is None else total + term
    return total
