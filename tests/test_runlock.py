"""One writer per run directory: a second writer is refused, a killed one leaves the run
free and resumable, failures are recorded for --status."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest

from multikd.train import engine
from multikd.train.config import RunConfig
from multikd.train.runlock import FAILED, LOCK, RunBusy, failure, hold_runs, lock_holder


def _hold(run_dir, conn) -> None:
    with hold_runs([run_dir]):
        conn.send("held")
        time.sleep(60)


class _Holder:
    """Another process that holds the run's lock until it is killed. Forked, not started
    afresh: it only locks a file, and a new interpreter would spend seconds importing torch."""

    def __init__(self, run_dir):
        parent, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=_hold, args=(str(run_dir), child), daemon=True)
        self._process.start()
        self.pid = self._process.pid
        assert parent.poll(60) and parent.recv() == "held"

    def kill(self) -> None:
        self._process.kill()

    def wait(self) -> None:
        self._process.join()


def _holder_process(run_dir):
    return _Holder(run_dir)


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    run = tmp_path / "run"
    proc = _holder_process(run)
    try:
        holder = lock_holder(run)
        assert holder is not None and holder["pid"] == proc.pid
        with pytest.raises(RunBusy, match=rf"pid {proc.pid}.*--status"):
            with hold_runs([tmp_path / "free", run]):
                raise AssertionError("must not be reached")
        # the lock taken on the first folder before the refusal was given back
        assert lock_holder(tmp_path / "free") is None
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_writer_frees_the_run_at_once(tmp_path):
    run = tmp_path / "run"
    proc = _holder_process(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / LOCK).is_file() and lock_holder(run) is None
    with hold_runs([run]):
        assert lock_holder(run)["pid"] == os.getpid()


def test_waiting_writer_gets_the_run_when_the_holder_ends(tmp_path):
    run = tmp_path / "run"
    proc = _holder_process(run)
    t0 = time.monotonic()
    try:
        with pytest.raises(RunBusy):
            with hold_runs([run], wait_s=0.3, poll_s=0.1):
                pass
        assert time.monotonic() - t0 >= 0.3
    finally:
        proc.kill()
        proc.wait()
    with hold_runs([run], wait_s=5, poll_s=0.1):
        pass


def test_failures_are_recorded_and_cleared_by_a_later_success(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError):
        with hold_runs([run]):
            raise ValueError("teacher checkpoint unreadable")
    record = failure(run)
    assert record["error"] == "ValueError: teacher checkpoint unreadable"
    assert record["pid"] == os.getpid() and "Traceback" in record["traceback"]
    with hold_runs([run]):
        pass
    assert failure(run) is None and not (run / FAILED).exists()


def test_engine_refuses_a_run_another_process_writes(tmp_path):
    run = tmp_path / "run"
    cfg = RunConfig(kind="teacher")
    cfg.model.arch = "resnet8"
    cfg.data.dataset = "synthetic"
    cfg.data.synthetic = {"num_classes": 4, "num_superclasses": 2, "train_size": 32,
                          "test_size": 16}
    cfg.optim.epochs = 1
    cfg.optim.batch_size = 16
    cfg.runtime.device = "cpu"
    cfg.output.run_dir = str(run)
    cfg.output.quiet = True
    proc = _holder_process(run)
    try:
        with pytest.raises(RunBusy, match="another process"):
            engine.train(cfg)
        assert not (run / "config.yaml").exists()  # nothing was written beside the writer
    finally:
        proc.kill()
        proc.wait()
    summary = engine.train(cfg)
    assert summary["status"] == "finished" and failure(run) is None
    assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
