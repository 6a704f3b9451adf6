"""Feature adapters: map the student's tapped feature to each teacher's feature shape.

One adapter per teacher, of a kind from the adapter registry (:data:`ADAPTER_REGISTRY`;
``@register_adapter("name", "one-line description")`` on a :class:`FeatureAdapter`
subclass whose ``__init__(in_shape, out_shape, **params)`` keyword parameters are its
parameters). The built-in kinds (``ADAPTER_KINDS``):

- ``conv1x1`` (multikd's default; FitNets' regressor, Romero et al. 2015, in its common
  1x1 form): resize, then 1x1 convolution (no bias; BN supplies it) + BatchNorm
  (+ ReLU with ``relu=True``);
- ``embed``: CA-MKD's ``Embed`` (Rorozhl/CA-MKD ``models/util.py`` ``Embed`` with
  ``convs=False``, applied by ``CalWeight.forward``): resize, then 1x1 convolution *with*
  bias + BatchNorm + ReLU;
- ``convreg``: FitNet's ``ConvReg`` of RepDistiller (HobbitLong/RepDistiller
  ``models/util.py`` ``ConvReg``, as extended in CA-MKD's copy), which changes the spatial
  size by the convolution itself, by the ratio of the student's height ``s_H`` to the
  teacher's ``t_H``: ``s_H == 2 t_H``: 3x3 conv, stride 2, padding 1; ``2 s_H == t_H``: 4x4
  transposed conv, stride 2, padding 1; ``s_H >= t_H``: a valid conv of kernel
  ``(1 + s_H - t_H, 1 + s_W - t_W)``; ``4 s_H == t_H``: bilinear upsampling to the
  teacher's size, then 3x3 conv, padding 1. Convs with bias, then BatchNorm + ReLU. Other
  ratios raise a :class:`~multikd.errors.ModelError` (RepDistiller raises too; CA-MKD's
  copy would build a 3x3 conv whose output does not match the teacher).

- ``mmkd``: MMKD's ``MatchFeature`` (Rorozhl/MMKD ``models/meta_util.py``): the same
  1x1 conv with bias + BN + ReLU as ``embed``, but a student map smaller than the teacher's
  is not enlarged: the teacher's map is average-pooled to the student's size instead
  (:meth:`FeatureAdapter.target`); a larger student map is pooled to the teacher's.

Resizing (``conv1x1``, ``embed``): when the student map is at least as large as the
teacher's in both dimensions it is shrunk by adaptive average pooling (an exact average
over the pixels of each output cell, e.g. 2x2 blocks for 8x8 -> 4x4); otherwise it is
enlarged by bilinear interpolation (``align_corners=False``), as CA-MKD's ``CalWeight``
does. (CA-MKD resizes the already resized map again for each further teacher; with
teachers of one resolution, its recipe, that is the same thing.)

Vector features (``(D,)``, e.g. pooled pre-classifier vectors ``[B,D]``) are adapted as
``(D,1,1)`` maps, i.e. by a linear map + BN. Shapes are per sample, without the batch
dimension; they come from one dry forward pass, so any student/teacher pair works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ModelError
from multikd.method.registry import Registry

Shape = tuple[int, ...]

ADAPTER_REGISTRY = Registry(
    "adapter kind", "adapter kinds", ModelError, skip=("in_shape", "out_shape")
)
"""The adapter registry: kind -> :class:`FeatureAdapter` class."""


def register_adapter(kind: str, description: str | None = None):
    """Class decorator: ``build_adapter(..., kind=kind)`` builds this
    :class:`FeatureAdapter` subclass (its ``kind`` attribute is set to ``kind``); a kind
    registered twice is a :class:`~multikd.errors.ModelError`."""

    def decorate(cls: type[FeatureAdapter]) -> type[FeatureAdapter]:
        ADAPTER_REGISTRY.add(kind, cls, description)
        cls.kind = kind
        return cls

    return decorate


@register_adapter(
    "conv1x1", "resize, 1x1 conv (no bias), BN, optional ReLU (FitNets' regressor, 1x1 form)"
)
class FeatureAdapter(nn.Module):
    """``[B, *in_shape] -> [B, *out_shape]`` for shapes ``(C,H,W)``, or ``(D,)`` on both
    sides: resize, 1x1 conv (no bias), BN, optional ReLU (kind ``conv1x1``)."""

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
        self.relu = relu
        self._build()

    def _build(self) -> None:
        self.conv = nn.Conv2d(self.in_shape[0], self.out_shape[0], kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(self.out_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ModelError(
                f"this adapter was built for student features {self.in_shape}, got "
                f"{tuple(x.shape[1:])}; build the distiller with an example input of the "
                "training image size"
            )
        vector = x.dim() == 2
        x = x[:, :, None, None] if vector else x
        x = self.bn(self._transform(x))
        if self.relu:
            x = F.relu(x)
        return x.flatten(1) if vector else x

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the BatchNorm: resize, then the 1x1 convolution."""
        return self.conv(_resize(x, tuple(self.out_shape[1:]) or (1, 1)))

    def target(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        """The teacher feature the adapted student feature is compared with (itself, except
        for the ``mmkd`` kind, which may pool it)."""
        return teacher_feature

    def extra_repr(self) -> str:
        return f"{self.kind}: {self.in_shape} -> {self.out_shape}, relu={self.relu}"


@register_adapter("embed", "resize, 1x1 conv with bias, BN, ReLU (CA-MKD's Embed)")
class EmbedAdapter(FeatureAdapter):
    """CA-MKD's ``Embed``: resize, 1x1 conv with bias, BN, ReLU (kind ``embed``)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__(in_shape, out_shape, relu=True)

    def _build(self) -> None:
        self.conv = nn.Conv2d(self.in_shape[0], self.out_shape[0], kernel_size=1, bias=True)
        self.bn = nn.BatchNorm2d(self.out_shape[0])


@register_adapter(
    "convreg", "a conv chosen by the size ratio, BN, ReLU (RepDistiller's FitNet ConvReg)"
)
class ConvRegAdapter(FeatureAdapter):
    """RepDistiller's FitNet ``ConvReg``: a convolution chosen by the size ratio, BN, ReLU
    (kind ``convreg``; the cases are in the module doc)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self._upsample = False
        super().__init__(in_shape, out_shape, relu=True)

    def _build(self) -> None:
        (s_c, *s_hw), (t_c, *t_hw) = self.in_shape, self.out_shape
        s_h, s_w = s_hw or (1, 1)
        t_h, t_w = t_hw or (1, 1)
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        elif 4 * s_h == t_h:
            self._upsample = True
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, padding=1)
        else:
            raise ModelError(
                f"the convreg adapter cannot map a student map of {s_h}x{s_w} to a teacher "
                f"map of {t_h}x{t_w} (RepDistiller's ConvReg handles a student twice, half or "
                "a quarter of the teacher's size, or larger in both sides); tap other stages "
                "or use loss.adapter conv1x1 / embed, which resize by interpolation"
            )
        self.bn = nn.BatchNorm2d(t_c)
        with torch.no_grad():
            out = self.conv(torch.zeros(1, s_c, *(self.out_shape[1:] if self._upsample
                                                  else (s_h, s_w))))
        if tuple(out.shape[2:]) != (t_h, t_w):
            raise ModelError(
                f"the convreg adapter maps a {s_h}x{s_w} student map to {tuple(out.shape[2:])}, "
                f"not the teacher's {t_h}x{t_w} (widths and heights scale differently); use "
                "loss.adapter conv1x1 or embed"
            )

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self._upsample:
            x = F.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        return self.conv(x)


