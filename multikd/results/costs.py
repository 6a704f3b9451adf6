"""What the student saves: each table row's student and teachers with their parameters and
MACs per image (:mod:`multikd.models.cost`), and on request their inference images/s.

The architectures come from the runs' summaries (``student_arch``, ``teacher_archs``) and
the number of classes from their configs; an architecture whose cost cannot be counted (a
name this install does not know) leaves its cell empty rather than stopping the table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pandas as pd

from multikd.errors import MultikdError
from multikd.models.cost import ModelCost, human, images_per_second, model_cost

log = logging.getLogger(__name__)

DATASET_CLASSES = {"cifar100": 100, "cifar10": 10}
SYNTHETIC_DEFAULT_CLASSES = 100  # multikd.data.synthetic.make_synthetic's default


@dataclass
class Member:
    name: str
    arch: str
    cost: ModelCost | None
    classes: int = 100
    images_per_s: float | None = None


@dataclass
class RowCost:
    student: Member
    teachers: list[Member] = field(default_factory=list)

    def student_text(self) -> str:
        return self.student.cost.text() if self.student.cost else ""

    def teachers_text(self) -> str:
        """``a 7.43M · 1.08G MACs (88.6×)``: each teacher and its size over the student's."""
        parts = []
        for t in self.teachers:
            if t.cost is None:
                continue
            ratio = ""
            if self.student.cost and self.student.cost.params:
                ratio = f" ({t.cost.params / self.student.cost.params:.1f}×)"
            parts.append(f"{t.name} {t.cost.text()}{ratio}")
        return "; ".join(parts)

    def speed_text(self) -> tuple[str, str]:
        student = f"{self.student.images_per_s:,.0f}" if self.student.images_per_s else ""
        teachers = "; ".join(f"{t.name} {t.images_per_s:,.0f}" for t in self.teachers
                             if t.images_per_s)
        return student, teachers


def num_classes_of(experiment: str | None) -> int:
    """The label count of a run from its ``experiment`` text (see results.experiment_text)."""
    if not experiment:
        return 100
    data = json.loads(experiment).get("data", {})
    dataset = data.get("dataset", "cifar100")
    if dataset == "synthetic":
        return int((data.get("synthetic") or {}).get("num_classes", SYNTHETIC_DEFAULT_CLASSES))
    return DATASET_CLASSES.get(dataset, 100)


def _cost(arch: str, classes: int) -> ModelCost | None:
    try:
        return model_cost(arch, classes)
    except MultikdError as err:
        log.warning("no cost for %s: %s", arch, err)
        return None


def row_cost(student_arch: str, runs: pd.DataFrame) -> RowCost:
    """The cost of one row from its runs (distill runs name the teachers and their archs)."""
    experiments = runs["experiment"].dropna() if "experiment" in runs else pd.Series([], dtype=object)
    classes = num_classes_of(experiments.iloc[0] if len(experiments) else None)
    row = RowCost(Member("student", student_arch, _cost(student_arch, classes), classes))
    distill = runs[runs["kind"] == "distill"]
    if len(distill) and "teacher_archs" in distill:
        first = distill.iloc[0]
        archs = first["teacher_archs"]
        if isinstance(archs, (list, tuple)) and len(archs) == len(first["teacher_names"]):
            outputs = _teacher_outputs(first.get("experiment"), len(archs), classes)
            row.teachers = [Member(n, a, _cost(a, m), m)
                            for n, a, m in zip(first["teacher_names"], archs, outputs)]
    return row


def _teacher_outputs(experiment: str | None, k: int, classes: int) -> list[int]:
    """Each teacher's output count: ``classes``, or the length of its ``classes`` list (a
    teacher of part of the label space)."""
    teachers = json.loads(experiment).get("teachers", []) if isinstance(experiment, str) else []
    if len(teachers) != k:
        return [classes] * k
    return [len(t["classes"]) if isinstance(t, dict) and t.get("classes") else classes
            for t in teachers]


def add_throughput(costs: dict, device: str = "cpu", batch_size: int = 256,
                   min_time_s: float = 1.0) -> None:
    """Measure inference images/s of every architecture in ``costs`` (each once)."""
    measured: dict[tuple[str, int], float] = {}
    for row in costs.values():
        for member in [row.student, *row.teachers]:
            key = (member.arch, member.classes)
            if member.cost is None:
                continue
            if key not in measured:
                measured[key] = images_per_second(member.arch, member.classes, batch_size=batch_size,
                                                  device=device, min_time_s=min_time_s)
            member.images_per_s = measured[key]


__all__ = ["RowCost", "Member", "row_cost", "add_throughput", "num_classes_of", "human"]
