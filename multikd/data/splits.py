"""Class-balanced splits of a labelled set: the validation split (:mod:`.datasets`) and the
labelled subset of a transfer set (:mod:`.transfer`) are drawn by the same rule."""

from __future__ import annotations

import numpy as np

from multikd.errors import DataError


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays ``(train, val)`` with ``len(val) == val_size``.

    Class ``k`` with ``n_k`` of ``n`` samples gets ``floor(n_k * val_size / n)`` val samples,
    and the remaining ones go to the classes with the largest fractional parts; members are
    drawn by ``numpy.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < val_size < n:
        raise DataError(
            f"val_size must be between 1 and {n - 1} (the training set has {n} images), "
            f"got {val_size}"
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * val_size / n
    quota = np.floor(share).astype(int)
    for i in np.argsort(-(share - quota), kind="stable")[: val_size - quota.sum()]:
        quota[i] += 1
    val = [rng.permutation(np.flatnonzero(labels == cls))[:q] for cls, q in zip(classes, quota)]
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(n), val_idx), val_idx
