"""Every zoo architecture against the reference facts (tests/reference/, see its README).

Generic over the reference file: for each architecture it lists, the zoo model must have the
same state_dict keys and shapes, the same parameter count, stage taps of the listed shapes, a
pooled feature of the listed size, and - the check that proves the forward pass (ReLU
placement, pooling, flatten order, widths) - the golden float64 logits under the documented
weight fill.
"""

from __future__ import annotations

import pytest
import torch

from multikd.errors import ModelError
from multikd.models.taps import FeatureTap
from multikd.models import canonical_name, create_model, list_models
from multikd.models.meta import describe_architecture
from run_helpers import zoo_params
from zoo_reference import (
    golden_fill,
    golden_input,
    golden_logits,
    last_linear,
    reference_shapes,
    zoo_facts,
)

ARCHS = list(zoo_facts())


def test_every_reference_architecture_is_registered():
    assert set(ARCHS) <= set(list_models())
    for arch in ARCHS:
        assert canonical_name(arch.lower()) == arch
        assert canonical_name(arch.upper()) == arch
    assert canonical_name("ResNet8x4") == "resnet8x4"


def test_unknown_model_suggests_registered_names():
    with pytest.raises(ModelError, match=r"Did you mean MobileNetV2\?|Did you mean MobileNetV2,"):
        canonical_name("mobilenetv3")


@pytest.mark.parametrize("arch", zoo_params(ARCHS))
def test_architecture_matches_reference(arch):
    facts = zoo_facts()[arch]
    model = create_model(arch).double().eval()

    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == reference_shapes(arch)
    assert sum(p.numel() for p in model.parameters()) == facts["params"]

    golden_fill(model)
    x = golden_input()
    names = [*model.feature_names, model.pooled_feature_name]
    with torch.no_grad(), FeatureTap(model, names) as tap:
        logits, feats = tap(x)  # logits: what model(x) itself returned

    assert isinstance(logits, torch.Tensor) and tuple(logits.shape) == (2, *facts["logits_shape"])
    assert [list(feats[n].shape[1:]) for n in model.feature_names] == facts["stage_feature_shapes"]
    pooled = feats[model.pooled_feature_name]
    assert tuple(pooled.shape) == (2, facts["pooled_feature_dim"])
    # Goldens carry 8 decimals: atol covers the rounding, rtol the huge deep-stack values.
    expected = torch.tensor(golden_logits()[arch], dtype=torch.float64)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(last_linear(model)(pooled), logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", zoo_params(ARCHS))
def test_meta_description_matches_reference(arch):
    facts = zoo_facts()[arch]
    got = describe_architecture(arch)
    assert got["params"] == facts["params"], arch
    assert [list(s) for s in got["stage_feature_shapes"]] == facts["stage_feature_shapes"], arch
    assert got["pooled_feature_dim"] == facts["pooled_feature_dim"], arch


@pytest.mark.parametrize(
    "arch,size", [("resnet8x4", 32), ("wrn_16_2", 32), ("vgg8", 32),
                  pytest.param("ResNet50", 8, marks=pytest.mark.slow)]
)
def test_tapped_features_train_the_model(arch, size):
    """Taps keep autograd intact (no in-place op overwrites a tapped output) in train mode."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).train()
    x = torch.randn(2, 3, size, size)
    with FeatureTap(model, [*model.feature_names, model.pooled_feature_name]) as tap:
        _, feats = tap(x)
        loss = sum(f.square().mean() for f in feats.values())
        loss.backward()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert last_linear(model).weight.grad is None


@pytest.mark.parametrize(
    "arch,classes", [("resnet20", 10), ("wrn_40_1", 7), ("vgg8", 3), ("resnet8x4", 2)]
)
def test_num_classes_sets_the_classifier(arch, classes):
    model = create_model(arch, num_classes=classes).eval()
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 32, 32)).shape) == (1, classes)
    assert last_linear(model).out_features == classes


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelError) as err:
        create_model("resnet7")
    message = str(err.value)
    assert "'resnet7'" in message and "resnet8" in message
    for arch in ARCHS:
        assert arch in message
