"""Unlabelled transfer sets: training images whose labels the student never sees.

``data.labeled_fraction: f`` keeps the labels of a fixed, class-balanced subset of
``round(f N)`` training images (chosen with the run's seed, by the same stratified draw as
the validation split) and replaces every other label by :data:`UNLABELED` before the
dataset is built, so nothing downstream (loaders, the batched pipeline, the teacher cache,
the losses) can read it. ``data.unlabeled_dir`` adds a folder of images, each resized to
32x32, as further unlabelled samples. The losses then skip :data:`UNLABELED` in the
cross-entropy (PyTorch's default ``ignore_index``), while distillation uses every image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multikd.data.splits import stratified_split
from multikd.errors import DataError

UNLABELED = -100
"""The label of an unlabelled training image (``torch.nn.functional.cross_entropy``'s
default ``ignore_index``: the CE of such a sample is 0 and it is left out of the mean)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def labeled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the ``round(fraction N)`` images that keep their label: every
    class ``k`` gets its share ``n_k round(fraction N) / N`` (rounded by largest remainder),
    drawn by ``numpy.random.default_rng(seed)``; all of them for ``fraction`` 1, none for 0."""
    labels = np.asarray(labels)
    n = len(labels)
    keep = int(round(float(fraction) * n))
    if keep >= n:
        return np.arange(n)
    if keep <= 0:
        return np.arange(0)
    _, chosen = stratified_split(labels, keep, seed)
    return chosen


def mask_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``labels`` with every entry outside ``keep`` set to :data:`UNLABELED` (a copy)."""
    out = np.full(len(labels), UNLABELED, dtype=np.int64)
    out[keep] = np.asarray(labels, dtype=np.int64)[keep]
    return out


def read_image_folder(path: str | Path) -> np.ndarray:
    """Every image under ``path`` (recursively, sorted by path) as uint8 ``[N,32,32,3]``
    RGB, resized (bilinear, antialiased by Pillow) where needed; a
    :class:`~multikd.errors.DataError` naming the folder when it is missing, empty or holds
    an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            f"data.unlabeled_dir {str(path)!r} is not a folder: give a folder of images "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"data.unlabeled_dir {str(path)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}); "
            "put the unlabelled images there or leave data.unlabeled_dir empty"
        )
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB")
                if image.size != (32, 32):
                    image = image.resize((32, 32), Image.Resampling.BILINEAR)
                images.append(np.asarray(image, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(
                f"data.unlabeled_dir: cannot read {file} as an image ({err}); remove or "
                "replace it"
            ) from err
    return np.stack(images)
