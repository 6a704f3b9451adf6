"""ShuffleNetV2 (1x) for 32x32 inputs, as the CIFAR knowledge-distillation literature uses it.

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018, in the CIFAR variant of RepDistiller (Tian et al., ICLR 2020) that mdistiller
reuses (``ShuffleV2``: net size 1, widths 116/232/464, 3/7/3 basic blocks, 1024-d head).
Parameter names, shapes and the forward pass match that implementation:

- stem: 1x1 conv 3 -> 24 (stride 1, no pooling) + BN + ReLU;
- each stage opens with a down block (both branches stride 2, ``mid = out / 2``):
  left ``bn1(dw3x3/2(x))`` -> ``relu(bn2(conv1x1(.)))``; right ``relu(bn3(conv1x1(x)))`` ->
  ``bn4(dw3x3/2(.))`` -> ``relu(bn5(conv1x1(.)))``; concatenate [left, right], shuffle (2 groups);
- then basic blocks: split channels in half ``[x1, x2]``; ``x2`` goes through
  ``relu(bn1(conv1x1))`` -> ``bn2(dw3x3)`` -> ``relu(bn3(conv1x1))``; concatenate
  ``[x1, branch]``, shuffle (2 groups);
- head: ``relu(bn2(conv2 1x1 -> 1024))``, 4x4 average pool, flatten, linear.

Stage features (f0..f3): stem ReLU output, then each stage's output: 24x32x32, 116x16x16,
232x8x8, 464x4x4 on a 32x32 input. Pre-ReLU stage maps (``preact_feature_names``,
mdistiller's ``preact_feats``): the stem, then each stage's last block's ``preact``, the
concatenation ``[x1, bn3(...)]`` before its ReLU and before the shuffle (so the stage output
is ``shuffle(relu(preact))``).
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.errors import ModelError
from multikd.models.registry import register_model
from multikd.models.shufflenetv1 import ChannelShuffle

# net size -> (stage widths + head width, basic blocks per stage), RepDistiller's table.
_CONFIGS = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False):
    conv = nn.Conv2d(
        cin, cout, kernel, stride=stride, padding=kernel // 2,
        groups=cin if depthwise else 1, bias=False,
    )
    return conv, nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    """Split in half; transform the second half; concatenate; shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5, keep_preact: bool = False):
        super().__init__()
        self.split = int(channels * split_ratio)
        c = channels - self.split
        self.conv1, self.bn1 = _conv_bn(c, c, 1)
        self.conv2, self.bn2 = _conv_bn(c, c, 3, depthwise=True)
        self.conv3, self.bn3 = _conv_bn(c, c, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(2)
        self.keep_preact = keep_preact
        if keep_preact:  # a stage's last block: [x1, bn3(...)] before the ReLU, tappable
            self.preact = nn.Identity()  # (no state: the state dict is unchanged)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = self.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        if not self.keep_preact:
            out = self.relu(self.bn3(self.conv3(out)))
            return self.shuffle(torch.cat([x1, out], 1))
        pre = self.bn3(self.conv3(out))
        self.preact(torch.cat([x1, pre], 1))  # mdistiller's preact, for a tap (one more cat)
        # not in place: the tapped concatenation holds pre itself
        return self.shuffle(torch.cat([x1, torch.relu(pre)], 1))


class DownBlock(nn.Module):
    """Two stride-2 branches of ``out / 2`` channels each; concatenate; shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _conv_bn(cin, cin, 3, stride=2, depthwise=True)
        self.conv2, self.bn2 = _conv_bn(cin, mid, 1)
        self.conv3, self.bn3 = _conv_bn(cin, mid, 1)
        self.conv4, self.bn4 = _conv_bn(mid, mid, 3, stride=2, depthwise=True)
        self.conv5, self.bn5 = _conv_bn(mid, mid, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = self.relu(self.bn2(self.conv2(left)))
        right = self.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = self.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2; ``forward(x)`` returns logits [B, num_classes]."""

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(self, num_classes: int = 100, net_size: float = 1.0):
        super().__init__()
        if net_size not in _CONFIGS:
            raise ModelError(
                f"ShuffleV2 net_size must be one of {sorted(_CONFIGS)}, got {net_size!r}; "
                "the published CIFAR-100 teachers use 1.0"
            )
        widths, num_blocks = _CONFIGS[net_size]
        self.conv1, self.bn1 = _conv_bn(3, 24, 1)
        self.relu = nn.ReLU(inplace=True)
        cin = 24
        for i, (cout, n) in enumerate(zip(widths[:3], num_blocks), start=1):
            blocks = [DownBlock(cin, cout)] + [
                BasicBlock(cout, keep_preact=j == n - 1) for j in range(n)
            ]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.conv2, self.bn2 = _conv_bn(cin, widths[3], 1)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(4)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(widths[3], num_classes)

        self.feature_names = ["relu", "layer1", "layer2", "layer3"]
        self.pooled_feature_name = "flatten"
        # mdistiller's preact_feats (models/cifar/ShuffleNetv2.py): each stage's last block's
        # [x1, bn3(...)], before the ReLU and unshuffled. Half of it is not a BN's output:
        # mdistiller's get_bn_before_relu raises, so no OFD teacher (a student is fine)
        self.preact_feature_names = ["relu"] + [
            f"layer{i}.{n}.preact" for i, n in enumerate(num_blocks, start=1)
        ]
        self.preact_bn_names = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.forward_head(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        x = self.relu2(self.bn2(self.conv2(feature)))
        return self.linear(self.flatten(self.avgpool(x)))


@register_model("ShuffleV2", "shufflenetv2", "shufflev2")
def shufflev2(num_classes: int = 100, net_size: float = 1.0) -> ShuffleNetV2:
    """RepDistiller's ``ShuffleV2``: net size 1 (widths 116/232/464, blocks 3/7/3, head 1024)."""
    return ShuffleNetV2(num_classes=num_classes, net_size=net_size)
