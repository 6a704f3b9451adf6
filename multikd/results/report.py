"""One self-contained HTML page of a suite's results: tables, plots, suite, teachers, versions.

``multikd bench`` writes it last, after its tables and plots; ``multikd report OUT`` writes
it again from the finished runs under ``OUT`` (a ``multikd bench`` output folder, or any
folder of run directories) into ``OUT/report.html``: the last-epoch, best-epoch (and
val-selected) tables and every paired-difference table the suite's outputs carry (vs the
student alone and vs ``uniform``, :func:`multikd.results.paired.suite_paired_tables`), every
plot of :mod:`multikd.results.plots` embedded as a PNG data URI, the suite file the sweep came
from (``OUT/suite.yaml``), the teachers' verified accuracies (``OUT/teachers.json``; a
teacher trained on another domain shows its accuracy there beside the one on the students'
test set) and the versions the runs were made with. Nothing is linked: the page opens
anywhere, offline.
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
from multikd.results.paired import format_paired, suite_paired_tables
from multikd.results.plots import plot_collected
from multikd.results.tables import (
    ALONE, CAPTIONS, METRIC_COLUMNS, TEACHERS_FILE, ResultsError, collect_runs, format_table,
    own_domain_accuracy, strategy_table,
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


def build_report(
    root: str | Path, runs: pd.DataFrame | None = None,
    paired: list[tuple[str, pd.DataFrame]] | None = None, figures: list[Path] | None = None,
) -> str:
    """The HTML page of the finished runs under ``root`` (see the module doc).

    What the caller already made is used as it is: ``runs`` (:func:`collect_runs` of
    ``root``), ``paired`` (:func:`suite_paired_tables` of them), ``figures`` (their PNG
    files); each left None is made here (the plots in a temporary folder).
    """
    root = Path(root)
    df = collect_runs(root) if runs is None else runs
    sections = []
    metrics = ["last", "best"]
    val = METRIC_COLUMNS["val"]
    if val in df and pd.to_numeric(df[val], errors="coerce").notna().any():
        metrics.append("val")
    for metric in metrics:
        table = strategy_table(df, metric=metric)
        sections.append(f"<h2>{html.escape(CAPTIONS[metric].capitalize())}</h2>"
                        + markdown_table_html(format_table(table, "md")))
    for _, table in suite_paired_tables(df) if paired is None else paired:
        vs = table.attrs["vs"]
        sections.append(f"<h2>Paired differences to {'the ' if vs == ALONE else ''}"
                        f"{html.escape(vs)}</h2>" + markdown_table_html(format_paired(table, "md")))
    if figures is None:
        with tempfile.TemporaryDirectory() as tmp:
            images = [_figure_html(path) for path in plot_collected(df, Path(tmp))]
    else:
        images = [_figure_html(path) for path in figures]
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


def write_report(root: str | Path, out: str | Path | None = None, **made) -> Path:
    """Write :func:`build_report` to ``out`` (default ``root/report.html``) atomically;
    ``made``: what :func:`build_report` may reuse (runs, paired, figures)."""
    path = Path(out) if out else Path(root) / "report.html"
    atomic_write_text(path, build_report(root, **made))
    return path


def _figure_html(path: str | Path) -> str:
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="note">{html.escape(path.name)}</figcaption></figure>')


def _teachers_section(root: Path) -> str:
    path = root / TEACHERS_FILE
    if not path.is_file():
        return ""
    try:
        teachers = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f'<h2>Teachers</h2><p class="note">{html.escape(str(path))} unreadable: ' \
               f"{html.escape(str(err))}</p>"
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            name, info.get("arch", ""), info.get("source", ""), _measured_cell(info),
            _acc(info.get("expected_acc")))) + "</tr>"
        for name, info in teachers.items()
    )
    note = ""
    if any(info.get("own_domain_test_acc") is not None for info in teachers.values()):
        note = ('<p class="note">measured: on the students\' test set. A teacher trained on '
                "another domain is verified there, against expected; its accuracy there is "
                "shown beside.</p>")
    return ("<h2>Teachers</h2><table><caption>verified test accuracy (%) of each teacher "
            "before any student used it</caption><tr><th>teacher</th><th>arch</th>"
            "<th>source</th><th>measured</th><th>expected</th></tr>" + rows + "</table>" + note)


def _measured_cell(info: dict) -> str:
    """``80.00``; ``6.90% here; 91.40% on its own domain (synthetic seed 1)`` for a teacher
    trained on another domain."""
    if info.get("own_domain_test_acc") is None:
        return _acc(info.get("test_acc"))
    return f"{_acc(info.get('test_acc'))}% here; {own_domain_accuracy(info)}"


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
