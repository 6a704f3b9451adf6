"""Every shipped suite's feature runs tap the maps that the reference code distils.

Each suite is expanded; for every logits+feat run the student's and each teacher's tapped
module is resolved as the distiller resolves it (``loss.student_feature`` /
``loss.teacher_features``, else stage ``loss.feature_stage`` of the model's stage list) and
run on a 32x32 input. For the suites that reproduce a paper, the shapes must equal the map
its reference code hands to the feature loss (``feat[-2]`` of the reference model's
``is_feat`` list; FitNet-MKD's hint layer 2):

- MTKD-RL (winycg/MTKD-RL ``train_student_rl.py``): its ShuffleNetV2
  (``models/ShuffleNetv2.py``) returns ``relu(bn2(conv2(layer3)))``, 1024x4x4, as
  ``feat[-2]``, not ``layer3`` (464x4x4); its full-width MobileNetV2 ``blocks[6]``;
- MMKD (Rorozhl/MMKD ``models/mobilenetv2.py``): ``mobile_half`` returns ``conv2``'s
  output (1x1 conv+BN+ReLU, 1280x2x2) as ``f4 = feat[-2]``, not ``blocks[6]`` (160x2x2,
  RepDistiller's ``f4``, commented out there);
- CA-MKD (Rorozhl/CA-MKD): ``feat[-2]`` of RepDistiller's models, FitNet-MKD ``feat[2]``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from multikd.bench.suite import expand, load_suite
from multikd.models import create_model
from multikd.models.taps import FeatureTap

SUITES = Path(__file__).resolve().parents[1] / "experiments" / "cifar100"

# suite -> arch -> (C, H, W) of the map its reference's feature loss reads, on 1x3x32x32
REFERENCE_MAPS = {
    "mtkd-rl": {
        "RegNetX_200MF": (368, 8, 8), "MobileNetV2_full": (320, 2, 2),
        "ShuffleV2": (1024, 4, 4), "resnet56": (64, 8, 8),
        "RegNetY_400MF": (384, 8, 8), "RegNetX_400MF": (384, 8, 8),
        "resnet32x4": (256, 8, 8), "wrn_28_4": (256, 8, 8),
    },
    "mmkd": {"vgg8": (512, 4, 4), "MobileNetV2": (1280, 2, 2), "vgg13": (512, 4, 4),
             "resnet32x4": (256, 8, 8)},
    "ca-mkd": {"vgg8": (512, 4, 4), "resnet32x4": (256, 8, 8)},
}
HINT_MAPS = {"vgg8": (256, 8, 8), "resnet32x4": (128, 16, 16)}  # FitNet-MKD: feat[2]


def _stage(model, stage: int, taps: str) -> str:
    names = getattr(model, "repdistiller_feature_names", None) if taps == "repdistiller" else None
    return (names or model.feature_names)[stage]


@lru_cache(maxsize=None)
def _model(arch: str):
    """One instance per architecture (in eval mode): the suites name a few architectures in
    hundreds of runs, and the taps only read module names and run it without gradients."""
    return create_model(arch, num_classes=100).eval()


@lru_cache(maxsize=None)
def _shape(arch: str, module: str) -> tuple[int, ...]:
    model = _model(arch)
    with torch.no_grad(), FeatureTap(model, [module]) as tap:
        _, feats = tap(torch.randn(1, 3, 32, 32))
    return tuple(feats[module].shape[1:])


@pytest.fixture(scope="module", autouse=True)
def _drop_the_models():
    """The cached models go with this module: they would slow every later garbage collection."""
    yield
    for cached in (_model, _shape, _feature_runs):
        cached.cache_clear()


@lru_cache(maxsize=None)
def _feature_runs(name: str):
    plan = expand(load_suite(SUITES / f"{name}.yaml"), "/tmp/unused")
    return plan, [r for r in plan.runs if r.config.kind == "distill" and r.config.loss.gamma > 0]


def _taps(run) -> list[tuple[str, str]]:
    """(arch, module) of the student, then of each teacher, as the distiller resolves them."""
    loss = run.config.loss
    stage = -1 if loss.feature_stage is None else loss.feature_stage
    student = _model(run.student)
    taps = [(run.student, loss.student_feature or _stage(student, stage, loss.taps))]
    given = loss.teacher_features or [None] * len(run.config.teachers)
    for teacher, module in zip(run.config.teachers, given):
        model = _model(teacher.arch)
        taps.append((teacher.arch, module or _stage(model, stage, loss.taps)))
    return taps


@pytest.mark.parametrize("name", sorted(REFERENCE_MAPS))
def test_reference_suites_tap_the_reference_maps(name):
    _, runs = _feature_runs(name)
    assert runs
    for run in runs:
        expected = HINT_MAPS if run.config.strategy.name == "fitnet-mkd" else REFERENCE_MAPS[name]
        for arch, module in _taps(run):
            assert _shape(arch, module) == expected[arch], (run.label, arch, module)


@pytest.mark.slow  # every shipped suite's models; the three reference suites are checked above
def test_every_suite_taps_modules_that_run():
    for path in sorted(SUITES.glob("*.yaml")):
        plan, runs = _feature_runs(path.stem)
        for arch, module in {tap for run in runs for tap in _taps(run)}:
            assert len(_shape(arch, module)) == 3, (path.stem, arch, module)


def test_the_two_fixed_taps_equal_the_reference_maps():
    """ShuffleV2's ``relu2`` and MobileNetV2's ``conv2``, with non-trivial BN statistics,
    equal the reference forward written out: ``relu(bn2(conv2(layer3 out)))`` and
    ``conv2(blocks[6] out)`` (conv2 = 1x1 conv, BN, ReLU)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    shuffle = create_model("ShuffleV2", num_classes=100)
    mobile = create_model("MobileNetV2", num_classes=100)
    for model in (shuffle, mobile):
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.eval()
    with torch.no_grad():
        with FeatureTap(shuffle, ["layer3", "relu2"]) as tap:
            _, feats = tap(x)
        expected = F.relu(shuffle.bn2(shuffle.conv2(feats["layer3"])))
        assert feats["relu2"].shape == (2, 1024, 4, 4)
        torch.testing.assert_close(feats["relu2"], expected)
        with FeatureTap(mobile, ["blocks.6", "conv2"]) as tap:
            _, feats = tap(x)
        conv, bn, _ = mobile.conv2
        expected = F.relu(bn(conv(feats["blocks.6"])))
        assert feats["conv2"].shape == (2, 1280, 2, 2)
        torch.testing.assert_close(feats["conv2"], expected)
    # the state_dict layouts stay those of the published checkpoints
    assert "conv2.weight" in shuffle.state_dict() and "conv2.0.weight" in mobile.state_dict()


