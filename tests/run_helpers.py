"""Helpers shared by the tests that train tiny runs through the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from multikd.cli import main


def synthetic_args(train_size: int, test_size: int) -> list[str]:
    """CLI flags for a tiny 10-class synthetic run on the CPU, batch 32, quiet."""
    synth = {"num_classes": 10, "num_superclasses": 2, "train_size": train_size,
             "test_size": test_size, "seed": 0}
    return ["--dataset", "synthetic", "--set", "data.synthetic=" + json.dumps(synth),
            "--batch-size", "32", "--device", "cpu", "--quiet"]


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv of a run, one dict of strings per epoch."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_two_teachers(root: Path, data_args: list[str]) -> Path:
    """Two finished 1-epoch resnet8 teacher runs, root/tA (seed 0) and root/tB (seed 1)."""
    for name, seed in (("tA", "0"), ("tB", "1")):
        args = ["train-teacher", "--arch", "resnet8", "--epochs", "1", "--seed", seed]
        assert main([*args, "--out", str(root / name), *data_args]) == 0
    return root


def train_epoch(run, epoch: int) -> dict:
    """One epoch of a prepared ``engine.TrainingRun`` the way the engine runs it; its row."""
    from multikd.train import engine

    run.splits.train.set_epoch(epoch)
    run.train_loader.sampler.set_epoch(epoch)
    run.begin_epoch(epoch)
    for step, batch in enumerate(run.train_loader):
        x, y = engine.to_device(batch[0], batch[1], run.device)
        run.train_step(step, x, y)
    return run.end_epoch(epoch, 1.0)


def kill_after_first_checkpoint(args: list[str], run_dir: Path) -> None:
    """Run ``multikd ARGS --out run_dir`` in a child process and SIGKILL it as soon as its
    first epoch checkpoint exists (a run killed mid-training, to be resumed)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    child = subprocess.Popen([sys.executable, "-m", "multikd", *args, "--out", str(run_dir)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (Path(run_dir) / "checkpoint.pt").exists():
        if child.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: "
                                 f"{child.stderr.read().decode()}")
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
