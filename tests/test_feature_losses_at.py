"""Attention transfer (``loss.feature_loss: at``) against mdistiller's formula, by hand.

mdistiller ``mdistiller/distillers/AT.py``: ``single_stage_at_loss`` pools the larger map to
the smaller's size, ``_at(f, p) = normalize(f.pow(p).mean(1).reshape(B, -1))``, and takes
``(_at(f_s) - _at(f_t)).pow(2).mean()``; ``at_loss`` sums the stages. Checked in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureBatch, FeatureSetup, run_per_teacher, tap_names,
)
from multikd.method.feature_losses.at import AttentionTransfer
from multikd.models import create_model
from tests.tolerances import REF64


def _reference_at(g_s, g_t, p):
    """mdistiller's ``at_loss`` transcribed."""
    def at(feat):
        return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))

    total = 0.0
    for f_s, f_t in zip(g_s, g_t):
        s_h, t_h = f_s.shape[2], f_t.shape[2]
        if s_h > t_h:
            f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
        elif s_h < t_h:
            f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
        total = total + (at(f_s) - at(f_t)).pow(2).mean()
    return total


def _maps(seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = [torch.randn(5, 4, 8, 8, generator=gen, dtype=torch.float64),
               torch.randn(5, 6, 4, 4, generator=gen, dtype=torch.float64)]
    teacher = [torch.randn(5, 7, 4, 4, generator=gen, dtype=torch.float64),  # smaller: pools f_s
               torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)]  # larger: pools f_t
    return student, teacher


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_batch_mean_equals_mdistillers_at_loss(p):
    student, teacher = _maps()
    loss = AttentionTransfer([s.shape[1:] for s in student], [t.shape[1:] for t in teacher], p=p)
    per_sample = loss(student, teacher, FeatureBatch(torch.zeros(5, dtype=torch.long)))
    assert per_sample.shape == (5,) and per_sample.dtype == torch.float64
    torch.testing.assert_close(per_sample.mean(), _reference_at(student, teacher, p), **REF64)


def test_at_per_sample_depends_on_its_own_sample_only_and_trains_the_student_only():
    student, teacher = _maps(1)
    student = [s.requires_grad_(True) for s in student]
    loss = AttentionTransfer([s.shape[1:] for s in student], [t.shape[1:] for t in teacher])
    batch = FeatureBatch(torch.zeros(5, dtype=torch.long))
    values = run_per_teacher([loss], student, [teacher], batch)  # [K=1, B]
    values[0, 2].backward()
    grads = [s.grad for s in student]
    assert all(g[2].abs().sum() > 0 for g in grads)
    assert all(torch.equal(torch.cat([g[:2], g[3:]]), torch.zeros_like(torch.cat([g[:2], g[3:]])))
               for g in grads)
    assert list(loss.parameters()) == []


def test_at_is_registered_with_its_reference_weight_and_reads_every_stage_but_the_stem():
    entry = FEATURE_LOSS_REGISTRY.entry("at")
    assert dict(entry.params) == {"p": 2.0}
    assert entry.info["reads"] == "stages" and entry.info["per_sample"]
    assert entry.info["reference_gamma"] == 1000.0
    model = create_model("resnet8x4", num_classes=10)
    assert tap_names(model, "stages", "student") == model.feature_names[1:]


def test_at_pairs_the_first_stages_as_the_references_zip():
    """A teacher with one stage more (vgg13 beside resnet8x4): mdistiller's ``zip`` pairs the
    first stages and leaves the teacher's last unread."""
    student, teacher = _maps(2)
    extra = teacher + [torch.randn(5, 9, 2, 2, dtype=torch.float64)]
    loss = AttentionTransfer.build(FeatureSetup(None, None, [s.shape[1:] for s in student],
                                                [t.shape[1:] for t in extra]))
    batch = FeatureBatch(torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(loss(student, extra, batch).mean(),
                               _reference_at(student, extra, 2.0), **REF64)
    torch.testing.assert_close(loss(student, extra, batch), loss(student, teacher, batch), **REF64)
