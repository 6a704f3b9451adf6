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
4. the tables, plots and ``report.html`` of :mod:`multikd.results.outputs` are written into
   ``OUT``.

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
from multikd.bench.suite import (
    Plan, Suite, TeacherJob, describe, expand, load_suite, source_text,
)
from multikd.bench.shards import (
    StudentUnit, student_units, take_shard, teacher_cost, teacher_units,
)
from multikd.bench.progress import PlanProgress
from multikd.bench.workers import run_units
from multikd.train.runlock import RunBusy, exclusive

log = logging.getLogger(__name__)

TEACHERS_FILE = "teachers.json"
SUITE_FILE = "suite.yaml"
TEACHERS_LOCK = ".teachers.json.lock"  # serialises the shards' updates of teachers.json
WAIT_FOR_TEACHER_S = 7 * 24 * 3600.0  # a shard waits for a teacher another shard trains
WAIT_POLL_S = 2.0


@dataclass
class BenchReport:
    """What one ``multikd bench`` call did."""

    out: Path
    teachers: dict[str, dict]
    trained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0
    shard: tuple[int, int] | None = None

    def text(self) -> str:
        lines = ["teachers (test accuracy, verified from their checkpoints):"]
        for tid, rec in self.teachers.items():
            acc, source = rec["test_acc"], rec["source"]
            lines.append(f"  {tid:<16} {rec['arch']:<14} {acc:6.2f}%  ({source})")
        lines.append(
            f"runs: {len(self.trained)} trained, {len(self.resumed)} resumed, "
            f"{len(self.skipped)} already finished  ({self.wall_time_s:.0f} s)"
            + (f"; shard {self.shard[0]}/{self.shard[1]}" if self.shard else "")
        )
        if self.busy:
            lines.append(f"{len(self.busy)} run(s) left to the other process writing them: "
                         + ", ".join(self.busy))
        lines.extend(f"wrote {p}" for p in self.outputs)
        if self.shard and not self.outputs:
            lines.append(f"tables: when every shard is done, the last one writes them (or run "
                         f"'multikd table {self.out}'; 'multikd bench ... --status' shows progress)")
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
    shard: tuple[int, int] | None = None,
    max_runs_per_job: int | None = None,
) -> BenchReport:
    """Run (or continue) every run of ``suite`` under ``out``; see the module docstring.

    ``data_root`` sets ``data.data_root`` of every run; ``sets`` are ``section.key=value``
    overrides for every run. ``results=False`` skips the table and plots. ``jobs``: local
    worker processes training teachers, and then lockstep groups (or runs), side by side
    (:mod:`multikd.bench.workers`; the same numbers as one after the other).

    ``shard=(I, N)`` runs only shard I of N of the plan (:mod:`multikd.bench.shards`): its
    share of the teachers, then its share of the student units, first training (or waiting
    for the shard that trains) any teacher those need. Runs another process is writing are
    left to it (``report.busy``). The shard that finds every run finished writes the tables.
    ``max_runs_per_job`` cuts lockstep groups into slices of at most that many runs.
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
        report = _run_plan(plan, lockstep, results, jobs, threads, shard, max_runs_per_job)
    finally:
        torch.set_num_threads(saved)
    report.wall_time_s = time.perf_counter() - t0
    return report


def _run_plan(plan: Plan, lockstep: bool, results: bool, jobs: int = 1,
              threads: int | None = None, shard: tuple[int, int] | None = None,
              max_runs_per_job: int | None = None) -> BenchReport:
    log.info("%s", describe(plan))
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    record_suite(plan)

    trained_teachers = [job.config for job in teacher_units(plan)]
    for config in trained_teachers + [run.config for run in plan.runs]:
        check_same_experiment(config)

    report = BenchReport(out=out, teachers={}, shard=shard)
    units = student_units(plan, lockstep, max_runs_per_job)
    mine_teachers = teacher_units(plan)
    if shard is not None:
        index, count = shard
        units = take_shard(units, index, count, lambda u: u.name, lambda u: u.cost)
        mine_teachers = take_shard(mine_teachers, index, count,
                                   lambda j: j.config.output.run_dir, teacher_cost)
        log.info("shard %d/%d: %d teacher(s), %d student unit(s) of %d runs", index, count,
                 len(mine_teachers), len(units), sum(len(u.runs) for u in units))
    configs = [job.config for job in mine_teachers]
    student_configs = [[run.config for run in u.runs] for u in units]
    progress = PlanProgress(len(configs) + sum(map(len, student_configs)),
                            _epochs_to_train(configs + sum(student_configs, [])))

    def teacher_done(i: int, state: str) -> None:
        progress.unit_done(f"teacher {configs[i].output.run_dir}", 1,
                           _epochs_to_train([configs[i]], {configs[i].output.run_dir: state}))

    for config, state in zip(configs, run_units([(_run_alone, (c,)) for c in configs],
                                                jobs, threads, teacher_done)):
        _note(report, config, state)
    needed = list(dict.fromkeys(t for u in units for t in u.teacher_ids))
    for tid in needed:  # another shard's or process's teacher: wait for it, or train it here
        job = plan.teachers[tid]
        if not job.published and RunDir(job.config.output.run_dir).state() != "finished":
            _note(report, job.config, _run_alone(job.config, wait_s=WAIT_FOR_TEACHER_S))
    report.teachers = verify_teachers(plan, needed if shard is not None else None)

    def unit_done(i: int, before: dict[str, str]) -> None:
        progress.unit_done(units[i].name, len(student_configs[i]),
                           _epochs_to_train(student_configs[i], before))

    work = [(_run_group if u.lockstep else _run_one, (u,)) for u in units]
    for unit, before in zip(units, run_units(work, jobs, threads, unit_done)):
        for run in unit.runs:
            _note(report, run.config, before[run.config.output.run_dir])

    finished = all(RunDir(r.config.output.run_dir).state() == "finished" for r in plan.runs)
    if results and (shard is None or finished):
        from multikd.results.outputs import write_results

        report.outputs = write_results(out, out)
    return report


def _epochs_to_train(configs: list[RunConfig], states: dict[str, str] | None = None) -> int:
    """Epochs of the runs of ``configs`` not finished (in ``states``, each run's state before
    it was trained, default its state now; a run another process wrote counts none)."""
    def state(config):
        run_dir = config.output.run_dir
        return states[run_dir] if states is not None else RunDir(run_dir).state()

    return sum(c.optim.epochs for c in configs if state(c) in ("empty", "unfinished"))


def _run_group(unit: StudentUnit) -> dict[str, str]:
    """Train, resume or skip one lockstep group; each run's state before this call
    (``"busy"`` for every run when another process writes one of them)."""
    from multikd.train.lockstep import train_lockstep

    configs = [run.config for run in unit.runs]
    log.info("%s: %d runs in lockstep", unit.name, len(configs))
    before = {c.output.run_dir: RunDir(c.output.run_dir).state() for c in configs}
    try:
        train_lockstep(configs)
    except RunBusy as err:
        log.warning("%s: skipped, %s", unit.name, err)
        return {run_dir: "busy" for run_dir in before}
    return before


def _run_one(unit: StudentUnit) -> dict[str, str]:
    """The single run of a unit made without lockstep."""
    config = unit.runs[0].config
    return {config.output.run_dir: _run_alone(config)}


def make_plan(
    suite: str | Path | Suite,
    out: str | Path,
    data_root: str | None = None,
    teachers_dir: str | Path | None = None,
    sets: list[str] = (),
) -> Plan:
    """The expanded suite (``data_root`` becomes a ``data.data_root`` override).

    A teacher cache (``runtime.teacher_cache`` in the suite's recipe or a ``--set``) goes to
    the runs it can serve, one directory for the whole suite (:func:`share_teacher_cache`).
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    sets = ([f"data.data_root={data_root}"] if data_root else []) + list(sets)
    suite, cache, expanded = _without_teacher_cache(suite, sets)
    plan = expand(suite, Path(out), teachers_dir=teachers_dir, sets=expanded)
    plan.sets = sets
    if cache:
        share_teacher_cache(plan, cache)
    return plan


def _without_teacher_cache(suite: Suite, sets: list[str]) -> tuple[Suite, str, list[str]]:
    """``(suite, directory, sets)`` with ``runtime.teacher_cache`` taken out of the recipe
    and the overrides (the last ``--set`` wins over the recipe): expanding it into a run
    with features would be an error, so :func:`share_teacher_cache` places it after."""
    from multikd.train.config import parse_assignment

    runtime = dict(suite.recipe.get("runtime") or {})
    cache = str(runtime.pop("teacher_cache", "") or "")
    if "teacher_cache" in (suite.recipe.get("runtime") or {}):
        suite = dataclasses.replace(suite, recipe={**suite.recipe, "runtime": runtime})
    rest = []
    for text in sets:
        key, value = parse_assignment(text)
        if key == "runtime.teacher_cache":
            cache = value
        else:
            rest.append(text)
    return suite, cache, rest


def share_teacher_cache(plan: Plan, directory: str) -> None:
    """Give the teacher cache ``directory`` to every run of ``plan`` it can serve.

    The cache stores teacher logits, so it serves a shared teacher pass only when no run of
    it reads features or has a self-teacher: per (teacher set, seed) lockstep group, each
    part of :func:`~multikd.train.lockstep.split_by_taps` (one teacher pass) whose runs all
    distil logits only (or train the student alone) gets it, every run of that part (the
    stream's keys must agree); the others run their teachers live, as without a cache (with
    ``--no-lockstep`` too, so a run keeps its config whichever way it is trained). The
    teachers' own training runs get it as a ``--set`` gives it (they have no teachers: it
    does nothing there). One directory for the suite: its tables are keyed by the teachers'
    weights and images, so every seed, strategy and labelled fraction of a teacher set
    shares them (:mod:`multikd.bench.cache_worth` gives the expected saving).
    """
    from multikd.bench.cache_worth import cacheable, plan_units
    from multikd.train.cache_worth import saved_passes
    from multikd.train.lockstep import split_by_taps

    for job in plan.teachers.values():
        job.config.runtime.teacher_cache = directory
    for group in plan.groups:
        for part in split_by_taps([run.config for run in group.runs]):
            if cacheable(part):
                for config in part:
                    config.runtime.teacher_cache = directory
    log.info("teacher cache %s: %s", directory, saved_passes(plan_units(plan)).text())


def _note(report: BenchReport, config: RunConfig, state_before: str) -> None:
    target = {"empty": report.trained, "unfinished": report.resumed, "finished": report.skipped,
              "busy": report.busy}
    target[state_before].append(config.output.run_dir)


def record_suite(plan: Plan) -> None:
    """``OUT/suite.yaml``: the suite file this output folder was made from, and the overrides."""
    source = Path(plan.suite.source)
    text = source.read_text() if source.is_file() else ""
    header = f"# multikd bench suite {plan.suite.name} (from {source_text(str(source))})\n"
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


def _run_alone(config: RunConfig, wait_s: float = 0.0) -> str:
    """Train, resume or skip one run with the engine; its state before this call, or
    ``"busy"`` when another process writes it (after waiting up to ``wait_s`` seconds for
    that process to end; a run it left unfinished is then continued here)."""
    from multikd.train import engine

    run_dir = config.output.run_dir
    deadline = time.monotonic() + wait_s
    while True:
        state = RunDir(run_dir).state()
        try:
            if state == "finished":
                log.info("%s: finished, skipped", run_dir)
            elif state == "unfinished":
                log.info("%s: unfinished, resuming", run_dir)
                engine.resume(run_dir, device=config.runtime.device, quiet=config.output.quiet)
            else:
                log.info("%s: training", run_dir)
                engine.train(config)
            return state
        except RunBusy as err:
            if time.monotonic() >= deadline:
                log.warning("%s: skipped, %s", run_dir, err)
                return "busy"
            log.info("%s is being written by another process; waiting for it", run_dir)
            time.sleep(WAIT_POLL_S)


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


def verify_teachers(plan: Plan, tids: list[str] | None = None) -> dict[str, dict]:
    """Measure each teacher's test accuracy (of ``tids``, default all), check it, and record
    it in ``OUT/teachers.json`` (merged with the records other shards wrote there)."""
    tolerance = plan.suite.acc_tolerance
    records = {}
    for tid, job in plan.teachers.items():
        if tids is not None and tid not in tids:
            continue
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
    with exclusive(plan.out / TEACHERS_LOCK, wait_s=60, poll_s=0.2):
        path = plan.out / TEACHERS_FILE
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged = {t: merged[t] for t in plan.teachers if t in merged} | records
        merged = {t: merged[t] for t in plan.teachers if t in merged}  # the suite's order
        atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return records
