"""Datasets as tensors: normalized images, the augmented train split, the val split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from multikd.data.cifar import CIFAR_LAYOUTS, load_cifar, resolve_data_root
from multikd.data.splits import stratified_split
from multikd.data.synthetic import SYNTHETIC_DEFAULTS, make_synthetic
from multikd.data.transfer import UNLABELED, labeled_subset, mask_labels, read_image_folder
from multikd.data.views import IDENTITY_VIEW, apply_view, view_of
from multikd.errors import DataError

DATASETS = ("cifar100", "cifar10", "synthetic")

log = logging.getLogger(__name__)


def dataset_names() -> tuple[str, ...]:
    return DATASETS


class ImageDataset(Dataset):
    """In-memory uint8 images [N,32,32,3] with labels; yields ``(image float32 [3,32,32],
    label int)``, or ``(image, label, index, view)`` with ``return_index``.

    ``image = (apply_view(pixels / 255, view) - mean) / std``; with ``augment`` the view is
    ``view_of(seed, epoch, index)`` (padding is black, as torchvision's RandomCrop on PIL
    images), otherwise the identity. The epoch lives in shared memory once
    :meth:`share_epoch` was called, so persistent loader workers follow ``set_epoch``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, *,
                 augment: bool = False, seed: int = 0, return_index: bool = False):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment
        self.seed = int(seed)
        self.return_index = return_index
        self._epoch = torch.zeros((), dtype=torch.int64)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def share_epoch(self) -> None:
        """Keep the epoch in shared memory (for worker processes that outlive an epoch)."""
        self._epoch.share_memory_()

    def on_device(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uint8 images [N,3,32,32], labels [N])`` on ``device``, copied once per device
        and shared by every loader over this dataset (the runs of a lockstep group share
        their splits, so they hold one copy, not one per run)."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = (self.images.to(device), self.labels.to(device))
        return self._on_device[device]

    def __getstate__(self) -> dict:
        """Pickled for loader worker processes without the device copies."""
        return {**self.__dict__, "_on_device": {}}

    def view(self, index: int) -> int:
        """The augmentation view of sample ``index`` this epoch (identity when not augmenting)."""
        if not self.augment:
            return IDENTITY_VIEW
        return view_of(self.seed, self.epoch, index)

    def __getitem__(self, index: int):
        view = self.view(index)
        image = self.images[index].float().div_(255)
        if self.augment:
            image = apply_view(image, view)
        image = (image - self.mean) / self.std
        label = int(self.labels[index])
        if self.return_index:
            return image, label, int(index), view
        return image, label


