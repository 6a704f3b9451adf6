"""The one precision rule every loss computes in: float32 for half-precision (and
integer) input, so a loss is computed in float32 even under autocast (soft targets at high
T and small KL values lose their precision in half precision); float64 stays float64, so
the reference checks can run exactly. A leaf: it imports nothing of the package."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision (and integer) input, so a loss is computed in float32
    even under autocast; float64 stays float64 (exact reference checks)."""
    return x if x.dtype == torch.float64 else x.float()
