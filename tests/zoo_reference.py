"""Helpers over the reference facts in tests/reference/ (see the README there)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
from torch import nn

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@functools.lru_cache(maxsize=None)
def zoo_facts() -> dict:
    """cifar_zoo.json: {arch: {params, state_dict [[key, shape]...], stage_feature_shapes, ...}}."""
    return json.loads((REFERENCE_DIR / "cifar_zoo.json").read_text())


@functools.lru_cache(maxsize=None)
def golden_logits() -> dict:
    """cifar_zoo_golden.json's {arch: logits [2][100]} (8 decimals)."""
    return json.loads((REFERENCE_DIR / "cifar_zoo_golden.json").read_text())["logits"]


def reference_shapes(arch: str) -> dict[str, tuple]:
    return {key: tuple(shape) for key, shape in zoo_facts()[arch]["state_dict"]}


def golden_input() -> torch.Tensor:
    """x[n] = sin(0.001 n), n = 0..6143, as (2, 3, 32, 32) float64."""
    return torch.sin(0.001 * torch.arange(6144, dtype=torch.float64)).view(2, 3, 32, 32)


def golden_fill(model: nn.Module) -> None:
    """Overwrite every state_dict entry in place with the README's deterministic fill."""
    state = model.state_dict()
    with torch.no_grad():
        for i, key in enumerate(sorted(state)):
            v = state[key]
            if not v.is_floating_point():
                v.zero_()
                continue
            s = torch.sin(0.37 * torch.arange(v.numel(), dtype=torch.float64) + i).view(v.shape)
            if v.dim() >= 2:
                v.copy_(s / math.sqrt(v[0].numel()))
            elif key.endswith("running_var"):
                v.copy_(1 + 0.5 * s * s)
            elif key.endswith("weight"):
                v.copy_(1 + 0.1 * s)
            else:
                v.copy_(0.1 * s)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier: the last nn.Linear registered in the model."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
