"""Feature modules (AT, SP, ...) in the multi-teacher distiller (issue 36, item 2).

The feature term of a feature module is ``mean_i sum_k v_ki l_ki`` with the strategy's
feature weights: per sample for a per-sample loss, and for a loss defined on the whole
batch ``sum_k mean_i(v_ki) l_k``. With one teacher it is the single-teacher loss itself.
Checked in float64 against the loss modules run by hand on the same taps.
"""

from __future__ import annotations

import pytest
import torch

from multikd.errors import ConfigError
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import TeacherEnsemble
from multikd.method.feature_losses import FeatureBatch, tap_names
from multikd.method.feature_losses.at import AttentionTransfer
from multikd.method.loss_spec import LossSpec
from multikd.method.strategies import create_strategy
from multikd.models import create_model
from multikd.models.taps import FeatureTap
from multikd.train.config import build_config
from multikd.train.lockstep import teacher_taps
from tests.tolerances import REF64

CLASSES = 5


def _models(k: int, seed: int = 0):
    torch.manual_seed(seed)
    student = create_model("resnet8", num_classes=CLASSES).double()
    teachers = [create_model("resnet14" if i % 2 else "resnet8", num_classes=CLASSES).double()
                for i in range(k)]
    return student, teachers


def _batch(b: int = 6):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(b, 3, 32, 32, generator=g, dtype=torch.float64),
            torch.randint(0, CLASSES, (b,), generator=g))


def _maps(model, reads, x):
    with FeatureTap(model, tap_names(model, reads, "m")) as tap:
        _, maps = tap(x)
    return list(maps.values())


def _distiller(k, strategy, **loss):
    student, teachers = _models(k)
    example = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    d = MultiTeacherDistiller(student, TeacherEnsemble(teachers, example_input=example),
                              strategy, LossSpec(alpha=1.0, beta=0.0, **loss),
                              example_input=example)
    return d.eval(), student, teachers  # eval: the taps below see the same maps


def test_one_teacher_feature_term_is_the_single_teacher_loss():
    d, student, (teacher,) = _distiller(1, create_strategy("uniform"), gamma=1000.0,
                                        feature_loss="at")
    x, y = _batch()
    _, losses, _ = d(x, y)
    at = AttentionTransfer([(1,)] * 3, [(1,)] * 3)
    expected = at(_maps(student, "stages", x), _maps(teacher, "stages", x), FeatureBatch(y)).mean()
    torch.testing.assert_close(losses["feat"], expected, **REF64)
    torch.testing.assert_close(losses["total"], losses["ce"] + 1000.0 * expected, **REF64)


@pytest.mark.parametrize("name,reads,per_sample", [("at", "stages", True), ("sp", "last", False)])
def test_several_teachers_are_weighted_per_sample_or_by_the_batch_mean(name, reads, per_sample):
    v = [0.2, 0.5, 0.3]
    d, student, teachers = _distiller(3, create_strategy("fixed", weights=v), gamma=1.0,
                                      feature_loss=name)
    x, y = _batch()
    _, losses, _ = d(x, y)
    s_maps = _maps(student, reads, x)
    per = []
    for module, teacher in zip(d.feature_modules, teachers):
        value = module(s_maps, _maps(teacher, reads, x), FeatureBatch(y))
        assert value.dim() == (1 if per_sample else 0)
        per.append(value.mean())
    expected = sum(w * p for w, p in zip(v, per))
    torch.testing.assert_close(losses["feat"], expected, **REF64)


def test_feature_modules_train_the_student_only_and_follow_the_checkpoint():
    d, student, teachers = _distiller(2, create_strategy("ce-filter"), gamma=1.0,
                                      feature_loss="at")
    x, y = _batch()
    d.train()
    _, losses, _ = d(x, y)
    losses["feat"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for t in teachers for p in t.parameters())
    assert len(d.adapters) == 0 and len(d.feature_modules) == 2
    assert "feature_modules" in d.learner_state_dict()