def test_student_feature_per_student_in_a_suite():
    plan, runs = _feature_runs("mtkd-rl")
    taps = {run.student: run.config.loss.student_feature for run in runs}
    assert taps == {"RegNetX_200MF": None, "MobileNetV2_full": None, "ShuffleV2": "relu2",
                    "resnet56": None}
    _, runs = _feature_runs("mmkd")
    assert {run.student: run.config.loss.student_feature for run in runs} == {
        "vgg8": None, "MobileNetV2": "conv2"}


def test_student_feature_map_is_checked():
    from multikd.bench.suite import parse_suite
    from multikd.errors import ConfigError

    raw = {"teachers": {"t": {"arch": "resnet20"}}, "teacher_sets": {"s": ["t"]},
           "pairs": [{"teachers": "s", "students": ["ShuffleV2"]}], "strategies": ["uniform"],
           "features": {"gamma": 1.0, "student_feature": {"shufflev2": 3}}}
    with pytest.raises(ConfigError, match="student_feature maps student architectures"):
        parse_suite(raw)
    raw["features"]["student_feature"] = {"shufflev2": "relu2"}  # canonical name as key
    run = next(r for r in expand(parse_suite(raw), "/tmp/unused").runs if r.config.loss.gamma)
    assert run.config.loss.student_feature == "relu2"
