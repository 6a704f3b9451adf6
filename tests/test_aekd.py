"""AEKD: gradients, the capped-simplex QP, the reference's post-processing, no host sync."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multikd.errors import StrategyError
from multikd.method.aekd import MAX_TEACHERS, capped_simplex_qp, kd_logit_gradients
from multikd.method.strategies import StepContext, create_strategy
from multikd.train.hostsync import HostSyncDetector


def _batch(k=3, b=16, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(k, b, c, generator=g) * 2
    s = torch.randn(b, c, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    ce = torch.stack([F.cross_entropy(t[i], y, reduction="none") for i in range(k)])
    return ce, t, s, y


def test_gradients_equal_autograd_of_the_reference_kd_loss():
    _, t, s, _ = _batch()
    temperature = 4.0
    ours = kd_logit_gradients(s, t, temperature)
    for k in range(t.shape[0]):
        student = s.double().clone().requires_grad_(True)
        # CA-MKD distiller_zoo/KD.py DistillKL: KLDivLoss(batchmean)(log p_s, p_t) * T^2
        loss = F.kl_div(F.log_softmax(student / temperature, 1),
                        F.softmax(t[k].double() / temperature, 1),
                        reduction="batchmean") * temperature ** 2
        loss.backward()
        torch.testing.assert_close(ours[k], student.grad, rtol=0, atol=1e-12)


def _slsqp(gram: np.ndarray, cap: float) -> np.ndarray:
    from scipy.optimize import minimize

    k = len(gram)
    res = minimize(lambda w: w @ gram @ w, np.full(k, 1.0 / k), jac=lambda w: 2 * gram @ w,
                   bounds=[(0, cap)] * k, method="SLSQP", tol=1e-14,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                   options={"maxiter": 1000})
    return res.x


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k,cap", [(2, 0.6), (3, 0.6), (3, 1.0), (4, 0.3), (5, 0.25)])
def test_qp_matches_an_independent_solver(seed, k, cap):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, max(1, k - seed % 3)))  # rank-deficient Grams too
    a[0] += 3 * a[1] * (seed % 2)  # and nearly parallel gradients
    gram = a @ a.T
    ours = capped_simplex_qp(torch.from_numpy(gram), cap).numpy()
    theirs = _slsqp(gram, cap)
    assert ours.sum() == pytest.approx(1.0, abs=1e-12)
    assert (ours >= 0).all() and (ours <= cap + 1e-12).all()
    assert ours @ gram @ ours <= theirs @ gram @ theirs + 1e-9 * max(1.0, np.trace(gram))
    if np.linalg.matrix_rank(gram) == k:  # strictly convex: the optimum is unique
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_qp_hand_cases():
    diag = torch.diag(torch.tensor([2.0, 1.0, 1.0]))  # w ~ 1/G_kk: (1/2, 1, 1) / 2.5
    torch.testing.assert_close(capped_simplex_qp(diag, 0.6), torch.tensor(
        [0.2, 0.4, 0.4], dtype=torch.float64))
    # one cheap teacher would take everything; the cap holds it at 0.6 and the rest split
    cheap = torch.diag(torch.tensor([1e-3, 1.0, 1.0]))
    torch.testing.assert_close(capped_simplex_qp(cheap, 0.6), torch.tensor(
        [0.6, 0.2, 0.2], dtype=torch.float64))
    # identical teachers split their share evenly; a zero Gram gives uniform weights
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(capped_simplex_qp(v @ v.T, 1.0),
                               torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    torch.testing.assert_close(capped_simplex_qp(torch.zeros(3, 3), 0.6),
                               torch.full((3,), 1 / 3, dtype=torch.float64))


def test_strategy_weights_caps_and_the_normalized_form():
    ce, t, s, y = _batch()
    context = StepContext(s, 4.0, 2)
    plain = create_strategy("aekd").select(ce, t, y, context=context)
    assert plain.weights.shape == ce.shape and plain.kept.all()
    w = plain.weights[:, 0]
    assert torch.equal(plain.weights, w[:, None].expand_as(ce))  # one weight per batch
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6) and float(w.max()) <= 0.6 + 1e-6
    v = kd_logit_gradients(s, t, 4.0).mean(1)
    torch.testing.assert_close(w, capped_simplex_qp(v @ v.T, 0.6).float())
    # --svm_norm: solve on unit vectors, then w_k / |V_k|, renormalised (find_optimal_svm)
    norm = v.norm(dim=1)
    unit = v / norm[:, None]
    expected = capped_simplex_qp(unit @ unit.T, 0.6) / norm
    expected = expected / expected.sum()
    normalized = create_strategy("aekd", normalize=True).select(ce, t, y, context=context)
    torch.testing.assert_close(normalized.weights[:, 0], expected.float())
    one = create_strategy("aekd").select(ce[:1], t[:1], y, context=context)
    assert torch.equal(one.weights, torch.ones_like(ce[:1]))


def test_cap_follows_the_reference_nu():
    assert create_strategy("aekd", C=0.6).cap(3) == pytest.approx(0.6)  # nu = 0.556
    assert create_strategy("aekd", C=0.6).cap(1) == pytest.approx(1.0)  # nu clipped to 1
    assert create_strategy("aekd", C=0.1).cap(3) == pytest.approx(1 / 3)  # nu clipped to 1
    assert create_strategy("aekd", C=1.0).cap(4) == pytest.approx(1.0)  # nu = 1/K


def test_errors_and_context():
    ce, t, s, y = _batch()
    with pytest.raises(StrategyError, match="weights teachers by the student's logits"):
        create_strategy("aekd").select(ce, t, y)
    with pytest.raises(StrategyError, match="C must be > 0"):
        create_strategy("aekd", C=0)
    with pytest.raises(StrategyError, match=r"C must be in \(0, 1\]"):
        create_strategy("aekd", C=1.5)
    with pytest.raises(StrategyError, match="normalize must be true or false"):
        create_strategy("aekd", normalize="yes")
    with pytest.raises(StrategyError, match="student's logits .* do not match"):
        create_strategy("aekd").select(ce, t, y, context=StepContext(s[:3], 4.0, 1))
    big = MAX_TEACHERS + 1
    ce, t, s, y = _batch(k=big)
    with pytest.raises(StrategyError, match=f"up to {MAX_TEACHERS} teachers; got {big}"):
        create_strategy("aekd").select(ce, t, y, context=StepContext(s, 4.0, 1))


@pytest.mark.slow
def test_select_reads_nothing_on_the_host():
    ce, t, s, y = _batch()
    strategy = create_strategy("aekd")
    with HostSyncDetector(include_cpu=True) as watch:
        strategy.select(ce, t, y, check=False, context=StepContext(s, 4.0, 1))
    assert not watch.syncs, watch.report()
