"""DKD, DIST and logit standardization against the references, transcribed by hand here.

Each reference is written out independently of ``multikd.method.logit_losses``: once as the
authors' torch code (mdistiller ``dkd_loss``, DIST_KD ``DIST``, LS ``normalize``/``kd_loss``)
for values and autograd gradients, once as plain numpy loops over samples and classes, plus
golden numbers for tiny cases computed with the ``math`` module (values in the comments).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multikd.errors import ConfigError
from multikd.method.logit_losses import (
    LOGIT_LOSS_DEFAULTS,
    LOGIT_LOSSES,
    dist_per_sample,
    dkd_per_sample,
    dkd_warmup_factor,
    logit_loss_per_teacher,
    standardize_logits,
)

B, C = 5, 7


def _data(K, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g, dtype=torch.float64) * scale
    t = torch.randn(K, B, C, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, C, (B,), generator=g)
    return s, t, y


# ---------------------------------------------------------------- references, torch style
# megvii-research/mdistiller, mdistiller/distillers/DKD.py (size_average=False == "sum").
def _ref_gt_mask(logits, target):
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _ref_other_mask(logits, target):
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def _ref_cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def _ref_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _ref_gt_mask(logits_student, target)
    other_mask = _ref_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _ref_cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _ref_cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (
        F.kl_div(log_pred_student, pred_teacher, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(
        logits_student / temperature - 1000.0 * gt_mask, dim=1
    )
    nckd_loss = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    return alpha * tckd_loss + beta * nckd_loss


# hunto/image_classification_sota, lib/models/losses/dist_kd.py
def _ref_cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _ref_pearson_correlation(a, b, eps=1e-8):
    return _ref_cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def _ref_inter_class_relation(y_s, y_t):
    return 1 - _ref_pearson_correlation(y_s, y_t).mean()


def _ref_intra_class_relation(y_s, y_t):
    return _ref_inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def _ref_dist_parts(z_s, z_t, tau):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_per_sample = tau**2 * (1 - _ref_pearson_correlation(y_s, y_t))
    intra_loss = tau**2 * _ref_intra_class_relation(y_s, y_t)
    return inter_per_sample, intra_loss


def _ref_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * _ref_inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * _ref_intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


# sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py
def _ref_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def _ref_ls_kd_loss(logits_student_in, logits_teacher_in, temperature, logit_stand):
    logits_student = _ref_normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = _ref_normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


# ---------------------------------------------------------------- references, numpy loops
def _np_softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _np_dkd_per_sample(s, t, y, T, alpha, beta):
    """TCKD on the binary (target, rest) split, NCKD on the renormalised non-target classes."""
    out = []
    for i in range(s.shape[0]):
        p, q = _np_softmax(t[i] / T), _np_softmax(s[i] / T)
        gt = y[i]
        rest = [c for c in range(s.shape[1]) if c != gt]
        bt = np.array([p[gt], sum(p[c] for c in rest)])
        bs = np.array([q[gt], sum(q[c] for c in rest)])
        tckd = T * T * np.sum(bt * (np.log(bt) - np.log(bs)))
        pn = np.array([p[c] for c in rest]) / bt[1]
        qn = np.array([q[c] for c in rest]) / bs[1]
        nckd = T * T * np.sum(pn * (np.log(pn) - np.log(qn)))
        out.append(alpha * tckd + beta * nckd)
    return np.array(out)


def _np_pearson(u, v, eps=1e-8):
    a, b = u - u.mean(), v - v.mean()
    return float(a @ b / (np.sqrt(a @ a) * np.sqrt(b @ b) + eps))


def _np_dist_parts(s, t, tau):
    """(inter per sample, intra of the batch), each already times tau^2."""
    ys = np.stack([_np_softmax(r / tau) for r in s])
    yt = np.stack([_np_softmax(r / tau) for r in t])
    inter = np.array([1 - _np_pearson(ys[i], yt[i]) for i in range(s.shape[0])])
    intra = 1 - np.mean([_np_pearson(ys[:, c], yt[:, c]) for c in range(s.shape[1])])
    return tau**2 * inter, tau**2 * intra


def _np_kd_per_sample(s, t, T):
    out = []
    for i in range(s.shape[0]):
        p, q = _np_softmax(t[i] / T), _np_softmax(s[i] / T)
        out.append(T * T * np.sum(p * (np.log(p) - np.log(q))))
    return np.array(out)


def _np_normalize(z):
    """LS normalize: mean over classes, *unbiased* std (ddof=1), 1e-7 added to the std."""
    m = z.mean(-1, keepdims=True)
    sd = z.std(-1, ddof=1, keepdims=True)
    return (z - m) / (1e-7 + sd)


# ---------------------------------------------------------------- standardization
def test_standardize_matches_ls_normalize_unbiased_std_and_eps_on_std():
    s, t, _ = _data(2)
    np.testing.assert_allclose(standardize_logits(s).numpy(), _np_normalize(s.numpy()), atol=1e-12)
    np.testing.assert_allclose(standardize_logits(t).numpy(), _np_normalize(t.numpy()), atol=1e-12)
    torch.testing.assert_close(standardize_logits(t), _ref_normalize(t), atol=1e-12, rtol=0)
    # the unbiased estimator: the z-scores' sample variance (ddof=1) is 1, not the ddof=0 one
    z = standardize_logits(s).numpy()
    np.testing.assert_allclose(z.var(-1, ddof=1), 1.0, atol=1e-6)
    assert abs(z.var(-1, ddof=0)[0] - (C - 1) / C) < 1e-6
    # the epsilon sits on the std: a constant row gives 0 / 1e-7 = 0, not NaN
    assert torch.equal(standardize_logits(torch.full((1, 4), 3.0)), torch.zeros(1, 4))


def test_standardized_kd_and_dkd_equal_ls_reference_with_gradients():
    s, t, y = _data(1, seed=1)
    T = 2.0  # LS base temperature
    for name, ref in [
        ("kd", lambda a, b: _ref_ls_kd_loss(a, b, T, True)),
        ("dkd", lambda a, b: _ref_dkd_loss(_ref_normalize(a), _ref_normalize(b), y, 9.0, 72.0, T)),
    ]:
        params = {"alpha": 9.0, "beta": 72.0} if name == "dkd" else {}
        s1 = s.clone().requires_grad_(True)
        s2 = s.clone().requires_grad_(True)
        ours = logit_loss_per_teacher(name, s1, t, y, T, params, standardize=True)
        assert ours.shape == (1, B)
        theirs = ref(s2, t[0])
        assert abs(ours.mean().item() - theirs.item()) < 1e-5 * max(1.0, abs(theirs.item()))
        (g1,) = torch.autograd.grad(ours.mean(), s1)
        (g2,) = torch.autograd.grad(theirs, s2)
        torch.testing.assert_close(g1.double(), g2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_standardized_loss_invariant_to_shift_and_positive_scale_of_teacher(name):
    s, t, y = _data(2, seed=2)
    params = {"tau": 4.0} if name == "dist" else {}
    base = logit_loss_per_teacher(name, s, t, y, 4.0, params, standardize=True)
    for a, b in [(1.0, 5.0), (3.0, 0.0), (0.25, -2.0)]:
        moved = logit_loss_per_teacher(name, s, a * t + b, y, 4.0, params, standardize=True)
        torch.testing.assert_close(moved, base, atol=1e-5, rtol=1e-5)
    # ... and of the student: the standardized student is the same logits too
    moved = logit_loss_per_teacher(name, 2.0 * s - 1.0, t, y, 4.0, params, standardize=True)
    torch.testing.assert_close(moved, base, atol=1e-5, rtol=1e-5)
    # without standardization a rescaled teacher does change the loss
    plain = logit_loss_per_teacher(name, s, t, y, 4.0, params)
    assert not torch.allclose(logit_loss_per_teacher(name, s, 3.0 * t, y, 4.0, params), plain)


# ---------------------------------------------------------------- DKD
def test_dkd_golden_tiny_case():
    # s = [[1, 2, .5], [0, -1, 3]], t = [[2, 0, 1], [.5, .5, 1.5]], y = [0, 2], T = 2,
    # alpha 1, beta 8, with the math module: TCKD = (0.40434459, 0.72078685),
    # NCKD = (0.76347274, 0.12371921); DKD_i = TCKD_i + 8 NCKD_i = (6.51212654, 1.71054057),
    # batch mean 4.11133355.
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, 1.5]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    got = dkd_per_sample(s, t, y, 2.0, alpha=1.0, beta=8.0)
    np.testing.assert_allclose(got.numpy(), [6.512126539590248, 1.710540569175048], atol=1e-9)
    tckd = dkd_per_sample(s, t, y, 2.0, alpha=1.0, beta=0.0)
    np.testing.assert_allclose(tckd.numpy(), [0.40434458960267894, 0.7207868533298902], atol=1e-9)
    assert abs(got.mean().item() - 4.111333554382648) < 1e-9


@pytest.mark.parametrize("K", [1, 2, 3])
def test_dkd_matches_mdistiller_per_teacher_and_numpy_per_sample(K):
    s, t, y = _data(K, seed=10 + K)
    T, alpha, beta = 4.0, 1.0, 8.0
    got = dkd_per_sample(s, t, y, T, alpha, beta)
    assert got.shape == (K, B)
    for k in range(K):
        np.testing.assert_allclose(
            got[k].numpy(), _np_dkd_per_sample(s.numpy(), t[k].numpy(), y.numpy(), T, alpha, beta),
            atol=1e-6, rtol=0,
        )
        # batch mean == mdistiller's batch sum / B
        ref = _ref_dkd_loss(s, t[k], y, alpha, beta, T)
        assert abs(got[k].mean().item() - ref.item()) < 1e-6
        # a [B,C] teacher gives [B], the same row
        torch.testing.assert_close(dkd_per_sample(s, t[k], y, T, alpha, beta), got[k])


def test_dkd_batch_mean_equals_reference_sum_over_batch_size():
    s, t, y = _data(1, seed=4)
    for T, alpha, beta in [(4.0, 1.0, 8.0), (1.0, 1.0, 0.5), (2.0, 9.0, 18.0)]:
        per = dkd_per_sample(s, t[0], y, T, alpha, beta)
        assert abs(per.sum().item() / B - _ref_dkd_loss(s, t[0], y, alpha, beta, T).item()) < 1e-6


def test_dkd_gradients_match_reference():
    s, t, y = _data(3, seed=5)
    w = torch.softmax(torch.randn(3, B, dtype=torch.float64), 0)
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    ours = (w * dkd_per_sample(s1, t, y, 4.0, 1.0, 8.0)).sum(0).mean()
    # reference, per teacher: sample weights enter as a row-scaled sum over the batch
    theirs = 0
    for k in range(3):
        for i in range(B):
            theirs = theirs + w[k, i] * _ref_dkd_loss(
                s2[i : i + 1], t[k, i : i + 1], y[i : i + 1], 1.0, 8.0, 4.0
            ) / B
    assert abs(ours.item() - theirs.item()) < 1e-6
    (g1,) = torch.autograd.grad(ours, s1)
    (g2,) = torch.autograd.grad(theirs, s2)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=0)
    # K=1 unweighted mean against dkd_loss directly
    s3 = s.clone().requires_grad_(True)
    s4 = s.clone().requires_grad_(True)
    (g3,) = torch.autograd.grad(dkd_per_sample(s3, t[0], y, 4.0).mean(), s3)
    (g4,) = torch.autograd.grad(_ref_dkd_loss(s4, t[0], y, 1.0, 8.0, 4.0), s4)
    torch.testing.assert_close(g3, g4, atol=1e-6, rtol=0)


def test_dkd_warmup_factor_is_one_based_linear_ramp():
    assert dkd_warmup_factor(1, 20) == pytest.approx(1 / 20)
    assert dkd_warmup_factor(10, 20) == pytest.approx(0.5)
    assert dkd_warmup_factor(20, 20) == 1.0
    assert dkd_warmup_factor(240, 20) == 1.0
    assert dkd_warmup_factor(1, 1) == 1.0  # mdistiller's ImageNet setting
    assert dkd_warmup_factor(3, 0) == 1.0
    with pytest.raises(ConfigError):
        dkd_warmup_factor(0, 20)
    with pytest.raises(ConfigError):
        dkd_warmup_factor(5, -1)


# ---------------------------------------------------------------- DIST
def test_dist_golden_tiny_case():
    # B = 3, C = 3, beta = gamma = 1, with the math module (eps 1e-8 on the norms' product):
    # tau 1: inter = (1.57317261, 0.00039787, 0.91822593), intra = 0.76853826, loss 1.59913707;
    # tau 4: inter*16 = (26.14679331, 0.19132866, 17.14494690), intra*16 = 11.99183304,
    #        loss 26.48618933.
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.3, 0.2, -0.4]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, 1.5], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    got1 = dist_per_sample(s, t.unsqueeze(0), tau=1.0)
    inter1 = [1.5731726135897808, 0.0003978749388630076, 0.9182259298438291]
    np.testing.assert_allclose(got1[0].numpy(), np.array(inter1) + 0.7685382610452355, atol=1e-9)
    assert abs(got1.mean().item() - 1.5991370671693932) < 1e-9
    got4 = dist_per_sample(s, t.unsqueeze(0), tau=4.0)
    assert abs(got4.mean().item() - 26.486189326723558) < 1e-8
    intra4 = got4 - dist_per_sample(s, t.unsqueeze(0), gamma=0.0, tau=4.0)
    np.testing.assert_allclose(intra4.numpy(), 11.991833039718887, atol=1e-8)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (1.0, 1.0, 4.0), (2.0, 0.5, 2.0)])
def test_dist_k1_mean_equals_reference(beta, gamma, tau):
    s, t, _ = _data(1, seed=6)
    got = dist_per_sample(s, t, beta, gamma, tau)
    assert got.shape == (1, B)
    ref = _ref_dist(s, t[0], beta, gamma, tau)
    assert abs(got.mean().item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))
    inter, intra = _np_dist_parts(s.numpy(), t[0].numpy(), tau)
    np.testing.assert_allclose(got[0].numpy(), beta * inter + gamma * intra, atol=1e-6, rtol=0)


def test_dist_k2_per_sample_layout_and_weighted_intra():
    s, t, _ = _data(2, seed=7)
    beta, gamma, tau = 1.5, 0.75, 4.0
    got = dist_per_sample(s, t, beta, gamma, tau)
    assert got.shape == (2, B)
    for k in range(2):
        inter, intra = _ref_dist_parts(s, t[k], tau)
        # l_ki = beta tau^2 inter_ki + gamma tau^2 intra_k, intra the same for every i
        torch.testing.assert_close(got[k], beta * inter + gamma * intra, atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            (got[k] - beta * inter).numpy(), np.full(B, gamma * intra.item()), atol=1e-6
        )
    # weighted combination: teacher k's intra term gets its batch-mean weight mean_i w_ki
    w = torch.softmax(torch.randn(2, B, dtype=torch.float64), 0)
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    ours = (w * dist_per_sample(s1, t, beta, gamma, tau)).sum(0).mean()
    theirs = 0
    for k in range(2):
        inter, intra = _ref_dist_parts(s2, t[k], tau)
        theirs = theirs + beta * (w[k] * inter).mean() + gamma * w[k].mean() * intra
    assert abs(ours.item() - theirs.item()) < 1e-6
    (g1,) = torch.autograd.grad(ours, s1)
    (g2,) = torch.autograd.grad(theirs, s2)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=0)


def test_dist_gradients_match_reference():
    s, t, _ = _data(1, seed=8)
    for tau in (1.0, 4.0):
        s1 = s.clone().requires_grad_(True)
        s2 = s.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad(dist_per_sample(s1, t, 1.0, 1.0, tau).mean(), s1)
        (g2,) = torch.autograd.grad(_ref_dist(s2, t[0], 1.0, 1.0, tau), s2)
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- dispatcher
@pytest.mark.parametrize("K", [1, 3])
def test_dispatcher_matches_references_per_teacher(K):
    s, t, y = _data(K, seed=20 + K)
    T = 4.0
    kd = logit_loss_per_teacher("kd", s, t, y, T, {})
    mse = logit_loss_per_teacher("mse", s, t, None, T, None)
    dkd = logit_loss_per_teacher("dkd", s, t, y, T, LOGIT_LOSS_DEFAULTS["dkd"])  # warmup ignored
    dist = logit_loss_per_teacher("dist", s, t, y, T, LOGIT_LOSS_DEFAULTS["dist"])
    for out in (kd, mse, dkd, dist):
        assert out.shape == (K, B)
    for k in range(K):
        sn, tn = s.numpy(), t[k].numpy()
        # kd/mse come from multikd.method.losses, which compute in float32
        want_kd = _np_kd_per_sample(sn, tn, T)
        np.testing.assert_allclose(kd[k].numpy(), want_kd, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(mse[k].numpy(), ((sn - tn) ** 2).mean(1), atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(
            dkd[k].numpy(), _np_dkd_per_sample(sn, tn, y.numpy(), T, 1.0, 8.0), atol=1e-6, rtol=0
        )
        inter, intra = _np_dist_parts(sn, tn, 4.0)
        np.testing.assert_allclose(dist[k].numpy(), inter + intra, atol=1e-6, rtol=0)
    # DIST ignores `temperature` (it has its own tau); a missing tau is the class default 1
    torch.testing.assert_close(
        logit_loss_per_teacher("dist", s, t, y, 99.0, {}), dist_per_sample(s, t, tau=1.0)
    )


def test_defaults_are_the_references_cifar_settings():
    assert LOGIT_LOSS_DEFAULTS["dkd"] == {"alpha": 1.0, "beta": 8.0, "warmup": 20}
    assert LOGIT_LOSS_DEFAULTS["dist"] == {"beta": 1.0, "gamma": 1.0, "tau": 4.0}
    assert LOGIT_LOSSES == ("kd", "mse", "dkd", "dist")


def test_half_precision_input_is_computed_in_float32():
    s, t, y = _data(2, seed=9)
    for name in LOGIT_LOSSES:
        out = logit_loss_per_teacher(name, s.bfloat16(), t.bfloat16(), y, 4.0, {}, standardize=True)
        assert out.dtype == torch.float32
        ref = logit_loss_per_teacher(
            name, s.bfloat16().double(), t.bfloat16().double(), y, 4.0, {}, standardize=True
        )
        torch.testing.assert_close(out.double(), ref.double(), atol=1e-4, rtol=1e-4)


def test_unknown_name_and_params_raise_config_error_naming_choices():
    s, t, y = _data(1)
    with pytest.raises(ConfigError, match="kd, mse, dkd, dist"):
        logit_loss_per_teacher("crd", s, t, y, 4.0, {})
    with pytest.raises(ConfigError, match="alpha, beta, warmup"):
        logit_loss_per_teacher("dkd", s, t, y, 4.0, {"gamma": 1.0})
    with pytest.raises(ConfigError, match="beta, gamma, tau"):
        logit_loss_per_teacher("dist", s, t, y, 4.0, {"alpha": 1.0})
    with pytest.raises(ConfigError, match="none"):
        logit_loss_per_teacher("kd", s, t, y, 4.0, {"tau": 2.0})
    with pytest.raises(ConfigError, match="number"):
        logit_loss_per_teacher("dkd", s, t, y, 4.0, {"beta": "8"})
    with pytest.raises(ConfigError, match="tau"):
        logit_loss_per_teacher("dist", s, t, y, 4.0, {"tau": 0.0})
    with pytest.raises(ValueError, match="labels"):
        logit_loss_per_teacher("dkd", s, t, None, 4.0, {})


def test_math_module_check_of_one_nckd_value():
    # NCKD of sample 0 of the golden case by the 1000-offset softmax, in the math module:
    # the target's probability exp(-1000 + ...) underflows to 0, the rest renormalise.
    T = 2.0
    s, t, gt = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0], 0

    def sm(z):
        e = [math.exp(v / T - (1000.0 if c == gt else 0.0)) for c, v in enumerate(z)]
        return [x / sum(e) for x in e]

    p, q = sm(t), sm(s)
    nckd = T * T * sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)
    got = dkd_per_sample(
        torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64),
        torch.tensor([gt]), T, alpha=0.0, beta=1.0,
    )
    assert abs(got.item() - nckd) < 1e-9
    assert abs(nckd - 0.7634727437484462) < 1e-9
