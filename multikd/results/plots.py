"""Plots of a runs folder (matplotlib, Agg backend, PNG), one set per table row.

For every (dataset, student, teacher set, epochs) row of
:func:`multikd.results.tables.strategy_table`:

- ``<row>_acc.png``: test accuracy per epoch, mean over seeds, one line per method (the
  student alone in black, each strategy in its own colour, solid for logits only and dashed
  for logits + features), with a shaded band from the lowest to the highest seed at each
  epoch (methods with two or more seeds): how far one seed's curve may sit from the mean;
- ``<row>_weights.png``: a grid with one panel per distillation method, one line per
  teacher: the teacher's weight per epoch (the ``w_<teacher>`` column of metrics.csv,
  the epoch mean of the strategy's weights), averaged over seeds. Each teacher has its own
  line style and marker, so curves that lie on top of each other (``uniform`` gives every
  teacher 1/K) stay readable, and a panel where some coincide says which (``a = b``).

``<row>`` is ``<dataset>_<student>_<teacher+teacher+...>`` with ``_<N>ep`` appended when one
student and teacher set was trained for several lengths; characters outside
``[A-Za-z0-9_.+-]`` become ``-``. Each file is written atomically.
"""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from multikd.results.tables import (  # noqa: E402
    ALONE,
    FEAT_SUFFIX,
    ROW_KEYS,
    ResultsError,
    collect_runs,
    comparison_runs,
    read_metrics,
    row_label,
)
from multikd.atomic import atomic_write_bytes  # noqa: E402

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")
# Per teacher in a weights panel: (line style, marker), told apart even where lines overlap.
_TEACHER_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"),
                   ((0, (1, 3)), "P"), ((0, (8, 3)), "X"), ((0, (3, 1, 1, 1, 1, 1)), "*")]
COINCIDE_ATOL = 1e-3
"""Two teachers' weight curves coincide when they differ by at most this at every epoch."""


