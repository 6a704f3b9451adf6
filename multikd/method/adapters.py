"""Feature adapters: map the student's tapped feature to each teacher's feature shape.

One adapter per teacher (FitNets' regressor, Romero et al. 2015, in its common 1x1-conv
form): resize, then 1x1 convolution + BatchNorm (+ optional ReLU):

- spatial size: when the student map is at least as large as the teacher's in both
  dimensions it is shrunk by adaptive average pooling (an exact average over the pixels
  that fall in each output cell, e.g. 2x2 blocks for 8x8 -> 4x4); otherwise it is
  enlarged by bilinear interpolation (``align_corners=False``). Resizing first keeps the
  convolution at the teacher's resolution;
- channels: the 1x1 convolution (no bias; BN supplies it) maps C_s to C_t.

Vector features (``(D,)``, e.g. pooled pre-classifier vectors ``[B,D]``) are adapted the
same way as ``(D,1,1)`` maps, i.e. by a linear map + BN. Shapes are per sample, without
the batch dimension; they come from one dry forward pass, so any student/teacher pair works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ModelError

Shape = tuple[int, ...]


class FeatureAdapter(nn.Module):
    """``[B, *in_shape] -> [B, *out_shape]`` for shapes ``(C,H,W)``, or ``(D,)`` on both sides."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], relu: bool = False):
        super().__init__()
        self.in_shape = _check_shape(in_shape, "student")
        self.out_shape = _check_shape(out_shape, "teacher")
        if len(self.in_shape) != len(self.out_shape):
            raise ModelError(
                f"cannot adapt a student feature of shape {self.in_shape} to a teacher feature "
                f"of shape {self.out_shape}: tap features of the same kind on both sides "
                "(stage maps (C,H,W) for both, or pooled vectors (D,) for both)"
            )
        self.conv = nn.Conv2d(self.in_shape[0], self.out_shape[0], kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(self.out_shape[0])
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ModelError(
                f"this adapter was built for student features {self.in_shape}, got "
                f"{tuple(x.shape[1:])}; build the distiller with an example input of the "
                "training image size"
            )
        vector = x.dim() == 2
        if vector:
            x = x[:, :, None, None]
        else:
            x = self._resize(x, self.out_shape[1:])
        x = self.bn(self.conv(x))
        if self.relu:
            x = F.relu(x)
        return x.flatten(1) if vector else x

    @staticmethod
    def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == size:
            return x
        if h >= size[0] and w >= size[1]:
            return F.adaptive_avg_pool2d(x, size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"{self.in_shape} -> {self.out_shape}, relu={self.relu}"


def build_adapters(
    student_shape: Sequence[int], teacher_shapes: Sequence[Sequence[int]], relu: bool = False
) -> nn.ModuleList:
    """One :class:`FeatureAdapter` per teacher, from the student's feature shape to each
    teacher's (in the ensemble's order)."""
    return nn.ModuleList(FeatureAdapter(student_shape, t, relu=relu) for t in teacher_shapes)


def _check_shape(shape: Sequence[int], side: str) -> Shape:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ModelError(
            f"{side} feature shape {shape} is not supported: adapters take feature maps "
            "(C,H,W) or vectors (D,) per sample; tap a stage output or the pooled feature"
        )
    return shape
