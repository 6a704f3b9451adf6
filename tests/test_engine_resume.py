"""Exact resume: a distill run SIGKILLed mid-run and resumed equals one never interrupted.

Everything a run's future depends on is in its checkpoint (weights, adapters, optimizer,
scheduler, strategy state, RNG states), and the data layer makes the batch order and the
augmented views pure functions of (seed, epoch, index). The run uses the ``random``
strategy (a seeded generator drawing one teacher per batch: its state must be restored too)
and the feature loss (adapters and their optimizer state). On CPU the resumed run must
therefore reproduce the uninterrupted run's metrics exactly, bit for bit; only the timing
columns differ.
"""

import csv
import json

import pytest
import torch
from run_helpers import kill_after_first_checkpoint

from multikd.cli import main

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 160, "test_size": 64, "seed": 0}
ARGS = [
    "distill", "--student", "resnet8", "--teacher", "resnet8", "--teacher", "resnet14",
    "--strategy", "random", "--gamma", "1.0", "--epochs", "3", "--batch-size", "32",
    "--val-size", "32", "--seed", "3", "--dataset", "synthetic",
    "--set", "data.synthetic=" + json.dumps(SYNTH), "--device", "cpu", "--quiet",
]
TIME_COLUMNS = ("epoch_time_s", "images_per_s")


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def _kill_after_first_checkpoint(run_dir) -> int:
    """Start the run in a child process; SIGKILL it once epoch 1's checkpoint exists; the
    epoch its checkpoint holds."""
    kill_after_first_checkpoint(ARGS, run_dir)
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    killed_after = _kill_after_first_checkpoint(killed)
    assert killed_after < 3 and not (killed / "summary.json").exists()
    assert main([*ARGS, "--out", str(straight)]) == 0
    assert main(["distill", "--resume", str(killed), "--quiet"]) == 0

    expected, resumed = _rows(straight), _rows(killed)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    assert {"loss_feat", "w_resnet8", "w_resnet14", "val_acc"} <= set(resumed[0])
    assert resumed == expected  # exact: every loss part, accuracy and teacher weight

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for part in ("model", "learner"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    summary_a = json.loads((straight / "summary.json").read_text())
    summary_b = json.loads((killed / "summary.json").read_text())
    for key in ("last_test_acc", "best_test_acc", "val_selected_test_acc", "teacher_test_acc", "config_hash"):
        assert summary_a[key] == summary_b[key], key
