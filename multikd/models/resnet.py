"""CIFAR ResNets (He et al. 2016, section 4.2) as the knowledge-distillation literature uses them.

The variant of RepDistiller (Tian et al., "Contrastive Representation Distillation", ICLR
2020), reused unchanged by mdistiller, that the field's published CIFAR-100 teachers and
students were trained with. Parameter names, shapes and the forward pass match it, so those
checkpoints load as they are and give the same logits:

- stem: 3x3 conv (stride 1, no bias) -> BN -> ReLU, to ``widths[0]`` channels;
- three stages of ``n = (depth - 2) / 6`` basic blocks with ``widths[1..3]`` channels, the
  second and third starting with stride 2; a block computes
  ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` where the shortcut is the identity,
  or 1x1 conv (stride s, no bias) + BN (``downsample``) when the shape changes;
- 8x8 average pool, flatten, linear ``fc``.

``resnet8 .. resnet110`` use widths (16, 16, 32, 64); ``resnet8x4`` / ``resnet32x4`` use
(32, 64, 128, 256), so their first stage already has a ``downsample`` (32 -> 64 channels).
Stage features (the literature's f0..f3): stem, layer1, layer2, layer3 (each after its ReLU).
Pre-ReLU stage maps (``preact_feature_names``, mdistiller's ``preact_feats``): the stem, then
each stage's last block's ``preact`` (an ``nn.Identity`` on ``bn2(...) + shortcut``).
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.models.init import init_resnet_weights
from multikd.models.registry import register_model

NARROW = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        # the sum before the last ReLU, tappable by name (no state: the state dict is unchanged)
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)  # in place: no extra copy
        # not in place: a tap on ``preact`` keeps the pre-ReLU values (mdistiller's F.relu)
        return torch.relu(self.preact(out))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs; ``forward(x)`` returns logits [B, num_classes]."""

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int] = NARROW, num_classes: int = 100
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = _stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = _stage(widths[2], widths[3], blocks, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)

        self.feature_names = ["relu", "layer1", "layer2", "layer3"]
        self.pooled_feature_name = "flatten"
        # mdistiller's preact_feats and get_bn_before_relu (models/cifar/resnet.py)
        last = [f"layer{i}.{blocks - 1}" for i in (1, 2, 3)]
        self.preact_feature_names = ["relu"] + [f"{b}.preact" for b in last]
        self.preact_bn_names = [f"{b}.bn2" for b in last]
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.forward_head(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.fc(self.flatten(self.avgpool(feature)))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def build(num_classes: int = 100) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, stage widths {widths} (RepDistiller ``{name}``)."
    register_model(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, NARROW)
_register("resnet8x4", 8, WIDE)
_register("resnet32x4", 32, WIDE)
