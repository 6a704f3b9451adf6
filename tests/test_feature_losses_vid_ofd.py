"""VID and OFD (``loss.feature_loss: vid | ofd``) against mdistiller's code, by hand, and the
zoo's pre-ReLU maps (``preact_feature_names`` / ``preact_bn_names``) that OFD reads.

mdistiller ``mdistiller/distillers/VID.py`` (``vid_loss``, ``init_vid_modules``) and
``mdistiller/distillers/OFD.py`` (``feat_loss``, ``ConnectorConvBN``, ``init_ofd_modules``,
``ofd_loss``, ``_align_list``) are transcribed below and run on the multikd module's own
weights, in float64 (:data:`tests.tolerances.REF64`). OFD's margins are checked against the
reference's formula with scipy's ``norm.cdf`` (``scipy.special.ndtr``), which multikd
replaces by ``math.erfc``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ConfigError
from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureBatch, FeatureSetup, loss_info, run_per_teacher, tap_names,
)
from multikd.method.feature_losses.ofd import OverhaulFeatureDistillation, bn_margins, margin
from multikd.method.feature_losses.vid import VariationalInformationDistillation
from multikd.models import create_model, list_models
from multikd.models.mobilenetv2 import MobileNetV2
from run_helpers import zoo_params
from multikd.models.resnet_imagenet import CifarResNetBottleneck
from multikd.models.shufflenetv2 import ShuffleNetV2
from multikd.models.taps import FeatureTap
from tests.tolerances import REF64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _assert_close(actual, expected, rtol, atol):
    """``assert_close``'s test (``|a - e| <= atol + rtol |e|``, same dtype and shape) without
    its first-call import of torch.distributed (seconds), to keep this file fast."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (
        f"{actual} != {expected} (max diff {(actual - expected).abs().max().item():.3g})")


# ---------------------------------------------------------------- mdistiller VID.py


def _ref_conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False,
                     stride=stride)


def _ref_regressor(s, t):
    """``VID.init_vid_modules``' regressor."""
    return nn.Sequential(_ref_conv1x1(s, t), nn.ReLU(), _ref_conv1x1(t, t), nn.ReLU(),
                         _ref_conv1x1(t, t))


def _ref_log_scale(t, init_pred_var=5.0, eps=1e-5):
    return torch.nn.Parameter(np.log(np.exp(init_pred_var - eps) - 1.0) * torch.ones(t))


def _ref_vid_loss(regressor, log_scale, f_s, f_t, eps=1e-5):
    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H:
        f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H:
        f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    else:
        pass
    pred_mean = regressor(f_s)
    pred_var = torch.log(1.0 + torch.exp(log_scale)) + eps
    pred_var = pred_var.view(1, -1, 1, 1).to(pred_mean)
    neg_log_prob = 0.5 * ((pred_mean - f_t) ** 2 / pred_var + torch.log(pred_var))
    loss = torch.mean(neg_log_prob)
    return loss


def _ref_vid(regressors, log_scales, g_s, g_t, eps=1e-5):
    """``VID.forward_train``'s feature term (weight 1) over ``feats[1:]``."""
    loss_vid = 0
    for i in range(len(g_s)):
        loss_vid += _ref_vid_loss(regressors[i], log_scales[i], g_s[i], g_t[i], eps)
    return loss_vid


# student [C,H,W] per stage after the stem, teacher: pooling on both sides, 3 stages
VID_S = [(4, 8, 8), (6, 4, 4), (5, 2, 2)]
VID_T = [(5, 4, 4), (7, 4, 4), (3, 2, 2)]


def _vid_maps(batch=3, seed=0):
    gen = _gen(seed)
    s = [torch.randn(batch, *c, generator=gen, dtype=torch.float64) for c in VID_S]
    t = [torch.randn(batch, *c, generator=gen, dtype=torch.float64) * 1.5 + 0.3 for c in VID_T]
    return s, t


