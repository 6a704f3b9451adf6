"""Benchmark suites: one YAML file describes a whole matrix of runs.

A suite names the dataset, the training recipe, the teachers (trained by the suite or taken
from published checkpoints), which teacher set is distilled into which students, the
strategies compared, and the seeds. :func:`expand` turns it into plain
:class:`~multikd.train.config.RunConfig` objects, one per run, each with its own run directory::

    OUT/teachers/<teacher id>/                      one teacher (train-teacher layout)
    OUT/runs/<set>/<student>/student_s<seed>/       the student alone (kind: student)
    OUT/runs/<set>/<student>/<label>_s<seed>/       logits only
    OUT/runs/<set>/<student>/<label>+feat_s<seed>/  logits + features

Runs of one teacher set and one seed form a *lockstep group*: they share the data stream
and, when trained in lockstep, one teacher forward pass per batch.
The file format is documented in ``experiments/README.md``.

The suite's parts are in :mod:`multikd.bench.suite_spec`, reading a file in
:mod:`multikd.bench.suite_parse`; their names stay importable from here.
"""

from __future__ import annotations

import copy
from pathlib import Path

from multikd.bench.suite_parse import (  # noqa: F401  (re-exported: their old home)
    _flatten,
    check_strategies,
    load_suite,
    parse_suite,
    preset_path,
    source_text,
)
from multikd.bench.suite_spec import (  # noqa: F401  (likewise)
    NAME_RE,
    RESERVED_KEYS,
    SELF,
    STRATEGY_KEYS,
    SUITE_KEYS,
    TEACHER_KEYS,
    VARIANTS,
    LockstepGroup,
    Plan,
    StrategySpec,
    StudentRun,
    Suite,
    TeacherJob,
    TeacherSpec,
    run_label,
)
from multikd.errors import ConfigError
from multikd.plugins import loaded as loaded_plugins
from multikd.train.config import (
    PluginConfig,
    RunConfig,
    TeacherConfig,
    parse_assignment,
    resolve,
    set_value,
)


def _apply(config: RunConfig, values: dict, sets: list[str]) -> RunConfig:
    for key, value in _flatten(values).items():
        set_value(config, key, copy.deepcopy(value))
    for text in sets:
        key, value = parse_assignment(text)
        set_value(config, key, value, from_text=True)
    return config


def _teacher_recipe(suite: Suite, spec: TeacherSpec) -> dict:
    """Teacher training recipe: the suite recipe's optim/runtime <- teacher_recipe <- spec."""
    base = {k: v for k, v in suite.recipe.items() if k in ("optim", "runtime", "output")}
    merged = _merge(base, suite.teacher_recipe)
    return _merge(merged, spec.recipe)


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "synthetic":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def teacher_config(suite: Suite, spec: TeacherSpec, out: Path, sets: list[str] = ()) -> RunConfig:
    """The ``train-teacher`` config of a teacher the suite trains itself."""
    config = RunConfig(kind="teacher")
    data = suite.data
    if spec.synthetic:
        data = {**suite.data, "synthetic": {**suite.data.get("synthetic", {}), **spec.synthetic}}
    _apply(config, {"data": data, **_teacher_recipe(suite, spec)}, [])
    config.model.arch = spec.arch
    config.runtime.seed = spec.seed
    config.data.classes = spec.classes
    config.output.run_dir = str(out / "teachers" / spec.id)
    _apply(config, {}, sets)
    return resolve(config)


