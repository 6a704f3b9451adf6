"""Training engine on tiny synthetic data: the run directory, schedule, faults, run-dir safety."""

import json

import pytest
import torch
from run_helpers import read_metrics

from multikd.cli import main
from multikd.train.config import config_hash, load_config
from multikd.method.learner import SupervisedLearner
from multikd.train.engine import evaluate_checkpoint
from multikd.models import create_model

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 192, "test_size": 64, "seed": 0}
TINY = [
    "--dataset", "synthetic",
    "--set", "data.synthetic=" + json.dumps(SYNTH),
    "--batch-size", "32",
    "--device", "cpu",
    "--quiet",
]
TIME_COLUMNS = {"epoch_time_s", "images_per_s"}


def train_teacher(run_dir, *extra: str) -> int:
    return main(["train-teacher", "--arch", "resnet8", "--out", str(run_dir), *TINY, *extra])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished 2-epoch resnet8 run with a validation split."""
    run_dir = tmp_path_factory.mktemp("engine") / "teacher"
    assert train_teacher(run_dir, "--epochs", "2", "--val-size", "64") == 0
    return run_dir


def test_run_directory_layout(teacher_run):
    names = sorted(p.name for p in teacher_run.iterdir())
    assert names == ["checkpoint.pt", "config.yaml", "metrics.csv", "predictions.npz",
                     "run.lock", "summary.json"]  # no temp files; the writer's lock file
    rows = read_metrics(teacher_run)
    assert list(rows[0]) == [
        "epoch", "lr", "loss_ce", "loss_total", "train_acc", "val_acc", "val_loss",
        "test_acc", "test_loss", "epoch_time_s", "images_per_s",
    ]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # 2 epochs -> milestones [1, 2]: the second epoch runs at lr x 0.1
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.005])
    for r in rows:
        assert float(r["loss_ce"]) == float(r["loss_total"]) > 0
        assert 0 <= float(r["train_acc"]) <= 100 and float(r["images_per_s"]) > 0


def test_summary_matches_metrics(teacher_run):
    summary = json.loads((teacher_run / "summary.json").read_text())
    rows = read_metrics(teacher_run)
    test = [float(r["test_acc"]) for r in rows]
    val = [float(r["val_acc"]) for r in rows]
    assert summary["status"] == "finished" and summary["kind"] == "teacher"
    assert summary["student_arch"] == "resnet8" and summary["dataset"] == "synthetic"
    assert summary["last_test_acc"] == test[-1]
    assert summary["best_test_acc"] == max(test)
    assert summary["best_epoch"] == test.index(max(test)) + 1
    assert summary["val_selected_test_acc"] == test[val.index(max(val))]
    assert summary["epochs"] == 2 and summary["seed"] == 0 and summary["strategy"] is None
    assert set(summary["versions"]) == {"python", "torch", "multikd"}
    assert summary["config_hash"] == config_hash(load_config(teacher_run / "config.yaml"))
    assert summary["wall_time_s"] == pytest.approx(sum(float(r["epoch_time_s"]) for r in rows))


def test_config_yaml_is_the_resolved_run_config(teacher_run):
    cfg = load_config(teacher_run / "config.yaml")
    assert cfg.model.arch == "resnet8" and cfg.optim.lr == 0.05 and cfg.optim.milestones == [1, 2]
    assert cfg.data.synthetic == SYNTH and cfg.data.val_size == 64
    assert cfg.output.run_dir == str(teacher_run)


def test_checkpoint_feeds_published_checkpoint_loaders(teacher_run):
    state = torch.load(teacher_run / "checkpoint.pt", weights_only=True)
    assert state["arch"] == "resnet8" and state["num_classes"] == 10 and state["epoch"] == 2
    assert {"optimizer", "scheduler", "scaler", "rng", "metrics"} <= set(state)
    model = create_model("resnet8", num_classes=10, checkpoint=teacher_run / "checkpoint.pt")
    assert set(model.state_dict()) == set(state["model"])
    # the saved model reproduces the test accuracy the run reported for its last epoch
    result = evaluate_checkpoint(
        "resnet8", str(teacher_run / "checkpoint.pt"), "synthetic", synthetic=SYNTH,
        val_size=64, device="cpu",
    )
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert result["test_acc"] == pytest.approx(summary["last_test_acc"])
    assert result["val_acc"] == pytest.approx(float(read_metrics(teacher_run)[-1]["val_acc"]))


def test_finished_run_is_never_overwritten_silently(teacher_run, capsys):
    before = (teacher_run / "metrics.csv").read_text()
    assert train_teacher(teacher_run, "--epochs", "2", "--val-size", "64") == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err
    assert "--resume" in err and "--out" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert (teacher_run / "metrics.csv").read_text() == before
    # resuming a finished run trains nothing and reports it
    assert main(["train-teacher", "--resume", str(teacher_run), "--quiet"]) == 0
    assert "test acc" in capsys.readouterr().out
    assert (teacher_run / "metrics.csv").read_text() == before


def test_unfinished_run_asks_for_resume(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("kind: teacher\n")
    (run_dir / "metrics.csv").write_text("epoch,test_acc\n1,10.0\n")
    assert train_teacher(run_dir, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run" in err and f"--resume {run_dir}" in err


def test_a_start_that_failed_before_any_epoch_can_be_rerun_corrected(tmp_path, capsys):
    """A bad checkpoint fails after config.yaml is written; nothing trained, so the corrected
    command starts there without --resume or --overwrite."""
    run_dir = tmp_path / "r"
    assert train_teacher(run_dir, "--epochs", "1",
                         "--set", f"model.checkpoint={tmp_path / 'missing.pt'}") == 2
    assert "no checkpoint file" in capsys.readouterr().err
    assert (run_dir / "config.yaml").exists() and not (run_dir / "metrics.csv").exists()
    assert train_teacher(run_dir, "--epochs", "1") == 0
    assert (run_dir / "summary.json").exists()


def test_resume_takes_no_other_settings(teacher_run, capsys):
    assert main(["train-teacher", "--resume", str(teacher_run), "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "only --device and --quiet" in err and "optim.epochs" in err
    assert main(["train-teacher", "--resume", str(teacher_run.parent / "nowhere")]) == 2
    assert "not a multikd run directory" in capsys.readouterr().err


@pytest.mark.slow  # two training runs
def test_overwrite_replaces_a_finished_run(tmp_path):
    run_dir = tmp_path / "r"
    assert train_teacher(run_dir, "--epochs", "1") == 0
    assert train_teacher(run_dir, "--epochs", "1", "--lr", "0.1", "--overwrite") == 0
    assert float(read_metrics(run_dir)[0]["lr"]) == 0.1


@pytest.mark.slow  # a training run
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A loss that turns NaN at epoch 2, step 4 (6 steps per epoch) stops the run there."""
    calls = {"n": 0}
    forward = SupervisedLearner.forward

    def poisoned(self, x, y):
        logits, losses, info = forward(self, x, y)
        calls["n"] += 1
        if calls["n"] >= 6 + 4:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return logits, losses, info

    monkeypatch.setattr(SupervisedLearner, "forward", poisoned)
    run_dir = tmp_path / "nan"
    assert train_teacher(run_dir, "--epochs", "3") == 2
    err = capsys.readouterr().err
    assert "NaN or infinite at epoch 2, step 4" in err
    assert "last good checkpoint (end of epoch 1)" in err and "Traceback" not in err
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len(read_metrics(run_dir)) == 1
    assert not (run_dir / "summary.json").exists()


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path, capsys):
    assert train_teacher(tmp_path / "r", "--epochs", "1", "--batch-size", "512") == 2
    err = capsys.readouterr().err
    assert "optim.batch_size 512 is larger than the training set (192 images)" in err


