"""TeacherEnsemble: frozen, eval-only, CE per teacher and sample, features, accuracy, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multikd.method.ensemble import EnsembleOutput, TeacherEnsemble
from multikd.errors import DataError, ModelError


class Tiny(nn.Module):
    """conv stem (C x 32 x 32) -> strided stage (C x 16 x 16) -> pool -> fc, with dropout."""

    def __init__(self, channels=4, classes=5):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(c, classes)
        )
        self.feature_names = ["stem", "stage"]

    def forward(self, x):
        return self.head(self.stage(self.stem(x)))


def _teachers(*channels, classes=5):
    torch.manual_seed(0)
    return [Tiny(c, classes) for c in channels]


def test_outputs_ce_and_features_match_each_teacher():
    teachers = _teachers(3, 4)
    ensemble = TeacherEnsemble(teachers, names=["a", "b"], feature_names=["stage", None])
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    out = ensemble(x, y)
    assert out.logits.shape == (2, 6, 5) and out.ce.shape == (2, 6) and out.ce_mean.shape == (2,)
    for k, teacher in enumerate(teachers):
        logits = teacher(x)  # already in eval mode: dropout off, running BN statistics
        torch.testing.assert_close(out.logits[k], logits)
        torch.testing.assert_close(out.ce[k], F.cross_entropy(logits, y, reduction="none"))
        torch.testing.assert_close(out.ce_mean[k], F.cross_entropy(logits, y))
    torch.testing.assert_close(out.features[0], teachers[0].stage(teachers[0].stem(x)))
    assert out.features[1] is None
    assert ensemble(x, y, features=False).features == [None, None]
    assert ensemble.feature_shapes() == [(3, 16, 16), None]
    assert not out.logits.requires_grad and not out.features[0].requires_grad


def test_teachers_are_frozen_and_stay_in_eval_under_a_training_parent():
    teachers = _teachers(3, 4)
    parent = nn.ModuleDict({"ensemble": TeacherEnsemble(teachers), "student": Tiny()})
    parent.train()
    assert parent["student"].training
    assert not any(m.training for t in teachers for m in t.modules())
    assert not any(p.requires_grad for t in teachers for p in t.parameters())
    before = teachers[0].stem[1].running_mean.clone()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    parent["ensemble"](x, torch.zeros(4, dtype=torch.long))
    assert torch.equal(teachers[0].stem[1].running_mean, before)


def test_default_names_and_from_specs():
    assert TeacherEnsemble(_teachers(3, 4, 5)).names == ["Tiny_0", "Tiny_1", "Tiny_2"]
    ensemble = TeacherEnsemble.from_specs([("resnet8", None), ("resnet8", None)], num_classes=7)
    assert ensemble.names == ["resnet8_0", "resnet8_1"] and ensemble.num_classes == 7


def test_evaluate_reports_each_teachers_accuracy_in_percent():
    teachers = _teachers(3, 4)
    ensemble = TeacherEnsemble(teachers, names=["a", "b"])
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))) for _ in range(3)]
    expected = {}
    for name, teacher in zip(["a", "b"], teachers):
        hits = sum(int((teacher(x).argmax(1) == y).sum()) for x, y in batches)
        expected[name] = 100.0 * hits / 12
    assert ensemble.evaluate(batches, device="cpu") == pytest.approx(expected)
    with pytest.raises(DataError, match="no samples"):
        ensemble.evaluate([])


def test_ensemble_errors():
    with pytest.raises(ModelError, match="at least one teacher"):
        TeacherEnsemble([])
    with pytest.raises(ModelError, match=r"different numbers of classes \(a: 5, b: 7\)"):
        TeacherEnsemble(_teachers(3) + _teachers(3, classes=7), names=["a", "b"])
    with pytest.raises(ModelError, match="unique"):
        TeacherEnsemble(_teachers(3, 3), names=["a", "a"])
    with pytest.raises(ModelError, match="close matches: stage"):
        TeacherEnsemble(_teachers(3), feature_names=["stagee"])
    with pytest.raises(ModelError, match="one per teacher"):
        TeacherEnsemble(_teachers(3, 4), feature_names=["stage"])


def test_from_logits_scores_cached_teacher_logits():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    out = EnsembleOutput.from_logits(logits, torch.tensor([0, 1]))
    # CE of [2, 0] at label 0 = log(1 + e^-2); of [0, 0] = log 2
    torch.testing.assert_close(out.ce, torch.tensor([[0.126928, 0.693147]]))
    assert out.features == [None]
