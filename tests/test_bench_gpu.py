"""experiments/bench_gpu.py: its helpers, and one tiny run end to end on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_gpu():
    path = REPO / "experiments" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_gpu", None)


def test_meta_steps_per_epoch(bench_gpu):
    assert bench_gpu.meta_steps_per_epoch(782, 5) == 158  # 0, 5, ..., 780 and 781
    assert bench_gpu.meta_steps_per_epoch(10, 5) == 3
    assert bench_gpu.meta_steps_per_epoch(11, 5) == 3  # 10 is both


def test_section_replaces_its_own_block(bench_gpu, tmp_path):
    path = tmp_path / "speed.md"
    path.write_text("# other\n\nkept\n")
    bench_gpu.put_section(path, "first\n")
    bench_gpu.put_section(path, "second\n")
    text = path.read_text()
    assert text.startswith("# other\n\nkept\n") and "second" in text and "first" not in text
    assert text.count(bench_gpu.BEGIN) == 1


@pytest.mark.slow  # a whole run of the script, a few seconds
def test_a_tiny_run_judges_its_targets(bench_gpu, tmp_path, capsys):
    out = tmp_path / "r.json"
    bench_gpu.main([
        "--device", "cpu", "--teacher", "resnet8", "--teachers", "2", "--student", "resnet8",
        "--train-size", "64", "--test-size", "16", "--batch", "16", "--steps", "1",
        "--repeats", "1", "--warmup", "1", "--strategies", "uniform", "ebkd",
        "--variants", "logits", "--suite", "", "--json", str(out),
    ])
    text = capsys.readouterr().out
    result = json.loads(out.read_text())["results"][0]
    names = [t["name"] for t in result["targets"]]
    assert names == ["uniform (logits) step / floor", "ebkd (logits) step / floor",
                     "lockstep of 2 (logits) / its floor"]
    assert all(t["value"] > 0 for t in result["targets"])
    assert "| target | value | limit | judged |" in text and "n/a" in text
