"""``experiments/cifar100/feature-zoo.yaml`` and the README's feature-loss table (issue 36).

The suite: every cell's config resolves (its feature loss is registered, takes its
parameters, and sits at its reference γ with the recipe its row claims), every feature module
builds on the maps its student and teachers give (the taps resolve and the shapes pair up),
and every target cites a source whose number is the cell of the published table it names
(``tests/reference/published_tables.md``, verbatim copies). Nothing is trained.

The README: every registered feature loss is a row of its feature-loss table, with the
registry's reference γ, weighting granularity, reads and parameters.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
import torch

from multikd.bench.suite import expand, load_suite
from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY,
    FeatureSetup,
    is_hint,
    loss_info,
    tap_names,
)
from multikd.method.feature_term import feature_module_problems
from multikd.method.strategies import create_strategy
from multikd.models import create_model
from multikd.models.taps import FeatureTap

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "experiments" / "cifar100" / "feature-zoo.yaml"
TABLES = REPO / "tests" / "reference" / "published_tables.md"
SINGLE = ("r32x4", "vgg13")           # the single-teacher sets
CROSS = "hetero"                      # the gu2023 pool
STRATEGIES = ("uniform", "ca-mkd", "ce-filter")
CROSS_LOSSES = ("-at+feat", "-crd+feat", "-reviewkd+feat")
FEATURE_ROWS = ("fitnet", "at", "nst", "pkt", "sp", "rkd", "vid", "crd", "ofd", "reviewkd")
NO_TARGET = {"ofd+feat", "reviewkd+feat"}  # no number in RepDistiller's, ReviewKD's or
#                                            mdistiller's README (the suite's header)
TRAIN_SIZE = 50_000                   # CIFAR-100's training set (CRD's memory banks)


@functools.lru_cache(maxsize=1)
def _plan():
    return expand(load_suite(SUITE), "/tmp/unused")


def _runs(teacher_set=None):
    return [r for r in _plan().runs if r.seed == 0
            and (teacher_set is None or r.teacher_set == teacher_set)]


# --------------------------------------------------------------------------- the cells
def test_the_matrix_is_the_single_teacher_rows_and_the_cross():
    cells = {(r.teacher_set, r.student, r.label) for r in _runs()}
    rows = {"student", "kd", *(f"{name}+feat" for name in FEATURE_ROWS)}
    assert cells == {
        *{("r32x4", "resnet8x4", label) for label in rows | {"dkd"}},
        *{("vgg13", "vgg8", label) for label in rows | {"dkd-beta6"}},
        *{(CROSS, student, label)
          for student in ("vgg8", "resnet8x4", "wrn_16_2", "MobileNetV2")
          for label in ("student", *(f"{strategy}{loss}" for strategy in STRATEGIES
                                     for loss in ("", *CROSS_LOSSES)))},
    }
    assert len(_plan().runs) == 3 * len(cells)  # seeds 0, 1, 2


def test_single_teacher_rows_are_mdistillers_recipe_at_each_reference_gamma():
    for run in _runs("r32x4") + _runs("vgg13"):
        cfg = run.config
        o = cfg.optim
        assert (o.epochs, o.batch_size, o.lr, o.momentum, o.weight_decay) == (
            240, 64, 0.05, 0.9, 5.0e-4), run.label
        assert (o.schedule, list(o.milestones), o.lr_decay) == ("multistep", [150, 180, 210], 0.1)
        if run.label == "student":
            continue
        loss = cfg.loss
        cfg.loss.check()
        assert [t.name for t in cfg.teachers] == [run.teacher_set.replace("r32x4", "resnet32x4")]
        assert cfg.strategy.name == "uniform"
        if run.label == "kd":
            assert (loss.alpha, loss.beta, loss.gamma, loss.logit_loss) == (0.1, 0.9, 0.0, "kd")
        elif run.label.startswith("dkd"):
            beta = 8.0 if run.student == "resnet8x4" else 6.0
            assert loss.logit_loss == "dkd" and loss.gamma == 0.0
            assert loss.logit_params == {"alpha": 1.0, "beta": beta, "warmup": 20}
        else:  # CE + gamma * feature loss, no KD term (mdistiller's feature distillers)
            name = run.label.removesuffix("+feat")
            assert (loss.alpha, loss.beta) == (1.0, 0.0), run.label
            if name == "fitnet":  # mdistiller CFG.FITNET: hint layer 2, ConvReg, weight 100
                assert (loss.feature_loss, loss.gamma, loss.feature_stage, loss.adapter) == (
                    "mse", 100.0, 2, "convreg")
            else:
                assert loss.feature_loss == name
                assert loss.gamma == loss_info(name)["reference_gamma"], name
            FEATURE_LOSS_REGISTRY.check_params(loss.feature_loss, dict(loss.feature_params))


def test_the_cross_is_kd_and_kd_plus_each_feature_module_per_strategy():
    for run in _runs(CROSS):
        cfg = run.config
        assert cfg.optim.lr == (0.01 if run.student == "MobileNetV2" else 0.05)
        if run.label == "student":
            continue
        assert [t.name for t in cfg.teachers] == ["vgg13", "resnet32x4", "wrn_40_2"]
        cfg.loss.check()
        assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.temperature) == (1.0, 1.0, 4.0)
        feature = next((s for s in CROSS_LOSSES if run.label.endswith(s)), None)
        strategy = run.label.removesuffix(feature or "")
        assert cfg.strategy.name == strategy
        if strategy == "ce-filter":  # gu2023.yaml's parameters
            assert cfg.strategy.params == {"margin": 0.0, "tau": 1.0, "granularity": "batch"}
        if feature is not None:
            name = feature[1:].removesuffix("+feat")
            assert (cfg.loss.feature_loss, cfg.loss.gamma) == (
                name, loss_info(name)["reference_gamma"])
            assert cfg.loss.feature_weights == "strategy"  # ca-mkd's teacher-head resolved
            feature_module_problems(create_strategy(cfg.strategy.name, **cfg.strategy.params),
                                    cfg.loss.feature_loss, cfg.loss.feature_weights)
        else:
            assert cfg.loss.gamma == 0.0


# --------------------------------------------------------------------------- the taps
@functools.cache
def _model(arch: str):
    return create_model(arch, num_classes=100).eval()


@functools.cache
def _maps(arch: str, reads: str) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes of the maps a loss that ``reads`` taps on ``arch`` (32x32 input)."""
    model = _model(arch)
    with torch.no_grad(), FeatureTap(model, tap_names(model, reads, arch)) as tap:
        _, maps = tap(torch.zeros(1, 3, 32, 32))
    return tuple(tuple(m.shape[1:]) for m in maps.values())


