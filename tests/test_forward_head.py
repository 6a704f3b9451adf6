"""forward_head: each zoo model's logits from its last tapped stage, as forward computes them.

CA-MKD's teacher-head feature weights run a teacher's own pooling + classifier on an adapted
student feature, so ``forward_head(output of feature_names[-1])`` must be exactly the rest of
``forward``.
"""

import pytest
import torch

from multikd.models import create_model, list_models
from run_helpers import zoo_params
from multikd.models.taps import FeatureTap

ARCHS = list_models()
WRN_ARCHS = [a for a in ARCHS if a.startswith("wrn_")]


def _model_and_input(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=7).eval()
    return model, torch.randn(2, 3, 32, 32)


def test_registry_lists_the_zoo():
    assert len(ARCHS) >= 20 and WRN_ARCHS


@pytest.mark.parametrize("arch", zoo_params(ARCHS))
def test_forward_head_is_the_rest_of_forward(arch):
    model, x = _model_and_input(arch)
    assert model.head_reads_last_stage
    last = model.feature_names[-1]
    with torch.no_grad(), FeatureTap(model, [last]) as tap:
        logits, features = tap(x)
        feature = features[last]
        assert torch.equal(model.forward_head(feature.clone()), logits)
        assert torch.equal(model(x), logits)  # tap removed: same model, same logits

    # forward routes through forward_head (so the two cannot drift apart)
    seen = []
    model.forward_head = lambda f: seen.append(f) or torch.zeros(())
    assert model(x).shape == () and len(seen) == 1 and torch.equal(seen[0], feature)
    del model.forward_head

    # the head is differentiable w.r.t. the feature it is given
    feature = feature.clone().requires_grad_(True)
    head = model.forward_head(feature)
    assert head.shape == (2, 7)
    head.sum().backward()
    assert feature.grad is not None and feature.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", WRN_ARCHS)
def test_wrn_lists_repdistillers_pre_activation_taps(arch):
    model, x = _model_and_input(arch)
    names = model.repdistiller_feature_names
    assert names == ["conv1", "block1", "block2", "block3"]
    assert set(names) <= dict(model.named_modules()).keys()
    assert names[:-1] == model.feature_names[:-1]
    pre, post = names[-1], model.feature_names[-1]
    with torch.no_grad(), FeatureTap(model, [pre, post]) as tap:
        _, f = tap(x)
        assert f[pre].shape == f[post].shape
        assert not torch.equal(f[pre], f[post])
        assert (f[pre] < 0).any() and (f[post] >= 0).all()
        assert torch.equal(f[post], torch.relu(model.bn1(f[pre])))
