"""What a suite's output folder gets from its finished runs: the tables, then the plots.

Tables come from :mod:`multikd.bench.results` and plots from :mod:`multikd.bench.plots`,
which reads those tables' rows; this module is the one place both are written together.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multikd.atomic import atomic_write_text
from multikd.bench.paired import format_paired, paired_table
from multikd.bench.plots import plot_collected
from multikd.bench.results import (
    ALONE, METRIC_COLUMNS, collect_runs, comparison_runs, strategy_table, write_table,
)

UNIFORM = "uniform"
"""The label of the reference strategy of the second paired table."""


def write_results(
    root: str | Path, out_dir: str | Path, formats=("md", "csv"), plots: bool = True
) -> list[Path]:
    """Tables and plots of the finished runs under ``root``, written into ``out_dir``.

    Writes ``table_<metric>.<fmt>`` for metric last and best (and val when some run has a
    val-selected accuracy) in each of ``formats``, ``table_paired_last.<fmt>`` (every
    method's paired difference to the student alone, :mod:`multikd.bench.paired`) when
    students alone and distilled runs are both there, ``table_paired_vs_uniform_last.<fmt>``
    (the same against ``uniform``, the plain multi-teacher average) when ``uniform`` and
    another strategy are (so rows without a student alone, e.g. a suite's labelled fraction
    0, still get a paired comparison), and, if ``plots``, the PNG files of
    :func:`multikd.bench.plots.plot_collected` under ``out_dir/plots``. Returns the paths written.
    """
    df = collect_runs(root)
    metrics = ["last", "best"]
    val = METRIC_COLUMNS["val"]
    if val in df and pd.to_numeric(df[val], errors="coerce").notna().any():
        metrics.append("val")
    out_dir = Path(out_dir)
    written = []
    for metric in metrics:
        table = strategy_table(df, metric=metric)
        written += [write_table(table, out_dir / f"table_{metric}.{fmt}", fmt) for fmt in formats]
    methods = set(comparison_runs(df)["method"])
    for reference, name in ((ALONE, "table_paired_last"),
                            (UNIFORM, "table_paired_vs_uniform_last")):
        if reference not in methods or len(methods) < 2:
            continue
        if reference == UNIFORM and ALONE in methods and len(methods) < 3:
            continue  # uniform vs the student alone is already in table_paired_last
        table = paired_table(df, metric="last", vs=reference)
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            atomic_write_text(path, format_paired(table, fmt))
            written.append(path)
    if plots:
        written += plot_collected(df, out_dir / "plots")
    return written
