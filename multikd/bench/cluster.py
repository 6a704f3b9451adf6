"""``multikd bench SUITE --executor slurm``: a suite as cluster jobs through submitit.

The job plan (:func:`job_plan`) has three stages, each job one unit of
:mod:`multikd.bench.shards`:

1. ``teacher:<id>``: one job per teacher the suite trains and has not finished;
2. ``students:<set>/s<seed>[/partJofN]``: one job per lockstep group (or slice, with
   ``--max-runs-per-job``) with unfinished runs, after the jobs of its teachers
   (``--dependency=afterok``); it verifies its teachers, then trains the group;
3. ``tables``: after every student job, writes the tables and plots into ``OUT``.

Every job is a :class:`multikd.bench.cluster_task.UnitTask`, a submitit ``Checkpointable``:
at SLURM's time-limit or preemption signal submitit requeues it with the same arguments, and
the new job resumes each run from its last epoch checkpoint (the engine's exact resume: the
same numbers as an uninterrupted run). Run-directory locks (:mod:`multikd.train.runlock`)
keep two jobs off one run. Job logs and submitit's files are in ``OUT/jobs/``. Each job
first changes into the directory the bench was submitted from, so it reads and writes the
paths a local run does (relative where they were given relative: no run folder, config or
table records the submitting machine's absolute paths).

``--executor submitit-local`` runs the same tasks as local subprocesses through submitit's
``LocalExecutor``, stage after stage (it has no dependencies), and waits for them: the
cluster path on one machine, as the tests use it. ``--dry-run`` prints the job plan
without submitit installed.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from multikd.bench.shards import StudentUnit, student_units
from multikd.bench.suite import Plan, TeacherJob
from multikd.errors import ConfigError, MultikdError
from multikd.train.runio import RunDir

JOBS_DIR = "jobs"


@dataclass
class ClusterOptions:
    """What each job asks of the scheduler (the ``--executor`` options of ``bench``)."""

    executor: str = "slurm"
    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 32
    time_min: int = 24 * 60
    sbatch: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args) -> "ClusterOptions":
        extra = {}
        for item in args.sbatch:
            key, sep, value = item.partition("=")
            key = key.strip().lstrip("-")
            if not sep or not key:
                raise ConfigError(f"--sbatch takes KEY=VALUE (e.g. --sbatch qos=high), got {item!r}")
            extra[key] = value
        for name in ("gpus_per_job", "cpus_per_job", "mem_gb", "time_min"):
            if getattr(args, name) < (0 if name == "gpus_per_job" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, "
                                  f"got {getattr(args, name)}")
        return cls(args.executor, args.partition, args.account, args.gpus_per_job,
                   args.cpus_per_job, args.mem_gb, args.time_min, extra, list(args.setup))

    def sbatch_lines(self) -> list[str]:
        """The ``#SBATCH`` options every job gets (as submitit writes them)."""
        lines = [f"--time={self.time_min}", f"--gpus-per-node={self.gpus_per_job}",
                 f"--cpus-per-task={self.cpus_per_job}", f"--mem={self.mem_gb}GB"]
        if self.partition:
            lines.append(f"--partition={self.partition}")
        if self.account:
            lines.append(f"--account={self.account}")
        lines += [f"--{k}={v}" for k, v in self.sbatch.items()]
        return lines


@dataclass
class Job:
    """One job of the plan: its stage, name, what it trains, the jobs it waits for."""

    stage: str                    # "teacher", "students" or "tables"
    name: str
    runs: list[str]
    depends: list[str]
    teacher: TeacherJob | None = None
    unit: StudentUnit | None = None


def job_plan(plan: Plan, lockstep: bool = True, max_runs_per_job: int | None = None) -> list[Job]:
    """The jobs that finish ``plan`` (finished runs need none), in submission order."""
    jobs, teacher_job = [], {}
    for tid, job in plan.teachers.items():
        run_dir = job.config.output.run_dir
        if job.published or RunDir(run_dir).state() == "finished":
            continue
        teacher_job[tid] = f"teacher:{tid}"
        jobs.append(Job("teacher", teacher_job[tid], [run_dir], [], teacher=job))
    students = []
    for unit in student_units(plan, lockstep, max_runs_per_job):
        runs = [r.config.output.run_dir for r in unit.runs]
        if all(RunDir(r).state() == "finished" for r in runs):
            continue
        depends = [teacher_job[t] for t in unit.teacher_ids if t in teacher_job]
        students.append(Job("students", f"students:{unit.name}", runs, depends, unit=unit))
    jobs += students
    jobs.append(Job("tables", "tables", [], [j.name for j in students]))
    return jobs