def expand(
    suite: Suite,
    out: str | Path,
    teachers_dir: str | Path | None = None,
    sets: list[str] = (),
) -> Plan:
    """Every run of the matrix as a resolved RunConfig, grouped for lockstep training.

    ``sets``: ``section.key=value`` overrides applied to every run (teachers and students).
    ``teachers_dir``: folder of published checkpoints; a teacher with ``published: FILE``
    then uses ``teachers_dir/FILE`` (an error if it is missing) instead of being trained.
    """
    check_strategies(suite)
    out = Path(out)
    sets = list(sets)
    jobs: dict[str, TeacherJob] = {}
    missing = []
    for tid, spec in suite.teachers.items():
        if spec.arch == SELF:  # nothing to train: each run's own student
            continue
        config = teacher_config(suite, spec, out, sets)
        if teachers_dir is not None and spec.published:
            path = Path(teachers_dir) / spec.published
            if not path.is_file():
                missing.append(str(path))
            jobs[tid] = TeacherJob(spec, config, str(path), published=True)
        else:
            checkpoint = str(Path(config.output.run_dir) / "checkpoint.pt")
            jobs[tid] = TeacherJob(spec, config, checkpoint, published=False)
    if missing:
        raise ConfigError(
            f"--teachers-dir {teachers_dir}: published checkpoint(s) not found: "
            f"{', '.join(missing)}. "
            "Put the files there (RepDistiller/mdistiller layout), or leave out --teachers-dir "
            "to train the teachers instead."
        )

    used = {tid for name, _ in suite.pairs for tid in suite.teacher_sets[name]}
    jobs = {tid: job for tid, job in jobs.items() if tid in used}
    groups = []
    for set_name in dict.fromkeys(name for name, _ in suite.pairs):
        students = [s for name, students in suite.pairs if name == set_name for s in students]
        ids = suite.teacher_sets[set_name]
        for fraction in suite.labeled_fractions or [None]:
            folder = set_name if fraction is None else f"{set_name}@labeled{fraction:g}"
            for seed in suite.seeds:
                runs = [
                    _student_run(suite, out, folder, ids, jobs, student, seed, strategy,
                                 variant, sets, fraction)
                    for student in students
                    for strategy, variant in _labels(suite)
                    if strategy is not None or fraction != 0  # no label: no student alone
                    if strategy is None or strategy.runs_on(set_name)
                ]
                trained = [t for t in ids if t in jobs]
                groups.append(LockstepGroup(folder, seed, trained, runs))
    return Plan(suite, out, jobs, groups, sets)


def _labels(suite: Suite) -> list[tuple[StrategySpec | None, str]]:
    cells: list[tuple[StrategySpec | None, str]] = [(None, "logits")] if suite.baseline else []
    return cells + [(s, v) for s in suite.strategies for v in (s.variants or suite.variants)]


def _student_run(
    suite, out, set_name, ids, jobs, student, seed, strategy, variant, sets, fraction=None
) -> StudentRun:
    label = run_label(strategy, variant)
    config = RunConfig(kind="student" if strategy is None else "distill")
    _apply(config, {"data": suite.data, **suite.recipe}, [])
    if fraction is not None:
        config.data.labeled_fraction = fraction
    config.model.arch = student
    config.runtime.seed = seed
    arch_dir = student.replace(":", "-").replace("/", "-")
    config.output.run_dir = str(out / "runs" / set_name / arch_dir / f"{label}_s{seed}")
    config.plugins = [PluginConfig(**record) for record in loaded_plugins()]
    if strategy is None:
        config.loss = type(config.loss)()
    else:
        config.teachers = [
            TeacherConfig(arch=SELF, name=t, self_from_epoch=suite.teachers[t].from_epoch)
            if t not in jobs else
            TeacherConfig(arch=jobs[t].spec.arch, checkpoint=jobs[t].checkpoint, name=t,
                          classes=jobs[t].spec.classes)
            for t in ids
        ]
        config.strategy.name = strategy.name
        config.strategy.params = copy.deepcopy(strategy.params)
        config.output.label = strategy.label
        if variant == "logits+feat":
            loss = {**suite.features, **strategy.loss}
            if isinstance(loss.get("student_feature"), dict):  # per student: its own tap
                loss["student_feature"] = loss["student_feature"].get(student)
            _apply(config, {"loss": loss}, [])
            if config.loss.gamma <= 0:
                raise ConfigError(
                    f"suite {suite.source}: the logits+feat variant needs "
                    "'features: {gamma: >0}' "
                    f"(gamma is {config.loss.gamma}); set the feature-loss weight there"
                )
        else:
            _apply(config, {"loss": strategy.loss}, [])
            config.loss.gamma = 0.0
    _apply(config, {}, sets)
    return StudentRun(resolve(config), set_name, student, label, seed)


def describe(plan: Plan) -> str:
    """A few lines on what the plan holds (for the CLI and logs)."""
    runs = plan.runs
    trained = [t for t, j in plan.teachers.items() if not j.published]
    published = [t for t, j in plan.teachers.items() if j.published]
    lines = [
        f"suite {plan.suite.name}: {len(runs)} student runs in {len(plan.groups)} lockstep groups "
        f"({len(plan.suite.seeds)} seeds), {len(plan.teachers)} teachers",
        f"  teachers trained here: {', '.join(trained) or 'none'}",
        f"  published teachers: {', '.join(published) or 'none'}",
    ]
    return "\n".join(lines)
