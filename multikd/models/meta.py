"""Architecture facts without weights: build a model on the meta device and read it off.

``build_meta(name)`` constructs any registered (or ``timm:``) architecture on PyTorch's meta
device with random initialisation skipped, so no memory is allocated and nothing is filled;
``describe_architecture(name)`` uses it for the parameter count, the stage feature shapes
and the pooled feature size on a 32x32 input (a meta forward pass infers shapes only). The
whole zoo is surveyed in well under a second, which is what ``multikd models list`` and the
checkpoint loader's "this file probably holds ..." diagnosis need.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from multikd.models.registry import build_model
from multikd.models.taps import FeatureTap

_RANDOM_INITS = {
    "normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_",
    "xavier_normal_", "xavier_uniform_", "orthogonal_",
}


class _SkipRandomInit(TorchFunctionMode):
    """Turn random initialisers into no-ops (a meta tensor has no values to fill)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _RANDOM_INITS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def build_meta(name: str, num_classes: int = 100) -> nn.Module:
    """Architecture ``name`` on the meta device: shapes and structure, no weight values."""
    with torch.device("meta"), _SkipRandomInit():
        return build_model(name, num_classes=num_classes)


def describe_architecture(name: str, num_classes: int = 100, image_size: int = 32) -> dict:
    """``{name, params, stage_feature_shapes [(C, H, W)...], pooled_feature_dim}`` of ``name``.

    The keys mirror the reference facts file (``cifar_zoo.json``), so the two compare directly.
    """
    model = build_meta(name, num_classes).eval()
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    names = [*model.feature_names, model.pooled_feature_name]
    with torch.no_grad(), FeatureTap(model, names) as tap:
        _, feats = tap(x)
    return {
        "name": model.arch_name,
        "params": sum(p.numel() for p in model.parameters()),
        "stage_feature_shapes": [tuple(feats[n].shape[1:]) for n in model.feature_names],
        "pooled_feature_dim": feats[model.pooled_feature_name].shape[1],
    }
