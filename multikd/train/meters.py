"""Per-epoch training statistics, summed on the device and read by the host rarely.

The hot path of a training step must not wait for the device: every step adds its batch's
numbers to one device tensor (``EpochMeter.add``); the host reads it, one sync, only every
``log_interval`` steps (``check``) and at the epoch's end (``finish``), where, under DDP, the
sums are all-reduced over the ranks. Averages are over images: ``Σ_batches n_b * v_b / Σ n_b``.
"""

from __future__ import annotations

import math

import torch

from multikd.train import distributed as ddp
from multikd.errors import TrainingError


class EpochMeter:
    """One epoch's sums: the image count on the host (known there: ``y.numel()``), and on
    the device ``[correct, labelled, Σ n·loss_part..., Σ n·w_k..., Σ n·ce_k..., Σ n·kept_k...]``
    in float64 (parts named by the learner's ``losses`` dict, teacher diagnostics by its
    ``info`` keys ``weights``, ``ce``, ``kept``).

    A non-finite total loss makes its running sum non-finite for good, so a read sees it
    without a per-step check; the step where it first appeared is found, on that rare
    read only, among the per-step values kept since the last read (references to tensors
    ``add`` made anyway, so keeping them costs no op).
    """

    TEACHER_COLUMNS = {"weights": "w", "ce": "ce", "kept": "kept"}

    def __init__(self, device: torch.device, env: ddp.DistEnv, epoch: int, run_path):
        self.device = device
        self.env = env
        self.epoch = epoch
        self.run_path = run_path
        self.count = 0
        self.sums: torch.Tensor | None = None
        self.loss_names: list[str] = []
        self.teacher_keys: list[str] = []
        self._since_read: list[tuple[int, torch.Tensor]] = []

    def add(
        self, step: int, logits: torch.Tensor, y: torch.Tensor, losses: dict, info: dict
    ) -> None:
        """Add one batch: 9 ops, no host sync (every value scaled by the batch's image
        count n exactly as ``value.double() * n`` would be, so the sums do not change)."""
        if self.sums is None:
            self.loss_names = list(losses)
            self.teacher_keys = [k for k in self.TEACHER_COLUMNS if k in info]
        n = y.numel()
        self.count += n
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum(dtype=torch.float64)
            labelled = (y >= 0).sum(dtype=torch.float64)  # unlabelled samples are -100
            # float64 by type promotion (correct is float64); every cast to it is exact
            values = torch.cat([
                torch.stack([correct, labelled, *(losses[k] for k in self.loss_names)]),
                *(info[k] for k in self.teacher_keys),  # each [K]
            ])
            values[2:].mul_(n)
            if self.sums is None:
                self.sums = values.clone()
            else:
                self.sums.add_(values)
        self._since_read.append((step, values))

    def _read(self) -> list[float]:
        """``[count, correct, sums...]`` over all ranks (one host sync); a TrainingError
        if a total loss was not finite."""
        count = torch.full((1,), float(self.count), dtype=torch.float64, device=self.device)
        values = ddp.all_reduce_sum(torch.cat([count, self.sums]), self.env).tolist()
        if not math.isfinite(values[3 + self.loss_names.index("total")]):
            self._raise_not_finite()
        self._since_read.clear()
        return values

    def _raise_not_finite(self) -> None:
        """The first step (over all ranks) whose total loss was not finite, as an error.
        Every rank gets here: the all-reduced sum is not finite on all of them."""
        column = 2 + self.loss_names.index("total")
        totals = [float(v[column]) for _, v in self._since_read]
        bad = [step for (step, _), total in zip(self._since_read, totals)
               if not math.isfinite(total)]
        first = torch.full((1,), float(min(bad, default=math.inf)), dtype=torch.float64,
                           device=self.device)
        first_bad = ddp.all_reduce_min(first, self.env).item()
        kept = (
            f"The last good checkpoint (end of epoch {self.epoch - 1}) is kept in "
            f"{self.run_path}"
            if self.epoch > 1
            else f"No checkpoint was written to {self.run_path}"
        )
        raise TrainingError(
            f"the training loss became NaN or infinite at epoch {self.epoch}, step "
            f"{int(first_bad) + 1}; training stopped. {kept}. Lower the learning rate, "
            "turn off --amp, or check the data and the loss weights"
        )

    def _named(self, sums: list[float], teacher_names) -> dict:
        count, labelled = sums[0], sums[2]
        # over the labelled images (all of them unless data.labeled_fraction < 1)
        acc = 100.0 * sums[1] / labelled if labelled else math.nan
        out = {"count": count, "train_acc": acc}
        values = iter(sums[3:])
        for name in self.loss_names:
            out[f"loss_{name}"] = next(values) / count
        for key in self.teacher_keys:
            for name in teacher_names:
                out[f"{self.TEACHER_COLUMNS[key]}_{name}"] = next(values) / count
        return out

    def check(self) -> dict:
        """Running ``count``, ``train_acc`` and ``loss_<part>`` so far, over all ranks."""
        return self._named(self._read(), ())

    def finish(self, teacher_names) -> dict:
        """Epoch averages: ``train_acc``, ``loss_<part>``, ``w_/ce_/kept_<teacher>``."""
        named = self._named(self._read(), teacher_names)
        named.pop("count")
        return named