def test_teacher_head_weights_and_learned_strategies_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="teacher-head .* only hint losses"):
        _distiller(2, create_strategy("ca-mkd"), gamma=1.0, feature_loss="at",
                   feature_weights="teacher-head")
    with pytest.raises(ConfigError, match="strategy 'mtkd-rl' reads the student's feature through"):
        _distiller(2, create_strategy("mtkd-rl"), gamma=1.0, feature_loss="at")
    with pytest.raises(ConfigError, match="would move feature loss 'crd''s own state"):
        _distiller(2, create_strategy("mmkd"), gamma=1.0, feature_loss="crd",
                   feature_params={"nce_k": 4})
    d, _, _ = _distiller(2, create_strategy("ca-mkd"), gamma=1.0, feature_loss="at")
    assert d.feature_weights == "strategy"  # CA-MKD's reference teacher-head has no adapter here


def test_the_ensemble_hands_out_each_teachers_loss_maps():
    _, teachers = _models(2)
    ensemble = TeacherEnsemble(teachers, feature_names=["layer3", "layer3"],
                               example_input=torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    ensemble.set_loss_taps([tap_names(t, "stages", "t") for t in teachers])
    x, y = _batch()
    out = ensemble(x, y)
    for teacher, maps, feature in zip(teachers, out.stage_features, out.features):
        expected = _maps(teacher, "stages", x)
        assert len(maps) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(maps, expected))
        assert torch.equal(feature, expected[-1])  # the hint stage is still tapped
    assert ensemble.loss_tap_shapes(x[:2]) == [[tuple(m.shape[1:]) for m in maps]
                                                for maps in out.stage_features]
    ensemble.set_loss_taps(None)
    assert ensemble(x, y).stage_features is None


def test_lockstep_groups_runs_by_what_their_feature_loss_reads():
    at = build_config(sets=["loss.gamma=1", "loss.feature_loss=at"])
    mse = build_config(sets=["loss.gamma=1"])
    assert teacher_taps(at) != teacher_taps(mse)


def _meta_gradients(name: str, gamma: float, perturb_modules: bool = False):
    """MMKD's meta-gradients after one real step of a fixed student, teachers and batch."""
    student, teachers = _models(2)
    example = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(5)
    mmkd = create_strategy("mmkd", hard_buffer=False)
    d = MultiTeacherDistiller(student, TeacherEnsemble(teachers, example_input=example), mmkd,
                              LossSpec(gamma=gamma, feature_loss=name), example_input=example,
                              batch_size=6).double()
    if perturb_modules:
        with torch.no_grad():
            for p in d.feature_modules.parameters():
                p.mul_(1.5)
    d.train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = _batch()
    _, losses, _ = d(x, y)
    opt.zero_grad()
    losses["total"].backward()
    opt.step()
    before = [p.detach().clone() for p in d.trainable_parameters()]
    grads = mmkd.meta_gradients(d, opt)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(torch.equal(a, b) for a, b in zip(before, d.trainable_parameters()))  # rolled back
    return grads


@pytest.mark.parametrize("name", ["at", "vid"])
@pytest.mark.slow  # MMKD's virtual steps through the modules: seconds each
def test_mmkd_virtual_steps_evaluate_the_feature_modules(name):
    """MMKD's virtual steps include the feature modules' loss (the meta-gradients change
    with gamma) evaluated with the unrolled weights (VID's regressors, held by the
    optimizer, change them too)."""
    base = _meta_gradients(name, 1.0)
    assert any(g.abs().sum() > 0 for g in base)
    assert any(not torch.equal(a, b) for a, b in zip(base, _meta_gradients(name, 1000.0)))
    if name == "vid":
        moved = _meta_gradients(name, 1.0, perturb_modules=True)
        assert any(not torch.equal(a, b) for a, b in zip(base, moved))
