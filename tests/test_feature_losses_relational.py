"""NST, PKT, SP and RKD (``loss.feature_loss: nst | pkt | sp | rkd``) against mdistiller's
formulas, transcribed by hand and checked in float64.

mdistiller ``mdistiller/distillers/NST.py`` (``nst_loss``, ``single_stage_nst_loss``,
``poly_kernel``), ``PKT.py`` (``pkt_loss``), ``SP.py`` (``sp_loss``, ``similarity_loss``)
and ``RKD.py`` (``rkd_loss``, ``_pdist``). A per-sample loss's batch mean equals the
reference; a per-batch loss's one value equals it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureBatch, FeatureSetup, run_per_teacher,
)
from multikd.method.feature_losses.nst import NeuronSelectivityTransfer
from multikd.method.feature_losses.pkt import ProbabilisticKnowledgeTransfer
from multikd.method.feature_losses.rkd import RelationalKD
from multikd.method.feature_losses.sp import SimilarityPreserving
from tests.tolerances import REF64

B = 6


# ------------------------------------------------------------------ the references, by hand
def _ref_nst(g_s, g_t):
    """mdistiller ``nst_loss`` transcribed."""
    def poly_kernel(a, b):
        a = a.unsqueeze(1)
        b = b.unsqueeze(2)
        return (a * b).sum(-1).pow(2)

    def single_stage(f_s, f_t):
        s_h, t_h = f_s.shape[2], f_t.shape[2]
        if s_h > t_h:
            f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
        elif s_h < t_h:
            f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
        f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
        f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return (poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean()
                - 2 * poly_kernel(f_s, f_t).mean())

    return sum(single_stage(f_s, f_t) for f_s, f_t in zip(g_s, g_t))


def _ref_pkt(f_s, f_t, eps=1e-7):
    """mdistiller ``pkt_loss`` transcribed."""
    output_net_norm = torch.sqrt(torch.sum(f_s ** 2, dim=1, keepdim=True))
    f_s = f_s / (output_net_norm + eps)
    f_s[f_s != f_s] = 0
    target_net_norm = torch.sqrt(torch.sum(f_t ** 2, dim=1, keepdim=True))
    f_t = f_t / (target_net_norm + eps)
    f_t[f_t != f_t] = 0
    model_similarity = torch.mm(f_s, f_s.transpose(0, 1))
    target_similarity = torch.mm(f_t, f_t.transpose(0, 1))
    model_similarity = (model_similarity + 1.0) / 2.0
    target_similarity = (target_similarity + 1.0) / 2.0
    model_similarity = model_similarity / torch.sum(model_similarity, dim=1, keepdim=True)
    target_similarity = target_similarity / torch.sum(target_similarity, dim=1, keepdim=True)
    return torch.mean(
        target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps))
    )


def _ref_sp(g_s, g_t):
    """mdistiller ``sp_loss`` transcribed (a ``[1]`` tensor, as the reference's)."""
    def similarity_loss(f_s, f_t):
        bsz = f_s.shape[0]
        f_s = f_s.view(bsz, -1)
        f_t = f_t.view(bsz, -1)
        g_s_ = F.normalize(torch.mm(f_s, torch.t(f_s)))
        g_t_ = F.normalize(torch.mm(f_t, torch.t(f_t)))
        g_diff = g_t_ - g_s_
        return (g_diff * g_diff).view(-1, 1).sum(0) / (bsz * bsz)

    return sum(similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))