@register_adapter(
    "mmkd", "as embed, but the larger map is pooled to the smaller (MMKD's MatchFeature)"
)
class MatchEmbedAdapter(EmbedAdapter):
    """MMKD's ``MatchFeature`` branch for one teacher (kind ``mmkd``, module doc)."""

    def _pools_teacher(self) -> bool:
        return len(self.in_shape) == 3 and self.in_shape[1] <= self.out_shape[1]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self._pools_teacher():
            return self.conv(x)
        return super()._transform(x)

    def target(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        if not self._pools_teacher() or teacher_feature.shape[-2:] == _map_size(self.in_shape):
            return teacher_feature
        return F.adaptive_avg_pool2d(teacher_feature, _map_size(self.in_shape))


def _map_size(shape: Shape) -> tuple[int, int]:
    """The ``(H, W)`` of a per-sample map shape ``(C, H, W)``."""
    return tuple(shape[1:3])


ADAPTER_KINDS = ADAPTER_REGISTRY.names()
"""The built-in adapter kinds (the registry holds every registered one)."""


def build_adapter(
    in_shape: Sequence[int], out_shape: Sequence[int], kind: str = "conv1x1", relu: bool = False
) -> FeatureAdapter:
    """One adapter of ``kind`` (a name of :data:`ADAPTER_REGISTRY`); ``relu`` goes to the
    kinds that take it, ``conv1x1`` only among the built-ins (``embed``, ``mmkd`` and
    ``convreg`` always end in ReLU, as their sources do)."""
    entry = ADAPTER_REGISTRY.entry(kind)
    params = {"relu": relu} if "relu" in entry.params else {}
    return entry.target(in_shape, out_shape, **params)


def build_adapters(
    student_shape: Sequence[int], teacher_shapes: Sequence[Sequence[int]], relu: bool = False,
    kind: str = "conv1x1",
) -> nn.ModuleList:
    """One adapter of ``kind`` per teacher, from the student's feature shape to each
    teacher's (in the ensemble's order)."""
    return nn.ModuleList(build_adapter(student_shape, t, kind, relu) for t in teacher_shapes)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _check_shape(shape: Sequence[int], side: str) -> Shape:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ModelError(
            f"{side} feature shape {shape} is not supported: adapters take feature maps "
            "(C,H,W) or vectors (D,) per sample; tap a stage output or the pooled feature"
        )
    return shape