def _vid_reference_modules(vid):
    """The reference's regressors, loaded (strictly) with the module's weights, and its
    log-scales equal to the module's."""
    regs = []
    for reg, (s, t) in zip(vid.regressors, zip(VID_S, VID_T)):
        ref = _ref_regressor(s[0], t[0]).double()
        ref.load_state_dict(reg.state_dict())  # same architecture: same keys and shapes
        regs.append(ref)
    return regs, [ls.detach().clone() for ls in vid.log_scales]


def test_vid_log_scale_starts_at_the_reference_value_and_is_not_trained_by_default():
    torch.manual_seed(0)
    vid = VariationalInformationDistillation(VID_S, VID_T)
    for ls, t in zip(vid.log_scales, VID_T):
        assert torch.equal(ls, _ref_log_scale(t[0]).detach())  # float32, as the reference
    # mdistiller: log_scales is a plain list, its optimizer gets the regressors only
    assert {n for n, _ in vid.named_parameters()} == {
        n for n, _ in vid.regressors.named_parameters(prefix="regressors")
    }
    assert {f"log_scale_{i}" for i in range(3)} <= set(vid.state_dict())
    trained = VariationalInformationDistillation(VID_S, VID_T, train_log_scale=True)
    assert {f"log_scale_{i}" for i in range(3)} <= {n for n, _ in trained.named_parameters()}
    assert all(m.bias is None for m in vid.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("train_log_scale", [False, True])
def test_vid_equals_mdistiller(train_log_scale):
    torch.manual_seed(0)
    vid = VariationalInformationDistillation(
        VID_S, VID_T, train_log_scale=train_log_scale).double()
    with torch.no_grad():  # a log-scale away from its start (as after training)
        for i, ls in enumerate(vid.log_scales):
            ls.add_(0.3 * torch.randn(ls.shape, generator=_gen(10 + i), dtype=ls.dtype))
    regs, log_scales = _vid_reference_modules(vid)
    g_s, g_t = _vid_maps()
    batch = FeatureBatch(y=torch.zeros(3, dtype=torch.long))
    per_sample = vid(g_s, g_t, batch)
    assert per_sample.shape == (3,) and per_sample.dtype == torch.float64
    expected = _ref_vid(regs, log_scales, g_s, g_t)
    _assert_close(per_sample.mean(), expected, **REF64)
    # per sample: the reference on that sample alone (nothing couples the samples)
    for i in range(3):
        alone = _ref_vid(regs, log_scales, [f[i:i + 1] for f in g_s], [f[i:i + 1] for f in g_t])
        _assert_close(per_sample[i], alone, **REF64)


def test_vid_eps_and_init_pred_var_are_the_references():
    torch.manual_seed(1)
    vid = VariationalInformationDistillation(VID_S, VID_T, eps=1e-3, init_pred_var=2.0).double()
    regs, _ = _vid_reference_modules(vid)
    log_scales = [_ref_log_scale(t[0], 2.0, 1e-3).detach().double() for t in VID_T]
    g_s, g_t = _vid_maps(seed=1)
    value = vid(g_s, g_t, FeatureBatch(y=torch.zeros(3, dtype=torch.long))).mean()
    _assert_close(value, _ref_vid(regs, log_scales, g_s, g_t, eps=1e-3), **REF64)


def test_vid_refuses_a_student_with_more_stages():
    VariationalInformationDistillation(VID_S[:2], VID_T)  # the reference pairs the first two
    with pytest.raises(ConfigError, match="at least as many stages"):
        VariationalInformationDistillation(VID_S, VID_T[:2])


@pytest.mark.parametrize("train_log_scale", [False, True])
def test_vid_gradients_reach_the_student_and_regressors_not_the_teacher(train_log_scale):
    torch.manual_seed(0)
    vid = VariationalInformationDistillation(VID_S, VID_T, train_log_scale=train_log_scale)
    g_s, g_t = _vid_maps()
    g_s = [f.float().requires_grad_() for f in g_s]
    g_t = [f.float().requires_grad_() for f in g_t]
    batch = FeatureBatch(y=torch.zeros(3, dtype=torch.long))
    run_per_teacher([vid], g_s, [g_t], batch).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in g_s)
    assert all(f.grad is None for f in g_t)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vid.regressors.parameters())
    for ls in vid.log_scales:
        assert (ls.grad is not None and ls.grad.abs().sum() > 0) if train_log_scale else (
            not ls.requires_grad)


