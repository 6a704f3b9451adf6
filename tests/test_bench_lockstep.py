"""Lockstep training equals separate runs; an interrupted sweep resumes without redoing work."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from multikd.train import engine
from multikd.bench.runner import run_bench
from multikd.train.runio import RunDir
from multikd.bench.suite import parse_suite

TIME_COLUMNS = ("epoch_time_s", "images_per_s")

SUITE = {
    "name": "tiny",
    "data": {
        "dataset": "synthetic",
        "synthetic": {
            # 3 batches of 16 an epoch: enough for `random` to mix its teachers, and small,
            # since this suite is trained a dozen times over (alone, lockstep, workers, shards)
            "num_classes": 4, "num_superclasses": 2, "train_size": 48, "test_size": 32, "seed": 3,
        },
    },
    "recipe": {
        "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "runtime": {"device": "cpu"},
        "output": {"quiet": True},
    },
    "features": {"gamma": 2.0},
    "teachers": {
        "t_a": {"arch": "resnet8", "seed": 1},
        "t_b": {"arch": "resnet8", "seed": 2, "recipe": {"optim": {"epochs": 1}}},
    },
    "teacher_sets": {"duo": ["t_a", "t_b"]},
    "pairs": [{"teachers": "duo", "students": ["resnet8"]}],
    # `random` draws a teacher per batch from its own generator: sharing must not disturb it
    "strategies": ["uniform", "random"],
    "variants": ["logits", "logits+feat"],
    "seeds": [0, 1],
    "cpu_threads": 1,
}


def _runs(out: Path) -> dict[str, Path]:
    configs = sorted(out.glob("runs/**/config.yaml"))
    return {str(p.parent.relative_to(out)): p.parent for p in configs}


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=list(TIME_COLUMNS))


def _assert_same_runs(a: Path, b: Path) -> None:
    runs_a, runs_b = _runs(a), _runs(b)
    assert sorted(runs_a) == sorted(runs_b) and len(runs_a) == 10
    for name in runs_a:
        ma, mb = _metrics(runs_a[name]), _metrics(runs_b[name])
        assert list(ma.columns) == list(mb.columns), name
        pd.testing.assert_frame_equal(ma, mb, check_exact=False, rtol=0, atol=1e-6, obj=name)
        ca = torch.load(runs_a[name] / "checkpoint.pt", weights_only=True)
        cb = torch.load(runs_b[name] / "checkpoint.pt", weights_only=True)
        for key in ca["model"]:
            torch.testing.assert_close(ca["model"][key], cb["model"][key], rtol=0, atol=1e-6,
                                       msg=f"{name} {key}")
        # each member's own global RNG stream and strategy state, as in its separate run
        assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"]), name
        assert ca["strategy"].keys() == cb["strategy"].keys(), name
        for key in ca["strategy"]:
            assert torch.equal(ca["strategy"][key], cb["strategy"][key]), name


def train_separately(out: Path) -> Path:
    """The reference: every run of SUITE trained alone by the engine (what `multikd distill`
    does); tests/conftest.py's session fixture ``separate`` holds one for every module."""
    run_bench(parse_suite(SUITE), out, lockstep=False, results=False)
    return out


@pytest.mark.slow
def test_lockstep_equals_separate_runs(separate, tmp_path):
    report = run_bench(parse_suite(SUITE), tmp_path, lockstep=True, results=False)
    assert len(report.trained) == 2 + 10 and not report.resumed and not report.skipped
    _assert_same_runs(tmp_path, separate)
    # the random strategy really drew different teachers across batches (weights vary)
    metrics = pd.read_csv(tmp_path / "runs/duo/resnet8/random_s0/metrics.csv")
    assert 0.0 < metrics["w_t_a"].iloc[0] < 1.0
    # teachers were verified and recorded; the distilled runs carry the same accuracies
    recorded = json.loads((tmp_path / "teachers.json").read_text())
    summary = json.loads((tmp_path / "runs/duo/resnet8/uniform+feat_s1/summary.json").read_text())
    assert set(recorded) == {"t_a", "t_b"}
    for tid in recorded:
        assert recorded[tid]["source"] == "trained"
        measured_by_run = summary["teacher_test_acc"][tid]
        assert recorded[tid]["test_acc"] == pytest.approx(measured_by_run, abs=1e-9)


