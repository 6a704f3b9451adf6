"""MMKD equals its public code (Rorozhl/MMKD), transcribed here by hand.

``LogitsWeight`` / ``FeatureWeight`` / ``MatchFeature`` (weights and loss), ``MetaSGD``
(two matching steps, one CE step, ``meta_backward``'s recursion, rollback) and
``HardBuffer``, written out from the reference files; the meta step is compared in float64
with a transcription that runs the reference's own mechanics (real modules, ``load_state_dict``
rollback, ``torch.optim.SGD`` steps). The weight networks are checked in float64 too, at
REF64 (tests/tolerances.py): the transcription's matmuls are other kernels than
``nn.Linear``'s, so float32 would compare two CPUs' rounding, not the formula.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from multikd.errors import StrategyError
from multikd.method.adapters import build_adapter
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import TeacherEnsemble
from multikd.method.loss_spec import LossSpec
from multikd.method.learned import StrategySpec
from multikd.method.strategies import StepContext, create_strategy
from multikd.models import create_model
from tolerances import REF64

K, B, C = 2, 6, 5


def _distiller(gamma=2.0, seed=0, **params):
    torch.manual_seed(seed)
    teachers = [create_model("resnet8", num_classes=C) for _ in range(K)]
    student = create_model("resnet8", num_classes=C)
    strategy = create_strategy("mmkd", **params)
    return MultiTeacherDistiller(student, TeacherEnsemble(teachers, names=["a", "b"]), strategy,
                                 LossSpec(gamma=gamma), batch_size=B)


def _distill_kl(y_s, y_t, T=4.0):
    """distiller_zoo/KD.py DistillKL(T)(y_s, y_t, is_ca=True)."""
    return (F.kl_div(F.log_softmax(y_s / T, 1), F.softmax(y_t / T, 1), reduction="none")
            * T**2).sum(-1)


def test_weight_networks_equal_the_reference():
    g = torch.Generator().manual_seed(0)
    strategy = create_strategy("mmkd")
    strategy.bind(StrategySpec(K, C, [(4, 2, 2), (3, 2, 2)], (6, 2, 2), B))
    nets = strategy.networks.double()
    f64 = {"generator": g, "dtype": torch.float64}
    t_logits, s_logits = torch.randn(K, B, C, **f64), torch.randn(B, C, **f64)
    t_maps = [torch.randn(B, 4, 2, 2, **f64), torch.randn(B, 3, 2, 2, **f64)]
    s_map = torch.randn(B, 6, 2, 2, **f64)
    context = StepContext(s_logits, 4.0, 1, student_feature=s_map, adapted=[], teacher_features=t_maps)
    sel = strategy.select(torch.rand(K, B, dtype=torch.float64), t_logits,
                          torch.zeros(B, dtype=torch.long), context=context)
    # LogitsWeight.forward: cat(teacher logits, student logits) -> Linear -> ReLU -> Linear -> softmax
    x = torch.cat([t_logits[0], t_logits[1], s_logits], 1)
    lw = nets.logits
    assert lw.layer.weight.shape == (C * (K + 1) // 2, C * (K + 1))
    w = torch.softmax(torch.relu(x @ lw.layer.weight.t() + lw.layer.bias) @ lw.all_act.weight.t()
                      + lw.all_act.bias, -1)
    torch.testing.assert_close(sel.weights, w.t(), **REF64)
    # FeatureWeight.forward: batch Gram matrices of the flattened maps
    grams = [f.reshape(B, -1) @ f.reshape(B, -1).t() for f in [*t_maps, s_map]]
    fw = nets.feature
    assert fw.layer.weight.shape == (B * (K + 1) // 2, B * (K + 1))
    v = torch.softmax(torch.relu(torch.cat(grams, 1) @ fw.layer.weight.t() + fw.layer.bias)
                      @ fw.all_act.weight.t() + fw.all_act.bias, -1)
    torch.testing.assert_close(sel.feature_weights, v.t(), **REF64)


def test_partial_batch_is_zero_padded_and_a_larger_one_is_an_error():
    strategy = create_strategy("mmkd")
    strategy.bind(StrategySpec(K, C, [(4, 2, 2), (4, 2, 2)], (4, 2, 2), B))
    fw = strategy.networks.feature.double()
    maps = [torch.randn(B - 2, 4, 2, 2, dtype=torch.float64) for _ in range(K)]
    s_map = torch.randn(B - 2, 4, 2, 2, dtype=torch.float64)
    grams = [F.pad(f.reshape(B - 2, -1) @ f.reshape(B - 2, -1).t(), (0, 2)) for f in [*maps, s_map]]
    expected = torch.softmax(fw.all_act(torch.relu(fw.layer(torch.cat(grams, 1)))), -1)
    torch.testing.assert_close(fw(maps, s_map), expected, **REF64)
    with pytest.raises(StrategyError, match=f"built for batches of {B}.*batch of {B + 1}"):
        fw([torch.randn(B + 1, 4, 2, 2)] * K, torch.randn(B + 1, 4, 2, 2))


def test_match_feature_pools_the_teacher_when_the_student_is_smaller():
    """meta_util.py MatchFeature: s_H > t_H pools the student, otherwise the teacher."""
    small = build_adapter((6, 2, 2), (4, 8, 8), kind="mmkd")
    t = torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(small.target(t), F.adaptive_avg_pool2d(t, (2, 2)))
    assert small(torch.randn(3, 6, 2, 2)).shape == (3, 4, 2, 2)
    large = build_adapter((6, 8, 8), (4, 4, 4), kind="mmkd")
    t = torch.randn(3, 4, 4, 4)
    assert torch.equal(large.target(t), t)
    s = torch.randn(3, 6, 8, 8)
    expected = large.bn(large.conv(F.adaptive_avg_pool2d(s, (4, 4)))).relu()
    torch.testing.assert_close(large(s), expected)


class _MetaSGD(torch.optim.SGD):
    """helper/meta_optimizer.py MetaSGD (rollback=True, cpu=False), transcribed."""

    def __init__(self, params, modules, lr, momentum, weight_decay, nesterov):
        super().__init__(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.prev_states = []
        self.modules = modules + [self]

    def get_state(self):
        return copy.deepcopy([m.state_dict() for m in self.modules])

    def set_state(self, state):
        for m, s in zip(self.modules, state):
            m.load_state_dict(s)

    def step(self, objective=None, *args, **kwargs):
        if objective is not None:
            self.prev_states.append((self.get_state(), objective, args, kwargs))
            objective(*args, **kwargs).backward()
        super().step()

    def params(self):
        return [p for pg in self.param_groups for p in pg["params"]]

    def meta_backward(self):
        alpha = []
        for p in self.params():
            grad = torch.zeros_like(p) if p.grad is None else p.grad.data.clone()
            alpha.append((grad, torch.zeros_like(grad)))
        pg = self.param_groups[0]
        lr, wd, momentum = pg["lr"], pg["weight_decay"], pg["momentum"]
        for state, objective, args, kwargs in reversed(self.prev_states):
            self.set_state(state)
            loss = objective(*args, **kwargs)
            grad = torch.autograd.grad(loss, self.params(), create_graph=True, allow_unused=True)
            X = 0.0
            for g, a in zip(grad, alpha):
                if g is not None:
                    X = X + g.mul(a[0].mul(-lr) + a[1]).sum()
            self.zero_grad()
            X.backward()
            for p, a in zip(self.params(), alpha):
                pgrad = torch.zeros_like(p) if p.grad is None else p.grad.data
                new = (a[0].mul(1 - lr * wd).add(a[1], alpha=wd).add(pgrad),
                       a[1].mul(momentum).add(a[0], alpha=-lr * momentum))
                a[0].copy_(new[0])
                a[1].copy_(new[1])
        self.prev_states = []


def _objectives(d, x, y, t_logits, t_maps, gamma):
    """train_meta.py inner_objective(matching_only=True) and outer_objective."""
    nets = d.strategy.networks

    def inner():
        logits, feature, adapted = d.forward_student(x)
        w = nets.logits(t_logits, logits.detach())
        kl = torch.stack([_distill_kl(logits, t_logits[k]) for k in range(K)], 1)
        loss_div = (w * kl).sum(-1).mean()
        v = nets.feature(t_maps, feature.detach())
        ind = torch.stack([((adapted[k] - t_maps[k]) ** 2).reshape(B, -1).mean(-1)
                           for k in range(K)], 1)
        loss_kd = (v * ind).sum() / B
        return 1.0 * loss_div + gamma * loss_kd

    def outer():
        return F.cross_entropy(d.student(x), y)

    return inner, outer


def test_meta_step_equals_meta_sgd_and_rolls_back_exactly():
    gamma = 2.0
    d = _distiller(gamma=gamma, hard_buffer=False, seed=1, bn_update=False).double()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    d.train()
    _, losses, _ = d(x, y)  # the student's own step first: momentum buffers exist
    opt.zero_grad()
    losses["total"].backward()
    opt.step()

    ref = _distiller(gamma=gamma, hard_buffer=False, seed=1,  # a copy (a deepcopy
                     bn_update=False).double()
    ref.load_state_dict(d.state_dict())  # would leave its feature tap on the original)
    ref.train()
    ref_opt = _MetaSGD(ref.trainable_parameters(), [ref.student, ref.adapters], 0.05, 0.9, 5e-4, True)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (else it shares the buffers)
    with torch.no_grad():
        out = ref.ensemble(x, y, features=True)
    inner, outer = _objectives(ref, x, y, out.logits, out.features, gamma)
    for _ in range(2):
        ref_opt.zero_grad()
        ref_opt.step(inner)
    ref_opt.zero_grad()
    ref_opt.step(outer)
    ref_opt.zero_grad()
    for p in ref.strategy.networks.parameters():
        p.grad = None
    outer().backward()
    ref_opt.meta_backward()
    expected = [p.grad for p in ref.strategy.networks.parameters()]

    student = copy.deepcopy(d.student.state_dict())
    adapters = copy.deepcopy(d.adapters.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    got = d.strategy.meta_gradients(d, opt)
    assert len(got) == len(expected) and any(float(e.abs().max()) > 0 for e in expected)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-7, atol=1e-10)
    # rollback: the student, its adapters (BatchNorm statistics included) and the optimizer
    # are bit-identical; only the weight networks move in meta_step
    before = [p.detach().clone() for p in d.strategy.networks.parameters()]
    d.strategy.meta_step(d, opt)
    for name, t in d.student.state_dict().items():
        assert torch.equal(t, student[name]), name
    for name, t in d.adapters.state_dict().items():
        assert torch.equal(t, adapters[name]), name
    after_state = opt.state_dict()
    for key, state in opt_state["state"].items():
        assert torch.equal(after_state["state"][key]["momentum_buffer"], state["momentum_buffer"])
    assert any(not torch.equal(a, b) for a, b in zip(before, d.strategy.networks.parameters()))
    assert not {id(p) for p in d.trainable_parameters()} & \
        {id(p) for p in d.strategy.networks.parameters()}


def test_meta_steps_follow_meta_freq_and_the_last_batch():
    d = _distiller(meta_freq=3)
    steps = []
    d.strategy.meta_step = lambda learner, optimizer: steps.append(True)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01)
    seen = []
    for step in range(8):
        d(torch.randn(B, 3, 32, 32), torch.randint(0, C, (B,)))
        n = len(steps)
        d.after_step(opt, step, 8)
        if len(steps) > n:
            seen.append(step)
    assert seen == [0, 3, 6, 7]  # idx % meta_freq == 0 or idx == n_batch - 1


def test_hard_buffer_fills_exactly_then_swaps_in_misclassified_samples():
    """dataset/buffer.py HardBuffer, with a batch size that does not divide its size."""
    d = _distiller(buffer_size=10)  # batches of 6: 6, then 4 of the next; never more
    strategy = d.strategy
    batches = [(torch.randn(B, 3, 32, 32), torch.randint(0, C, (B,))) for _ in range(4)]
    d(*batches[0])
    assert strategy._buffer["y"].shape[0] == 6
    d(*batches[1])
    buf = strategy._buffer
    assert buf["y"].shape[0] == 10 and buf["x"].shape[0] == 10
    torch.testing.assert_close(buf["x"][6:], batches[1][0][:4])
    held = buf["x"].clone()
    from multikd.train.hostsync import HostSyncDetector

    d.check_every_cpu_batch = False
    with HostSyncDetector(include_cpu=True) as watch:  # swapping needs no host read
        logits, _, _ = d(*batches[2])
    assert not watch.syncs, watch.syncs
    wrong = int((logits.argmax(1) != batches[2][1]).sum())
    changed = (strategy._buffer["x"] != held).flatten(1).any(1)
    assert strategy._buffer["y"].shape[0] == 10 and int(changed.sum()) == wrong
    meta = strategy.meta_batch()
    assert meta["y"].shape[0] == B and meta["t_logits"].shape == (K, B, C)


@pytest.mark.parametrize("name", [pytest.param("mmkd", marks=pytest.mark.slow), "mtkd-rl"])
def test_teachers_receive_no_gradient_and_stay_frozen(name):
    torch.manual_seed(0)
    teachers = [create_model("resnet8", num_classes=C) for _ in range(K)]
    d = MultiTeacherDistiller(create_model("resnet8", num_classes=C),
                              TeacherEnsemble(teachers, names=["a", "b"]),
                              create_strategy(name, **({"agent_step": 1} if name == "mtkd-rl" else {})),
                              LossSpec(gamma=2.0), batch_size=B)
    frozen = copy.deepcopy([t.state_dict() for t in teachers])
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    d.train()
    for epoch in (1, 2):
        d.set_epoch(epoch)
        for step in range(2):
            _, losses, _ = d(torch.randn(B, 3, 32, 32), torch.randint(0, C, (B,)))
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
            d.after_step(opt, step, 2)
        d.end_epoch(epoch)
    for teacher, state in zip(teachers, frozen):
        assert all(p.grad is None for p in teacher.parameters())
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, state[key]), key


@pytest.mark.slow
def test_meta_step_updates_batchnorm_statistics_once_as_the_reference():
    """MMKD's reference restores the student by load_state_dict, then runs the first virtual
    objective once more in train mode: the weights are rolled back, the BatchNorm running
    statistics move once on the meta batch. ``bn_update: false`` leaves them untouched."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, 3, 32, 32, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    moved = {}
    for bn_update in (True, False):
        d = _distiller(hard_buffer=False, seed=1, bn_update=bn_update)
        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
        d.train()
        _, losses, _ = d(x, y)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        before = copy.deepcopy(d.student.state_dict())
        expected = copy.deepcopy(d.student)
        with torch.no_grad():
            expected(x)  # the reference's extra train-mode forward on the meta batch
        d.strategy.meta_step(d, opt)
        after = d.student.state_dict()
        for name, t in after.items():
            if "running" in name or "num_batches_tracked" in name:
                target = expected.state_dict()[name] if bn_update else before[name]
                torch.testing.assert_close(t, target, rtol=0, atol=1e-6, msg=name)
            else:
                assert torch.equal(t, before[name]), name
        moved[bn_update] = any(not torch.equal(after[n], before[n]) for n in after)
    assert moved == {True: True, False: False}
    assert create_strategy("mmkd").bn_update is True
