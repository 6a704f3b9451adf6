"""Bridge to timm: any timm architecture as a multikd teacher or student.

``create_model("timm:<name>", num_classes=...)`` lands here. The model is built with
``pretrained=False`` always (multikd never downloads; load weights with ``checkpoint=``),
and is given the two attributes every zoo model has, so it taps the same way:

- ``feature_names``: timm's own stage description (``model.feature_info``: channels,
  reduction and module name per stage) turned into module names that a forward hook can
  read. Most timm models name real modules there and are used as is. Where a name is not a
  module of the classification model, or timm reads that stage as a module's input, or the
  module does not output a tensor (HRNet's multi-branch stages), the right module is found
  by building timm's ``features_only`` twin of the model with the same weights and matching
  its stage outputs, on a probe input, to the outputs of the model's own modules.
- ``pooled_feature_name``: a parameter-free ``nn.Flatten`` added as a submodule
  (``multikd_pooled``) and fed, through a forward-pre-hook on the classifier
  (``model.get_classifier()``), with the classifier's input, so its output is the pooled
  pre-logits vector [B, D]. The state_dict does not change.

Taps return NCHW maps for CNN stages and tokens [B, N, D] for ViT-style blocks. Models
that keep their maps channels-last (timm's ``output_fmt == "NHWC"``, e.g. Swin) list
their stages in ``nhwc_features`` too, and :class:`~multikd.models.taps.FeatureTap` hands
those out as NCHW views, so adapters and feature losses see channels first everywhere.
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import nn

from multikd.errors import ModelError

log = logging.getLogger(__name__)

POOLED_TAP = "multikd_pooled"
_PROBE_SIZE = 32


def create_timm_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build timm architecture ``name`` (never pretrained) with stage and pooled taps.

    ``kwargs`` go to ``timm.create_model`` (e.g. ``drop_rate``, ``img_size``).
    ``pretrained=True`` and ``features_only=True`` are refused: weights come from local
    checkpoints only, and ``model(x)`` must return logits.
    """
    import timm

    if kwargs.pop("pretrained", False):
        raise ModelError(
            f"timm:{name} was asked for pretrained=True, but multikd never downloads weights. "
            "Build it without pretrained and pass a local file with checkpoint=... instead."
        )
    if kwargs.get("features_only"):
        raise ModelError(
            "features_only=True is not supported: multikd models return logits; "
            "their stage features are tapped by name (model.feature_names)."
        )
    _check_known(name, timm)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ModelError(
            f"timm:{name} rejected the options {sorted(kwargs)}: {err}. "
            "Pass only keyword arguments that this timm architecture accepts."
        ) from err
    model.feature_names = _stage_feature_names(model, name, kwargs, timm)
    if getattr(model, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin keeps maps channels-last
        model.nhwc_features = tuple(model.feature_names)
    model.pooled_feature_name = _attach_pooled_tap(model, name)
    return model


def _check_known(name: str, timm) -> None:
    if name and timm.is_model(name):
        return
    arch = name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join('timm:' + c for c in close)}." if close else ""
    raise ModelError(
        f"unknown timm architecture {name!r}.{hint} "
        "See timm.list_models() for the names timm knows."
    )


def _stage_feature_names(model: nn.Module, name: str, kwargs: dict, timm) -> list[str]:
    """Hookable module names for the stages in ``model.feature_info``, in order."""
    info = list(getattr(model, "feature_info", None) or [])
    if not info:
        raise ModelError(
            f"timm:{name} describes no stages (no feature_info), so its features cannot be "
            "tapped; use it without feature distillation or pick another architecture."
        )
    modules = dict(model.named_modules())
    names = [entry["module"] for entry in info]
    if all(n in modules and not entry.get("hook_type") == "forward_pre"
           for n, entry in zip(names, info)):
        return names
    return _match_features_only(model, name, kwargs, info, timm)


def _match_features_only(model: nn.Module, name: str, kwargs: dict, info: list, timm) -> list[str]:
    """Find, for each stage of timm's ``features_only`` twin, the module that outputs it."""
    twin = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    missing, _unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise ModelError(
            f"timm:{name}: cannot align its features_only variant with the classifier "
            f"(parameters {missing[:5]} have no counterpart), so its stages cannot be located"
        )
    size = kwargs.get("img_size", _PROBE_SIZE)
    size = size if isinstance(size, (tuple, list)) else (size, size)
    probe = torch.randn(2, 3, *size[-2:], generator=torch.Generator().manual_seed(0))

    outputs: list[tuple[str, torch.Tensor]] = []
    handles = [
        module.register_forward_hook(_recorder(mod_name, outputs))
        for mod_name, module in model.named_modules() if mod_name
    ]
    was_training = model.training
    try:
        model.eval()
        twin.eval()
        with torch.no_grad():
            targets = twin(probe)
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    resolved = []
    for entry, target in zip(info, targets):
        found = _first_match(outputs, target)
        if found is None:
            log.warning(
                "timm:%s: no module outputs stage %r (%d channels, stride %d); it is left "
                "out of feature_names", name, entry["module"], entry["num_chs"], entry["reduction"],
            )
        else:
            resolved.append(found)
    if not resolved:
        raise ModelError(f"timm:{name}: none of its feature_info stages could be located")
    return resolved


def _recorder(mod_name: str, outputs: list):
    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            outputs.append((mod_name, output))

    return hook


def _first_match(outputs: list[tuple[str, torch.Tensor]], target: torch.Tensor) -> str | None:
    """The shallowest module (then the first to finish) whose output equals ``target``."""
    hits = [
        mod_name for mod_name, out in outputs
        if out.shape == target.shape and torch.allclose(out, target, rtol=1e-4, atol=1e-5)
    ]
    return min(hits, key=lambda n: n.count(".")) if hits else None


class _FeedPooledTap:
    """Forward-pre-hook on the classifier: run the tap module on the classifier's input."""

    def __init__(self, tap: nn.Module):
        self.tap = tap

    def __call__(self, _module, args):
        self.tap(args[0])


def _attach_pooled_tap(model: nn.Module, name: str) -> str:
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    if not isinstance(classifier, nn.Module):
        raise ModelError(f"timm:{name} has no classifier module to read the pooled feature from")
    if hasattr(model, POOLED_TAP):
        raise ModelError(f"timm:{name} already has a submodule named {POOLED_TAP!r}")
    tap = nn.Flatten(1)
    model.add_module(POOLED_TAP, tap)
    classifier.register_forward_pre_hook(_FeedPooledTap(tap))
    return POOLED_TAP
