"""The learner contract is a typing.Protocol the engine reads, not attributes it probes."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from multikd.errors import ModelError
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import TeacherEnsemble
from multikd.method.learner import LearnerContract, SupervisedLearner, missing_members
from multikd.method.loss_spec import LossSpec
from multikd.method.strategies import create_strategy
from multikd.models import create_model
from multikd.train import build, distributed, engine


def test_both_learners_keep_the_contract_and_a_plain_module_does_not():
    model = create_model("resnet8", num_classes=5)
    plain = SupervisedLearner(model)
    assert isinstance(plain, LearnerContract) and missing_members(plain) == []
    assert not plain.updates_after_step and plain.end_epoch(1) == {}
    assert plain.frozen_modules() == [] and plain.self_teacher_state() is None
    distiller = MultiTeacherDistiller(
        create_model("resnet8", num_classes=5),
        TeacherEnsemble([create_model("resnet8", num_classes=5)]),
        create_strategy("uniform"), LossSpec())
    assert isinstance(distiller, LearnerContract)
    assert not distiller.updates_after_step and distiller.end_epoch(1) == {}
    assert distiller.frozen_modules()[0] is distiller.ensemble
    assert not isinstance(model, LearnerContract)
    with pytest.raises(ModelError, match="lacks may_leave_parameters_unused, .*set_epoch"):
        build.Learner(model, model)


def test_the_engine_reads_learners_and_strategies_without_probing():
    for module in (engine, distributed, build):
        source = inspect.getsource(module)
        for probe in ("getattr(parts", "getattr(self.parts", "getattr(strategy",
                      "getattr(learner", "hasattr(parts", "hasattr(learner"):
            assert probe not in source, f"{module.__name__}: {probe}"


def test_a_learned_strategy_reports_its_own_loss_at_the_end_of_an_epoch():
    torch.manual_seed(0)
    teachers = [create_model("resnet8", num_classes=5) for _ in range(2)]
    d = MultiTeacherDistiller(create_model("resnet8", num_classes=5),
                              TeacherEnsemble(teachers, names=["a", "b"]),
                              create_strategy("mtkd-rl"), LossSpec(gamma=1.0), batch_size=4)
    assert d.updates_after_step
    metrics = d.end_epoch(1)
    assert list(metrics) == ["strategy_loss"] and metrics["strategy_loss"] != metrics["strategy_loss"]
    assert d.frozen_modules()[1] is d.strategy_networks and isinstance(d.strategy_networks,
                                                                       nn.Module)


def test_every_method_module_reads_at_once():
    """Issue 34: no module of the method layer over about 500 lines."""
    from pathlib import Path

    import multikd.method

    root = Path(multikd.method.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these modules: {long}"
