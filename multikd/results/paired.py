"""Paired comparisons: is a method's gain over a reference column beyond noise?

Runs of one lockstep group (one teacher set and seed) see the identical stream of batches,
augmentations and initial weights, so a method and its reference at the same seed are a
*paired* sample: their difference cancels the seed's own luck, and its spread is far smaller
than either column's.

For each table row and method the cell is the mean paired difference ``d = method -
reference`` in accuracy points with a two-sided interval at ``confidence`` (95%):

- ``n >= 2`` paired seeds: Student's t over the seeds' differences,
  ``mean(d) ± t_{1-a/2, n-1} * sd(d) / sqrt(n)``;
- ``n == 1`` (one seed): a paired bootstrap over the test images, from the two runs' saved
  final predictions (``predictions.npz``): each replicate draws the test images with
  replacement and takes the difference of the two accuracies; the interval is the
  replicates' ``a/2`` and ``1 - a/2`` quantiles. It says how much the result could move
  with other test images, not with another seed. Only the ``last`` metric has per-image
  predictions; ``best`` / ``val`` with one seed get no interval.

A difference is *significant* when its interval excludes 0. Nothing is corrected for the
number of comparisons in a table: with 16 methods, about one of them is expected to look
significant at 95% by chance alone; the caption says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from multikd.results.runs import ROW_KEYS, ResultsError
from multikd.results.table_format import _leading_keys, row_label, tex_escape, tex_table
from multikd.results.tables import (
    ALONE,
    METRIC_COLUMNS,
    _epochs_value,
    _ordered_methods,
    alone_runs_of_row,
    comparison_runs,
)
from multikd.train.runio import RunDir

PAIRED_STATS = ("diff", "low", "high", "n", "test", "significant")
STUDENT_ALIASES = ("student", "alone", ALONE)
UNIFORM = "uniform"
"""The label of the reference strategy of the second paired table (:func:`suite_paired_tables`)."""


@dataclass(frozen=True)
class PairedDifference:
    """``diff`` (points), interval ``[low, high]`` (NaN when none can be had), ``n`` pairs,
    ``test`` (``"t"``, ``"bootstrap"`` or ``""``)."""

    diff: float
    low: float
    high: float
    n: int
    test: str

    @property
    def significant(self) -> bool:
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def t_interval(differences, confidence: float = 0.95) -> PairedDifference:
    """Mean of paired ``differences`` with Student's t interval (NaN bounds for n < 2)."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, "")
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, "")
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n, "t")


def bootstrap_interval(
    pred_a, pred_b, label, confidence: float = 0.95, reps: int = 20000, seed: int = 0
) -> PairedDifference:
    """``acc(a) - acc(b)`` in points on one test set, with a paired bootstrap interval over
    its images (see the module doc). Exact resampling of the per-image differences, which
    take only the values -1, 0, +1: each replicate is a multinomial draw of their counts."""
    pred_a, pred_b, label = (np.asarray(v) for v in (pred_a, pred_b, label))
    if not (pred_a.shape == pred_b.shape == label.shape) or label.ndim != 1 or not len(label):
        raise ResultsError(
            f"paired predictions must be 1-d arrays of one length, got {pred_a.shape}, "
            f"{pred_b.shape} and labels {label.shape}"
        )
    d = (pred_a == label).astype(int) - (pred_b == label).astype(int)
    n = len(d)
    counts = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()])
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=reps)
    replicates = 100.0 * (draws[:, 2] - draws[:, 0]) / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return PairedDifference(100.0 * d.mean(), float(low), float(high), 1, "bootstrap")


def reference_method(table_methods: list[str], vs: str) -> str:
    """The column label ``vs`` names (``student`` / ``alone`` for the student alone)."""
    if vs in STUDENT_ALIASES:
        return ALONE
    if vs not in table_methods:
        raise ResultsError(
            f"--vs {vs!r} is not a column of these runs; choose student or one of: "
            f"{', '.join(m for m in table_methods if m != ALONE)}"
        )
    return vs


