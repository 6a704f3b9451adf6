"""The logit term of a distillation step: ``r_w * mean_i sum_k w_ki * L(s_i, t_ki)``.

``L`` is the per-teacher logit loss ``loss.logit_loss`` of the logit-loss registry
(:mod:`multikd.method.logit_losses`) with its registry defaults updated by
``loss.logit_params``; a loss with a ``warmup`` parameter (DKD) is scaled by
``min(epoch / warmup, 1)`` here, not in the loss. Teachers of part of the label space are
compared on their own classes only (the student's logits restricted to them,
:meth:`ClassMaps.restrict <multikd.method.label_spaces.ClassMaps.restrict>`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from multikd.errors import ConfigError
from multikd.method.label_spaces import ClassMaps
from multikd.method.logit_losses import (
    LOGIT_LOSS_REGISTRY,
    WARMUP,
    dkd_warmup_factor,
    logit_loss_per_teacher,
)
from multikd.method.loss_spec import LossSpec


class LogitTerm:
    """The configured logit loss of a (checked) :class:`LossSpec`; its parameters are
    checked here once, so a typo in ``logit_params`` fails at build, not at the first step."""

    def __init__(self, loss: LossSpec, partial_labels: bool):
        self.name = loss.logit_loss
        self.given = dict(loss.logit_params)
        self.temperature = float(loss.temperature)
        self.standardize = bool(loss.logit_standardize)
        self.defaults = dict(LOGIT_LOSS_REGISTRY.entry(self.name).params)
        self.warmup = self.given.get(WARMUP, self.defaults[WARMUP]) \
            if WARMUP in self.defaults else None
        if partial_labels and self.name == "dkd":
            raise ConfigError(
                "loss.logit_loss dkd splits the loss at each image's target class, but some "
                "training images have no label (data.labeled_fraction < 1 or "
                "data.unlabeled_dir): use kd, mse or dist"
            )

    def check(self) -> None:
        """One call on a tiny input: the loss accepts its parameters."""
        logit_loss_per_teacher(
            self.name, torch.zeros(1, 2), torch.zeros(1, 1, 2), torch.zeros(1, dtype=torch.long),
            self.temperature, self.params(), self.standardize,
        )

    def params(self) -> dict:
        """The logit loss's parameters: its registry defaults (the published settings)
        updated with ``logit_params``, without ``warmup`` (applied by :meth:`warmed`)."""
        merged = {**self.defaults, **self.given}
        return {k: v for k, v in merged.items() if k != WARMUP}

    def per_teacher(self, logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                    class_maps: ClassMaps | None = None,
                    ids: Sequence[int] | None = None) -> torch.Tensor:
        """``[K,B]``: the loss of the student ``logits [B,C]`` against each teacher's
        ``[K,B,C']``; with teachers of part of the label space (``ids``: the ensemble index
        of each row of ``teacher_logits``), each on its own classes."""
        if class_maps is None or ids is None:
            return logit_loss_per_teacher(self.name, logits, teacher_logits, y, self.temperature,
                                          self.params(), self.standardize)
        rows = []
        for row, k in enumerate(ids):
            student, teacher, labels = class_maps.restrict(k, logits, teacher_logits[row], y)
            rows.append(logit_loss_per_teacher(
                self.name, student, teacher.unsqueeze(0), labels, self.temperature,
                self.params(), self.standardize,
            ))
        return torch.cat(rows)

    def warmed(self, kd: torch.Tensor, epoch: int) -> torch.Tensor:
        """``kd`` times the warmup factor of ``epoch`` (``kd`` itself without a warmup)."""
        if self.warmup is None:
            return kd
        return scaled(dkd_warmup_factor(epoch, self.warmup), kd)


def scaled(weight: float, loss: torch.Tensor) -> torch.Tensor:
    """``weight * loss``, without the op when the weight is 1 (``1.0 * x`` is exactly x)."""
    return loss if weight == 1.0 else weight * loss
