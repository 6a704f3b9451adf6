"""Datasets: CIFAR-100/CIFAR-10 from a local folder, the synthetic CIFAR-like set, loaders.

Imports only ``errors`` and ``atomic`` from the package (never ``models`` or anything above).

Everything here works offline. CIFAR files are read from torchvision's layout under a data
root (``--data-root``, else ``$MULTIKD_DATA``, else ``./data``); only the explicit
``multikd data download`` (:mod:`.download`) touches the network.

- :mod:`.cifar`: the file layouts, :func:`load_cifar`, :func:`verify_checksums`;
- :mod:`.download`: streamed, resumable, checksummed downloads extracted into place
  atomically, and :func:`~multikd.data.download.download_cifar`;
- :mod:`.synthetic`: :func:`make_synthetic`, a seeded CIFAR-like problem with superclasses;
- :mod:`.writer`: :func:`write_fake_cifar`, synthetic images in the exact CIFAR file format;
- :mod:`.views`: the crop+flip augmentation as view ids, a pure function of
  (seed, epoch, index);
- :mod:`.datasets`: :func:`build_datasets` (train / stratified val / test), :func:`describe`;
- :mod:`.splits`: :func:`stratified_split`, the class-balanced draw of the val split and of a
  transfer set's labelled subset (:mod:`.transfer`);
- :mod:`.loaders`: :func:`build_loader`, reproducible to the bit;
- :mod:`.batches`: :class:`BatchedLoader`, the same batches made whole on the training
  device (the fast path).
"""

from multikd.data.batches import PIPELINES, BatchedLoader, PixelTable, augment_batch
from multikd.data.cifar import (
    CIFAR10_NAMES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_BY_COARSE,
    CIFAR100_FINE_NAMES,
    CIFAR_LAYOUTS,
    ChecksumReport,
    CifarLayout,
    cifar_layout,
    load_cifar,
    resolve_data_root,
    verify_checksums,
)
from multikd.data.datasets import (
    DATASETS,
    DataSplits,
    ImageDataset,
    build_datasets,
    dataset_names,
    describe,
)
from multikd.data.loaders import EpochShuffleSampler, build_loader
from multikd.data.splits import stratified_split
from multikd.data.synthetic import SYNTHETIC_DEFAULTS, SYNTHETIC_SIZES, make_synthetic
from multikd.data.views import (
    CROP_OFFSETS,
    IDENTITY_VIEW,
    NUM_VIEWS,
    PAD,
    apply_view,
    view_of,
    view_params,
    views_of,
)
from multikd.data.writer import write_fake_cifar

__all__ = [
    "BatchedLoader", "CIFAR100_COARSE_NAMES", "CIFAR100_FINE_BY_COARSE",
    "CIFAR100_FINE_NAMES", "CIFAR10_NAMES", "CIFAR_LAYOUTS", "CROP_OFFSETS", "ChecksumReport",
    "CifarLayout", "DATASETS", "DataSplits", "EpochShuffleSampler", "IDENTITY_VIEW",
    "ImageDataset", "NUM_VIEWS", "PAD", "PIPELINES", "PixelTable", "SYNTHETIC_DEFAULTS",
    "SYNTHETIC_SIZES", "apply_view", "augment_batch", "build_datasets", "build_loader",
    "cifar_layout", "dataset_names", "describe", "load_cifar", "make_synthetic",
    "resolve_data_root", "stratified_split", "verify_checksums", "view_of", "view_params",
    "views_of", "write_fake_cifar",
]