@dataclass
class DataSplits:
    """What ``build_datasets`` returns; ``val`` is None without a validation split."""

    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset
    num_classes: int
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _synthetic_arrays(options: dict | None):
    unknown = set(options or {}) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise DataError(
            f"unknown synthetic options {sorted(unknown)}; valid: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    options = {**SYNTHETIC_DEFAULTS, **(options or {})}
    images = options["train_size"] + options["test_size"]
    log.info("synthetic data: generating %d train + %d test images of %d classes%s",
             options["train_size"], options["test_size"], options["num_classes"],
             " (about half a minute on a 2-core CPU; --synthetic tiny for a first try)"
             if images >= 50000 else "")
    tr_x, tr_y, te_x, te_y, names, _ = make_synthetic(**options)
    return tr_x, tr_y, te_x, te_y, names


def _restrict(tr_x, tr_y, te_x, te_y, names, classes):
    """Only the images of ``classes``, labels renumbered by their position in it."""
    bad = [c for c in classes if not 0 <= c < len(names)]
    if bad:
        raise DataError(
            f"data.classes {bad} lie outside the dataset's label space 0..{len(names) - 1} "
            f"({len(names)} classes); give indices in that range"
        )
    lookup = np.full(len(names), -1, dtype=np.int64)
    lookup[np.asarray(classes)] = np.arange(len(classes))
    tr_y, te_y = lookup[np.asarray(tr_y)], lookup[np.asarray(te_y)]
    tr_keep, te_keep = tr_y >= 0, te_y >= 0
    return (tr_x[tr_keep], tr_y[tr_keep], te_x[te_keep], te_y[te_keep],
            [names[c] for c in classes])


def build_datasets(name: str, data_root=None, val_size: int = 0, seed: int = 0,
                   synthetic: dict | None = None, return_index: bool = False,
                   labeled_fraction: float = 1.0, unlabeled_dir: str | None = None,
                   classes: list[int] | None = None) -> DataSplits:
    """Train (augmented, views seeded by ``seed``), optional val (``val_size`` images carved
    from train, stratified by class, chosen by ``seed``), and the untouched test split.

    ``classes`` keeps the images of those classes only, in train and test, relabelled
    ``0..m-1`` in the given order (a teacher of part of the label space).
    ``labeled_fraction`` < 1 keeps the labels of a class-balanced subset of the training
    images only (the others get :data:`~multikd.data.transfer.UNLABELED`), and
    ``unlabeled_dir`` appends a folder of unlabelled images (:mod:`multikd.data.transfer`).

    ``synthetic``: options of :func:`make_synthetic` (``name="synthetic"`` only). Val and test
    use the test transform (normalize only). The synthetic set uses CIFAR-100's constants.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "synthetic":
        tr_x, tr_y, te_x, te_y, names = _synthetic_arrays(synthetic)
        mean, std = CIFAR_LAYOUTS["cifar100"].mean, CIFAR_LAYOUTS["cifar100"].std
    else:
        if synthetic:
            raise DataError(f"synthetic options only apply to --dataset synthetic, not {name}")
        tr_x, tr_y, names, _ = load_cifar(name, data_root, "train")
        te_x, te_y, _, _ = load_cifar(name, data_root, "test")
        mean, std = CIFAR_LAYOUTS[name].mean, CIFAR_LAYOUTS[name].std
    if classes is not None:
        tr_x, tr_y, te_x, te_y, names = _restrict(tr_x, tr_y, te_x, te_y, names, classes)
    val = None
    if val_size:
        train_idx, val_idx = stratified_split(tr_y, val_size, seed)
        val = ImageDataset(tr_x[val_idx], tr_y[val_idx], mean, std)
        tr_x, tr_y = tr_x[train_idx], tr_y[train_idx]
    if labeled_fraction < 1.0:
        tr_y = mask_labels(tr_y, labeled_subset(tr_y, labeled_fraction, seed))
    if unlabeled_dir:
        extra = read_image_folder(unlabeled_dir)
        tr_x = np.concatenate([tr_x, extra])
        tr_y = np.concatenate([np.asarray(tr_y, dtype=np.int64),
                               np.full(len(extra), UNLABELED, dtype=np.int64)])
    return DataSplits(
        train=ImageDataset(tr_x, tr_y, mean, std, augment=True, seed=seed,
                           return_index=return_index),
        val=val,
        test=ImageDataset(te_x, te_y, mean, std),
        num_classes=len(names),
        class_names=list(names),
        mean=mean,
        std=std,
    )


def describe(name: str, data_root=None, val_size: int = 0, synthetic: dict | None = None) -> str:
    """Split sizes, class count and per-channel mean/std of the training images (in [0, 1])."""
    splits = build_datasets(name, data_root=data_root, val_size=val_size, synthetic=synthetic)
    mean = torch.zeros(3, dtype=torch.float64)
    square = torch.zeros(3, dtype=torch.float64)
    for chunk in splits.train.images.split(8192):
        pixels = chunk.double().div_(255)
        mean += pixels.sum(dim=(0, 2, 3))
        square += pixels.square().sum(dim=(0, 2, 3))
    count = splits.train.images[:, 0].numel()
    mean /= count
    std = (square / count - mean.square()).clamp(min=0).sqrt()
    where = "" if name == "synthetic" else f" in {resolve_data_root(data_root)}"
    sizes = f"  train {len(splits.train)}"
    if splits.val is not None:
        sizes += f"  val {len(splits.val)}"
    return "\n".join([
        f"{name}{where}",
        sizes + f"  test {len(splits.test)}",
        f"  classes {splits.num_classes} (first: {', '.join(splits.class_names[:5])})",
        "  train mean " + " ".join(f"{m:.4f}" for m in mean.tolist()),
        "  train std  " + " ".join(f"{s:.4f}" for s in std.tolist()),
    ])
