"""Weight initializations of the original CIFAR zoo implementations, shared by the models
that used the same one (so a model trained from scratch starts where the original did)."""

from __future__ import annotations

import math

from torch import nn


def init_resnet_weights(model: nn.Module) -> None:
    """He-normal convs (fan-out), unit BN scale and zero shift: the original CIFAR ResNets'
    initialization (basic-block and bottleneck alike)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_fan_out_normal(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Convs ``N(0, 2 / (k*k*out))`` with zero bias, unit BN scale and zero shift, linear
    layers ``N(0, linear_std)`` with zero bias (``linear_std=None`` keeps PyTorch's default
    linear weights and only zeroes the bias): the init of the original VGG and MobileNetV2
    (``linear_std=0.01``) and WRN (``linear_std=None``)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
