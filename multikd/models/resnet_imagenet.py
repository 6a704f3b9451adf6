"""ResNet-50 with bottleneck blocks (He et al. 2016) in the CIFAR form KD papers use as a teacher.

The ImageNet-style architecture adapted to 32x32 inputs by RepDistiller (Tian et al., ICLR
2020, ``resnetv2.py``) and mdistiller; the published CIFAR-100 ``ResNet50`` teacher was
trained with it. Parameter names, shapes and the forward pass match it:

- stem: 3x3 conv (stride 1, 64 channels, no bias) -> BN -> ReLU; no max pool;
- four stages ``layer1..layer4`` of (3, 4, 6, 3) bottleneck blocks with 64, 128, 256, 512
  inner channels (x4 out), strides 1, 2, 2, 2; a block computes
  ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`` with 1x1 / 3x3
  (stride s) / 1x1 convs, and ``shortcut`` the identity or 1x1 conv (stride s) + BN;
- global average pool, flatten, linear ``linear`` (2048 -> num_classes).

Stage features (f0..f4): stem, layer1..layer4; on 32x32 inputs 64x32x32, 256x32x32,
512x16x16, 1024x8x8, 2048x4x4. Pre-ReLU stage maps (``preact_feature_names``, mdistiller's
``preact_feats``): the stem, then each stage's last block's ``preact`` (an ``nn.Identity`` on
``bn3(...) + shortcut``).
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.models.init import init_resnet_weights
from multikd.models.registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride s) -> 1x1 expand (x4), each with BN; add shortcut; ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        # the sum before the last ReLU, tappable by name (no state: the state dict is unchanged)
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)  # in place: no extra copy
        # not in place: a tap on ``preact`` keeps the pre-ReLU values (mdistiller's F.relu)
        return torch.relu(self.preact(out))


class CifarResNetBottleneck(nn.Module):
    """Bottleneck ResNet for 32x32 inputs; ``forward(x)`` returns logits [B, num_classes]."""

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        cin = 64
        stages = []
        for planes, count, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            layers = []
            for s in [stride] + [1] * (count - 1):
                layers.append(Bottleneck(cin, planes, s))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(cin, num_classes)

        self.feature_names = ["relu", "layer1", "layer2", "layer3", "layer4"]
        self.pooled_feature_name = "flatten"
        # mdistiller's preact_feats and get_bn_before_relu (models/cifar/resnetv2.py)
        last = [f"layer{i}.{count - 1}" for i, count in enumerate(blocks, start=1)]
        self.preact_feature_names = ["relu"] + [f"{b}.preact" for b in last]
        self.preact_bn_names = [f"{b}.bn3" for b in last]
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.forward_head(self.layer4(self.layer3(self.layer2(self.layer1(x)))))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.linear(self.flatten(self.avgpool(feature)))


@register_model("ResNet50", "resnet50")
def resnet50(num_classes: int = 100) -> CifarResNetBottleneck:
    """The field's CIFAR ResNet-50 teacher, bottleneck blocks (3, 4, 6, 3) (RepDistiller)."""
    return CifarResNetBottleneck((3, 4, 6, 3), num_classes=num_classes)