def _modules(name: str, params: dict, student: str, teachers: list[str]):
    """Feature loss ``name``'s module per teacher, built as the distiller builds it."""
    info = loss_info(name)
    s_reads, t_reads = info["reads"], info.get("teacher_reads") or info["reads"]
    labels = torch.randint(0, 100, (TRAIN_SIZE,), generator=torch.Generator().manual_seed(0))
    return [
        FEATURE_LOSS_REGISTRY[name].build(FeatureSetup(
            _model(student), _model(t), list(_maps(student, s_reads)), list(_maps(t, t_reads)),
            labels), **params)
        for t in teachers
    ]


def _hint_taps(run) -> list[tuple[int, ...]]:
    loss = run.config.loss
    archs = [run.student] + [t.arch for t in run.config.teachers]
    out = []
    for arch in archs:
        model = _model(arch)
        with torch.no_grad(), FeatureTap(model, [model.feature_names[loss.feature_stage]]) as tap:
            _, maps = tap(torch.zeros(1, 3, 32, 32))
        out.append(tuple(next(iter(maps.values())).shape[1:]))
    return out


@pytest.mark.slow  # builds every cell's models; test_one_cross_cell_builds_end_to_end is fast
def test_every_feature_cell_builds_on_its_models_taps():
    built = set()
    for run in _runs():
        loss = run.config.loss
        if run.config.kind != "distill" or loss.gamma == 0:
            continue
        teachers = [t.arch for t in run.config.teachers]
        if is_hint(loss.feature_loss):  # FitNet: layer 2 on both sides, ConvReg between
            assert _hint_taps(run) in ([(128, 16, 16)] * 2, [(256, 8, 8), (256, 8, 8)]), run
            continue
        key = (loss.feature_loss, run.student, tuple(teachers))
        if key not in built:
            modules = _modules(loss.feature_loss, dict(loss.feature_params), run.student, teachers)
            assert len(modules) == len(teachers)
            built.add(key)
    assert len(built) == 2 * 9 + 3 * 4  # nine feature modules per pair; AT, CRD and ReviewKD
    # for each cross student


def test_one_cross_cell_builds_end_to_end():
    """The distiller's own path (taps, dry pass, modules, strategy checks) for one cell."""
    from multikd.train.build import build_learner

    run = next(r for r in _runs(CROSS) if r.label == "ce-filter-crd+feat"
               and r.student == "resnet8x4")
    cfg = copy.deepcopy(run.config)
    for t in cfg.teachers:
        t.checkpoint = None  # random weights: only the shapes matter here
    labels = torch.randint(0, 100, (TRAIN_SIZE,), generator=torch.Generator().manual_seed(0))
    learner = build_learner(cfg, 100, train_labels=labels)
    modules = learner.module.feature_modules
    assert len(modules) == 3 and all(m.n_data == TRAIN_SIZE for m in modules)


def test_at_and_reviewkd_pair_the_pools_different_stage_counts():
    """vgg13 has one stage more than resnet32x4 and wrn_40_2: AT reads the first stages of
    each (mdistiller's zip), ReviewKD the deepest levels (the pooled vectors paired)."""
    suite = load_suite(SUITE)
    archs = [suite.teachers[t].arch for t in suite.teacher_sets[CROSS]]
    at = _modules("at", {}, "resnet8x4", archs)
    review = _modules("reviewkd", {}, "resnet8x4", archs)
    assert [len(m.teacher_shapes) for m in at] == [4, 3, 3]
    assert [m.levels for m in review] == [4, 4, 4]  # resnet8x4: 3 stages + the pooled vector


