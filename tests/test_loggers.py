"""TensorBoard logging: the event files hold each epoch's metrics.csv row under its tag."""

import builtins

import pytest
from run_helpers import read_metrics, synthetic_args, train_two_teachers

from multikd.cli import main
from multikd.errors import ConfigError
from multikd.train.loggers import EpochLoggers, scalar_tags

DATA = synthetic_args(train_size=96, test_size=32)


def test_tags_group_the_row():
    row = {"epoch": 3, "lr": 0.1, "loss_kd": 1.5, "train_acc": 40.0, "test_acc": 50.0,
           "w_strong": 0.7, "ce_strong": 1.2, "kept_strong": 1.0, "images_per_s": 100.0,
           "teacher_cache_hit_rate": 0.5, "note": "x", "nan": float("nan")}
    assert scalar_tags(row) == {
        "lr": 0.1, "loss/kd": 1.5, "acc/train": 40.0, "acc/test": 50.0,
        "teacher_weight/strong": 0.7, "teacher_ce/strong": 1.2, "teacher_kept/strong": 1.0,
        "speed/images_per_s": 100.0, "other/teacher_cache_hit_rate": 0.5,
    }


@pytest.mark.slow
def test_distill_run_writes_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teachers = train_two_teachers(tmp_path / "teachers", DATA)
    run = tmp_path / "run"
    args = ["distill", "--student", "resnet8", "--teachers-from", str(teachers / "tA"),
            str(teachers / "tB"), "--strategy", "ca-mkd", "--epochs", "2",
            "--set", "output.tensorboard=true", "--out", str(run), *DATA]
    assert main(args) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = read_metrics(run)
    for tag, column in [("acc/test", "test_acc"), ("loss/total", "loss_total"), ("lr", "lr"),
                        ("teacher_weight/tA", "w_tA"), ("teacher_ce/tB", "ce_tB"),
                        ("teacher_kept/tA", "kept_tA"), ("speed/images_per_s", "images_per_s")]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows],
                                                           rel=1e-6)


def test_off_by_default_and_a_clear_error_without_the_package(tmp_path, monkeypatch):
    assert not EpochLoggers(tmp_path).active
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "wandb":
            raise ImportError(f"no {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install 'multikd\[logging\]'"):
        EpochLoggers(tmp_path, tensorboard=True)
    with pytest.raises(ConfigError, match="needs the wandb package"):
        EpochLoggers(tmp_path, wandb_project="proj")
