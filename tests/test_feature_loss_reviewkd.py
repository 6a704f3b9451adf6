"""Knowledge review (``loss.feature_loss: reviewkd``) against mdistiller's ReviewKD, by hand.

mdistiller ``mdistiller/distillers/ReviewKD.py``: ``ABF.forward`` (1x1 conv + BN, a sigmoid
attention fusing the deeper residual upsampled by nearest, resize to the teacher's size,
3x3 conv + BN), ``ReviewKD.forward_train`` (the maps reversed, the first ABF alone, then the
review loop over ``abfs[1:]``, ``shapes[1:]``, ``out_shapes[1:]``, results inserted at the
front; times ``min(epoch / WARMUP_EPOCHS, 1.0)``) and ``hcl_loss``. Transcribed here with
the module's own weights, in float64; the configured lists are written out as the reference
would be configured and compared with what the module derives from the shapes.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from multikd.errors import ConfigError
from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureBatch, run_per_teacher, tap_names,
)
from multikd.method.feature_losses.reviewkd import ReviewKD
from multikd.models import create_model
from multikd.models.taps import FeatureTap
from tests.tolerances import REF64

B = 4


# ---- the reference, transcribed -------------------------------------------------------

def _bn(x, bn, training):
    if training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


def _reference_abf(abf, x, y=None, shape=None, out_shape=None, training=True):
    """mdistiller ``ABF.forward`` with ``abf``'s weights."""
    n, _, h, w = x.shape
    x = _bn(F.conv2d(x, abf.conv1[0].weight), abf.conv1[1], training)
    if abf.att_conv is not None:
        y = F.interpolate(y, (shape, shape), mode="nearest")
        z = torch.cat([x, y], dim=1)
        z = torch.sigmoid(F.conv2d(z, abf.att_conv[0].weight, abf.att_conv[0].bias))
        x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
    if x.shape[-1] != out_shape:
        x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
    y = _bn(F.conv2d(x, abf.conv2[0].weight, padding=1), abf.conv2[1], training)
    return y, x


def _reference_hcl_loss(fstudent, fteacher):
    """mdistiller ``hcl_loss``."""
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt = 1.0
        tot = 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            tmpfs = F.adaptive_avg_pool2d(fs, (l, l))
            tmpft = F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction="mean") * cnt
            tot += cnt
        loss = loss / tot
        loss_all = loss_all + loss
    return loss_all


def _reference_reviewkd(abfs, feats, pooled_s, preact_t, pooled_t, shapes, out_shapes, epoch,
                        warmup_epochs=20, training=True):
    """mdistiller ``ReviewKD.forward_train``'s feature loss (weight 1), ``abfs`` already
    reversed (the deepest first), ``feats`` the student's maps with the stem first (the
    reference's ``zip`` drops it), ``preact_t`` the teacher's maps without the stem."""
    x = feats + [pooled_s.unsqueeze(-1).unsqueeze(-1)]
    x = x[::-1]
    results = []
    out_features, res_features = _reference_abf(abfs[0], x[0], out_shape=out_shapes[0],
                                                training=training)
    results.append(out_features)
    for features, abf, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out_features, res_features = _reference_abf(abf, features, res_features, shape,
                                                    out_shape, training=training)
        results.insert(0, out_features)
    features_teacher = preact_t + [pooled_t.unsqueeze(-1).unsqueeze(-1)]
    return min(epoch / warmup_epochs, 1.0) * _reference_hcl_loss(results, features_teacher)


# ---- fixtures -------------------------------------------------------------------------

# (student maps after the stem + pooled, teacher's, the reference's SHAPES, OUT_SHAPES)
CASES = {
    # resnet32x4 -> resnet8x4 in miniature: the same channels and sizes on both sides
    "same": ([(8, 8, 8), (16, 4, 4), (32, 2, 2), (32,)],
             [(8, 8, 8), (16, 4, 4), (32, 2, 2), (32,)],
             [1, 2, 4, 8], [1, 2, 4, 8]),
    # other channels and a teacher twice the student's size (ShuffleV1 -> resnet32x4-like)
    "differ": ([(6, 4, 4), (10, 2, 2), (10,)],
               [(8, 8, 8), (12, 4, 4), (12,)],
               [1, 2, 4], [1, 4, 8]),
}


def _maps(shapes, seed, stem=None):
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.randn(B, *s, generator=gen, dtype=torch.float64) for s in shapes]
    if stem is not None:  # the stem map the reference's feats start with
        maps.insert(0, torch.randn(B, *stem, generator=gen, dtype=torch.float64))
    return maps


