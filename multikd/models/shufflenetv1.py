"""ShuffleNet (v1) for 32x32 inputs, as the CIFAR knowledge-distillation literature uses it.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices", CVPR 2018, in the CIFAR variant of RepDistiller (Tian et al., ICLR 2020) that
mdistiller reuses (``ShuffleV1``: groups 3, stage widths 240/480/960, 4/8/4 blocks).
Parameter names, shapes and the forward pass match that implementation:

- stem: 1x1 conv 3 -> 24 (stride 1, no pooling) + BN + ReLU;
- bottleneck with ``mid = out / 4`` channels:
  ``relu(bn1(gconv1x1(x)))`` -> channel shuffle -> ``relu(bn2(dwconv3x3(.)))`` ->
  ``bn3(gconv1x1(.))``; the first 1x1 uses 1 group when its input is the 24-channel stem;
- the first block of each stage has stride 2, a 3x3/2 average-pooled shortcut
  (padding 1) and *concatenates* ``[out, shortcut]`` (so its branch produces
  ``out - in`` channels); the others add the identity; a ReLU follows both;
- 4x4 average pool, flatten, linear.

Stage features (f0..f3): stem ReLU output, then the output of each stage: 24x32x32,
240x16x16, 480x8x8, 960x4x4 on a 32x32 input. Pre-ReLU stage maps (``preact_feature_names``,
mdistiller's ``preact_feats``): the stem, then each stage's last unit's ``preact`` (an
``nn.Identity`` on the sum or concatenation before the ReLU).
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.models.registry import register_model


class ChannelShuffle(nn.Module):
    """Channel shuffle: [N, g*c, H, W] -> [N, g, c, H, W] -> [N, c, g, H, W] -> [N, g*c, H, W]."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class Bottleneck(nn.Module):
    """ShuffleNet unit; stride 2 concatenates an average-pooled shortcut, stride 1 adds x."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        first_groups = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))
        # the value before the last ReLU, tappable by name (no state: the state dict is unchanged)
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        out = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        # not in place: a tap on ``preact`` keeps the pre-ReLU values (mdistiller's F.relu)
        return torch.relu(self.preact(out))


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNet v1; ``forward(x)`` returns logits [B, num_classes]."""

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(
        self,
        num_classes: int = 100,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        cin = 24
        for i, (cout, n) in enumerate(zip(out_planes, num_blocks), start=1):
            blocks = []
            for j in range(n):
                # The downsampling block concatenates its input, so its branch adds cout - cin.
                branch_out = cout - cin if j == 0 else cout
                blocks.append(Bottleneck(cin, branch_out, stride=2 if j == 0 else 1, groups=groups))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(4)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(out_planes[-1], num_classes)

        self.feature_names = ["relu", "layer1", "layer2", "layer3"]
        self.pooled_feature_name = "flatten"
        # mdistiller's preact_feats (models/cifar/ShuffleNetv1.py): each stage's last unit
        # before its ReLU. No BN precedes that ReLU alone (a sum or a concatenation does):
        # mdistiller's get_bn_before_relu raises, so no OFD teacher (a student is fine)
        self.preact_feature_names = ["relu"] + [
            f"layer{i}.{n - 1}.preact" for i, n in enumerate(num_blocks, start=1)
        ]
        self.preact_bn_names = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.forward_head(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.linear(self.flatten(self.avgpool(feature)))


@register_model("ShuffleV1", "shufflenetv1", "shufflev1")
def shufflev1(num_classes: int = 100) -> ShuffleNetV1:
    """RepDistiller's ``ShuffleV1``: groups 3, widths 240/480/960, blocks 4/8/4."""
    return ShuffleNetV1(num_classes=num_classes)
