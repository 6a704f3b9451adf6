"""TeacherRunner: batched same-architecture teachers equal the plain loop, in teacher order.

The batched pass is another algorithm (one grouped convolution instead of K separate ones),
so its float32 results equal the loop's only up to summation order, which depends on the
CPU's kernels. The equality of the two functions is therefore checked in float64 (teachers
and input), to 1e-10 of the largest value (tests/tolerances.py); float32 serving is checked
against the first-order float32 bound of the network (``f32_network_tol``).
"""

import logging

import pytest
import torch
from torch import nn

from multikd.method.batched import BATCHED, LOOP, TeacherRunner, group_teachers
from multikd.errors import ModelError
from multikd.models.taps import FeatureTap
from multikd.models import create_model
from tolerances import f32_network_tol, ref64


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Distinct weights and BN statistics per teacher, so a mixed-up stack would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.rand(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise)
            else:
                t.add_(0.1 * (noise - 0.5))
    return model.eval().requires_grad_(False)


def _zoo(*archs: str, dtype=torch.float32) -> list[nn.Module]:
    return [_randomized(create_model(a, num_classes=10), seed).to(dtype)
            for seed, a in enumerate(archs)]


def _loop(teachers, names, x):
    """Reference: each teacher on its own, features through a FeatureTap."""
    logits, feats = [], []
    for teacher, name in zip(teachers, names):
        if name is None:
            logits.append(teacher(x))
            feats.append(None)
            continue
        with FeatureTap(teacher, [name]) as tap:
            out, tapped = tap(x)
        logits.append(out)
        feats.append(tapped[name])
    return torch.stack(logits), feats


def _assert_close(actual, expected):
    """float64: the same function up to summation order (vmap turns G convolutions into one
    grouped one), to 1e-10 of the largest value."""
    assert actual.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(actual, expected, **ref64(expected))


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X64 = X.double()


def _runner64(teachers, names=None):
    """A runner of float64 teachers, checked on a float64 example (the default is float32)."""
    return TeacherRunner(teachers, names, example_input=X64[:2])


def test_three_same_arch_teachers_batched_equal_the_loop_logits_and_features():
    teachers = _zoo("resnet8", "resnet8", "resnet8", dtype=torch.float64)
    names = ["layer3", "layer1", None]  # different taps per teacher, one without
    runner = _runner64(teachers, names)
    assert runner.modes == [BATCHED] * 3
    assert [g.indices for g in runner.groups] == [[0, 1, 2]]
    with torch.no_grad():
        logits, feats = runner(X64)
        ref_logits, ref_feats = _loop(teachers, names, X64)
    assert logits.shape == (3, 3, 10)
    _assert_close(logits, ref_logits)
    assert feats[0].shape == (3, 64, 8, 8) and feats[1].shape == (3, 16, 32, 32)
    assert feats[2] is None
    _assert_close(feats[0], ref_feats[0])
    _assert_close(feats[1], ref_feats[1])
    # the teachers really differ, so equality above is not a stack of one teacher
    assert (ref_logits[0] - ref_logits[1]).abs().max() > 1e-2


def test_mixed_groups_keep_the_teacher_order():
    teachers = _zoo("resnet8", "wrn_16_1", "resnet8", dtype=torch.float64)
    names = [t.feature_names[-1] for t in teachers]
    runner = _runner64(teachers, names)
    assert group_teachers(teachers) == [[0, 2], [1]]
    assert runner.modes == [BATCHED, LOOP, BATCHED]
    assert runner.groups[1].reason == "single teacher of its architecture"
    with torch.no_grad():
        logits, feats = runner(X64)
        ref_logits, ref_feats = _loop(teachers, names, X64)
    _assert_close(logits, ref_logits)
    for got, ref in zip(feats, ref_feats):
        _assert_close(got, ref)


