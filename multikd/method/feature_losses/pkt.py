"""``pkt``: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

mdistiller ``mdistiller/distillers/PKT.py`` (``pkt_loss``; from
https://github.com/passalis/probabilistic_kt, the same as RepDistiller
``distiller_zoo/PKT.py``), on the pooled vector (``pooled_feat``, flattened to ``[B, D]``):
each row is divided by its L2 norm plus ``eps`` (a NaN set to 0), the cosine similarities
``c_ij`` of every pair of samples are scaled to ``(c_ij + 1) / 2`` and normalised per row
into distributions ``p_i`` (student) and ``q_i`` (teacher) over the batch, and

    l_i = (1/B) sum_j q_ij log((q_ij + eps) / (p_ij + eps))

is anchor i's KL divergence (with the reference's eps) divided by B. The reference takes
the mean over all B*B entries at once: the batch mean of the per-anchor KL divided by B,
``mean_i l_i``, is the reference's value exactly. Each anchor's distributions range over
the whole batch, so sample i's value reads the other samples too. Reference weight:
γ = 30000 (mdistiller ``CFG.PKT.LOSS.FEAT_WEIGHT``), ``eps = 1e-7``. Granularity: per
sample (per anchor).
"""

from __future__ import annotations

import torch

from multikd.method.feature_losses.base import FeatureBatch, FeatureLoss, register_feature_loss
from multikd.method.precision import upcast


def _unit_rows(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row divided by its L2 norm plus ``eps``, NaN entries set to 0 (the reference's
    ``f[f != f] = 0``)."""
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
    return torch.where(torch.isnan(f), torch.zeros_like(f), f)


def _similarity_distributions(f: torch.Tensor, eps: float) -> torch.Tensor:
    """``[B, B]``: row i is anchor i's distribution over the batch, the cosine similarities
    scaled to 0..1 and normalised to sum to 1."""
    f = _unit_rows(f, eps)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


@register_feature_loss(
    "pkt", "probabilistic knowledge transfer: KL between the teacher's and the student's "
           "cosine-similarity distributions over the batch, pooled feature "
           "(per sample; reference γ=30000)"
)
class ProbabilisticKnowledgeTransfer(FeatureLoss):
    """Probabilistic knowledge transfer (module doc), per anchor."""

    reads = "pooled"
    reference_gamma = 30000.0

    def __init__(self, student_shapes, teacher_shapes, eps: float = 1e-7):
        super().__init__(student_shapes, teacher_shapes)
        self.eps = float(eps)

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        f_s, f_t = upcast(student[0]), upcast(teacher[0])
        f_s, f_t = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
        p = _similarity_distributions(f_s, self.eps)
        q = _similarity_distributions(f_t, self.eps)
        return (q * torch.log((q + self.eps) / (p + self.eps))).mean(1)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"
