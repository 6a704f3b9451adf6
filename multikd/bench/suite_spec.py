"""What a benchmark suite is made of: the entries of a suite file (:class:`TeacherSpec`,
:class:`StrategySpec`, :class:`Suite`) and the plan they expand to (:class:`TeacherJob`,
:class:`StudentRun`, :class:`LockstepGroup`, :class:`Plan`). :mod:`multikd.bench.suite_parse`
reads a file into a Suite, :mod:`multikd.bench.suite` expands it into a Plan."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from multikd.results.targets import Target
from multikd.train.config import RunConfig

VARIANTS = ("logits", "logits+feat")
"""Distillation variants: logits only (feature loss off), logits + features."""
SUITE_KEYS = {
    "name": "suite name (used in logs)",
    "description": "free text",
    "data": "data section of every run (dataset, data_root, val_size, synthetic, workers)",
    "recipe": "config sections shared by every run (optim, loss, runtime, output)",
    "teacher_recipe": "config sections for training teachers (default: recipe's optim/runtime)",
    "features": "loss keys of the logits+feat variant (gamma, student_feature, ...)",
    "teachers": "teacher id -> {arch, seed, published, expected_acc, recipe, synthetic, "
    "classes}",
    "teacher_sets": "set name -> list of teacher ids",
    "pairs": "list of {teachers: SET, students: [ARCH, ...]}",
    "strategies": "list of strategy names or {name, params, label, loss, variants, "
    "teacher_sets}",
    "variants": f"subset of {list(VARIANTS)} (default: both)",
    "baseline": "also train each student alone (default: true)",
    "seeds": "list of seeds (default: [0])",
    "acc_tolerance": "allowed gap, in accuracy points, between a teacher's measured and "
    "expected test accuracy (default 1.0)",
    "cpu_threads": "intra-op CPU threads while the suite runs (torch.set_num_threads; "
    "default: torch's choice)",
    "targets": "published numbers: list of {teachers: SET, student: ARCH, label: LABEL, "
    "top1: %, epoch: best|last, runs: N, source: TEXT} (multikd table compares them)",
    "plugins": "list of plugin files (paths relative to the suite file) whose strategies and "
    "losses the suite may name, as with --plugin",
    "labeled_fractions": "list of data.labeled_fraction values: every teacher set's runs "
    "repeated for each, in folders SET@labeledF (the student alone learns from that labelled "
    "part; the teachers are trained on all labels; at 0 it has nothing to learn from and is "
    "left out)",
}
TEACHER_KEYS = ("arch", "seed", "published", "expected_acc", "recipe", "synthetic",
                 "from_epoch", "classes")
SELF = "self"
"""``arch: self`` (with ``from_epoch: E``): the student itself, a frozen snapshot from epoch E."""
STRATEGY_KEYS = ("name", "params", "label", "loss", "variants", "teacher_sets")
RESERVED_KEYS = ("kind", "model", "teachers", "strategy", "runtime.seed", "output.run_dir")
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class TeacherSpec:
    """One teacher: trained by the suite (``arch``, ``seed``, ``recipe``) or published."""

    id: str
    arch: str
    seed: int = 0
    published: str | None = None
    expected_acc: float | None = None
    recipe: dict = field(default_factory=dict)
    synthetic: dict = field(default_factory=dict)
    """Options of the synthetic dataset this teacher trains on, over the suite's: a teacher
    from another domain with the same label space (e.g. ``{seed: 1}``: other class
    patterns), whose predictions on the students' images are confidently wrong."""
    from_epoch: int | None = None
    """For ``arch: self``: the epoch from which the student's snapshot teaches it."""
    classes: list[int] | None = None
    """A teacher of part of the classes (``classes: 0-49`` or a list): trained on those
    only (``data.classes``), placed there in the students' label space (``teachers[].classes``)."""


@dataclass
class StrategySpec:
    """One strategy entry: its column ``label``, registered ``name`` and ``params``, loss
    keys of its own runs (``loss``, over the recipe's and the features'), the
    ``variants`` it runs in (None: the suite's) and the ``teacher_sets`` it runs on
    (None: every set; a suite of single-teacher rows and a multi-teacher cross runs each
    column on its own sets only)."""

    label: str
    name: str
    params: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    variants: list[str] | None = None
    teacher_sets: list[str] | None = None

    def runs_on(self, teacher_set: str) -> bool:
        """Whether this strategy's runs distil from ``teacher_set``."""
        return self.teacher_sets is None or teacher_set in self.teacher_sets


@dataclass
class Suite:
    name: str
    source: str
    data: dict
    recipe: dict
    teacher_recipe: dict
    features: dict
    teachers: dict[str, TeacherSpec]
    teacher_sets: dict[str, list[str]]
    pairs: list[tuple[str, list[str]]]
    strategies: list[StrategySpec]
    variants: list[str]
    baseline: bool
    seeds: list[int]
    acc_tolerance: float = 1.0
    labeled_fractions: list[float] | None = None
    description: str = ""
    cpu_threads: int | None = None
    plugins: list[dict] = field(default_factory=list)
    """``{path, sha256}`` of the suite's own ``plugins:`` files (loaded when it was read)."""
    targets: list[Target] = field(default_factory=list)
    """Published numbers the tables compare the runs with (:mod:`multikd.results.targets`)."""


@dataclass
class TeacherJob:
    """A teacher the suite needs: its training config, or the published file to use."""

    spec: TeacherSpec
    config: RunConfig
    checkpoint: str
    published: bool


@dataclass
class StudentRun:
    """One student run of the matrix and the coordinates it fills in the table."""

    config: RunConfig
    teacher_set: str
    student: str
    label: str
    seed: int


@dataclass
class LockstepGroup:
    """Runs of one teacher set and seed: same data stream, shared teacher pass."""

    teacher_set: str
    seed: int
    teacher_ids: list[str]
    runs: list[StudentRun]


@dataclass
class Plan:
    suite: Suite
    out: Path
    teachers: dict[str, TeacherJob]
    groups: list[LockstepGroup]
    sets: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[StudentRun]:
        return [run for group in self.groups for run in group.runs]


def run_label(strategy: StrategySpec | None, variant: str) -> str:
    """Table column of a run: ``student``, ``<label>`` or ``<label>+feat``."""
    if strategy is None:
        return "student"
    return strategy.label + ("+feat" if variant == "logits+feat" else "")
