"""Feature losses: how the student's features are compared with a teacher's (a registry).

A feature loss compares, for one teacher, the student's maps with that teacher's maps at
one or several stages and gives one value per sample:

    loss(student: Sequence[Tensor], teacher: Sequence[Tensor], **params) -> [B]

``student[s]`` is the student's map at stage s as the distiller hands it over (through the
teacher's adapter, :mod:`multikd.method.adapters`), ``teacher[s]`` the teacher's map at the
same stage (as the adapter compares it, ``FeatureAdapter.target``), each ``[B, ...]``.
The distiller taps one stage, so today both sequences hold one map; losses over several
stages (AT, ReviewKD) or over the relations between a batch's samples (RKD, PKT) take the
same two sequences. :func:`feature_loss_per_teacher` runs a loss for every teacher, giving
``[K,B]``, which the distiller weights as ``mean_i sum_k v_ki l_ki``
(:func:`multikd.method.losses.weighted_teacher_mean`).

A new loss is a function registered with ``@register_feature_loss("name", "one-line
description")``; its keyword parameters, with their defaults, are its parameters
(``loss.feature_params``), and ``loss.feature_loss: name`` selects it. Computed in float32
for half-precision input (:func:`~multikd.method.precision.upcast`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from multikd.errors import ConfigError
from multikd.method.precision import upcast
from multikd.method.registry import Registry

FEATURE_LOSS_REGISTRY = Registry(
    "feature loss", "feature losses", ConfigError, skip=("student", "teacher")
)
"""The feature-loss registry: name -> ``loss(student, teacher, **params) -> [B]``."""


def register_feature_loss(name: str, description: str | None = None, *,
                          params: Mapping[str, object] | None = None) -> Callable:
    """Function decorator: register a feature loss (signature in the module doc) as ``name``.
    ``params`` (default: the function's keyword parameters and their defaults) are what
    ``loss.feature_params`` may set; a name registered twice is a
    :class:`~multikd.errors.ConfigError`."""
    return FEATURE_LOSS_REGISTRY.register(name, description, params=params)


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


def feature_loss_per_teacher(
    adapted: Sequence[torch.Tensor | Sequence[torch.Tensor]],
    teacher_features: Sequence[torch.Tensor | Sequence[torch.Tensor]],
    name: str = "mse",
    params: Mapping[str, object] | None = None,
) -> torch.Tensor:
    """``[K,B]``: feature loss ``name`` (default the FitNets hint, ``mse``) of the student
    against each teacher. ``adapted[k]`` is the student's map adapted to teacher k (or one
    map per stage), shaped like ``teacher_features[k]``; ``params`` the loss's own
    parameters. The result stays on the autograd graph of ``adapted``. An unknown name or
    parameter raises :class:`~multikd.errors.ConfigError` listing the valid ones; maps of
    different shapes a ``ValueError``."""
    params = dict(params or {})
    loss = FEATURE_LOSS_REGISTRY.check_params(name, params).target
    per_teacher = []
    for k, (a, t) in enumerate(zip(adapted, teacher_features)):
        a, t = _stages(a), _stages(t)
        if len(a) != len(t):
            raise ValueError(
                f"the student has {len(a)} adapted maps for teacher {k} but the teacher has "
                f"{len(t)}: give one pair per stage"
            )
        for s, ts in zip(a, t):
            if s.shape != ts.shape:
                raise ValueError(
                    f"adapted student feature {tuple(s.shape)} does not match teacher {k}'s "
                    f"feature {tuple(ts.shape)}"
                )
        per_teacher.append(loss(a, t, **params))
    return torch.stack(per_teacher)


def _stages(maps: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One map as a list of one; a sequence of maps (one per stage) as a list."""
    return [maps] if isinstance(maps, torch.Tensor) else list(maps)