def paired_table(
    df: pd.DataFrame, metric: str = "last", vs: str = "student", confidence: float = 0.95,
    reps: int = 20000,
) -> pd.DataFrame:
    """Every method's paired difference to the ``vs`` column, per table row.

    Index: (dataset, student, teachers, epochs) as :func:`~multikd.results.tables.strategy_table`.
    Columns: (method, stat) with stat in :data:`PAIRED_STATS`; the reference column itself
    holds its own mean accuracy as ``diff`` (with its seeds' t interval of the mean) so a
    reader sees what the differences are relative to. ``attrs``: metric, vs, confidence,
    caption, methods.
    """
    if metric not in METRIC_COLUMNS:
        raise ResultsError(f"unknown metric {metric!r}; expected one of {', '.join(METRIC_COLUMNS)}")
    if not 0 < confidence < 1:
        raise ResultsError(f"confidence must be in (0, 1), got {confidence}")
    column = METRIC_COLUMNS[metric]
    runs = comparison_runs(df)
    runs["value"] = pd.to_numeric(runs.get(column), errors="coerce") if column in runs else math.nan
    runs = runs.dropna(subset=["value"])
    if runs.empty:
        raise ResultsError(f"no run under {df.attrs.get('root', 'the runs folder')} records {column}")
    distill = runs[runs["kind"] == "distill"]
    methods = [ALONE, *_ordered_methods(distill)]
    ref = reference_method(methods, vs)
    keys = sorted(set(map(tuple, distill[list(ROW_KEYS)].values)))
    if not keys:
        raise ResultsError("paired comparisons need distillation runs; found only students alone")
    rows = []
    for key in keys:
        dataset, student, teachers, epochs = key
        same = (runs["dataset"] == dataset) & (runs["student"] == student)
        same &= runs["epochs"] == epochs
        in_row = runs[same & (runs["kind"] == "distill") & (runs["teachers"] == teachers)]
        alone = alone_runs_of_row(runs[same & (runs["kind"] == "student")], in_row)
        cells = {m: in_row[in_row["method"] == m] for m in methods[1:]}
        cells[ALONE] = alone
        reference = cells[ref].sort_values("seed").drop_duplicates("seed")
        row = {}
        for method in methods:
            if method == ref:
                result = t_interval(reference["value"], confidence)
            else:
                result = _paired(cells[method], reference, metric, confidence, reps)
            row.update({(method, s): getattr(result, s) for s in PAIRED_STATS})
        rows.append(row)
    columns = pd.MultiIndex.from_tuples(
        [(m, s) for m in methods for s in PAIRED_STATS], names=["method", "stat"]
    )
    index = pd.MultiIndex.from_tuples(
        [(d, s, t, _epochs_value(e)) for d, s, t, e in keys], names=list(ROW_KEYS)
    )
    table = pd.DataFrame(rows, index=index).reindex(columns=columns)
    for method in methods:
        table[(method, "n")] = table[(method, "n")].fillna(0).astype(int)
        table[(method, "test")] = table[(method, "test")].fillna("")
        table[(method, "significant")] = table[(method, "significant")].fillna(False).astype(bool)
    table.attrs.update(metric=metric, vs=ref, confidence=confidence, methods=methods,
                       caption=_caption_text(metric, ref, confidence))
    return table


def _paired(runs: pd.DataFrame, reference: pd.DataFrame, metric: str, confidence: float,
            reps: int) -> PairedDifference:
    pairs = _pairs(runs, reference)
    if len(pairs) != 1:
        return t_interval([a["value"] - b["value"] for a, b in pairs], confidence)
    (a, b), = pairs
    found = None
    if metric == "last":
        pa, pb = RunDir(a["path"]).read_predictions(), RunDir(b["path"]).read_predictions()
        if pa is not None and pb is not None:
            if not np.array_equal(pa[1], pb[1]):
                raise ResultsError(
                    f"{a['path']} and {b['path']} were tested on different test sets (their "
                    "predictions.npz labels differ); they cannot be paired"
                )
            found = bootstrap_interval(pa[0], pb[0], pa[1], confidence, reps)
    if found is None:  # no per-image predictions: the difference without an interval
        return PairedDifference(a["value"] - b["value"], math.nan, math.nan, 1, "")
    return found


