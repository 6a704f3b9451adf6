"""MobileNetV2 for 32x32 inputs, as the CIFAR knowledge-distillation literature uses it.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, in the
CIFAR variant of RepDistiller (Tian et al., ICLR 2020) that mdistiller reuses: registered as
``MobileNetV2`` it is their ``mobile_half`` student (expansion 6, width multiplier 0.5).
Parameter names, shapes and the forward pass match that implementation, so the published
CIFAR-100 checkpoints load unchanged and give the same logits:

- stem ``conv1`` = 3x3 conv (stride 2) + BN + ReLU, to ``int(32 * width)`` channels;
- seven stages of inverted residuals ``(t, c, n, s)``: (1,16,1,1), (t,24,2,1), (t,32,3,2),
  (t,64,4,2), (t,96,3,1), (t,160,3,2), (t,320,1,1), each block
  1x1 expand + BN + ReLU -> 3x3 depthwise (stride s) + BN + ReLU -> 1x1 project + BN
  (linear bottleneck), plus the identity when stride is 1 and channels are unchanged;
- ``conv2`` = 1x1 conv + BN + ReLU to 1280 channels, 2x2 average pool (ceil mode), linear.

Stage features (the literature's f0..f4): stem output and the outputs of stages 1, 2, 4, 6;
on a 32x32 input with width 0.5 they are 16x16x16, 12x16x16, 16x8x8, 48x4x4, 160x2x2.
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
    """CIFAR MobileNetV2; ``forward(x)`` returns logits [B, num_classes]."""

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
    """The field's CIFAR student: expansion 6, width 0.5 (RepDistiller's ``mobile_half``)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, expand_ratio=expand_ratio)
