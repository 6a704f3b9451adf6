"""The feature term of a distillation step and the taps it reads:

    r_v * mean_i sum_k v_ki * D(a_k(f_s)_i, f_tk,i)

``f_s`` the student's tapped feature, ``f_tk`` teacher k's, ``a_k`` the adapter to teacher
k's shape (:mod:`multikd.method.adapters`), ``D`` the feature loss ``loss.feature_loss``
(:mod:`multikd.method.feature_losses`; ``mse``: FitNets' hint ``mean_e (.)^2``), ``v`` the
weights of ``loss.feature_weights``: the strategy's, uniform ``1/K``, or CA-MKD's
``teacher-head`` weights (:func:`head_weights`); ``r_v`` the reduction scale of
``loss.teacher_reduction``. Which module is tapped is named by stage
(:func:`stage_name`) or given.

A feature loss that is a module per teacher (:class:`~multikd.method.feature_losses.
FeatureLoss`: AT, CRD, ReviewKD...) replaces ``D(a_k(f_s), f_tk)`` by its own
``l_k(maps_s, maps_tk)`` on the maps it reads on both sides (:func:`install_loss_taps`),
with no adapter; the one-stage tap stays for the strategies that read it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ConfigError, ModelError
from multikd.method.ensemble import EnsembleOutput, TeacherEnsemble
from multikd.method.feature_losses import (
    FEATURE_LOSS_REGISTRY, FeatureSetup, is_hint, loss_info, tap_names,
)
from multikd.method.losses import upcast
from multikd.method.strategies import Selection, Strategy


def stage_name(model: nn.Module, role: str, stage: int, taps: str = "stages") -> str:
    """The module name of stage ``stage`` (Python index) of ``model``'s listed stages:
    ``model.repdistiller_feature_names`` when ``taps == "repdistiller"`` and the model lists
    them, else ``model.feature_names`` (a model's optional metadata, as timm's
    ``feature_info``)."""
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


def teacher_feature_names(ensemble: TeacherEnsemble, given: Sequence[str | None] | None,
                          stage: int, taps: str) -> list[str]:
    """The module tapped on each teacher: ``given`` (one per teacher), else the one the
    ensemble already taps, else stage ``stage`` of each teacher."""
    if given is not None:
        names = list(given)
        if len(names) != ensemble.num_teachers or any(n is None for n in names):
            raise ConfigError(
                f"with gamma > 0 every teacher needs a feature to match: got teacher "
                f"features {names} for teachers {ensemble.names}"
            )
        return names
    return [
        tapped or stage_name(teacher, f"teacher {name!r}", stage, taps)
        for teacher, tapped, name in zip(ensemble.teachers, ensemble.feature_names, ensemble.names)
    ]


def check_heads(ensemble: TeacherEnsemble) -> None:
    """``teacher-head`` feature weights run each teacher's own head on the adapted student
    feature: the tap must be the stage that head reads (the last) and the head must exist."""
    for teacher, name, tapped in zip(ensemble.teachers, ensemble.names, ensemble.feature_names):
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


def head_weights(teachers: Sequence[nn.Module], adapted: list[torch.Tensor],
                 y: torch.Tensor) -> torch.Tensor:
    """CA-MKD's feature weights ``[K,B]``: ``(1 - softmax_k CE(head_k(a_k(f_s)), y)) /
    (K - 1)``, on the graph (``distiller_zoo/CAMKD.py`` ``CAMKD.forward`` on the output
    of ``models/util.py`` ``CalWeight.forward``); one teacher gets weight 1."""
    head_ce = torch.stack([
        F.cross_entropy(upcast(teacher.forward_head(a)), y, reduction="none")
        for teacher, a in zip(teachers, adapted)
    ])
    k = head_ce.shape[0]
    if k == 1:
        return torch.ones_like(head_ce)
    return (1.0 - torch.softmax(head_ce, dim=0)) / (k - 1)


def feature_module_problems(strategy: Strategy, feature_loss: str, feature_weights: str) -> None:
    """Refuse, with the reason, what a feature module (a non-hint feature loss) cannot be
    combined with: CA-MKD's ``teacher-head`` weights and the learned strategies both read
    the student's feature through each teacher's adapter, which only hint losses have."""
    if is_hint(feature_loss):
        return
    if feature_weights == "teacher-head":
        raise ConfigError(
            "loss.feature_weights teacher-head runs each teacher's head on the student feature "
            f"through that teacher's adapter, which only hint losses (mse) have; feature loss "
            f"{feature_loss!r} reads its own maps: set loss.feature_weights strategy or uniform"
        )
    if strategy.reads_adapted:
        raise ConfigError(
            f"strategy {strategy.name!r} reads the student's feature through each teacher's "
            "adapter (its state: their cosine with the teacher's), adapters that only hint "
            f"losses build and train; feature loss {feature_loss!r} has none: use "
            "loss.feature_loss mse with it"
        )
    if strategy.learns and loss_info(feature_loss)["stateful"]:
        raise ConfigError(
            f"strategy {strategy.name!r} re-evaluates the feature loss in virtual steps, which "
            f"would move feature loss {feature_loss!r}'s own state (its memory bank) outside "
            "the real steps: use a feature loss without state (at, nst, vid, reviewkd...)"
        )


def install_loss_taps(student: nn.Module, ensemble: TeacherEnsemble, reads: str,
                      teacher_reads: str | None = None) -> list[str]:
    """Tap what a feature module reads on every teacher (``teacher_reads``, default
    ``reads``; ``EnsembleOutput.stage_features``); the student's module names for ``reads``."""
    ensemble.set_loss_taps([
        tap_names(teacher, teacher_reads or reads, f"teacher {name!r}")
        for teacher, name in zip(ensemble.teachers, ensemble.names)
    ])
    return tap_names(student, reads, "student")


