"""What a model costs: parameters, multiply-accumulates per image, inference images/s.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one 32x32 image on
the meta device (no memory, no weights): the convolutions and linear layers, as the field's
CIFAR tables count them (batch norm, activations and pooling are not counted; FLOPs = 2 x
MACs). Values for the zoo agree with the published ones, e.g. resnet8 12.5M, resnet32x4
1.08G, wrn_40_2 0.33G, vgg8 96M MACs per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch

from multikd.errors import ModelError


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int          # per image

    def text(self) -> str:
        return f"{human(self.params)} · {human(self.macs)} MACs"


def human(n: float) -> str:
    """``83892`` -> ``83.9k``, ``7433860`` -> ``7.43M``, ``1083040768`` -> ``1.08G``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{n:.0f}"


@lru_cache(maxsize=None)
def model_cost(arch: str, num_classes: int = 100, image_size: int = 32) -> ModelCost:
    """Parameters and MACs per image of zoo architecture ``arch`` (or ``timm:<name>``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from multikd.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(arch, num_classes=num_classes).eval()
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - a model that cannot live on the meta device
        raise ModelError(f"cannot count the cost of {arch}: {type(err).__name__}: {err}") from None
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(params, counter.get_total_flops() // 2)


def images_per_second(arch: str, num_classes: int = 100, batch_size: int = 256,
                      device: str = "cpu", min_time_s: float = 1.0) -> float:
    """Inference throughput of a freshly built ``arch`` (eval mode, no grad, fp32) on
    ``device``: batches of ``batch_size`` 32x32 images, after 2 warm-up batches, timed for
    at least ``min_time_s`` seconds (CUDA synchronised)."""
    from multikd.models import create_model

    dev = torch.device(device)
    model = create_model(arch, num_classes=num_classes).eval().to(dev)
    x = torch.randn(batch_size, 3, 32, 32, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        sync()
        count, t0 = 0, time.perf_counter()
        while True:
            model(x)
            count += 1
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time_s:
                return count * batch_size / elapsed