# ---------------------------------------------------------------- mdistiller OFD.py


def _ref_norm_cdf(x):
    """scipy's ``norm.cdf``, which is ``scipy.special.ndtr`` (lighter to import)."""
    return pytest.importorskip("scipy.special").ndtr(x)


def _ref_margins(bn_before_relu):
    """``OFD.init_ofd_modules``' margins (scipy's norm.cdf)."""
    margins = []
    for bn in bn_before_relu:
        margin_ = []
        std = bn.weight.data
        mean = bn.bias.data
        for (s, m) in zip(std, mean):
            s = abs(s.item())
            m = m.item()
            if _ref_norm_cdf(-m / s) > 0.001:
                margin_.append(
                    -s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
                    / _ref_norm_cdf(-m / s) + m
                )
            else:
                margin_.append(-3 * s)
        margin_ = torch.FloatTensor(margin_).to(std.device)
        margins.append(margin_.unsqueeze(1).unsqueeze(2).unsqueeze(0).detach())
    return margins


def _ref_connector(t_channel, s_channel, kernel_size):
    """``ConnectorConvBN._build_feature_connector`` (its init is checked separately)."""
    return nn.Sequential(
        nn.Conv2d(s_channel, t_channel, kernel_size=kernel_size, stride=1,
                  padding=(kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(t_channel),
    )


def _ref_feat_loss(source, target, margin_):
    margin_ = margin_.to(source)
    loss = (
        (source - margin_) ** 2 * ((source > margin_) & (target <= margin_)).float()
        + (source - target) ** 2
        * ((source > target) & (target > margin_) & (target <= 0)).float()
        + (source - target) ** 2 * (target > 0).float()
    )
    return torch.abs(loss).mean(dim=0).sum()


def _ref_align_list(*input_list):
    min_len = min([len(l) for l in input_list])
    return [l[-min_len:] for l in input_list]


def _ref_ofd_loss(connectors, margins, feature_student, feature_teacher):
    feature_student, feature_teacher = _ref_align_list(feature_student, feature_teacher)
    feature_student = [connectors[idx](feat) for idx, feat in enumerate(feature_student)]
    loss_distill = 0
    feat_num = len(feature_student)
    for i in range(feat_num):
        loss_distill = loss_distill + _ref_feat_loss(
            feature_student[i],
            F.adaptive_avg_pool2d(feature_teacher[i], feature_student[i].shape[-2:]).detach(),
            margins[i],
        ) / 2 ** (feat_num - i - 1)
    return loss_distill


BN_WEIGHT = [0.5, -1.2, 2.0, 0.3, 1.0, 0.8, 0.05]
BN_BIAS = [0.1, -0.7, 1.5, 2.0, -3.0, 0.0, 0.4]  # 0.3/2.0 and 0.05/0.4: Phi <= 0.001


def _bn(weight, bias):
    bn = nn.BatchNorm2d(len(weight))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight))
        bn.bias.copy_(torch.tensor(bias))
    return bn


def test_ofd_margins_equal_the_reference_formula():
    bn = _bn(BN_WEIGHT, BN_BIAS)
    (expected,) = _ref_margins([bn])
    got = bn_margins(bn)
    assert got.dtype == torch.float32 and got.shape == (len(BN_WEIGHT),)
    # in double, before rounding to float32: erfc for scipy's ndtr, to REF64
    doubles = [margin(s, m) for s, m in zip(bn.weight.tolist(), bn.bias.tolist())]
    scipy_doubles = []
    for s, m in zip(bn.weight.tolist(), bn.bias.tolist()):
        s = abs(s)
        tail = _ref_norm_cdf(-m / s)
        scipy_doubles.append(
            -s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / tail + m
            if tail > 0.001 else -3 * s)
    _assert_close(torch.tensor(doubles, dtype=torch.float64),
                               torch.tensor(scipy_doubles, dtype=torch.float64), **REF64)
    _assert_close(got, expected.flatten(), rtol=2 ** -23, atol=0)  # float32 ulp
    assert got[3] == pytest.approx(-3 * 0.3) and got[6] == pytest.approx(-3 * 0.05)
    # weight 0 (the reference divides by zero): the formula's limit
    assert margin(0.0, -0.4) == -0.4 and margin(0.0, 0.3) == 0.0


