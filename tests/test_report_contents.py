"""What a bench folder holds after the sweep: the report written by bench itself, every paired
table in it, teachers from another domain named as such, paired CSV files of plain numbers."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
from run_helpers import tiny_suite
from test_results import RUNS, _metrics, _summary, _write_run

from multikd.results.outputs import write_results
from multikd.results.paired import PAIRED_STATS, format_paired, paired_table
from multikd.results.tables import ALONE, collect_runs
from multikd.bench.runner import run_bench
from multikd.bench.suite import parse_suite

WEAK = "weak: 40.00% here; 91.40% on its own domain (synthetic seed 1)"


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    """Hand-made runs of test_results (teachers strong and weak), as bench leaves them, with
    ``weak`` recorded as a teacher trained and verified on another synthetic world."""
    root = tmp_path_factory.mktemp("report") / "out"
    for (kind, strategy, features, seed), accs in RUNS.items():
        name = f"{strategy or 'student'}{'+feat' if features else ''}_s{seed}"
        _write_run(root / "runs" / "trio" / "resnet8" / name,
                   _summary(kind, strategy, features, seed, accs), _metrics(kind, strategy, seed))
    (root / "suite.yaml").write_text("name: demo-suite\n")
    (root / "teachers.json").write_text(json.dumps({
        "strong": {"arch": "resnet8", "source": "trained", "test_acc": 80.0, "expected_acc": 80.0},
        "weak": {"arch": "resnet8", "source": "trained", "test_acc": 40.0, "expected_acc": 91.4,
                 "own_domain_test_acc": 91.4, "own_domain": {"seed": 1}},
    }))
    return root


@pytest.fixture(scope="module")
def written(bench_out):
    """What write_results wrote into ``bench_out`` (once: the tests below only read it)."""
    return write_results(bench_out, bench_out)


def test_results_end_with_a_report_of_every_table(bench_out, written):
    assert written[-1] == bench_out / "report.html"
    page = written[-1].read_text()
    assert "Paired differences to the student alone" in page and "+5.62 [" in page
    assert "Paired differences to uniform" in page and "uniform (reference)" in page
    assert page.count('src="data:image/png;base64,') == 2  # the plots bench wrote
    assert f"Teacher {WEAK}, where it was trained and verified." in page
    assert "<td>40.00% here; 91.40% on its own domain (synthetic seed 1)</td>" in page
    assert "<td>80.00</td>" in page  # a teacher of the students' own domain: as before


def test_the_table_names_a_teacher_of_another_domain(bench_out, written):
    for name in ("table_last.md", "table_best.md"):
        text = (bench_out / name).read_text()
        assert f"Teacher {WEAK}, where it was trained and verified." in text, name
        assert "strong: " not in text, name


@pytest.mark.parametrize("name, vs", [("table_paired_last", "student"),
                                      ("table_paired_vs_uniform_last", "uniform")])
def test_paired_csv_holds_plain_numbers(bench_out, written, name, vs):
    text = (bench_out / f"{name}.csv").read_text()
    assert "np." not in text
    read = pd.read_csv(io.StringIO(text))
    table = paired_table(collect_runs(bench_out), vs=vs)
    for method in table.attrs["methods"]:
        assert [f"{method} {s}" for s in PAIRED_STATS] == [
            c for c in read.columns if c.startswith(f"{method} ")
            and c.removeprefix(f"{method} ") in PAIRED_STATS]
        for stat in ("diff", "low", "high"):
            assert read[f"{method} {stat}"].dtype == float, (method, stat)
            assert read[f"{method} {stat}"].tolist() == pytest.approx(
                table[(method, stat)].tolist(), nan_ok=True)
        assert read[f"{method} n"].dtype == int
        assert read[f"{method} significant"].tolist() == [
            int(v) for v in table[(method, "significant")]]
    rows = list(csv.DictReader(io.StringIO(text)))
    ce = "ce-filter"
    assert float(rows[0][f"{ce} diff"]) == pytest.approx(table[(ce, "diff")].iloc[0])


def test_paired_csv_of_a_method_without_runs_in_a_row(tmp_path):
    text = format_paired(paired_table(collect_runs(_two_rows(tmp_path)), vs="student"), "csv")
    read = pd.read_csv(io.StringIO(text)).set_index("student")
    assert read["uniform diff"].isna().to_dict() == {"resnet8": False, "resnet20": True}
    assert read.at["resnet20", "uniform n"] == 0 == read.at["resnet20", "uniform significant"]
    assert read["uniform n"].dtype == int and read[f"{ALONE} diff"].dtype == float


def _two_rows(root):
    for (kind, strategy, features, seed), accs in RUNS.items():
        name = f"{strategy or 'student'}{'+feat' if features else ''}_s{seed}"
        _write_run(root / "trio" / name, _summary(kind, strategy, features, seed, accs))
        if kind == "student" or strategy == "ce-filter":
            summary = _summary(kind, strategy, features, seed, accs, student="resnet20")
            _write_run(root / "other" / name, summary)
    return root


@pytest.mark.slow
def test_bench_itself_writes_the_report_and_both_paired_tables(tmp_path):
    suite = tiny_suite(
        "report", 1, seeds=[0, 1],
        teachers={"t_a": {"arch": "resnet8", "seed": 1, "recipe": {"optim": {"epochs": 1}}},
                  "wrong": {"arch": "resnet8", "synthetic": {"seed": 9},
                            "recipe": {"optim": {"epochs": 1}}}},
        teacher_sets={"mixed": ["t_a", "wrong"]},
        pairs=[{"teachers": "mixed", "students": ["resnet8"]}],
        strategies=["uniform", "ce-filter"],
    )
    report = run_bench(parse_suite(suite), tmp_path)
    names = {p.name for p in report.outputs}
    assert {"report.html", "table_paired_vs_uniform_last.md", "table_paired_vs_uniform_last.csv",
            "table_paired_last.md", "table_paired_last.csv"} <= names
    page = (tmp_path / "report.html").read_text()
    record = json.loads((tmp_path / "teachers.json").read_text())["wrong"]
    wrong = (f"wrong: {record['test_acc']:.2f}% here; {record['own_domain_test_acc']:.2f}% on "
             "its own domain (synthetic seed 9)")
    assert wrong in page and wrong in (tmp_path / "table_last.md").read_text()
    assert "Paired differences to the student alone" in page
    assert "Paired differences to uniform" in page
    read = pd.read_csv(tmp_path / "table_paired_vs_uniform_last.csv")
    assert read["ce-filter diff"].dtype == float and read["ce-filter n"].tolist() == [2]