@pytest.mark.slow
def test_two_worker_processes_give_the_numbers_of_one_process(separate, tmp_path):
    """--jobs 2: teachers, then lockstep groups, in two spawned workers; same files."""
    report = run_bench(parse_suite(SUITE), tmp_path, lockstep=True, results=False, jobs=2)
    assert len(report.trained) == 2 + 10 and not report.resumed and not report.skipped
    _assert_same_runs(tmp_path, separate)
    again = run_bench(parse_suite(SUITE), tmp_path, results=False, jobs=2)
    assert len(again.skipped) == 2 + 10 and not again.trained


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_redoing_finished_runs(separate, tmp_path, monkeypatch):
    original_end_epoch = engine.TrainingRun.end_epoch
    calls = {"n": 0}

    def end_epoch_then_die(self, epoch, train_time):
        # seed 1's group: die in epoch 2 after 2 of its 5 members wrote their checkpoint
        if self.cfg.kind != "teacher" and self.cfg.runtime.seed == 1 and epoch == 2:
            if calls["n"] == 2:
                raise KeyboardInterrupt
            calls["n"] += 1
        return original_end_epoch(self, epoch, train_time)

    monkeypatch.setattr(engine.TrainingRun, "end_epoch", end_epoch_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_bench(parse_suite(SUITE), tmp_path, results=False)
    monkeypatch.setattr(engine.TrainingRun, "end_epoch", original_end_epoch)

    states = {name: RunDir(p).state() for name, p in _runs(tmp_path).items()}
    finished = sorted(n for n, s in states.items() if s == "finished")
    assert len(finished) == 5 and all(n.endswith("_s0") for n in finished)
    runs = _runs(tmp_path)
    epochs = sorted(len(pd.read_csv(runs[n] / "metrics.csv")) for n in states if n.endswith("_s1"))
    assert epochs == [1, 1, 1, 2, 2]  # members stopped after different epochs
    done = [p for p in tmp_path.rglob("*")
            if p.is_file() and ("_s0" in str(p) or "teachers/" in str(p))]
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    prepared = []
    original_prepare = engine.prepare_run

    def counting_prepare(cfg, *args, **kwargs):
        prepared.append((cfg.output.run_dir, kwargs.get("resuming", args[0] if args else False)))
        return original_prepare(cfg, *args, **kwargs)

    monkeypatch.setattr(engine, "prepare_run", counting_prepare)
    report = run_bench(parse_suite(SUITE), tmp_path, results=False)

    # only seed 1's five runs were touched, all resumed from their own checkpoints
    assert sorted(Path(d).name for d, _ in prepared) == sorted(
        n.split("/")[-1] for n in states if n.endswith("_s1")
    )
    assert all(resuming for _, resuming in prepared)
    assert len(report.resumed) == 5 and len(report.skipped) == 5 + 2 and not report.trained
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    _assert_same_runs(tmp_path, separate)


def test_lockstep_members_share_one_copy_of_the_teacher_weights():
    import torch

    from multikd.method.ensemble import TeacherEnsemble
    from multikd.train.lockstep import _share_teacher_weights
    from multikd.models import create_model

    torch.manual_seed(0)
    source = TeacherEnsemble([create_model("resnet8", 10), create_model("resnet14", 10)])
    member = TeacherEnsemble([create_model("resnet8", 10), create_model("resnet14", 10)])
    for mine, theirs in zip(member.teachers, source.teachers):
        mine.load_state_dict(theirs.state_dict())  # same checkpoints, separate storage
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    before = member(x, y).logits
    _share_teacher_weights(member, source)
    for mine, theirs in zip(member.teachers, source.teachers):
        pairs = zip(mine.state_dict().values(), theirs.state_dict().values())
        assert all(a.data_ptr() == b.data_ptr() for a, b in pairs)
        assert not any(p.requires_grad for p in mine.parameters())
    assert torch.equal(member(x, y).logits, before)
    assert all(not t.training for t in member.teachers)
