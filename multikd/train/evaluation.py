"""Evaluating a model: top-1 and CE over a loader without a host read, a saved checkpoint's
test accuracy, the batch's move to the device and the autocast a run uses (the engine's
helpers, which :mod:`multikd.train.engine` re-exports)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from multikd.train.build import pick_device


def accuracy_text(value: float, digits: int = 2, unit: str = "%") -> str:
    """``12.34%``, or ``n/a`` for an accuracy over no image (training accuracy counts the
    labelled images only: none with ``data.labeled_fraction`` 0)."""
    return f"{value:.{digits}f}{unit}" if math.isfinite(value) else "n/a"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU, fp16 on CUDA; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """``[correct, count, summed CE]`` of ``model`` over ``loader``, on ``device`` (no sync)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = to_device(x, y, device, channels_last)
        with autocast(device, amp):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        totals[0] += (logits.argmax(dim=1) == y).sum()
        totals[1] += y.numel()
        totals[2] += loss
    model.train(was_training)
    return totals


def evaluate_checkpoint(
    arch: str,
    checkpoint: str,
    dataset: str,
    data_root: str | None = None,
    val_size: int = 0,
    synthetic: dict | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    classes: list[int] | None = None,
) -> dict:
    """Top-1 accuracy (%) and mean CE of a saved model on the test (and val) split; a model
    of part of the classes (``classes``, default: what its run recorded, see
    :func:`~multikd.train.config.recorded_classes`) on the images of those classes."""
    from multikd import data
    from multikd.models import create_model
    from multikd.train.config import recorded_classes

    dev = pick_device(device)
    splits = data.build_datasets(
        dataset, data_root=data_root, val_size=val_size, seed=seed,
        synthetic=synthetic if dataset == "synthetic" else None,
        classes=classes if classes is not None else recorded_classes(checkpoint),
    )
    model = create_model(arch, num_classes=splits.num_classes, checkpoint=checkpoint).to(dev)
    result = {"arch": model.arch_name, "checkpoint": str(checkpoint), "dataset": dataset}
    named = [("test", splits.test)] + ([("val", splits.val)] if splits.val is not None else [])
    for name, split in named:
        batch = min(batch_size, len(split))
        loader = data.build_loader(split, batch, train=False, seed=seed, device=str(dev),
                                   pipeline="batched")
        correct, count, loss = evaluate(model, loader, dev).tolist()
        result[f"{name}_acc"] = 100.0 * correct / count
        result[f"{name}_loss"] = loss / count
    return result


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool = False):
    """A batch on ``device`` (non-blocking copies; NHWC images with ``channels_last``)."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)
