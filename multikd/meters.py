"""Per-epoch training statistics, summed on the device and read by the host rarely.

The hot path of a training step must not wait for the device: every step adds its batch's
numbers to one device tensor (``EpochMeter.add``); the host reads it, one sync, only every
``log_interval`` steps (``check``) and at the epoch's end (``finish``), where, under DDP, the
sums are all-reduced over the ranks. Averages are over images: ``Σ_batches n_b * v_b / Σ n_b``.
"""

from __future__ import annotations

import math

import torch

from multikd import distributed as ddp
from multikd.errors import TrainingError


class EpochMeter:
    """One epoch's sums on the device: ``[count, correct, Σ n·loss_part..., Σ n·w_k...,
    Σ n·ce_k..., Σ n·kept_k...]`` (parts named by the learner's ``losses`` dict, teacher
    diagnostics by its ``info`` keys ``weights``, ``ce``, ``kept``), and ``first_bad``: the
    first step whose total loss was not finite (``inf`` while there is none).
    """

    TEACHER_COLUMNS = {"weights": "w", "ce": "ce", "kept": "kept"}

    def __init__(self, device: torch.device, env: ddp.DistEnv, epoch: int, run_path):
        self.device = device
        self.env = env
        self.epoch = epoch
        self.run_path = run_path
        self.sums: torch.Tensor | None = None
        self.first_bad = torch.full((), math.inf, dtype=torch.float64, device=device)
        self.loss_names: list[str] = []
        self.teacher_keys: list[str] = []

    def add(
        self, step: int, logits: torch.Tensor, y: torch.Tensor, losses: dict, info: dict
    ) -> None:
        """Add one batch (no host sync)."""
        if self.sums is None:
            self.loss_names = list(losses)
            self.teacher_keys = [k for k in self.TEACHER_COLUMNS if k in info]
        n = torch.full((1,), float(y.numel()), dtype=torch.float64, device=self.device)
        parts = [n, (logits.detach().argmax(1) == y).sum().double().reshape(1)]
        parts.append(torch.stack([losses[k].detach().double() for k in self.loss_names]) * n)
        parts.extend(info[k].detach().double().reshape(-1) * n for k in self.teacher_keys)
        values = torch.cat(parts)
        self.sums = values if self.sums is None else self.sums + values
        finite = torch.isfinite(losses["total"].detach())
        seen_bad = self.first_bad < math.inf
        self.first_bad = torch.where(finite | seen_bad, self.first_bad, float(step))

    def _read(self) -> list[float]:
        """Sums over all ranks (one host sync); a TrainingError if a loss was not finite."""
        bad = ddp.all_reduce_min(self.first_bad.reshape(1).clone(), self.env)
        sums = ddp.all_reduce_sum(self.sums.clone(), self.env)
        first_bad, *values = torch.cat([bad, sums]).tolist()
        if first_bad < math.inf:
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
        return values

    def _named(self, sums: list[float], teacher_names) -> dict:
        count = sums[0]
        out = {"count": count, "train_acc": 100.0 * sums[1] / count}
        values = iter(sums[2:])
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