def _pairs(runs: pd.DataFrame, reference: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(run, reference run) per seed both have; among several reference runs of one seed
    (students alone of several teacher sets) the one in the run's own folder tree."""
    out = []
    for _, run in runs.sort_values("seed").drop_duplicates("seed").iterrows():
        candidates = reference[reference["seed"] == run["seed"]]
        if candidates.empty:
            continue
        parent = Path(run["path"]).parent
        near = candidates[candidates["path"].map(lambda p: Path(p).parent == parent)]
        out.append((run, (near if len(near) else candidates).iloc[0]))
    return out


def suite_paired_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(file stem, table) of the last-epoch paired tables a suite's outputs carry.

    ``table_paired_last``: every method against the student alone, when students alone and
    distilled runs are both there; ``table_paired_vs_uniform_last``: against ``uniform``
    (the plain multi-teacher average) when ``uniform`` and another strategy are, so rows
    without a student alone (e.g. a labelled fraction of 0) still get a paired comparison.
    The second is left out when it would only repeat the first (uniform vs the student alone).
    """
    methods = set(comparison_runs(df)["method"])
    out = []
    for reference, stem in ((ALONE, "table_paired_last"),
                            (UNIFORM, "table_paired_vs_uniform_last")):
        if reference not in methods or len(methods) < 2:
            continue
        if reference == UNIFORM and ALONE in methods and len(methods) < 3:
            continue
        out.append((stem, paired_table(df, metric="last", vs=reference)))
    return out


def _caption_text(metric: str, ref: str, confidence: float) -> str:
    level = f"{100 * confidence:g}%"
    return (
        f"paired difference to {ref} in {metric}-epoch test accuracy (points); [{level} "
        "interval]: t over paired seeds (n >= 2) or bootstrap over test images (n = 1); "
        "bold: interval excludes 0 (no correction for the number of comparisons)"
    )


# --------------------------------------------------------------------------- formatting
def format_paired(table: pd.DataFrame, fmt: str = "md") -> str:
    """The paired table as Markdown, CSV or LaTeX (see :func:`paired_table`).

    csv: one line per row with ``metric``, ``vs``, the row keys, then per method
    ``<method> diff``, ``<method> low``, ``<method> high`` (plain decimal numbers in points,
    empty where there is none), ``<method> n`` (integer, 0 for no runs), ``<method> test``
    (``t``, ``bootstrap`` or empty) and ``<method> significant`` (1 or 0).
    """
    if fmt == "csv":
        return _paired_csv(table)
    if fmt not in ("md", "tex"):
        raise ResultsError(f"unknown table format {fmt!r}; expected one of md, csv, tex")
    tex = fmt == "tex"
    leading = _leading_keys(table)
    methods = table.attrs["methods"]
    ref = table.attrs["vs"]
    header = leading + ["student ← teachers"] + [
        f"{m} (reference)" if m == ref else m for m in methods
    ]
    body = []
    for index in table.index:
        keys = dict(zip(table.index.names, index))
        row = [str(keys[k]) for k in leading] + [row_label(keys["student"], keys["teachers"])]
        for method in methods:
            row.append(_paired_cell(table, index, method, method == ref, tex))
        body.append(row)
    n_text = len(leading) + 1
    if tex:
        return _paired_tex(table, header, body, n_text)
    lines = [f"**{table.attrs['caption']}**", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join([":--"] * n_text + ["--:"] * len(methods)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", r"\|") for c in row) + " |" for row in body]
    lines += ["", f"Reference column: its mean accuracy [interval of the mean] (n seeds). "
              "Other cells: mean difference [interval] (n pairs); no interval: one seed "
              "without saved predictions, or best/val with one seed."]
    return "\n".join(lines) + "\n"


def _paired_cell(table, index, method, is_ref, tex) -> str:
    n = int(table.at[index, (method, "n")])
    if n == 0:
        return ""
    diff, low, high = (float(table.at[index, (method, s)]) for s in ("diff", "low", "high"))
    sign = "" if is_ref else "+"
    text = f"{diff:{sign}.2f}"
    if not math.isnan(low):
        text += f" [{low:{sign}.2f}, {high:{sign}.2f}]"
    text += f" ({n})"
    if not is_ref and bool(table.at[index, (method, "significant")]):
        text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
    return text


def _paired_tex(table, header, body, n_text) -> str:
    colspec = "l" * n_text + "r" * (len(header) - n_text)
    rows = [" & ".join([tex_escape(c) for c in row[:n_text]] + row[n_text:]) for row in body]
    return tex_table(table.attrs["caption"], colspec, " & ".join(tex_escape(h) for h in header),
                     rows)


def _paired_csv(table: pd.DataFrame) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    methods = table.attrs["methods"]
    writer.writerow(["metric", "vs", *ROW_KEYS, *(f"{m} {s}" for m in methods for s in PAIRED_STATS)])
    for index in table.index:
        row = [table.attrs["metric"], table.attrs["vs"], *index]
        for method in methods:
            cell = {s: table.at[index, (method, s)] for s in PAIRED_STATS}
            for stat in ("diff", "low", "high"):  # floats, never numpy's np.float64(...) repr
                value = float(cell[stat])
                row.append("" if cell["n"] == 0 or math.isnan(value) else repr(value))
            row += [int(cell["n"]), cell["test"], int(bool(cell["significant"]))]
        writer.writerow(row)
    return out.getvalue()
