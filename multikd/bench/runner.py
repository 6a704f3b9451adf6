"""``multikd bench``: run a suite's whole matrix, resumably, then tabulate and plot it.

Order of work (each step skips what is already done, so an interrupted sweep continues
where it stopped when the same command is run again):

1. teachers: each teacher the suite trains is a ``train-teacher`` run under
   ``OUT/teachers/<id>/`` (trained if missing, resumed if unfinished); published ones are
   read from ``--teachers-dir``;
2. verification: every teacher's test accuracy is measured from its checkpoint before any
   student uses it, compared with what it should be (its own run's last test accuracy, or
   the suite's ``expected_acc`` for a published file, within ``acc_tolerance`` points) and
   recorded in ``OUT/teachers.json``;
3. students: lockstep groups (one teacher set, one seed; see :mod:`multikd.train.lockstep`) or,
   with ``lockstep=False``, one engine run after the other. Finished runs are skipped,
   unfinished ones resumed from their last checkpoint;
4. the table and plots of :mod:`multikd.bench.results` are written into ``OUT``.

A run directory that holds a different experiment than the suite now asks for (the suite
or ``--set`` changed) is an error, never silently mixed into the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from multikd.train.config import RunConfig, config_hash, to_yaml
from multikd.errors import ConfigError, TrainingError
from multikd.train.runio import RunDir, atomic_write_text
from multikd.bench.suite import Plan, Suite, TeacherJob, describe, expand, load_suite
from multikd.bench.workers import run_units

log = logging.getLogger(__name__)

TEACHERS_FILE = "teachers.json"
SUITE_FILE = "suite.yaml"


@dataclass
class BenchReport:
    """What one ``multikd bench`` call did."""

    out: Path
    teachers: dict[str, dict]
    trained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0

    def text(self) -> str:
        lines = ["teachers (test accuracy, verified from their checkpoints):"]
        for tid, rec in self.teachers.items():
            acc, source = rec["test_acc"], rec["source"]
            lines.append(f"  {tid:<16} {rec['arch']:<14} {acc:6.2f}%  ({source})")
        lines.append(
            f"runs: {len(self.trained)} trained, {len(self.resumed)} resumed, "
            f"{len(self.skipped)} already finished  ({self.wall_time_s:.0f} s)"
        )
        lines.extend(f"wrote {p}" for p in self.outputs)
        return "\n".join(lines)


def run_bench(
    suite: str | Path | Suite,
    out: str | Path,
    data_root: str | None = None,
    teachers_dir: str | Path | None = None,
    lockstep: bool = True,
    sets: list[str] = (),
    results: bool = True,
    jobs: int = 1,
) -> BenchReport:
    """Run (or continue) every run of ``suite`` under ``out``; see the module docstring.

    ``data_root`` sets ``data.data_root`` of every run; ``sets`` are ``section.key=value``
    overrides for every run. ``results=False`` skips the table and plots. ``jobs``: local
    worker processes training teachers, and then lockstep groups (or runs), side by side
    (:mod:`multikd.bench.workers`; the same numbers as one after the other).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    t0 = time.perf_counter()
    plan = make_plan(suite, out, data_root, teachers_dir, sets)
    threads = plan.suite.cpu_threads
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = _run_plan(plan, lockstep, results, jobs, threads)
    finally:
        torch.set_num_threads(saved)
    report.wall_time_s = time.perf_counter() - t0
    return report


def _run_plan(plan: Plan, lockstep: bool, results: bool, jobs: int = 1,
              threads: int | None = None) -> BenchReport:
    log.info("%s", describe(plan))
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    _record_suite(plan)

    trained_teachers = [job.config for job in plan.teachers.values() if not job.published]
    for config in trained_teachers + [run.config for run in plan.runs]:
        check_same_experiment(config)

    report = BenchReport(out=out, teachers={})
    states = run_units([(_run_alone, (config,)) for config in trained_teachers], jobs, threads)
    for config, state in zip(trained_teachers, states):
        _note(report, config, state)
    report.teachers = verify_teachers(plan)

    units, unit_configs = [], []
    for group in plan.groups:
        configs = [run.config for run in group.runs]
        if lockstep:
            units.append((_run_group, (configs, group.teacher_set, group.seed)))
            unit_configs.append(configs)
        else:
            units += [(_run_alone, (config,)) for config in configs]
            unit_configs += [[config] for config in configs]
    for configs, before in zip(unit_configs, run_units(units, jobs, threads)):
        befores = before if isinstance(before, dict) else {configs[0].output.run_dir: before}
        for config in configs:
            _note(report, config, befores[config.output.run_dir])

    if results:
        from multikd.bench.outputs import write_results

        report.outputs = write_results(out, out)
    return report


def _run_group(configs: list[RunConfig], teacher_set: str, seed: int) -> dict[str, str]:
    """Train, resume or skip one lockstep group; each run's state before this call."""
    from multikd.train.lockstep import train_lockstep

    log.info("teacher set %s, seed %d: %d runs in lockstep", teacher_set, seed, len(configs))
    before = {c.output.run_dir: RunDir(c.output.run_dir).state() for c in configs}
    train_lockstep(configs)
    return before


