"""Losses: golden values computed by hand (math module), T^2 scaling, K=1 reduction, gradients.

The golden values are Python floats (float64), so the losses are fed float64 tensors (they
keep float64) and checked at rel=1e-10 (tests/tolerances.py: REF64): a check of the formula,
not of one CPU's float32 rounding.
"""

import math

import pytest
import torch
from tolerances import REF64, order_rtol

from multikd.method.losses import (
    feature_loss,
    kd_loss,
    mse_logit_loss,
    multi_teacher_kd_loss,
    multi_teacher_mse_loss,
)


def _softmax(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def _kd_by_hand(s, t, T):
    p, q = _softmax(t, T), _softmax(s, T)
    return T * T * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T0 = [[2.0, 0.0, 1.0], [0.5, 0.5, 1.5]]
T1 = [[-1.0, 1.0, 0.0], [0.0, 2.0, 0.0]]
REL = REF64["rtol"]


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def test_kd_loss_matches_hand_computed_kl_times_t_squared():
    T = 2.0
    per_sample = [_kd_by_hand(S[i], T0[i], T) for i in range(2)]
    got = kd_loss(_f64(S), _f64(T0), T, reduction="none")
    assert got.tolist() == pytest.approx(per_sample, rel=REL)
    assert kd_loss(_f64(S), _f64(T0), T).item() == pytest.approx(sum(per_sample) / 2, rel=REL)
    assert kd_loss(_f64(S), _f64(S), T).item() == pytest.approx(0.0, abs=1e-14)
    # float32 input is computed in float32: the same values to float32's precision, a sum
    # of 3 classes' terms with condition number sum_c p_c (|log p_c| + |log q_c|) / KL = 12
    # for these rows (tests/tolerances.py order_rtol; measured: 5e-7)
    got32 = kd_loss(torch.tensor(S), torch.tensor(T0), T, reduction="none")
    assert got32.dtype == torch.float32
    assert got32.tolist() == pytest.approx(per_sample, rel=order_rtol(3, cond=12))


def test_kd_loss_t_squared_keeps_gradient_scale():
    torch.manual_seed(0)
    t = torch.randn(16, 10)
    t = t - t.mean(1, keepdim=True)

    def grad_norm(T, scaled):
        s = torch.randn(16, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = kd_loss(s, t, T)
        (loss if scaled else loss / T**2).backward()
        return s.grad.norm().item()

    # with T^2 the gradient is nearly T-invariant; without it, it shrinks like 1/T^2 ...
    assert grad_norm(8.0, True) / grad_norm(4.0, True) == pytest.approx(1.0, abs=0.1)
    assert grad_norm(16.0, True) / grad_norm(8.0, True) == pytest.approx(1.0, abs=0.05)
    assert grad_norm(16.0, False) / grad_norm(8.0, False) == pytest.approx(0.25, abs=0.02)


def test_mse_logit_loss_by_hand_and_as_high_temperature_limit_of_kd():
    per_sample = [sum((a - b) ** 2 for a, b in zip(S[i], T0[i])) / 3 for i in range(2)]
    got = mse_logit_loss(_f64(S), _f64(T0), reduction="none")
    assert got.tolist() == pytest.approx(per_sample, rel=REL)
    # Hinton et al. 2015, 2.1: for zero-mean logits, T^2 KL -> (1/2C) sum (s - t)^2
    s = torch.tensor(S) - torch.tensor(S).mean(1, keepdim=True)
    t = torch.tensor(T0) - torch.tensor(T0).mean(1, keepdim=True)
    assert kd_loss(s, t, 200.0).item() == pytest.approx(mse_logit_loss(s, t).item() / 2, rel=2e-2)


def test_multi_teacher_kd_loss_weighted_golden():
    T = 3.0
    w = [[0.25, 1.0], [0.75, 0.0]]  # [K=2, B=2]
    kd = [[_kd_by_hand(S[i], tk[i], T) for i in range(2)] for tk in (T0, T1)]
    expected = sum(w[0][i] * kd[0][i] + w[1][i] * kd[1][i] for i in range(2)) / 2
    got = multi_teacher_kd_loss(_f64(S), _f64([T0, T1]), _f64(w), T)
    assert got.item() == pytest.approx(expected, rel=REL)


def test_multi_teacher_mse_loss_weighted_golden():
    w = [[0.5, 0.1], [0.5, 0.9]]
    mse = [
        [sum((a - b) ** 2 for a, b in zip(S[i], tk[i])) / 3 for i in range(2)] for tk in (T0, T1)
    ]
    expected = sum(w[0][i] * mse[0][i] + w[1][i] * mse[1][i] for i in range(2)) / 2
    got = multi_teacher_mse_loss(_f64(S), _f64([T0, T1]), _f64(w))
    assert got.item() == pytest.approx(expected, rel=REL)


def test_single_teacher_with_weight_one_is_exactly_hinton_kd():
    s, t = torch.tensor(S), torch.tensor(T0)
    multi = multi_teacher_kd_loss(s, t.unsqueeze(0), torch.ones(1, 2), 4.0)
    # bit-equal on any CPU: the same per-sample KL kernels on the same input, then a weight
    # of 1, a sum over one teacher and the mean of two values (one rounding either way)
    assert torch.equal(multi, kd_loss(s, t, 4.0))


def test_feature_loss_golden_and_its_gradient():
    # K=2 teachers, B=2 samples, features of 2 elements per sample
    a0 = _f64([[1.0, 2.0], [0.0, 0.0]]).requires_grad_(True)
    a1 = _f64([[1.0, 1.0], [2.0, -1.0]]).requires_grad_(True)
    t0 = _f64([[0.0, 0.0], [1.0, 1.0]])
    t1 = _f64([[1.0, 3.0], [0.0, 0.0]])
    w = _f64([[0.5, 0.2], [0.5, 0.8]])
    # per (k, i): mean over the 2 elements of the squared difference
    m = [[(1 + 4) / 2, (1 + 1) / 2], [(0 + 4) / 2, (4 + 1) / 2]]
    expected = (0.5 * m[0][0] + 0.5 * m[1][0] + 0.2 * m[0][1] + 0.8 * m[1][1]) / 2
    loss = feature_loss([a0, a1], [t0, t1], w)
    assert loss.item() == pytest.approx(expected, rel=REL)
    loss.backward()
    # d/da_kie = w_ki * 2 (a - t) / (E * B) with E = 2 elements, B = 2 samples
    expected_grad0 = _f64(
        [[0.5 * 2 * 1 / 4, 0.5 * 2 * 2 / 4], [0.2 * 2 * -1 / 4, 0.2 * 2 * -1 / 4]]
    )
    torch.testing.assert_close(a0.grad, expected_grad0, **REF64)
    assert a1.grad.abs().sum() > 0


def test_loss_shape_errors_are_explicit():
    with pytest.raises(ValueError, match=r"\[K,B,C\]"):
        multi_teacher_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(1, 2), 4.0)
    with pytest.raises(ValueError, match="does not match"):
        feature_loss([torch.zeros(2, 3)], [torch.zeros(2, 4)], torch.ones(1, 2))
    with pytest.raises(ValueError, match="reduction"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 4.0, reduction="sum")
