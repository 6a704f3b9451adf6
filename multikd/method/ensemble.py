"""The frozen teachers: load, freeze, verify, run them all on a batch, score each by its CE.

``TeacherEnsemble(teachers, names, feature_names)`` holds K teachers and, per batch,
returns an :class:`EnsembleOutput`: logits ``[K,B,C]``, the tapped feature map of each
teacher (``None`` where none is tapped), per-sample cross-entropy ``ce [K,B]`` against the
labels and its batch mean ``ce_mean [K]``.

Frozen means: every teacher parameter has ``requires_grad=False``; the ensemble and its
teachers stay in eval mode whatever ``.train()`` a parent module is switched to (BatchNorm
uses its running statistics, dropout is off); the forward pass runs under
``torch.no_grad()``. ``no_grad`` rather than ``inference_mode``: inference tensors cannot
be used by autograd at all, and the teachers' outputs are the targets of the student's
losses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from multikd.method.teacher_runner import TeacherRunner
from multikd.method.label_spaces import ClassMaps, span
from multikd.method.losses import upcast
from multikd.errors import DataError, ModelError

DEFAULT_INPUT_SHAPE = (1, 3, 32, 32)


@dataclass
class EnsembleOutput:
    """The teachers' view of one batch.

    logits [K,B,C]; features: one tapped feature ``[B, ...]`` per teacher, or None;
    stage_features: per teacher the maps a feature module reads (the ensemble's loss taps,
    :meth:`TeacherEnsemble.set_loss_taps`), or None;
    ce [K,B]: per-sample cross-entropy of each teacher (float32; float64 for float64 logits,
    so a float64 model is a reference check end to end); ce_mean [K]: its batch mean.
    """

    logits: torch.Tensor
    features: list[torch.Tensor | None]
    ce: torch.Tensor
    ce_mean: torch.Tensor
    stage_features: list[list[torch.Tensor]] | None = None

    @classmethod
    def from_logits(
        cls,
        logits: torch.Tensor,
        labels: torch.Tensor,
        features: Sequence[torch.Tensor | None] | None = None,
        stage_features: list[list[torch.Tensor]] | None = None,
    ) -> "EnsembleOutput":
        """Score teacher logits ``[K,B,C]`` against ``labels [B]`` (e.g. logits cached on
        disk): ``ce_ki = -log softmax(logits_ki)[y_i]``."""
        if logits.dim() != 3 or labels.shape != logits.shape[1:2]:
            raise ValueError(
                f"expected teacher logits [K,B,C] and labels [B]; got {tuple(logits.shape)} "
                f"and {tuple(labels.shape)}"
            )
        k, b, c = logits.shape
        ce = F.cross_entropy(
            upcast(logits.detach()).reshape(k * b, c), labels.repeat(k), reduction="none"
        ).view(k, b)
        feats = [None] * k if features is None else list(features)
        return cls(logits.detach(), feats, ce, ce.mean(1), stage_features)


class TeacherEnsemble(nn.Module):
    """K frozen teachers with optional feature taps (one module name per teacher).

    ``names`` default to each teacher's architecture (``model.arch_name`` as set by
    :func:`multikd.models.create_model`, else its class name), with ``_<k>`` appended
    where several teachers share one. ``num_classes`` is found by one dry forward pass on
    ``example_input`` (default zeros ``[1,3,32,32]``); teachers that disagree are a
    :class:`~multikd.errors.ModelError`.

    Teachers of part of the label space (``classes[k]``: the student classes teacher k
    predicts, in the order of its outputs; None: every class) need ``num_classes``, the
    student's C: their logits are scattered into ``[B,C]`` (:class:`~multikd.method.
    label_spaces.ClassMaps`, ``class_maps``), so the output is ``[K,B,C]`` as for any other
    teachers, and :meth:`evaluate` scores each teacher on the test images of its own
    classes. The teachers run one after another through a
    :class:`~multikd.method.teacher_runner.TeacherRunner`.
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        names: Sequence[str] | None = None,
        feature_names: Sequence[str | None] | None = None,
        *,
        example_input: torch.Tensor | None = None,
        classes: Sequence[Sequence[int] | None] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        teachers = list(teachers)
        if not teachers:
            raise ModelError("a TeacherEnsemble needs at least one teacher; the list is empty")
        not_modules = [type(t).__name__ for t in teachers if not isinstance(t, nn.Module)]
        if not_modules:
            raise ModelError(f"teachers must be torch nn.Modules, got {not_modules}")
        self.teachers = nn.ModuleList(teachers)
        self.names = _teacher_names(teachers, names)
        for teacher in self.teachers:
            teacher.requires_grad_(False)
        self.train(False)
        self.example_input = (
            torch.zeros(DEFAULT_INPUT_SHAPE) if example_input is None else example_input.detach()
        )
        self.feature_names: list[str | None] = [None] * len(teachers)
        self.loss_tap_names: list[list[str]] | None = None
        classes = [None] * len(teachers) if classes is None else list(classes)
        if len(classes) != len(teachers):
            raise ModelError(
                f"got {len(classes)} class lists for {len(teachers)} teachers ({self.names}); "
                "give one per teacher (None for a teacher of every class)"
            )
        self.num_classes = self._check_num_classes(classes, num_classes)
        self.class_maps = ClassMaps(classes, self.num_classes, self.names)
        self.runner = TeacherRunner(teachers)
        self.set_feature_names(feature_names)

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[tuple[str, str | None]],
        num_classes: int,
        feature_names: Sequence[str | None] | None = None,
        names: Sequence[str] | None = None,
    ) -> "TeacherEnsemble":
        """Build teachers from ``(arch, checkpoint or None)`` pairs with
        :func:`multikd.models.create_model`."""
        from multikd.models import create_model

        teachers = [
            create_model(arch, num_classes=num_classes, checkpoint=ckpt) for arch, ckpt in specs
        ]
        return cls(teachers, names=names, feature_names=feature_names)

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        """Teachers are frozen: always eval mode, whatever ``mode`` a parent asks for."""
        return super().train(False)

    def set_feature_names(self, feature_names: Sequence[str | None] | None) -> None:
        """Tap module ``feature_names[k]`` of teacher k (None: no feature for that teacher)."""
        if feature_names is None:
            feature_names = [None] * self.num_teachers
        feature_names = list(feature_names)
        if len(feature_names) != self.num_teachers:
            raise ModelError(
                f"got {len(feature_names)} teacher feature names for {self.num_teachers} "
                f"teachers ({', '.join(self.names)}); give one per teacher (None to skip one)"
            )
        self.runner.set_feature_names(feature_names, self.loss_tap_names)
        self.feature_names = feature_names

    def set_loss_taps(self, names: Sequence[Sequence[str]] | None) -> None:
        """Also tap modules ``names[k]`` of teacher k, handed out in order as
        ``EnsembleOutput.stage_features[k]`` (the maps a feature module reads); None: none."""
        self.runner.set_feature_names(self.feature_names, names)
        self.loss_tap_names = self.runner.loss_tap_names

    def forward(self, x: torch.Tensor, y: torch.Tensor, features: bool = True) -> EnsembleOutput:
        """All teachers on ``x [B,...]``, scored against ``y [B]``; ``features=False``
        returns no features (all None)."""
        with torch.no_grad():
            logits, feats, stages = self._run_teachers(x)
            if not features:
                return EnsembleOutput.from_logits(logits, y)
            return EnsembleOutput.from_logits(logits, y, feats, stages)

    def check_output(self, out: EnsembleOutput, batch_size: int) -> None:
        """A :class:`ModelError` unless ``out`` (e.g. a teacher pass shared by another run)
        holds logits ``[K,B,C]`` and CE ``[K,B]`` of these teachers for a batch of B."""
        expected = (self.num_teachers, batch_size, self.num_classes)
        if tuple(out.logits.shape) != expected or tuple(out.ce.shape) != expected[:2]:
            raise ModelError(
                f"teacher output does not fit this distiller: expected logits {expected} and "
                f"ce {expected[:2]} (teachers {self.names}, batch {batch_size}); got "
                f"logits {tuple(out.logits.shape)} and ce {tuple(out.ce.shape)}"
            )

    def loss_tap_shapes(self, example_input: torch.Tensor | None = None) -> list[list[tuple[int, ...]]]:
        """Per teacher, the per-sample shape of each loss map (:meth:`set_loss_taps`)."""
        if self.loss_tap_names is None:
            return [[] for _ in self.teachers]
        with torch.no_grad():
            _, _, stages = self._run_teachers(self._example(example_input))
        return [[tuple(m.shape[1:]) for m in maps] for maps in stages]

    def _run_teachers(self, x: torch.Tensor):
        """Logits ``[K,B,C]``, tapped features and loss maps (None without loss taps) of
        every teacher; partial teachers' logits scattered into the C classes."""
        logits, feats, stages = self.runner.run(x)
        logits = self.class_maps.scatter(logits) if self.class_maps.partial else torch.stack(logits)
        return logits, feats, stages

    def feature_shapes(
        self, example_input: torch.Tensor | None = None
    ) -> list[tuple[int, ...] | None]:
        """Per-sample shape of each teacher's tapped feature (None where untapped), from
        one dry forward pass on ``example_input`` (default: the ensemble's example)."""
        with torch.no_grad():
            _, feats, _ = self._run_teachers(self._example(example_input))
        return [None if f is None else tuple(f.shape[1:]) for f in feats]

    def evaluate(self, loader, device: torch.device | str | None = None) -> dict[str, float]:
        """Top-1 test accuracy (%) of each teacher over ``loader``'s ``(x, y)`` batches,
        as ``{teacher name: accuracy}`` in the ensemble's order; a partial teacher is scored
        on the images of its own classes only. One host read, at the end."""
        correct, seen = torch.stack(self.evaluate_counts(loader, device)).tolist()
        if sum(seen) == 0:
            raise DataError("cannot evaluate the teachers: the data loader yielded no samples")
        empty = [n for n, s in zip(self.names, seen) if s == 0]
        if empty:
            raise DataError(
                f"cannot evaluate teacher(s) {', '.join(empty)}: the test images hold none "
                "of their classes"
            )
        return {n: 100.0 * c / s for n, c, s in zip(self.names, correct, seen)}

    def evaluate_counts(self, loader, device: torch.device | str | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(correct [K], seen [K])`` on the device, no host sync: per teacher, the test
        images of its classes it gets right, and how many there are (sums over processes
        give the accuracy of a sharded test set)."""
        device = torch.device(device) if device is not None else _device_of(self)
        k = self.num_teachers
        correct = torch.zeros(k, dtype=torch.long, device=device)
        seen = torch.zeros(k, dtype=torch.long, device=device)
        with torch.no_grad():
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                logits = self._run_teachers(x)[0]
                known = self.class_maps.knows(y)  # all True for teachers of every class
                correct += ((logits.argmax(-1) == y.unsqueeze(0)) & known).sum(1)
                seen += known.sum(1)
        return correct, seen

    def _example(self, example_input: torch.Tensor | None) -> torch.Tensor:
        example = self.example_input if example_input is None else example_input
        return example.to(_device_of(self))

    def _check_num_classes(self, classes: list, num_classes: int | None) -> int:
        """The C of the teachers' ``[K,B,C]`` output: every full teacher's class count, or
        ``num_classes`` (required with partial teachers, which return ``len(classes[k])``)."""
        with torch.no_grad():
            example = self._example(None)
            shapes = [tuple(teacher(example).shape) for teacher in self.teachers]
        bad = [n for n, s in zip(self.names, shapes) if len(s) != 2 or s[0] != example.shape[0]]
        if bad:
            raise ModelError(
                f"teacher(s) {', '.join(bad)} did not return logits [B,C] for an input of shape "
                f"{tuple(example.shape)}; a teacher's forward must return logits only"
            )
        partial = {n: (s[1], c) for n, s, c in zip(self.names, shapes, classes) if c is not None}
        wrong = [f"{n} returns {m} logits but lists {len(c)} classes ({span(c)})"
                 for n, (m, c) in partial.items() if m != len(c)]
        if wrong:
            raise ModelError(
                f"a partial teacher returns one logit per class it knows: {'; '.join(wrong)}; "
                "give teachers[].classes as its train-teacher --classes"
            )
        counts = {n: s[1] for n, s, c in zip(self.names, shapes, classes) if c is None}
        if num_classes is not None:
            counts = {**counts, "the student": int(num_classes)}
        elif partial and not counts:
            raise ModelError(
                "every teacher knows part of the label space only: pass num_classes, the "
                "student's class count"
            )
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{n}: {c}" for n, c in counts.items())
            raise ModelError(
                f"the teachers predict different numbers of classes ({listing}); all teachers "
                "and the student must be built for the same dataset (a teacher of part of the "
                "classes lists them in teachers[].classes)"
            )
        return next(iter(counts.values()))

    def extra_repr(self) -> str:
        return f"names={self.names}, num_classes={self.num_classes}"


def _teacher_names(teachers: list[nn.Module], names: Sequence[str] | None) -> list[str]:
    if names is None:
        archs = [str(getattr(t, "arch_name", type(t).__name__)) for t in teachers]
        counts = Counter(archs)
        return [a if counts[a] == 1 else f"{a}_{k}" for k, a in enumerate(archs)]
    names = list(names)
    if len(names) != len(teachers):
        raise ModelError(f"got {len(names)} teacher names for {len(teachers)} teachers: {names}")
    if any(not isinstance(n, str) or not n for n in names):
        raise ModelError(f"teacher names must be non-empty strings, got {names}")
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        raise ModelError(f"teacher names must be unique; repeated: {', '.join(repeated)}")
    return names


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
