"""Plots show the seeds' spread, and weight curves that lie on top of each other stay apart."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from test_results import _metrics, _summary, _write_run

from multikd.results import plots

# (kind, strategy, seed); test_acc = 10·epoch + seed (test_results._metrics)
RUNS = [("student", None, 0), ("student", None, 1), ("student", None, 2),
        ("distill", "uniform", 0), ("distill", "uniform", 1), ("distill", "ce-filter", 0)]
WEIGHTS = {"uniform": (0.5, 0.5), "ce-filter": (0.7, 0.3)}  # (w_strong, w_weak)


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """{file name: matplotlib figure} of plot_runs on RUNS, caught before they are closed."""
    for kind, strategy, seed in RUNS:
        metrics = _metrics(kind, strategy, seed)
        if strategy:
            strong, weak = WEIGHTS[strategy]
            metrics = [row | {"w_strong": strong, "w_weak": weak} for row in metrics]
        _write_run(tmp_path / "runs" / f"{strategy or 'student'}_s{seed}",
                   _summary(kind, strategy, False, seed, (60.0, 61.0, 60.0)), metrics)
    caught = {}
    save = plots._save

    def keep(fig, path):
        caught[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_runs(tmp_path / "runs", tmp_path / "plots")
    return caught


def test_accuracy_curves_carry_a_band_from_lowest_to_highest_seed(figures):
    ax = figures["synthetic_resnet8_strong+weak_acc.png"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # student alone (3 seeds) and uniform (2); ce-filter has one seed
    spans = sorted((b.get_paths()[0].vertices[:, 1].min(), b.get_paths()[0].vertices[:, 1].max())
                   for b in bands)
    assert spans == [pytest.approx((10.0, 31.0)), pytest.approx((10.0, 32.0))]
    colours = {_rgb(b.get_facecolor()[0]) for b in bands}  # each band in its line's colour
    assert colours == {_rgb(lines[m].get_color()) for m in ("student alone", "uniform")}
    assert all(0 < b.get_alpha() < 0.5 for b in bands)
    assert list(lines["uniform"].get_ydata()) == pytest.approx([10.5, 20.5, 30.5])  # the mean
    assert "lowest to highest seed" in ax.get_ylabel()


def test_coinciding_weight_curves_stay_distinguishable(figures):
    fig = figures["synthetic_resnet8_strong+weak_weights.png"]
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    uniform = panels["uniform"]
    strong, weak = uniform.get_lines()
    assert list(strong.get_ydata()) == list(weak.get_ydata())  # they lie on top of each other
    assert strong.get_linestyle() != weak.get_linestyle()
    assert strong.get_marker() != weak.get_marker()
    assert [t.get_text() for t in uniform.texts] == ["strong = weak"]
    assert len(panels["ce-filter"].texts) == 0  # 0.7 and 0.3: nothing to say


def test_coinciding_groups():
    a = pd.Series([0.5, 0.5])
    curves = {"a": a, "b": a + 1e-4, "c": a + 0.2, "d": a + 0.2, "e": a - 0.3}
    assert plots.coinciding(curves) == [["a", "b"], ["c", "d"]]
    assert plots.coinciding({"a": a}) == []


def _rgb(colour):
    from matplotlib.colors import to_rgb

    return tuple(round(v, 6) for v in to_rgb(colour))
