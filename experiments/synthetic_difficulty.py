"""How hard is the synthetic dataset? Train small zoo models and report accuracy per epoch
and the share of errors that stay inside the true superclass.

    python experiments/synthetic_difficulty.py --classes 20 --superclasses 5 --train 2000

A useful synthetic problem keeps every model clearly below 100%, rewards capacity and
training length, and makes most mistakes between classes of one superclass.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from multikd import data
from multikd.models import create_model


def run(arch: str, epochs: int, splits, num_superclasses: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=splits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train = data.build_loader(splits.train, 64, train=True, seed=seed)
    test = data.build_loader(splits.test, 256, train=False)
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        model.train()
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        correct = wrong = wrong_same_super = 0
        with torch.no_grad():
            for x, y in test:
                pred = model(x).argmax(1)
                correct += int((pred == y).sum())
                miss = pred != y
                wrong += int(miss.sum())
                same = (pred % num_superclasses) == (y % num_superclasses)
                wrong_same_super += int((miss & same).sum())
        acc = 100 * correct / len(splits.test)
        inside = 100 * wrong_same_super / max(wrong, 1)
        print(f"{arch:>10} epoch {epoch + 1:2d}: test acc {acc:5.1f}%  "
              f"errors inside the true superclass {inside:5.1f}% "
              f"(chance {100 * (1 / num_superclasses):.0f}%)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--superclasses", type=int, default=5)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--runs", default="resnet8:6,resnet20:12",
                        help="comma-separated arch:epochs")
    args = parser.parse_args()
    splits = data.build_datasets("synthetic", synthetic=dict(
        num_classes=args.classes, num_superclasses=args.superclasses,
        train_size=args.train, test_size=args.test))
    for item in args.runs.split(","):
        arch, epochs = item.split(":")
        run(arch, int(epochs), splits, args.superclasses)


if __name__ == "__main__":
    main()
