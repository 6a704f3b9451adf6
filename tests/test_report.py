"""The HTML report: self-contained, every table and plot in it, and a real browser renders it."""

import base64
import json
import shutil
import subprocess

import pytest
from test_results import RUNS, _metrics, _summary, _write_run

from multikd import cli
from multikd.results.report import markdown_table_html

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bench_out(tmp_path):
    root = tmp_path / "out"
    for (kind, strategy, features, seed), accs in RUNS.items():
        name = f"{strategy or 'student'}{'+feat' if features else ''}_s{seed}"
        _write_run(root / "runs" / "trio" / "resnet8" / name,
                   _summary(kind, strategy, features, seed, accs), _metrics(kind, strategy, seed))
    (root / "suite.yaml").write_text("name: demo-suite\nseeds: [0, 1, 2]\n")
    (root / "teachers.json").write_text(json.dumps(
        {"strong": {"arch": "resnet20", "source": "trained", "test_acc": 80.0}}))
    return root


def test_markdown_tables_become_html():
    text = "**cap <x>**\n\n| a | b |\n|:--|--:|\n| r \\| 1 | **2.00** |\n\nnote\n"
    assert markdown_table_html(text) == (
        "<table><caption>cap &lt;x&gt;</caption><tr><th>a</th><th>b</th></tr>"
        "<tr><td>r | 1</td><td><b>2.00</b></td></tr></table><p class=\"note\">note</p>"
    )


def test_report_holds_tables_plots_suite_teachers(bench_out, capsys):
    assert cli.main(["report", str(bench_out), "--quiet"]) == 0
    page = (bench_out / "report.html").read_text()
    assert "wrote" in capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and "http" not in page  # nothing linked
    assert "<b>66.62 ± 0.88 (2)</b>" in page  # the last table's best cell, bold
    assert "Paired differences to the student alone" in page and "+5.62 [" in page
    assert "demo-suite" in page and "<td>resnet20</td>" in page and "<td>80.00</td>" in page
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2  # accuracy and weight plots of the one row
    assert all(base64.b64decode(i.split('"')[0]).startswith(PNG) for i in images)


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed")
def test_a_headless_browser_renders_the_report(bench_out, tmp_path):
    assert cli.main(["report", str(bench_out), "--quiet"]) == 0
    page = (bench_out / "report.html").resolve()
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert dom.count("<table>") >= 4 and dom.count("<img") == 2
    assert "66.62 ± 0.88 (2)" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20000