def make_plan(
    suite: str | Path | Suite,
    out: str | Path,
    data_root: str | None = None,
    teachers_dir: str | Path | None = None,
    sets: list[str] = (),
) -> Plan:
    """The expanded suite (``data_root`` becomes a ``data.data_root`` override)."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    sets = ([f"data.data_root={data_root}"] if data_root else []) + list(sets)
    return expand(suite, Path(out), teachers_dir=teachers_dir, sets=sets)


def _note(report: BenchReport, config: RunConfig, state_before: str) -> None:
    target = {"empty": report.trained, "unfinished": report.resumed, "finished": report.skipped}
    target[state_before].append(config.output.run_dir)


def _record_suite(plan: Plan) -> None:
    """``OUT/suite.yaml``: the suite file this output folder was made from, and the overrides."""
    source = Path(plan.suite.source)
    text = source.read_text() if source.is_file() else ""
    header = f"# multikd bench suite {plan.suite.name} (from {source})\n"
    if plan.sets:
        header += "# overrides: " + " ".join(f"--set {s}" for s in plan.sets) + "\n"
    atomic_write_text(plan.out / SUITE_FILE, header + text)


def _experiment_key(config: RunConfig) -> str:
    """Hash of what defines the experiment: not where it runs or writes (data_root, device)."""
    data = RunConfig.from_dict(config.to_dict())
    data.data.data_root = None
    data.data.workers = 0
    data.runtime.device = "auto"
    return config_hash(data)


def check_same_experiment(config: RunConfig) -> None:
    """An existing run directory must hold the run ``config`` describes."""
    run = RunDir(config.output.run_dir)
    if run.state() == "empty":
        return
    saved = run.read_config()
    if _experiment_key(saved) != _experiment_key(config):
        raise ConfigError(
            f"{run.path} holds a different run than the suite now asks for (its config.yaml "
            "differs: the suite file or --set changed since it ran). Use a new --out folder, "
            f"or delete {run.path} to run it again. Expected config:\n{to_yaml(config)}"
        )


def _run_alone(config: RunConfig) -> str:
    """Train, resume or skip one run with the engine; its state before this call."""
    from multikd.train import engine

    run_dir = config.output.run_dir
    state = RunDir(run_dir).state()
    if state == "finished":
        log.info("%s: finished, skipped", run_dir)
    elif state == "unfinished":
        log.info("%s: unfinished, resuming", run_dir)
        engine.resume(run_dir, device=config.runtime.device, quiet=config.output.quiet)
    else:
        log.info("%s: training", run_dir)
        engine.train(config)
    return state


def _measured_test_acc(job: TeacherJob, synthetic: dict | None = None) -> float:
    """Test accuracy of ``job``'s checkpoint on its own data, or on the synthetic data of
    options ``synthetic`` (the students' data of a teacher trained on another domain)."""
    from multikd.train import engine

    d = job.config.data
    if synthetic is not None:
        d = dataclasses.replace(d, synthetic=synthetic)
    result = engine.evaluate_checkpoint(
        job.spec.arch,
        job.checkpoint,
        d.dataset,
        data_root=d.data_root,
        synthetic=d.synthetic or None,
        seed=job.config.runtime.seed,
        device=job.config.runtime.device,
    )
    return float(result["test_acc"])


def verify_teachers(plan: Plan) -> dict[str, dict]:
    """Measure each teacher's test accuracy, check it, record it in ``OUT/teachers.json``."""
    tolerance = plan.suite.acc_tolerance
    records = {}
    for tid, job in plan.teachers.items():
        acc = _measured_test_acc(job)
        if job.published:
            expected, source = job.spec.expected_acc, "published"
            what = f"the suite's expected_acc for {job.checkpoint}"
        else:
            summary = RunDir(job.config.output.run_dir).summary() or {}
            expected, source = summary.get("last_test_acc"), "trained"
            what = f"the last test accuracy in {job.config.output.run_dir}/summary.json"
        if expected is not None and abs(acc - expected) > tolerance:
            raise TrainingError(
                f"teacher {tid} ({job.spec.arch}) scores {acc:.2f}% on the test set, but "
                f"{what} is {expected:.2f}% (allowed gap {tolerance} points). The checkpoint "
                "does not hold the expected model, or the dataset differs; check the file "
                "and --data-root before distilling from it"
            )
        records[tid] = {
            "arch": job.spec.arch,
            "checkpoint": job.checkpoint,
            "source": source,
            "test_acc": acc,
            "expected_acc": expected,
        }
        log.info("teacher %s (%s): %.2f%% test accuracy, verified", tid, job.spec.arch, acc)
        if job.spec.synthetic:  # trained on another domain: what the students see counts
            on_students = _measured_test_acc(job, plan.suite.data.get("synthetic", {}))
            records[tid].update(own_domain_test_acc=acc, own_domain=job.spec.synthetic,
                                test_acc=on_students)
            log.info("teacher %s: %.2f%% on its own domain %s, %.2f%% on the students' test "
                     "set", tid, acc, job.spec.synthetic, on_students)
    atomic_write_text(plan.out / TEACHERS_FILE, json.dumps(records, indent=2) + "\n")
    return records
