"""The batched data pipeline: whole batches made on the training device.

The per-sample pipeline (:class:`~multikd.data.ImageDataset` behind a torch ``DataLoader``)
runs about eight small tensor operations per image on the host, then collates and copies.
On a GPU that host work, not the model, bounds a small student's epoch once the teachers'
outputs come from the cache. :class:`BatchedLoader` keeps the uint8 images and labels on
the device and makes each batch from a few operations on the whole batch:

1. gather the batch's images by index (uint8 ``[B,3,32,32]``);
2. :func:`augment_batch`: zero-pad by 4 and read each image's crop and flip through one
   gather whose row and column indices come from its view (:mod:`multikd.data.views`);
3. :class:`PixelTable`: normalize through a lookup table ``[3,256]`` computed on the host
   by exactly the per-sample formula ``(u / 255 - mean) / std``, so the result does not
   depend on how a device rounds the division.

The sampler's order and the views (``views_of(seed, epoch, indices)``) are computed on the
host once per epoch and copied to the device in one transfer; per batch nothing crosses.
The batches equal the per-sample pipeline's bit for bit, on any device
(``tests/test_data_batches.py``), so a run may switch pipelines, even on resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, Subset

from multikd.data.datasets import ImageDataset
from multikd.data.views import CROP_OFFSETS, IDENTITY_VIEW, PAD, views_of
from multikd.errors import DataError

PIPELINES = ("batched", "per-sample")


def augment_batch(images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """``images [B,C,H,W]`` as their ``views [B]`` see them: for each image, ``pad(image,
    PAD)[:, dy:dy+H, dx:dx+W]``, mirrored left-right if the view flips (the batch form of
    :func:`~multikd.data.views.apply_view`; any dtype, padding is 0). One gather over the
    flattened padded images reads every output pixel."""
    b, c, h, w = images.shape
    device = images.device
    views = views.to(device=device, dtype=torch.long)
    offset, flip = views.div(2, rounding_mode="floor"), views.remainder(2)
    dy, dx = offset.div(CROP_OFFSETS, rounding_mode="floor"), offset.remainder(CROP_OFFSETS)
    padded = F.pad(images, (PAD, PAD, PAD, PAD)).flatten(2)  # [B,C,(H+2P)*(W+2P)]
    rows = dy[:, None] + torch.arange(h, device=device)  # [B,H]
    across = torch.arange(w, device=device)
    cols = dx[:, None] + torch.where(flip[:, None].bool(), w - 1 - across, across)  # [B,W]
    source = rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]  # [B,H,W]
    return padded.gather(2, source.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


class PixelTable:
    """Normalization of uint8 pixels by table lookup: ``table[c, u] = (u / 255 - mean_c) /
    std_c`` in float32, computed on the host with the same operations as
    :class:`~multikd.data.ImageDataset`, then moved to ``device``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device):
        channels = mean.numel()
        levels = torch.arange(256, dtype=torch.uint8).float().div_(255)
        levels = levels.expand(channels, 256).reshape(channels, 256, 1)
        table = (levels - mean.view(channels, 1, 1)) / std.view(channels, 1, 1)
        self.table = table.flatten().to(device)  # [C*256], channel-major
        self._offset = (torch.arange(channels, dtype=torch.int32) * 256).view(1, channels, 1, 1)
        self._offset = self._offset.to(device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized float32 images from uint8 ``pixels [B,C,H,W]``."""
        where = (pixels.int() + self._offset).flatten()
        return self.table.index_select(0, where).view(pixels.shape)


def _base_and_positions(dataset):
    """The ImageDataset behind ``dataset`` and the map from ``dataset``'s positions to its
    indices (None when ``dataset`` is the ImageDataset itself)."""
    positions = None
    while isinstance(dataset, Subset):
        inner = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
        positions = inner if positions is None else inner[positions]
        dataset = dataset.dataset
    if not isinstance(dataset, ImageDataset):
        raise DataError(
            f"the batched pipeline works on multikd ImageDatasets, got {type(dataset).__name__}; "
            "use data.pipeline per-sample for other datasets"
        )
    return dataset, positions


class BatchedLoader:
    """Batches of ``dataset`` (an :class:`~multikd.data.ImageDataset` or a ``Subset`` of
    one) made on ``device``, in the order of ``sampler`` (positions in ``dataset``, e.g.
    :class:`~multikd.data.EpochShuffleSampler` or torch's ``DistributedSampler``).

    Yields what a ``DataLoader`` over the dataset yields, ``(images, labels)`` or, with the
    dataset's ``return_index``, ``(images, labels, indices, views)``; images and labels are
    already on ``device``, indices and views stay on the host (the teacher cache looks them
    up there). The dataset's epoch and ``sampler.set_epoch`` are read when iteration starts.
    """

    def __init__(self, dataset, batch_size: int, sampler: Sampler, device="cpu",
                 drop_last: bool = False):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.drop_last = drop_last
        self.device = torch.device(device)
        self._base, self._positions = _base_and_positions(dataset)
        self._images, self._labels = self._base.on_device(self.device)
        self._normalize = PixelTable(self._base.mean, self._base.std, self.device)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's sample indices and views, in the sampler's order, on the host."""
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        indices = order if self._positions is None else self._positions[order]
        base = self._base
        if base.augment:
            views = torch.from_numpy(views_of(base.seed, base.epoch, indices.numpy()))
        else:
            views = torch.full_like(indices, IDENTITY_VIEW)
        return indices, views

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)

    def __iter__(self):
        indices, views = self._epoch_plan()
        on_device = self._to_device(torch.stack([indices, views]))
        augment, with_index = self._base.augment, self._base.return_index
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            where, view = on_device[0, start:stop], on_device[1, start:stop]
            pixels = self._images[where]
            if augment:
                pixels = augment_batch(pixels, view)
            images, labels = self._normalize(pixels), self._labels[where]
            if with_index:
                yield images, labels, indices[start:stop], views[start:stop]
            else:
                yield images, labels
