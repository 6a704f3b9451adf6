"""Progress on long work (#33): the epoch bar counts every batch (no device read for it),
the silent set-up before the first epoch says what it does, and a bench logs where it is in
its plan (runs done of total, elapsed, ETA), quiet with --quiet."""

from __future__ import annotations

import io
import logging
import math
import re
import subprocess
import sys

import pytest
import yaml

from multikd.bench.progress import PlanProgress, duration_text
from multikd.bench.runner import run_bench
from multikd.bench.suite import parse_suite
from multikd.bench.workers import run_units
from multikd.cli import main
from multikd.train import engine
from tests.run_helpers import synthetic_args, tiny_suite

PROGRESS_LINE = re.compile(r"\[(\d+)/(\d+) runs, [\d.]+ (s|min|h) elapsed, ETA [^\]]+\]")


class RecordingBar:
    """Stands in for tqdm: records how it was made and every update."""

    made: list["RecordingBar"] = []

    def __init__(self, total=None, disable=False, **kwargs):
        self.total, self.disable, self.updates = total, disable, []
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train_with_bar(tmp_path, monkeypatch, quiet: bool, tty: bool) -> list[RecordingBar]:
    RecordingBar.made = []
    monkeypatch.setattr(engine, "tqdm", RecordingBar)
    monkeypatch.setattr(sys, "stderr", Terminal() if tty else io.StringIO())
    args = [a for a in synthetic_args(64, 16) if not (quiet is False and a == "--quiet")]
    # 64 images, batch 32: 2 steps an epoch, far fewer than the log interval (no log step)
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "2", *args,
                 "--set", "output.log_interval=50", "--out", str(tmp_path / "run")]) == 0
    return RecordingBar.made


def test_the_epoch_bar_counts_every_batch_between_log_steps(tmp_path, monkeypatch):
    bars = _train_with_bar(tmp_path, monkeypatch, quiet=False, tty=True)
    assert len(bars) == 2 and all(bar.total == 2 for bar in bars)
    assert [bar.updates for bar in bars] == [[1, 1], [1, 1]]  # one count per batch
    assert not any(bar.disable for bar in bars)


@pytest.mark.slow  # a training run
def test_the_bar_is_off_with_quiet_and_without_a_terminal(tmp_path, monkeypatch):
    assert all(bar.disable for bar in _train_with_bar(tmp_path / "q", monkeypatch, True, True))
    assert all(bar.disable for bar in _train_with_bar(tmp_path / "p", monkeypatch, False, False))


def test_making_the_synthetic_data_is_announced(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="multikd")
    assert main(["data", "info", "--synthetic", "tiny", "--synthetic", "train_size=40",
                 "--synthetic", "test_size=20"]) == 0
    said = [r.getMessage() for r in caplog.records if "synthetic" in r.getMessage()]
    assert said and "40 train + 20 test images of 10 classes" in said[0]


def test_plan_progress_counts_runs_and_spreads_the_time_over_the_epochs_left():
    now = [0.0]
    progress = PlanProgress(total_runs=5, pending_epochs=10, clock=lambda: now[0])
    now[0] = 10.0
    assert progress.unit_done("t", 1, 0).startswith("[1/5 runs, 10 s elapsed, ETA unknown]")
    now[0] = 120.0  # 4 epochs in 120 s: 6 left take 180 s
    assert progress.unit_done("g", 2, 4) == "[3/5 runs, 2 min elapsed, ETA 3 min] g"
    now[0] = 300.0
    assert progress.unit_done("h", 2, 6) == "[5/5 runs, 5 min elapsed, ETA 0 s] h"
    assert [duration_text(s) for s in (59, 61, 5400)] == ["59 s", "1 min", "1.5 h"]


@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: spawns
def test_run_units_reports_each_unit_as_it_ends(jobs):
    seen = []
    units = [(math.factorial, (n,)) for n in (3, 4, 5)]
    results = run_units(units, jobs, 1, lambda i, result: seen.append((i, result)))
    assert results == [6, 24, 120] and sorted(seen) == [(0, 6), (1, 24), (2, 120)]


def _suite():
    return tiny_suite(
        "progress", 1,
        teachers={"t_a": {"arch": "resnet8", "seed": 1}},
        teacher_sets={"one": ["t_a"]},
        pairs=[{"teachers": "one", "students": ["resnet8"]}],
        strategies=["uniform"],
    )


@pytest.mark.slow  # a bench run
def test_bench_logs_runs_done_of_the_plan_with_an_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="multikd")
    run_bench(parse_suite(_suite()), tmp_path / "out", results=False)
    lines = [m for m in (PROGRESS_LINE.search(r.getMessage()) for r in caplog.records) if m]
    assert [(m[1], m[2]) for m in lines] == [("1", "3"), ("3", "3")]  # teacher, then group
    assert lines[-1][0].endswith("ETA 0 s]")
    caplog.clear()  # a second call finds every run finished: nothing left, ETA 0
    run_bench(parse_suite(_suite()), tmp_path / "out", results=False)
    lines = [m for m in (PROGRESS_LINE.search(r.getMessage()) for r in caplog.records) if m]
    assert re.fullmatch(r"\[3/3 runs, \d+ s elapsed, ETA 0 s\]", lines[-1][0])


@pytest.mark.slow
def test_bench_progress_reaches_stderr_and_quiet_hides_it(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(_suite()))

    def bench(*flags: str) -> str:
        done = subprocess.run([sys.executable, "-m", "multikd", "bench", str(path), "--out",
                               str(tmp_path / "out"), *flags], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert not PROGRESS_LINE.search(bench("--quiet"))
    assert PROGRESS_LINE.search(bench())  # every run finished now: counted all the same
