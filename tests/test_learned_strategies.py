"""MTKD-RL and MMKD as first-class strategies: through the CLI, exact resume after SIGKILL,
lockstep groups equal to separate runs, the teacher cache where only logits are needed, and
weights that move toward the better teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from run_helpers import dry_run_suite, kill_after_first_checkpoint, tiny_suite

from multikd.bench.runner import run_bench
from multikd.bench.suite import parse_suite
from multikd.cli import main

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 96, "test_size": 64, "seed": 0}
DATA = ["--batch-size", "32", "--dataset", "synthetic", "--set",
        "data.synthetic=" + json.dumps(SYNTH), "--device", "cpu", "--quiet"]
TIME_COLUMNS = ["epoch_time_s", "images_per_s"]
STRATEGIES = {
    "mtkd-rl": ["--strategy", "mtkd-rl", "--strategy-param", "agent_step=2",
                "--strategy-param", "dynamic=true", "--gamma", "5"],
    "mmkd": ["--strategy", "mmkd", "--strategy-param", "meta_freq=2", "--gamma", "10"],
}


def _args(strategy: str, epochs: int = 3) -> list[str]:
    return ["distill", "--student", "resnet8", "--teacher", "resnet8", "--teacher", "resnet14",
            *STRATEGIES[strategy], "--epochs", str(epochs), "--seed", "4", *DATA]


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=TIME_COLUMNS)


def _assert_same_state(a, b, where=""):
    """Nested dicts/lists of tensors, equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(strategy, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    kill_after_first_checkpoint(_args(strategy), killed)
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] < 3
    assert main([*_args(strategy), "--out", str(straight)]) == 0
    assert main(["distill", "--resume", str(killed), "--quiet"]) == 0
    pd.testing.assert_frame_equal(_metrics(killed), _metrics(straight), check_exact=True)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("strategy_networks.") for k in a["learner"])
    for part in ("model", "learner", "strategy", "optimizer"):
        _assert_same_state(a[part], b[part], part)


def _suite(strategies, variants=("logits+feat",), epochs=2) -> dict:
    return tiny_suite(
        "learned", epochs,
        features={"gamma": 5.0},
        teachers={"t_a": {"arch": "resnet8", "seed": 1},
                  "t_b": {"arch": "resnet8", "seed": 2, "recipe": {"optim": {"epochs": 1}}}},
        teacher_sets={"duo": ["t_a", "t_b"]},
        pairs=[{"teachers": "duo", "students": ["resnet8"]}],
        strategies=strategies, variants=list(variants), baseline=False,
        # 48 training images (3 batches): the lockstep runs are compared with the separate ones
        data={"dataset": "synthetic", "synthetic": {
            "num_classes": 4, "num_superclasses": 2, "train_size": 48, "test_size": 32, "seed": 3}},
    )


LOCKSTEP = [
    {"name": "uniform", "variants": ["logits"]},
    {"name": "mtkd-rl", "params": {"agent_step": 2}, "variants": ["logits+feat"]},
    {"name": "mmkd", "params": {"meta_freq": 3}, "variants": ["logits", "logits+feat"]},
]


@pytest.mark.slow
def test_lockstep_members_keep_their_own_strategy_state(tmp_path):
    suite = parse_suite(_suite(LOCKSTEP))
    run_bench(suite, tmp_path / "separate", lockstep=False, results=False)
    run_bench(suite, tmp_path / "lockstep", lockstep=True, results=False)
    runs = sorted(p.parent.relative_to(tmp_path / "separate")
                  for p in (tmp_path / "separate").glob("runs/**/config.yaml"))
    assert len(runs) == 4
    for run in runs:
        a, b = tmp_path / "separate" / run, tmp_path / "lockstep" / run
        pd.testing.assert_frame_equal(_metrics(a), _metrics(b), check_exact=False, rtol=0,
                                      atol=1e-6, obj=str(run))
        ca = torch.load(a / "checkpoint.pt", weights_only=True)
        cb = torch.load(b / "checkpoint.pt", weights_only=True)
        for key in ca["learner"]:
            torch.testing.assert_close(ca["learner"][key], cb["learner"][key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_mmkd_on_logits_works_with_the_teacher_cache(tmp_path):
    base = ["distill", "--student", "resnet8", "--teacher", "resnet8", "--teacher", "resnet14",
            "--strategy", "mmkd", "--strategy-param", "meta_freq=2", "--epochs", "2", *DATA]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    cached = [*base, "--set", f"runtime.teacher_cache={tmp_path / 'cache'}",
              "--set", "runtime.teacher_cache_dtype=float32"]
    assert main([*cached, "--out", str(tmp_path / "cold")]) == 0
    assert main([*cached, "--out", str(tmp_path / "warm")]) == 0  # served by the cache
    warm = _metrics(tmp_path / "warm")
    assert warm["teacher_cache_hit_rate"].tolist() == [1.0, 1.0]
    pd.testing.assert_frame_equal(
        warm.drop(columns=["teacher_cache_hit_rate"]), _metrics(tmp_path / "plain"),
        check_exact=False, rtol=0, atol=1e-6)


# more images: the trained teacher reaches ~45% on 10 classes (the other one ~10%)
DATA_320 = [*DATA[:5], "data.synthetic=" + json.dumps({**SYNTH, "train_size": 320}), *DATA[6:]]


@pytest.fixture(scope="module")
def good_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "teacher"
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "4", "--out", str(out),
                 *DATA_320]) == 0
    return out / "checkpoint.pt"


@pytest.mark.parametrize("strategy, params", [
    ("mtkd-rl", ["--gamma", "5", "--strategy-param", "agent_step=2"]),
    ("mmkd", ["--gamma", "5", "--strategy-param", "meta_freq=2",
              "--strategy-param", "meta_lr=0.01"]),
])
@pytest.mark.slow
def test_weights_move_toward_the_better_teacher(good_teacher, strategy, params, tmp_path):
    """One trained teacher, one left at its random initialisation (the poor one)."""
    assert main(["distill", "--student", "resnet8", "--teacher", f"resnet8={good_teacher}",
                 "--teacher", "resnet8", "--strategy", strategy, *params, "--epochs", "3",
                 "--out", str(tmp_path), *DATA_320]) == 0
    metrics = _metrics(tmp_path)
    assert metrics["strategy_loss"].notna().all()  # the agent's BCE / the meta CE, per epoch
    if strategy == "mmkd":
        assert (metrics["strategy_loss"] > 0).all()
    good = metrics["w_resnet8"].tolist()
    if strategy == "mtkd-rl":  # every weight 1 in the first epoch, then the policy's mix
        assert good[0] == pytest.approx(0.5) and min(good[1:]) > 0.5
    else:
        assert good[-1] > good[0] and good[-1] > 0.75


def test_suites_with_learned_strategies_dry_run(capsys):
    for name in ("mtkd-rl", "mmkd"):
        out = dry_run_suite(name, capsys)
        assert name in out
