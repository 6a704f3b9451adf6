"""The README's headline claims are read from the two committed smoke runs (issue 33 item 2).

``results/smoke`` (AVX-512 kernels) and ``results/smoke-avx2`` (ATen forced to AVX2) are the
same sweep on two CPU kernel paths. A difference the README prints in bold must have a
paired interval that excludes 0 in *both* runs' ``table_paired_*.csv``, and every number the
quick-start table prints must be the one in the CSV of its run, so a re-made table cannot
leave a stale claim behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = ("smoke", "smoke-avx2")
ROW_SETS = {"a+b (two good)": "a+b", "a+b+3 wrong": "a+b+wrong1+wrong2+wrong3"}
VS_FILES = {"student alone": "table_paired_last.csv", "`uniform`": "table_paired_vs_uniform_last.csv"}
CELL = re.compile(r"(\*\*)?([+−-]\d+\.\d\d)(?: \[([+−-]\d+\.\d\d), ([+−-]\d+\.\d\d)\])?(\*\*)?")


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _quick_start_rows():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start"):text.index("## Using real CIFAR-100")]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and " vs " not in ln]
    header = next(ln for ln in section.splitlines() if ln.startswith("| teachers | vs |"))
    methods = [c.strip().strip("`") for c in header.strip("|").split("|")[2:]]
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in ROW_SETS:
            continue
        for method, cell in zip(methods, cells[2:]):
            if cell:
                yield cells[0], cells[1], method, cell


def _paired(run: str, vs: str) -> pd.DataFrame:
    return pd.read_csv(REPO / "results" / run / VS_FILES[vs])


ROWS = list(_quick_start_rows())


def test_the_quick_start_table_has_claims():
    assert len(ROWS) >= 5, ROWS


@pytest.mark.parametrize("row, vs, method, cell", ROWS)
def test_each_printed_number_is_its_runs_and_bold_holds_on_both_runs(row, vs, method, cell):
    parts = [CELL.fullmatch(p.strip()) for p in cell.split("·")]
    assert len(parts) == len(RUNS) and all(parts), cell
    for run, match in zip(RUNS, parts):
        table = _paired(run, vs)
        line = table[table["teachers"] == ROW_SETS[row]].iloc[0]
        assert round(line[f"{method} diff"], 2) == pytest.approx(_number(match.group(2)), abs=0.006)
        if match.group(3):
            assert round(line[f"{method} low"], 2) == pytest.approx(_number(match.group(3)), abs=0.006)
            assert round(line[f"{method} high"], 2) == pytest.approx(_number(match.group(4)), abs=0.006)
        bold = bool(match.group(1))
        assert bold == bool(line[f"{method} significant"]), (run, row, vs, method)
        if bold:
            assert line[f"{method} low"] > 0 or line[f"{method} high"] < 0


def test_the_selection_effect_is_far_beyond_noise_on_both_runs():
    """The preset exists to show what selection is for: ce-filter over uniform with a wrong
    majority, an interval whose lower end is several points above 0 on both kernel paths."""
    for run in RUNS:
        table = _paired(run, "`uniform`")
        line = table[table["teachers"] == ROW_SETS["a+b+3 wrong"]].iloc[0]
        assert line["ce-filter low"] > 2.0 and line["ce-filter diff"] > 5.0, run