def test_amp_and_channels_last_train_on_cpu(tmp_path):
    run_dir = tmp_path / "amp"
    small = json.dumps(dict(SYNTH, train_size=64, test_size=32))  # bf16 is slow on most CPUs
    args = ["--epochs", "1", "--amp", "--set", "runtime.channels_last=true", "--set", f"data.synthetic={small}"]
    assert train_teacher(run_dir, *args) == 0
    row = read_metrics(run_dir)[0]
    assert 0 < float(row["loss_total"]) < 10 and 0 <= float(row["test_acc"]) <= 100
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.runtime.amp and cfg.runtime.channels_last


def test_predictions_are_the_final_models_test_predictions(teacher_run):
    """predictions.npz: one prediction per test image, in the split's order, whose accuracy
    is the last epoch's test accuracy; the labels are the split's labels."""
    from multikd import data
    from multikd.train.runio import RunDir

    pred, label = RunDir(teacher_run).read_predictions()
    summary = json.loads((teacher_run / "summary.json").read_text())
    splits = data.build_datasets("synthetic", val_size=64, seed=0, synthetic=SYNTH)
    assert len(pred) == len(label) == len(splits.test) == 64
    assert label.tolist() == [int(splits.test[i][1]) for i in range(len(splits.test))]
    assert 100.0 * (pred == label).mean() == pytest.approx(summary["last_test_acc"], abs=1e-9)
    model = create_model("resnet8", num_classes=10, checkpoint=str(teacher_run / "checkpoint.pt"))
    x = torch.stack([splits.test[i][0] for i in range(8)])
    assert model.eval()(x).argmax(1).tolist() == pred[:8].tolist()


def test_best_epoch_is_the_best_not_the_last(tmp_path):
    """On a short cosine schedule most runs peak in their final epoch (session 2's smoke
    sweep: all 34), so best and last tables can agree genuinely; the summary picks the
    best epoch whenever it is another one, and the tables read it."""
    from multikd.results.tables import load_table
    from multikd.train import distributed as ddp
    from multikd.train.config import RunConfig, resolve
    from multikd.train.engine import TrainingRun
    from multikd.train.runio import RunDir

    cfg = RunConfig(kind="student")
    cfg.data.dataset = "synthetic"
    cfg.output.run_dir = str(tmp_path / "run")
    cfg.optim.epochs = 3
    run = object.__new__(TrainingRun)  # the summary of given epochs, without training
    run.cfg, run.env, run.hash, run.run = resolve(cfg), ddp.detect(), "h", RunDir(tmp_path / "run")
    run.rows = [{"epoch": 1, "test_acc": 40.0}, {"epoch": 2, "test_acc": 55.0},
                {"epoch": 3, "test_acc": 50.0}]
    run.elapsed, run.teacher_acc = 1.0, {}
    summary = run.summary()
    assert (summary["last_test_acc"], summary["best_test_acc"], summary["best_epoch"]) == (
        50.0, 55.0, 2)
    run.run.write_summary(summary)
    last, best = load_table(tmp_path, "last"), load_table(tmp_path, "best")
    assert last.iloc[0][("student alone", "mean")] == 50.0
    assert best.iloc[0][("student alone", "mean")] == 55.0
