"""A procedurally generated CIFAR-like classification problem, fully determined by a seed."""

from __future__ import annotations

import numpy as np
import torch

from multikd.errors import DataError

SYNTHETIC_DEFAULTS = dict(num_classes=100, num_superclasses=20, train_size=50000,
                          test_size=10000, seed=0, noise=0.45, class_strength=0.7)

SYNTHETIC_SIZES = {
    "tiny": dict(num_classes=10, num_superclasses=5, train_size=2000, test_size=500),
    "small": dict(num_classes=20, num_superclasses=5, train_size=10000, test_size=2000),
    "cifar": dict(num_classes=100, num_superclasses=20, train_size=50000, test_size=10000),
}
"""Named sizes of the synthetic set (the CLI's ``--synthetic tiny|small|cifar``). On a 2-core
CPU a resnet8 epoch takes seconds on ``tiny`` (a first try in a minute), under a minute on
``small``, and minutes on ``cifar``, the default: CIFAR-100's shape (50 000 + 10 000 images of
100 classes in 20 superclasses)."""

_CHUNK = 4096  # images generated at once (bounds memory; the output does not depend on it)


def make_synthetic(
    num_classes: int = 100,
    num_superclasses: int = 20,
    train_size: int = 50000,
    test_size: int = 10000,
    seed: int = 0,
    noise: float = 0.45,
    class_strength: float = 0.7,
):
    """Synthetic 32x32 RGB images of ``num_classes`` classes in ``num_superclasses`` groups.

    Generator: every superclass ``s`` owns a random *prototype* ``P_s`` (a sum of three
    coloured oriented sine gratings plus two Gaussian colour blobs); every class ``c`` (in
    superclass ``s = c mod num_superclasses``) adds a smaller pattern ``Q_c`` of the same
    kind: ``proto_c = (P_s + class_strength * Q_c) / std``. Classes of one superclass share
    most of their appearance, so they are more confusable than classes across superclasses
    and teachers' soft labels carry real "dark knowledge". An image of class ``c`` is::

        x = g * j * shift(proto_c) + 0.5 * shift'(proto_d) + noise * N(0, 1)
        pixel = clamp(round(128 + 42 * x), 0, 255)

    with its own random cyclic shift (up to +-5 px in each direction), contrast ``g`` in
    [0.6, 1.4], per-channel colour jitter ``j`` in [0.8, 1.2], clutter from a random class
    ``d`` (shifted independently) at half strength, and Gaussian pixel noise. Labels are
    balanced (class = i mod C, then a seeded shuffle). Raising ``noise`` or lowering
    ``class_strength`` makes the problem harder.

    Difficulty, measured with ``experiments/synthetic_difficulty.py`` on one H100 (SGD lr
    0.05, batch 64, crop+flip; "within"/"across" = mean confusion rate of a class pair in
    the same/different superclasses; 16% and 4% = share of errors inside the true
    superclass if errors were spread evenly):

    ====================  ==============  ======  ===============  ===================
    classes/super, train  model, epochs   test %  within/across %  errors inside super
    ====================  ==============  ======  ===============  ===================
    20/5, 600             resnet8, 1      11.3    9.3 / 3.8        32% (even 16%)
    20/5, 600             resnet8, 4      28.3    13.4 / 2.0       56%
    20/5, 600             resnet20, 12    40.0    12.3 / 1.4       62%
    20/5, 2000            resnet8, 6      55.8    5.9 / 1.7        40%
    20/5, 2000            resnet20, 12    74.8    6.7 / 0.3        80%
    20/5, 2000            resnet56, 30    87.9    2.7 / 0.3        66%
    100/20, 50000         resnet8, 3      85.6    1.8 / 0.08       50% (even 4%)
    100/20, 50000         resnet8, 15     92.4    1.0 / 0.04       53%
    100/20, 50000         resnet32x4, 15  96.0    0.4 / 0.03       38%
    ====================  ==============  ======  ===============  ===================

    Small models and short training stay clearly below 100%, capacity and training length
    help, and confusions concentrate inside superclasses. The full-size default is easier
    than CIFAR-100 (where resnet8 reaches about 60%).

    Returns ``(train_images uint8 [N,32,32,3], train_labels int64 [N], test_images,
    test_labels, class_names, coarse_of_class int64 [num_classes])``.
    """
    if num_classes < 2 or not 1 <= num_superclasses <= num_classes:
        raise DataError(
            f"synthetic needs num_classes >= 2 and 1 <= num_superclasses <= num_classes; "
            f"got num_classes={num_classes}, num_superclasses={num_superclasses}"
        )
    if train_size < 1 or test_size < 1:
        raise DataError(f"synthetic train_size and test_size must be >= 1, got "
                        f"{train_size} and {test_size}")
    gen = torch.Generator().manual_seed(int(seed))
    coarse_of_class = torch.arange(num_classes) % num_superclasses
    protos = _patterns(num_superclasses, gen)[coarse_of_class]
    protos = protos + class_strength * _patterns(num_classes, gen)
    protos = protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    train_x, train_y = _draw(protos, train_size, noise, gen)
    test_x, test_y = _draw(protos, test_size, noise, gen)
    names = [f"class{c:03d}_super{int(coarse_of_class[c]):02d}" for c in range(num_classes)]
    return train_x, train_y, test_x, test_y, names, coarse_of_class.numpy()


