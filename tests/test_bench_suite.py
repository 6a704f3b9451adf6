"""Suite files: parsing, validation errors, expansion into run configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multikd.errors import ConfigError
from multikd.bench.suite import expand, load_suite, parse_suite, preset_path

REPO = Path(__file__).resolve().parents[1]


def _suite(**changes) -> dict:
    raw = {
        "name": "mini",
        "data": {"dataset": "synthetic", "synthetic": {"num_classes": 4, "train_size": 64}},
        "recipe": {"optim": {"epochs": 2, "batch_size": 16}},
        "features": {"gamma": 5.0},
        "teachers": {
            "big": {"arch": "resnet20", "seed": 0, "recipe": {"optim": {"epochs": 3}}},
            "small": {"arch": "resnet8", "seed": 1, "published": "small.pth"},
        },
        "teacher_sets": {"pair": ["big", "small"]},
        "pairs": [{"teachers": "pair", "students": ["resnet8", "wrn_16_1"]}],
        "strategies": ["uniform", {"name": "fixed", "params": {"weights": [0.7, 0.3]}}],
        "seeds": [0, 1],
    }
    raw.update(changes)
    return raw


def test_expansion_covers_the_matrix(tmp_path):
    plan = expand(parse_suite(_suite()), tmp_path)
    # 2 seeds -> 2 lockstep groups; each: 2 students x (alone + 2 strategies x 2 variants)
    assert [(g.teacher_set, g.seed) for g in plan.groups] == [("pair", 0), ("pair", 1)]
    assert [len(g.runs) for g in plan.groups] == [10, 10]
    labels = sorted({r.label for r in plan.runs})
    assert labels == ["fixed", "fixed+feat", "student", "uniform", "uniform+feat"]
    dirs = [r.config.output.run_dir for r in plan.runs]
    assert len(set(dirs)) == len(dirs) == 20
    cell = {(r.label, r.student, r.seed): r for r in plan.runs}
    run = cell[("fixed+feat", "wrn_16_1", 1)]
    cfg = run.config
    assert cfg.output.run_dir == str(tmp_path / "runs" / "pair" / "wrn_16_1" / "fixed+feat_s1")
    assert cfg.kind == "distill" and cfg.runtime.seed == 1 and cfg.loss.gamma == 5.0
    assert cfg.strategy.params == {"weights": [0.7, 0.3]}
    assert [(t.name, t.arch) for t in cfg.teachers] == [("big", "resnet20"), ("small", "resnet8")]
    assert cfg.teachers[0].checkpoint == str(tmp_path / "teachers" / "big" / "checkpoint.pt")
    assert cfg.optim.epochs == 2 and cfg.optim.batch_size == 16
    assert cfg.data.synthetic == {"num_classes": 4, "train_size": 64}
    logits = cell[("fixed", "wrn_16_1", 1)]
    assert logits.config.loss.gamma == 0.0
    alone = next(r for r in plan.runs if r.label == "student")
    assert alone.config.kind == "student" and alone.config.teachers == []
    # every run of a group shares what makes the data stream
    for group in plan.groups:
        keys = {(r.config.runtime.seed, r.config.optim.batch_size, str(r.config.data))
                for r in group.runs}
        assert len(keys) == 1


def test_a_strategy_runs_on_its_own_teacher_sets(tmp_path):
    """``teacher_sets`` keeps a column to some sets: one suite holds single-teacher rows and
    a multi-teacher cross without crossing each with the other's sets."""
    raw = _suite(
        teacher_sets={"pair": ["big", "small"], "one": ["big"]},
        pairs=[{"teachers": "pair", "students": ["resnet8"]},
               {"teachers": "one", "students": ["resnet8"]}],
        strategies=["uniform", {"name": "best", "teacher_sets": ["pair"], "variants": ["logits"]}],
        seeds=[0],
        targets=[{"teachers": "pair", "student": "resnet8", "label": "best", "top1": 50.0,
                  "epoch": "best", "source": "here"}],
    )
    plan = expand(parse_suite(raw), tmp_path)
    cells = {(r.teacher_set, r.label) for r in plan.runs}
    assert cells == {("pair", "student"), ("pair", "uniform"), ("pair", "uniform+feat"),
                     ("pair", "best"), ("one", "student"), ("one", "uniform"),
                     ("one", "uniform+feat")}
    raw["targets"][0]["teachers"] = "one"  # a column that set does not run
    with pytest.raises(ConfigError, match=r"label 'best' is not a column of this suite for "
                                          r"set 'one'.*student, uniform, uniform\+feat$"):
        parse_suite(raw)


