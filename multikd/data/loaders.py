"""Reproducible data loaders: same seed and epoch, same batches, bit for bit."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from multikd.data.batches import PIPELINES, BatchedLoader
from multikd.errors import DataError


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with ``torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))``.

    This is the order torch's ``DistributedSampler(seed=seed, shuffle=True)`` gives on one
    replica, so single- and multi-process runs see the same global order. ``set_epoch`` also
    moves the dataset's augmentation to that epoch. Without ``shuffle``: 0, 1, ..., n-1.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True):
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(n, generator=gen).tolist())


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def build_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0,
                 workers: int = 0, device: str = "cpu", drop_last: bool = False,
                 pipeline: str = "per-sample", sampler: Sampler | None = None):
    """A loader whose batches depend only on (dataset, seed, epoch), never on global RNG.

    ``train``: shuffled by :class:`EpochShuffleSampler` (call ``loader.sampler.set_epoch(e)``
    before each epoch); otherwise sequential. A training batch larger than the training set
    is an error (no step could be full); evaluation batches may exceed a small split.
    ``pin_memory`` only for CUDA devices. With ``workers > 0`` the workers persist across
    epochs and follow ``set_epoch`` through the dataset's shared-memory epoch. The loader's
    own generator seeds the workers, so iterating never draws from torch's global RNG.

    ``pipeline``: ``"per-sample"``, a torch ``DataLoader`` (host tensors, ``workers``
    processes), or ``"batched"``, a :class:`~multikd.data.batches.BatchedLoader` that
    makes whole batches on ``device`` (the same batches, bit for bit; ``workers`` unused).
    ``sampler`` replaces the default :class:`EpochShuffleSampler` (e.g. torch's
    ``DistributedSampler``).
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if train and batch_size > len(dataset):
        raise DataError(
            f"batch size {batch_size} is larger than the training set ({len(dataset)} "
            "images); lower --batch-size"
        )
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    if pipeline not in PIPELINES:
        raise DataError(f"unknown data pipeline {pipeline!r}; valid: {', '.join(PIPELINES)}")
    if sampler is None:
        sampler = EpochShuffleSampler(dataset, seed, shuffle=train)
    if pipeline == "batched":
        return BatchedLoader(dataset, batch_size, sampler, device, drop_last=drop_last)
    if workers > 0 and hasattr(_base_dataset(dataset), "share_epoch"):
        _base_dataset(dataset).share_epoch()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=str(device).startswith("cuda"),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(int(seed)),
    )
