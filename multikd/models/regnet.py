"""RegNetX / RegNetY for 32x32 inputs, as MTKD-RL uses them (teachers and a student).

Radosavovic et al., "Designing Network Design Spaces", CVPR 2020, in the CIFAR variant of
winycg/MTKD-RL ``models/regnet.py`` (itself kuangliu/pytorch-cifar's ``regnet.py``), with
which MTKD-RL (Yang et al., "Multi-Teacher Knowledge Distillation with Reinforcement
Learning for Visual Recognition", AAAI 2025) trained its ``RegNetX_200MF`` student and its
``RegNetX_400MF`` / ``RegNetY_400MF`` teachers. Parameter names, shapes, the forward pass
and the initialisation (none of its own: PyTorch's defaults) match that file, so a
checkpoint of MTKD-RL's ``train_baseline.py`` (weights under ``'model'``) loads strictly:

- stem ``conv1``: 3x3 conv 3 -> 64 (stride 1, no bias) + ``bn1`` + ``relu``;
- four stages ``layer1..layer4`` (stride 1, 1, 2, 2) of ``depths[i]`` blocks of width
  ``widths[i]``; a block (``w_b = round(w_out * bottleneck_ratio)``, ``w_b / group_width``
  groups) computes ``relu(bn3(conv3(se(relu(bn2(conv2(relu(bn1(conv1(x)))))))) +
  shortcut(x))`` with 1x1 ``conv1``, grouped 3x3 ``conv2`` (carrying the stride), 1x1
  ``conv3``; ``shortcut`` is 1x1 conv (stride s) + BN when the shape changes, else the
  identity; ``se`` (RegNetY only) is ``x * sigmoid(se2(relu(se1(avgpool(x)))))`` with
  ``w_se = round(w_in * se_ratio)`` channels, ``w_in`` the *block input* width (as in pycls);
- global average pool, flatten, linear ``linear``.

Stage features (``feature_names``) are MTKD-RL's ``is_feat`` list f0..f3: the stem ReLU,
then ``layer2``, ``layer3``, ``layer4`` (MTKD-RL leaves ``layer1`` out, and so does this
list; tap ``layer1`` by name if wanted). On a 32x32 input: RegNetX_200MF 64x32x32, 56x32x32,
152x16x16, 368x8x8; the 400MF models 64x32x32, 64x32x32, 160x16x16, 384x8x8. Pre-ReLU
stage maps (``preact_feature_names``; MTKD-RL has none, so as mdistiller's ResNets): the stem,
then the last block's ``preact`` (an ``nn.Identity`` on ``bn3(...) + shortcut``) of each stage.

Not the paper's ImageNet networks: the stem is 64 channels at stride 1 and the first stage
keeps stride 1 (the paper: 32-channel stride-2 stem, every stage stride 2), so the "200MF" /
"400MF" of the names are ImageNet FLOPs, not these models' cost. ``RegNetY_400MF`` is
``RegNetX_400MF``'s configuration plus SE (depths 1, 2, 7, 12, widths 32, 64, 160, 384,
group width 16), not the paper's RegNetY-400MF (depths 1, 3, 6, 6, widths 48, 104, 208, 440,
group width 8); kept so, as MTKD-RL's teachers were trained with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multikd.models.registry import register_model

# MTKD-RL models/regnet.py RegNetX_200MF / RegNetX_400MF / RegNetY_400MF.
CONFIGS = {
    "RegNetX_200MF": {
        "depths": (1, 1, 4, 7),
        "widths": (24, 56, 152, 368),
        "strides": (1, 1, 2, 2),
        "group_width": 8,
        "bottleneck_ratio": 1,
        "se_ratio": 0,
    },
    "RegNetX_400MF": {
        "depths": (1, 2, 7, 12),
        "widths": (32, 64, 160, 384),
        "strides": (1, 1, 2, 2),
        "group_width": 16,
        "bottleneck_ratio": 1,
        "se_ratio": 0,
    },
    "RegNetY_400MF": {
        "depths": (1, 2, 7, 12),
        "widths": (32, 64, 160, 384),
        "strides": (1, 1, 2, 2),
        "group_width": 16,
        "bottleneck_ratio": 1,
        "se_ratio": 0.25,
    },
}


class SE(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(se2(relu(se1(global_avg(x)))))``."""

    def __init__(self, planes: int, se_planes: int):
        super().__init__()
        self.se1 = nn.Conv2d(planes, se_planes, kernel_size=1, bias=True)
        self.se2 = nn.Conv2d(se_planes, planes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(x, (1, 1))
        out = F.relu(self.se1(out))
        return x * self.se2(out).sigmoid()


class Block(nn.Module):
    """RegNet X/Y block: 1x1 - grouped 3x3 (stride) - [SE] - 1x1, plus shortcut, ReLU."""

    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int,
                 bottleneck_ratio: float, se_ratio: float):
        super().__init__()
        w_b = int(round(w_out * bottleneck_ratio))
        self.conv1 = nn.Conv2d(w_in, w_b, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w_b)
        self.conv2 = nn.Conv2d(w_b, w_b, kernel_size=3, stride=stride, padding=1,
                               groups=w_b // group_width, bias=False)
        self.bn2 = nn.BatchNorm2d(w_b)
        self.with_se = se_ratio > 0
        if self.with_se:
            self.se = SE(w_b, int(round(w_in * se_ratio)))  # from the block *input* width
        self.conv3 = nn.Conv2d(w_b, w_out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or w_in != w_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(w_in, w_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(w_out),
            )
        # the sum before the last ReLU, tappable by name (no state: the state dict is unchanged)
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        if self.with_se:
            out = self.se(out)
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return F.relu(self.preact(out))


class RegNet(nn.Module):
    """CIFAR RegNet of configuration ``cfg`` (see :data:`CONFIGS`); ``forward`` returns logits."""

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(self, cfg: dict, num_classes: int = 100):
        super().__init__()
        self.cfg = dict(cfg)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(0)
        self.layer2 = self._make_layer(1)
        self.layer3 = self._make_layer(2)
        self.layer4 = self._make_layer(3)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(self.cfg["widths"][-1], num_classes)

        # MTKD-RL's is_feat f0..f3 (layer1 is not among them there either)
        self.feature_names = ["relu", "layer2", "layer3", "layer4"]
        self.pooled_feature_name = "flatten"
        # the pre-ReLU maps of those stages, as mdistiller's ResNets give them (preact_feats,
        # get_bn_before_relu: the last block's sum before its ReLU, and that block's last BN)
        last = [f"layer{i}.{cfg['depths'][i - 1] - 1}" for i in (2, 3, 4)]
        self.preact_feature_names = ["relu"] + [f"{b}.preact" for b in last]
        self.preact_bn_names = [f"{b}.bn3" for b in last]
        # no init of its own: PyTorch's defaults, as MTKD-RL's RegNet

    def _make_layer(self, idx: int) -> nn.Sequential:
        cfg = self.cfg
        layers = []
        for i in range(cfg["depths"][idx]):
            layers.append(Block(
                self.in_planes, cfg["widths"][idx], cfg["strides"][idx] if i == 0 else 1,
                cfg["group_width"], cfg["bottleneck_ratio"], cfg["se_ratio"],
            ))
            self.in_planes = cfg["widths"][idx]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.forward_head(x)

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.linear(self.flatten(self.avgpool(feature)))


def _register(name: str) -> None:
    def build(num_classes: int = 100) -> RegNet:
        return RegNet(CONFIGS[name], num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = f"CIFAR {name} of MTKD-RL (winycg/MTKD-RL ``models/regnet.py``)."
    register_model(name, name.replace("_", "-"))(build)


for _name in CONFIGS:
    _register(_name)