def test_teachers_are_trained_or_published(tmp_path):
    suite = parse_suite(_suite())
    plan = expand(suite, tmp_path)
    big, small = plan.teachers["big"], plan.teachers["small"]
    assert not big.published and not small.published
    assert big.config.kind == "teacher" and big.config.optim.epochs == 3  # its own recipe
    assert small.config.optim.epochs == 2 and small.config.runtime.seed == 1
    assert big.config.output.run_dir == str(tmp_path / "teachers" / "big")

    with pytest.raises(ConfigError, match=r"small\.pth"):
        expand(suite, tmp_path, teachers_dir=tmp_path / "pub")
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "small.pth").write_bytes(b"x")
    plan = expand(suite, tmp_path, teachers_dir=tmp_path / "pub")
    assert plan.teachers["small"].published
    assert plan.runs[-1].config.teachers[1].checkpoint == str(tmp_path / "pub" / "small.pth")


def test_overrides_reach_every_run(tmp_path):
    plan = expand(parse_suite(_suite()), tmp_path, sets=["optim.epochs=1", "data.val_size=8"])
    configs = [r.config for r in plan.runs] + [t.config for t in plan.teachers.values()]
    assert {(c.optim.epochs, c.data.val_size) for c in configs} == {(1, 8)}
    with pytest.raises(ConfigError, match="lr"):
        expand(parse_suite(_suite()), tmp_path, sets=["optim.lrr=1"])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"teachrs": {}},
         r"(?s)unknown key\(s\) 'teachrs'. Did you mean 'teachers'\?.*teacher_sets:"),
        ({"pairs": []}, r"'pairs' is required"),
        ({"teacher_sets": {"pair": ["big", "nobody"]}},
         r"unknown teacher\(s\) \['nobody'\].*big, small"),
        ({"pairs": [{"teachers": "trio", "students": ["resnet8"]}]}, r"unknown teacher set 'trio'"),
        ({"pairs": [{"teachers": "pair", "students": ["resnet9"]}]},
         r"pairs\[0\].*unknown model 'resnet9'"),
        ({"teachers": {"big": {"arch": "vgg99"}}}, r"teachers.big.*unknown model 'vgg99'"),
        ({"teachers": {"big": {"seed": 0}}}, r"'arch' is required"),
        ({"strategies": ["uniform", "uniform"]}, r"label\(s\) \['uniform'\] appear twice"),
        ({"strategies": [{"name": "uniform", "label": "student"}]}, r"reserved"),
        ({"recipe": {"optim": {"lrr": 0.1}}}, r"'recipe'.*unknown config key.*lr"),
        ({"recipe": {"optim": {"epochs": "ten"}}}, r"optim.epochs expects an int"),
        ({"recipe": {"runtime": {"seed": 3}}}, r"'runtime.seed' is set by the suite"),
        ({"recipe": {"strategy": {"name": "uniform"}}}, r"'strategy.name' is set by the suite"),
        ({"features": {}}, r"logits\+feat variant needs"),
        ({"seeds": [0, 0]}, r"distinct integers"),
        ({"variants": ["features"]}, r"'variants' must be"),
        ({"teachers": {"b/g": {"arch": "resnet8"}}}, r"teacher id 'b/g'"),
        ({"strategies": ["uniform", "nonsense"]}, r"strategy 'nonsense'.*unknown strategy"),
        ({"strategies": [{"name": "fixed"}]}, r"strategy 'fixed'.*needs weights"),
        ({"strategies": [{"name": "uniform", "teacher_sets": ["trio"]}]},
         r"strategies\[0\].teacher_sets must be .*pair"),
        ({"strategies": [{"name": "uniform", "teacher_sets": "pair"}]},
         r"teacher_sets must be a non-empty list"),
    ],
)
def test_bad_suites_say_what_is_wrong(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        expand(parse_suite(_suite(**changes), source="bad.yaml"), tmp_path)


def test_suite_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teachers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="unknown preset 'smok'.*smoke"):
        preset_path("smok")


