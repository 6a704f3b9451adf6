"""Checks that agree with what they check: a NaN or infinite config value is refused before
training, copies of one run are not counted twice in a table, a teacher of another class
count is blamed on the data, the run lock points to --resume, one bad --teacher is one
error, and a run without labels reads "train n/a"."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest

from multikd.cli import main
from multikd.errors import CheckpointError, ConfigError
from multikd.models import create_model
from multikd.models.checkpoint import save_checkpoint
from multikd.train.build import build_learner
from multikd.train.config import TeacherConfig, build_config, resolve
from multikd.train.runlock import RunBusy, hold_runs
from run_helpers import read_metrics, synthetic_args

DATA = synthetic_args(64, 32)
DISTILL = {"kind": "distill", "model.arch": "resnet8", "teachers": [TeacherConfig(arch="resnet8")]}


# --------------------------------------------------------------------------- NaN and infinity
@pytest.mark.parametrize("assignment, problem", [
    ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
    ("optim.lr=-.inf", "optim.lr must be a finite number, got -inf"),
    ("optim.momentum=nan", "optim.momentum must be a finite number, got nan"),
    ("loss.temperature=nan", "loss.temperature must be a finite number, got nan"),
    ("data.labeled_fraction=nan", "data.labeled_fraction must be a finite number, got nan"),
    ("loss.logit_params={alpha: .nan}", "loss.logit_params.alpha must be a finite number, got nan"),
    ("data.synthetic={noise: .nan}", "data.synthetic.noise must be a finite number, got nan"),
    ("strategy.params={tau: .nan}", "strategy.params.tau must be a finite number, got nan"),
])
def test_a_nan_or_infinite_value_is_one_problem_at_validation(assignment, problem):
    with pytest.raises(ConfigError) as caught:
        resolve(build_config(sets=[assignment], values=DISTILL))
    assert caught.value.problems == [problem]


def test_an_infinite_strategy_parameter_is_left_to_its_strategy():
    # ce-filter documents margin=inf: keep every teacher
    cfg = resolve(build_config(sets=["strategy.params={margin: .inf}"], values=DISTILL))
    assert cfg.strategy.params["margin"] == float("inf")


def test_a_nan_setting_stops_the_command_before_anything_is_built(tmp_path, capsys):
    teacher = _teacher(tmp_path, 10)
    assert main(["distill", "--teacher", f"resnet8={teacher}", "--student", "resnet8", *DATA,
                 "--set", "optim.momentum=nan", "--out", str(tmp_path / "run")]) == 2
    assert "optim.momentum must be a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- copies in a table
def _finished_run(folder, seed, acc):
    folder.mkdir(parents=True)
    summary = {"status": "finished", "kind": "student", "student_arch": "resnet8",
               "teacher_names": [], "dataset": "synthetic", "epochs": 3, "seed": seed,
               "last_test_acc": acc, "best_test_acc": acc, "config_hash": f"hash{seed}"}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_table_refuses_copies_of_one_run_unless_allowed(tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    _finished_run(a / "s0", 0, 60.0)
    _finished_run(a / "s1", 1, 64.0)
    shutil.copytree(a, b)
    assert main(["table", str(a)]) == 0
    assert "62.00 ± 2.83 (2)" in capsys.readouterr().out

    assert main(["table", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "4 runs are copies of 2 (same config hash and seed)" in err
    assert f"{a / 's0'} = {b / 's0'}" in err and f"{a / 's1'} = {b / 's1'}" in err
    assert "--allow-duplicates" in err

    assert main(["table", str(a), str(b), "--allow-duplicates"]) == 0
    assert "(4)" in capsys.readouterr().out


# --------------------------------------------------------------------------- class counts
def _teacher(folder, num_classes, recorded=True):
    model = create_model("resnet8", num_classes=num_classes)
    extra = {"arch": "resnet8", "num_classes": num_classes} if recorded else {}
    path = folder / f"t{num_classes}{'' if recorded else '_published'}.pt"
    save_checkpoint({"model": model.state_dict(), **extra}, path)
    return path


@pytest.mark.parametrize("recorded", [True, False])
def test_a_teacher_of_another_class_count_is_blamed_on_the_data(tmp_path, recorded):
    teacher = _teacher(tmp_path, 10, recorded)
    cfg = resolve(build_config(values={
        **DISTILL, "teachers": [TeacherConfig(arch="resnet8", checkpoint=str(teacher))],
        "data.synthetic": {"num_classes": 20}}))
    with pytest.raises(ConfigError) as caught:
        build_learner(cfg, num_classes=20)
    message = str(caught.value)
    assert f"teacher resnet8: {teacher} was trained on 10 classes, but this run's data has 20 " \
           "(synthetic data with num_classes 20)" in message
    assert "Distill on the data the teacher was trained on" in message
    assert "class count" not in message  # no flag gives a teacher's class count


def test_a_teacher_of_another_architecture_keeps_the_fit_report(tmp_path):
    teacher = _teacher(tmp_path, 10)  # a resnet8 given as resnet14: not a class-count problem
    cfg = resolve(build_config(values={
        **DISTILL, "teachers": [TeacherConfig(arch="resnet14", checkpoint=str(teacher))]}))
    with pytest.raises(CheckpointError, match="does not fit resnet14"):
        build_learner(cfg, num_classes=20)


def test_a_partial_teacher_listing_other_classes_names_its_list(tmp_path):
    teacher = _teacher(tmp_path, 10)
    cfg = resolve(build_config(values={**DISTILL, "teachers": [
        TeacherConfig(arch="resnet8", checkpoint=str(teacher), classes=[0, 1, 2])]}))
    with pytest.raises(ConfigError, match=re.escape("predicts 10 classes, but its "
                                                    "teachers[].classes lists 3")):
        build_learner(cfg, num_classes=20)


# --------------------------------------------------------------------------- run lock
def test_the_run_lock_says_how_to_continue_a_stopped_run(tmp_path):
    run = tmp_path / "run"
    with hold_runs([run]):
        with pytest.raises(RunBusy) as caught:
            with hold_runs([run]):
                pytest.fail("a second writer got the lock")
    message = str(caught.value)
    assert f"a stopped run continues with --resume {run}" in message
    assert "same command" not in message.split("--resume")[0]


# --------------------------------------------------------------------------- --teacher self@E
def test_a_bad_self_teacher_is_one_error(tmp_path, capsys):
    out = ["--student", "resnet8", *DATA, "--out", str(tmp_path / "run")]
    assert main(["distill", "--teacher", "self@abc", *out]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("multikd: error: --teacher 'self@abc': write self@E with E the "
                           "epoch, e.g. self@120")

    assert main(["distill", "--teacher", "self@abc", *out, "--lr", "-1"]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "at least one teacher" not in err

    assert main(["distill", *out]) == 2  # no teacher flag at all: that is the problem
    assert "distill needs at least one teacher" in capsys.readouterr().err


# --------------------------------------------------------------------------- no labels
def test_a_run_without_labels_reads_train_accuracy_not_available(tmp_path, caplog):
    teacher = _teacher(tmp_path, 10)
    args = ["distill", "--teacher", f"resnet8={teacher}", "--student", "resnet8",
            *[a for a in DATA if a != "--quiet"], "--epochs", "1", "--strategy", "uniform",
            "--set", "data.labeled_fraction=0", "--out", str(tmp_path / "run")]
    with caplog.at_level(logging.INFO, logger="multikd"):
        assert main(args) == 0
    epoch_lines = [r.getMessage() for r in caplog.records if " epoch 1/1 " in r.getMessage()]
    assert len(epoch_lines) == 1 and "train n/a  test " in epoch_lines[0]
    assert "nan" not in epoch_lines[0]
    assert read_metrics(tmp_path / "run")[0]["train_acc"] == "nan"  # the data keeps NaN