def _module(student_shapes, teacher_shapes, seed=0, **params):
    torch.manual_seed(seed)
    module = ReviewKD(student_shapes, teacher_shapes, **params).double()
    gen = torch.Generator().manual_seed(seed + 1)
    for m in module.modules():  # BatchNorms away from their identity defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module


# ---- the formula ----------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("epoch,factor", [(5, 0.25), (30, 1.0)])
def test_batch_mean_equals_mdistillers_reviewkd_loss(case, epoch, factor):
    s_shapes, t_shapes, shapes, out_shapes = CASES[case]
    module = _module(s_shapes, t_shapes)
    student = _maps(s_shapes, 1, stem=(4, 16, 16))
    teacher = _maps(t_shapes, 2)
    assert module.shapes == shapes and module.out_shapes == out_shapes
    assert module.warmup(epoch) == factor

    per_sample = module(student[1:], teacher, FeatureBatch(torch.zeros(B, dtype=torch.long),
                                                           epoch=epoch))
    assert per_sample.shape == (B,) and per_sample.dtype == torch.float64
    expected = _reference_reviewkd(list(module.abfs), student[:-1], student[-1], teacher[:-1],
                                   teacher[-1], shapes, out_shapes, epoch)
    torch.testing.assert_close(per_sample.mean(), expected, **REF64)
    # the warm-up is the only thing the epoch changes
    full = module(student[1:], teacher, FeatureBatch(torch.zeros(B, dtype=torch.long),
                                                     epoch=20))
    torch.testing.assert_close(per_sample, factor * full, **REF64)


def test_per_sample_in_eval_mode_is_the_reference_on_that_sample_alone():
    """With the BatchNorms on their running statistics nothing couples the samples: value i
    is the reference's loss on the batch of sample i alone (the per-sample mean over C,H,W)."""
    s_shapes, t_shapes, shapes, out_shapes = CASES["differ"]
    module = _module(s_shapes, t_shapes).eval()
    student, teacher = _maps(s_shapes, 3), _maps(t_shapes, 4)
    values = module(student, teacher, FeatureBatch(torch.zeros(B, dtype=torch.long), epoch=7))
    for i in range(B):
        one_s = [f[i:i + 1] for f in student]
        one_t = [f[i:i + 1] for f in teacher]
        expected = _reference_reviewkd(list(module.abfs), one_s[:-1], one_s[-1], one_t[:-1],
                                       one_t[-1], shapes, out_shapes, 7, training=False)
        torch.testing.assert_close(values[i], expected, **REF64)


def test_pooled_vector_may_come_as_a_1x1_map():
    s_shapes, t_shapes, _, _ = CASES["same"]
    module = _module(s_shapes, t_shapes)
    module_4d = _module([*s_shapes[:-1], (*s_shapes[-1], 1, 1)],
                        [*t_shapes[:-1], (*t_shapes[-1], 1, 1)])
    assert module_4d.shapes == module.shapes and module_4d.in_channels == module.in_channels
    student, teacher = _maps(s_shapes, 5), _maps(t_shapes, 6)
    batch = FeatureBatch(torch.zeros(B, dtype=torch.long), epoch=3)
    as_vector = module(student, teacher, batch)
    as_map = module(student[:-1] + [student[-1][..., None, None]],
                    teacher[:-1] + [teacher[-1][..., None, None]], batch)
    torch.testing.assert_close(as_map, as_vector, rtol=0, atol=0)


def test_abfs_are_initialised_and_ordered_as_the_reference():
    """``abfs[0]`` is the deepest level's, without fusion; the others fuse; the 1x1 and 3x3
    convs are kaiming-uniform with a=1 (bound sqrt(3/fan_in))."""
    s_shapes, t_shapes, _, _ = CASES["differ"]
    module = ReviewKD(s_shapes, t_shapes)
    assert module.in_channels == [6, 10, 10] and module.out_channels == [8, 12, 12]
    assert module.mid_channel == 10  # min(512, in_channels[-1])
    assert [abf.conv1[0].in_channels for abf in module.abfs] == [10, 10, 6]
    assert [abf.conv2[0].out_channels for abf in module.abfs] == [12, 12, 8]
    assert module.abfs[0].att_conv is None
    assert all(abf.att_conv is not None for abf in module.abfs[1:])
    for abf in module.abfs:
        for conv in (abf.conv1[0], abf.conv2[0]):
            fan_in = conv.weight[0].numel()
            assert conv.weight.abs().max() <= (3.0 / fan_in) ** 0.5
    assert ReviewKD(s_shapes, t_shapes, mid_channel=7).abfs[1].conv1[0].out_channels == 7


