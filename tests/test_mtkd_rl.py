"""MTKD-RL equals its public code (winycg/MTKD-RL), transcribed here by hand.

``get_agent_state`` and ``PolicyTrans.forward`` (weights), the loss of ``train`` (first
epoch: every weight 1), the reward and ``train_agent`` (one SGD step per stored batch),
written out with plain tensor ops from the reference files, on fixed tensors. Where the
transcription takes another path than the package (its own matmuls, KL and cosine), both
run in float64 and agree to REF64 (rtol 1e-10, tests/tolerances.py), on any CPU; where it
repeats the package's own ops on the same tensors (reward, agent step) float32 agrees too.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from multikd.errors import ConfigError, StrategyError
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import TeacherEnsemble
from multikd.method.loss_spec import LossSpec
from multikd.method.learned import StrategySpec
from multikd.method.strategies import StepContext, create_strategy
from multikd.models import create_model
from tolerances import REF64

K, B, C = 3, 6, 5
WIDTHS = (4, 6, 3)


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, B, C, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, C, (B,), generator=g)
    ce = torch.stack([F.cross_entropy(logits[k], labels, reduction="none") for k in range(K)])
    student = torch.randn(B, C, generator=g, dtype=dtype)
    teacher_maps = [torch.randn(B, w, 2, 2, generator=g, dtype=dtype) for w in WIDTHS]
    adapted = [torch.randn(B, w, 2, 2, generator=g, dtype=dtype) for w in WIDTHS]
    return ce, logits, labels, student, teacher_maps, adapted


def _bound(**params):
    strategy = create_strategy("mtkd-rl", **params)
    strategy.bind(StrategySpec(K, C, [(w, 2, 2) for w in WIDTHS], (8, 2, 2), B))
    return strategy


def _distill_kl(y_s, y_t, T):
    """utils.py DistillKL(T)(y_s, y_t, unreduce=True)."""
    p_s = F.log_softmax(y_s / T, dim=1)
    p_t = F.softmax(y_t / T, dim=1)
    return (F.kl_div(p_s, p_t, reduction="none") * T**2).sum(-1)


def _reference_weights(policy, ce_logits, labels, student, teacher_maps, adapted, T, dynamic):
    """train_loops.py get_agent_state + models/policy.py PolicyTrans.forward, by hand."""
    infos, t_ces, kls, coss = [], [], [], []
    for k in range(K):
        s_emb = F.adaptive_avg_pool2d(adapted[k], (1, 1)).view(B, -1)
        t_emb = F.adaptive_avg_pool2d(teacher_maps[k], (1, 1)).view(B, -1)  # t_features[-1]
        cos = F.cosine_similarity(s_emb, t_emb).unsqueeze(-1)
        kl = _distill_kl(student, ce_logits[k], T).unsqueeze(-1)
        tce = F.cross_entropy(ce_logits[k], labels, reduction="none").unsqueeze(-1)
        infos.append(torch.cat([cos, kl, tce, t_emb, ce_logits[k]], dim=1))
        t_ces.append(tce), kls.append(kl), coss.append(cos)
    t_ces, kls, coss = torch.cat(t_ces, 1), torch.cat(kls, 1), torch.cat(coss, 1)
    w_t = (1.0 - F.softmax(t_ces, dim=1)) / (K - 1)
    w_kl = F.softmax(kls, dim=1)
    w_cos = F.softmax(coss, dim=1)
    x = torch.cat(infos, dim=1)
    h = torch.relu(x @ policy.steam[0].weight.t())
    p = F.softmax(h @ policy.logit_head.weight.t() + policy.logit_head.bias, dim=1)
    q = F.softmax(h @ policy.feature_head.weight.t() + policy.feature_head.bias, dim=1)
    if dynamic:
        lf = F.softmax(policy.logit_weight_factor, 0)
        ff = F.softmax(policy.feature_weight_factor, 0)
        return lf[0] * p + lf[1] * w_t + lf[2] * w_kl, ff[0] * q + ff[1] * w_t + ff[2] * w_cos
    return (p + w_t + w_kl) / 3.0, (q + w_t + w_cos) / 3.0


@pytest.mark.parametrize("dynamic", [False, True])
def test_weights_equal_the_reference_policy(dynamic):
    ce, logits, labels, student, maps, adapted = _inputs(dtype=torch.float64)
    strategy = _bound(dynamic=dynamic, seed=3)
    policy = strategy.networks.double()
    if dynamic:  # make the learned mix differ from 1/3 each
        with torch.no_grad():
            policy.logit_weight_factor.copy_(torch.tensor([0.2, 1.5, -0.4]))
            policy.feature_weight_factor.copy_(torch.tensor([1.0, -1.0, 0.3]))
    context = StepContext(student, 4.0, 2, student_feature=torch.zeros(B, 8, 2, 2).double(),
                          adapted=adapted, teacher_features=maps)
    selection = strategy.select(ce, logits, labels, context=context)
    w_ref, v_ref = _reference_weights(policy, logits, labels, student, maps, adapted, 4.0, dynamic)
    torch.testing.assert_close(selection.weights, w_ref.t(), **REF64)
    torch.testing.assert_close(selection.feature_weights, v_ref.t(), **REF64)
    assert selection.scale == 1.0
    torch.testing.assert_close(selection.weights.sum(0), torch.ones(B).double(), **REF64)
    # the policy is the reference's shape: 128 hidden units, no bias in the stem
    assert policy.steam[0].weight.shape == (128, sum(3 + w + C for w in WIDTHS))
    assert policy.steam[0].bias is None and policy.logit_head.bias is not None


def test_first_epoch_gives_every_teacher_weight_one():
    ce, logits, labels, student, maps, adapted = _inputs(1)
    strategy = _bound()
    context = StepContext(student, 4.0, 1, student_feature=torch.zeros(B, 8, 2, 2),
                          adapted=adapted, teacher_features=maps)
    selection = strategy.select(ce, logits, labels, context=context)
    torch.testing.assert_close(selection.weights * selection.scale, torch.ones(K, B))
    torch.testing.assert_close(selection.feature_weights * selection.scale, torch.ones(K, B))


def _tiny_distiller(strategy, gamma=5.0, seed=0):
    torch.manual_seed(seed)
    teachers = [create_model("resnet8", num_classes=C) for _ in range(2)]
    student = create_model("resnet8", num_classes=C)
    return MultiTeacherDistiller(student, TeacherEnsemble(teachers, names=["a", "b"]), strategy,
                                 LossSpec(gamma=gamma), batch_size=B)


def _reference_loss(d, x, y, epoch):
    """train_loops.py train: CE + sum_k mean(w_k KL_k) + 5 sum_k mean(v_k MSE_k), and the
    reward -(per-sample loss), standardised and clamped, by hand."""
    with torch.no_grad():
        out = d.ensemble(x, y, features=True)
    logits, feature, adapted = d.forward_student(x)
    maps = out.features
    if epoch == 1:
        w = v = torch.ones(B, 2, dtype=x.dtype)
    else:
        w, v = _reference_weights_2(d, out, y, logits.detach(), adapted)
    kl = [_distill_kl(logits, out.logits[k], 4.0) for k in range(2)]
    mse = [((adapted[k] - maps[k]) ** 2).view(B, -1).mean(1) for k in range(2)]
    kd = sum((w[:, k] * kl[k]).mean() for k in range(2))
    feat = sum((v[:, k] * mse[k]).mean() for k in range(2))
    total = F.cross_entropy(logits, y) + kd + 5.0 * feat
    sample = F.cross_entropy(logits, y, reduction="none") + sum(w[:, k] * kl[k] for k in range(2)) \
        + 5.0 * sum(v[:, k] * mse[k] for k in range(2))
    reward = -sample
    reward = torch.clamp((reward - reward.mean()) / reward.std(), 0, 1)
    return total, reward.detach()


def _reference_weights_2(d, out, y, student, adapted):
    policy = d.strategy.networks
    infos, t_ces, kls, coss = [], [], [], []
    for k in range(2):
        s_emb = F.adaptive_avg_pool2d(adapted[k].detach(), (1, 1)).view(B, -1)
        t_emb = F.adaptive_avg_pool2d(out.features[k], (1, 1)).view(B, -1)
        cos = F.cosine_similarity(s_emb, t_emb).unsqueeze(-1)
        kl = _distill_kl(student, out.logits[k], 4.0).unsqueeze(-1)
        tce = F.cross_entropy(out.logits[k], y, reduction="none").unsqueeze(-1)
        infos.append(torch.cat([cos, kl, tce, t_emb, out.logits[k]], 1))
        t_ces.append(tce), kls.append(kl), coss.append(cos)
    t_ces, kls, coss = torch.cat(t_ces, 1), torch.cat(kls, 1), torch.cat(coss, 1)
    with torch.no_grad():
        h = policy.steam(torch.cat(infos, 1))
        p = F.softmax(policy.logit_head(h), 1)
        q = F.softmax(policy.feature_head(h), 1)
    w_t = (1 - F.softmax(t_ces, 1)) / 1
    return (p + w_t + F.softmax(kls, 1)) / 3, (q + w_t + F.softmax(coss, 1)) / 3


@pytest.mark.parametrize("epoch", [1, 2])
def test_loss_and_reward_equal_the_reference(epoch):
    d = _tiny_distiller(create_strategy("mtkd-rl", seed=1)).double()  # float64: the reward
    d.set_epoch(epoch)  # is standardised, which magnifies float32 rounding past 1e-6
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    d.train()
    state = copy.deepcopy(d.state_dict())
    _, losses, _ = d(x, y)
    d.load_state_dict(state)  # the same BatchNorm statistics for the transcription
    total, reward = _reference_loss(d, x, y, epoch)
    torch.testing.assert_close(losses["total"], total, **REF64)
    assert len(d.strategy._rewards) == 1
    # float64 end to end (the ensemble's CE keeps float64 too), so the standardisation's
    # magnification of rounding stays far below the check
    torch.testing.assert_close(d.strategy._rewards[0], reward, **REF64)


def test_reward_is_the_standardised_clamped_negative_loss():
    from multikd.method.learned import StepRecord
    from multikd.method.strategies import Selection

    g = torch.Generator().manual_seed(9)
    strategy = _bound()
    strategy._pending = ("state",)
    w = torch.softmax(torch.randn(K, B, generator=g), 0)
    v = torch.softmax(torch.randn(K, B, generator=g), 0)
    ce, kl, mse = torch.rand(B, generator=g), torch.rand(K, B, generator=g), torch.rand(K, B, generator=g)
    record = StepRecord(
        x=torch.zeros(B), y=torch.zeros(B, dtype=torch.long), student_logits=torch.zeros(B, C),
        teacher_logits=torch.zeros(K, B, C), student_ce=ce, logit_loss=kl,
        selection=Selection(w, torch.ones(K, B, dtype=torch.bool), feature_weights=v),
        feature_loss=mse, gamma=5.0,
    )
    strategy.observe(record)
    reward = -(ce + (w * kl).sum(0) + 5.0 * (v * mse).sum(0))  # train_loops.py train
    reward = torch.clamp((reward - reward.mean()) / reward.std(), min=0, max=1)
    torch.testing.assert_close(strategy._rewards[0], reward, rtol=0, atol=1e-6)
    assert strategy._states == [("state",)]


def test_agent_update_equals_train_agent_and_moves_only_the_policy():
    d = _tiny_distiller(create_strategy("mtkd-rl", agent_step=2, seed=2))
    d.set_epoch(2)
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(B, 3, 32, 32, generator=g), torch.randint(0, C, (B,), generator=g))
               for _ in range(2)]
    for x, y in batches:
        d(x, y)
    strategy = d.strategy
    policy = copy.deepcopy(strategy.networks)
    states, rewards = list(strategy._states), list(strategy._rewards)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    for state, r in zip(states, rewards):  # train_loops.py train_agent
        pred = policy(*state)
        opt.zero_grad()
        label = torch.ones_like(pred[0])
        loss = F.binary_cross_entropy(pred[0], label, weight=r.unsqueeze(-1)) + \
            F.binary_cross_entropy(pred[1], label, weight=r.unsqueeze(-1))
        loss.backward()
        opt.step()
    student_before = copy.deepcopy(d.student.state_dict())
    d.end_epoch(2)
    assert not strategy._states  # the stored batches are spent
    for a, b in zip(policy.parameters(), strategy.networks.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    initial = _tiny_distiller(create_strategy("mtkd-rl", agent_step=2, seed=2)).strategy.networks
    assert any(not torch.equal(a, b) for a, b in
               zip(initial.parameters(), strategy.networks.parameters()))
    for key, value in d.student.state_dict().items():
        assert torch.equal(value, student_before[key]), key
    # the policy never appears among what the student's optimizer trains
    ids = {id(p) for p in d.trainable_parameters()}
    assert not ids & {id(p) for p in strategy.networks.parameters()}


def test_agent_updates_on_the_reference_schedule():
    """``batch_idx % agent_step == 0 and batch_idx != 0``, then the rest at the epoch's end."""
    d = _tiny_distiller(create_strategy("mtkd-rl", agent_step=2))
    d.set_epoch(2)
    calls = []
    d.strategy.train_agent = lambda: (calls.append(len(d.strategy._states)),
                                      d.strategy._states.clear(), d.strategy._rewards.clear())
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01)
    for step in range(5):
        d(torch.randn(B, 3, 32, 32), torch.randint(0, C, (B,)))
        d.after_step(opt, step, 5)
    d.end_epoch(2)
    assert calls == [3, 2]  # after steps 0..2 (at step 2), after 3..4 (at step 4), none left


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="loss.gamma"):
        _tiny_distiller(create_strategy("mtkd-rl"), gamma=0.0)
    with pytest.raises(StrategyError, match="unknown parameter.*dynamic"):
        create_strategy("ca-mkd", dynamic=True)
    with pytest.raises(StrategyError, match="dynamic must be true or false"):
        create_strategy("mtkd-rl", dynamic="yes")
    one = create_strategy("mtkd-rl")
    with pytest.raises(StrategyError, match="at least 2 teachers"):
        one.bind(StrategySpec(1, C, [(4, 2, 2)], (8, 2, 2), B))