# --------------------------------------------------------------------------- the targets
def _tables() -> dict[str, dict[tuple[str, str], dict[str, str]]]:
    """``{"repdistiller" | "mdistiller": {(teacher, student): {row: cell}}}`` from the
    verbatim copies, architecture names lower-cased with ``-`` as ``_``."""
    text = TABLES.read_text()
    out = {}
    for key, heading in (("repdistiller", "## RepDistiller"), ("mdistiller", "## mdistiller")):
        section = text[text.index(heading):]
        section = section[:section.index("\n## ", 1)]
        lines = [ln for ln in section.splitlines() if ln.startswith("|") and ":--" not in ln]
        header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
        pairs = [tuple(p.strip().lower().replace("-", "_") for p in c.split("<br>"))
                 for c in header]
        table = {pair: {} for pair in pairs}
        for line in lines[1:]:
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            for pair, cell in zip(pairs, cells[1:]):
                table[pair][cells[0]] = cell
        out[key] = table
    return out


ROW = {"student": "Teacher <br> Student", "kd": "KD", "fitnet+feat": "FitNet", "at+feat": "AT",
       "sp+feat": "SP", "vid+feat": "VID", "rkd+feat": "RKD", "pkt+feat": "PKT",
       "nst+feat": "NST", "crd+feat": "CRD", "dkd": "DKD", "dkd-beta6": "DKD"}
SOURCES = {"repdistiller": "RepDistiller README.md (github.com/HobbitLong/RepDistiller)",
           "mdistiller": "mdistiller README.md (github.com/megvii-research/mdistiller)"}


def _published(table, target, suite) -> float:
    (teacher,) = suite.teacher_sets[target.teachers]
    cell = table[(suite.teachers[teacher].arch.lower(), target.student.lower())][ROW[target.label]]
    if target.label == "student":  # "teacher <br> student"
        return float(cell.split("<br>")[1])
    return float(cell)


def test_every_target_is_the_cell_of_the_table_it_cites():
    suite = load_suite(SUITE)
    tables = _tables()
    assert suite.targets
    for target in suite.targets:
        cited = [key for key, text in SOURCES.items() if target.source.startswith(text)]
        assert cited, f"{target.label}: cite one of {list(SOURCES.values())}: {target.source}"
        assert target.epoch == "best" and target.runs is None  # best_acc; runs unknown
        assert target.top1 == _published(tables[cited[0]], target, suite), target
        if "the same in mdistiller README.md" in target.source:
            assert target.top1 == _published(tables["mdistiller"], target, suite), target


def test_every_single_teacher_cell_has_a_target_but_the_documented_ones():
    suite = load_suite(SUITE)
    targeted = {(t.teachers, t.label) for t in suite.targets}
    for run in _runs("r32x4") + _runs("vgg13"):
        assert ((run.teacher_set, run.label) in targeted) != (run.label in NO_TARGET), run.label
    assert not [t for t in suite.targets if t.teachers == CROSS]  # nothing is published
    text = SUITE.read_text()
    for label in NO_TARGET:  # the header says why
        assert f"{label} on both pairs" in text


def test_published_teachers_expect_the_tables_accuracy():
    suite = load_suite(SUITE)
    row = _tables()["repdistiller"]
    students = {"resnet32x4": "resnet8x4", "vgg13": "vgg8", "wrn_40_2": "wrn_16_2"}
    for spec in suite.teachers.values():
        cell = row[(spec.arch.lower(), students[spec.arch])]["Teacher <br> Student"]
        assert spec.expected_acc == float(cell.split("<br>")[0])


# --------------------------------------------------------------------------- README
def _readme_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    lines = text[text.index("## Strategies"):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| feature loss |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(header, cells))
    return rows


def _builtin_feature_losses() -> list[str]:
    """The feature losses multikd ships (a test's or a plugin's registered ones left out)."""
    return [name for name in FEATURE_LOSS_REGISTRY.names()
            if FEATURE_LOSS_REGISTRY[name].__module__.startswith("multikd.method.feature_losses")]


def test_the_readme_lists_every_feature_loss_with_the_registrys_facts():
    rows = _readme_rows()
    names = _builtin_feature_losses()
    assert len(names) >= 10 and sorted(rows) == sorted(names)
    for name in names:
        entry, row = FEATURE_LOSS_REGISTRY.entry(name), rows[name]
        gamma = entry.info["reference_gamma"]
        cell = row["reference γ"]
        if gamma is None:
            assert cell.startswith("—"), (name, cell)
        else:
            assert float(cell.split()[0]) == gamma, (name, cell)
        granularity = "per sample" if entry.info["per_sample"] else "per batch"
        assert row["weighting"] == granularity, name
        params = entry.params_text()
        assert row["parameters (defaults)"] == (f"`{params}`" if params else "none"), name
        reads, t_reads = entry.info["reads"], entry.info.get("teacher_reads") or entry.info["reads"]
        assert re.match(rf"`{re.escape(reads)}`", row["reads"]), name
        if t_reads != reads:
            assert f"teacher: `{t_reads}`" in row["reads"], name
        assert "mdistiller/distillers/" in row["reference"], name
