"""MultiTeacherDistiller: the total loss by hand, gradients, frozen teachers, sharing, state."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tolerances import REF64
from zoo_reference import zoo_facts

from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import EnsembleOutput, TeacherEnsemble
from multikd.method.loss_spec import LossSpec
from multikd.errors import ConfigError, ModelError, TrainingError
from multikd.models import create_model
from multikd.method.strategies import create_strategy

CLASSES = 5


class Tiny(nn.Module):
    """conv stem (C x 32 x 32) -> strided stage (C x 16 x 16) -> pool -> fc."""

    def __init__(self, channels=4, classes=CLASSES, stride=1):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        self.feature_names = ["stem", "stage"]

    def forward(self, x):
        return self.fc(self.pool(self.stage(self.stem(x))).flatten(1))


def _setup(strategy="ce-filter", teachers=(4, 6), params=None, **kw):
    torch.manual_seed(0)
    ensemble = TeacherEnsemble([Tiny(c, stride=1 + k % 2) for k, c in enumerate(teachers)])
    student = Tiny(3)
    strategy = create_strategy(strategy, **(params or {}))
    return MultiTeacherDistiller(student, ensemble, strategy, LossSpec(**kw))


def _batch(b=6, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 32, 32, generator=g)
    return x.to(dtype), torch.randint(0, CLASSES, (b,), generator=g)


# The losses "by hand" below are reference checks: the distiller and the batch in float64,
# compared at REF64 (tests/tolerances.py), so they hold on any CPU's kernels and check the
# formula to far better than 1e-6 (float32's default atol of 1e-5 would check a KL of 0.01
# to 1e-3 only).


def test_one_teacher_uniform_no_features_is_exactly_hinton_kd():
    d = _setup("uniform", teachers=(4,), alpha=0.3, beta=0.7, temperature=3.0).double().eval()
    x, y = _batch(dtype=torch.float64)
    logits, losses, info = d(x, y)
    s, t, T = d.student(x), d.ensemble.teachers[0](x), 3.0
    p, log_q = F.softmax(t / T, 1), F.log_softmax(s / T, 1)
    kd = (p * (p.log() - log_q)).sum(1).mean() * T * T
    ce = F.cross_entropy(s, y)
    torch.testing.assert_close(losses["kd"], kd, **REF64)
    torch.testing.assert_close(losses["ce"], ce, **REF64)
    torch.testing.assert_close(losses["total"], 0.3 * ce + 0.7 * kd, **REF64)
    assert losses["feat"].item() == 0.0 and len(d.adapters) == 0
    assert info["teachers"] == ["Tiny"] and info["weights"].tolist() == [1.0]


def test_total_is_the_weighted_sum_with_strategy_weights_and_mse_logits():
    d = _setup("fixed", params={"weights": [3.0, 1.0]}, alpha=0.5, beta=2.0, logit_loss="mse")
    d.double().eval()
    x, y = _batch(dtype=torch.float64)
    _, losses, info = d(x, y)
    s = d.student(x)
    mse = [((s - t(x)) ** 2).mean(1) for t in d.ensemble.teachers]
    kd = (0.75 * mse[0] + 0.25 * mse[1]).mean()
    torch.testing.assert_close(losses["kd"], kd, **REF64)
    torch.testing.assert_close(losses["total"], 0.5 * F.cross_entropy(s, y) + 2.0 * kd, **REF64)
    torch.testing.assert_close(info["weights"], torch.tensor([0.75, 0.25]).double(), **REF64)


def test_feature_loss_by_hand_with_uniform_feature_weights():
    d = _setup("best", gamma=2.0, alpha=0.0, beta=0.0, feature_weights="uniform").double().eval()
    x, y = _batch(dtype=torch.float64)
    _, losses, _ = d(x, y)
    fs = d.student.stage(d.student.stem(x))
    per_teacher = [
        ((a(fs) - t.stage(t.stem(x))) ** 2).flatten(1).mean(1)
        for a, t in zip(d.adapters, d.ensemble.teachers)
    ]
    feat = (0.5 * per_teacher[0] + 0.5 * per_teacher[1]).mean()
    torch.testing.assert_close(losses["feat"], feat, **REF64)
    torch.testing.assert_close(losses["total"], 2.0 * feat, **REF64)


def test_adapters_fit_each_teachers_last_stage():
    d = _setup(gamma=1.0)
    # student stage 3x16x16; teacher 0 stage 4x16x16, teacher 1 (stride-2 stem) 6x8x8
    assert [(a.in_shape, a.out_shape) for a in d.adapters] == [
        ((3, 16, 16), (4, 16, 16)),
        ((3, 16, 16), (6, 8, 8)),
    ]
    assert d.student_feature == "stage" and d.ensemble.feature_names == ["stage", "stage"]
    other = _setup(gamma=1.0, student_feature="stem", teacher_features=["stem", "stage"])
    assert [a.out_shape for a in other.adapters] == [(4, 32, 32), (6, 8, 8)]


def test_gradients_reach_student_and_adapters_never_teachers():
    d = _setup("uniform", gamma=1.0).train()
    x, y = _batch()
    _, losses, _ = d(x, y)
    losses["total"].backward()
    teachers = list(d.ensemble.parameters())
    assert teachers and all(p.grad is None and not p.requires_grad for p in teachers)
    trainable = d.trainable_parameters()
    assert {id(p) for p in trainable} == {id(p) for p in d.student.parameters()} | {
        id(p) for p in d.adapters.parameters()
    }
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_feature_loss_alone_trains_the_tapped_layers_and_adapters():
    d = _setup("uniform", gamma=1.0, alpha=0.0, beta=0.0).train()
    x, y = _batch()
    _, losses, _ = d(x, y)
    losses["total"].backward()
    for module in (d.student.stem[0], d.student.stage[0], *(a.conv for a in d.adapters)):
        assert module.weight.grad.abs().sum() > 0
    assert d.student.fc.weight.grad is None or not d.student.fc.weight.grad.any()


def test_teachers_stay_in_eval_and_keep_their_statistics_while_the_student_trains():
    d = _setup(gamma=1.0)
    d.train()
    assert d.student.training and all(a.training for a in d.adapters)
    assert not any(m.training for m in d.ensemble.modules())
    stats = copy.deepcopy(d.ensemble.state_dict())
    d(*_batch())
    assert all(torch.equal(v, stats[k]) for k, v in d.ensemble.state_dict().items())


def test_permuting_teachers_permutes_info_and_keeps_the_losses():
    torch.manual_seed(0)
    teachers = [Tiny(4), Tiny(5), Tiny(6)]
    student = Tiny(3)
    x, y = _batch()

    def run(order):
        ensemble = TeacherEnsemble([teachers[k] for k in order], names=[f"t{k}" for k in order])
        strategy = create_strategy("ce-filter", margin=0.01)
        d = MultiTeacherDistiller(student, ensemble, strategy).eval()
        return d(x, y)

    _, base_losses, base = run([0, 1, 2])
    _, losses, info = run([2, 0, 1])
    assert info["teachers"] == ["t2", "t0", "t1"]
    for key in ("weights", "ce", "kept"):
        torch.testing.assert_close(info[key], base[key][[2, 0, 1]])
    torch.testing.assert_close(losses["total"], base_losses["total"])


def test_info_holds_detached_batch_means_of_weights_ce_and_kept():
    d = _setup("correct-only", teachers=(4, 5, 6)).train()
    x, y = _batch()
    out = d.ensemble(x, y, features=False)
    sel = d.strategy.select(out.ce, out.logits, y)
    _, _, info = d(x, y, teacher_out=out)
    torch.testing.assert_close(info["weights"], sel.weights.mean(1))
    torch.testing.assert_close(info["ce"], out.ce_mean)
    torch.testing.assert_close(info["kept"], sel.kept.float().mean(1))
    assert info["weights"].sum().item() == pytest.approx(1.0)
    assert not any(info[k].requires_grad for k in ("weights", "ce", "kept"))


def test_shared_teacher_pass_gives_the_same_losses():
    d = _setup(gamma=0.5).eval()
    x, y = _batch()
    _, own, _ = d(x, y)
    _, shared, _ = d(x, y, teacher_out=d.ensemble(x, y))
    for key in own:
        torch.testing.assert_close(shared[key], own[key])


def test_cached_logits_work_without_features_and_are_refused_with_them():
    logits_only = _setup(gamma=0.0).eval()
    x, y = _batch()
    teacher_logits = torch.stack([t(x) for t in logits_only.ensemble.teachers])
    cached = EnsembleOutput.from_logits(teacher_logits, y)
    torch.testing.assert_close(
        logits_only(x, y, teacher_out=cached)[1]["total"], logits_only(x, y)[1]["total"]
    )
    with_features = _setup(gamma=1.0)
    with pytest.raises(ConfigError, match="set gamma to 0"):
        with_features(x, y, teacher_out=cached)
    with pytest.raises(ModelError, match="expected logits"):
        logits_only(x[:2], y[:2], teacher_out=cached)


def test_non_finite_teacher_is_named():
    d = _setup()
    with torch.no_grad():
        d.ensemble.teachers[1].fc.bias[2] = math.nan
    with pytest.raises(TrainingError, match="teacher 'Tiny_1' produced NaN"):
        d(*_batch())


def test_class_count_mismatch_and_bad_settings_are_errors():
    torch.manual_seed(0)
    ensemble = TeacherEnsemble([Tiny(4)])
    with pytest.raises(ModelError, match="student predicts 7 classes but the teachers predict 5"):
        MultiTeacherDistiller(Tiny(3, classes=7), ensemble, create_strategy("uniform"))
    with pytest.raises(ModelError, match="different numbers of classes"):
        TeacherEnsemble([Tiny(4), Tiny(4, classes=7)])
    for kw, message in [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"gamma": -1.0}, "gamma must be a finite number >= 0"),
        ({"logit_loss": "kl"}, "kd, mse"),
        ({"feature_weights": "ce"}, "strategy, uniform"),
    ]:
        with pytest.raises(ConfigError, match=message):
            MultiTeacherDistiller(Tiny(3), ensemble, create_strategy("uniform"), LossSpec(**kw))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, CLASSES))
    with pytest.raises(ConfigError, match="does not list its stage features"):
        MultiTeacherDistiller(plain, ensemble, create_strategy("uniform"), LossSpec(gamma=1.0))


def test_learner_state_round_trip_restores_student_adapters_and_strategy():
    d = _setup("random", params={"seed": 5}, gamma=1.0).train()
    x, y = _batch()
    for _ in range(3):
        d(x, y)  # moves the BN statistics of student and adapters, draws teachers
    state = copy.deepcopy(d.learner_state_dict())
    assert set(state) == {"student", "adapters", "strategy_networks", "strategy"}
    d.eval()
    expected = [d(x, y)[1]["total"] for _ in range(6)]
    torch.manual_seed(1)
    fresh = MultiTeacherDistiller(Tiny(3), d.ensemble, create_strategy("random", seed=5),
                                  LossSpec(gamma=1.0))
    fresh.load_learner_state_dict(state)
    fresh.eval()
    assert [fresh(x, y)[1]["total"] for _ in range(6)] == expected


def test_zoo_teachers_and_student_with_default_last_stage_features():
    torch.manual_seed(0)
    ensemble = TeacherEnsemble([create_model("resnet8x4", 10), create_model("resnet8", 10)])
    strategy = create_strategy("ce-filter")
    d = MultiTeacherDistiller(create_model("resnet8", 10), ensemble, strategy, LossSpec(gamma=1.0))
    shapes = [a.out_shape for a in d.adapters]
    zoo = zoo_facts()
    expected = [tuple(zoo[a]["stage_feature_shapes"][-1]) for a in ("resnet8x4", "resnet8")]
    assert shapes == expected
    x, y = _batch(4)
    _, losses, _ = d.train()(x, y % 10)
    losses["total"].backward()
    assert all(p.grad is None for p in ensemble.parameters())
    assert all(a.conv.weight.grad is not None for a in d.adapters)
