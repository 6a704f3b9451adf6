"""Distillation runs: teachers from teacher runs, per-teacher metrics, what is trained, and
every bad teacher input as a clear CLI error."""

import json

import pytest
import torch
from run_helpers import read_metrics, synthetic_args, train_two_teachers

from multikd.cli import main
from multikd.train.config import load_config

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 64, "test_size": 32, "seed": 0}
DATA = synthetic_args(train_size=SYNTH["train_size"], test_size=SYNTH["test_size"])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two finished 1-epoch teacher runs of different seeds (named by their folders)."""
    return train_two_teachers(tmp_path_factory.mktemp("teachers"), DATA)


@pytest.fixture(scope="module")
def distill_run(teachers, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("distill") / "run"
    args = [
        "distill", "--student", "resnet8", "--teachers-from", str(teachers / "tA"),
        str(teachers / "tB"), "--strategy", "ce-filter", "--gamma", "0.5", "--epochs", "1",
    ]
    assert main([*args, "--out", str(run_dir), *DATA]) == 0
    return run_dir


def test_distill_metrics_name_every_loss_and_teacher(distill_run):
    rows = read_metrics(distill_run)
    assert len(rows) == 1
    for part in ("ce", "kd", "feat", "total"):
        assert f"loss_{part}" in rows[0]
    for r in rows:
        weights = [float(r["w_tA"]), float(r["w_tB"])]
        assert all(w >= 0 for w in weights) and sum(weights) == pytest.approx(1.0)
        assert 0 <= float(r["kept_tA"]) <= 1 and 0 <= float(r["kept_tB"]) <= 1
        assert float(r["ce_tA"]) > 0 and float(r["ce_tB"]) > 0
        assert float(r["loss_feat"]) > 0  # gamma > 0: the feature loss is on


def test_summary_records_teachers_and_their_test_accuracy(distill_run, teachers):
    summary = json.loads((distill_run / "summary.json").read_text())
    assert summary["kind"] == "distill" and summary["strategy"] == "ce-filter"
    assert summary["strategy_label"] is None  # only suites label their runs
    assert summary["teacher_names"] == ["tA", "tB"] and summary["teacher_archs"] == ["resnet8"] * 2
    assert summary["features_used"] is True
    # the ensemble's own evaluation of each loaded teacher equals that teacher run's result
    for name in ("tA", "tB"):
        teacher_summary = json.loads((teachers / name / "summary.json").read_text())
        assert summary["teacher_test_acc"][name] == pytest.approx(teacher_summary["last_test_acc"])
    cfg = load_config(distill_run / "config.yaml")
    assert [t.checkpoint for t in cfg.teachers] == [str(teachers / n / "checkpoint.pt") for n in ("tA", "tB")]


def test_only_the_student_and_adapters_are_trained(distill_run, teachers):
    state = torch.load(distill_run / "checkpoint.pt", weights_only=True)
    assert state["arch"] == "resnet8" and state["learner"], "adapters are checkpointed"
    assert not any(k.startswith("student.") for k in state["learner"])
    teacher_keys = set(torch.load(teachers / "tA" / "checkpoint.pt", weights_only=True)["model"])
    assert set(state["model"]) == teacher_keys  # 'model' is the student alone
    n_student = sum(t.numel() for k, t in state["model"].items() if "running" not in k and "num_batches" not in k)
    n_adapters = sum(t.numel() for k, t in state["learner"].items() if "running" not in k and "num_batches" not in k)
    momentum = state["optimizer"]["state"]
    assert sum(s["momentum_buffer"].numel() for s in momentum.values()) == n_student + n_adapters


def _distill(tmp_path, *args) -> int:
    base = ["distill", "--student", "resnet8", "--epochs", "1", "--out", str(tmp_path / "d")]
    return main([*base, *DATA, *args])


@pytest.mark.parametrize(
    "make_args, fragment",
    [
        (lambda t: [], "distill needs at least one teacher"),
        (lambda t: ["--teacher", f"resnet14={t / 'tA' / 'checkpoint.pt'}"], "resnet14"),
        (lambda t: ["--teacher", f"resnet8={t / 'missing.pt'}"], "missing.pt"),
        (lambda t: ["--teacher", f"resnet8={t / 'corrupt.pt'}"], "corrupt.pt"),
        (lambda t: ["--teacher", "resnet9=x.pt"], "unknown model 'resnet9'"),
        (lambda t: ["--teachers-from", str(t / "nothing")], "no finished run"),
        (lambda t: ["--teachers-from", str(t / "tA"), "--strategy", "no-such-strategy"], "no-such-strategy"),
    ],
    ids=["empty", "wrong-arch", "missing", "corrupt", "unknown-model", "not-a-run", "unknown-strategy"],
)
def test_bad_teachers_are_clear_cli_errors(teachers, tmp_path, capsys, make_args, fragment):
    (teachers / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    assert _distill(tmp_path, *make_args(teachers)) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: ") and fragment in err and "Traceback" not in err


def test_teacher_with_another_class_count_is_refused(teachers, tmp_path, capsys):
    other = dict(SYNTH, num_classes=6, num_superclasses=2)
    args = ["--teacher", f"resnet8={teachers / 'tA' / 'checkpoint.pt'}",
            "--set", "data.synthetic=" + json.dumps(other)]
    assert _distill(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: ") and "Traceback" not in err
    assert "10" in err and "6" in err
