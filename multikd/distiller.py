"""One training step's losses: the contract every method follows.

A *learner* is an ``nn.Module`` whose ``forward(x, y)`` returns
``(student_logits [B,C], losses: dict[str, Tensor], info: dict)``; ``losses["total"]`` is
what the optimizer minimizes, every other entry is logged by name. ``trainable_parameters()``
lists exactly what the optimizer may update, so frozen teachers can never be trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SupervisedLearner(nn.Module):
    """Plain cross-entropy training of one model (teachers, and the student-alone baseline).

    loss = CE(model(x), y)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.student = model

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.student(x)
        ce = F.cross_entropy(logits, y)
        return logits, {"ce": ce, "total": ce}, {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]
