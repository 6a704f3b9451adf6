"""Distillation losses as free functions: single-teacher KD, MSE on logits, and their
multi-teacher weighted forms, plus the weighted feature loss (the feature losses themselves
are a registry, :mod:`multikd.method.feature_losses`).

Shapes: student logits ``[B,C]``, teacher logits ``[K,B,C]`` (K teachers), teacher weights
``[K,B]`` (non-negative, each column summing to 1, see :mod:`multikd.method.strategies`). Every
multi-teacher loss is ``mean_i sum_k w_ki * l_ki``: per sample a weighted sum over teachers,
then the batch mean. Losses are computed in float32 even under autocast (soft targets at
high T and small KL values lose their precision in half precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from multikd.method.feature_losses import feature_loss_per_teacher
from multikd.method.precision import upcast

__all__ = [
    "UNLABELED", "feature_loss", "feature_loss_per_teacher", "kd_loss", "labeled_ce",
    "mse_logit_loss", "multi_teacher_kd_loss", "multi_teacher_mse_loss", "upcast",
    "weighted_teacher_mean",
]

_REDUCTIONS = ("batchmean", "none")


UNLABELED = -100
"""The label of an unlabelled training sample: ``cross_entropy``'s default ``ignore_index``,
the value :mod:`multikd.data.transfer` writes (``method`` does not import ``data``; a test
checks the two agree)."""


def labeled_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch's labelled samples (``y != UNLABELED``), 0 for a
    batch without any: ``sum_i CE_i / max(1, #labelled)``, without a host read."""
    labelled = (y != UNLABELED).sum()
    return F.cross_entropy(logits, y, reduction="sum") / labelled.clamp(min=1)


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, reduction: str = "batchmean"
) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the knowledge in a neural network":

        KD_T(s, t)_i = T^2 * KL(softmax(t_i/T) || softmax(s_i/T))
                     = T^2 * sum_c p_ic (log p_ic - log q_ic),  p = softmax(t/T), q = softmax(s/T)

    The factor T^2 keeps the gradient's scale independent of T (the gradient of the KL term
    with respect to the logits scales as 1/T^2 for large T). ``student``/``teacher`` are
    ``[..., C]``; ``reduction="none"`` returns one value per row ``[...]``, ``"batchmean"``
    their mean. The teacher side is a constant target only if the caller detaches it.
    """
    _check_reduction(reduction)
    log_q = F.log_softmax(upcast(student) / temperature, dim=-1)
    log_p = F.log_softmax(upcast(teacher) / temperature, dim=-1)
    per_row = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    return per_row.mean() if reduction == "batchmean" else per_row


def mse_logit_loss(
    student: torch.Tensor, teacher: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """Logit matching (Ba & Caruana 2014, "Do deep nets really need to be deep?"):

        MSE(s, t)_i = (1/C) * sum_c (s_ic - t_ic)^2

    the high-temperature limit of KD (Hinton et al. 2015, section 2.1): for T >> |logits|
    and zero-mean logits, KD_T(s, t) -> (1/2C) sum_c (s_c - t_c)^2 = MSE(s, t) / 2. Per row
    mean over the C classes; ``reduction`` as in :func:`kd_loss`.
    """
    _check_reduction(reduction)
    per_row = (upcast(student) - upcast(teacher)).pow(2).mean(-1)
    return per_row.mean() if reduction == "batchmean" else per_row


def weighted_teacher_mean(per_teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i sum_k w_ki * l_ki`` for per-teacher, per-sample losses ``l [K,B]`` and
    weights ``w [K,B]``. Zero weights multiply, they do not mask: a non-finite loss of a
    teacher with weight 0 still makes the result non-finite, so broken teachers are noticed."""
    if per_teacher.shape != weights.shape:
        raise ValueError(
            f"per-teacher losses {tuple(per_teacher.shape)} and weights "
            f"{tuple(weights.shape)} must both be [K,B]"
        )
    return (upcast(weights) * per_teacher).sum(0).mean()


def multi_teacher_kd_loss(
    student: torch.Tensor, teachers: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Weighted multi-teacher KD: ``mean_i sum_k w_ki * KD_T(s_i, t_ki)`` with
    ``student [B,C]``, ``teachers [K,B,C]``, ``weights [K,B]`` (KD_T of :func:`kd_loss`).
    With K = 1 and w = 1 this is exactly single-teacher Hinton KD."""
    _check_logits(student, teachers)
    per_teacher = kd_loss(student.unsqueeze(0), teachers, temperature, reduction="none")
    return weighted_teacher_mean(per_teacher, weights)


def multi_teacher_mse_loss(
    student: torch.Tensor, teachers: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted multi-teacher logit matching: ``mean_i sum_k w_ki * MSE(s_i, t_ki)``
    (MSE of :func:`mse_logit_loss`)."""
    _check_logits(student, teachers)
    per_teacher = mse_logit_loss(student.unsqueeze(0), teachers, reduction="none")
    return weighted_teacher_mean(per_teacher, weights)


def feature_loss(
    adapted: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor], weights: torch.Tensor
) -> torch.Tensor:
    """Weighted feature matching (FitNets hints, Romero et al. 2015, one per teacher: the
    ``mse`` feature loss of :mod:`multikd.method.feature_losses`):

        L_feat = mean_i sum_k w_ki * mean_e (a_k(f_s)_ie - f_tk,ie)^2

    ``adapted[k]`` is the student feature mapped by teacher k's adapter, ``[B, ...]`` shaped
    like ``teacher_features[k]``; ``mean_e`` runs over the elements of one sample's feature.
    The result stays on the autograd graph of ``adapted`` (never re-wrapped in a new tensor),
    so the student and the adapters receive its gradient.
    """
    if len(adapted) != len(teacher_features) or len(adapted) != weights.shape[0]:
        raise ValueError(
            f"feature_loss needs one adapted feature and one teacher feature per teacher: got "
            f"{len(adapted)} adapted, {len(teacher_features)} teacher features, "
            f"{weights.shape[0]} weight rows"
        )
    return weighted_teacher_mean(feature_loss_per_teacher(adapted, teacher_features), weights)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_logits(student: torch.Tensor, teachers: torch.Tensor) -> None:
    if teachers.dim() != 3 or student.dim() != 2 or teachers.shape[1:] != student.shape:
        raise ValueError(
            f"expected student logits [B,C] and teacher logits [K,B,C] with the same B and C; "
            f"got {tuple(student.shape)} and {tuple(teachers.shape)}"
        )
