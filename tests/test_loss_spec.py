"""The loss options are one dataclass (LossSpec), defined once and handed whole to the
distiller; every choice field is checked against the list its method code defines."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing

import pytest

from multikd.errors import ConfigError
from multikd.method import loss_spec
from multikd.method.adapters import ADAPTER_REGISTRY
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY
from multikd.method.label_spaces import LABEL_MERGES
from multikd.method.logit_losses import LOGIT_LOSS_REGISTRY
from multikd.method.loss_spec import REFERENCE, LossSpec
from multikd.train import config


def test_the_run_config_loss_section_is_the_method_layer_spec():
    assert config.LossConfig is LossSpec
    assert config.RunConfig().loss == LossSpec()
    assert typing.get_type_hints(config.RunConfig)["loss"] is LossSpec


def test_the_distiller_takes_the_spec_whole_not_one_option_at_a_time():
    params = inspect.signature(MultiTeacherDistiller.__init__).parameters
    options = {f.name for f in dataclasses.fields(LossSpec)}
    assert not options & set(params), "a loss option is a LossSpec field, not a keyword"
    assert params["loss"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert "LossSpec" in str(params["loss"].annotation)


def test_every_choice_field_reads_its_list_from_the_code_that_implements_it():
    expected = {
        "logit_loss": LOGIT_LOSS_REGISTRY.names(),
        "feature_loss": FEATURE_LOSS_REGISTRY.names(),
        "adapter": (REFERENCE, *ADAPTER_REGISTRY.names()),
        "teacher_reduction": (REFERENCE, *loss_spec.TEACHER_REDUCTIONS),
        "feature_weights": (REFERENCE, *loss_spec.FEATURE_WEIGHTS),
        "taps": loss_spec.TAPS,
        "unlabeled_ce": loss_spec.UNLABELED_CE,
        "label_merge": LABEL_MERGES,
    }
    assert set(loss_spec.choice_fields()) == set(expected)
    fields = {f.name: f for f in dataclasses.fields(LossSpec)}
    for name, valid in expected.items():
        assert loss_spec.choices(name) == valid
        assert fields[name].metadata["choices"]() == valid  # what the config reader checks
        assert getattr(LossSpec(), name) in valid
        with pytest.raises(ConfigError, match=f"{name} must be one of"):
            LossSpec(**{name: "no-such-option"}).check()
        with pytest.raises(ConfigError, match=f"loss.{name} must be one of"):
            config.RunConfig.from_dict({"loss": {name: "no-such-option"}})


def test_a_registered_name_is_a_valid_choice_at_once():
    from multikd.method.logit_losses import kd_per_teacher, register_logit_loss

    assert "spec-test-kd" not in loss_spec.choices("logit_loss")
    with LOGIT_LOSS_REGISTRY.restoring():
        register_logit_loss("spec-test-kd", "Hinton KD under another name")(kd_per_teacher)
        LossSpec(logit_loss="spec-test-kd").check()
        loss = config.RunConfig.from_dict({"loss": {"logit_loss": "spec-test-kd"}}).loss
        assert loss.logit_loss == "spec-test-kd"


def test_reference_settings_resolve_to_the_strategys_and_leave_the_spec_alone():
    spec = LossSpec()
    ref = {"teacher_reduction": "mean", "feature_weights": "teacher-head", "adapter": "embed",
           "feature_stage": -1, "feature_start_epoch": 2}
    resolved = spec.resolved(ref)
    assert (resolved.teacher_reduction, resolved.adapter, resolved.feature_start_epoch) == (
        "mean", "embed", 2)
    assert spec == LossSpec()
    assert LossSpec(teacher_reduction="sum").resolved(ref).teacher_reduction == "sum"


def test_reading_a_spec_imports_no_torch():
    code = ("import sys; from multikd.method.loss_spec import LossSpec; LossSpec(gamma=1.0); "
            "import multikd.train.config; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch']")
    subprocess.run([sys.executable, "-c", code], check=True)
