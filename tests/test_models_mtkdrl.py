"""MTKD-RL's CIFAR models (#21 item 4): RegNetX_200MF / RegNetX_400MF / RegNetY_400MF,
wrn_28_4 and the full-width MobileNetV2, against a transcription of winycg/MTKD-RL's code.

The reference repository is not importable (einops, no package), so the ``Ref*`` classes
below transcribe its model code (``models/regnet.py``, ``models/wrn.py``,
``models/mobilenetv2.py`` at winycg/MTKD-RL HEAD 4e2b62a), forward pass, ``is_feat``
features and initialisation included, without the parts that only serve other APIs
(``distill_seq``, ``get_feat_modules``, ``preact``). Each multikd model must have the same
state_dict keys, shapes and order, load the reference's weights strictly (as a
``train_baseline.py`` checkpoint: weights under ``'model'``), give the same logits and
stage features, start from the same initial weights under the same seed, and have the
parameter count of an independent closed-form count of the transcribed configuration.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multikd.models import canonical_name, create_model
from multikd.models.checkpoint import load_checkpoint
from multikd.models.cost import model_cost
from multikd.models.taps import FeatureTap
from run_helpers import zoo_params
from tolerances import ref64

# ---------------------------------------------------------------------------------------
# Transcription of winycg/MTKD-RL models/regnet.py (SE, Block, RegNet, the three cfgs).


class RefSE(nn.Module):
    def __init__(self, in_planes, se_planes):
        super().__init__()
        self.se1 = nn.Conv2d(in_planes, se_planes, kernel_size=1, bias=True)
        self.se2 = nn.Conv2d(se_planes, in_planes, kernel_size=1, bias=True)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(x, (1, 1))
        out = F.relu(self.se1(out))
        out = self.se2(out).sigmoid()
        return x * out


class RefBlock(nn.Module):
    def __init__(self, w_in, w_out, stride, group_width, bottleneck_ratio, se_ratio,
                 is_last=False):
        super().__init__()
        self.is_last = is_last
        w_b = int(round(w_out * bottleneck_ratio))
        self.conv1 = nn.Conv2d(w_in, w_b, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w_b)
        num_groups = w_b // group_width
        self.conv2 = nn.Conv2d(w_b, w_b, kernel_size=3, stride=stride, padding=1,
                               groups=num_groups, bias=False)
        self.bn2 = nn.BatchNorm2d(w_b)
        self.with_se = se_ratio > 0
        if self.with_se:
            w_se = int(round(w_in * se_ratio))
            self.se = RefSE(w_b, w_se)
        self.conv3 = nn.Conv2d(w_b, w_out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or w_in != w_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(w_in, w_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(w_out),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        if self.with_se:
            out = self.se(out)
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        preact = out
        out = F.relu(out)
        return (out, preact) if self.is_last else out


class RefRegNet(nn.Module):
    def __init__(self, cfg, num_classes=10):
        super().__init__()
        self.cfg = cfg
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(0)
        self.layer2 = self._make_layer(1)
        self.layer3 = self._make_layer(2)
        self.layer4 = self._make_layer(3)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(self.cfg["widths"][-1], num_classes)

    def _make_layer(self, idx):
        depth = self.cfg["depths"][idx]
        width = self.cfg["widths"][idx]
        stride = self.cfg["strides"][idx]
        layers = []
        for i in range(depth):
            s = stride if i == 0 else 1
            layers.append(RefBlock(self.in_planes, width, s, self.cfg["group_width"],
                                   self.cfg["bottleneck_ratio"], self.cfg["se_ratio"],
                                   is_last=(i == depth - 1)))
            self.in_planes = width
        return nn.Sequential(*layers)

    def forward(self, x, is_feat=False):
        x = self.relu(self.bn1(self.conv1(x)))
        f0 = x
        x, _ = self.layer1(x)
        x, _ = self.layer2(x)
        f1 = x
        x, _ = self.layer3(x)
        f2 = x
        x, _ = self.layer4(x)
        f3 = x
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        f4 = x
        x = self.linear(x)
        return ([f0, f1, f2, f3, f4], x) if is_feat else x


REF_REGNET_CFGS = {
    "RegNetX_200MF": {"depths": [1, 1, 4, 7], "widths": [24, 56, 152, 368],
                      "strides": [1, 1, 2, 2], "group_width": 8, "bottleneck_ratio": 1,
                      "se_ratio": 0},
    "RegNetX_400MF": {"depths": [1, 2, 7, 12], "widths": [32, 64, 160, 384],
                      "strides": [1, 1, 2, 2], "group_width": 16, "bottleneck_ratio": 1,
                      "se_ratio": 0},
    "RegNetY_400MF": {"depths": [1, 2, 7, 12], "widths": [32, 64, 160, 384],
                      "strides": [1, 1, 2, 2], "group_width": 16, "bottleneck_ratio": 1,
                      "se_ratio": 0.25},
}

# ---------------------------------------------------------------------------------------
# Transcription of winycg/MTKD-RL models/wrn.py (BasicBlock, NetworkBlock, WideResNet).


class RefWideBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (not self.equalInOut) and nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False) or None

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class RefNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[
            RefWideBlock(i == 0 and in_planes or out_planes, out_planes, i == 0 and stride or 1)
            for i in range(nb_layers)
        ])

    def forward(self, x):
        return self.layer(x)


class RefWideResNet(nn.Module):
    def __init__(self, depth, num_classes, widen_factor=1):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = RefNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = RefNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = RefNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        self.avgpool = nn.AvgPool2d(8)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x, is_feat=False):
        out = self.conv1(x)
        f0 = out
        out = self.block1(out)
        f1 = out
        out = self.block2(out)
        f2 = out
        out = self.block3(out)
        out = self.relu(self.bn1(out))
        f3 = out  # MTKD-RL takes f3 after the final BN + ReLU
        out = self.avgpool(out).view(-1, self.nChannels)
        f4 = out
        out = self.fc(out)
        return ([f0, f1, f2, f3, f4], out) if is_feat else out


# ---------------------------------------------------------------------------------------
# Transcription of winycg/MTKD-RL models/mobilenetv2.py (MobileNetV2, ``mobilenet``).


def _ref_conv_bn(inp, oup, stride):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


def _ref_conv_1x1_bn(inp, oup):
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


class RefInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == oup
        h = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, h, 1, 1, 0, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h),
            nn.ReLU(inplace=True),
            nn.Conv2d(h, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    def __init__(self, T, feature_dim, input_size=32, width_mult=1.0):
        super().__init__()
        setting = [[1, 16, 1, 1], [T, 24, 2, 1], [T, 32, 3, 2], [T, 64, 4, 2],
                   [T, 96, 3, 1], [T, 160, 3, 2], [T, 320, 1, 1]]
        input_channel = int(32 * width_mult)
        self.conv1 = _ref_conv_bn(3, input_channel, 2)
        self.blocks = nn.ModuleList([])
        for t, c, n, s in setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(RefInvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _ref_conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // (32 // 2), ceil_mode=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward(self, x, is_feat=False):
        out = self.conv1(x)
        f0 = out
        out = self.blocks[1](self.blocks[0](out))
        f1 = out
        out = self.blocks[2](out)
        f2 = out
        out = self.blocks[4](self.blocks[3](out))
        f3 = out
        out = self.blocks[6](self.blocks[5](out))
        f4 = out
        out = self.avgpool(self.conv2(out))
        out = out.view(out.size(0), -1)
        f5 = out
        out = self.classifier(out)
        return ([f0, f1, f2, f3, f4, f5], out) if is_feat else out


# MTKD-RL models/__init__.py model_dict name -> (multikd name, reference builder)
REFERENCE = {
    "RegNetX_200MF": ("RegNetX_200MF", lambda nc: RefRegNet(REF_REGNET_CFGS["RegNetX_200MF"], nc)),
    "RegNetX_400MF": ("RegNetX_400MF", lambda nc: RefRegNet(REF_REGNET_CFGS["RegNetX_400MF"], nc)),
    "RegNetY_400MF": ("RegNetY_400MF", lambda nc: RefRegNet(REF_REGNET_CFGS["RegNetY_400MF"], nc)),
    "wrn_28_4": ("wrn_28_4", lambda nc: RefWideResNet(depth=28, num_classes=nc, widen_factor=4)),
    # 'MobileNetV2': mobilenet = mobilenetv2_T_w(6, 1, num_classes): FULL width
    "MobileNetV2": ("MobileNetV2_full", lambda nc: RefMobileNetV2(6, nc, width_mult=1)),
}
ARCHS = list(REFERENCE)

# ---------------------------------------------------------------------------------------
# Independent closed-form parameter counts of the transcribed configurations.


def _bn(c):
    return 2 * c


def _regnet_params(cfg, num_classes):
    total = 3 * 64 * 9 + _bn(64)
    w_in = 64
    for depth, w, s in zip(cfg["depths"], cfg["widths"], cfg["strides"]):
        for i in range(depth):
            stride = s if i == 0 else 1
            w_b = w * cfg["bottleneck_ratio"]
            total += w_in * w_b + _bn(w_b)                       # conv1 1x1
            total += w_b * cfg["group_width"] * 9 + _bn(w_b)     # grouped 3x3
            if cfg["se_ratio"]:
                w_se = round(w_in * cfg["se_ratio"])
                total += (w_b * w_se + w_se) + (w_se * w_b + w_b)
            total += w_b * w + _bn(w)                            # conv3 1x1
            if stride != 1 or w_in != w:
                total += w_in * w + _bn(w)
            w_in = w
    return total + w_in * num_classes + num_classes


def _wrn_params(depth, k, num_classes):
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    total = 3 * 16 * 9
    for cin, cout in zip(ch[:-1], ch[1:]):
        for i in range(n):
            a = cin if i == 0 else cout
            total += _bn(a) + a * cout * 9 + _bn(cout) + cout * cout * 9
            total += a * cout if a != cout else 0
    return total + _bn(ch[3]) + ch[3] * num_classes + num_classes


def _mobilenetv2_params(width, t, num_classes):
    c = int(32 * width)
    total = 3 * c * 9 + _bn(c)
    for exp, ch, n, _ in [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2),
                          (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)]:
        cout = int(ch * width)
        for _ in range(n):
            h = c * exp
            total += c * h + _bn(h) + 9 * h + _bn(h) + h * cout + _bn(cout)
            c = cout
    return total + c * 1280 + _bn(1280) + 1280 * num_classes + num_classes


PARAMS = {  # (closed form, the value it gives, pinned)
    "RegNetX_200MF": (_regnet_params(REF_REGNET_CFGS["RegNetX_200MF"], 100), 2_355_156),
    "RegNetX_400MF": (_regnet_params(REF_REGNET_CFGS["RegNetX_400MF"], 100), 4_813_988),
    "RegNetY_400MF": (_regnet_params(REF_REGNET_CFGS["RegNetY_400MF"], 100), 5_749_012),
    "wrn_28_4": (_wrn_params(28, 4, 100), 5_872_180),
    "MobileNetV2": (_mobilenetv2_params(1.0, 6, 100), 2_353_060),
}

STAGE_SHAPES = {  # multikd feature_names on 1x3x32x32: (C, H, W)
    "RegNetX_200MF": [(64, 32, 32), (56, 32, 32), (152, 16, 16), (368, 8, 8)],
    "RegNetX_400MF": [(64, 32, 32), (64, 32, 32), (160, 16, 16), (384, 8, 8)],
    "RegNetY_400MF": [(64, 32, 32), (64, 32, 32), (160, 16, 16), (384, 8, 8)],
    "wrn_28_4": [(16, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "MobileNetV2": [(32, 16, 16), (24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)],
}


def _randomize_bn_stats(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.num_batches_tracked.fill_(7)


def _input(batch=2):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("ref_name", ARCHS)
def test_params_equal_closed_form_count(ref_name):
    name, _ = REFERENCE[ref_name]
    closed_form, pinned = PARAMS[ref_name]
    assert closed_form == pinned
    model = create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == closed_form
    assert model_cost(name, 100).params == closed_form


@pytest.mark.parametrize("ref_name", zoo_params(ARCHS))
def test_state_dict_layout_weights_and_logits_match_reference(ref_name):
    name, build_ref = REFERENCE[ref_name]
    torch.manual_seed(0)
    ref = build_ref(100)
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)

    ref_state, state = ref.state_dict(), model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == \
        [(k, tuple(v.shape)) for k, v in ref_state.items()]
    assert sum(p.numel() for p in ref.parameters()) == PARAMS[ref_name][0]
    # same initialisation: under one seed both start from identical weights
    for key in ref_state:
        assert torch.equal(state[key], ref_state[key]), key

    # a train_baseline.py checkpoint ({'model': state_dict, ...}) loads strictly
    _randomize_bn_stats(ref, seed=3)
    model.load_state_dict(ref.state_dict(), strict=True)
    other = create_model(name, num_classes=100)
    load_checkpoint(other, {"model": ref.state_dict(), "epoch": 240, "best_acc": 0.0})

    # float64 (tests/tolerances.py ref64): a check of the same function on any CPU's kernels
    ref.double().eval(), model.double().eval(), other.double().eval()
    x = _input().double()
    with torch.no_grad():
        ref_feats, ref_logits = ref(x, is_feat=True)
        with FeatureTap(model, model.feature_names) as tap:
            logits, feats = tap(x)
        torch.testing.assert_close(logits, ref_logits, **ref64(ref_logits))
        torch.testing.assert_close(other(x), ref_logits, **ref64(ref_logits))
        # multikd's stage taps are the reference's is_feat features (all but the pooled one)
        ref_stages = ref_feats[:-1]
        assert len(ref_stages) == len(model.feature_names)
        for n, f in zip(model.feature_names, ref_stages):
            torch.testing.assert_close(feats[n], f, **ref64(f))
        # MTKD-RL's feature loss reads feats[-2]: the last listed stage here
        torch.testing.assert_close(feats[model.feature_names[-1]], ref_feats[-2],
                                   **ref64(ref_feats[-2]))


@pytest.mark.parametrize("ref_name", ARCHS)
def test_stage_shapes_and_forward_head(ref_name):
    name, _ = REFERENCE[ref_name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    assert model.head_reads_last_stage is True
    names = [*model.feature_names, model.pooled_feature_name]
    with torch.no_grad(), FeatureTap(model, names) as tap:
        logits, feats = tap(torch.randn(1, 3, 32, 32))
        assert [tuple(feats[n].shape[1:]) for n in model.feature_names] == STAGE_SHAPES[ref_name]
        pooled = 1280 if ref_name == "MobileNetV2" else STAGE_SHAPES[ref_name][-1][0]
        assert feats[model.pooled_feature_name].shape == (1, pooled)
        assert logits.shape == (1, 100)
        assert torch.equal(model.forward_head(feats[model.feature_names[-1]]), logits)


def test_full_width_mobilenetv2_is_not_the_half_width_one():
    half, full = create_model("MobileNetV2"), create_model("MobileNetV2_full")
    assert sum(p.numel() for p in half.parameters()) == 812_836
    assert sum(p.numel() for p in full.parameters()) == 2_353_060
    assert half.state_dict().keys() == full.state_dict().keys()
    assert half.state_dict()["conv1.0.weight"].shape == (16, 3, 3, 3)
    assert full.state_dict()["conv1.0.weight"].shape == (32, 3, 3, 3)
    assert _mobilenetv2_params(0.5, 6, 100) == 812_836
    assert canonical_name("mobilenetv2") == "MobileNetV2"
    assert canonical_name("mobile_half") == "MobileNetV2"
    for alias in ("mobilenetv2_full", "mobilenetv2_mtkdrl", "MobileNetV2_w1"):
        assert canonical_name(alias) == "MobileNetV2_full"
    for alias in ("regnetx-200mf", "RegNetY-400MF", "regnetx_400mf", "WRN-28-4"):
        assert canonical_name(alias) in REFERENCE or canonical_name(alias) == "wrn_28_4"


def _macs_by_hooks(model: nn.Module) -> int:
    """Conv and linear MACs summed from each layer's output shape (an independent count)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return total


def test_costs_count_on_the_meta_device():
    # MACs of convolutions + linear layers per 32x32 image (multikd.models.cost, meta device)
    expected = {"RegNetX_200MF": 223_350_720, "RegNetX_400MF": 466_195_968,
                "RegNetY_400MF": 467_123_712, "wrn_28_4": 845_620_224,
                "MobileNetV2_full": 22_381_056}
    assert {n: model_cost(n, 100).macs for n in expected} == expected
    for name, macs in expected.items():
        assert _macs_by_hooks(create_model(name, num_classes=100)) == macs, name


@pytest.mark.slow
def test_models_list_shows_the_new_names():
    out = subprocess.run([sys.executable, "-m", "multikd", "models", "list"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name, params, macs in [("RegNetX_200MF", "2,355,156", "223M"),
                               ("RegNetX_400MF", "4,813,988", "466M"),
                               ("RegNetY_400MF", "5,749,012", "467M"),
                               ("wrn_28_4", "5,872,180", "846M"),
                               ("MobileNetV2_full", "2,353,060", "22.4M"),
                               ("MobileNetV2", "812,836", "6.52M")]:
        assert rows[name][1:3] == [params, macs], rows.get(name)
