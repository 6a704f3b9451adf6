"""Learning-rate schedules of the CIFAR recipe, as a multiplier of the base rate per step.

``LRSchedule(...)(step)`` is the factor applied after ``step`` optimizer steps; it is a
picklable object so ``torch.optim.lr_scheduler.LambdaLR`` saves and restores it with the
scheduler state. With ``S`` steps per epoch, ``W`` warmup epochs and epoch index
``e = step // S`` (0-based):

- warmup (``step < W*S``): ``(step + 1) / (W*S)`` — linear ramp to the base rate (Goyal et
  al. 2017, "Accurate, large minibatch SGD");
- ``multistep``: ``decay ** #{m in milestones : e >= m}`` — with milestones 150, 180, 210
  the rate drops ×0.1 after epochs 150, 180 and 210 (1-based), as in RepDistiller/CRD;
- ``cosine``: ``0.5 * (1 + cos(pi * t))`` with ``t = (step - W*S) / (E*S - W*S)`` (Loshchilov
  & Hutter 2017, "SGDR", without restarts).
"""

from __future__ import annotations

import math


class LRSchedule:
    def __init__(
        self,
        kind: str,
        steps_per_epoch: int,
        epochs: int,
        milestones: list[int],
        decay: float,
        warmup_epochs: int = 0,
    ):
        if kind not in ("multistep", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}; expected multistep or cosine")
        self.kind = kind
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.milestones = list(milestones)
        self.decay = decay
        self.warmup_steps = warmup_epochs * steps_per_epoch

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "multistep":
            epoch = step // self.steps_per_epoch
            return self.decay ** sum(epoch >= m for m in self.milestones)
        total = self.epochs * self.steps_per_epoch - self.warmup_steps
        t = min(step - self.warmup_steps, total) / total
        return 0.5 * (1.0 + math.cos(math.pi * t))
