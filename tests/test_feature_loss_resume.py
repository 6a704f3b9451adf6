"""Exact resume with feature modules (issue 36, item 4): a distill run with CRD's memory
banks, or with a feature loss that trains modules of its own, SIGKILLed after epoch 1 and
resumed equals the run never interrupted, bit for bit on the CPU (only the time columns
differ), and its checkpoint holds each teacher's module state: CRD's two memory banks, its
fixed normalisation constants and its negative-sampling generator.

Written like ``test_engine_resume.py``: the killed run is a child process, the uninterrupted
one runs in this process with the same thread count (the same kernels).
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from run_helpers import kill_after_first_checkpoint

from multikd.cli import main

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 160, "test_size": 64, "seed": 0}
BASE = [
    "distill", "--student", "resnet8", "--teacher", "resnet8", "--teacher", "resnet14",
    "--strategy", "ce-filter", "--epochs", "3", "--batch-size", "32", "--val-size", "32",
    "--seed", "3", "--dataset", "synthetic", "--set", "data.synthetic=" + json.dumps(SYNTH),
    "--device", "cpu", "--quiet",
]
LOSSES = {
    # memory banks (buffers), Z constants, a generator (extra state), two embeddings
    "crd": ["--gamma", "0.8", "--set", "loss.feature_loss=crd",
            "--set", 'loss.feature_params={"nce_k": 16, "feat_dim": 8}'],
    # ABFs (convolutions and BatchNorm with running statistics) and a warm-up by epoch
    "reviewkd": ["--gamma", "1.0", "--set", "loss.feature_loss=reviewkd"],
}
TIME_COLUMNS = ("epoch_time_s", "images_per_s")


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def _equal(a, b) -> bool:
    """Tensors equal bit for bit; a module's extra state (a dict) entry by entry."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _modules_state(learner: dict) -> dict:
    return {k: v for k, v in learner.items() if k.startswith("feature_modules.")}


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_sigkill_then_resume_equals_the_uninterrupted_run(loss, tmp_path):
    args = [*BASE, *LOSSES[loss]]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    kill_after_first_checkpoint(args, killed)
    first = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert first["epoch"] < 3 and not (killed / "summary.json").exists()
    assert main([*args, "--out", str(straight)]) == 0
    assert main(["distill", "--resume", str(killed), "--quiet"]) == 0

    expected, resumed = _rows(straight), _rows(killed)
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    assert {"loss_feat", "val_acc"} <= set(resumed[0]) and float(resumed[0]["loss_feat"]) > 0
    assert resumed == expected  # exact: every loss part, accuracy and teacher weight

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for part in ("model", "learner"):
        assert a[part].keys() == b[part].keys()
        assert all(_equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():  # the modules' momentum buffers too
        assert _equal(state, b["optimizer"]["state"][i])

    saved = _modules_state(first["learner"])
    for k in range(2):  # one module per teacher, its whole state in the checkpoint
        mine = {n.split(".", 2)[2] for n in saved if n.startswith(f"feature_modules.{k}.")}
        if loss == "crd":
            assert {"memory_s", "memory_t", "z_s", "z_t", "z_set", "_extra_state",
                    "embed_s.linear.weight", "embed_t.linear.weight"} <= mine
        else:
            assert any(n.endswith("running_mean") for n in mine), sorted(mine)
    if loss == "crd":
        for k in range(2):
            prefix = f"feature_modules.{k}."
            bank = saved[prefix + "memory_s"]
            assert bank.shape == (128, 8)  # N training samples (160 - 32 validation) x feat_dim
            assert bool(saved[prefix + "z_set"]) and float(saved[prefix + "z_s"]) > 0
            extra = saved[prefix + "_extra_state"]
            # drawn once per batch: 128 / 32 batches an epoch
            assert extra["rng"] is not None and extra["draws"] == 4 * first["epoch"]
            # the banks moved in epochs 2 and 3, and the resumed run moved them alike
            assert not torch.equal(bank, a["learner"][prefix + "memory_s"])

    summary_a = json.loads((straight / "summary.json").read_text())
    summary_b = json.loads((killed / "summary.json").read_text())
    for key in ("last_test_acc", "best_test_acc", "val_selected_test_acc", "config_hash"):
        assert summary_a[key] == summary_b[key], key
