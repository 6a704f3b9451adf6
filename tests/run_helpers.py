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

import pytest
import torch

from multikd.cli import main

HEAVY_ARCHS = frozenset({"ResNet50", "resnet110", "resnet32x4", "vgg11", "vgg13", "vgg16",
                         "vgg19", "wrn_28_4", "RegNetX_400MF", "RegNetY_400MF"})
"""The zoo's largest models: building and running each takes a good part of a second."""


def zoo_params(archs) -> list:
    """``archs`` as pytest parameters, those of HEAVY_ARCHS marked slow (and zoo): the fast
    tests check the rest of the zoo, the full suite and .ci/run's AVX2 pass every one."""
    heavy = [pytest.mark.slow, pytest.mark.zoo]
    return [pytest.param(a, marks=heavy) if a in HEAVY_ARCHS else a for a in archs]


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


def tiny_suite(name: str, epochs: int, **keys) -> dict:
    """A suite on 4-class synthetic data (96 train / 48 test images), CPU, quiet, batch 16,
    lr 0.05, logits only, seed 0, one CPU thread; ``keys`` add or replace suite keys."""
    return {
        "name": name,
        "data": {"dataset": "synthetic", "synthetic": {
            "num_classes": 4, "num_superclasses": 2, "train_size": 96, "test_size": 48, "seed": 3}},
        "recipe": {"optim": {"epochs": epochs, "batch_size": 16, "lr": 0.05},
                   "runtime": {"device": "cpu"}, "output": {"quiet": True}},
        "variants": ["logits"], "seeds": [0], "cpu_threads": 1,
        **keys,
    }


def dry_run_suite(name: str, capsys, out: str = "/nonexistent/dry") -> str:
    """What ``multikd bench experiments/cifar100/NAME.yaml --dry-run`` prints (exit code 0)."""
    path = Path(__file__).parents[1] / "experiments" / "cifar100" / f"{name}.yaml"
    assert main(["bench", str(path), "--dry-run", "--out", out]) == 0
    return capsys.readouterr().out
