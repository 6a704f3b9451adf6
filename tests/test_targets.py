"""Published targets: the suite's ``targets:`` section and the table's published column,
on hand-built runs with made-up targets below, inside and above our 95% interval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats

from multikd import cli
from multikd.bench.suite import load_suite, parse_suite
from multikd.errors import ConfigError
from multikd.results.tables import format_table, load_table
from multikd.results.targets import parse_targets

SUITES = Path(__file__).resolve().parents[1] / "experiments" / "cifar100"
TEACHERS = ["strong", "weak"]
# (kind, label, features) -> per seed (last, best)
RUNS = {
    ("student", None, False): [(60.0, 61.0), (62.0, 63.0), (61.0, 62.0)],
    ("distill", "avg", False): [(63.0, 64.0), (65.0, 66.0), (64.0, 65.0)],
    ("distill", "pick", True): [(66.0, 67.0), (67.0, 68.0), (68.0, 69.0)],
}
SUITE = {
    "name": "made-up",
    "data": {"dataset": "synthetic"},
    "teachers": {"strong": {"arch": "resnet20"}, "weak": {"arch": "resnet8"}},
    "teacher_sets": {"pair": TEACHERS},
    "pairs": [{"teachers": "pair", "students": ["resnet8"]}],
    "strategies": [{"name": "uniform", "label": "avg", "variants": ["logits"]},
                   {"name": "ce-filter", "label": "pick", "variants": ["logits+feat"]}],
    "features": {"gamma": 1.0},
    "targets": [
        # our avg best epoch: 64, 66, 65 -> mean 65, 95% CI 65 ± 2.48: 60 lies below it
        {"teachers": "pair", "student": "resnet8", "label": "avg", "top1": 60.0,
         "epoch": "best", "runs": 5, "source": "made-up paper, Table 1"},
        # our pick+feat last epoch: 66, 67, 68 -> 67 ± 2.48: 75 lies above it
        {"teachers": "pair", "student": "resnet8", "label": "pick+feat", "top1": 75.0,
         "epoch": "last", "source": "made-up repo, README"},
        # the student alone, last epoch: 60, 62, 61 -> 61 ± 2.48: 62 lies inside it
        {"teachers": "pair", "student": "resnet8", "label": "student", "top1": 62.0,
         "epoch": "last", "source": "made-up paper, Table 2"},
    ],
}


def _half_width(std: float, n: int) -> float:
    return stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)


@pytest.fixture
def out(tmp_path) -> Path:
    """A bench-like output folder: the suite copied as suite.yaml, and finished runs."""
    (tmp_path / "suite.yaml").write_text("# multikd bench suite made-up\n"
                                         + yaml.safe_dump(SUITE, sort_keys=False))
    for (kind, label, features), accs in RUNS.items():
        for seed, (last, best) in enumerate(accs):
            name = f"{'student' if label is None else label}{'+feat' if features else ''}_s{seed}"
            run = tmp_path / "runs" / "pair" / "resnet8" / name
            run.mkdir(parents=True)
            summary = {
                "status": "finished", "kind": kind, "student_arch": "resnet8", "seed": seed,
                "dataset": "synthetic", "epochs": 3, "last_test_acc": last,
                "best_test_acc": best, "features_used": features,
                "teacher_names": TEACHERS if kind == "distill" else [],
                "strategy": {"avg": "uniform", "pick": "ce-filter"}.get(label),
                "strategy_label": label,
            }
            (run / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_suite_parses_targets_and_checks_their_cells():
    suite = parse_suite(SUITE, "made-up")
    assert [(t.label, t.top1, t.epoch, t.runs) for t in suite.targets] == [
        ("avg", 60.0, "best", 5), ("pick+feat", 75.0, "last", None), ("student", 62.0, "last", None)]
    for change, message in [
        ({"teachers": "nope"}, "unknown teacher set"),
        ({"student": "vgg8"}, "is not distilled from set"),
        ({"label": "pick"}, "not a column of this suite"),
        ({"epoch": "final"}, "'epoch' must be one of"),
        ({"top1": 101}, "'top1' must be an accuracy"),
        ({"runs": 0}, "'runs' must be a positive integer"),
    ]:
        bad = {**SUITE, "targets": [{**SUITE["targets"][0], **change}]}
        with pytest.raises(ConfigError, match=message):
            parse_suite(bad, "made-up")
    with pytest.raises(ConfigError, match="missing key"):
        parse_targets([{"teachers": "pair", "student": "resnet8", "label": "avg", "top1": 1.0,
                        "epoch": "best"}], "here")


def test_table_compares_each_target_on_its_own_metric(out):
    table = load_table(out, metric="last")
    (row, comparisons), = table.attrs["published"].items()
    by_label = {c.target.label: c for c in comparisons}
    avg, feat, alone = by_label["avg"], by_label["pick+feat"], by_label["student"]
    # a best-epoch target is read against our best-epoch accuracy although the table shows last
    assert (avg.mean, avg.std, avg.n) == (65.0, 1.0, 3)
    assert avg.low == pytest.approx(65.0 - _half_width(1.0, 3))
    assert avg.difference == pytest.approx(5.0)
    assert (avg.verdict, feat.verdict, alone.verdict) == ("below", "above", "inside")
    assert feat.mean == 67.0 and alone.mean == 61.0
    text = format_table(table, "md")
    header = next(line for line in text.splitlines() if line.startswith("| student"))
    assert header.rstrip(" |").endswith("published")
    assert "avg: published 60.00 best-epoch (5 runs; made-up paper, Table 1); ours best-epoch " \
           "65.00 ± 1.00 (3), Δ +5.00, published below our 95% CI [62.52, 67.48]" in text
    assert "published above our 95% CI" in text and "published inside our 95% CI" in text
    assert "Δ = ours − published" in text


def test_single_run_has_no_interval(out):
    for run in (out / "runs" / "pair" / "resnet8").glob("avg_s[12]"):
        (run / "summary.json").unlink()
    comparisons = load_table(out).attrs["published"]
    avg = next(c for cs in comparisons.values() for c in cs if c.target.label == "avg")
    assert (avg.n, avg.verdict) == (1, "no interval")
    assert "one run: no 95% CI" in avg.text()


def test_no_targets_no_column(out):
    (out / "suite.yaml").write_text(yaml.safe_dump({k: v for k, v in SUITE.items()
                                                    if k != "targets"}))
    table = load_table(out)
    assert "published" not in table.attrs
    assert "published" not in format_table(table, "md")


def test_cli_table_prints_published_column_in_every_format(out, capsys):
    assert cli.main(["table", str(out), "--metric", "best"]) == 0
    text = capsys.readouterr().out
    assert next(line for line in text.splitlines() if line.startswith("| student")).endswith(
        "| published |")
    assert "below our 95% CI" in text and "above our 95% CI" in text
    assert cli.main(["table", str(out), "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.endswith(",published") and "published below our 95% CI" in row
    assert cli.main(["table", str(out), "--format", "tex"]) == 0
    assert "published inside our 95\\% CI" in capsys.readouterr().out


def test_suites_carry_the_published_numbers():
    def numbers(name):
        return {(t.teachers, t.student, t.label): (t.top1, t.epoch)
                for t in load_suite(SUITES / f"{name}.yaml").targets}

    assert numbers("single-teacher") == {
        ("r32x4", "resnet8x4", "kd"): (73.33, "best"), ("vgg13", "vgg8", "kd"): (72.98, "best"),
        ("r32x4", "resnet8x4", "dkd"): (76.32, "best"),
        ("vgg13", "vgg8", "dkd-beta6"): (74.68, "best")}
    rl = numbers("mtkd-rl")
    assert len(rl) == 8
    assert rl[("pool4", "RegNetX_200MF", "mtkd-rl-dynamic+feat")] == (79.93, "best")
    assert rl[("pool4", "resnet56", "mtkd-rl+feat")] == (75.51, "best")
    for path in SUITES.glob("*.yaml"):  # no published number left in a comment
        comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert not any(w in line for line in comments for w in ("73.33", "79.93", "76.32")), path


def test_suite_outputs_carry_the_published_column(out, tmp_path):
    from multikd.results.outputs import write_results

    write_results(out, tmp_path / "tables", formats=("md",), plots=False)
    for metric in ("last", "best"):
        text = (tmp_path / "tables" / f"table_{metric}.md").read_text()
        assert "published below our 95% CI" in text and "published above our 95% CI" in text
