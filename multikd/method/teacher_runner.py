"""Run K frozen teachers on one batch, one after another, tapping a feature map of each
(and, for a feature module, the maps it reads).

:class:`TeacherRunner` is what :class:`~multikd.method.ensemble.TeacherEnsemble` calls per
batch. The teachers run in a plain loop. A vmapped pass over same-architecture teachers
(``runtime.batched_teachers``, ``multikd/method/batched.py``, opt-in) was removed because
it did not pay. 3 teachers, no_grad, loop time / batched time (> 1: batched faster), CPU,
torch 2.14, 1 thread: resnet32x4 batch 64 0.70, resnet8x4 batch 64 0.57, wrn_40_2 batch 64
0.71, resnet8 batch 128 0.56; 2 threads of a shared, loaded 2-core machine: 0.99 to 1.87,
with loop times 2-8x the 1-thread ones (noise); results/speed.md's CPU measure: 1.008. On
an H100 (torch 2.11): resnet32x4 1.52 at batch 64 but 0.60 at 256, resnet8x4 0.55-0.59,
wrn_40_2 0.65 (bf16 batch 64: 1.20), vgg13 0.41-0.66, resnet56 0.49-0.88 (bf16 batch 256:
1.22), at about 3x the activation memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from multikd.errors import ModelError
from multikd.models.taps import FeatureTap


class TeacherRunner:
    """Run K frozen teachers on one input: ``logits, features, stages = runner.run(x)``.

    ``features[k]`` is the output of module ``feature_names[k]`` of teacher k (``[B,...]``,
    or None where no name is given); ``stages[k]`` the outputs of modules
    ``loss_tap_names[k]``, in order (``stages`` is None without loss taps). Each teacher has
    one tap over all its names. Teachers are expected in eval mode and are called under the
    caller's grad mode (call it under ``torch.no_grad()`` for frozen teachers).
    """

    def __init__(self, teachers: Sequence[nn.Module],
                 feature_names: Sequence[str | None] | None = None):
        self.teachers = list(teachers)
        if not self.teachers:
            raise ModelError("a TeacherRunner needs at least one teacher; the list is empty")
        self.feature_names: list[str | None] = [None] * len(self.teachers)
        self.loss_tap_names: list[list[str]] | None = None
        self._taps: list[FeatureTap | None] = [None] * len(self.teachers)
        self.set_feature_names(feature_names)

    def set_feature_names(self, feature_names: Sequence[str | None] | None,
                          loss_tap_names: Sequence[Sequence[str]] | None = None) -> None:
        """Tap module ``feature_names[k]`` of teacher k (None: no feature for that teacher)
        and modules ``loss_tap_names[k]`` (None: no loss taps on any teacher)."""
        names = [None] * len(self.teachers) if feature_names is None else list(feature_names)
        if len(names) != len(self.teachers):
            raise ModelError(
                f"got {len(names)} teacher feature names for {len(self.teachers)} teachers; "
                "give one per teacher (None to skip one)"
            )
        maps = None if loss_tap_names is None else [list(m) for m in loss_tap_names]
        if maps is not None and len(maps) != len(self.teachers):
            raise ModelError(
                f"got {len(maps)} lists of teacher taps for {len(self.teachers)} teachers; "
                "give one per teacher"
            )
        every = [([] if name is None else [name]) + (maps[k] if maps else [])
                 for k, name in enumerate(names)]
        for teacher, tapped in zip(self.teachers, every):
            known = dict(teacher.named_modules())
            if any(n not in known for n in tapped):
                FeatureTap(teacher, tapped)  # raises the tap's error naming close matches
        self.remove()
        self.feature_names, self.loss_tap_names = names, maps
        self._taps = [FeatureTap(teacher, tapped) if tapped else None
                      for teacher, tapped in zip(self.teachers, every)]

    def remove(self) -> None:
        """Detach the taps' hooks from the teachers."""
        for tap in self._taps:
            if tap is not None:
                tap.remove()
        self._taps = [None] * len(self.teachers)

    def run(self, x: torch.Tensor):
        """Each teacher's logits ``[B, C_k]`` (a list: teachers of part of the label space
        return fewer), features and loss maps (None without loss taps)."""
        if any(t.training for t in self.teachers):
            raise ModelError(
                "TeacherRunner runs frozen teachers in eval mode, but a teacher is in training "
                "mode; call .eval() on the teachers (TeacherEnsemble keeps them so)"
            )
        logits, feats, stages = [], [], []
        for k, (teacher, tap, name) in enumerate(zip(self.teachers, self._taps,
                                                     self.feature_names)):
            out, tapped = (teacher(x), {}) if tap is None else tap(x)
            logits.append(out)
            feats.append(None if name is None else tapped[name])
            if self.loss_tap_names is not None:
                stages.append([tapped[m] for m in self.loss_tap_names[k]])
        return logits, feats, (stages if self.loss_tap_names is not None else None)
