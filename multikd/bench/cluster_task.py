"""The callable each cluster job runs (imported only where submitit is installed).

A submitit ``Checkpointable``: when SLURM signals the time limit or a preemption, submitit
calls :meth:`checkpoint`, which requeues the same call. Nothing needs saving at that
moment: every run writes an exact checkpoint at the end of each epoch, and the requeued
job resumes each run from it (the epoch in progress is trained again, on the same batches
from the same RNG state, so the numbers equal an uninterrupted run's).
"""

from __future__ import annotations

import logging
import os

import submitit
import torch

from multikd.bench.suite import Plan
from multikd.errors import TrainingError


class UnitTask(submitit.helpers.Checkpointable):
    """``UnitTask(workdir)(stage, plan, payload)``: train a teacher (payload: its RunConfig),
    a student unit (payload: a :class:`~multikd.bench.shards.StudentUnit`), or write the
    tables (payload None), in ``workdir`` (the directory the bench was submitted from, which
    the plan's relative paths are relative to; None: where the job starts)."""

    def __init__(self, workdir: str | None = None):
        self.workdir = workdir

    def __call__(self, stage: str, plan: Plan, payload) -> str:
        from multikd.bench import runner

        if self.workdir is not None:
            os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        if plan.suite.cpu_threads is not None:
            torch.set_num_threads(plan.suite.cpu_threads)
        if stage == "teacher":
            state = runner._run_alone(payload, wait_s=runner.WAIT_FOR_TEACHER_S)
            return f"{payload.output.run_dir}: {state}"
        if stage == "students":
            runner.verify_teachers(plan, list(payload.teacher_ids))
            run = runner._run_group if payload.lockstep else runner._run_one
            states = run(payload)
            if "busy" in states.values():
                raise TrainingError(f"{payload.name}: another process is writing its runs")
            return f"{payload.name}: {states}"
        if stage == "tables":
            from multikd.results.outputs import write_results

            return "\n".join(str(p) for p in write_results(plan.out, plan.out))
        raise ValueError(f"unknown stage {stage!r}")
