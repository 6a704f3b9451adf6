"""How hard is the synthetic dataset? Train zoo models on it and measure.

    python experiments/synthetic_difficulty.py --classes 20 --superclasses 5 --train 2000 \
        --test 1000 --runs resnet8:6,resnet20:12 [--device cuda]

For every ``arch:epochs`` run (SGD lr 0.05, momentum 0.9, wd 5e-4, batch 64, the standard
crop+flip augmentation) it prints the test accuracy after each epoch, then from the final
confusion matrix ``M[i, j] = P(prediction j | class i)``:

- ``within``: mean of ``M[i, j]`` over pairs ``i != j`` in the same superclass;
- ``across``: mean of ``M[i, j]`` over pairs in different superclasses;
- ``errors inside``: the share of wrong predictions that stay in the true superclass, next
  to the share expected if errors were spread evenly, ``(C/S - 1) / (C - 1)``.

A useful synthetic problem keeps every model clearly below 100%, rewards capacity and
training length, and has ``within`` well above ``across`` (teachers' soft labels then carry
the superclass structure, the "dark knowledge" distillation transfers).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from multikd import data
from multikd.models import create_model


def confusion_stats(conf: np.ndarray, coarse: np.ndarray) -> dict:
    """Within/across-superclass confusion of a count matrix ``conf[true, pred]``."""
    rates = conf / conf.sum(1, keepdims=True).clip(min=1)
    same = coarse[:, None] == coarse[None, :]
    off = ~np.eye(len(coarse), dtype=bool)
    errors = conf * off
    num_classes, num_super = len(coarse), len(np.unique(coarse))
    return {
        "within": rates[same & off].mean(),
        "across": rates[~same].mean(),
        "inside": errors[same].sum() / max(errors.sum(), 1),
        "inside_even": (num_classes / num_super - 1) / (num_classes - 1),
    }


def run(arch: str, epochs: int, splits: data.DataSplits, coarse: np.ndarray, device: str,
        seed: int) -> None:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=splits.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train = data.build_loader(splits.train, 64, train=True, seed=seed, device=device)
    test = data.build_loader(splits.test, 500, train=False, device=device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        model.train()
        for x, y in train:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        conf = np.zeros((splits.num_classes, splits.num_classes), dtype=np.int64)
        with torch.no_grad():
            for x, y in test:
                pred = model(x.to(device)).argmax(1).cpu()
                np.add.at(conf, (y.numpy(), pred.numpy()), 1)
        acc = 100 * np.trace(conf) / conf.sum()
        print(f"{arch:>10} epoch {epoch + 1:2d}: test acc {acc:5.1f}%", flush=True)
    s = confusion_stats(conf, coarse)
    print(f"{arch:>10} after {epochs} epochs ({time.perf_counter() - t0:.0f} s): test acc "
          f"{acc:.1f}%, confusion within a superclass {100 * s['within']:.2f}% vs across "
          f"{100 * s['across']:.2f}% per class pair; errors inside the true superclass "
          f"{100 * s['inside']:.0f}% (even spread: {100 * s['inside_even']:.0f}%)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--superclasses", type=int, default=5)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generator")
    parser.add_argument("--seed", type=int, default=0, help="seed of training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="resnet8:6,resnet20:12",
                        help="comma-separated arch:epochs")
    args = parser.parse_args()
    t0 = time.perf_counter()
    options = dict(num_classes=args.classes, num_superclasses=args.superclasses,
                   train_size=args.train, test_size=args.test, seed=args.data_seed)
    coarse = data.make_synthetic(**{**options, "train_size": 1, "test_size": 1})[5]
    splits = data.build_datasets("synthetic", synthetic=options, seed=args.seed)
    print(f"synthetic {options}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    for item in args.runs.split(","):
        arch, epochs = item.split(":")
        run(arch, int(epochs), splits, coarse, args.device, args.seed)


if __name__ == "__main__":
    main()
