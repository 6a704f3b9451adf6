"""``rkd``: relational knowledge distillation, distance and angle (Park et al., CVPR 2019).

mdistiller ``mdistiller/distillers/RKD.py`` (``rkd_loss``, ``_pdist``; the same as
RepDistiller ``distiller_zoo/RKD.py``), on the pooled vector (``pooled_feat``, flattened to
``[B, D]``), the teacher's side under ``no_grad``:

    d_ij = ||e_i - e_j|| (squared if ``squared``; clamped at ``eps`` before the root, 0 on
           the diagonal), divided by the mean of its positive entries
    a_ijk = <normalize(e_i - e_j), normalize(e_k - e_j)>     (every triple, the diagonal
           differences normalised to 0)
    l = distance_weight * smooth_l1(d_s, d_t) + angle_weight * smooth_l1(a_s, a_t)

the smooth L1 (β = 1) averaged over the B^2 distances and the B^3 angles: one value for the
whole batch. Reference weight: γ = 1 (mdistiller ``CFG.RKD.LOSS.FEAT_WEIGHT``), with
``distance_weight = 25``, ``angle_weight = 50``, ``eps = 1e-12``, ``squared = False``
(``CFG.RKD``). Granularity: per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multikd.method.feature_losses.base import FeatureBatch, FeatureLoss, register_feature_loss
from multikd.method.precision import upcast


def pairwise_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    """``[B, B]``: mdistiller's ``_pdist``, the (squared) Euclidean distances of the rows
    of ``e`` through ``|a|^2 + |b|^2 - 2 a.b`` clamped at ``eps``, 0 on the diagonal."""
    sq = e.pow(2).sum(1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    idx = torch.arange(e.shape[0], device=e.device)
    res[idx, idx] = 0
    return res


def _normalised_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    d = pairwise_distances(e, squared, eps)
    # the mean of the positive distances, d[d > 0].mean(), without its host sync: every
    # entry is >= 0, so their sum is the sum of all
    return d / (d.sum() / (d > 0).sum())


def _angles(e: torch.Tensor) -> torch.Tensor:
    """``[B^3]``: the cosines of the angles of every triple (mdistiller's ``s_angle``)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


@register_feature_loss(
    "rkd", "relational KD: smooth L1 between the normalised pairwise distances and the "
           "triplet angles of the batch, pooled feature (per batch; reference γ=1)"
)
class RelationalKD(FeatureLoss):
    """Relational knowledge distillation (module doc), one value per batch."""

    reads = "pooled"
    per_sample = False
    reference_gamma = 1.0

    def __init__(self, student_shapes, teacher_shapes, distance_weight: float = 25.0,
                 angle_weight: float = 50.0, eps: float = 1e-12, squared: bool = False):
        super().__init__(student_shapes, teacher_shapes)
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.eps = float(eps)
        self.squared = bool(squared)

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        stu, tea = upcast(student[0]), upcast(teacher[0])
        stu, tea = stu.reshape(stu.shape[0], -1), tea.reshape(tea.shape[0], -1)
        with torch.no_grad():
            t_d = _normalised_distances(tea, self.squared, self.eps)
            t_angle = _angles(tea)
        loss_d = F.smooth_l1_loss(_normalised_distances(stu, self.squared, self.eps), t_d)
        loss_a = F.smooth_l1_loss(_angles(stu), t_angle)
        return self.distance_weight * loss_d + self.angle_weight * loss_a

    def extra_repr(self) -> str:
        return (f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
                f"eps={self.eps}, squared={self.squared}, {super().extra_repr()}")
