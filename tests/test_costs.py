"""What the student saves (#18 item 4): parameters and MACs per image, counted two ways,
in every table row and in `models list`; `table --cost` measures images/s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from multikd import cli
from multikd.results.tables import collect_runs, format_table, strategy_table
from multikd.models import create_model
from multikd.models.cost import human, model_cost

REFERENCE = json.loads((Path(__file__).parent / "reference" / "cifar_zoo.json").read_text())


def _macs_by_hooks(model: nn.Module) -> int:
    """Conv and linear MACs summed from each layer's output shape (an independent count)."""
    total = 0

    def conv(m, inputs, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() * (m.in_channels // m.groups) * k

    def linear(m, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize("arch", ["resnet8", "resnet32x4", "wrn_16_2", "vgg8", "MobileNetV2",
                                  "ShuffleV1"])
def test_macs_and_params_agree_with_an_independent_count(arch):
    cost = model_cost(arch, 100)
    assert cost.macs == _macs_by_hooks(create_model(arch, num_classes=100))
    assert cost.params == REFERENCE[arch]["params"]


def test_published_sizes_of_the_zoo():
    # the CIFAR-100 numbers the field's tables quote (e.g. mdistiller, CRD)
    assert human(model_cost("resnet32x4").macs) == "1.08G"
    assert human(model_cost("resnet8x4").macs) == "177M"
    assert human(model_cost("resnet8").params) == "83.9k"
    assert model_cost("resnet8", 10).params == 83892 - 90 * 64 - 90  # fc for 10 classes


def _run(path: Path, kind: str, seed: int, acc: float, teachers=()) -> None:
    path.mkdir(parents=True)
    summary = {"status": "finished", "kind": kind, "student_arch": "resnet8", "seed": seed,
               "dataset": "cifar100", "epochs": 1, "last_test_acc": acc, "best_test_acc": acc,
               "teacher_names": [n for n, _ in teachers],
               "teacher_archs": [a for _, a in teachers], "strategy": "uniform",
               "features_used": False}
    (path / "summary.json").write_text(json.dumps(summary))


def test_every_row_shows_student_and_teacher_sizes_and_the_ratio(tmp_path):
    teachers = [("big", "resnet32x4"), ("small", "resnet8")]
    _run(tmp_path / "set/resnet8/student_s0", "student", 0, 60.0)
    _run(tmp_path / "set/resnet8/uniform_s0", "distill", 0, 63.0, teachers)
    table = strategy_table(collect_runs(tmp_path), "last")
    text = format_table(table, "md")
    assert "| 83.9k · 12.5M MACs | big 7.43M · 1.08G MACs (88.6×); small 83.9k · 12.5M MACs (1.0×) |" in text
    csv_text = format_table(table, "csv")
    header, row = csv_text.splitlines()[:2]
    assert header.endswith("student params,student macs,big (teacher) params,big (teacher) macs,"
                           "small (teacher) params,small (teacher) macs")
    assert row.endswith(f",83892,{model_cost('resnet8').macs},7433860,"
                        f"{model_cost('resnet32x4').macs},83892,{model_cost('resnet8').macs}")
    assert "MACs" not in format_table(strategy_table(collect_runs(tmp_path), cost=False), "md")


@pytest.mark.slow  # times the models' inference
def test_table_cost_measures_the_images_per_second(tmp_path, capsys):
    teachers = [("big", "resnet32x4"), ("small", "resnet8")]
    _run(tmp_path / "set/resnet8/student_s0", "student", 0, 60.0)
    _run(tmp_path / "set/resnet8/uniform_s0", "distill", 0, 63.0, teachers)
    assert cli.main(["table", str(tmp_path), "--cost", "--cost-batch", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "student img/s" in out and "Inference images/s: cpu, batch 8" in out
    cells = [line for line in out.splitlines() if line.startswith("| resnet8")][0].split("|")
    assert float(cells[-3].strip().replace(",", "")) > 0  # the student's measured images/s
    assert "big " in cells[-2] and "small " in cells[-2]


@pytest.mark.slow  # builds and measures every model of the zoo, seconds
def test_models_list_shows_macs(capsys):
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("resnet32x4 "))
    assert "7,433,860" in line and "1.08G" in line
