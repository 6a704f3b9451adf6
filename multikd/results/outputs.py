"""What a suite's output folder gets from its finished runs: the tables, the plots, the report.

Tables come from :mod:`multikd.results.tables` and :mod:`multikd.results.paired`, plots from
:mod:`multikd.results.plots`, which reads those tables' rows, and the one-page HTML report
from :mod:`multikd.results.report`, which embeds them all; this module is the one place they
are written together.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multikd.atomic import atomic_write_text
from multikd.results.paired import format_paired, suite_paired_tables
from multikd.results.plots import plot_collected
from multikd.results.report import write_report
from multikd.results.tables import (
    METRIC_COLUMNS, add_published, collect_runs, strategy_table, write_table,
)


def write_results(
    root: str | Path, out_dir: str | Path, formats=("md", "csv"), plots: bool = True
) -> list[Path]:
    """Tables, plots and report of the finished runs under ``root``, written into ``out_dir``.

    Writes ``table_<metric>.<fmt>`` for metric last and best (and val when some run has a
    val-selected accuracy) in each of ``formats``, with the published column when ``root``'s
    suite.yaml has targets (:func:`~multikd.results.tables.add_published`), ``table_paired_last.<fmt>`` (every
    method's paired difference to the student alone, :mod:`multikd.results.paired`) when
    students alone and distilled runs are both there, ``table_paired_vs_uniform_last.<fmt>``
    (the same against ``uniform``, the plain multi-teacher average) when ``uniform`` and
    another strategy are (so rows without a student alone, e.g. a suite's labelled fraction
    0, still get a paired comparison; see :func:`multikd.results.paired.suite_paired_tables`),
    if ``plots``, the PNG files of :func:`multikd.results.plots.plot_collected` under
    ``out_dir/plots``, and last ``out_dir/report.html`` (:mod:`multikd.results.report`: all of
    them on one page, with ``root``'s suite.yaml and teachers.json). Returns the paths written.
    """
    df = collect_runs(root)
    metrics = ["last", "best"]
    val = METRIC_COLUMNS["val"]
    if val in df and pd.to_numeric(df[val], errors="coerce").notna().any():
        metrics.append("val")
    out_dir = Path(out_dir)
    written = []
    for metric in metrics:
        table = add_published(strategy_table(df, metric=metric), df)
        written += [write_table(table, out_dir / f"table_{metric}.{fmt}", fmt) for fmt in formats]
    paired = suite_paired_tables(df)
    for name, table in paired:
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            atomic_write_text(path, format_paired(table, fmt))
            written.append(path)
    figures = plot_collected(df, out_dir / "plots") if plots else []
    written += figures
    written.append(write_report(root, out_dir / "report.html", runs=df, paired=paired,
                                figures=figures))
    return written
