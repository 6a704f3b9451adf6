"""The self-teacher snapshot: a teacher that is the running student, frozen at an epoch.

``teachers[i].self_from_epoch = E`` makes teacher i a copy of the student taken at the
start of epoch E (:meth:`SelfTeacher.snapshot`); before E it takes no part, and the step
runs on the other teachers only (:meth:`SelfTeacher.active`, :func:`subset`,
:func:`scatter`). The snapshot travels in the checkpoint (:meth:`SelfTeacher.state`).
"""

from __future__ import annotations

import torch
from torch import nn

from multikd.errors import ModelError
from multikd.method.ensemble import EnsembleOutput


class SelfTeacher:
    """Teacher ``index`` of ``ensemble`` is the student from epoch ``from_epoch`` on (no
    self-teacher when ``index`` is None)."""

    def __init__(self, index: int | None, from_epoch: int | None):
        self.index = index
        self.from_epoch = from_epoch
        self.ready = False

    def due(self, epoch: int) -> bool:
        """Whether the snapshot is to be taken now (its epoch has come, not taken yet)."""
        return self.index is not None and not self.ready and epoch >= self.from_epoch

    def active(self, num_teachers: int) -> list[int] | None:
        """Indices of the teachers that take part now: None (all) unless the self-teacher
        waits for its epoch (then every other one)."""
        if self.index is None or self.ready:
            return None
        return [k for k in range(num_teachers) if k != self.index]

    def snapshot(self, student: nn.Module, teachers: list[nn.Module]) -> None:
        """Copy the student into the self-teacher (frozen, eval mode) and let it take part."""
        with torch.no_grad():
            teachers[self.index].load_state_dict(student.state_dict())
        self.ready = True

    def state(self, teachers: list[nn.Module]) -> dict | None:
        """The snapshot for a checkpoint (None before its epoch or without a self-teacher)."""
        if self.index is None or not self.ready:
            return None
        return teachers[self.index].state_dict()

    def load(self, teachers: list[nn.Module], state: dict | None) -> None:
        """Restore :meth:`state` output."""
        if state is None:
            return
        if self.index is None:
            raise ModelError("the checkpoint holds a self-teacher snapshot, but this run has none")
        teachers[self.index].load_state_dict(state)
        self.ready = True


def subset(out: EnsembleOutput, keep: list[int]) -> EnsembleOutput:
    """The teacher output of the teachers ``keep`` only."""
    index = torch.tensor(keep, device=out.logits.device)
    feats = [out.features[i] for i in keep] if out.features is not None else None
    stages = [out.stage_features[i] for i in keep] if out.stage_features is not None else None
    return EnsembleOutput(out.logits.index_select(0, index), feats,
                          out.ce.index_select(0, index), out.ce_mean.index_select(0, index),
                          stages)


def idle_teachers_info(names: list[str], out: EnsembleOutput) -> dict:
    """A step's ``info`` when no teacher takes part: weights and kept fractions 0."""
    with torch.no_grad():
        zeros = torch.zeros(len(names), device=out.logits.device)
        return {"teachers": list(names), "weights": zeros, "ce": out.ce_mean.detach().float(),
                "kept": zeros.clone()}


def scatter(values: torch.Tensor, active: list[int] | None, full: EnsembleOutput) -> torch.Tensor:
    """``[K_active]`` per-teacher values placed into ``[K]`` (0 for the left-out teacher)."""
    if active is None:
        return values
    out = torch.zeros(full.logits.shape[0], dtype=values.dtype, device=values.device)
    return out.index_copy(0, torch.tensor(active, device=values.device), values)
