"""``crd`` (multikd.method.feature_losses.crd) against mdistiller's CRD transcribed by hand:
``mdistiller/distillers/CRD.py`` (Embed, Normalize, ContrastMemory, ContrastLoss) in float64
with a fixed memory bank and explicit contrast indices; its negative sampling against
``mdistiller/dataset/cifar100.py`` (CIFAR100InstanceSample) by its laws; the generator's
state through the state_dict."""

import io
import math

import pytest
import torch

from multikd.errors import ConfigError
from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureBatch, FeatureSetup, loss_info, run_per_teacher,
)
from multikd.method.feature_losses.crd import CRD

from tolerances import REF64

N, CLASSES, K, DIM, C_S, C_T, B = 40, 4, 8, 6, 5, 7, 5
LABELS = torch.arange(N) % CLASSES


def _module(labels=LABELS, nce_k=K, **params) -> CRD:
    return CRD([(C_S,)], [(C_T,)], labels, feat_dim=DIM, nce_k=nce_k, **params)


def _fixed(seed=0) -> CRD:
    """A float64 module with a fixed state: weights and memory banks from ``seed``."""
    torch.manual_seed(seed)
    m = _module().double()
    with torch.no_grad():
        m.memory_s.copy_(torch.rand(N, DIM, dtype=torch.float64) * 2 - 1)
        m.memory_t.copy_(torch.rand(N, DIM, dtype=torch.float64) * 2 - 1)
    return m


