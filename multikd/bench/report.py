"""One self-contained HTML page of a suite's results: tables, plots, suite, teachers, versions.

``multikd report OUT`` reads the finished runs under ``OUT`` (a ``multikd bench`` output
folder, or any folder of run directories) and writes ``OUT/report.html``: the last-epoch,
best-epoch (and val-selected) tables and the paired-difference table vs the student alone
(:mod:`multikd.bench.results`, :mod:`multikd.bench.paired`), every plot of
:mod:`multikd.bench.plots` embedded as a PNG data URI, the suite file the sweep came from
(``OUT/suite.yaml``), the teachers' verified accuracies (``OUT/teachers.json``) and the
versions the runs were made with. Nothing is linked: the page opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import tempfile
from pathlib import Path

import pandas as pd

import multikd
from multikd.atomic import atomic_write_text
from multikd.bench.paired import format_paired, paired_table
from multikd.bench.plots import plot_collected
from multikd.bench.results import (
    ALONE, CAPTIONS, METRIC_COLUMNS, ResultsError, collect_runs, comparison_runs, format_table,
    strategy_table,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }
.note { color: #555; font-size: 0.85em; }
"""


def markdown_table_html(text: str) -> str:
    """Our Markdown table text (a ``**caption**`` line, the pipe table, a note) as HTML;
    ``**x**`` cells become bold."""
    lines = text.strip().splitlines()
    caption = lines[0].strip("*") if lines and lines[0].startswith("**") else ""
    rows = [line for line in lines if line.startswith("|")]
    notes = [line for line in lines[1:] if line and not line.startswith("|")]
    if len(rows) < 2:
        raise ResultsError("not a Markdown table")

    def cells(line: str) -> list[str]:
        parts = line.strip().strip("|").replace(r"\|", "\0").split("|")
        return [p.strip().replace("\0", "|") for p in parts]

    def cell_html(text: str, tag: str) -> str:
        bold = text.startswith("**") and text.endswith("**") and len(text) > 4
        body = html.escape(text[2:-2] if bold else text)
        return f"<{tag}>{'<b>' + body + '</b>' if bold else body}</{tag}>"

    head = "".join(cell_html(c, "th") for c in cells(rows[0]))
    body = "".join(
        "<tr>" + "".join(cell_html(c, "td") for c in cells(r)) + "</tr>" for r in rows[2:]
    )
    out = f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"
    return out + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def build_report(root: str | Path) -> str:
    """The HTML page of the finished runs under ``root`` (see the module doc)."""
    root = Path(root)
    df = collect_runs(root)
    sections = []
    metrics = ["last", "best"]
    val = METRIC_COLUMNS["val"]
    if val in df and pd.to_numeric(df[val], errors="coerce").notna().any():
        metrics.append("val")
    for metric in metrics:
        table = strategy_table(df, metric=metric)
        sections.append(f"<h2>{html.escape(CAPTIONS[metric].capitalize())}</h2>"
                        + markdown_table_html(format_table(table, "md")))
    methods = set(comparison_runs(df)["method"])
    if ALONE in methods and len(methods) > 1:
        paired = paired_table(df, metric="last", vs="student")
        sections.append("<h2>Paired differences to the student alone</h2>"
                        + markdown_table_html(format_paired(paired, "md")))
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for path in plot_collected(df, Path(tmp)):
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            images.append(f'<figure><img alt="{html.escape(Path(path).stem)}" '
                          f'src="data:image/png;base64,{data}"><figcaption class="note">'
                          f"{html.escape(Path(path).name)}</figcaption></figure>")
    if images:
        sections.append("<h2>Plots</h2>" + "".join(images))
    sections.append(_teachers_section(root))
    suite = root / "suite.yaml"
    if suite.is_file():
        sections.append("<h2>Suite</h2><pre>" + html.escape(suite.read_text()) + "</pre>")
    sections.append(_versions_section(df))
    title = f"multikd report: {root.name}"
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"note\">{len(df)} finished runs under "
        f"{html.escape(str(root))}; written {when} by multikd {multikd.__version__}.</p>"
        + "".join(s for s in sections if s) + "</body></html>\n"
    )


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (default ``root/report.html``) atomically."""
    path = Path(out) if out else Path(root) / "report.html"
    atomic_write_text(path, build_report(root))
    return path


def _teachers_section(root: Path) -> str:
    path = root / "teachers.json"
    if not path.is_file():
        return ""
    try:
        teachers = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f'<h2>Teachers</h2><p class="note">{html.escape(str(path))} unreadable: ' \
               f"{html.escape(str(err))}</p>"
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            name, info.get("arch", ""), info.get("source", ""), _acc(info.get("test_acc")),
            _acc(info.get("expected_acc")))) + "</tr>"
        for name, info in teachers.items()
    )
    return ("<h2>Teachers</h2><table><caption>verified test accuracy (%) of each teacher "
            "before any student used it</caption><tr><th>teacher</th><th>arch</th>"
            "<th>source</th><th>measured</th><th>expected</th></tr>" + rows + "</table>")


def _acc(value) -> str:
    return "" if value is None else f"{float(value):.2f}"


def _versions_section(df: pd.DataFrame) -> str:
    columns = [c for c in df.columns if c.startswith("versions.")]
    if not columns:
        return ""
    found = df[columns].drop_duplicates()
    header = "".join(f"<th>{html.escape(c.removeprefix('versions.'))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in found.itertuples(index=False)
    )
    return ("<h2>Versions</h2><table><caption>software the runs were made with</caption>"
            f"<tr>{header}</tr>{body}</table>")