@pytest.mark.parametrize(
    "path, runs, teachers",
    [
        (REPO / "experiments" / "cifar100" / "gu2023.yaml", 4 * 17 * 3, 3),
        (REPO / "experiments" / "cifar100" / "same-arch.yaml", 4 * 17 * 3, 9),
        # smoke: 2 teacher sets x 4 seeds x (alone + 3 strategies)
        (None, 2 * 4 * 4, 5),
    ],
)
def test_shipped_suites_expand(tmp_path, path, runs, teachers):
    suite = load_suite(path or preset_path("smoke"))
    plan = expand(suite, tmp_path)
    assert len(plan.runs) == runs and len(plan.teachers) == teachers
    if path is not None:
        # per group (teacher set x seed): 17 runs per student (alone + 8 strategies x 2 variants)
        assert all(len(g.runs) % 17 == 0 for g in plan.groups)
        assert {r.config.data.dataset for r in plan.runs} == {"cifar100"}
        assert {r.config.optim.epochs for r in plan.runs} == {240}
        raw = yaml.safe_load(path.read_text())
        published = [t for t in raw["teachers"].values() if "published" in t]
        assert all("expected_acc" in t for t in published)


def test_bench_cli_reports_bad_suite(tmp_path, capsys):
    from multikd.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_suite(teacher_sets={"pair": ["ghost"]})))
    assert main(["bench", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: ") and "ghost" in err and "Traceback" not in err


def test_reference_suites_resolve_each_baseline_to_its_public_code(tmp_path):
    """ca-mkd.yaml: each strategy in the loss its source's code computes; single-teacher.yaml:
    mdistiller's KD and DKD weights."""
    plan = expand(load_suite(REPO / "experiments" / "cifar100" / "ca-mkd.yaml"), tmp_path)
    assert len(plan.runs) == 6 * 3 and len(plan.teachers) == 3
    by_label = {r.label: r.config for r in plan.runs if r.seed == 0}
    assert sorted(by_label) == ["aekd", "aver", "ca-mkd+feat", "ebkd", "fitnet-mkd+feat",
                                "student"]
    camkd, fitnet = by_label["ca-mkd+feat"].loss, by_label["fitnet-mkd+feat"].loss
    assert (camkd.gamma, camkd.teacher_reduction, camkd.feature_weights, camkd.adapter,
            camkd.feature_stage, camkd.feature_start_epoch) == (
        50.0, "mean", "teacher-head", "embed", -1, 2)
    assert (fitnet.gamma, fitnet.adapter, fitnet.feature_stage, fitnet.feature_start_epoch) == (
        100.0, "convreg", 2, 2)
    assert by_label["ebkd"].loss.teacher_reduction == "mean"
    assert by_label["aver"].loss.teacher_reduction == "sum" and by_label["aver"].loss.gamma == 0
    assert by_label["aekd"].strategy.params == {"C": 0.6}
    assert all(c.optim.nesterov and c.data.drop_last for c in by_label.values())

    plan = expand(load_suite(REPO / "experiments" / "cifar100" / "single-teacher.yaml"), tmp_path)
    assert len(plan.runs) == 2 * 4 * 3 and len(plan.teachers) == 2
    by_label = {r.label: r.config for r in plan.runs if r.seed == 0 and r.student == "vgg8"}
    assert (by_label["kd"].loss.alpha, by_label["kd"].loss.beta) == (0.1, 0.9)
    assert by_label["dkd-beta6"].loss.logit_loss == "dkd"
    # one strategy under three loss settings: the label keeps them apart in the tables
    assert {label: c.output.label for label, c in by_label.items() if label != "student"} == {
        "kd": "kd", "dkd": "dkd", "dkd-beta6": "dkd-beta6"}
    assert by_label["dkd-beta6"].loss.logit_params == {"alpha": 1.0, "beta": 6.0, "warmup": 20}
