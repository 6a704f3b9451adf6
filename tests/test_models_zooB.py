"""Zoo B specifics: ShuffleNet/MobileNetV2 structure and the timm bridge. (Keys, shapes, counts,
stage taps and golden logits of every architecture are in test_models_reference.py.)"""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from multikd.errors import ModelError
from multikd.models.taps import FeatureTap
from multikd.models import create_model
from multikd.models.shufflenetv1 import ChannelShuffle
ZOO_B = ["MobileNetV2", "ShuffleV1", "ShuffleV2"]


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shufflev1_first_unit_is_ungrouped_and_downsamples_by_concat():
    model = create_model("shufflenetv1")
    first, second = model.layer1[0], model.layer1[1]
    assert first.conv1.groups == 1 and first.conv3.groups == 3
    assert second.conv1.groups == 3
    # The first unit's branch makes 240 - 24 channels; the pooled input fills the rest.
    assert first.bn3.num_features == 216


def test_mobilenetv2_residual_only_where_shapes_match():
    model = create_model("mobile_half")
    residual = [[blk.use_residual for blk in stage] for stage in model.blocks]
    assert residual == [[False], [False, True], [False, True, True], [False, True, True, True],
                        [False, True, True], [False, True, True], [False]]


@pytest.mark.parametrize("arch", ZOO_B)
def test_taps_hold_true_values_and_carry_gradients(arch):
    """In train mode, tapped stem and stage-1 features equal a step-by-step recomputation
    (so no later in-place op overwrote them), and a loss on a feature reaches the stem."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).train()
    x = torch.randn(4, 3, 32, 32)
    with FeatureTap(model, model.feature_names) as tap:
        logits, feats = tap(x)
    with torch.no_grad():
        if arch == "MobileNetV2":
            stem = model.conv1(x)
            stage1 = model.blocks[1](model.blocks[0](stem))
        else:
            stem = torch.relu(model.bn1(model.conv1(x)))
            stage1 = model.layer1(stem)
    stem_name, stage1_name = model.feature_names[:2]
    torch.testing.assert_close(feats[stem_name], stem)
    torch.testing.assert_close(feats[stage1_name], stage1)
    assert logits.shape == (4, 10)
    feats[model.feature_names[-1]].pow(2).mean().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0


def test_unknown_zoo_name_lists_valid_ones():
    with pytest.raises(ModelError, match="ShuffleV2"):
        create_model("ShuffleV3")


# --- timm bridge -------------------------------------------------------------------------

@pytest.fixture
def timm():
    """timm itself (the tests below are skipped without it). Imported here, not when the
    module is collected: importing timm takes seconds, which every run of the suite paid;
    the tests that use it are marked slow for the same reason."""
    return pytest.importorskip("timm")


@pytest.fixture
def no_network(timm, monkeypatch):
    """Any attempt to open a connection or fetch weights fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("multikd tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100"])
@pytest.mark.slow
def test_timm_taps_equal_timms_own_features(timm, no_network, name):
    model = create_model(f"timm:{name}", num_classes=7).eval()
    assert model.arch_name == f"timm:{name}"
    twin = timm.create_model(name, pretrained=False, features_only=True).eval()
    assert not twin.load_state_dict(model.state_dict(), strict=False).missing_keys
    x = torch.randn(2, 3, 32, 32)
    names = model.feature_names + [model.pooled_feature_name]
    with torch.no_grad(), FeatureTap(model, names) as tap:
        logits, feats = tap(x)
        expected = twin(x)
    assert logits.shape == (2, 7)
    assert len(model.feature_names) == len(expected)
    for name_, want in zip(model.feature_names, expected):
        torch.testing.assert_close(feats[name_], want)
    pooled = feats[model.pooled_feature_name]
    assert pooled.dim() == 2 and pooled.shape[0] == 2
    torch.testing.assert_close(model.get_classifier()(pooled), logits)


@pytest.mark.slow
def test_timm_state_dict_unchanged_and_taps_train(timm, no_network):
    model = create_model("timm:resnet18", num_classes=5).train()
    plain = timm.create_model("resnet18", pretrained=False, num_classes=5)
    assert list(model.state_dict()) == list(plain.state_dict())
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with FeatureTap(model, [model.feature_names[2], model.pooled_feature_name]) as tap:
        _, feats = tap(x)
    feats[model.pooled_feature_name].sum().backward()
    assert model.conv1.weight.grad.abs().sum() > 0
    assert model(x).shape == (2, 5)


@pytest.mark.slow
def test_timm_non_hookable_stages_are_located(timm, no_network):
    model = create_model("timm:hrnet_w18_small", num_classes=3).eval()
    modules = dict(model.named_modules())
    assert "stem" not in modules and "stage1" not in modules
    assert all(n in modules for n in model.feature_names)
    twin = timm.create_model("hrnet_w18_small", pretrained=False, features_only=True).eval()
    twin.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), FeatureTap(model, model.feature_names) as tap:
        _, feats = tap(x)
        expected = twin(x)
    assert [f.shape[1] for f in feats.values()] == [64, 128, 256, 512, 1024]
    for got, want in zip(feats.values(), expected):
        torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_timm_refuses_pretrained_and_features_only(timm):
    with pytest.raises(ModelError, match="never downloads"):
        create_model("timm:resnet18", pretrained=True)
    with pytest.raises(ModelError, match="features_only"):
        create_model("timm:resnet18", features_only=True)


@pytest.mark.slow
def test_timm_unknown_name_suggests_close_matches(timm):
    with pytest.raises(ModelError, match="timm:resnet18") as err:
        create_model("timm:resnt18")
    assert "unknown timm architecture" in str(err.value)


@pytest.mark.slow
def test_timm_bad_option_is_a_model_error(timm):
    with pytest.raises(ModelError, match="no_such_option"):
        create_model("timm:resnet18", no_such_option=1)


@pytest.mark.slow
def test_timm_channels_last_stages_are_tapped_channels_first(no_network):
    from multikd.method.distiller import MultiTeacherDistiller
    from multikd.method.ensemble import TeacherEnsemble
    from multikd.method.loss_spec import LossSpec
    from multikd.method.strategies import create_strategy

    small_swin = {"img_size": 32, "patch_size": 2, "window_size": 2, "embed_dim": 16,
                  "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    swin = create_model("timm:swin_tiny_patch4_window7_224", num_classes=10, **small_swin).eval()
    assert swin.nhwc_features == tuple(swin.feature_names)
    raw = {}
    modules = dict(swin.named_modules())
    for name in swin.feature_names:
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: raw.__setitem__(name, out))
    with torch.no_grad(), FeatureTap(swin, swin.feature_names) as tap:
        _, feats = tap(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats.values()] == [
        (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    for name, feature in feats.items():
        assert torch.equal(feature, raw[name].permute(0, 3, 1, 2))
    # a Swin teacher's last stage reaches the adapter as (C, H, W), not (H, W, C)
    distiller = MultiTeacherDistiller(
        create_model("resnet8", num_classes=10), TeacherEnsemble([swin]),
        create_strategy("uniform"), LossSpec(gamma=1.0))
    assert distiller.adapters[0].out_shape == (128, 2, 2)