class _Teacher(nn.Module):
    """A teacher that names its BatchNorms before each stage's ReLU."""

    def __init__(self, channels):
        super().__init__()
        gen = _gen(5)
        self.bns = nn.ModuleList(
            _bn((torch.rand(c, generator=gen) * 2 - 1).tolist(),
                (torch.randn(c, generator=gen)).tolist()) for c in channels
        )
        self.preact_bn_names = [f"bns.{i}" for i in range(len(channels))]


# student: 3 stages; teacher: 2 (the last two student stages are distilled); the teacher map
# is larger (pooled down) at the first aligned stage and smaller (pooled up) at the second
OFD_S = [(3, 8, 8), (4, 4, 4), (5, 4, 4)]
OFD_T = [(6, 8, 8), (7, 2, 2)]


def _ofd(kernel_size=1, seed=0):
    torch.manual_seed(seed)
    teacher = _Teacher([t[0] for t in OFD_T])
    setup = FeatureSetup(student=nn.Identity(), teacher=teacher,
                         student_shapes=OFD_S, teacher_shapes=OFD_T)
    return OverhaulFeatureDistillation.build(setup, kernel_size=kernel_size), teacher


def _ofd_maps(batch=4, seed=0):
    gen = _gen(seed)
    s = [torch.randn(batch, *c, generator=gen, dtype=torch.float64) for c in OFD_S]
    t = [torch.randn(batch, *c, generator=gen, dtype=torch.float64) - 0.3 for c in OFD_T]
    return s, t


def _ofd_reference_modules(ofd, teacher, kernel_size):
    connectors = []
    for conn, s, t in zip(ofd.connectors, OFD_S[1:], OFD_T):
        ref = _ref_connector(t[0], s[0], kernel_size).double()
        ref.load_state_dict(conn.state_dict())
        connectors.append(ref)
    return connectors, _ref_margins(list(teacher.bns))


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_ofd_equals_mdistiller(kernel_size):
    ofd, teacher = _ofd(kernel_size)
    margins = _ref_margins(list(teacher.bns))
    for mine, ref in zip(ofd.margins, margins):
        assert torch.equal(mine, ref)  # the same float32 values (buffers)
    assert {f"margin_{i}" for i in range(2)} <= set(ofd.state_dict())
    ofd.double().train()
    connectors, margins = _ofd_reference_modules(ofd, teacher, kernel_size)
    for c in connectors:
        c.train()
    g_s, g_t = _ofd_maps()
    batch = FeatureBatch(y=torch.zeros(4, dtype=torch.long))
    per_sample = ofd(g_s, g_t, batch)
    assert per_sample.shape == (4,) and per_sample.dtype == torch.float64
    _assert_close(per_sample.mean(), _ref_ofd_loss(connectors, margins, g_s, g_t),
                               **REF64)
    # per sample (the connectors' BN on running statistics, so nothing couples the samples):
    # the reference on that sample alone
    ofd.eval()
    for c in connectors:
        c.eval()
    per_sample = ofd(g_s, g_t, batch)
    for i in range(4):
        alone = _ref_ofd_loss(connectors, margins, [f[i:i + 1] for f in g_s],
                              [f[i:i + 1] for f in g_t])
        _assert_close(per_sample[i], alone, **REF64)


def test_ofd_test_maps_reach_all_three_terms():
    ofd, _ = _ofd()
    ofd.double().train()
    g_s, g_t = _ofd_maps()
    for conn, m, f_s, f_t in zip(ofd.connectors, ofd.margins, g_s[1:], g_t):
        source = conn(f_s)
        target = F.adaptive_avg_pool2d(f_t, source.shape[-2:])
        m = m.to(source)
        assert ((source > m) & (target <= m)).any()
        assert ((source > target) & (target > m) & (target <= 0)).any()
        assert (target > 0).any()