class Reference:
    """mdistiller's CRD.crd_loss, Embed, ContrastMemory.forward and ContrastLoss.forward,
    copied as plain code (float64, the module's weights and memory copied in)."""

    def __init__(self, m: CRD):
        self.w_s, self.b_s, self.w_t, self.b_t = (
            p.detach().clone().requires_grad_(True)
            for p in (m.embed_s.linear.weight, m.embed_s.linear.bias,
                      m.embed_t.linear.weight, m.embed_t.linear.bias))
        self.memory_v1 = m.memory_s.clone()
        self.memory_v2 = m.memory_t.clone()
        self.params = torch.tensor([m.nce_k, m.nce_t, -1, -1, m.nce_mom], dtype=torch.float64)
        self.num_data = m.n_data

    @staticmethod
    def embed(x, w, b):
        x = x.reshape(x.shape[0], -1)
        x = x @ w.t() + b
        norm = x.pow(2).sum(1, keepdim=True).pow(1.0 / 2)
        return x.div(norm)

    def contrast(self, v1, v2, y, idx):
        K = int(self.params[0].item())
        T = self.params[1].item()
        Z_v1 = self.params[2].item()
        Z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        batchSize = v1.size(0)
        outputSize = self.memory_v1.size(0)
        inputSize = self.memory_v1.size(1)
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach()
        weight_v1 = weight_v1.view(batchSize, K + 1, inputSize)
        out_v2 = torch.bmm(weight_v1, v2.view(batchSize, inputSize, 1))
        out_v2 = torch.exp(torch.div(out_v2, T))
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach()
        weight_v2 = weight_v2.view(batchSize, K + 1, inputSize)
        out_v1 = torch.bmm(weight_v2, v1.view(batchSize, inputSize, 1))
        out_v1 = torch.exp(torch.div(out_v1, T))
        if Z_v1 < 0:
            self.params[2] = out_v1.detach().mean() * outputSize
            Z_v1 = self.params[2].clone().detach().item()
        if Z_v2 < 0:
            self.params[3] = out_v2.detach().mean() * outputSize
            Z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, Z_v1).contiguous()
        out_v2 = torch.div(out_v2, Z_v2).contiguous()
        with torch.no_grad():
            l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
            l_pos.mul_(momentum)
            l_pos.add_(torch.mul(v1, 1 - momentum))
            l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            updated_v1 = l_pos.div(l_norm)
            self.memory_v1.index_copy_(0, y, updated_v1)
            ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
            ab_pos.mul_(momentum)
            ab_pos.add_(torch.mul(v2, 1 - momentum))
            ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            updated_v2 = ab_pos.div(ab_norm)
            self.memory_v2.index_copy_(0, y, updated_v2)
        return out_v1, out_v2

    def criterion(self, x):
        eps = 1e-7
        bsz = x.shape[0]
        m = x.size(1) - 1
        Pn = 1 / float(self.num_data)
        P_pos = x.select(1, 0)
        log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
        P_neg = x.narrow(1, 1, m)
        log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log_()
        return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz

    def crd_loss(self, f_s, f_t, idx, contrast_idx):
        f_s = self.embed(f_s, self.w_s, self.b_s)
        f_t = self.embed(f_t, self.w_t, self.b_t)
        out_s, out_t = self.contrast(f_s, f_t, idx, contrast_idx)
        return self.criterion(out_s) + self.criterion(out_t)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(B, C_S, generator=g, dtype=torch.float64)
    f_t = torch.randn(B, C_T, generator=g, dtype=torch.float64)
    index = torch.randperm(N, generator=g)[:B]
    negatives = torch.stack([
        torch.nonzero(LABELS != LABELS[i])[:, 0][torch.randperm(N - N // CLASSES, generator=g)[:K]]
        for i in index
    ])
    return f_s, f_t, index, torch.cat([index[:, None], negatives], 1)


def test_loss_memory_update_and_z_match_the_reference_over_two_steps():
    m = _fixed()
    ref = Reference(m)
    for step in range(2):
        f_s, f_t, index, contrast = _batch(10 + step)
        f_s_ref = f_s.clone().requires_grad_(True)
        f_s.requires_grad_(True)
        loss = m.loss_with_contrast([f_s], [f_t], index, contrast)
        expected = ref.crd_loss(f_s_ref, f_t, index, contrast)
        assert loss.shape == () and expected.shape == (1,)
        torch.testing.assert_close(loss, expected[0], **REF64)
        torch.testing.assert_close(m.memory_s, ref.memory_v1, **REF64)
        torch.testing.assert_close(m.memory_t, ref.memory_v2, **REF64)
        # Z set from the first batch, then fixed
        assert bool(m.z_set)
        torch.testing.assert_close(m.z_s, ref.params[2], **REF64)
        torch.testing.assert_close(m.z_t, ref.params[3], **REF64)
        if step == 0:
            z_first = (m.z_s.clone(), m.z_t.clone())
        else:
            assert torch.equal(m.z_s, z_first[0]) and torch.equal(m.z_t, z_first[1])
        # gradients: the student's map and both embeddings, as the reference's
        loss.backward()
        expected.sum().backward()
        torch.testing.assert_close(f_s.grad, f_s_ref.grad, **REF64)
        torch.testing.assert_close(m.embed_s.linear.weight.grad, ref.w_s.grad, **REF64)
        torch.testing.assert_close(m.embed_t.linear.weight.grad, ref.w_t.grad, **REF64)
        torch.testing.assert_close(m.embed_t.linear.bias.grad, ref.b_t.grad, **REF64)
        for p in (*m.parameters(), ref.w_s, ref.b_s, ref.w_t, ref.b_t):
            p.grad = None


def test_gradients_reach_the_student_and_both_embeddings_not_the_memory():
    m = _fixed()
    f_s, f_t, index, contrast = _batch(3)
    f_s.requires_grad_(True)
    f_t.requires_grad_(True)  # forward detaches the teacher's map
    m.loss_with_contrast([f_s], [f_t], index, contrast).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for p in m.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert {n for n, _ in m.named_parameters()} == {
        "embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight",
        "embed_t.linear.bias"}
    assert not m.memory_s.requires_grad and not m.memory_t.requires_grad


def test_memory_banks_start_uniform_in_plus_minus_stdv():
    torch.manual_seed(0)
    m = CRD([(C_S,)], [(C_T,)], torch.arange(2000) % 4, feat_dim=DIM, nce_k=K)
    stdv = 1.0 / math.sqrt(DIM / 3)
    for mem in (m.memory_s, m.memory_t):
        assert mem.shape == (2000, DIM)
        assert mem.min() >= -stdv and mem.max() <= stdv
        assert mem.min() < -0.95 * stdv and mem.max() > 0.95 * stdv
    assert not torch.equal(m.memory_s, m.memory_t)
    assert not bool(m.z_set)


# --------------------------------------------------------------------------- negatives
def _check_contrast(m, labels, index, contrast, k, replace):
    assert contrast.shape == (index.numel(), k + 1) and contrast.dtype == torch.long
    neg = contrast[:, 1:]
    assert (labels[neg] != labels[index][:, None]).all()  # never the anchor's class
    assert ((neg >= 0) & (neg < labels.numel())).all()
    if not replace:
        for row in neg:
            assert row.unique().numel() == k  # without replacement


def test_exact_mode_puts_the_anchor_first_and_draws_other_classes_without_replacement():
    m = _module()
    index = torch.arange(N)
    contrast = m.sample_contrast(index)
    assert torch.equal(contrast[:, 0], index)
    _check_contrast(m, LABELS, index, contrast, K, replace=False)
    # K = all the other classes' samples: each row is exactly that set
    full = _module(nce_k=N - N // CLASSES).sample_contrast(index)
    for i, row in zip(index, full[:, 1:]):
        assert torch.equal(row.sort().values, torch.nonzero(LABELS != LABELS[i])[:, 0])


def test_more_negatives_than_the_other_classes_hold_draws_with_replacement():
    k = 1000  # > 30 other-class samples: the reference's replace=True
    m = _module(nce_k=k)
    index = torch.arange(N)
    contrast = m.sample_contrast(index)
    assert torch.equal(contrast[:, 0], index)
    _check_contrast(m, LABELS, index, contrast, k, replace=True)
    for i, row in zip(index, contrast[:, 1:]):  # every other-class sample reachable
        assert torch.equal(row.unique(), torch.nonzero(LABELS != LABELS[i])[:, 0])


def test_classes_on_both_sides_of_k_draw_each_row_as_the_reference():
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.arange(30) % 3 + 1])
    k = 40  # class 0 has 30 others (with replacement), classes 1-3 have 50 (without)
    m = _module(labels=labels, nce_k=k)
    index = torch.tensor([0, 31, 5, 59, 30])
    contrast = m.sample_contrast(index)
    assert torch.equal(contrast[:, 0], index)
    _check_contrast(m, labels, index, contrast, k, replace=True)
    for i, row in zip(index, contrast[:, 1:]):
        if labels[i] != 0:
            assert row.unique().numel() == k


def test_relax_mode_draws_a_same_class_positive():
    m = _module(mode="relax")
    index = torch.arange(N).repeat(5)
    contrast = m.sample_contrast(index)
    assert torch.equal(LABELS[contrast[:, 0]], LABELS[index])
    assert not torch.equal(contrast[:, 0], index)
    _check_contrast(m, LABELS, index, contrast, K, replace=False)


def test_negatives_are_uniform_over_the_other_classes():
    m = _module()
    draws = torch.cat([m.sample_contrast(torch.tensor([7]))[0, 1:] for _ in range(300)])
    counts = torch.bincount(draws, minlength=N).double()
    others = LABELS != LABELS[7]
    assert (counts[~others] == 0).all()
    expected = 300 * K / others.sum()  # 80 per sample
    chi2 = ((counts[others] - expected) ** 2 / expected).sum()
    assert chi2 < 70  # 29 degrees of freedom: P(chi2 > 70) ~ 3e-5


# --------------------------------------------------------------------------- state
def test_same_seed_same_negatives_and_another_seed_others():
    index = torch.arange(0, N, 3)
    a, b, c = _module(seed=5), _module(seed=5), _module(seed=6)
    for _ in range(3):
        ca, cb, cc = (m.sample_contrast(index) for m in (a, b, c))
        assert torch.equal(ca, cb)
        assert not torch.equal(ca, cc)


def test_state_dict_resumes_the_generator_exactly():
    index = torch.arange(0, N, 2)
    a = _module(seed=3)
    fresh = a.state_dict()  # before any draw: resumes as a fresh seed-3 generator
    first = a.sample_contrast(index)
    a.sample_contrast(index)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    expected = a.sample_contrast(index)

    b = _module(seed=9)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(b.sample_contrast(index), expected)
    assert torch.equal(b.sample_contrast(index), a.sample_contrast(index))

    c = _module(seed=9)
    c.load_state_dict(fresh)
    assert torch.equal(c.sample_contrast(index), first)


def test_state_dict_holds_the_memory_z_and_generator_not_the_class_lists():
    m = _fixed()
    f_s, f_t, index, _ = _batch(1)
    m(f_s, f_t, FeatureBatch(y=LABELS[index], index=index))
    state = m.state_dict()
    assert {"memory_s", "memory_t", "z_s", "z_t", "z_set", "_extra_state"} <= set(state)
    assert not {"labels", "order", "counts", "starts"} & set(state)
    other = _fixed(seed=1)
    other.load_state_dict(state)
    for name in ("memory_s", "memory_t", "z_s", "z_t", "z_set"):
        assert torch.equal(getattr(other, name), getattr(m, name))
    assert bool(other.z_set)


def test_forward_samples_then_computes_the_loss_with_those_indices():
    m, twin = _fixed(), _fixed()
    f_s, f_t, index, _ = _batch(2)
    loss = m([f_s], [f_t], FeatureBatch(y=LABELS[index], index=index))
    contrast = twin.sample_contrast(index)
    assert torch.equal(loss, twin.loss_with_contrast([f_s], [f_t], index, contrast))
    assert torch.equal(m.memory_s, twin.memory_s)
    # per batch: run_per_teacher spreads the scalar over the batch
    rows = run_per_teacher([_fixed()], [f_s], [[f_t]], FeatureBatch(y=LABELS[index], index=index))
    assert rows.shape == (1, B) and torch.equal(rows[0], loss.expand(B))
    with pytest.raises(ValueError, match="index"):
        m([f_s], [f_t], FeatureBatch(y=LABELS[index]))


def test_eval_mode_changes_no_state():
    m = _fixed()
    f_s, f_t, index, _ = _batch(4)
    before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in m.state_dict().items()}
    m.eval()
    value = m([f_s], [f_t], FeatureBatch(y=LABELS[index], index=index))
    assert torch.isfinite(value)
    after = m.state_dict()
    for name in ("memory_s", "memory_t", "z_s", "z_t", "z_set"):
        assert torch.equal(after[name], before[name])
    assert after["_extra_state"]["rng"] is None
    m.train()
    assert torch.equal(m.sample_contrast(index), _fixed().sample_contrast(index))


