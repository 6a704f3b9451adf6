"""Born-again generations (#18 item 3, second half): a finished student run, alone or
distilled, is a teacher of the next generation through --teachers-from, verified from its
checkpoint like any teacher."""

from __future__ import annotations

import json

import torch
from run_helpers import synthetic_args

from multikd.cli import main
from multikd.models import create_model

DATA = synthetic_args(train_size=64, test_size=32)


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def test_three_generations_each_taught_by_the_last(tmp_path):
    gen0, gen1, gen2 = (tmp_path / f"gen{i}" for i in range(3))
    assert main(["train-teacher", "--kind", "student", "--arch", "resnet8", "--epochs", "1",
                 "--out", str(gen0), *DATA]) == 0
    for teacher, student in ((gen0, gen1), (gen1, gen2)):
        assert main(["distill", "--student", "resnet8", "--teachers-from", str(teacher),
                     "--strategy", "uniform", "--epochs", "1", "--out", str(student),
                     *DATA]) == 0
    for teacher, student in ((gen0, gen1), (gen1, gen2)):
        summary = _summary(student)
        assert summary["kind"] == "distill" and summary["teacher_names"] == [teacher.name]
        assert summary["teacher_archs"] == ["resnet8"]
        # the teacher measured from its checkpoint is the model its run finished with
        measured = summary["teacher_test_acc"][teacher.name]
        assert abs(measured - _summary(teacher)["last_test_acc"]) < 1e-9
    # generation 2's checkpoint loads as a plain resnet8 (and so could teach a third)
    model = create_model("resnet8", num_classes=10, checkpoint=str(gen2 / "checkpoint.pt"))
    assert isinstance(model, torch.nn.Module)
    w1 = torch.load(gen1 / "checkpoint.pt", weights_only=True)["model"]
    w2 = torch.load(gen2 / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)  # a new student, not a copy