def plot_runs(root: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the accuracy and teacher-weight plots of the finished runs under ``root``."""
    return plot_collected(collect_runs(root), out_dir)


def plot_collected(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Plots of the runs in ``df`` (from :func:`~multikd.results.tables.collect_runs`); the
    paths written."""
    runs = comparison_runs(df)
    out_dir = Path(out_dir)
    lengths = runs.groupby(["dataset", "student", "teachers"])["epochs"].nunique()
    several_lengths = bool(lengths.gt(1).any())
    written = []
    distill = runs[runs["kind"] == "distill"]
    for key, group in distill.groupby(list(ROW_KEYS), sort=True):
        dataset, student, teachers, epochs = key
        alone = runs[(runs["kind"] == "student") & (runs["dataset"] == dataset)
                     & (runs["student"] == student) & (runs["epochs"] == epochs)]
        per_run = seed_curves(pd.concat([alone, group]))
        if not per_run:
            continue
        curves = {m: _mean(frames) for m, frames in per_run.items()}
        stem = _UNSAFE.sub("-", f"{dataset}_{student}_{teachers}")
        if several_lengths:
            stem += f"_{epochs}ep"
        title = f"{row_label(student, teachers)} ({dataset}, {epochs} epochs)"
        names = list(group["teacher_names"].iloc[0])
        written.append(_save(_accuracy_figure(per_run, title), out_dir / f"{stem}_acc.png"))
        weights = {
            m: c for m, c in curves.items() if m != ALONE and any(f"w_{t}" in c for t in names)
        }
        if weights:
            figure = _weights_figure(weights, names, title)
            written.append(_save(figure, out_dir / f"{stem}_weights.png"))
    if not written:
        raise ResultsError("no distill run with a readable metrics.csv to plot")
    return written


def mean_curves(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per method: the numeric metrics.csv columns averaged over its runs, indexed by epoch.

    ``runs``: rows of :func:`~multikd.results.tables.collect_runs` with a ``method`` column
    (:func:`~multikd.results.tables.method_labels`).
    """
    return {m: _mean(frames) for m, frames in seed_curves(runs).items()}


def seed_curves(runs: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """Per method: each of its runs' numeric metrics.csv columns, indexed by epoch (runs as
    in :func:`mean_curves`; a run without a readable metrics.csv is left out)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for _, run in runs.iterrows():
        metrics = read_metrics(run["path"])
        if metrics is None or "epoch" not in metrics or "test_acc" not in metrics:
            continue
        frames.setdefault(run["method"], []).append(
            metrics.set_index("epoch").apply(pd.to_numeric, errors="coerce")
        )
    return frames


def _mean(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames).groupby(level=0).mean()


def _method_styles(methods: list[str]) -> dict[str, dict]:
    bases = sorted({m.removesuffix(FEAT_SUFFIX) for m in methods if m != ALONE})
    cmap = plt.get_cmap("tab10" if len(bases) <= 10 else "tab20")
    colour = {b: cmap(i % cmap.N) for i, b in enumerate(bases)}
    styles = {}
    for m in methods:
        if m == ALONE:
            styles[m] = {"color": "black", "linestyle": ":", "linewidth": 2}
        else:
            styles[m] = {"color": colour[m.removesuffix(FEAT_SUFFIX)],
                         "linestyle": "--" if m.endswith(FEAT_SUFFIX) else "-"}
    return styles


def _accuracy_figure(per_run: dict[str, list[pd.DataFrame]], title: str):
    """Mean test accuracy per method, over a band from the lowest to the highest seed."""
    methods = sorted(per_run, key=lambda m: (m != ALONE, m))
    styles = _method_styles(methods)
    fig, ax = plt.subplots(figsize=(8, 5))
    banded = False
    for method in methods:
        seeds = pd.concat([f["test_acc"] for f in per_run[method]], axis=1)  # [epoch, run]
        curve = seeds.mean(axis=1)
        ax.plot(curve.index, curve.values, label=method, **styles[method])
        if seeds.shape[1] > 1:
            ax.fill_between(seeds.index, seeds.min(axis=1), seeds.max(axis=1),
                            color=styles[method]["color"], alpha=0.12, linewidth=0)
            banded = True
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%), mean over seeds"
                  + ("\n(band: lowest to highest seed)" if banded else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(methods) > 8 else 1, loc="lower right")
    fig.tight_layout()
    return fig


def _weights_figure(curves: dict[str, pd.DataFrame], teachers: list[str], title: str):
    methods = sorted(curves)
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True,
                             sharey=True, squeeze=False)
    for ax, method in zip(axes.flat, methods):
        drawn = {}
        for i, teacher in enumerate(teachers):
            column = f"w_{teacher}"
            if column in curves[method]:
                curve = curves[method][column]
                linestyle, marker = _TEACHER_STYLES[i % len(_TEACHER_STYLES)]
                # hollow markers growing with i: coinciding points nest instead of hiding
                ax.plot(curve.index, curve.values, label=teacher, color=f"C{i % 10}",
                        linestyle=linestyle, marker=marker, markersize=3 + 1.5 * (i % 6),
                        markerfacecolor="none", alpha=0.85, markevery=max(1, len(curve) // 8))
                drawn[teacher] = curve
        groups = coinciding(drawn)
        if groups:
            ax.text(0.02, 0.97, "\n".join(" = ".join(g) for g in groups), transform=ax.transAxes,
                    va="top", fontsize="small", color="0.3")
        ax.set_title(method, fontsize="medium")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel("mean weight")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", title="teacher")
    fig.suptitle(f"teacher weights per epoch — {title}")
    fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    return fig


def coinciding(curves: dict[str, pd.Series]) -> list[list[str]]:
    """Groups (two or more, in the given order) of the named curves that lie on top of each
    other: no epoch where they differ by more than :data:`COINCIDE_ATOL`."""
    groups: list[list[str]] = []
    for name, curve in curves.items():
        for group in groups:
            other = curves[group[0]]
            if curve.index.equals(other.index) and bool(
                    ((curve - other).abs() <= COINCIDE_ATOL).all()):
                group.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    log.debug("wrote %s", path)
    return path
