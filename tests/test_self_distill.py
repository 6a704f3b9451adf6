"""Self-distillation (#18 item 3): a teacher that is a frozen snapshot of the running student
from epoch E on, alone or beside other teachers; exact resume across the snapshot; a suite
that runs it beside every other teacher set."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from run_helpers import dry_run_suite, tiny_suite, train_epoch

from multikd.bench.runner import run_bench
from multikd.bench.suite import parse_suite
from multikd.cli import main
from multikd.train import engine
from multikd.train.config import (
    DataConfig, LossConfig, ModelConfig, OptimConfig, OutputConfig, RunConfig, RuntimeConfig,
    StrategyConfig, TeacherConfig, resolve,
)
from multikd.train.lockstep import split_by_taps

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 160, "test_size": 64, "seed": 0}
DATA = ["--batch-size", "32", "--dataset", "synthetic", "--set",
        "data.synthetic=" + json.dumps(SYNTH), "--device", "cpu", "--quiet"]
TIME = ["epoch_time_s", "images_per_s"]


def _config(tmp_path, name, teachers, epochs=3, strategy="uniform", gamma=0.0):
    return resolve(RunConfig(
        kind="distill", data=DataConfig(dataset="synthetic", synthetic=dict(SYNTH)),
        model=ModelConfig(arch="resnet8"), teachers=teachers,
        strategy=StrategyConfig(name=strategy), loss=LossConfig(gamma=gamma),
        optim=OptimConfig(batch_size=32, epochs=epochs), runtime=RuntimeConfig(device="cpu"),
        output=OutputConfig(run_dir=str(tmp_path / name), quiet=True),
    ))


_epoch = train_epoch


@pytest.mark.parametrize("gamma", [0.0, 1.0])
@pytest.mark.slow  # trains; the tests below check the config, the CLI and lockstep
def test_the_snapshot_is_the_student_at_the_start_of_its_epoch_and_stays_frozen(tmp_path, gamma):
    cfg = _config(tmp_path, "run", [TeacherConfig(arch="resnet14", name="other"),
                                    TeacherConfig(self_from_epoch=2)], gamma=gamma,
                  strategy="ca-mkd")
    assert cfg.teachers[1].arch == "resnet8" and cfg.teachers[1].name == "self"
    run = engine.prepare_run(cfg)
    assert set(run.teacher_acc) == {"other"}  # the snapshot's accuracy is the run's own
    row1 = _epoch(run, 1)
    assert row1["w_self"] == 0.0 and row1["kept_self"] == 0.0 and row1["w_other"] == 1.0
    student = copy.deepcopy(run.parts.model.state_dict())
    row2 = _epoch(run, 2)
    snapshot = run.parts.ensemble.teachers[1]
    for key, value in snapshot.state_dict().items():  # taken at epoch 2's start ...
        assert torch.equal(value, student[key]), key
    assert 0.0 < row2["w_self"] < 1.0 and row2["kept_self"] == 1.0
    assert not any(torch.equal(v, run.parts.model.state_dict()[k])  # ... and kept frozen
                   for k, v in snapshot.state_dict().items() if v.is_floating_point())
    assert all(p.grad is None for p in snapshot.parameters())


@pytest.mark.slow
def test_alone_it_is_plain_ce_until_its_epoch(tmp_path):
    assert main(["distill", "--student", "resnet8", "--teacher", "self@2", "--strategy",
                 "uniform", "--epochs", "3", "--out", str(tmp_path / "s"), *DATA]) == 0
    m = pd.read_csv(tmp_path / "s" / "metrics.csv")
    assert m["loss_kd"].iloc[0] == 0.0 and m["loss_total"].iloc[0] == m["loss_ce"].iloc[0]
    assert (m["loss_kd"].iloc[1:] > 0).all() and (m["w_self"].iloc[1:] == 1.0).all()


@pytest.mark.slow
def test_resume_across_the_snapshot_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    teachers = [TeacherConfig(arch="resnet14", name="other"), TeacherConfig(self_from_epoch=2)]
    engine.train(_config(tmp_path, "straight", teachers, epochs=4))
    original = engine.TrainingRun.end_epoch

    def stop_after_two(self, epoch, train_time):
        row = original(self, epoch, train_time)
        if epoch == 2:
            raise KeyboardInterrupt  # after epoch 2's checkpoint: the snapshot is in it
        return row

    monkeypatch.setattr(engine.TrainingRun, "end_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        engine.train(_config(tmp_path, "killed", teachers, epochs=4))
    monkeypatch.setattr(engine.TrainingRun, "end_epoch", original)
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["self_teacher"] is not None
    engine.resume(str(tmp_path / "killed"), quiet=True)
    a = pd.read_csv(tmp_path / "straight" / "metrics.csv").drop(columns=TIME)
    b = pd.read_csv(tmp_path / "killed" / "metrics.csv").drop(columns=TIME)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_runs_with_a_self_teacher_train_alone_in_lockstep(tmp_path):
    plain = _config(tmp_path, "a", [TeacherConfig(arch="resnet14", name="other")])
    own = _config(tmp_path, "b", [TeacherConfig(arch="resnet14", name="other"),
                                  TeacherConfig(self_from_epoch=2)])
    assert split_by_taps([plain, own, plain]) == [[plain, plain], [own]]


def test_bad_input_names_the_key(tmp_path, capsys):
    base = ["distill", "--student", "resnet8", "--epochs", "3", "--out", str(tmp_path / "r"), *DATA]
    cases = [
        (["--teacher", "self@3"], "self_from_epoch must be an integer from 2"),
        (["--teacher", "self@1"], "at 1 it would be untrained"),
        (["--teacher", "self@x"], "write self@E"),
        (["--teacher", "self@2", "--teacher", "self@2"], "only one teacher can be the student"),
        (["--teacher", "self@2", "--strategy", "mtkd-rl", "--gamma", "5"], "sized for a fixed set"),
        (["--teacher", "self@2", "--set", f"runtime.teacher_cache={tmp_path / 'c'}"],
         "leave runtime.teacher_cache empty"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_suite_with_a_self_teacher_runs_and_tables(tmp_path):
    suite = tiny_suite(
        "self", 3,
        teachers={"me": {"arch": "self", "from_epoch": 2},
                  "t_a": {"arch": "resnet8", "seed": 1, "recipe": {"optim": {"epochs": 1}}}},
        teacher_sets={"alone": ["me"], "both": ["t_a", "me"]},
        pairs=[{"teachers": "alone", "students": ["resnet8"]},
               {"teachers": "both", "students": ["resnet8"]}],
        strategies=["uniform"],
    )
    report = run_bench(parse_suite(suite), tmp_path)
    assert len(report.trained) == 1 + 4  # the one real teacher, then 4 student runs
    table = (tmp_path / "table_last.md").read_text()
    assert "| resnet8 ← me |" in table and "| resnet8 ← t_a+me |" in table
    recorded = json.loads((tmp_path / "teachers.json").read_text())
    assert set(recorded) == {"t_a"}


def test_self_distill_suite_dry_runs(capsys):
    out = dry_run_suite("self-distill", capsys)
    assert "runs/self_only/resnet8x4/uniform_s0" in out
    assert "runs/gu2023_self/vgg8/ca-mkd_s0" in out
