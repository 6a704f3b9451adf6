"""Feature taps: read intermediate outputs of any ``nn.Module`` by module name.

A tap registers a forward hook on each named module and, on every call, returns the
model's own output together with ``{name: tensor}`` of what those modules produced. The
model's ``forward`` is never rewritten, so zoo, timm and user models tap the same way::

    tap = FeatureTap(model, model.feature_names)
    logits, feats = tap(x)          # feats["layer3"] -> [B, C, H, W]
    tap.remove()                    # or use ``with FeatureTap(...) as tap:``

Tensors are kept as produced (autograd intact), so a loss on a tapped feature trains the
model that produced it. The one exception is layout: modules a model lists in its
``nhwc_features`` attribute (timm models that keep maps channels-last, e.g. Swin) produce
``[B, H, W, C]``, and the tap hands out the NCHW view ``permute(0, 3, 1, 2)`` of it, so
every tapped map is channels-first.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn

from multikd.errors import ModelError


class FeatureTap:
    """Capture the outputs of ``names`` (module paths as in ``model.named_modules()``)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.model = model
        self.names = list(dict.fromkeys(names))
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ModelError(_unknown_names_message(missing, list(modules)))
        self._nhwc = set(getattr(model, "nhwc_features", ())) & set(self.names)
        self._captured: dict[str, torch.Tensor] = {}
        self._handles = [
            modules[name].register_forward_hook(self._make_hook(name)) for name in self.names
        ]

    def _make_hook(self, name: str):
        channels_last = name in self._nhwc

        def hook(_module, _inputs, output):
            if channels_last and isinstance(output, torch.Tensor) and output.dim() == 4:
                output = output.permute(0, 3, 1, 2)
            self._captured[name] = output

        return hook

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self._handles:
            raise RuntimeError("this FeatureTap was removed; create a new one")
        self._captured = {}
        try:
            out = self.model(*args, **kwargs)
            feats = {name: self._captured[name] for name in self.names if name in self._captured}
        finally:
            self._captured = {}
        not_run = [n for n in self.names if n not in feats]
        if not_run:
            raise ModelError(
                f"modules {not_run} were tapped but did not run in the forward pass; "
                "tap modules that the model actually calls"
            )
        return out, feats

    def remove(self) -> None:
        """Detach every hook; the model behaves exactly as before the tap."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def dry_run(model: nn.Module, tap: FeatureTap | None, example: torch.Tensor):
    """``(output, {name: feature} or None)`` of ``model`` (through ``tap`` if given) on
    ``example`` in eval mode without gradients, its mode restored afterwards (no BatchNorm
    statistic changes): the shapes a module is built for."""
    was_training = model.training
    device = next(iter(model.parameters()), example).device
    model.eval()
    try:
        with torch.no_grad():
            if tap is not None:
                return tap(example.to(device))
            return model(example.to(device)), None
    finally:
        model.train(was_training)


def _unknown_names_message(missing: list[str], available: list[str]) -> str:
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f" (close matches: {', '.join(close)})" if close else ""
        parts.append(f"{name!r}{hint}")
    return (
        f"no module named {', '.join(parts)} in the model. Feature names are module paths "
        "as listed by model.named_modules(); zoo models list theirs in model.feature_names."
    )