def test_ofd_connector_init_is_the_references():
    ofd, _ = _ofd(kernel_size=3)
    for conn, t in zip(ofd.connectors, OFD_T):
        conv, bn = conn
        assert conv.bias is None and conv.padding == (1, 1) and conv.stride == (1, 1)
        n = 3 * 3 * t[0]
        assert abs(conv.weight.std().item() - math.sqrt(2.0 / n)) < 0.5 * math.sqrt(2.0 / n)
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_ofd_aligns_margins_with_a_deeper_teacher():
    torch.manual_seed(0)
    teacher = _Teacher([3, 6, 7])
    setup = FeatureSetup(student=nn.Identity(), teacher=teacher,
                         student_shapes=[(4, 4, 4), (5, 4, 4)],
                         teacher_shapes=[(3, 8, 8), (6, 8, 8), (7, 2, 2)])
    ofd = OverhaulFeatureDistillation.build(setup)
    assert [m.shape[1] for m in ofd.margins] == [6, 7]  # the last two, as the maps
    assert torch.equal(ofd.margins[0].flatten(), bn_margins(teacher.bns[1]))


def test_ofd_needs_a_teacher_with_bns_before_its_relus():
    student = create_model("resnet8", num_classes=3)
    for name in ("ShuffleV1", "ShuffleV2"):
        teacher = create_model(name, num_classes=3)
        setup = FeatureSetup(student=student, teacher=teacher,
                             student_shapes=[(16, 32, 32)] * 3, teacher_shapes=[(1, 1, 1)] * 3)
        with pytest.raises(ConfigError, match="get_bn_before_relu"):
            OverhaulFeatureDistillation.build(setup)
    with pytest.raises(ConfigError, match="build"):
        OverhaulFeatureDistillation(OFD_S, OFD_T)


def test_ofd_on_zoo_models_trains_student_and_connectors_not_teacher():
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=3).train()
    teacher = create_model("wrn_16_1", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    s_names = tap_names(student, "preact", "student")
    t_names = tap_names(teacher, "preact", "teacher")
    assert s_names == student.preact_feature_names[1:]
    with FeatureTap(student, s_names) as s_tap, FeatureTap(teacher, t_names) as t_tap:
        _, s_maps = s_tap(x)
        _, t_maps = t_tap(x)
    s_maps = [s_maps[n] for n in s_names]
    t_maps = [t_maps[n] for n in t_names]
    setup = FeatureSetup(student=student, teacher=teacher,
                         student_shapes=[tuple(f.shape[1:]) for f in s_maps],
                         teacher_shapes=[tuple(f.shape[1:]) for f in t_maps])
    ofd = OverhaulFeatureDistillation.build(setup).train()
    modules = dict(teacher.named_modules())
    for m, name in zip(ofd.margins, teacher.preact_bn_names):
        assert torch.equal(m.flatten(), bn_margins(modules[name]))
    batch = FeatureBatch(y=torch.zeros(2, dtype=torch.long))
    run_per_teacher([ofd], s_maps, [t_maps], batch).sum().backward()
    for p in (student.conv1.weight, student.layer3[-1].bn2.weight):  # before the taps
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert student.fc.weight.grad is None  # after them
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ofd.connectors.parameters())
    assert all(not b.requires_grad for b in ofd.margins)


def test_registry_describes_vid_and_ofd():
    assert loss_info("vid")["reads"] == "stages" and loss_info("vid")["per_sample"]
    assert loss_info("vid")["reference_gamma"] == 1.0
    assert loss_info("ofd")["reads"] == "preact" and loss_info("ofd")["per_sample"]
    assert loss_info("ofd")["reference_gamma"] == 0.001
    assert dict(FEATURE_LOSS_REGISTRY.entry("vid").params) == {
        "eps": 1e-5, "init_pred_var": 5.0, "train_log_scale": False}
    assert dict(FEATURE_LOSS_REGISTRY.entry("ofd").params) == {"kernel_size": 1}


# ---------------------------------------------------------------- the zoo's pre-ReLU maps

ZOO = list_models()


