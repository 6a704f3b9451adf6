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
from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureBatch, feature_loss_per_teacher, loss_info, run_per_teacher,
)
from multikd.method.feature_term import (
    build_feature_modules, check_heads, check_teacher_features, feature_module_problems,
    head_weights, install_loss_taps, stage_name, strategy_feature_weights, teacher_feature_names,
)
from multikd.method.logit_term import LogitTerm, scaled
from multikd.method.loss_spec import LossSpec
from multikd.method.losses import labeled_ce, weighted_teacher_mean
from multikd.method.routing import partial_teacher_problems, route_selection, strategy_ce
from multikd.method.self_teacher import SelfTeacher, idle_teachers_info, scatter, subset
from multikd.method.registry import REQUIRED
from multikd.method.strategies import (
    AfterStep,
    StepContext,
    StepRecord,
    Strategy,
    StrategySpec,
    check_finite,
)
from multikd.models.taps import FeatureTap, dry_run



class MultiTeacherDistiller(nn.Module):
    """A student learning from a frozen :class:`~multikd.method.ensemble.TeacherEnsemble` whose
    teachers a :class:`~multikd.method.strategies.Strategy` weights per batch (Gu et al. 2023's
    CE-screened, feature + logit multi-teacher distillation, see DESIGN.md):

        total = alpha * CE(s, y)
              + beta  * r_w * mean_i sum_k w_ki * L(s_i, t_ki)
              + gamma * r_v * mean_i sum_k v_ki * D_k(f_s, f_tk)_i

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
    - ``D_k`` the ``feature_loss`` (the registry :mod:`multikd.method.feature_losses`, its
      own ``feature_params``): a hint loss on ``a_k(f_s)`` and ``f_tk`` (default ``mse``,
      FitNets' ``mean_e (a_k(f_s)_i - f_tk,i)^2``), with ``f_s`` the student's
      ``student_feature`` and ``f_tk`` teacher k's ``teacher_features[k]`` (default: stage
      ``feature_stage`` of ``model.feature_names``, or of ``repdistiller_feature_names``
      with ``taps="repdistiller"``) and ``a_k`` an ``adapter`` (:mod:`multikd.method.
      adapters`) to teacher k's shape; or a feature module per teacher (AT, CRD, ReviewKD...)
      on the maps it reads of both models (:mod:`multikd.method.feature_term`), trained and
      checkpointed with the student. Shapes come from one dry pass on ``example_input``;
    - the feature term counts from epoch ``feature_start_epoch`` on (:meth:`set_epoch`;
      CA-MKD's loop leaves it out in epoch 1: it is computed, so adapter BatchNorm statistics
      move as there, but not added); ``feature_grad=False`` detaches it (CA-MKD's FitNet-MKD).

    Teachers of part of the label space (``ensemble.class_maps.partial``): with
    ``label_merge="restricted"`` each is compared, scored and weighted on its own classes
    only (:mod:`multikd.method.routing`, :mod:`multikd.method.logit_term`); ``concat``
    merges them into one teacher over all classes, distilled with weight 1 (the naive
    baseline; strategy ``uniform``, no features).

    Every option that is ``"reference"`` (or None for the two stage/epoch numbers) takes
    the strategy's value (:attr:`Strategy.reference`), so e.g. ``ca-mkd`` computes the loss
    of CA-MKD's public code. With ``gamma == 0`` there are no adapters and no taps, the
    teachers' features are not requested, and ``feat`` is logged as 0.

    ``forward(x, y, teacher_out=None, index=None)`` returns ``(logits [B,C], losses, info)``:
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

    Only the student, adapters and feature modules train (:meth:`trainable_parameters`);
    the teachers stay frozen, in eval mode. :meth:`learner_state_dict` holds what a
    checkpoint needs and :meth:`load_learner_state_dict` restores it.
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
        train_labels: torch.Tensor | None = None,
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
        info = loss_info(self.feature_loss)
        self.feature_reads = str(info["reads"])
        self.needs_index = bool(info["needs_index"]) and self.gamma > 0
        self.partial_labels = bool(partial_labels)
        self.unlabeled_ce = loss.unlabeled_ce
        self.logit_term = LogitTerm(loss, self.partial_labels)
        self.label_merge = loss.label_merge
        self.self_teacher = SelfTeacher(self_teacher, self_from_epoch)
        self.student = student
        self.ensemble = ensemble
        self.strategy = strategy
        self.epoch = 1
        self.use_features = self.gamma > 0
        self.may_leave_parameters_unused = self.use_features and self.feature_start_epoch > 1
        self.student_feature = None
        self.student_loss_taps: list[str] = []
        self.feature_modules = nn.ModuleList()
        self._tap: FeatureTap | None = None
        self._finite_checked = False
        self.check_every_cpu_batch = True
        self._zero: torch.Tensor | None = None
        self.logit_term.check()
        example = ensemble.example_input if example_input is None else example_input
        if self.use_features:
            self.student_feature = loss.student_feature or stage_name(
                student, "student", self.feature_stage, self.taps
            )
            ensemble.set_feature_names(teacher_feature_names(
                ensemble, loss.teacher_features, self.feature_stage, self.taps))
            feature_module_problems(strategy, self.feature_loss, self.feature_weights)
            if not self.hint_loss:  # a feature module reads its own maps on both sides
                self.student_loss_taps = install_loss_taps(student, ensemble, self.feature_reads,
                                                           info["teacher_reads"])
            self._tap = FeatureTap(student, [self.student_feature, *self.student_loss_taps])
            if self.feature_weights == "teacher-head":
                check_heads(ensemble)
        student_out = dry_run(student, self._tap, example)
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
            partial_teacher_problems(strategy, self.logit_loss, self.use_features,
                                     self.feature_weights, self.label_merge)
        student_shape = teacher_shapes = None
        if self.use_features:
            student_shape = tuple(student_out[1][self.student_feature].shape[1:])
            teacher_shapes = [tuple(s) for s in ensemble.feature_shapes(example)]
            if self.hint_loss:
                self.adapters = build_adapters(
                    student_shape, teacher_shapes, relu=loss.adapter_relu, kind=self.adapter,
                )
            else:
                self.adapters = nn.ModuleList()
                self.feature_modules = build_feature_modules(
                    self.feature_loss, self.feature_params, student, ensemble.teachers,
                    [tuple(student_out[1][n].shape[1:]) for n in self.student_loss_taps],
                    ensemble.loss_tap_shapes(example), train_labels,
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

    @property
    def hint_loss(self) -> bool:
        """Whether the feature loss is a hint loss (through adapters), not a feature module."""
        return self.feature_reads == "hint"

    def set_epoch(self, epoch: int) -> None:
        """The 1-based epoch the next steps belong to (DKD's warmup, the feature term's
        start); at a self-teacher's epoch, the student is copied into it."""
        self.epoch = int(epoch)
        if self.self_teacher.due(self.epoch):
            self.snapshot_self_teacher()

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_out: EnsembleOutput | None = None,
                index: torch.Tensor | None = None):
        """``(logits, losses, info)`` of one step (:class:`LearnerContract`); ``index``:
        each sample's index in the training set, for a feature loss that ``needs_index``."""
        if teacher_out is None:
            teacher_out = self.ensemble(x, y, features=self.use_features)
        self._check_teacher_out(teacher_out, y, x.device)
        logits, student_feature, adapted, maps = self._student_pass(x)
        if self.needs_index and index is None:
            raise ConfigError(f"feature loss {self.feature_loss!r} needs each sample's index "
                              "in the training set: pass index= (the engine does)")
        full_out, active = teacher_out, self._active_teachers()
        if active is not None:  # a self-teacher before its epoch takes no part
            if not active:
                return self._ce_only(logits, y, full_out)
            teacher_out = subset(full_out, active)
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
            selection = route_selection(selection, self.class_maps, y, ids)
        weights = selection.weights
        teacher_logits = teacher_out.logits.detach()
        ce = labeled_ce(logits, y) if self.partial_labels else F.cross_entropy(logits, y)
        if self.class_maps is not None and self.label_merge == "concat":
            merged = self.class_maps.concatenate(teacher_logits, ids)
            per_teacher = self.per_teacher_logit_loss(logits, merged, y)
            kd = per_teacher.mean()
        else:
            per_teacher = self.per_teacher_logit_loss(logits, teacher_logits, y, ids)
            kd = scaled(self._reduction_scale(strategy.weight_mass(weights.shape[0]),
                                              weights.shape[0]) * selection.scale,
                        weighted_teacher_mean(per_teacher, weights))
        kd = self.logit_term.warmed(kd, self.epoch)
        total = scaled(self.alpha, ce) + scaled(self.beta, kd)
        per_feature = None
        if self.use_features:
            feat, per_feature = self._feature_term(adapted, teacher_out, selection, y,
                                                   maps, index)
            if self.epoch >= self.feature_start_epoch:
                total = total + scaled(self.gamma, feat)
        else:
            feat = self._zero_on(logits.device)
        if strategy.learns:
            self._observe(x, y, logits, student_feature, teacher_out, per_teacher, per_feature,
                          selection)
        with torch.no_grad():  # no graph: the detach()es it saves would be ops
            info = {
                "teachers": list(self.ensemble.names),
                "weights": scatter(weights.mean(1), active, full_out),
                "ce": (teacher_ce.mean(1) if teacher_ce is not teacher_out.ce
                       else teacher_out.ce_mean).detach().float(),
                "kept": scatter(selection.kept.float().mean(1), active, full_out),
            }
            if active is not None:
                every = list(range(full_out.logits.shape[0]))
                info["ce"] = self._strategy_ce(full_out, y, every).mean(1).detach().float()
        return logits, {"ce": ce, "kd": kd, "feat": feat, "total": total}, info

    # ------------------------------------------------------------------ self-teacher
    def _active_teachers(self) -> list[int] | None:
        """Indices of the teachers that take part now (:meth:`SelfTeacher.active`)."""
        return self.self_teacher.active(self.ensemble.num_teachers)

    def _ce_only(self, logits, y, teacher_out):
        """The step of a run whose only teacher is the student itself, before its epoch."""
        ce = labeled_ce(logits, y) if self.partial_labels else F.cross_entropy(logits, y)
        zero = self._zero_on(logits.device)
        info = idle_teachers_info(self.ensemble.names, teacher_out)
        return logits, {"ce": ce, "kd": zero, "feat": zero, "total": scaled(self.alpha, ce)}, info

    def snapshot_self_teacher(self) -> None:
        """Copy the student into the self-teacher (frozen, eval mode) and let it take part."""
        self.self_teacher.snapshot(self.student, self.ensemble.teachers)

    def self_teacher_state(self) -> dict | None:
        """The self-teacher's snapshot for a checkpoint (None before its epoch or without one)."""
        return self.self_teacher.state(self.ensemble.teachers)

    def load_self_teacher_state(self, state: dict | None) -> None:
        self.self_teacher.load(self.ensemble.teachers, state)

    def forward_student(self, x: torch.Tensor):
        """``(logits [B,C], tapped feature or None, adapted features (one per teacher))``."""
        return self._student_pass(x)[:3]

    def _student_pass(self, x: torch.Tensor):
        """:meth:`forward_student`'s three and the student's maps a feature module reads
        (``student_loss_taps``, in order; empty for a hint loss)."""
        if self._tap is None:
            return self.student(x), None, [], []
        logits, tapped = self._tap(x)
        feature = tapped[self.student_feature]
        maps = [tapped[name] for name in self.student_loss_taps]
        return logits, feature, [adapter(feature) for adapter in self.adapters], maps

    def per_teacher_logit_loss(self, logits, teacher_logits, y,
                               ids: Sequence[int] | None = None) -> torch.Tensor:
        """``[K,B]``: the configured logit loss of the student against each teacher
        (:meth:`LogitTerm.per_teacher <multikd.method.logit_term.LogitTerm.per_teacher>`;
        ``ids``: the ensemble index of each row of ``teacher_logits``)."""
        return self.logit_term.per_teacher(logits, teacher_logits, y, self.class_maps, ids)

    def _strategy_ce(self, out: EnsembleOutput, y: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """The teachers' CE ``[K,B]`` that the strategy reads (:func:`routing.strategy_ce
        <multikd.method.routing.strategy_ce>`)."""
        return strategy_ce(out, y, ids, self.class_maps, self.partial_labels, self.unlabeled_ce)

    def per_teacher_feature_loss(self, adapted, teacher_features, maps=(), teacher_maps=None,
                                 y=None, index=None) -> torch.Tensor:
        """``[K,B]``: the feature loss against each teacher: a hint loss (default ``mse``:
        ``mean_e (a_k(f_s)_i - f_tk,i)^2``) on the adapted student feature and each teacher's
        (as its adapter compares it, :meth:`FeatureAdapter.target`), or each teacher's
        feature module on the student's ``maps`` and its ``teacher_maps``."""
        if not self.hint_loss:
            return run_per_teacher(self._active(self.feature_modules), maps, teacher_maps,
                                   FeatureBatch(y, index, self.epoch))
        targets = [a.target(f.detach()) for a, f in zip(self._active(self.adapters),
                                                          teacher_features)]
        return feature_loss_per_teacher(adapted, targets, self.feature_loss, self.feature_params)

    def _active(self, per_teacher: Sequence) -> list:
        """The entries of ``per_teacher`` (one per teacher) of the teachers taking part."""
        active = self._active_teachers()
        return list(per_teacher) if active is None else [per_teacher[i] for i in active]

    def _feature_term(self, adapted, teacher_out, selection, y, maps=(), index=None):
        """``r_v * mean_i sum_k v_ki * mean_e (a_k(f_s)_i - f_tk,i)^2`` (see the class doc),
        and the per-teacher, per-sample terms ``[K,B]`` it weights."""
        k = selection.weights.shape[0]
        if self.feature_weights == "teacher-head":
            v, mass, scale = self._head_weights(adapted, y), 1.0, 1.0
        else:
            v, mass, scale = strategy_feature_weights(selection, self.feature_weights,
                                                      self.strategy.weight_mass(k))
        per_feature = self.per_teacher_feature_loss(adapted, teacher_out.features, maps,
                                                    teacher_out.stage_features, y, index)
        feat = scaled(self._reduction_scale(mass, k) * scale,
                      weighted_teacher_mean(per_feature, v))
        return (feat if self.feature_grad else feat.detach()), per_feature

    def _observe(self, x, y, logits, student_feature, teacher_out, per_teacher, per_feature,
                 selection) -> None:
        """Hand a learned strategy the step's per-sample losses (:meth:`LearnedStrategy.observe`)."""
        features = teacher_out.features if self.use_features else None
        self.strategy.observe(StepRecord.detached(
            x, y, logits, teacher_out.logits, per_teacher, selection, student_feature, features,
            per_feature, (self.alpha, self.beta, self.gamma), teacher_out.stage_features))

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
        """CA-MKD's feature weights ``[K,B]`` of the teachers taking part
        (:func:`~multikd.method.feature_term.head_weights`)."""
        return head_weights(self._active(self.ensemble.teachers), adapted, y)

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
        self.ensemble.check_output(out, y.shape[0])
        if self.use_features:
            check_teacher_features(out, self.ensemble.names, self.adapters, self.hint_loss)
        if not self._finite_checked or (self.check_every_cpu_batch and device.type == "cpu"):
            check_finite(out.ce, out.logits, self.ensemble.names)
            self._finite_checked = True

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's trainable parameters, the adapters' and the feature modules'
        (never a teacher's)."""
        student = [p for p in self.student.parameters() if p.requires_grad]
        return (student + list(self.adapters.parameters())
                + [p for p in self.feature_modules.parameters() if p.requires_grad])

    def learner_state_dict(self) -> dict:
        """What a checkpoint needs to continue: ``{"student", "adapters",
        "strategy_networks", "strategy"}``, and ``"feature_modules"`` (each teacher's
        feature-loss module: VID's regressors, CRD's memory bank...) where there are any;
        the teachers are rebuilt from their own checkpoints."""
        state = {
            "student": self.student.state_dict(),
            "adapters": self.adapters.state_dict(),
            "strategy_networks": self.strategy_networks.state_dict(),
            "strategy": self.strategy.state_dict(),
        }
        if len(self.feature_modules):
            state["feature_modules"] = self.feature_modules.state_dict()
        return state

    def load_learner_state_dict(self, state: dict) -> None:
        """Restore :meth:`learner_state_dict` output (strict: every key must fit)."""
        missing = {"student", "adapters", "strategy"} - set(state)
        if missing:
            raise ModelError(f"learner state lacks {sorted(missing)}; it holds {sorted(state)}")
        self.student.load_state_dict(state["student"])
        self.adapters.load_state_dict(state["adapters"])
        self.feature_modules.load_state_dict(state.get("feature_modules", {}))
        self.strategy_networks.load_state_dict(state.get("strategy_networks", {}))
        self.strategy.load_state_dict(state["strategy"])
