"""Comparison tables -> text: Markdown, CSV and LaTeX (booktabs), best cells in bold,
cost columns and the published-targets note; :func:`tex_table` is the one booktabs
writer (the paired tables use it too)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pandas as pd

from multikd.results.runs import ROW_KEYS, ResultsError
from multikd.train.runio import atomic_write_text

FORMATS = ("md", "csv", "tex")
PUBLISHED_NOTE = (
    "Published: each target of the suite against our runs of its cell on the target's own "
    "metric (a best-epoch number against our best-epoch accuracy, whatever the table's "
    "metric): ours mean ± sample std (n), Δ = ours − published, and whether the published "
    "number lies inside, below or above our two-sided 95% Student-t interval of the mean.")
STATS = ("mean", "std", "n")
"""What each method cell of a table holds (the CSV has one column of each per method)."""


def row_label(student: str, teachers: str) -> str:
    """``resnet8x4 ← vgg13+resnet32x4+wrn_40_2`` (the student alone when no teachers)."""
    return f"{student} ← {teachers}" if teachers else student


def format_table(table: pd.DataFrame, fmt: str = "md") -> str:
    """The table as Markdown, CSV or LaTeX text.

    md/tex: a caption naming the metric, cells ``mean ± std (n)`` with 2 decimals (``—`` for
    the std of a single run, empty when a method has no run), the best student mean of each
    row in bold (ties at 2 decimals all bold; teacher columns are not compared).
    csv: one line per row with ``metric``, the row keys, and ``<method> mean``, ``<method> std``,
    ``<method> n`` columns at full precision (empty std when n=1).
    """
    if fmt not in FORMATS:
        raise ResultsError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _format_csv(table)
    rows = _text_rows(table, tex=(fmt == "tex"))
    return _format_tex(table, rows) if fmt == "tex" else _format_md(table, rows)


def _methods(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table.columns.get_level_values(0)))


def _best_methods(table: pd.DataFrame, index) -> set[str]:
    compared = table.attrs.get("methods", _methods(table))
    means = {m: round(table.at[index, (m, "mean")], 2) for m in compared
             if table.at[index, (m, "n")] > 0}
    if not means:
        return set()
    top = max(means.values())
    return {m for m, v in means.items() if v == top}


def _cell(mean: float, std: float, n: int, tex: bool) -> str:
    if n == 0:
        return ""
    pm, dash = (r"$\pm$", "---") if tex else ("±", "—")
    spread = dash if math.isnan(std) else f"{std:.2f}"
    return f"{mean:.2f} {pm} {spread} ({n})"


def _leading_keys(table: pd.DataFrame) -> list[str]:
    """Row keys shown as their own columns: dataset/epochs only when they vary."""
    return [k for k in ("dataset", "epochs") if table.index.get_level_values(k).nunique() > 1]


def _caption(table: pd.DataFrame) -> str:
    parts = [table.attrs.get("caption", "test accuracy (%)")]
    for key in ("dataset", "epochs"):
        values = table.index.get_level_values(key).unique()
        if len(values) == 1 and values[0] != "":
            parts.append(f"{key} {values[0]}")
    return "; ".join(parts) + "; mean ± sample std (n seeds)"


def _text_rows(table: pd.DataFrame, tex: bool) -> list[list[str]]:
    leading = _leading_keys(table)
    out = []
    for index in table.index:
        keys = dict(zip(table.index.names, index))
        row = [str(keys[k]) for k in leading] + [row_label(keys["student"], keys["teachers"])]
        best = _best_methods(table, index)
        for method in _methods(table):
            text = _cell(table.at[index, (method, "mean")], table.at[index, (method, "std")],
                         table.at[index, (method, "n")], tex)
            if method in best:
                text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
            row.append(text)
        out.append(row)
    return out


def _cost_columns(table: pd.DataFrame) -> tuple[list[str], dict]:
    """Header and per-row cells of the cost columns (none when no row has a cost)."""
    costs = table.attrs.get("costs") or {}
    if not any(c.student.cost or any(t.cost for t in c.teachers) for c in costs.values()):
        return [], {}
    header = ["student params · MACs", "teachers params · MACs (× student params)"]
    speed = any(c.student.images_per_s for c in costs.values())
    if speed:
        header += ["student img/s", "teachers img/s"]
    cells = {}
    for index, c in costs.items():
        cells[index] = [c.student_text(), c.teachers_text()] + (list(c.speed_text()) if speed else [])
    return header, cells


def _format_md(table: pd.DataFrame, rows: list[list[str]]) -> str:
    cost_header, cost_cells = _cost_columns(table)
    if cost_header:
        rows = [row + cost_cells.get(index, [""] * len(cost_header))
                for row, index in zip(rows, table.index)]
    n_methods = len(_methods(table)) + len(cost_header)
    header = _leading_keys(table) + ["student ← teachers"] + _methods(table) + cost_header
    published = table.attrs.get("published") or {}
    if published:
        rows = [row + ["<br>".join(c.text() for c in published.get(index, ()))]
                for row, index in zip(rows, table.index)]
        header += ["published"]
    lines = [
        f"**{_caption(table)}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--"] * (len(header) - n_methods - bool(published))
                       + ["--:"] * n_methods + [":--"] * bool(published)) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in row) + " |" for row in rows]
    lines += ["", "Best student method of each row in bold; — : one run, std undefined."]
    if cost_header:
        lines[-1] += _cost_note(table)
    for note in table.attrs.get("teacher_notes") or ():
        lines += ["", f"Teacher {note}, where it was trained and verified."]
    if published:
        lines += ["", PUBLISHED_NOTE]
    return "\n".join(lines) + "\n"


def _cost_note(table: pd.DataFrame) -> str:
    note = (" Sizes: parameters and multiply-accumulates per 32x32 image (convolutions and "
            "linear layers, torch.utils.flop_counter).")
    speed = table.attrs.get("speed")
    if speed:
        note += f" Inference images/s: {speed}."
    return note


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                "←": r"$\leftarrow$", "±": r"$\pm$", "—": "---", "·": r"$\cdot$",
                "×": r"$\times$"}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX special characters escaped (``wrn_40_2`` → ``wrn\\_40\\_2``)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _format_tex(table: pd.DataFrame, rows: list[list[str]]) -> str:
    cost_header, cost_cells = _cost_columns(table)
    n_methods = len(_methods(table))
    leading = _leading_keys(table)
    n_text = len(leading) + 1
    header = [tex_escape(h) for h in leading + ["student ← teachers"] + _methods(table)
              + cost_header]
    published = table.attrs.get("published") or {}
    extra = ["published"] if published else []
    header += extra
    body = [
        " & ".join([tex_escape(c) for c in row[:n_text]] + row[n_text:]
                   + [tex_escape(c) for c in cost_cells.get(index, [""] * len(cost_header))]
                   + [tex_escape("; ".join(c.text() for c in published.get(index, ())))
                      for _ in extra])
        for row, index in zip(rows, table.index)
    ]
    colspec = "l" * n_text + "r" * n_methods + "l" * (len(cost_header) + len(extra))
    return tex_table(_caption(table), colspec, " & ".join(header), body)


def tex_table(caption: str, colspec: str, header: str, body: list[str]) -> str:
    """A booktabs table: ``header`` and each line of ``body`` are one LaTeX row (cells
    already escaped and joined by ``&``, without the closing ``\\\\``)."""
    lines = [
        "% needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(caption)}}}",
        r"\begin{tabular}{" + colspec + "}",
        r"\toprule",
        header + r" \\",
        r"\midrule",
        *(row + r" \\" for row in body),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _format_csv(table: pd.DataFrame) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    methods = _methods(table)
    costs = table.attrs.get("costs") or {}
    names = list(dict.fromkeys(t.name for c in costs.values() for t in c.teachers))
    cost_header = []
    if costs:
        cost_header = ["student params", "student macs"] + [
            f"{n} (teacher) {what}" for n in names for what in ("params", "macs")]
        if any(c.student.images_per_s for c in costs.values()):
            cost_header += ["student images_per_s"] + [f"{n} (teacher) images_per_s" for n in names]
    published = table.attrs.get("published") or {}
    extra = ["published"] if published else []
    writer.writerow(["metric", *ROW_KEYS, *(f"{m} {s}" for m in methods for s in STATS),
                     *cost_header, *extra])
    for index in table.index:
        row = [table.attrs.get("caption", ""), *index]
        for method in methods:
            n = int(table.at[index, (method, "n")])
            mean, std = table.at[index, (method, "mean")], table.at[index, (method, "std")]
            row += [
                "" if n == 0 else repr(float(mean)),
                "" if math.isnan(std) else repr(float(std)),
                n,
            ]
        if cost_header:
            row += _cost_csv_cells(costs.get(index), names, len(cost_header))
        if extra:
            row.append(" | ".join(c.text() for c in published.get(index, ())))
        writer.writerow(row)
    return out.getvalue()


def _cost_csv_cells(cost, names: list[str], width: int) -> list:
    if cost is None:
        return [""] * width
    teachers = {t.name: t for t in cost.teachers}
    cells = [cost.student.cost.params if cost.student.cost else "",
             cost.student.cost.macs if cost.student.cost else ""]
    for name in names:
        c = teachers.get(name)
        cells += [c.cost.params, c.cost.macs] if c is not None and c.cost else ["", ""]
    if len(cells) < width:
        cells.append(f"{cost.student.images_per_s:.1f}" if cost.student.images_per_s else "")
        for name in names:
            c = teachers.get(name)
            cells.append(f"{c.images_per_s:.1f}" if c is not None and c.images_per_s else "")
    return cells


def write_table(table: pd.DataFrame, path: str | Path, fmt: str = "md") -> Path:
    """Write :func:`format_table` text to ``path`` atomically; the path."""
    path = Path(path)
    atomic_write_text(path, format_table(table, fmt))
    return path
