"""``multikd bench SUITE --out DIR --status``: each run's state, read from its folder alone.

States: ``done`` (summary says finished), ``running`` (a live process holds its lock;
:mod:`multikd.train.runlock`), ``failed`` (its last writer raised; the error is shown),
``partial`` (stopped after epoch e of E; the same bench command resumes it) and ``not
started``. Nothing but the run folders is read, so the answer is the same from any machine
that sees them, whichever jobs, shards or hosts wrote them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from multikd.bench.suite import Plan
from multikd.train.runio import METRICS, RunDir
from multikd.train.runlock import failure, lock_holder

STATES = ("done", "running", "failed", "partial", "not started")


@dataclass
class RunStatus:
    role: str      # "teacher" or "student"
    name: str      # teacher id, or the run folder relative to OUT/runs
    run_dir: str
    state: str
    epoch: int     # epochs finished
    epochs: int    # epochs planned
    detail: str = ""


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / METRICS
    if not path.is_file():
        return 0
    try:
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return 0


def run_status(run_dir: str | Path, role: str, name: str, epochs: int) -> RunStatus:
    """The state of one run folder (see the module docstring)."""
    run = RunDir(run_dir)
    done = _epochs_done(run.path)
    if run.state() == "finished":
        return RunStatus(role, name, str(run_dir), "done", epochs, epochs)
    holder = lock_holder(run.path)
    if holder is not None:
        job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
        return RunStatus(role, name, str(run_dir), "running", done, epochs,
                         f"host {holder.get('host', '?')} pid {holder.get('pid', '?')}{job}")
    failed = failure(run.path)
    if failed is not None:
        return RunStatus(role, name, str(run_dir), "failed", done, epochs,
                         failed.get("error", "unknown error"))
    if run.state() == "unfinished" and run.has_progress():
        return RunStatus(role, name, str(run_dir), "partial", done, epochs)
    return RunStatus(role, name, str(run_dir), "not started", done, epochs)


def plan_status(plan: Plan) -> list[RunStatus]:
    """Every run of the plan: trained teachers first, then the students."""
    rows = []
    for tid, job in plan.teachers.items():
        if not job.published:
            rows.append(run_status(job.config.output.run_dir, "teacher", tid,
                                   job.config.optim.epochs))
    runs_root = plan.out / "runs"
    for run in plan.runs:
        path = Path(run.config.output.run_dir)
        try:
            name = str(path.relative_to(runs_root))
        except ValueError:
            name = str(path)
        rows.append(run_status(path, "student", name, run.config.optim.epochs))
    return rows


def format_status(rows: list[RunStatus]) -> str:
    """One line per run that is not done, then the counts per state."""
    width = max((len(r.name) for r in rows), default=10)
    lines = []
    for row in rows:
        if row.state == "done":
            continue
        progress = f"epoch {row.epoch}/{row.epochs}"
        extra = f"  {row.detail}" if row.detail else ""
        lines.append(f"{row.role:<8} {row.name:<{width}}  {row.state:<11} {progress}{extra}")
    counts = {state: sum(r.state == state for r in rows) for state in STATES}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    if counts["done"] == len(rows):
        lines.append(f"all {len(rows)} runs done")
    else:
        lines.append(f"{len(rows)} runs: {summary}")
        if counts["failed"] or counts["partial"] or counts["not started"]:
            lines.append("the same bench command continues the partial and failed runs and "
                         "starts the others")
    return "\n".join(lines)