def _ref_pdist(e, squared, eps):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def _ref_rkd(f_s, f_t, squared=False, eps=1e-12, distance_weight=25, angle_weight=50):
    """mdistiller ``rkd_loss`` transcribed."""
    stu = f_s.view(f_s.shape[0], -1)
    tea = f_t.view(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _ref_pdist(tea, squared, eps)
        t_d = t_d / t_d[t_d > 0].mean()
    d = _ref_pdist(stu, squared, eps)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    with torch.no_grad():
        td = tea.unsqueeze(0) - tea.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = stu.unsqueeze(0) - stu.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    loss_a = F.smooth_l1_loss(s_angle, t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


# ------------------------------------------------------------------ fixed inputs
def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _stage_maps(seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = [_randn(gen, B, 8, 4, 4), _randn(gen, B, 16, 2, 2)]
    teacher = [_randn(gen, B, 5, 2, 2),   # smaller: pools the student's map
               _randn(gen, B, 7, 4, 4)]   # larger: pools the teacher's map
    return student, teacher


def _pooled(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [_randn(gen, B, 10)], [_randn(gen, B, 12)]


def _shapes(maps):
    return [tuple(m.shape[1:]) for m in maps]


def _build(cls, student, teacher, **params):
    return cls(_shapes(student), _shapes(teacher), **params)


BATCH = FeatureBatch(torch.zeros(B, dtype=torch.long))


# ------------------------------------------------------------------ equal to the reference
def test_nst_batch_mean_equals_mdistillers_nst_loss():
    student, teacher = _stage_maps()
    value = _build(NeuronSelectivityTransfer, student, teacher)(student, teacher, BATCH)
    assert value.shape == (B,) and value.dtype == torch.float64
    torch.testing.assert_close(value.mean(), _ref_nst(student, teacher), **REF64)


@pytest.mark.parametrize("eps", [1e-7, 1e-3])
@pytest.mark.parametrize("as_map", [False, True])
def test_pkt_batch_mean_equals_mdistillers_pkt_loss(eps, as_map):
    student, teacher = _pooled(1)
    expected = _ref_pkt(student[0].clone(), teacher[0].clone(), eps)
    if as_map:  # the pooled feature as a tap may give it: [B, C, 1, 1]
        student, teacher = [student[0][..., None, None]], [teacher[0][..., None, None]]
    value = _build(ProbabilisticKnowledgeTransfer, student, teacher, eps=eps)(
        student, teacher, BATCH)
    assert value.shape == (B,) and value.dtype == torch.float64
    torch.testing.assert_close(value.mean(), expected, **REF64)


def test_pkt_per_anchor_value_is_that_anchors_kl_over_the_batch_size():
    student, teacher = _pooled(2)
    value = _build(ProbabilisticKnowledgeTransfer, student, teacher)(student, teacher, BATCH)

    def distributions(f):
        f = F.normalize(f, dim=1, eps=0.0)
        sim = (f @ f.t() + 1) / 2
        return sim / sim.sum(1, keepdim=True)

    p, q = distributions(student[0]), distributions(teacher[0])
    kl = (q * (q.log() - p.log())).sum(1)  # eps=1e-7 moves it by ~1e-7 relative
    torch.testing.assert_close(value, kl / B, rtol=1e-5, atol=0.0)


def test_sp_value_equals_mdistillers_sp_loss():
    student, teacher = _stage_maps(3)
    student, teacher = student[-1:], teacher[-1:]  # reads="last": feats[-1]
    value = _build(SimilarityPreserving, student, teacher)(student, teacher, BATCH)
    assert value.dim() == 0 and value.dtype == torch.float64
    torch.testing.assert_close(value, _ref_sp(student, teacher)[0], **REF64)


@pytest.mark.parametrize("params", [
    {},
    {"squared": True},
    {"distance_weight": 1.0, "angle_weight": 2.0, "eps": 1e-6},
])
def test_rkd_value_equals_mdistillers_rkd_loss(params):
    student, teacher = _pooled(4)
    value = _build(RelationalKD, student, teacher, **params)(student, teacher, BATCH)
    assert value.dim() == 0 and value.dtype == torch.float64
    torch.testing.assert_close(value, _ref_rkd(student[0], teacher[0], **params), **REF64)
    flat = [student[0][..., None, None]], [teacher[0][..., None, None]]
    torch.testing.assert_close(
        _build(RelationalKD, *flat, **params)(*flat, BATCH), value, **REF64)


# ------------------------------------------------------------------ gradients and granularity
CASES = {
    "nst": (NeuronSelectivityTransfer, _stage_maps),
    "pkt": (ProbabilisticKnowledgeTransfer, _pooled),
    "sp": (SimilarityPreserving, lambda seed: tuple(m[-1:] for m in _stage_maps(seed))),
    "rkd": (RelationalKD, _pooled),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_reach_the_student_maps_only(name):
    cls, maps = CASES[name]
    student, teacher = maps(5)
    student = [s.requires_grad_(True) for s in student]
    teacher = [t.requires_grad_(True) for t in teacher]
    loss = _build(cls, student, teacher)
    values = run_per_teacher([loss], student, [teacher], BATCH)  # [K=1, B]
    assert values.shape == (1, B)
    values.sum().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)
    assert list(loss.parameters()) == []


def test_rkd_keeps_the_teacher_side_out_of_the_graph_even_when_called_directly():
    student, teacher = _pooled(6)
    student[0].requires_grad_(True)
    teacher[0].requires_grad_(True)
    _build(RelationalKD, student, teacher)(student, teacher, BATCH).backward()
    assert teacher[0].grad is None and student[0].grad.abs().sum() > 0


def test_nst_sample_value_reads_its_own_sample_only():
    student, teacher = _stage_maps(7)
    loss = _build(NeuronSelectivityTransfer, student, teacher)
    before = loss(student, teacher, BATCH)
    student2 = [s.clone() for s in student]
    teacher2 = [t.clone() for t in teacher]
    for m in (*student2, *teacher2):
        m[4] = torch.randn_like(m[4])
    after = loss(student2, teacher2, BATCH)
    keep = [0, 1, 2, 3, 5]
    torch.testing.assert_close(after[keep], before[keep], **REF64)
    assert not torch.allclose(after[4], before[4])


def test_pkt_anchor_value_reads_the_other_samples():
    """PKT's distributions range over the batch: a per-anchor value, not an independent one."""
    student, teacher = _pooled(8)
    loss = _build(ProbabilisticKnowledgeTransfer, student, teacher)
    before = loss(student, teacher, BATCH)
    student2 = [student[0].clone()]
    student2[0][4] = torch.randn_like(student2[0][4])
    assert not torch.allclose(loss(student2, teacher, BATCH)[0], before[0])


@pytest.mark.parametrize("name", list(CASES))
def test_half_and_float32_maps_compute_in_float32(name):
    cls, maps = CASES[name]
    student, teacher = maps(9)
    value = _build(cls, student, teacher)([s.half() for s in student],
                                          [t.float() for t in teacher], BATCH)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()


# ------------------------------------------------------------------ registry
@pytest.mark.parametrize("name, params, reads, per_sample, gamma", [
    ("nst", {}, "stages", True, 50.0),
    ("pkt", {"eps": 1e-7}, "pooled", True, 30000.0),
    ("sp", {}, "last", False, 3000.0),
    ("rkd", {"distance_weight": 25.0, "angle_weight": 50.0, "eps": 1e-12, "squared": False},
     "pooled", False, 1.0),
])
def test_registered_with_params_reads_granularity_and_reference_weight(
        name, params, reads, per_sample, gamma):
    entry = FEATURE_LOSS_REGISTRY.entry(name)
    assert dict(entry.params) == params
    assert entry.info["reads"] == reads
    assert entry.info["per_sample"] is per_sample
    assert entry.info["reference_gamma"] == gamma
    granularity = "per sample" if per_sample else "per batch"
    assert entry.description.endswith(f"({granularity}; reference γ={gamma:g})")


def test_nst_pairs_the_first_stages_as_the_references_zip():
    nst = NeuronSelectivityTransfer.build(FeatureSetup(None, None, [(4, 8, 8)] * 2, [(4, 8, 8)] * 3))
    g = torch.Generator().manual_seed(4)
    s = [torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    t = [torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    batch = FeatureBatch(torch.zeros(3, dtype=torch.long))
    assert torch.equal(nst(s, t, batch), nst(s, t[:2], batch))
