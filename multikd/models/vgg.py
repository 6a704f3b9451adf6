"""VGG with batch norm (Simonyan & Zisserman, ICLR 2015) for CIFAR, as the KD literature uses it.

The variant of RepDistiller (Tian et al., ICLR 2020), reused by mdistiller, that the field's
published ``vgg13`` / ``vgg8`` ... checkpoints were trained with. Parameter names, shapes and
the forward pass match it:

- five blocks ``block0..block4``; each is a sequence of 3x3 convs (padding 1, with bias),
  each conv followed by BN and ReLU (module indices conv ``3i``, BN ``3i+1``, ReLU ``3i+2``);
- 2x2 max pools after blocks 0, 1 and 2 only (the original pools after block 3 only for
  64x64 inputs), so block 4 runs at 4x4 on 32x32 inputs;
- global average pool, flatten, linear ``classifier`` (512 -> num_classes).

The original strips each block's last ReLU and applies it functionally after the block; here
the ReLU stays the block's last module (no parameters, so the state dict is unchanged) and a
block's output is the literature's feature f_i: tapping ``block0..block4`` gives them. The
pre-ReLU maps (``preact_feature_names``, mdistiller's ``preact_feats``) are the outputs of each
block's last BN, whose ReLU is therefore not in place.

Convs per block: vgg8 (1,1,1,1,1), vgg11 (1,1,2,2,2), vgg13 (2,2,2,2,2),
vgg16 (2,2,3,3,3), vgg19 (2,2,4,4,4); widths 64, 128, 256, 512, 512.
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.models.init import init_fan_out_normal
from multikd.models.registry import register_model

WIDTHS = (64, 128, 256, 512, 512)
DEPTHS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            # the last BN's output is the block's pre-ReLU map: not overwritten in place
            nn.ReLU(inplace=i < convs - 1),
        ]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """CIFAR VGG-BN; ``forward(x)`` returns logits [B, num_classes]."""

    head_reads_last_stage = True  # forward_head(output of feature_names[-1])

    def __init__(self, depths: tuple[int, ...], num_classes: int = 100):
        super().__init__()
        cins = (3,) + WIDTHS[:-1]
        self.block0 = _block(cins[0], WIDTHS[0], depths[0])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.block1 = _block(cins[1], WIDTHS[1], depths[1])
        self.pool1 = nn.MaxPool2d(2, 2)
        self.block2 = _block(cins[2], WIDTHS[2], depths[2])
        self.pool2 = nn.MaxPool2d(2, 2)
        self.block3 = _block(cins[3], WIDTHS[3], depths[3])
        self.block4 = _block(cins[4], WIDTHS[4], depths[4])
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(WIDTHS[4], num_classes)

        self.feature_names = [f"block{i}" for i in range(5)]
        self.pooled_feature_name = "flatten"
        # mdistiller's preact_feats and get_bn_before_relu (models/cifar/vgg.py): each block's
        # last BN, whose ReLU the original applies after the block
        self.preact_bn_names = [f"block{i}.{3 * depths[i] - 2}" for i in range(1, 5)]
        self.preact_feature_names = ["block0", *self.preact_bn_names]
        init_fan_out_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        return self.forward_head(self.block4(self.block3(x)))

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``feature_names[-1]`` (the rest of :meth:`forward`):
        CA-MKD's teacher-head feature weights run a teacher's own head on an adapted student
        feature (Rorozhl/CA-MKD ``models/util.py`` ``CalWeight.forward``)."""
        return self.classifier(self.flatten(self.pool4(feature)))


def _register(name: str) -> None:
    depths = DEPTHS[name]

    def build(num_classes: int = 100) -> VGG:
        return VGG(depths, num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = (
        f"CIFAR {name.upper()} with batch norm, convs per block {depths} "
        f"(RepDistiller ``{name}_bn``)."
    )
    register_model(name, f"{name}_bn")(build)


for _name in DEPTHS:
    _register(_name)
