"""CIFAR model zoo (state-dict compatible with the field's published teachers) + timm bridge.

``create_model(name, num_classes=100, checkpoint=None, **kw)`` is the one entry point;
``list_models()`` shows the zoo. ``timm:<name>`` builds any timm architecture (never
downloading pretrained weights). :class:`~multikd.models.taps.FeatureTap` reads any module's
stage outputs by name. Imports only ``errors`` and ``atomic`` (never ``data`` or above).
"""

from __future__ import annotations

from torch import nn

# Importing the zoo modules registers their architectures.
from multikd.models import (  # noqa: F401
    mobilenetv2,
    regnet,
    resnet,
    resnet_imagenet,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from multikd.models.registry import (
    TIMM_PREFIX, build_model, canonical_name, list_models, register_model,
)


def create_model(name: str, num_classes: int = 100, checkpoint=None, **kwargs) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs; load ``checkpoint`` if given."""
    model = build_model(name, num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        from multikd.models.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, arch=model.arch_name)
    return model


__all__ = ["create_model", "list_models", "register_model", "canonical_name"]