def _draw(protos: torch.Tensor, n: int, noise: float, gen: torch.Generator):
    """``n`` balanced images of the classes ``protos`` [C,3,32,32]: (uint8 NHWC, labels)."""
    num_classes = len(protos)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    clutter = torch.randint(0, num_classes, (n,), generator=gen)
    shift = _random_shifts(n, gen)
    gain = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=gen)
    jitter = torch.empty(n, 3, 1, 1).uniform_(0.8, 1.2, generator=gen)
    clutter_shift = _random_shifts(n, gen)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        x = _shifted(protos[labels[part]], shift[part]) * gain[part]
        x *= jitter[part]
        x += 0.5 * _shifted(protos[clutter[part]], clutter_shift[part])
        x += noise * torch.randn(x.shape, generator=gen)
        pixels = x.mul_(42).add_(128).round_().clamp_(0, 255).to(torch.uint8)
        out[part] = pixels.permute(0, 2, 3, 1).numpy()
    return out, labels.numpy()


def _patterns(count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random colour patterns [count, 3, 32, 32]: gratings plus blobs."""
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    out = torch.zeros(count, 3, 32, 32)
    for _ in range(3):
        freq = torch.empty(count, 1, 1).uniform_(1.0, 4.0, generator=gen)
        angle = torch.empty(count, 1, 1).uniform_(0, torch.pi, generator=gen)
        phase = torch.empty(count, 1, 1).uniform_(0, 2 * torch.pi, generator=gen)
        wave = torch.sin(
            2 * torch.pi * freq * (xs * torch.cos(angle) + ys * torch.sin(angle)) / 32 + phase
        )
        colour = torch.randn(count, 3, 1, 1, generator=gen)
        out += colour * wave.unsqueeze(1)
    for _ in range(2):
        cy, cx = (torch.empty(count, 1, 1).uniform_(4, 28, generator=gen) for _ in range(2))
        width = torch.empty(count, 1, 1).uniform_(2.5, 7.0, generator=gen)
        blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width**2))
        out += 1.5 * torch.randn(count, 3, 1, 1, generator=gen) * blob.unsqueeze(1)
    return out


def _random_shifts(n: int, gen: torch.Generator, max_shift: int = 5) -> torch.Tensor:
    """Per-image cyclic shifts [n, 2] = (dy, dx), each uniform in [-max_shift, max_shift]."""
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    return torch.stack([dy, dx], dim=1)


def _shifted(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``images`` [n,3,32,32] each rolled by its own ``shifts[i] = (dy, dx)``:
    ``out[i, :, r, c] = images[i, :, (r - dy) mod 32, (c - dx) mod 32]``."""
    n = images.shape[0]
    rows = (torch.arange(32).view(1, 32, 1) - shifts[:, 0].view(n, 1, 1)) % 32
    cols = (torch.arange(32).view(1, 1, 32) - shifts[:, 1].view(n, 1, 1)) % 32
    index = (rows * 32 + cols).view(n, 1, 1024).expand(n, 3, 1024)
    return images.reshape(n, 3, 1024).gather(2, index).view(n, 3, 32, 32)