@pytest.mark.parametrize("arch", zoo_params(ZOO))
def test_every_zoo_model_lists_its_preact_maps_and_bns(arch):
    """Every tap runs and has the shape of its stage's map; every listed BN is a BatchNorm of
    that stage's channels. (On the CPU: the meta device's normal_ would import dynamo.)"""
    model = create_model(arch, num_classes=3).eval()
    preact, stages = model.preact_feature_names, model.feature_names
    assert len(preact) == len(stages) and preact[0] == stages[0]
    modules = dict(model.named_modules())
    with torch.no_grad(), FeatureTap(model, list(dict.fromkeys(preact + stages))) as tap:
        _, maps = tap(torch.zeros(1, 3, 32, 32))
    for p, s in zip(preact, stages):
        assert maps[p].shape == maps[s].shape, (p, s)
    bns = model.preact_bn_names
    if arch.startswith("Shuffle"):
        assert bns is None  # mdistiller's get_bn_before_relu raises
        return
    assert len(bns) == len(stages) - 1
    for name, p in zip(bns, preact[1:]):
        assert isinstance(modules[name], nn.BatchNorm2d)
        assert modules[name].num_features == maps[p].shape[1]


def _taps(model):
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=_gen(3))
    names = list(dict.fromkeys(model.preact_feature_names + model.feature_names))
    with torch.no_grad(), FeatureTap(model, names) as tap:
        logits, maps = tap(x)
        assert torch.equal(model(x), logits)  # tapping changes nothing
    return [(maps[p], maps[s]) for p, s in
            zip(model.preact_feature_names[1:], model.feature_names[1:])]


SMALL = {  # one model per family, the smallest of its code
    "resnet8": lambda: create_model("resnet8", num_classes=3),
    "bottleneck": lambda: CifarResNetBottleneck((1, 1, 2, 1), num_classes=3),
    "RegNetX_200MF": lambda: create_model("RegNetX_200MF", num_classes=3),
    "ShuffleV1": lambda: create_model("ShuffleV1", num_classes=3),
}


@pytest.mark.parametrize("family", sorted(SMALL))
def test_preact_maps_are_the_values_before_the_stage_relu(family):
    """relu(preact) is the stage's output, and the tap keeps the negative values (no ReLU
    overwrote it in place)."""
    for pre, post in _taps(SMALL[family]()):
        assert (pre < 0).any()
        assert torch.equal(torch.relu(pre), post)


def test_vgg_preact_is_the_last_bn_of_each_block():
    model = create_model("vgg8", num_classes=3)
    for pre, post in _taps(model):
        assert (pre < 0).any() and torch.equal(torch.relu(pre), post)


def test_wrn_preact_is_the_next_bn_on_the_stage_output():
    """mdistiller's wrn.py: f1_pre = block2.layer[0].bn1(f1), ..., f3_pre = bn1(f3)."""
    model = create_model("wrn_16_1", num_classes=3)
    pairs = _taps(model)
    with torch.no_grad():
        stage_outputs = {}
        with FeatureTap(model, ["block1", "block2", "block3"]) as tap:
            _, stage_outputs = tap(torch.randn(2, 3, 32, 32, generator=_gen(3)))
        expected = [model.block2.layer[0].bn1(stage_outputs["block1"]),
                    model.block3.layer[0].bn1(stage_outputs["block2"]),
                    model.bn1(stage_outputs["block3"])]
    for (pre, post), want in zip(pairs, expected):
        assert (pre < 0).any() and torch.equal(pre, want)
    assert torch.equal(torch.relu(pairs[-1][0]), pairs[-1][1])  # the last: relu(bn1(block3))


def test_mobilenetv2_stages_end_without_relu():
    for pre, post in _taps(MobileNetV2(num_classes=3)):
        assert (pre < 0).any() and torch.equal(pre, post)


def test_shufflev2_preact_is_the_unshuffled_concatenation():
    model = ShuffleNetV2(num_classes=3, net_size=0.5)
    for (pre, post), stage in zip(_taps(model), (model.layer1, model.layer2, model.layer3)):
        assert (pre < 0).any()
        assert torch.equal(stage[-1].shuffle(torch.relu(pre)), post)
