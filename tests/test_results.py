"""Results tables and plots from hand-built run directories with known numbers."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from multikd import cli
from multikd.results.tables import (
    ALONE, ResultsError, collect_runs, format_table, load_table, strategy_table, tex_escape,
    write_table,
)

TEACHERS = ["strong", "weak"]
TEACHER_ACC = {"strong": 80.0, "weak": 40.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (kind, strategy, features, seed) -> (last, best, val-selected) accuracy
RUNS = {
    ("student", None, False, 0): (60.0, 61.0, 60.5),
    ("student", None, False, 1): (62.0, 63.5, 61.0),
    ("student", None, False, 2): (61.0, 62.0, 60.0),
    ("distill", "uniform", False, 0): (63.0, 64.0, 63.0),
    ("distill", "uniform", False, 1): (65.5, 66.0, 64.0),
    ("distill", "uniform", True, 0): (64.0, 68.0, 66.0),
    ("distill", "uniform", True, 1): (66.0, 69.0, 66.5),
    ("distill", "ce-filter", False, 0): (66.0, 67.0, 65.0),
    ("distill", "ce-filter", False, 1): (67.25, 67.5, 66.0),
    ("distill", "ce-filter", True, 0): (65.0, 66.0, 64.0),
}


def _write_run(path: Path, summary: dict, metrics: list[dict] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    if metrics:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(metrics[0]))
        writer.writeheader()
        writer.writerows(metrics)
        (path / "metrics.csv").write_text(out.getvalue())
    return path


def _summary(kind, strategy, features, seed, accs, student="resnet8") -> dict:
    last, best, val = accs
    summary = {
        "status": "finished", "kind": kind, "student_arch": student, "seed": seed,
        "dataset": "synthetic", "epochs": 3, "last_test_acc": last, "best_test_acc": best,
        "best_epoch": 2, "val_selected_test_acc": val, "wall_time_s": 1.0,
        "versions": {"torch": "x"}, "config_hash": "h", "unknown_key": [1, 2],
        "teacher_names": TEACHERS if kind == "distill" else [],
        "strategy": strategy, "strategy_params": {}, "features_used": features,
    }
    if kind == "distill":
        summary["teacher_test_acc"] = dict(TEACHER_ACC)
    return summary


def _metrics(kind, strategy, seed) -> list[dict]:
    rows = []
    for epoch in (1, 2, 3):
        row = {"epoch": epoch, "lr": 0.05, "loss_total": 1.0 / epoch, "train_acc": 50.0,
               "val_acc": "", "test_acc": 10.0 * epoch + seed, "extra_col": "x"}
        if kind == "distill":
            row |= {"w_strong": 0.7, "w_weak": 0.3, "ce_strong": 0.5, "ce_weak": 2.0,
                    "kept_strong": 1.0, "kept_weak": 0.5}
        rows.append(row | {"epoch_time_s": 1.0, "images_per_s": 100.0})
    return rows


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    for (kind, strategy, features, seed), accs in RUNS.items():
        name = f"{strategy or 'student'}{'+feat' if features else ''}_s{seed}"
        _write_run(root / "trio" / "resnet8" / name, _summary(kind, strategy, features, seed, accs),
                   _metrics(kind, strategy, seed))
    return root


def _expected(keys, position):
    values = [RUNS[k][position] for k in keys]
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.mean(values), std, len(values)


ROW = ("synthetic", "resnet8", "strong+weak", 3)
ALONE_KEYS = [("student", None, False, s) for s in (0, 1, 2)]
UNIFORM_KEYS = [("distill", "uniform", False, s) for s in (0, 1)]
CE_FEAT_KEYS = [("distill", "ce-filter", True, 0)]


def _cell(table, method):
    return tuple(table.loc[ROW, (method, stat)] for stat in ("mean", "std", "n"))


def test_collect_runs_flattens_and_normalizes(runs_dir):
    df = collect_runs(runs_dir)
    assert len(df) == len(RUNS)
    assert {"path", "versions.torch", "unknown_key", "student", "features"} <= set(df.columns)
    assert set(df["student"]) == {"resnet8"}
    assert df["teacher_names"].map(len).max() == 2


@pytest.mark.parametrize("metric,position", [("last", 0), ("best", 1), ("val", 2)])
def test_cells_are_mean_sample_std_and_n(runs_dir, metric, position):
    table = load_table(runs_dir, metric=metric)
    assert list(table.index) == [ROW]
    cells = [(ALONE, ALONE_KEYS), ("uniform", UNIFORM_KEYS), ("ce-filter +feat", CE_FEAT_KEYS)]
    for method, keys in cells:
        mean, std, n = _cell(table, method)
        exp_mean, exp_std, exp_n = _expected(keys, position)
        assert mean == pytest.approx(exp_mean) and n == exp_n
        assert (math.isnan(std) and math.isnan(exp_std)) or std == pytest.approx(exp_std)


def test_hand_computed_golden_last(runs_dir):
    table = load_table(runs_dir, metric="last")
    # student alone: 60, 62, 61 -> mean 61, sample std 1 (population std would be 0.816)
    assert _cell(table, ALONE) == pytest.approx((61.0, 1.0, 3))
    # uniform: 63, 65.5 -> mean 64.25, std |a-b|/sqrt(2) = 1.76777
    assert _cell(table, "uniform") == pytest.approx((64.25, 2.5 / math.sqrt(2), 2))
    assert list(table.columns.get_level_values(0).unique()) == [
        ALONE, "ce-filter", "ce-filter +feat", "uniform", "uniform +feat",
        "strong (teacher)", "weak (teacher)",
    ]
    mean, std, n = _cell(table, "strong (teacher)")
    assert (mean, n) == (80.0, 1) and math.isnan(std)


def test_markdown_bold_on_best_student_cell_per_metric(runs_dir):
    last = format_table(load_table(runs_dir, "last"), "md")
    best = format_table(load_table(runs_dir, "best"), "md")
    val = format_table(load_table(runs_dir, "val"), "md")
    # last: ce-filter 66.625 is best; best: uniform +feat 68.5; val: uniform +feat 66.25
    assert "**66.62 ± 0.88 (2)**" in last
    assert "**68.50 ± 0.71 (2)**" in best
    assert "**66.25 ± 0.35 (2)**" in val
    for text in (last, best, val):
        assert text.count("**") == 4  # the caption and exactly one bold cell
        assert "80.00 ± — (1)" in text  # teachers shown, never bold, single value
    assert "65.00 ± — (1)" in last
    assert last.splitlines()[0].startswith("**last-epoch test accuracy (%)")
    assert "optimistic, selected on test" in best.splitlines()[0]
    assert val.splitlines()[0].startswith("**val-selected test accuracy (%)")
    header = next(line for line in last.splitlines() if line.startswith("| student"))
    rows = [line for line in last.splitlines() if line.startswith("| resnet8")]
    assert len(rows) == 1 and rows[0].count("|") == header.count("|")
    assert "resnet8 ← strong+weak" in rows[0]


def test_csv_parses_with_separate_mean_std_n(runs_dir):
    text = format_table(load_table(runs_dir, "best"), "csv")
    df = pd.read_csv(io.StringIO(text))
    assert len(df) == 1
    row = df.iloc[0]
    assert row["metric"].startswith("best-epoch test accuracy (%)")
    assert row[f"{ALONE} mean"] == pytest.approx(62.1666666667)
    assert row[f"{ALONE} std"] == pytest.approx(statistics.stdev([61.0, 63.5, 62.0]))
    assert row[f"{ALONE} n"] == 3
    assert math.isnan(row["ce-filter +feat std"]) and row["ce-filter +feat n"] == 1
    assert row["student"] == "resnet8" and row["teachers"] == "strong+weak"


def test_tex_escapes_bold_and_caption(runs_dir):
    text = format_table(load_table(runs_dir, "last"), "tex")
    assert r"\caption{last-epoch test accuracy (\%)" in text
    assert r"\textbf{66.62 $\pm$ 0.88 (2)}" in text
    assert text.count(r"\textbf") == 1
    assert r"resnet8 $\leftarrow$ strong+weak" in text
    assert r"65.00 $\pm$ --- (1)" in text
    assert text.count(r"\begin{tabular}") == 1 and text.rstrip().endswith(r"\end{table}")
    body = [line for line in text.splitlines() if line.startswith("resnet8")]
    # 7 result columns, then the student's and the teachers' sizes (no teacher archs here)
    assert body[0].count("&") == 9 and body[0].endswith(r"\\")
    assert r"83.9k $\cdot$ 12.5M MACs &  \\" in body[0]
    assert tex_escape("wrn_40_2 50%") == r"wrn\_40\_2 50\%"


def test_unfinished_runs_skipped_with_warning(runs_dir, caplog):
    _write_run(runs_dir / "trio" / "resnet8" / "uniform_s2",
               {**_summary("distill", "uniform", False, 2, (0.0, 0.0, 0.0)), "status": "running"})
    (runs_dir / "trio" / "resnet8" / "broken").mkdir()
    (runs_dir / "trio" / "resnet8" / "broken" / "summary.json").write_text("{not json")
    (runs_dir / "no_summary").mkdir()
    with caplog.at_level(logging.WARNING, logger="multikd.results.tables"):
        df = collect_runs(runs_dir)
    assert len(df) == len(RUNS) and len(df.attrs["skipped"]) == 2
    assert "uniform_s2" in caplog.text and "broken" in caplog.text and "running" in caplog.text
    assert _cell(strategy_table(df), "uniform")[2] == 2


def test_val_metric_without_val_numbers_is_a_clear_error(tmp_path):
    summary = _summary("student", None, False, 0, (50.0, 51.0, None))
    _write_run(tmp_path / "a", summary)
    with pytest.raises(ResultsError, match="validation split"):
        load_table(tmp_path, "val")
    assert _cell_alone(load_table(tmp_path, "last")) == (50.0, 1)


def _cell_alone(table):
    return table.iloc[0][(ALONE, "mean")], table.iloc[0][(ALONE, "n")]


def test_teacher_fallback_and_params_disambiguation(tmp_path):
    for seed, margin in [(0, 0.5), (1, 1.0)]:
        summary = _summary("distill", "ce-filter", False, seed, (70.0 + seed, 71.0, None))
        summary |= {"strategy_params": {"margin": margin}, "teacher_test_acc": None}
        _write_run(tmp_path / f"d{seed}", summary)
    teacher = _summary("teacher", None, False, 0, (77.0, 78.0, None), student="resnet20")
    _write_run(tmp_path / "teachers" / "strong", teacher)
    table = load_table(tmp_path)
    methods = list(table.columns.get_level_values(0).unique())
    assert "ce-filter [margin=0.5]" in methods and "ce-filter [margin=1.0]" in methods
    row = table.iloc[0]
    assert row[("strong (teacher)", "mean")] == 77.0 and row[("weak (teacher)", "n")] == 0
    assert row[(ALONE, "n")] == 0
    assert "resnet8 ← strong+weak" in format_table(table)


def test_write_table_atomic_and_rejects_unknowns(runs_dir, tmp_path):
    table = load_table(runs_dir)
    out = write_table(table, tmp_path / "deep" / "t.md", "md")
    assert out.read_text() == format_table(table, "md")
    assert [p.name for p in out.parent.iterdir()] == ["t.md"]
    with pytest.raises(ResultsError, match="format"):
        format_table(table, "html")
    with pytest.raises(ResultsError, match="metric"):
        load_table(runs_dir, "median")


@pytest.mark.slow
def test_plots_written_as_png(runs_dir, tmp_path):
    from multikd.results.plots import plot_runs

    paths = plot_runs(runs_dir, tmp_path / "plots")
    assert sorted(p.name for p in paths) == [
        "synthetic_resnet8_strong+weak_acc.png", "synthetic_resnet8_strong+weak_weights.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_cli_table_formats_and_out_file(runs_dir, tmp_path, capsys):
    assert cli.main(["table", str(runs_dir), "--metric", "best"]) == 0
    printed = capsys.readouterr().out
    assert "best-epoch test accuracy" in printed and "**68.50 ± 0.71 (2)**" in printed
    out = tmp_path / "t.tex"
    assert cli.main(["table", str(runs_dir), "--format", "tex", "--out", str(out)]) == 0
    assert r"\textbf{66.62 $\pm$ 0.88 (2)}" in out.read_text()


@pytest.mark.parametrize("make", ["missing", "empty", "unfinished"])
def test_cli_table_errors_clearly(tmp_path, capsys, make):
    root = tmp_path / "runs"
    if make != "missing":
        root.mkdir()
    if make == "unfinished":
        _write_run(root / "r", {"status": "running"})
    assert cli.main(["table", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: ") and "Traceback" not in err
    assert ("does not exist" if make == "missing" else "no finished runs") in err
    if make == "unfinished":
        assert "1 unfinished" in err


@pytest.mark.slow
def test_cli_plot(runs_dir, tmp_path, capsys):
    assert cli.main(["plot", str(runs_dir), "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(Path(p).is_file() for p in printed)


def test_plot_curves_are_means_over_seeds(runs_dir):
    from multikd.results.plots import mean_curves
    from multikd.results.tables import method_labels

    df = collect_runs(runs_dir)
    df["method"] = method_labels(df)
    curves = mean_curves(df)
    # test_acc = 10·epoch + seed: student alone has seeds 0,1,2 -> +1; ce-filter +feat seed 0
    assert list(curves[ALONE]["test_acc"]) == pytest.approx([11.0, 21.0, 31.0])
    assert list(curves["uniform"]["test_acc"]) == pytest.approx([10.5, 20.5, 30.5])
    assert list(curves["ce-filter +feat"]["test_acc"]) == pytest.approx([10.0, 20.0, 30.0])
    assert list(curves["uniform"]["w_weak"]) == pytest.approx([0.3] * 3)


def test_write_results_tables_and_plots(runs_dir, tmp_path):
    from multikd.results.outputs import write_results

    paths = write_results(runs_dir, tmp_path / "out")
    names = sorted(str(p.relative_to(tmp_path / "out")) for p in paths)
    assert names == sorted(
        [f"table_{m}.{f}" for m in ("last", "best", "val", "paired_last", "paired_vs_uniform_last")
         for f in ("md", "csv")]
        + [f"plots/synthetic_resnet8_strong+weak_{kind}.png" for kind in ("acc", "weights")]
        + ["report.html"]
    )
    assert "**66.62 ± 0.88 (2)**" in (tmp_path / "out" / "table_last.md").read_text()
    # ce-filter - alone at seeds 0, 1: 66 - 60, 67.25 - 62 -> mean 5.625 (t over 2 seeds)
    assert "+5.62 [" in (tmp_path / "out" / "table_paired_last.md").read_text()


def test_minimal_summaries_from_the_format_note(tmp_path):
    """The brief spellings (student/teachers/features, teacher_test_acc as a list) work too."""
    for seed, acc in [(0, 50.0), (1, 54.0)]:
        _write_run(tmp_path / f"r{seed}", {
            "status": "finished", "kind": "distill", "student": "vgg8", "seed": seed,
            "teachers": ["vgg13", "wrn_40_2"], "teacher_test_acc": [74.5, 75.5],
            "strategy": "uniform", "features": True, "last_test_acc": acc,
        })
    table = load_table(tmp_path)
    row = table.iloc[0]
    assert table.index[0][1:3] == ("vgg8", "vgg13+wrn_40_2")
    assert (row[("uniform +feat", "mean")], row[("uniform +feat", "n")]) == (52.0, 2)
    assert row[("uniform +feat", "std")] == pytest.approx(math.sqrt(8.0))
    assert row[("wrn_40_2 (teacher)", "mean")] == 75.5
    assert r"vgg8 $\leftarrow$ vgg13+wrn\_40\_2" in format_table(table, "tex")


def test_random_strategy_seeded_by_its_run_shares_one_column(tmp_path):
    """The engine gives `random` the run's seed; that is one experiment over seeds, while an
    explicitly different seed parameter is a different experiment."""
    for seed in (0, 1):
        summary = _summary("distill", "random", False, seed, (40.0 + 2 * seed, 45.0, None))
        summary["strategy_params"] = {"seed": seed}
        _write_run(tmp_path / f"r{seed}", summary)
    table = load_table(tmp_path)
    assert table.iloc[0][("random", "mean")] == 41.0 and table.iloc[0][("random", "n")] == 2
    fixed = _summary("distill", "random", False, 2, (50.0, 50.0, None))
    fixed["strategy_params"] = {"seed": 7}
    _write_run(tmp_path / "r_fixed", fixed)
    methods = set(load_table(tmp_path).columns.get_level_values(0))
    assert {"random", "random [seed=7]"} <= methods


def test_labels_keep_one_strategy_under_two_losses_apart(tmp_path):
    """A suite runs uniform as KD and as DKD: same strategy and params, two columns."""
    for label, acc in (("kd", 60.0), ("dkd", 64.0)):
        summary = _summary("distill", "uniform", False, 0, (acc, acc, acc))
        summary["strategy_label"] = label
        _write_run(tmp_path / label, summary)
    table = strategy_table(collect_runs(tmp_path))
    assert table.attrs["methods"] == [ALONE, "dkd", "kd"]
    assert table.iloc[0][("dkd", "mean")] == 64.0 and table.iloc[0][("kd", "mean")] == 60.0


def test_alone_runs_of_other_teacher_sets_are_not_counted_twice(tmp_path):
    # A suite trains the student alone in every teacher set's folder: the row of set
    # "pair" is compared with the alone runs beside it, not with those of set "trio".
    root = tmp_path / "runs"
    alone = {"pair": (50.0, 52.0), "trio": (70.0, 72.0)}
    for set_name, accs in alone.items():
        for seed, acc in enumerate(accs):
            _write_run(root / set_name / "resnet8" / f"student_s{seed}",
                       _summary("student", None, False, seed, (acc, acc, acc)))
            summary = _summary("distill", "uniform", False, seed, (acc + 1, acc + 1, acc + 1))
            if set_name == "pair":
                summary["teacher_names"] = ["strong"]
            _write_run(root / set_name / "resnet8" / f"uniform_s{seed}", summary)
    table = strategy_table(collect_runs(root), "last")
    assert _cell(table, ALONE) == (71.0, statistics.stdev([70.0, 72.0]), 2)
    pair = ("synthetic", "resnet8", "strong", 3)
    assert tuple(table.loc[pair, (ALONE, s)] for s in ("mean", "n")) == (51.0, 2)

    from multikd.results.paired import paired_table
    paired = paired_table(collect_runs(root), "last", vs="student")
    assert paired.loc[pair, (ALONE, "n")] == 2
    assert paired.loc[pair, ("uniform", "diff")] == pytest.approx(1.0)
