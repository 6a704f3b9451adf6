"""Every I/O failure is one clear error, and its advice never destroys work: a read-only
--out is refused with the command-line checks, a full disk keeps the previous checkpoint and
says how much space is left, an unreadable checkpoint or summary says how many finished
epochs --overwrite would discard."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile

import pytest
import torch

from multikd.atomic import atomic_open, atomic_write_bytes
from multikd.cli import main
from multikd.errors import CheckpointError, StorageError, TrainingError
from multikd.train.runio import CHECKPOINT, METRICS, SUMMARY, RunDir
from multikd.train.runlock import hold_runs
from run_helpers import read_metrics, synthetic_args

DATA = synthetic_args(64, 32)
TRAIN = ["train-teacher", "--arch", "resnet8", *DATA]


def _read_only(monkeypatch, folder):
    """``folder`` refuses new files, for root too (whom permission bits do not stop)."""
    folder.mkdir()
    folder.chmod(0o555)
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


@pytest.mark.parametrize("command", [
    [*TRAIN, "--epochs", "1"],
    ["bench", "--preset", "smoke"],
])
def test_a_read_only_out_is_refused_with_the_command_line_checks(tmp_path, monkeypatch, capsys,
                                                                 command):
    from multikd.bench import runner

    folder = tmp_path / "ro"
    _read_only(monkeypatch, folder)
    monkeypatch.setattr(runner, "run_bench", lambda *a, **k: pytest.fail("the sweep started"))
    try:
        assert main([*command, "--out", str(folder / "run")]) == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert f"--out {folder / 'run'}: cannot write in {folder} (read-only file system)" in err
    assert "Traceback" not in err and list(folder.iterdir()) == []


def test_a_read_only_out_is_one_of_all_the_problems(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ro"
    _read_only(monkeypatch, folder)
    try:
        assert main([*TRAIN, "--lr", "-1", "--out", str(folder)]) == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert "2 problems" in err and "optim.lr must be positive" in err
    assert "cannot write in" in err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_keeps_the_previous_file_and_says_the_free_space(tmp_path, code):
    path = tmp_path / "checkpoint.pt"
    atomic_write_bytes(path, b"previous")
    with pytest.raises(StorageError) as caught:
        with atomic_open(path) as handle:
            handle.write(b"half")
            raise OSError(code, os.strerror(code))
    message = str(caught.value)
    assert message.startswith(f"cannot write {path}: {os.strerror(code).lower()} (")
    free = re.search(r"\(([\d,]+) bytes free there\)", message)
    assert free and int(free[1].replace(",", "")) <= shutil.disk_usage(tmp_path).total
    assert "previous checkpoint.pt is intact" in message and "\n" not in message
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_other_write_errors_are_not_disguised(tmp_path):
    with pytest.raises(OSError, match="Input/output"):
        with atomic_open(tmp_path / "f") as handle:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert os.listdir(tmp_path) == []


def _full_disk_from_the_second_save(monkeypatch):
    """torch.save writes the first checkpoint, then fails as it does on a full disk: a
    RuntimeError raised while handling the write's OSError(ENOSPC)."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real(obj, f, *args, **kwargs)
        f.write(b"partial zip")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow  # a training run
def test_a_full_disk_during_training_then_a_damaged_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _full_disk_from_the_second_save(monkeypatch)
    assert main([*TRAIN, "--epochs", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot write {run / CHECKPOINT}: no space left on device (" in err
    assert re.search(r"[\d,]+ bytes free there", err)
    assert "previous checkpoint.pt is intact" in err and f"--resume {run}" in err
    # the previous checkpoint (epoch 1) is whole, and no temporary file is left behind
    assert torch.load(run / CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]
    assert len(read_metrics(run)) == 1
    monkeypatch.undo()

    # the checkpoint gets damaged (a copy cut short): the advice counts what --overwrite loses
    saved = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(saved[:1000])
    assert main(["train-teacher", "--resume", str(run), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {run / CHECKPOINT} is unreadable" in err and "truncated" in err
    assert "metrics.csv records 1 finished epoch(s): restore checkpoint.pt from a copy" in err
    assert "--overwrite would start the run again and discard those 1 epoch(s)" in err

    # following the advice loses nothing: the restored copy resumes after epoch 1
    (run / CHECKPOINT).write_bytes(saved)
    assert main(["train-teacher", "--resume", str(run), "--device", "cpu", "--quiet"]) == 0
    assert [row["epoch"] for row in read_metrics(run)] == ["1", "2", "3"]


def test_an_unreadable_checkpoint_without_finished_epochs_may_start_again(tmp_path):
    run = RunDir(tmp_path)
    run.file(CHECKPOINT).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="records no finished epoch, so starting again with "
                                        "--overwrite loses nothing"):
        run.load_checkpoint()


def test_an_unreadable_summary_is_rewritten_by_resume_not_overwrite(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"epoch": e, "test_acc": 1.0} for e in (1, 2, 3)])
    run.file(SUMMARY).write_text("{cut")
    with pytest.raises(TrainingError) as caught:
        run.state()
    message = str(caught.value)
    assert f"delete it, then --resume {tmp_path} writes it again" in message
    assert f"--overwrite would discard the 3 finished epoch(s) in {METRICS}" in message


def test_a_failure_record_that_cannot_be_written_leaves_the_real_error(tmp_path, monkeypatch):
    from multikd.train import runlock

    def disk_full(path, text):
        raise StorageError(f"cannot write {path}: no space left on device")

    monkeypatch.setattr(runlock, "atomic_write_text", disk_full)
    with pytest.raises(TrainingError, match="the real cause"):
        with hold_runs([tmp_path / "run"]):
            raise TrainingError("the real cause")


def test_a_full_disk_at_the_end_of_a_run_says_how_to_continue_it(tmp_path, monkeypatch):
    from multikd.train import runio

    def disk_full(path, data):
        raise StorageError(f"cannot write {path}: no space left on device")

    monkeypatch.setattr(runio, "atomic_write_text", disk_full)
    monkeypatch.setattr(runio, "atomic_write_bytes", disk_full)
    run = RunDir(tmp_path)
    for write in (lambda: run.write_predictions([1], [1]), lambda: run.write_summary({})):
        with pytest.raises(StorageError, match=f"continue the run with --resume {tmp_path}"):
            write()
