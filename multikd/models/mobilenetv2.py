"""MobileNetV2 for 32x32 inputs, as the CIFAR knowledge-distillation literature uses it.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, in the
CIFAR variant of RepDistiller (Tian et al., ICLR 2020) that mdistiller reuses. Two widths of
the same class are registered, and they are NOT interchangeable (the paper tables that say
just "MobileNetV2" mean either, and the two differ by several accuracy points):

- ``MobileNetV2`` (aliases ``mobilenetv2``, ``mobile_half``): RepDistiller's ``mobile_half``
  student, expansion 6, **width multiplier 0.5**, 812,836 parameters (100 classes), 6.5M
  MACs. The student of RepDistiller/CRD (64.6% top-1 alone on CIFAR-100 in CRD's table),
  mdistiller (DKD ...), and of multi-teacher code built on RepDistiller's, e.g. MMKD
  (Rorozhl/MMKD ``model_dict['MobileNetV2']`` is ``mobile_half``);
- ``MobileNetV2_full`` (aliases ``mobilenetv2_mtkdrl``, ``mobilenetv2_w1``): **width
  multiplier 1.0**, 2,353,060 parameters, 22.4M MACs; MTKD-RL's student (winycg/MTKD-RL
  ``model_dict['MobileNetV2']`` is ``mobilenet`` = ``mobilenetv2_T_w(6, 1)``, whose README
  reports 74.3-74.8% for it distilled), several points above what the half-width model
  reaches. Same module names; only the channel counts differ (stages f0..f4 have
  32, 24, 32, 96, 320 channels instead of 16, 12, 16, 48, 160; both pool 1280-d).

Parameter names, shapes, the forward pass and the initialisation match that implementation,
so the published CIFAR-100 checkpoints load unchanged and give the same logits:

- stem ``conv1`` = 3x3 conv (stride 2) + BN + ReLU, to ``int(32 * width)`` channels;
- seven stages of inverted residuals ``(t, c, n, s)``: (1,16,1,1), (t,24,2,1), (t,32,3,2),
  (t,64,4,2), (t,96,3,1), (t,160,3,2), (t,320,1,1), each block
  1x1 expand + BN + ReLU -> 3x3 depthwise (stride s) + BN + ReLU -> 1x1 project + BN
  (linear bottleneck), plus the identity when stride is 1 and channels are unchanged;
- ``conv2`` = 1x1 conv + BN + ReLU to 1280 channels, 2x2 average pool (ceil mode), linear.

Stage features (the literature's f0..f4): stem output and the outputs of stages 1, 2, 4, 6;
on a 32x32 input with width 0.5 they are 16x16x16, 12x16x16, 16x8x8, 48x4x4, 160x2x2, with
width 1.0 (``MobileNetV2_full``) 32x16x16, 24x16x16, 32x8x8, 96x4x4, 320x2x2. A stage
ends in a linear bottleneck, with no ReLU, so its pre-ReLU map (``preact_feature_names``) is
its output (mdistiller's MobileNetV2 returns no ``preact_feats``; its
``get_bn_before_relu`` names each stage's last projection BN, as ``preact_bn_names`` does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from multikd.models.init import init_fan_out_normal
from multikd.models.registry import register_model

# (expansion t, output channels c, blocks n, first stride s); t = None means "the model's t".
_STAGES = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
_FEATURE_STAGES = (1, 2, 4, 6)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2; ``forward(x)`` returns logits [B, num_classes].

    ``width_mult`` 0.5 is the registered ``MobileNetV2`` (RepDistiller's ``mobile_half``),
    1.0 the registered ``MobileNetV2_full`` (MTKD-RL's ``MobileNetV2``); see the module text.
    """

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expand_ratio: int = 6):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            cout = int(c * width_mult)
            layers = []
            expansion = expand_ratio if t is None else t
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, cout, stride, expansion))
                channels = cout
            self.blocks.append(nn.Sequential(*layers))
        last_channels = _round_up(int(1280 * width_mult), 8) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channels, 1, 1)
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))

        self.feature_names = ["conv1"] + [f"blocks.{i}" for i in _FEATURE_STAGES]
        self.pooled_feature_name = "flatten"
        # a stage ends in a linear bottleneck (no ReLU), so its output is its pre-ReLU map;
        # the BNs are mdistiller's get_bn_before_relu (models/cifar/mobilenetv2.py): each
        # stage's last block's last BN (the projection's)
        self.preact_feature_names = list(self.feature_names)
        self.preact_bn_names = [
            f"blocks.{i}.{len(self.blocks[i]) - 1}.conv.7" for i in _FEATURE_STAGES
        ]
        init_fan_out_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.forward_head(x)

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.classifier(self.flatten(self.avgpool(self.conv2(feature))))


def _round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


@register_model("MobileNetV2", "mobilenetv2", "mobile_half")
def mobilenetv2(
    num_classes: int = 100, width_mult: float = 0.5, expand_ratio: int = 6
) -> MobileNetV2:
    """The field's CIFAR student: expansion 6, width 0.5 (RepDistiller's ``mobile_half``,
    812,836 parameters). Not MTKD-RL's ``MobileNetV2``, which is full width: that one is
    ``MobileNetV2_full``."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, expand_ratio=expand_ratio)


@register_model("MobileNetV2_full", "mobilenetv2_mtkdrl", "mobilenetv2_w1")
def mobilenetv2_full(num_classes: int = 100, expand_ratio: int = 6) -> MobileNetV2:
    """Full-width MobileNetV2: expansion 6, width 1.0 (2,353,060 parameters), MTKD-RL's
    ``MobileNetV2`` student (winycg/MTKD-RL ``models/mobilenetv2.py`` ``mobilenet``).
    Not the half-width ``MobileNetV2`` (RepDistiller's ``mobile_half``) of CRD, mdistiller
    and MMKD; the two differ by several accuracy points."""
    return MobileNetV2(num_classes=num_classes, width_mult=1.0, expand_ratio=expand_ratio)
