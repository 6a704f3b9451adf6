"""Model registry: one decorator to add an architecture, one function to build it.

Every registered builder takes ``num_classes`` (and optional keyword arguments) and returns
an ``nn.Module`` whose ``forward(x)`` returns logits only. Zoo models also carry
``feature_names`` (module names of the stage outputs, in order) and ``pooled_feature_name``
(module whose output is the pre-classifier vector), so features are tapped by name.

The CIFAR zoo's models also carry, for the feature losses that read pre-activations (OFD,
:mod:`multikd.method.feature_losses`):

- ``preact_feature_names``: as long as ``feature_names``, the modules whose outputs are each
  stage's map *before* its last ReLU (mdistiller's ``preact_feats``); the first entry is the
  stem, ``feature_names[0]``, as mdistiller's ``preact_feats[0] = f0``. Where that value was
  not a module's output (a residual sum, then a functional ReLU) the block has a
  parameter-free ``preact = nn.Identity()`` applied to it, so the state dict and the outputs
  are unchanged. No ReLU after such a module runs in place: a forward hook keeps the
  pre-ReLU values.
- ``preact_bn_names``: one per stage after the stem, the BatchNorm whose affine parameters
  set the distribution of that pre-ReLU map (mdistiller's ``get_bn_before_relu``; OFD's
  margins); None where mdistiller's raises (ShuffleNets: no BN alone precedes the ReLU).
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from multikd.errors import ModelError

ModelBuilder = Callable[..., nn.Module]

TIMM_PREFIX = "timm:"

_BUILDERS: dict[str, ModelBuilder] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *aliases: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(num_classes=..., **kw)`` under ``name`` (and lower-case aliases)."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        for alias in {name.lower(), *(a.lower() for a in aliases)}:
            _ALIASES[alias] = name
        return builder

    return decorate


def list_models() -> list[str]:
    """Canonical names of the zoo architectures (``timm:<name>`` works in addition)."""
    return sorted(_BUILDERS, key=str.lower)


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or an alias, in any letter case; a clear error
    listing valid names."""
    if name in _BUILDERS:
        return name
    if name.lower() in _ALIASES:
        return _ALIASES[name.lower()]
    matches = difflib.get_close_matches(name.lower(), sorted(_ALIASES), n=6)
    close = list(dict.fromkeys(_ALIASES[m] for m in matches))[:3]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(
        f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}, "
        "or 'timm:<name>' for any timm architecture."
    )


def build_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Architecture ``name`` (a zoo name or alias, or ``timm:<name>``) with fresh weights and
    ``arch_name`` set to its canonical name; :func:`multikd.models.create_model` adds the
    checkpoint. :func:`multikd.models.meta.build_meta` builds through this function, not
    ``create_model``, because the checkpoint loader uses ``build_meta`` (no import cycle)."""
    if name.startswith(TIMM_PREFIX):
        from multikd.models.timm_bridge import create_timm_model

        model = create_timm_model(name[len(TIMM_PREFIX):], num_classes=num_classes, **kwargs)
        model.arch_name = name
        return model
    arch = canonical_name(name)
    model = _BUILDERS[arch](num_classes=num_classes, **kwargs)
    model.arch_name = arch
    return model
