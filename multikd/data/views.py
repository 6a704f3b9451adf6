"""The training augmentation as numbered *views*: zero-pad 4, crop 32x32, maybe flip.

There are ``NUM_VIEWS = 9 * 9 * 2`` views: ``view = (dy * 9 + dx) * 2 + flip`` with
``dy, dx`` in 0..8 the crop offset into the zero-padded 40x40 image (the field's CIFAR
recipe: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``). The view of a training
sample is a pure function of ``(seed, epoch, index)`` (:func:`view_of`), so the data stream
is the same across workers, processes and resumed runs, and a teacher-output cache can key
on ``(index, view)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4
CROP_OFFSETS = 2 * PAD + 1
NUM_VIEWS = CROP_OFFSETS * CROP_OFFSETS * 2
IDENTITY_VIEW = (PAD * CROP_OFFSETS + PAD) * 2  # centre crop, no flip: the image itself

_MASK64 = 0xFFFFFFFFFFFFFFFF


def view_params(view: int) -> tuple[int, int, bool]:
    """``(dy, dx, flip)`` of a view id: the crop offset into the padded image and the flip."""
    if not 0 <= view < NUM_VIEWS:
        raise ValueError(f"view must be in 0..{NUM_VIEWS - 1}, got {view}")
    offset, flip = divmod(int(view), 2)
    dy, dx = divmod(offset, CROP_OFFSETS)
    return dy, dx, bool(flip)


def apply_view(image: torch.Tensor, view: int) -> torch.Tensor:
    """``image`` [3,32,32] as the view sees it: ``pad(image, 4)[:, dy:dy+32, dx:dx+32]``,
    mirrored left-right if the view flips."""
    dy, dx, flip = view_params(view)
    out = F.pad(image, (PAD, PAD, PAD, PAD))[:, dy:dy + 32, dx:dx + 32]
    return out.flip(-1) if flip else out


def _mix64(*values: int) -> int:
    """A fixed 64-bit hash of integers (the splitmix64 finalizer applied after each value)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h


def view_of(seed: int, epoch: int, index: int) -> int:
    """The view of training sample ``index`` in ``epoch`` under ``seed``: ``hash mod 162``."""
    return _mix64(seed, epoch, index) % NUM_VIEWS


def views_of(seed: int, epoch: int, indices) -> np.ndarray:
    """:func:`view_of` of many sample indices at once (int64 array, same values): the hash
    of ``(seed, epoch)`` is shared, and the last round runs on uint64 arrays, whose
    arithmetic wraps modulo 2**64 like the masked Python integers."""
    indices = np.asarray(indices)
    if indices.size and indices.min() < 0:
        raise ValueError("sample indices must be >= 0")
    h = np.full(indices.shape, _mix64(seed, epoch), dtype=np.uint64)
    h = (h ^ indices.astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(NUM_VIEWS)).astype(np.int64)