# ---- training -------------------------------------------------------------------------

def test_gradients_reach_the_student_and_the_abfs_not_the_teacher():
    s_shapes, t_shapes, _, _ = CASES["differ"]
    module = _module(s_shapes, t_shapes)
    student = [f.requires_grad_(True) for f in _maps(s_shapes, 7)]
    teacher = [f.requires_grad_(True) for f in _maps(t_shapes, 8)]
    values = run_per_teacher([module], student, [teacher],
                             FeatureBatch(torch.zeros(B, dtype=torch.long), epoch=25))
    assert values.shape == (1, B)
    values.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)
    assert all(f.grad is None for f in teacher)
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_registered_with_its_reference_weight_and_parameters():
    entry = FEATURE_LOSS_REGISTRY.entry("reviewkd")
    assert dict(entry.params) == {"warmup_epochs": 20.0, "mid_channel": None}
    assert entry.info["reads"] == "stages+pooled" and entry.info["per_sample"]
    assert entry.info["reference_gamma"] == 5.0


def test_unequal_map_counts_pair_the_deepest_levels():
    """A teacher with one stage more: its shallowest stage is left out, the pooled vectors
    pair; the loss equals the one on the teacher's deepest maps only."""
    torch.manual_seed(0)
    loss = ReviewKD([(4, 4, 4), (4,)], [(4, 8, 8), (4, 4, 4), (4,)]).double().eval()
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64),
         torch.randn(2, 4, generator=g, dtype=torch.float64)]
    t = [torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64),
         torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64),
         torch.randn(2, 4, generator=g, dtype=torch.float64)]
    batch = FeatureBatch(torch.zeros(2, dtype=torch.long), epoch=30)
    assert loss.levels == 2 and loss.out_channels == [4, 4]
    assert torch.equal(loss(s, t, batch), loss(s, t[1:], batch))


def test_refuses_non_square_maps_and_no_warmup():
    with pytest.raises(ConfigError, match="square"):
        ReviewKD([(4, 4, 2), (4,)], [(4, 4, 4), (4,)])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        ReviewKD([(4, 4, 4), (4,)], [(4, 4, 4), (4,)], warmup_epochs=0)


# ---- the derived lists against the configured ones ------------------------------------

@functools.cache
def _zoo_shapes(name):
    """The per-sample shapes a dry forward taps for ``reads = "stages+pooled"``."""
    model = create_model(name, num_classes=100).eval()
    names = tap_names(model, "stages+pooled", "model")
    with torch.no_grad(), FeatureTap(model, names) as tap:
        _, feats = tap(torch.zeros(1, 3, 32, 32))
    return tuple(tuple(feats[n].shape[1:]) for n in names)


# (teacher, student): (IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES, mid_channel) as
# configured: mdistiller's cfg for res32x4 -> res8x4, dvlab-research/ReviewKD
# CIFAR-100/model/reviewkd.py build_review_kd for the others (its resnet SHAPES
# [1, 8, 16, 32, 32] has a fifth entry that its zip never reads).
CONFIGURED = {
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256],
                                  [1, 8, 16, 32], [1, 8, 16, 32], 256),
    ("vgg13", "vgg8"): ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512],
                        [1, 4, 4, 8, 16], [1, 4, 4, 8, 16], 512),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64],
                               [1, 8, 16, 32], [1, 8, 16, 32], 64),
    ("wrn_40_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128],
                               [1, 8, 16, 32], [1, 8, 16, 32], 128),
    ("resnet32x4", "ShuffleV1"): ([240, 480, 960, 960], [64, 128, 256, 256],
                                  [1, 4, 8, 16], [1, 8, 16, 32], 512),
    ("resnet32x4", "ShuffleV2"): ([116, 232, 464, 1024], [64, 128, 256, 256],
                                  [1, 4, 8, 16], [1, 8, 16, 32], 512),
    ("vgg13", "MobileNetV2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512],
                               [1, 2, 4, 8, 16], [1, 4, 4, 8, 16], 512),
}


@pytest.mark.parametrize("pair", list(CONFIGURED), ids="->".join)
def test_derived_lists_are_the_configured_ones(pair):
    teacher, student = pair
    in_channels, out_channels, shapes, out_shapes, mid = CONFIGURED[pair]
    module = ReviewKD(_zoo_shapes(student), _zoo_shapes(teacher))
    assert module.in_channels == in_channels
    assert module.out_channels == out_channels
    assert module.shapes == shapes
    assert module.out_shapes == out_shapes
    assert module.mid_channel == mid
