"""Run directories → pandas tables: mean ± sample std over seeds, last vs best vs val-selected.

A run directory is any folder under ``RUNS_DIR`` holding ``summary.json`` (see
:mod:`multikd.train.runio`). Only *finished* runs (``status == "finished"``) enter a table; any
other run is listed in a warning and in ``collect_runs(root).attrs["skipped"]``.

The comparison table (:func:`strategy_table`) has one row per student architecture and
teacher set (and dataset, and training length), and one column per method:

- ``student alone``: runs of kind ``student`` with the same architecture, dataset and epochs;
- ``<strategy>`` (logits only) and ``<strategy> +feat`` (logits + features, ``gamma > 0``);
- ``<teacher> (teacher)``: each teacher's test accuracy as measured by the distill runs
  before use (``teacher_test_acc``), else the last-epoch accuracy of a teacher run whose
  folder name or architecture equals the teacher's name (the last checkpoint is the one
  distillation loads).

Every method cell aggregates over seeds: ``mean``, sample ``std`` (ddof=1; NaN when n=1,
printed as ``—``) and ``n``. A teacher is one fixed model, so when every run records the
same accuracy for it, its cell is that value with n=1; differing values (teachers retrained
per seed) are aggregated over seeds like the other cells.

Metrics (accuracies in %, as the engine writes them):

- ``last``: ``last_test_acc``, the test accuracy after the final epoch (the honest default);
- ``best``: ``best_test_acc``, the best test accuracy over epochs: optimistic, since the
  epoch is selected on the test set itself;
- ``val``: ``val_selected_test_acc``, test accuracy at the epoch of best validation accuracy
  (needs runs trained with a validation split).

Collecting the runs lives in :mod:`multikd.results.runs` and the text formats (Markdown,
CSV, LaTeX) in :mod:`multikd.results.table_format`; their names stay importable from here.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from multikd.errors import MultikdError
from multikd.results.runs import (  # noqa: F401  (collecting, re-exported: tables' old home)
    ROW_KEYS,
    ResultsError,
    check_one_experiment_per_cell,
    collect_runs,
    experiment_text,
    read_metrics,
)
from multikd.results.table_format import (  # noqa: F401  (formatting, re-exported likewise)
    FORMATS,
    PUBLISHED_NOTE,
    STATS,
    format_table,
    row_label,
    tex_escape,
    tex_table,
    write_table,
)
from multikd.results.targets import EPOCHS, Comparison, Target, interval, read_targets
from multikd.train.runio import SUMMARY

log = logging.getLogger(__name__)

METRIC_COLUMNS = {"last": "last_test_acc", "best": "best_test_acc", "val": "val_selected_test_acc"}
CAPTIONS = {
    "last": "last-epoch test accuracy (%)",
    "best": "best-epoch test accuracy (%) — optimistic, selected on test",
    "val": "val-selected test accuracy (%)",
}


ALONE = "student alone"
FEAT_SUFFIX = " +feat"
TEACHER_SUFFIX = " (teacher)"
TEACHERS_FILE = "teachers.json"  # the teachers' verification records in a bench folder


# --------------------------------------------------------------------------- the table
def load_table(root: str | Path | list, metric: str = "last",
               allow_duplicates: bool = True) -> pd.DataFrame:
    """:func:`strategy_table` of the finished runs under ``root``, with the published
    targets of the ``suite.yaml`` in each folder (:func:`add_published`)."""
    runs = collect_runs(root)
    table = strategy_table(runs, metric=metric, allow_duplicates=allow_duplicates)
    return add_published(table, runs)


def add_published(table: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """``table.attrs["published"]``: row -> :class:`~multikd.results.targets.Comparison` of
    each target that the ``suite.yaml`` of the runs folders (``df.attrs["roots"]``) gives
    for that row; absent when there is none. :func:`format_table` shows them as the
    ``published`` column."""
    targets, sets = read_targets(df.attrs.get("roots", ()))
    if targets:
        cells = published_cells(comparison_runs(df), table.index, targets, sets)
        if cells:
            table.attrs["published"] = cells
    return table


def _canonical(student: str) -> str:
    from multikd.models import canonical_name

    try:
        return canonical_name(student)
    except MultikdError:
        return student


def _target_method(label: str) -> str:
    """A suite's run label (``student``, ``L``, ``L+feat``) as the table's column."""
    if label == "student":
        return ALONE
    return label.removesuffix("+feat") + FEAT_SUFFIX if label.endswith("+feat") else label


def published_cells(runs: pd.DataFrame, index, targets: list[Target],
                    sets: dict[str, list[str]]) -> dict[tuple, list[Comparison]]:
    """Table row (an entry of ``index``) -> the comparisons of the targets of that row,
    each on its own metric (``epoch``), whatever the table's. ``runs``:
    :func:`comparison_runs`. A target belongs to every row of its student and teacher set
    (each dataset and training length)."""
    out: dict[tuple, list[Comparison]] = {}
    for row in index:
        dataset, student, teachers, epochs = row
        same = ((runs["dataset"] == dataset) & (runs["student"] == student)
                & (runs["epochs"] == key_text(epochs)))
        found = []
        for t in targets:
            if _canonical(t.student) != student or "+".join(sets.get(t.teachers, ())) != teachers:
                continue
            method = _target_method(t.label)
            if method == ALONE:
                cell = alone_runs_of_row(runs[same & (runs["kind"] == "student")],
                                         runs[same & (runs["teachers"] == teachers)
                                              & (runs["kind"] == "distill")])
            else:
                cell = runs[same & (runs["method"] == method) & (runs["teachers"] == teachers)]
            column = EPOCHS[t.epoch]
            values = cell[column] if column in cell else pd.Series(dtype=float)
            found.append(Comparison(t, *interval(values)))
        if found:
            out[row] = found
    return out


def strategy_table(df: pd.DataFrame, metric: str = "last", cost: bool = True,
                   allow_duplicates: bool = True) -> pd.DataFrame:
    """The comparison table of the runs in ``df`` (from :func:`collect_runs`).

    ``allow_duplicates=False`` refuses a cell holding copies of one run (same config hash
    and seed, e.g. one runs folder passed twice under two names), which would count one
    result several times (``multikd table`` refuses them unless ``--allow-duplicates``);
    allowed, they are averaged with a warning.

    Index: (dataset, student, teachers, epochs), ``teachers`` joined with ``+``. Columns: a
    MultiIndex (method, stat) with stat in mean/std/n, methods ordered student alone, each
    strategy then its ``+feat`` variant (alphabetical), then the teachers.
    ``table.attrs``: ``metric``, ``caption``, ``methods`` (student methods, compared for
    bold), ``teacher_columns``, ``costs`` (row index -> :class:`multikd.results.costs.RowCost`:
    parameters and MACs of the student and each teacher; empty with ``cost=False``), shown by
    :func:`format_table` as the last columns; ``teacher_notes`` (:func:`own_domain_text` of
    each teacher trained on another domain, from the runs folders' ``teachers.json``), shown
    by the Markdown table under it.
    """
    if metric not in METRIC_COLUMNS:
        raise ResultsError(
            f"unknown metric {metric!r}; expected one of {', '.join(METRIC_COLUMNS)}"
        )
    column = METRIC_COLUMNS[metric]
    students = comparison_runs(df)
    values = pd.to_numeric(students.get(column), errors="coerce") if column in students else None
    if values is None or values.isna().all():
        hint = ""
        if metric == "val":
            hint = (" These runs were trained without a validation split (data.val_size 0); "
                    "use --metric last or best, or train with a validation split")
        root = df.attrs.get("root", "the runs folder")
        raise ResultsError(f"no run under {root} records {column}.{hint}")
    students["value"] = values
    missing = students[students["value"].isna()]
    for path in missing["path"]:
        log.warning("run %s has no %s; left out of the %s table", path, column, metric)
    students = students.dropna(subset=["value"])
    distill = students[students["kind"] == "distill"]
    alone = students[students["kind"] == "student"]
    row_keys = sorted(
        set(map(tuple, distill[list(ROW_KEYS)].values))
        | {(d, s, "", e) for d, s, _, e in map(tuple, alone[list(ROW_KEYS)].values)
           if not _has_distill_row(distill, d, s, e)},
    )
    methods = _ordered_methods(distill)
    teacher_columns = []
    rows = []
    for key in row_keys:
        dataset, student, teachers, epochs = key
        same = (students["dataset"] == dataset) & (students["student"] == student)
        same &= students["epochs"] == epochs
        in_row = students[
            same & (students["kind"] == "distill") & (students["teachers"] == teachers)
        ]
        cells = {ALONE: alone_runs_of_row(students[same & (students["kind"] == "student")],
                                          in_row)}
        cells.update({m: in_row[in_row["method"] == m] for m in methods})
        row = {}
        for method, runs in cells.items():
            if not allow_duplicates:
                refuse_copies(runs, key, method)
            _warn_duplicate_seeds(runs, key, method)
            row.update({(method, stat): v for stat, v in zip(STATS, _aggregate(runs["value"]))})
        for name in in_row["teacher_names"].iloc[0] if len(in_row) else ():
            label = name + TEACHER_SUFFIX
            if label not in teacher_columns:
                teacher_columns.append(label)
            acc = _teacher_accuracy(df, in_row, name, dataset)
            row.update({(label, stat): v for stat, v in zip(STATS, acc)})
        rows.append(row)
    columns = pd.MultiIndex.from_tuples(
        [(m, s) for m in [ALONE, *methods, *teacher_columns] for s in STATS],
        names=["method", "stat"],
    )
    index = pd.MultiIndex.from_tuples(
        [(d, s, t, _epochs_value(e)) for d, s, t, e in row_keys], names=list(ROW_KEYS)
    )
    table = pd.DataFrame(rows, index=index).reindex(columns=columns)
    for method in [ALONE, *methods, *teacher_columns]:
        table[(method, "n")] = table[(method, "n")].fillna(0).astype(int)
    costs = {}
    if cost:
        from multikd.results.costs import row_cost

        for key, final in zip(row_keys, index):
            dataset, student, teachers, epochs = key
            same = (students["dataset"] == dataset) & (students["student"] == student)
            same &= (students["epochs"] == epochs) & (students["teachers"].isin([teachers, ""]))
            costs[final] = row_cost(student, students[same])
    records = teacher_records(df.attrs.get("roots", ()))
    names = [c.removesuffix(TEACHER_SUFFIX) for c in teacher_columns]
    table.attrs.update(
        metric=metric, caption=CAPTIONS[metric], methods=[ALONE, *methods],
        teacher_columns=teacher_columns, costs=costs,
        teacher_notes=[t for t in (own_domain_text(n, records.get(n)) for n in names) if t],
    )
    return table


def key_text(value) -> str:
    """A row-key value as text: ``""`` when missing, ``3`` for 3.0, else ``str(value)``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def comparison_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The student and distill runs of ``df`` with the columns a table row is made of.

    Adds ``method`` (:func:`method_labels`), ``teachers`` (names joined with ``+``) and
    turns ``dataset``, ``student``, ``epochs`` into text (:func:`key_text`) so that runs
    lacking a field still group together.
    """
    if df.empty or "kind" not in df:
        raise ResultsError(_no_runs_message(df))
    runs = df[df["kind"].isin(["student", "distill"])].copy()
    if runs.empty:
        raise ResultsError(
            f"{_no_runs_message(df)}: found only runs of kind "
            f"{sorted(set(df['kind'].dropna()))}; tables and plots compare student and distill runs"
        )
    runs["method"] = method_labels(runs)
    runs["teachers"] = runs["teacher_names"].map("+".join)
    for key in ("dataset", "student", "epochs"):
        runs[key] = runs[key].map(key_text)
    check_one_experiment_per_cell(runs)
    return runs


def _no_runs_message(df: pd.DataFrame) -> str:
    root = df.attrs.get("root", "the runs folder")
    skipped = df.attrs.get("skipped", [])
    extra = f" ({len(skipped)} unfinished or unreadable run(s) skipped)" if skipped else ""
    return (f"no finished runs under {root}{extra}; pass the folder that holds the run "
            f"directories (each with {SUMMARY})")


def _has_distill_row(distill: pd.DataFrame, dataset: str, student: str, epochs: str) -> bool:
    keys = distill[["dataset", "student", "epochs"]]
    same = (keys["dataset"] == dataset) & (keys["student"] == student)
    return bool((same & (keys["epochs"] == epochs)).any())


def _epochs_value(text: str):
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def _strategy_base(row) -> str:
    label = row.get("strategy_label")
    return str(label if isinstance(label, str) and label else row.get("strategy"))


def _params_key(params, run_seed=None) -> str:
    """Canonical text of a run's strategy parameters. A ``seed`` parameter equal to the run's
    own seed is the engine's default (each seed draws its own stream), not a different
    experiment, so it is left out and such runs share one column across seeds."""
    params = dict(params) if isinstance(params, dict) else {}
    if run_seed is not None and params.get("seed") == run_seed:
        del params["seed"]
    return json.dumps(params, sort_keys=True)


def method_labels(runs: pd.DataFrame) -> pd.Series:
    """Column label of each run: ``student alone``, ``<strategy>`` or ``<strategy> +feat``.

    The strategy part is the summary's ``strategy_label`` if any, else the strategy name;
    when one name was run with different ``strategy_params``, the parameters are appended
    so that different experiments never share a column.
    """
    bases = runs.apply(_strategy_base, axis=1)
    no_params = pd.Series([None] * len(runs), index=runs.index)
    seeds = runs.get("seed", no_params)
    params = pd.Series(
        [_params_key(p, s) for p, s in zip(runs.get("strategy_params", no_params), seeds)],
        index=runs.index,
    )
    distill = runs["kind"] == "distill"
    ambiguous = {
        b for b in set(bases[distill]) if params[distill & (bases == b)].nunique() > 1
    }
    labels = []
    for i in runs.index:
        if runs.at[i, "kind"] != "distill":
            labels.append(ALONE)
            continue
        base = bases[i]
        shown = ",".join(f"{k}={v}" for k, v in json.loads(params[i]).items())
        if base in ambiguous and shown:
            base = f"{base} [{shown}]"
        labels.append(base + (FEAT_SUFFIX if runs.at[i, "features"] else ""))
    return pd.Series(labels, index=runs.index)


def _ordered_methods(distill: pd.DataFrame) -> list[str]:
    present = set(distill["method"])
    bases = sorted({m.removesuffix(FEAT_SUFFIX) for m in present})
    return [m for b in bases for m in (b, b + FEAT_SUFFIX) if m in present]


def _aggregate(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1 — NaN for a single value —, n) of ``values``."""
    n = int(values.count())
    if n == 0:
        return math.nan, math.nan, 0
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    return float(values.mean()), std, n


def alone_runs_of_row(alone: pd.DataFrame, in_row: pd.DataFrame) -> pd.DataFrame:
    """The student-alone runs a row of distillation runs ``in_row`` is compared with.

    A suite trains the student alone once per teacher set (so that each lockstep group is
    self-contained), and a table row collects every alone run of its dataset, student and
    epochs; the alone runs of one seed in *other* teacher sets are copies of one experiment,
    and counting them would inflate n. When some alone runs lie in the same folder as the
    row's distillation runs (``OUT/runs/<set>/<student>/``) only those are kept; otherwise
    (hand-made folders, a row without distillation runs) all are kept, and several runs of
    one seed are averaged with a warning.
    """
    if alone.empty or in_row.empty:
        return alone
    parents = {Path(p).parent for p in in_row["path"]}
    near = alone[alone["path"].map(lambda p: Path(p).parent in parents)]
    return near if len(near) else alone


def refuse_copies(runs: pd.DataFrame, key: tuple, method: str) -> None:
    """A :class:`ResultsError` listing the folders of each run that ``runs`` (one table
    cell) holds more than once: the same ``config_hash`` and ``seed`` in its summary.json
    (the config hash covers every setting but where the run was written)."""
    if runs.empty or "config_hash" not in runs:
        return
    known = runs.dropna(subset=["config_hash"])
    copies = sorted(sorted(cell["path"]) for _, cell in
                    known.groupby(["config_hash", "seed"], dropna=False) if len(cell) > 1)
    if not copies:
        return
    listing = "; ".join(" = ".join(paths) for paths in copies)
    raise ResultsError(
        f"{'|'.join(map(str, key))} / {method}: {sum(map(len, copies))} runs are copies of "
        f"{len(copies)} (same config hash and seed), so each result would count more than "
        f"once: {listing}. Pass each run once (leave out the copied folders), or "
        "--allow-duplicates to average them anyway"
    )


def _warn_duplicate_seeds(runs: pd.DataFrame, key: tuple, method: str) -> None:
    if runs.empty or "seed" not in runs:
        return
    counts = runs["seed"].value_counts()
    for seed in counts[counts > 1].index:
        paths = ", ".join(runs.loc[runs["seed"] == seed, "path"])
        log.warning(
            "%s / %s: %d runs with seed %s are all averaged (%s); are they copies or "
            "different experiments?", "|".join(key), method, counts[seed], seed, paths,
        )


def _recorded_teacher_acc(run: pd.Series, name: str) -> float | None:
    recorded = run.get("teacher_test_acc")
    if isinstance(recorded, dict):
        value = recorded.get(name)
    elif isinstance(recorded, (list, tuple)) and len(recorded) == len(run["teacher_names"]):
        value = recorded[list(run["teacher_names"]).index(name)]
    else:
        value = None
    return None if value is None else float(value)


def teacher_records(roots) -> dict[str, dict]:
    """The teachers' verification records (``teachers.json``, written by ``multikd bench``)
    of the folders ``roots``, merged; ``{}`` where there is none. An unreadable file is
    skipped with a warning: the records annotate the tables, they do not make them."""
    records = {}
    for root in roots:
        path = Path(root) / TEACHERS_FILE
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("cannot read %s (%s); the teachers' own-domain accuracies are left out",
                        path, err)
            continue
        if isinstance(found, dict):
            records |= {k: v for k, v in found.items() if isinstance(v, dict)}
    return records


def own_domain_text(name: str, record: dict | None) -> str | None:
    """``wrong: 6.90% here; 91.40% on its own domain (synthetic seed 1)`` for a teacher
    that was trained and verified on another domain than the students' (a ``teachers.json``
    record with ``own_domain_test_acc``); None for any other teacher."""
    if not record or record.get("own_domain_test_acc") is None:
        return None
    here = record.get("test_acc")
    here_text = "" if here is None else f"{float(here):.2f}% here; "
    return f"{name}: {here_text}{own_domain_accuracy(record)}"


def own_domain_accuracy(record: dict) -> str:
    """``91.40% on its own domain (synthetic seed 1)``: a ``teachers.json`` record's
    accuracy on the synthetic world it was trained on (its ``synthetic`` settings)."""
    domain = record.get("own_domain")
    where = ", ".join(f"{k} {v}" for k, v in domain.items()) if isinstance(domain, dict) else ""
    return (f"{float(record['own_domain_test_acc']):.2f}% on its own domain"
            + (f" (synthetic {where})" if where else ""))


def _teacher_accuracy(df: pd.DataFrame, distill_runs: pd.DataFrame, name: str, dataset: str):
    """(mean, std, n) of one teacher's test accuracy; see the module docstring."""
    per_seed = {}
    for _, run in distill_runs.iterrows():
        value = _recorded_teacher_acc(run, name)
        if value is not None:
            per_seed.setdefault(run.get("seed"), value)
    if per_seed:
        values = pd.Series(list(per_seed.values()), dtype=float)
        if values.nunique() == 1:
            return float(values.iloc[0]), math.nan, 1
        return _aggregate(values)
    if "last_test_acc" not in df:
        return math.nan, math.nan, 0
    teachers = df[(df["kind"] == "teacher") & (df["dataset"].map(key_text) == dataset)]
    match = teachers["path"].map(lambda p: Path(p).name == name) | (teachers["student"] == name)
    return _aggregate(pd.to_numeric(teachers.loc[match, "last_test_acc"], errors="coerce").dropna())
