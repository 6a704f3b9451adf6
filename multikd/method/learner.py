"""The learner contract: what the engine trains, stated once as a ``typing.Protocol``.

A *learner* is an ``nn.Module`` whose ``forward(x, y)`` returns
``(student_logits [B,C], losses: dict[str, Tensor], info: dict)``; ``losses["total"]`` is
what the optimizer minimizes, every other entry is logged by name. The engine, lockstep
training and DDP read a learner through :class:`LearnerContract` only (never by probing
for attributes), so a new method is a new class with these members, and
``isinstance(module, LearnerContract)`` tells whether the engine can train it.
:class:`SupervisedLearner` is the smallest one: plain cross-entropy.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from multikd.method.losses import labeled_ce


@runtime_checkable
class LearnerContract(Protocol):
    """What the engine reads of the module it trains (see the module doc)."""

    may_leave_parameters_unused: bool
    """Whether some trainable parameter may get no gradient in a step (a feature term that
    starts after epoch 1): DDP then looks for unused parameters."""
    updates_after_step: bool
    """Whether :meth:`after_step` does anything (the engine skips the call otherwise)."""
    needs_index: bool
    """Whether ``forward`` takes ``index=``, each sample's training-set index (a feature
    loss with a memory bank: CRD); the engine then hands it over."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        """``(logits [B,C], losses, info)`` of one step."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Exactly what the optimizer may update (never a frozen teacher)."""

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules DDP must not synchronise: frozen teachers, and networks that average
        their own gradients (a learned strategy's)."""

    def set_epoch(self, epoch: int) -> None:
        """Called with the 1-based epoch before the epoch's first step."""

    def after_step(self, optimizer: torch.optim.Optimizer, step: int,
                   steps_per_epoch: int) -> None:
        """Called after each optimizer step when :attr:`updates_after_step`."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after the epoch's last step, before its evaluation and checkpoint; the
        learner's own training metrics of the epoch (e.g. ``strategy_loss``), written to
        metrics.csv beside the losses."""

    def self_teacher_state(self) -> dict | None:
        """State a checkpoint carries beside the module's ``state_dict`` (a self-teacher's
        snapshot); None when there is none."""

    def load_self_teacher_state(self, state: dict | None) -> None:
        """Restore :meth:`self_teacher_state` output."""


def missing_members(module) -> list[str]:
    """The :class:`LearnerContract` members ``module`` lacks (empty: the engine can train it)."""
    members = [*LearnerContract.__annotations__,
               *(name for name, value in vars(LearnerContract).items()
                 if callable(value) and not name.startswith("_"))]
    return [name for name in members if not hasattr(module, name)]


class SupervisedLearner(nn.Module):
    """Plain cross-entropy training of one model (teachers, and the student-alone baseline).

    loss = CE(model(x), y), over the labelled samples only with ``partial_labels``
    (:func:`labeled_ce`)
    """

    may_leave_parameters_unused = False
    updates_after_step = False
    needs_index = False

    def __init__(self, model: nn.Module, partial_labels: bool = False):
        super().__init__()
        self.student = model
        self.partial_labels = bool(partial_labels)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.student(x)
        ce = labeled_ce(logits, y) if self.partial_labels else F.cross_entropy(logits, y)
        return logits, {"ce": ce, "total": ce}, {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch here."""

    def after_step(self, optimizer, step: int, steps_per_epoch: int) -> None:
        """Nothing to update after the optimizer's step."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def self_teacher_state(self) -> None:
        return None

    def load_self_teacher_state(self, state: dict | None) -> None:
        if state is not None:
            from multikd.errors import ModelError

            raise ModelError("the checkpoint holds a self-teacher snapshot, but this run has none")