def describe_jobs(jobs: list[Job], options: ClusterOptions) -> str:
    """The job plan as text (``--dry-run``)."""
    counts = {s: sum(j.stage == s for j in jobs) for s in ("teacher", "students")}
    lines = [f"{len(jobs)} jobs: {counts['teacher']} teacher, {counts['students']} student, "
             "1 tables", "each job: " + " ".join(f"#SBATCH {line}" for line in
                                                  options.sbatch_lines())]
    lines += [f"  setup: {line}" for line in options.setup]
    for job in jobs:
        after = f"  after {', '.join(job.depends)}" if job.depends else ""
        if job.stage == "tables":
            after = "  after every student job" if job.depends else ""
        lines.append(f"{job.name}  ({len(job.runs)} runs){after}")
    return "\n".join(lines)


def _executor(folder: Path, options: ClusterOptions):
    try:
        import submitit
    except ImportError:
        raise MultikdError(
            f"--executor {options.executor} needs submitit: pip install 'multikd[cluster]' "
            "(or pip install submitit)"
        ) from None
    if options.executor == "submitit-local":
        executor = submitit.LocalExecutor(folder)
        # submitit's local default time limit is short: a job past it is signalled, requeued
        # three times, then failed (seen on the smoke suite with 8 groups on 2 cores)
        executor.update_parameters(timeout_min=options.time_min)
        if options.setup:
            executor.update_parameters(setup=options.setup)
        return executor
    try:
        executor = submitit.SlurmExecutor(folder)
    except RuntimeError as err:  # no srun on PATH
        raise MultikdError(
            f"--executor slurm: {err} Submit from a machine of the cluster (its login node), "
            "or try the job path here with --executor submitit-local"
        ) from None
    params = dict(time=options.time_min, gpus_per_node=options.gpus_per_job,
                  cpus_per_task=options.cpus_per_job, mem=f"{options.mem_gb}GB",
                  setup=options.setup, additional_parameters=dict(options.sbatch))
    if options.partition:
        params["partition"] = options.partition
    if options.account:
        params["account"] = options.account
    executor.update_parameters(**params)
    return executor


def _task_args(plan: Plan, job: Job) -> tuple:
    if job.stage == "teacher":
        return ("teacher", plan, job.teacher.config)
    if job.stage == "students":
        return ("students", plan, job.unit)
    return ("tables", plan, None)


def submit(plan: Plan, jobs: list[Job], options: ClusterOptions) -> str:
    """Submit ``jobs`` (SLURM: all at once, with dependencies; submitit-local: stage by
    stage, waiting for each); what was done, as text."""
    from multikd.bench.cluster_task import UnitTask

    from multikd.bench.runner import record_suite

    folder = plan.out / JOBS_DIR / "%j"
    plan.out.mkdir(parents=True, exist_ok=True)
    record_suite(plan)
    executor = _executor(folder, options)
    ids: dict[str, str] = {}
    lines = []
    local = options.executor == "submitit-local"
    for stage in ("teacher", "students", "tables"):
        submitted = []
        for job in (j for j in jobs if j.stage == stage):
            params = {"job_name": f"multikd-{plan.suite.name}-{job.name}"}
            if local:
                params = {}
            else:
                deps = [ids[d] for d in job.depends if d in ids]
                params["dependency"] = f"afterok:{':'.join(deps)}" if deps else None
                if params["dependency"] is None:
                    params.pop("dependency")
                executor.update_parameters(**params)
            handle = executor.submit(UnitTask(os.getcwd()), *_task_args(plan, job))
            ids[job.name] = str(handle.job_id)
            submitted.append((job, handle))
            lines.append(f"submitted {job.name} as job {handle.job_id}")
        if local:  # no dependencies in the local executor: each stage ends before the next
            for job, handle in submitted:
                try:
                    handle.result()
                except Exception as err:  # noqa: BLE001 - submitit wraps the job's error
                    raise MultikdError(
                        f"job {job.name} ({handle.job_id}) failed; its log is in "
                        f"{plan.out / JOBS_DIR / str(handle.job_id)}:\n{err}"
                    ) from None
    if local:
        lines.append(f"all {len(jobs)} jobs finished; tables in {plan.out}")
    else:
        lines.append(
            f"follow them with: squeue --me, or multikd bench {shlex.quote(plan.suite.source)} "
            f"--out {shlex.quote(str(plan.out))} --status; logs in {plan.out / JOBS_DIR}"
        )
    return "\n".join(lines)
