"""The multi-teacher distiller: one training step's losses of a student and its teachers.

:class:`MultiTeacherDistiller` is a learner (:class:`~multikd.method.learner.LearnerContract`,
the members the engine reads), as is the plain-CE
:class:`~multikd.method.learner.SupervisedLearner`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ConfigError, ModelError, StrategyError
from multikd.method.adapters import build_adapters
from multikd.method.ensemble import EnsembleOutput, TeacherEnsemble
from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY, feature_loss_per_teacher
from multikd.method.label_spaces import restrict_weights
from multikd.method.logit_losses import (
    LOGIT_LOSS_REGISTRY,
    WARMUP,
    dkd_warmup_factor,
    logit_loss_per_teacher,
)
from multikd.method.loss_spec import LossSpec
from multikd.method.losses import UNLABELED, labeled_ce, upcast, weighted_teacher_mean
from multikd.method.registry import REQUIRED
from multikd.method.strategies import (
    AfterStep,
    Selection,
    StepContext,
    StepRecord,
    Strategy,
    StrategySpec,
    check_finite,
)
from multikd.models.taps import FeatureTap



class MultiTeacherDistiller(nn.Module):
    """A student learning from a frozen :class:`~multikd.method.ensemble.TeacherEnsemble` whose
    teachers a :class:`~multikd.method.strategies.Strategy` weights per batch (Gu et al. 2023's
    CE-screened, feature + logit multi-teacher distillation, see DESIGN.md):

        total = alpha * CE(s, y)
              + beta  * r_w * mean_i sum_k w_ki * L(s_i, t_ki)
              + gamma * r_v * mean_i sum_k v_ki * mean_e (a_k(f_s)_i - f_tk,i)^2

    The named options below are the fields of ``loss``, a
    :class:`~multikd.method.loss_spec.LossSpec` handed whole (the run's ``loss`` section),
    resolved against the strategy's reference and checked by :meth:`LossSpec.check`:

    - ``w = strategy.select(ce, logits, y).weights`` (columns sum to 1);
    - ``L`` the per-teacher logit loss ``logit_loss``, a name of the logit-loss registry
      (:mod:`multikd.method.logit_losses`: ``kd`` Hinton's T^2-scaled KL, ``mse``, ``dkd``
      (times its warmup factor ``min(epoch / warmup, 1)``: any loss with a ``warmup``
      parameter), ``dist``), on z-scored logits when ``logit_standardize``;
      ``logit_params`` are the loss's own parameters (over the registry's defaults);
    - ``teacher_reduction``: ``sum`` (r = 1) or ``mean`` (r = m / K with m the per-sample
      mass of the source's own weights, :meth:`Strategy.weight_mass`: the source's
      ``sum_ik w_ik l_ik / (B K)``); ``r_v`` likewise for the feature weights (m = K for
      ``uniform``, 1 for ``teacher-head``);
    - ``v``: ``feature_weights`` ``strategy`` (v = w), ``uniform`` (1/K) or ``teacher-head``
      (CA-MKD: ``v_ki = (1 - softmax_k CE(head_k(a_k(f_s))_i, y_i)) / (K - 1)``, teacher
      k's own pooling + classifier (``forward_head``) on the adapted student feature, with
      gradient through the weights);
    - ``mean_e (a_k(f_s)_i - f_tk,i)^2`` is the ``mse`` feature loss (FitNets' hint), the
      default ``feature_loss``: a name of the feature-loss registry
      (:mod:`multikd.method.feature_losses`), with its own ``feature_params``;
    - ``f_s`` the student's ``student_feature``, ``f_tk`` teacher k's ``teacher_features[k]``
      (default: stage ``feature_stage`` of ``model.feature_names``, or of
      ``model.repdistiller_feature_names`` with ``taps="repdistiller"``, where a model lists
      RepDistiller's taps separately (WRN: before the last BN + ReLU)), ``a_k`` the adapter
      of kind ``adapter`` (the adapter registry, :mod:`multikd.method.adapters`) to teacher
      k's shape, built from one dry forward pass on ``example_input`` (default: the
      ensemble's, zeros ``[1,3,32,32]``);
    - the feature term counts from epoch ``feature_start_epoch`` on (:meth:`set_epoch`;
      CA-MKD's loop leaves it out in epoch 1: it is computed, so adapter BatchNorm statistics
      move as there, but not added); ``feature_grad=False`` detaches it (CA-MKD's FitNet-MKD).

    Teachers of part of the label space (``ensemble.class_maps.partial``, see
    :mod:`multikd.method.label_spaces`): with ``label_merge="restricted"`` (default) ``L``
    compares teacher k with the student's logits on k's classes only (the student's
    distribution restricted to them and renormalised, Vongkulbhisal et al. 2019), the
    strategy reads each teacher's CE only on samples of classes it knows (elsewhere the
    ``unlabeled_ce`` stand-in) and its weights are restricted to the teachers that know the
    sample's label and renormalised (every teacher on an unlabelled sample); with
    ``label_merge="concat"`` the teachers' logits are merged into one teacher over all
    classes (per class the mean of the teachers that know it), distilled with weight 1 (the
    naive baseline; strategy ``uniform``, no features).

    Every option that is ``"reference"`` (or None for the two stage/epoch numbers) takes
    the strategy's value (:attr:`Strategy.reference`), so e.g. ``ca-mkd`` computes the loss
    of CA-MKD's public code. With ``gamma == 0`` there are no adapters and no taps, the
    teachers' features are not requested, and ``feat`` is logged as 0.

    ``forward(x, y, teacher_out=None)`` returns ``(logits [B,C], losses, info)``:
    ``losses`` = ``{"ce", "kd", "feat", "total"}`` (scalars, ``total`` is minimized; ``kd``
    is the reduced logit term whatever ``logit_loss`` is) and ``info`` = ``{"teachers":
    names, "weights": [K] batch-mean weights, "ce": [K] batch-mean teacher CE, "kept": [K]
    fraction of the batch where the teacher was kept}`` (detached tensors on the batch's
    device). ``teacher_out`` is an :class:`~multikd.method.ensemble.EnsembleOutput`
    computed elsewhere (one teacher pass shared by several students, or cached logits via
    ``EnsembleOutput.from_logits``; the latter has no features, so it needs ``gamma == 0``).

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
        loss: LossSpec | None = None,
        *,
        example_input: torch.Tensor | None = None,
        batch_size: int | None = None,
        partial_labels: bool = False,
        self_teacher: int | None = None,
        self_from_epoch: int | None = None,
    ):
        super().__init__()
        if not isinstance(ensemble, TeacherEnsemble):
            raise ModelError(f"ensemble must be a TeacherEnsemble, got {type(ensemble).__name__}")
        if not isinstance(strategy, Strategy):
            raise StrategyError(
                "strategy must be a multikd Strategy (see create_strategy), got "
                f"{type(strategy).__name__}"
            )
        loss = (LossSpec() if loss is None else loss).resolved(strategy.reference_loss())
        loss.check()
        self.loss = loss
        self.alpha, self.beta = float(loss.alpha), float(loss.beta)
        self.gamma, self.temperature = float(loss.gamma), float(loss.temperature)
        self.logit_loss = loss.logit_loss
        self.logit_params = dict(loss.logit_params)
        self.logit_standardize = bool(loss.logit_standardize)
        self._logit_defaults = dict(LOGIT_LOSS_REGISTRY.entry(self.logit_loss).params)
        self._warmup = None
        if WARMUP in self._logit_defaults:
            self._warmup = self.logit_params.get(WARMUP, self._logit_defaults[WARMUP])
        self.feature_loss = loss.feature_loss
        given = dict(loss.feature_params)
        defaults = FEATURE_LOSS_REGISTRY.check_params(self.feature_loss, given).params
        self.feature_params = {**{k: v for k, v in defaults.items() if v is not REQUIRED},
                               **given}
        self.teacher_reduction = loss.teacher_reduction
        self.feature_weights = loss.feature_weights
        self.adapter = loss.adapter
        self.feature_stage = int(loss.feature_stage)
        self.taps = loss.taps
        self.feature_start_epoch = int(loss.feature_start_epoch)
        self.feature_grad = bool(loss.feature_grad)
        self.partial_labels = bool(partial_labels)
        self.unlabeled_ce = loss.unlabeled_ce
        if self.partial_labels and self.logit_loss == "dkd":
            raise ConfigError(
                "loss.logit_loss dkd splits the loss at each image's target class, but some "
                "training images have no label (data.labeled_fraction < 1 or "
                "data.unlabeled_dir): use kd, mse or dist"
            )
        self.label_merge = loss.label_merge
        self.self_teacher = self_teacher
        self.self_from_epoch = self_from_epoch
        self._self_ready = False
        self.student = student
        self.ensemble = ensemble
        self.strategy = strategy
        self.epoch = 1
        self.use_features = self.gamma > 0
        self.may_leave_parameters_unused = self.use_features and self.feature_start_epoch > 1
        self.student_feature = None
        self._tap: FeatureTap | None = None
        self._finite_checked = False
        self.check_every_cpu_batch = True
        self._zero: torch.Tensor | None = None
        # checked once here: a typo in logit_params fails at build, not at the first step
        logit_loss_per_teacher(
            self.logit_loss, torch.zeros(1, 2), torch.zeros(1, 1, 2),
            torch.zeros(1, dtype=torch.long), self.temperature, self._loss_params(),
            self.logit_standardize,
        )
        example = ensemble.example_input if example_input is None else example_input
        if self.use_features:
            self.student_feature = loss.student_feature or _stage(
                student, "student", self.feature_stage, self.taps
            )
            self._tap = FeatureTap(student, [self.student_feature])
            ensemble.set_feature_names(self._teacher_features(loss.teacher_features))
            if self.feature_weights == "teacher-head":
                self._check_heads()
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
                f"{ensemble.num_classes}; build all models for the same dataset (a teacher "
                "trained with --classes knows only its own classes: give them in "
                "teachers[].classes and the ensemble num_classes)"
            )
        self.class_maps = ensemble.class_maps if ensemble.class_maps.partial else None
        if self.class_maps is not None:
            self._check_partial_teachers(strategy)
        student_shape = teacher_shapes = None
        if self.use_features:
            student_shape = tuple(student_out[1][self.student_feature].shape[1:])
            teacher_shapes = [tuple(s) for s in ensemble.feature_shapes(example)]
            self.adapters = build_adapters(
                student_shape, teacher_shapes, relu=loss.adapter_relu, kind=self.adapter,
            )
        else:
            self.adapters = nn.ModuleList()
        if strategy.needs_features and not self.use_features:
            raise ConfigError(
                f"strategy {strategy.name!r} weights teachers by the student's and the teachers' "
                "features, but loss.gamma is 0, so none are tapped: set loss.gamma > 0 (the "
                "strategy's reference value is in the README's strategy table)"
            )
        self.strategy_networks = nn.ModuleList()
        if strategy.learns:
            self.strategy_networks = strategy.bind(StrategySpec(
                ensemble.num_teachers, classes, teacher_shapes, student_shape, batch_size,
                self.partial_labels,
            ))

    def set_epoch(self, epoch: int) -> None:
        """The 1-based epoch the next steps belong to (DKD's warmup, the feature term's
        start); at a self-teacher's epoch, the student is copied into it."""
        self.epoch = int(epoch)
        if self.self_teacher is not None and not self._self_ready \
                and self.epoch >= self.self_from_epoch:
            self.snapshot_self_teacher()

    def _loss_params(self) -> dict:
        """The logit loss's parameters: its registry defaults (the published settings)
        updated with ``logit_params``; a ``warmup`` is applied here, not in the loss."""
        merged = {**self._logit_defaults, **self.logit_params}
        return {k: v for k, v in merged.items() if k != WARMUP}

    def _check_heads(self) -> None:
        """``teacher-head`` feature weights run each teacher's own head on the adapted student
        feature: the tap must be the stage that head reads (the last) and the head must exist."""
        for teacher, name, tapped in zip(
            self.ensemble.teachers, self.ensemble.names, self.ensemble.feature_names
        ):
            stages = list(getattr(teacher, "feature_names", ()) or ())
            if not getattr(teacher, "head_reads_last_stage", False) or not stages:
                raise ConfigError(
                    f"loss.feature_weights teacher-head runs each teacher's classifier head on "
                    f"the adapted student feature, but teacher {name!r} "
                    f"({type(teacher).__name__}) has no forward_head that reads its last stage "
                    "(the CIFAR zoo's models do; timm's forward_head reads forward_features); "
                    "use feature_weights strategy or uniform"
                )
            if tapped != stages[-1]:
                raise ConfigError(
                    f"loss.feature_weights teacher-head needs teacher {name!r}'s last stage "
                    f"{stages[-1]!r} (its head reads it), but {tapped!r} is tapped; leave "
                    "loss.teacher_features and loss.feature_stage at their defaults"
                )

    def _check_partial_teachers(self, strategy: Strategy) -> None:
        """What teachers of part of the label space cannot be combined with."""
        problems = []
        if self.logit_loss == "dkd":
            problems.append(
                "loss.logit_loss dkd splits the loss at the target class, which a teacher "
                "does not have for images of classes it does not know: use kd, mse or dist"
            )
        if strategy.learns:
            problems.append(
                f"strategy {strategy.name!r} learns weights over teachers of one label space "
                "(its source defines nothing else): use uniform, ce-filter, ca-mkd, ebkd, ..."
            )
        if self.use_features and self.feature_weights == "teacher-head":
            problems.append(
                "loss.feature_weights teacher-head scores each teacher's classifier head "
                "against the label, which a partial teacher's head may not know: set "
                "loss.feature_weights strategy or uniform"
            )
        if self.label_merge == "concat" and (strategy.name != "uniform" or self.use_features):
            problems.append(
                "loss.label_merge concat merges the teachers into one teacher over all "
                "classes, so there is nothing to weight and no per-teacher feature: use "
                "strategy uniform and gamma 0"
            )
        if problems:
            raise ConfigError("with teachers of part of the label space (teachers[].classes): "
                              + "; ".join(problems))

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
            tapped or _stage(teacher, f"teacher {name!r}", self.feature_stage, self.taps)
            for teacher, tapped, name in zip(
                self.ensemble.teachers, self.ensemble.feature_names, self.ensemble.names
            )
        ]

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_out: EnsembleOutput | None = None):
        if teacher_out is None:
            teacher_out = self.ensemble(x, y, features=self.use_features)
        self._check_teacher_out(teacher_out, y, x.device)
        logits, student_feature, adapted = self.forward_student(x)
        full_out, active = teacher_out, self._active_teachers()
        if active is not None:  # a self-teacher before its epoch takes no part
            if not active:
                return self._ce_only(logits, y, full_out)
            teacher_out = _subset(full_out, active)
            adapted = [adapted[i] for i in active] if adapted else adapted
        strategy = self.strategy
        context = None
        if strategy.needs_student or strategy.needs_features:
            context = StepContext(logits.detach(), self.temperature, self.epoch)
            if strategy.learns or strategy.needs_features:
                if student_feature is not None:
                    context.student_feature = student_feature.detach()
                    context.adapted = [a.detach() for a in adapted]
                    context.teacher_features = [f.detach() for f in teacher_out.features]
        ids = list(range(full_out.logits.shape[0])) if active is None else active
        teacher_ce = self._strategy_ce(teacher_out, y, ids)
        selection = strategy.select(teacher_ce, teacher_out.logits, y, check=False, context=context)
        if self.class_maps is not None:  # a teacher never votes on a class it does not know
            votes = _rows(self.class_maps.votes(y), ids)
            selection = Selection(restrict_weights(selection.weights, votes),
                                  selection.kept & votes, selection.feature_weights,
                                  selection.scale)
        weights = selection.weights
        teacher_logits = teacher_out.logits.detach()
        ce = labeled_ce(logits, y) if self.partial_labels else F.cross_entropy(logits, y)
        if self.class_maps is not None and self.label_merge == "concat":
            merged = self.class_maps.concatenate(teacher_logits, ids)
            per_teacher = self.per_teacher_logit_loss(logits, merged, y)
            kd = per_teacher.mean()
        else:
            per_teacher = self.per_teacher_logit_loss(logits, teacher_logits, y, ids)
            kd = _scaled(self._reduction_scale(strategy.weight_mass(weights.shape[0]),
                                               weights.shape[0]) * selection.scale,
                         weighted_teacher_mean(per_teacher, weights))
        if self._warmup is not None:
            kd = _scaled(dkd_warmup_factor(self.epoch, self._warmup), kd)
        total = _scaled(self.alpha, ce) + _scaled(self.beta, kd)
        per_feature = None
        if self.use_features:
            feat, per_feature = self._feature_term(adapted, teacher_out, selection, y)
            if self.epoch >= self.feature_start_epoch:
                total = total + _scaled(self.gamma, feat)
        else:
            feat = self._zero_on(logits.device)
        if strategy.learns:
            self._observe(x, y, logits, student_feature, teacher_out, per_teacher, per_feature,
                          selection)
        with torch.no_grad():  # no graph: the detach()es it saves would be ops
            info = {
                "teachers": list(self.ensemble.names),
                "weights": _scatter(weights.mean(1), active, full_out),
                "ce": (teacher_ce.mean(1) if teacher_ce is not teacher_out.ce
                       else teacher_out.ce_mean).detach().float(),
                "kept": _scatter(selection.kept.float().mean(1), active, full_out),
            }
            if active is not None:
                every = list(range(full_out.logits.shape[0]))
                info["ce"] = self._strategy_ce(full_out, y, every).mean(1).detach().float()
        return logits, {"ce": ce, "kd": kd, "feat": feat, "total": total}, info

    # ------------------------------------------------------------------ self-teacher
    def _active_teachers(self) -> list[int] | None:
        """Indices of the teachers that take part now: None (all) unless a self-teacher
        waits for its epoch (then every other one)."""
        if self.self_teacher is None or self._self_ready:
            return None
        return [k for k in range(self.ensemble.num_teachers) if k != self.self_teacher]

    def _ce_only(self, logits, y, teacher_out):
        """The step of a run whose only teacher is the student itself, before its epoch."""
        ce = labeled_ce(logits, y) if self.partial_labels else F.cross_entropy(logits, y)
        zero = self._zero_on(logits.device)
        with torch.no_grad():
            k = self.ensemble.num_teachers
            info = {"teachers": list(self.ensemble.names),
                    "weights": torch.zeros(k, device=logits.device),
                    "ce": teacher_out.ce_mean.detach().float(),
                    "kept": torch.zeros(k, device=logits.device)}
        return logits, {"ce": ce, "kd": zero, "feat": zero, "total": _scaled(self.alpha, ce)}, info

    def snapshot_self_teacher(self) -> None:
        """Copy the student into the self-teacher (frozen, eval mode) and let it take part."""
        teacher = self.ensemble.teachers[self.self_teacher]
        with torch.no_grad():
            teacher.load_state_dict(self.student.state_dict())
        self._self_ready = True

    def self_teacher_state(self) -> dict | None:
        """The self-teacher's snapshot for a checkpoint (None before its epoch or without one)."""
        if self.self_teacher is None or not self._self_ready:
            return None
        return self.ensemble.teachers[self.self_teacher].state_dict()

    def load_self_teacher_state(self, state: dict | None) -> None:
        if state is None:
            return
        if self.self_teacher is None:
            raise ModelError("the checkpoint holds a self-teacher snapshot, but this run has none")
        self.ensemble.teachers[self.self_teacher].load_state_dict(state)
        self._self_ready = True

    def forward_student(self, x: torch.Tensor):
        """``(logits [B,C], tapped feature or None, adapted features (one per teacher))``."""
        if self._tap is None:
            return self.student(x), None, []
        logits, tapped = self._tap(x)
        feature = tapped[self.student_feature]
        return logits, feature, [adapter(feature) for adapter in self.adapters]

    def per_teacher_logit_loss(self, logits, teacher_logits, y,
                               ids: Sequence[int] | None = None) -> torch.Tensor:
        """``[K,B]``: the configured logit loss of the student against each teacher; with
        teachers of part of the label space (``ids``: the ensemble index of each row of
        ``teacher_logits``), each on its own classes (student logits restricted to them,
        :meth:`ClassMaps.restrict <multikd.method.label_spaces.ClassMaps.restrict>`)."""
        if self.class_maps is None or ids is None:
            return logit_loss_per_teacher(
                self.logit_loss, logits, teacher_logits, y, self.temperature,
                self._loss_params(), self.logit_standardize,
            )
        rows = []
        for row, k in enumerate(ids):
            student, teacher, labels = self.class_maps.restrict(k, logits, teacher_logits[row], y)
            rows.append(logit_loss_per_teacher(
                self.logit_loss, student, teacher.unsqueeze(0), labels, self.temperature,
                self._loss_params(), self.logit_standardize,
            ))
        return torch.cat(rows)

    def _strategy_ce(self, out: EnsembleOutput, y: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """The teachers' CE ``[K,B]`` that the strategy reads: their CE where they know the
        sample's label, the ``unlabeled_ce`` stand-in where it is unlabelled or of a class
        the teacher does not know."""
        if self.class_maps is not None:
            known = _rows(self.class_maps.knows(y), ids)
            return unlabeled_teacher_ce(out.ce, out.logits, y, self.unlabeled_ce, known=known)
        if self.partial_labels:
            return unlabeled_teacher_ce(out.ce, out.logits, y, self.unlabeled_ce)
        return out.ce

    def per_teacher_feature_loss(self, adapted, teacher_features) -> torch.Tensor:
        """``[K,B]``: the feature loss ``feature_loss`` (default ``mse``: ``mean_e
        (a_k(f_s)_i - f_tk,i)^2``) against each teacher's feature (as its adapter compares
        it, :meth:`FeatureAdapter.target`)."""
        targets = [a.target(f.detach()) for a, f in zip(self._active(self.adapters),
                                                          teacher_features)]
        return feature_loss_per_teacher(adapted, targets, self.feature_loss, self.feature_params)

    def _active(self, per_teacher: Sequence) -> list:
        """The entries of ``per_teacher`` (one per teacher) of the teachers taking part."""
        active = self._active_teachers()
        return list(per_teacher) if active is None else [per_teacher[i] for i in active]

    def _feature_term(self, adapted, teacher_out, selection, y):
        """``r_v * mean_i sum_k v_ki * mean_e (a_k(f_s)_i - f_tk,i)^2`` (see the class doc),
        and the per-teacher, per-sample terms ``[K,B]`` it weights."""
        weights = selection.weights
        k = weights.shape[0]
        scale = 1.0
        if self.feature_weights == "strategy":
            v, mass, scale = weights, self.strategy.weight_mass(k), selection.scale
            if selection.feature_weights is not None:
                v = selection.feature_weights
        elif self.feature_weights == "uniform":
            v, mass = torch.full_like(weights, 1.0 / k), float(k)
        else:
            v, mass = self._head_weights(adapted, y), 1.0
        per_feature = self.per_teacher_feature_loss(adapted, teacher_out.features)
        feat = _scaled(self._reduction_scale(mass, k) * scale,
                       weighted_teacher_mean(per_feature, v))
        return (feat if self.feature_grad else feat.detach()), per_feature

    def _observe(self, x, y, logits, student_feature, teacher_out, per_teacher, per_feature,
                 selection) -> None:
        """Hand a learned strategy the step's per-sample losses (:meth:`LearnedStrategy.observe`)."""
        with torch.no_grad():
            self.strategy.observe(StepRecord(
                x=x, y=y, student_logits=logits.detach(), teacher_logits=teacher_out.logits.detach(),
                student_ce=F.cross_entropy(logits.detach(), y, reduction="none"),
                logit_loss=per_teacher.detach(), selection=selection,
                student_feature=None if student_feature is None else student_feature.detach(),
                teacher_features=None if teacher_out.features is None or not self.use_features
                else [f.detach() for f in teacher_out.features],
                feature_loss=None if per_feature is None else per_feature.detach(),
                alpha=self.alpha, beta=self.beta, gamma=self.gamma,
            ))

    @property
    def updates_after_step(self) -> bool:
        """Whether :meth:`after_step` does anything: a learned strategy's own update."""
        return self.strategy.learns

    def after_step(self, optimizer, step: int, steps_per_epoch: int) -> None:
        """Called by the engine after the optimizer step: a learned strategy's own update
        (:meth:`LearnedStrategy.after_step`); nothing for the others."""
        if self.strategy.learns:
            self.strategy.after_step(AfterStep(self, optimizer, step, steps_per_epoch, self.epoch))

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called by the engine before the epoch's evaluation and checkpoint: a learned
        strategy's end-of-epoch update (:meth:`LearnedStrategy.end_epoch`) and the mean of
        its own objective over the epoch as ``strategy_loss`` (nan without updates); nothing
        for the others."""
        if not self.strategy.learns:
            return {}
        self.strategy.end_epoch(epoch)
        own = self.strategy.epoch_loss()
        return {"strategy_loss": math.nan if own is None else own}

    def frozen_modules(self) -> list[nn.Module]:
        """The teachers (frozen) and a learned strategy's networks (which average their own
        gradients): what DDP leaves alone."""
        return [self.ensemble, self.strategy_networks]

    def _head_weights(self, adapted: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """CA-MKD's feature weights ``[K,B]``: ``(1 - softmax_k CE(head_k(a_k(f_s)), y)) /
        (K - 1)``, on the graph (``distiller_zoo/CAMKD.py`` ``CAMKD.forward`` on the output
        of ``models/util.py`` ``CalWeight.forward``); one teacher gets weight 1."""
        head_ce = torch.stack([
            F.cross_entropy(upcast(teacher.forward_head(a)), y, reduction="none")
            for teacher, a in zip(self._active(self.ensemble.teachers), adapted)
        ])
        k = head_ce.shape[0]
        if k == 1:
            return torch.ones_like(head_ce)
        return (1.0 - torch.softmax(head_ce, dim=0)) / (k - 1)

    def _reduction_scale(self, mass: float, k: int) -> float:
        """1 for ``teacher_reduction="sum"``; ``mass / K`` for ``"mean"``."""
        return 1.0 if self.teacher_reduction == "sum" else mass / k

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
        """What a checkpoint needs to continue: ``{"student", "adapters",
        "strategy_networks", "strategy"}`` (the teachers are rebuilt from their own
        checkpoints)."""
        return {
            "student": self.student.state_dict(),
            "adapters": self.adapters.state_dict(),
            "strategy_networks": self.strategy_networks.state_dict(),
            "strategy": self.strategy.state_dict(),
        }

    def load_learner_state_dict(self, state: dict) -> None:
        """Restore :meth:`learner_state_dict` output (strict: every key must fit)."""
        missing = {"student", "adapters", "strategy"} - set(state)
        if missing:
            raise ModelError(f"learner state lacks {sorted(missing)}; it holds {sorted(state)}")
        self.student.load_state_dict(state["student"])
        self.adapters.load_state_dict(state["adapters"])
        self.strategy_networks.load_state_dict(state.get("strategy_networks", {}))
        self.strategy.load_state_dict(state["strategy"])


def unlabeled_teacher_ce(ce: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                         rule: str, known: torch.Tensor | None = None) -> torch.Tensor:
    """The teachers' CE ``[K,B]`` that strategies read, with each unlabelled sample's entry
    (0 from ``cross_entropy``'s ``ignore_index``) replaced by a label-free stand-in:

    - ``entropy``: ``H(softmax(t_ki)) = -sum_c p log p``, teacher k's CE against its own
      prediction (low for a confident teacher, as CE is low for a correct one);
    - ``labeled``: teacher k's mean CE over the batch's labelled samples (the batch's verdict
      on the teacher, shared by its unlabelled samples); a batch without labelled samples
      falls back to ``entropy``.

    ``known [K,B]`` (default: every teacher knows every labelled sample) marks the entries
    that are real CEs: a teacher of part of the label space has none on a sample of a class
    it does not know, and gets the stand-in there too (``labeled``: its mean over the
    samples it knows).
    """
    known = (y != UNLABELED).unsqueeze(0) if known is None else known
    entropy = torch.special.entr(torch.softmax(upcast(logits), dim=-1)).sum(-1)
    if rule == "entropy":
        proxy = entropy
    else:
        count = known.sum(1, keepdim=True)
        zero = torch.zeros((), dtype=ce.dtype, device=ce.device)
        mean = torch.where(known, ce, zero).sum(1, keepdim=True) / count.clamp(min=1)
        proxy = torch.where(count > 0, mean.expand_as(ce), entropy)
    return torch.where(known, ce, proxy)


def _rows(per_teacher: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The rows ``ids`` of a ``[K, ...]`` tensor (itself when they are all of them, in order)."""
    if len(ids) == per_teacher.shape[0]:
        return per_teacher
    return per_teacher.index_select(0, torch.tensor(ids, device=per_teacher.device))


def _subset(out: EnsembleOutput, keep: list[int]) -> EnsembleOutput:
    """The teacher output of the teachers ``keep`` only."""
    index = torch.tensor(keep, device=out.logits.device)
    feats = [out.features[i] for i in keep] if out.features is not None else None
    return EnsembleOutput(out.logits.index_select(0, index), feats,
                          out.ce.index_select(0, index), out.ce_mean.index_select(0, index))


def _scatter(values: torch.Tensor, active: list[int] | None, full: EnsembleOutput) -> torch.Tensor:
    """``[K_active]`` per-teacher values placed into ``[K]`` (0 for the left-out teacher)."""
    if active is None:
        return values
    out = torch.zeros(full.logits.shape[0], dtype=values.dtype, device=values.device)
    return out.index_copy(0, torch.tensor(active, device=values.device), values)


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


def _stage(model: nn.Module, role: str, stage: int, taps: str = "stages") -> str:
    """The module name of stage ``stage`` (Python index) of ``model``'s listed stages:
    ``model.repdistiller_feature_names`` when ``taps == "repdistiller"`` and the model lists
    them, else ``model.feature_names``."""
    names = None
    if taps == "repdistiller":
        names = getattr(model, "repdistiller_feature_names", None)
    names = names or getattr(model, "feature_names", None)
    if not names:
        raise ConfigError(
            f"the {role} ({type(model).__name__}) does not list its stage features "
            "(model.feature_names); name the module to tap (student_feature / "
            "teacher_features, as in model.named_modules())"
        )
    if not -len(names) <= stage < len(names):
        raise ConfigError(
            f"loss.feature_stage {stage} is out of range for the {role} "
            f"({type(model).__name__}), whose {len(names)} stages are {names}; use 0.."
            f"{len(names) - 1} or -1 for the last"
        )
    return names[stage]


def _scaled(weight: float, loss: torch.Tensor) -> torch.Tensor:
    """``weight * loss``, without the op when the weight is 1 (``1.0 * x`` is exactly x)."""
    return loss if weight == 1.0 else weight * loss
