"""Wide residual networks (Zagoruyko & Komodakis, BMVC 2016) for CIFAR, as KD papers use them.

The variant of RepDistiller (Tian et al., ICLR 2020), reused by mdistiller, with which the
field's published ``wrn_40_2`` / ``wrn_16_2`` ... checkpoints were trained. Parameter names,
shapes, the forward pass and the initialisation match it:

- stem ``conv1``: 3x3 conv, 16 channels, no BN or ReLU after it;
- three ``NetworkBlock`` stages (``block1..3``, module list ``layer``) of
  ``n = (depth - 4) / 6`` pre-activation blocks with ``16k, 32k, 64k`` channels (k the widen
  factor), stride 1, 2, 2. A block with equal in/out channels computes
  ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``; a block that changes the shape first
  pre-activates its input, ``a = relu(bn1(x))``, and returns
  ``convShortcut(a) + conv2(relu(bn2(conv1(a))))`` (the 1x1 shortcut sees the activated input);
- final ``bn1`` + ReLU, 8x8 average pool, flatten, linear ``fc``.

Stage features (f0..f3): the stem conv, block1, block2, and block3 after the final BN+ReLU.
Pre-ReLU stage maps (``preact_feature_names``, mdistiller's ``preact_feats``): the stem, then
block1 and block2 through the BN that pre-activates them (``block2.layer.0.bn1``,
``block3.layer.0.bn1``) and block3 through the final ``bn1``; the ReLUs after those BNs are
not in place, so a tap keeps the pre-ReLU values.

``wrn_28_4`` is MTKD-RL's teacher (winycg/MTKD-RL ``models/wrn.py``, whose ``WideResNet`` is
the same class as RepDistiller's, with dropout rate 0): 5.87M parameters, widths 64/128/256.
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.models.init import init_fan_out_normal
from multikd.models.registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, keep_preact: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        # keep_preact: bn1's output is a tapped pre-ReLU map (a stage's first block reads the
        # previous stage's), so its ReLU must not overwrite it in place
        self.relu1 = nn.ReLU(inplace=not keep_preact)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.convShortcut = None
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        out += x if self.convShortcut is None else self.convShortcut(act)  # in place, not on x
        return out


class NetworkBlock(nn.Module):
    """One stage: ``layer`` = ``n`` wide blocks, the first one changing stride/channels."""

    def __init__(self, blocks: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                               keep_preact=i == 0)
                for i in range(blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs; ``forward(x)`` returns logits.

    ``feature_names`` ends with ``relu`` (block3 after the final ``bn1`` + ReLU, what the
    head pools); ``repdistiller_feature_names`` ends with ``block3`` instead, the
    pre-activation map (values can be negative) that RepDistiller's ``models/wrn.py`` returns
    as f3 and its feature losses use.
    """

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()  # not in place: bn1's output is the last pre-ReLU map
        self.avgpool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)

        self.feature_names = ["conv1", "block1", "block2", "relu"]
        # RepDistiller's models/wrn.py takes its last feature f3 from block3, before the
        # final bn1 + ReLU (values can be negative): loss.taps repdistiller uses these
        self.repdistiller_feature_names = ["conv1", "block1", "block2", "block3"]
        self.pooled_feature_name = "flatten"
        # mdistiller's preact_feats (models/cifar/wrn.py): stage i's map through the BN that
        # pre-activates it, the next stage's first bn1 or the final bn1, which are also its
        # get_bn_before_relu
        self.preact_bn_names = ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
        self.preact_feature_names = ["conv1", *self.preact_bn_names]
        init_fan_out_normal(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.forward_head(self.relu(self.bn1(x)))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.fc(self.flatten(self.avgpool(feature)))


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    def build(num_classes: int = 100) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen_factor} (RepDistiller ``{name}``)."
    register_model(name, name.replace("_", "-"))(build)


for _depth, _k in ((16, 1), (16, 2), (28, 4), (40, 1), (40, 2)):
    _register(_depth, _k)
