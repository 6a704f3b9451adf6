"""One training step's losses: the contract every method follows.

A *learner* is an ``nn.Module`` whose ``forward(x, y)`` returns
``(student_logits [B,C], losses: dict[str, Tensor], info: dict)``; ``losses["total"]`` is
what the optimizer minimizes, every other entry is logged by name. ``trainable_parameters()``
lists exactly what the optimizer may update, so frozen teachers can never be trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multikd.method.adapters import build_adapters
from multikd.method.ensemble import EnsembleOutput, TeacherEnsemble
from multikd.errors import ConfigError, ModelError, StrategyError
from multikd.models.taps import FeatureTap
from multikd.method.losses import feature_loss, multi_teacher_kd_loss, multi_teacher_mse_loss
from multikd.method.strategies import Strategy, check_finite

LOGIT_LOSSES = ("kd", "mse")
FEATURE_WEIGHTS = ("strategy", "uniform")


class SupervisedLearner(nn.Module):
    """Plain cross-entropy training of one model (teachers, and the student-alone baseline).

    loss = CE(model(x), y)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.student = model

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.student(x)
        ce = F.cross_entropy(logits, y)
        return logits, {"ce": ce, "total": ce}, {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]


class MultiTeacherDistiller(nn.Module):
    """A student learning from a frozen :class:`~multikd.method.ensemble.TeacherEnsemble` whose
    teachers a :class:`~multikd.method.strategies.Strategy` weights per batch (Gu et al. 2023's
    CE-screened, feature + logit multi-teacher distillation, see DESIGN.md):

        total = alpha * CE(s, y)
              + beta  * mean_i sum_k w_ki * KD_T(s_i, t_ki)           (logit_loss="kd")
                        [or mean_i sum_k w_ki * MSE(s_i, t_ki)        (logit_loss="mse")]
              + gamma * mean_i sum_k v_ki * mean_e (a_k(f_s)_i - f_tk,i)^2

    with ``w = strategy.select(ce, logits, y).weights`` and ``v = w``
    (``feature_weights="strategy"``) or ``v = 1/K`` (``"uniform"``); KD_T is Hinton's
    T^2-scaled KL (:mod:`multikd.method.losses`). ``f_s`` is the student's ``student_feature``
    (default: its last stage, ``student.feature_names[-1]``), ``f_tk`` teacher k's
    ``teacher_features[k]`` (default: the ensemble's taps where set, else each teacher's
    last stage), and ``a_k`` the :class:`~multikd.method.adapters.FeatureAdapter` to teacher k's
    shape, built from one dry forward pass on ``example_input`` (default: the ensemble's,
    zeros ``[1,3,32,32]``). The distiller sets the ensemble's taps to those teacher
    features. With ``gamma == 0`` there are no adapters and no taps, the teachers' features
    are not requested, and ``feat`` is logged as 0.

    ``forward(x, y, teacher_out=None)`` returns ``(logits [B,C], losses, info)``:
    ``losses`` = ``{"ce", "kd", "feat", "total"}`` (scalars, ``total`` is minimized) and
    ``info`` = ``{"teachers": names, "weights": [K] batch-mean weights, "ce": [K] batch-mean
    teacher CE, "kept": [K] fraction of the batch where the teacher was kept}`` (detached
    tensors on the batch's device). ``teacher_out`` is an
    :class:`~multikd.method.ensemble.EnsembleOutput` computed elsewhere (one teacher pass shared
    by several students, or cached logits via ``EnsembleOutput.from_logits``; the latter
    has no features, so it needs ``gamma == 0``).

    Teacher outputs are checked for NaN/inf (a TrainingError naming the teacher) on the
    first batch, and on every later batch on the CPU while :attr:`check_every_cpu_batch`
    is True (the default; a CPU run waits for nothing, but the check costs ops). On other
    devices later batches are not checked, to avoid a host sync per step: a non-finite
    teacher output then makes the losses non-finite (zero weights multiply, they do not
    mask), which the engine reports. Setting ``check_every_cpu_batch = False`` gives a CPU
    run the same sync-free steps, e.g. to verify that a step reads nothing on the host.

    Only the student and the adapters train (:meth:`trainable_parameters`); the teachers
    stay frozen and in eval mode through ``.train()``. ``state_dict()`` holds student,
    adapters and teachers; :meth:`learner_state_dict` holds what a checkpoint needs
    (student, adapters, strategy state) and :meth:`load_learner_state_dict` restores it.
    """

    def __init__(
        self,
        student: nn.Module,
        ensemble: TeacherEnsemble,
        strategy: Strategy,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.0,
        temperature: float = 4.0,
        logit_loss: str = "kd",
        student_feature: str | None = None,
        teacher_features: Sequence[str | None] | None = None,
        feature_weights: str = "strategy",
        adapter_relu: bool = False,
        example_input: torch.Tensor | None = None,
    ):
        super().__init__()
        if not isinstance(ensemble, TeacherEnsemble):
            raise ModelError(f"ensemble must be a TeacherEnsemble, got {type(ensemble).__name__}")
        if not isinstance(strategy, Strategy):
            raise StrategyError(
                "strategy must be a multikd Strategy (see create_strategy), got "
                f"{type(strategy).__name__}"
            )
        self.alpha = _loss_weight("alpha", alpha)
        self.beta = _loss_weight("beta", beta)
        self.gamma = _loss_weight("gamma", gamma)
        self.temperature = _loss_weight("temperature", temperature)
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.logit_loss = _choice("logit_loss", logit_loss, LOGIT_LOSSES)
        self.feature_weights = _choice("feature_weights", feature_weights, FEATURE_WEIGHTS)
        self.student = student
        self.ensemble = ensemble
        self.strategy = strategy
        self.use_features = self.gamma > 0
        self.student_feature = None
        self._tap: FeatureTap | None = None
        self._finite_checked = False
        self.check_every_cpu_batch = True
        self._zero: torch.Tensor | None = None
        example = ensemble.example_input if example_input is None else example_input
        if self.use_features:
            self.student_feature = student_feature or _last_stage(student, "student")
            self._tap = FeatureTap(student, [self.student_feature])
            ensemble.set_feature_names(self._teacher_features(teacher_features))
        student_out = _dry_run(student, self._tap, example)
        if student_out[0].dim() != 2:
            raise ModelError(
                f"the student returned {tuple(student_out[0].shape)} for an input of shape "
                f"{tuple(example.shape)}; its forward must return logits [B,C] only"
            )
        classes = student_out[0].shape[-1]
        if classes != ensemble.num_classes:
            raise ModelError(
                f"the student predicts {classes} classes but the teachers predict "
                f"{ensemble.num_classes}; build all models for the same dataset"
            )
        if self.use_features:
            student_shape = tuple(student_out[1][self.student_feature].shape[1:])
            self.adapters = build_adapters(
                student_shape, ensemble.feature_shapes(example), relu=adapter_relu
            )
        else:
            self.adapters = nn.ModuleList()

    @property
    def teacher_names(self) -> list[str]:
        return self.ensemble.names

    def _teacher_features(self, given: Sequence[str | None] | None) -> list[str]:
        if given is not None:
            names = list(given)
            if len(names) != self.ensemble.num_teachers or any(n is None for n in names):
                raise ConfigError(
                    f"with gamma > 0 every teacher needs a feature to match: got teacher "
                    f"features {names} for teachers {self.ensemble.names}"
                )
            return names
        return [
            tapped or _last_stage(teacher, f"teacher {name!r}")
            for teacher, tapped, name in zip(
                self.ensemble.teachers, self.ensemble.feature_names, self.ensemble.names
            )
        ]

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_out: EnsembleOutput | None = None):
        if teacher_out is None:
            teacher_out = self.ensemble(x, y, features=self.use_features)
        self._check_teacher_out(teacher_out, y, x.device)
        if self._tap is not None:
            logits, tapped = self._tap(x)
        else:
            logits = self.student(x)
        selection = self.strategy.select(teacher_out.ce, teacher_out.logits, y, check=False)
        weights = selection.weights
        teacher_logits = teacher_out.logits.detach()
        ce = F.cross_entropy(logits, y)
        if self.logit_loss == "kd":
            kd = multi_teacher_kd_loss(logits, teacher_logits, weights, self.temperature)
        else:
            kd = multi_teacher_mse_loss(logits, teacher_logits, weights)
        if self.use_features:
            student_feature = tapped[self.student_feature]
            adapted = [adapter(student_feature) for adapter in self.adapters]
            feat_weights = weights if self.feature_weights == "strategy" else torch.full_like(
                weights, 1.0 / weights.shape[0]
            )
            targets = [feature.detach() for feature in teacher_out.features]
            feat = feature_loss(adapted, targets, feat_weights)
            total = _scaled(self.alpha, ce) + _scaled(self.beta, kd) + _scaled(self.gamma, feat)
        else:
            # gamma * 0 adds exactly +0: leaving the term out changes no total
            feat = self._zero_on(logits.device)
            total = _scaled(self.alpha, ce) + _scaled(self.beta, kd)
        with torch.no_grad():  # no graph: the detach()es it saves would be ops
            info = {
                "teachers": list(self.ensemble.names),
                "weights": weights.mean(1),
                "ce": teacher_out.ce_mean.detach().float(),
                "kept": selection.kept.float().mean(1),
            }
        return logits, {"ce": ce, "kd": kd, "feat": feat, "total": total}, info

    def _zero_on(self, device: torch.device) -> torch.Tensor:
        """The logged ``feat`` loss without features: one 0 made once per device."""
        if self._zero is None or self._zero.device != device:
            self._zero = torch.zeros((), device=device)
        return self._zero

    def _check_teacher_out(
        self, out: EnsembleOutput, y: torch.Tensor, device: torch.device
    ) -> None:
        """Shapes (metadata only, no sync), features when needed, and finiteness (see class doc)."""
        expected = (self.ensemble.num_teachers, y.shape[0], self.ensemble.num_classes)
        if tuple(out.logits.shape) != expected or tuple(out.ce.shape) != expected[:2]:
            raise ModelError(
                f"teacher output does not fit this distiller: expected logits {expected} and "
                f"ce {expected[:2]} (teachers {self.ensemble.names}, batch {y.shape[0]}); got "
                f"logits {tuple(out.logits.shape)} and ce {tuple(out.ce.shape)}"
            )
        if self.use_features:
            shapes = [adapter.out_shape for adapter in self.adapters]
            for name, feature, shape in zip(self.ensemble.names, out.features, shapes):
                if feature is None:
                    raise ConfigError(
                        f"gamma > 0 needs every teacher's feature, but the teacher output has "
                        f"none for {name!r} (cached logits carry no features): set gamma to 0, "
                        "or pass teacher outputs computed with the teachers' feature taps"
                    )
                if tuple(feature.shape[1:]) != shape:
                    raise ModelError(
                        f"teacher {name!r} feature has shape {tuple(feature.shape[1:])} per "
                        f"sample but its adapter was built for {shape}: the shared teacher pass "
                        "must tap the same teacher features as this distiller"
                    )
        if not self._finite_checked or (self.check_every_cpu_batch and device.type == "cpu"):
            check_finite(out.ce, out.logits, self.ensemble.names)
            self._finite_checked = True

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's trainable parameters and the adapters' (never a teacher's)."""
        student = [p for p in self.student.parameters() if p.requires_grad]
        return student + list(self.adapters.parameters())

    def learner_state_dict(self) -> dict:
        """What a checkpoint needs to continue: ``{"student", "adapters", "strategy"}``
        (the teachers are rebuilt from their own checkpoints)."""
        return {
            "student": self.student.state_dict(),
            "adapters": self.adapters.state_dict(),
            "strategy": self.strategy.state_dict(),
        }

    def load_learner_state_dict(self, state: dict) -> None:
        """Restore :meth:`learner_state_dict` output (strict: every key must fit)."""
        missing = {"student", "adapters", "strategy"} - set(state)
        if missing:
            raise ModelError(f"learner state lacks {sorted(missing)}; it holds {sorted(state)}")
        self.student.load_state_dict(state["student"])
        self.adapters.load_state_dict(state["adapters"])
        self.strategy.load_state_dict(state["strategy"])


def _dry_run(student: nn.Module, tap: FeatureTap | None, example: torch.Tensor):
    """``(logits, features or None)`` of the student in eval mode without gradients, its
    mode restored afterwards (no BatchNorm statistic changes)."""
    was_training = student.training
    device = next(iter(student.parameters()), example).device
    student.eval()
    try:
        with torch.no_grad():
            if tap is not None:
                return tap(example.to(device))
            return student(example.to(device)), None
    finally:
        student.train(was_training)


def _last_stage(model: nn.Module, role: str) -> str:
    names = getattr(model, "feature_names", None)
    if not names:
        raise ConfigError(
            f"the {role} ({type(model).__name__}) does not list its stage features "
            "(model.feature_names); name the module to tap (student_feature / "
            "teacher_features, as in model.named_modules())"
        )
    return names[-1]


def _scaled(weight: float, loss: torch.Tensor) -> torch.Tensor:
    """``weight * loss``, without the op when the weight is 1 (``1.0 * x`` is exactly x)."""
    return loss if weight == 1.0 else weight * loss


def _loss_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