def test_batching_off_runs_every_group_in_a_loop_bit_exactly():
    teachers = _zoo("resnet8", "resnet8")
    runner = TeacherRunner(teachers, ["layer2", None], batched=False)
    assert runner.modes == [LOOP, LOOP]
    assert runner.groups[0].reason == "batching switched off"
    with torch.no_grad():
        logits, feats = runner(X)
        ref_logits, ref_feats = _loop(teachers, ["layer2", None], X)
    assert torch.equal(logits, ref_logits) and torch.equal(feats[0], ref_feats[0])


def test_weights_changed_after_construction_are_picked_up():
    teachers = _zoo("resnet8", "resnet8", dtype=torch.float64)
    runner = _runner64(teachers)
    assert runner.modes == [BATCHED, BATCHED]
    replacement = _randomized(create_model("resnet8", num_classes=10), 7).double()
    teachers[1].load_state_dict(replacement.state_dict())
    with torch.no_grad():
        logits, _ = runner(X64)
        _assert_close(logits[1], replacement(X64))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: vmap cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        out = self.fc(x.mean((2, 3)))
        return out if out.sum() > 0 else -out


class Scaled(nn.Module):
    """Same state_dict keys and shapes whatever ``scale`` is: only the check can tell."""

    def __init__(self, scale: float):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: [DataDependent(), DataDependent()], "vmap could not run it"),
        (lambda: [Scaled(1.0), Scaled(3.0)], "batched logits differ from the loop's"),
    ],
)
def test_a_group_vmap_cannot_serve_falls_back_to_the_loop_with_a_logged_reason(
    make, reason, caplog
):
    teachers = [m.eval() for m in make()]
    with caplog.at_level(logging.WARNING, logger="multikd.method.batched"):
        runner = TeacherRunner(teachers)
    assert runner.modes == [LOOP, LOOP]
    assert runner.groups[0].reason.startswith(reason)
    assert reason in caplog.text
    with torch.no_grad():
        logits, _ = runner(X)
        assert torch.equal(logits, torch.stack([t(X) for t in teachers]))


def test_errors_training_mode_and_bad_feature_names():
    teachers = _zoo("resnet8", "resnet8")
    with pytest.raises(ModelError, match="close matches: layer3"):
        TeacherRunner(teachers, ["layer", None])
    with pytest.raises(ModelError, match="one per teacher"):
        TeacherRunner(teachers, ["layer3"])
    with pytest.raises(ModelError, match="at least one teacher"):
        TeacherRunner([])
    runner = TeacherRunner(teachers)
    teachers[0].train()
    with pytest.raises(ModelError, match="training mode"):
        runner(X)


def test_the_ensemble_runs_its_teachers_batched_on_request():
    from multikd.method.ensemble import TeacherEnsemble

    teachers = _zoo("resnet8", "resnet8", "wrn_16_1")
    names = ["layer3", "layer2", "block2"]
    batched = TeacherEnsemble(teachers, feature_names=names, batched=True)
    looped = TeacherEnsemble(teachers, feature_names=names)
    assert batched.runner.modes == [BATCHED, BATCHED, LOOP]
    assert looped.runner.modes == [LOOP, LOOP, LOOP]
    y = torch.tensor([1, 2, 3])
    out, ref = batched(X, y), looped(X, y)  # float32, as the ensemble serves it
    tol = max((f32_network_tol(t, 1.0) for t in teachers), key=lambda d: d["rtol"])["rtol"]

    def close(got, want, scale=None):
        scale = want.abs().max().item() if scale is None else scale
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale)

    close(out.logits, ref.logits)
    # CE = logsumexp(z) - z_y moves by at most twice the logits' largest error
    close(out.ce, ref.ce, scale=2 * ref.logits.abs().max().item())
    for got, want in zip(out.features, ref.features):
        close(got, want)
    # that bound (~1e-3) is far below the differences a mixed-up teacher or tap would make
    assert (ref.logits[0] - ref.logits[1]).abs().max() > 100 * tol * ref.logits.abs().max()
    assert batched.feature_shapes() == looped.feature_shapes()