def test_computes_in_float32_under_autocast():
    torch.manual_seed(0)
    m = _module()
    f_s, f_t, index, contrast = _batch(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = m.loss_with_contrast([f_s.bfloat16()], [f_t.bfloat16()], index, contrast)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# --------------------------------------------------------------------------- registry
def test_registered_per_batch_with_index_and_reference_defaults():
    info = loss_info("crd")
    assert info["reads"] == "pooled" and info["per_sample"] is False
    assert info["needs_index"] is True and info["reference_gamma"] == 0.8
    assert dict(FEATURE_LOSS_REGISTRY.entry("crd").params) == {
        "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_mom": 0.5, "mode": "exact",
        "seed": 0}


def test_build_reads_the_training_labels_and_refuses_without_them():
    student, teacher = torch.nn.Identity(), torch.nn.Identity()
    setup = FeatureSetup(student, teacher, [(C_S,)], [(C_T,)], train_labels=LABELS)
    m = CRD.build(setup, feat_dim=DIM, nce_k=K)
    assert m.n_data == N and m.embed_s.linear.in_features == C_S
    assert m.embed_t.linear.in_features == C_T and m.memory_s.shape == (N, DIM)
    with pytest.raises(ConfigError, match="training set's labels"):
        CRD.build(FeatureSetup(student, teacher, [(C_S,)], [(C_T,)]))
    with pytest.raises(ConfigError, match="mode"):
        CRD.build(setup, mode="approx")
    with pytest.raises(ConfigError, match="one class"):
        CRD.build(FeatureSetup(student, teacher, [(C_S,)], [(C_T,)],
                               train_labels=torch.zeros(10, dtype=torch.long)))