def build_feature_modules(name: str, params: dict, student: nn.Module,
                          teachers: Sequence[nn.Module], student_shapes: list[tuple],
                          teacher_shapes: list[list[tuple]], train_labels) -> nn.ModuleList:
    """Feature loss ``name``'s module for each teacher, from its
    :class:`~multikd.method.feature_losses.FeatureSetup`."""
    cls = FEATURE_LOSS_REGISTRY[name]
    return nn.ModuleList(
        cls.build(FeatureSetup(student, teacher, student_shapes, shapes, train_labels), **params)
        for teacher, shapes in zip(teachers, teacher_shapes)
    )


def check_teacher_features(out: EnsembleOutput, names: Sequence[str], adapters: nn.ModuleList,
                           hint: bool) -> None:
    """The teacher output carries what the feature term reads: every teacher's feature, of
    its adapter's shape, and for a feature module every teacher's loss maps."""
    shapes = [adapter.out_shape for adapter in adapters] if hint else [None] * len(names)
    for name, feature, shape in zip(names, out.features, shapes):
        if feature is None:
            raise ConfigError(
                f"gamma > 0 needs every teacher's feature, but the teacher output has "
                f"none for {name!r} (cached logits carry no features): set gamma to 0, "
                "or pass teacher outputs computed with the teachers' feature taps"
            )
        if shape is not None and tuple(feature.shape[1:]) != shape:
            raise ModelError(
                f"teacher {name!r} feature has shape {tuple(feature.shape[1:])} per "
                f"sample but its adapter was built for {shape}: the shared teacher pass "
                "must tap the same teacher features as this distiller"
            )
    if not hint and out.stage_features is None:
        raise ConfigError(
            "the feature loss reads each teacher's own maps, but the teacher output has none: "
            "the shared teacher pass must tap what this distiller's feature loss reads"
        )


def strategy_feature_weights(selection: Selection, mode: str, mass: float):
    """``(v [K,B], mass, scale)`` of ``loss.feature_weights`` ``strategy`` (the
    selection's feature weights where it gives them, else its weights; the strategy's
    ``mass`` and scale) or ``uniform`` (1/K, mass K)."""
    weights = selection.weights
    if mode == "strategy":
        v = weights if selection.feature_weights is None else selection.feature_weights
        return v, mass, selection.scale
    k = weights.shape[0]
    return torch.full_like(weights, 1.0 / k), float(k), 1.0
