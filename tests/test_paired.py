"""Paired statistics: t intervals over seeds and bootstrap over test images, checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from multikd import cli
from multikd.results.paired import bootstrap_interval, format_paired, paired_table, t_interval
from multikd.results.tables import ALONE, ResultsError, collect_runs
from multikd.train.runio import RunDir


def test_t_interval_by_hand():
    # d = 1, 2, 3: mean 2, sd 1, t_{0.975,2} = 4.302652729749464 -> half width 4.30265/sqrt(3)
    r = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (r.diff, r.n, r.test) == (2.0, 3, "t")
    assert r.low == pytest.approx(2 - half, abs=1e-9) and r.high == pytest.approx(2 + half, abs=1e-9)
    assert not r.significant  # 2 - 2.484 < 0
    assert t_interval([1.0, 1.1, 0.9]).significant
    one = t_interval([0.5])
    assert one.diff == 0.5 and math.isnan(one.low) and not one.significant


def test_bootstrap_matches_its_normal_approximation_and_is_paired():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 10, 4000)
    b = np.where(rng.random(4000) < 0.6, label, (label + 1) % 10)  # ~60% right
    a = b.copy()
    flip = rng.random(4000) < 0.05  # a fixes 5% of the images, differs nowhere else
    a[flip] = label[flip]
    r = bootstrap_interval(a, b, label, reps=20000)
    diff = 100.0 * ((a == label).mean() - (b == label).mean())
    assert r.diff == pytest.approx(diff) and r.test == "bootstrap" and r.significant
    d = (a == label).astype(float) - (b == label)
    se = 100.0 * d.std() / math.sqrt(len(d))
    assert r.low == pytest.approx(diff - 1.96 * se, abs=0.15 * se)
    assert r.high == pytest.approx(diff + 1.96 * se, abs=0.15 * se)
    same = bootstrap_interval(b, b, label)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0) and not same.significant
    with pytest.raises(ResultsError, match="1-d arrays of one length"):
        bootstrap_interval(a[:3], b, label)


def _run(root: Path, name: str, kind: str, seed: int, acc: float, pred=None, label=None,
         strategy="uniform") -> None:
    path = root / name
    path.mkdir(parents=True)
    summary = {
        "status": "finished", "kind": kind, "student_arch": "resnet8", "seed": seed,
        "dataset": "synthetic", "epochs": 3, "last_test_acc": acc, "best_test_acc": acc + 1,
        "best_epoch": 2, "teacher_names": ["t1", "t2"] if kind == "distill" else [],
        "strategy": strategy if kind == "distill" else None, "strategy_params": {},
        "features_used": False,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    if pred is not None:
        RunDir(path).write_predictions(pred, label)


def test_paired_table_over_seeds(tmp_path):
    # alone 60, 62, 61; uniform 63, 65.5, 64 -> d = 3, 3.5, 3 (significant);
    # random 59, 64, 61 -> d = -1, 2, 0 (not)
    for seed, (alone, uniform, random) in enumerate([(60, 63, 59), (62, 65.5, 64), (61, 64, 61)]):
        _run(tmp_path, f"alone{seed}", "student", seed, alone)
        _run(tmp_path, f"uni{seed}", "distill", seed, uniform)
        _run(tmp_path, f"rnd{seed}", "distill", seed, random, strategy="random")
    table = paired_table(collect_runs(tmp_path), vs="student")
    row = table.index[0]
    assert table.attrs["methods"] == [ALONE, "random", "uniform"]
    expected = t_interval([3.0, 3.5, 3.0])
    assert table.at[row, ("uniform", "diff")] == pytest.approx(expected.diff)
    assert table.at[row, ("uniform", "low")] == pytest.approx(expected.low)
    assert table.at[row, ("uniform", "significant")]
    assert table.at[row, ("random", "diff")] == pytest.approx(1 / 3)
    assert not table.at[row, ("random", "significant")]
    assert table.at[row, (ALONE, "diff")] == pytest.approx(61.0)  # the reference's own mean
    text = format_paired(table)
    assert "**+3.17 [" in text and "| +0.33 [" in text and "student alone (reference)" in text
    vs_uniform = paired_table(collect_runs(tmp_path), vs="uniform")
    assert vs_uniform.at[row, (ALONE, "diff")] == pytest.approx(-19 / 6)
    assert "\\textbf{+3.17" in format_paired(table, "tex")
    csv_text = format_paired(table, "csv")
    assert csv_text.splitlines()[0].startswith("metric,vs,dataset,student,teachers,epochs")
    with pytest.raises(ResultsError, match="--vs 'nosuch' is not a column.*random, uniform"):
        paired_table(collect_runs(tmp_path), vs="nosuch")


def test_one_seed_uses_the_saved_predictions(tmp_path):
    label = np.arange(1000) % 10
    wrong = (label + 1) % 10
    alone = np.where(np.arange(1000) < 500, label, wrong)      # 50.0%
    better = np.where(np.arange(1000) < 560, label, wrong)     # 56.0%, never worse per image
    _run(tmp_path, "alone", "student", 0, 50.0, alone, label)
    _run(tmp_path, "uni", "distill", 0, 56.0, better, label)
    table = paired_table(collect_runs(tmp_path))
    row = table.index[0]
    assert table.at[row, ("uniform", "test")] == "bootstrap"
    assert table.at[row, ("uniform", "diff")] == pytest.approx(6.0)
    # 60 of 1000 images improve: sd of the mean 100*sqrt(.06*.94/1000) = 0.751 points
    assert table.at[row, ("uniform", "low")] == pytest.approx(6.0 - 1.96 * 0.751, abs=0.2)
    assert table.at[row, ("uniform", "significant")]
    best = paired_table(collect_runs(tmp_path), metric="best")  # no per-epoch predictions
    assert best.at[row, ("uniform", "test")] == "" and math.isnan(best.at[row, ("uniform", "low")])


def test_table_cli_vs(tmp_path, capsys):
    for seed in (0, 1):
        _run(tmp_path, f"alone{seed}", "student", seed, 60.0 + seed)
        _run(tmp_path, f"uni{seed}", "distill", seed, 63.0 + 2 * seed)
    assert cli.main(["table", str(tmp_path), "--vs", "student", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "paired difference to student alone" in out and "+3.50 [" in out
    assert cli.main(["table", str(tmp_path), "--vs", "ghost", "--quiet"]) != 0
    assert "not a column" in capsys.readouterr().err
