"""A suite's plan as units of work, and a deterministic, balanced split of them into shards.

A unit is what one worker or cluster job trains: a teacher run, or a lockstep group (one
teacher set and seed; with ``max_runs_per_job`` slices of it, each still one lockstep
group sharing its teachers' forward pass; with lockstep off, one run). Shards come from
the longest-processing-time rule on each unit's cost (epochs to train): units in order of
decreasing cost, ties by name, each to the least loaded shard, ties to the lowest index.
The split depends on the plan alone, so the N commands ``--shard 1/N`` .. ``--shard N/N``,
started anywhere and in any order, agree on it and together run every unit exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from multikd.bench.suite import Plan, StudentRun, TeacherJob
from multikd.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class StudentUnit:
    """Student runs trained together (one lockstep group or a slice of one), or one run."""

    name: str
    teacher_set: str
    seed: int
    teacher_ids: tuple[str, ...]
    runs: tuple[StudentRun, ...]
    lockstep: bool

    @property
    def cost(self) -> int:
        return sum(run.config.optim.epochs for run in self.runs)


def teacher_units(plan: Plan) -> list[TeacherJob]:
    """The teachers the suite trains (published ones need no work)."""
    return [job for job in plan.teachers.values() if not job.published]


def teacher_cost(job: TeacherJob) -> int:
    return job.config.optim.epochs


def student_units(plan: Plan, lockstep: bool = True,
                  max_runs_per_job: int | None = None) -> list[StudentUnit]:
    """The plan's student runs as units: a lockstep group each, cut into slices of at most
    ``max_runs_per_job`` runs (None: whole groups), or with ``lockstep=False`` one per run."""
    if max_runs_per_job is not None and max_runs_per_job < 1:
        raise ConfigError(f"--max-runs-per-job must be >= 1, got {max_runs_per_job}")
    units = []
    for group in plan.groups:
        runs = list(group.runs)
        size = 1 if not lockstep else (max_runs_per_job or len(runs))
        slices = [runs[i:i + size] for i in range(0, len(runs), size)]
        base = f"{group.teacher_set}/s{group.seed}"
        for j, part in enumerate(slices, 1):
            if not lockstep:
                name = f"{base}/{part[0].label}"
            else:
                name = base if len(slices) == 1 else f"{base}/part{j}of{len(slices)}"
            units.append(StudentUnit(name, group.teacher_set, group.seed,
                                     tuple(group.teacher_ids), tuple(part), lockstep))
    return units


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1 <= I <= N) as ``(I, N)``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"--shard takes I/N, e.g. --shard 2/8 (shard 2 of 8); got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"--shard {text}: I must lie in 1..N (N >= 1), e.g. --shard 1/{max(count, 1)}; "
            "with SLURM arrays use --array=1-N and --shard $SLURM_ARRAY_TASK_ID/N"
        )
    return index, count


def assign(costs: Sequence[tuple[str, int]], count: int) -> list[int]:
    """Shard index (0-based) of each ``(name, cost)`` by the longest-processing-time rule."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i][1], costs[i][0]))
    loads = [0] * count
    shard = [0] * len(costs)
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], s))
        shard[i] = target
        loads[target] += costs[i][1]
    return shard


def take_shard(items: Sequence[T], index: int, count: int, name: Callable[[T], str],
               cost: Callable[[T], int]) -> list[T]:
    """The items of shard ``index`` of ``count`` (1-based), in their original order."""
    shards = assign([(name(item), cost(item)) for item in items], count)
    return [item for item, s in zip(items, shards) if s == index - 1]
