"""From a resolved :class:`~multikd.train.config.RunConfig` to the objects a run trains.

The model being trained is built right after seeding and before anything else draws random
numbers, so with the same seed the student starts from the same weights in the student-alone
baseline and under every strategy: comparisons differ only in the teachers' guidance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from multikd.train import distributed as ddp
from multikd.train.config import RunConfig
from multikd.method.learner import LearnerContract, SupervisedLearner, missing_members
from multikd.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


@dataclass
class Learner:
    """What the engine trains: ``module`` (a :class:`~multikd.method.learner.LearnerContract`), the
    trained ``model`` inside it, and for distillation the frozen ``ensemble`` and the
    ``strategy`` (whose state, if any, is checkpointed)."""

    module: LearnerContract
    model: nn.Module
    ensemble: nn.Module | None = None
    strategy: object | None = None
    teacher_names: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.module, LearnerContract):
            raise ModelError(
                f"{type(self.module).__name__} is not a learner the engine can train: it lacks "
                f"{', '.join(missing_members(self.module))} (see "
                "multikd.method.learner.LearnerContract)"
            )


def build_data(cfg: RunConfig, seed: int):
    """The data splits of ``cfg.data`` (``multikd.data.DataSplits``); with
    ``runtime.teacher_cache``, or a feature loss that reads each sample's index (CRD's
    memory bank), the training split yields ``(image, label, index, view)``."""
    from multikd import data

    d = cfg.data
    if d.synthetic and d.dataset != "synthetic":
        raise ConfigError(
            f"data.synthetic options were given but data.dataset is {d.dataset!r}; "
            "they apply to --dataset synthetic only"
        )
    return data.build_datasets(
        d.dataset,
        data_root=d.data_root,
        val_size=d.val_size,
        seed=seed,
        synthetic=(d.synthetic or None) if d.dataset == "synthetic" else None,
        return_index=bool(cfg.runtime.teacher_cache) or needs_index(cfg),
        labeled_fraction=d.labeled_fraction,
        classes=d.classes,
        unlabeled_dir=d.unlabeled_dir or None,
    )


def partial_labels(cfg: RunConfig) -> bool:
    """Whether some training images have no label (``data.labeled_fraction`` < 1 or
    ``data.unlabeled_dir``): the losses then read labels through a mask."""
    return cfg.data.labeled_fraction < 1.0 or bool(cfg.data.unlabeled_dir)


def needs_index(cfg: RunConfig) -> bool:
    """Whether the run's feature loss reads each training sample's index."""
    from multikd.method.feature_losses import loss_info

    return (cfg.kind == "distill" and cfg.loss.gamma > 0
            and bool(loss_info(cfg.loss.feature_loss)["needs_index"]))


def build_learner(cfg: RunConfig, num_classes: int,
                  train_labels: torch.Tensor | None = None) -> Learner:
    """The trained model (+ teachers, strategy and distiller for ``distill``);
    ``train_labels``, the training split's labels, for a feature loss that samples by class
    (CRD)."""
    from multikd.models import create_model

    model = create_model(cfg.model.arch, num_classes=num_classes, checkpoint=cfg.model.checkpoint)
    partial = partial_labels(cfg)
    if cfg.kind != "distill":
        return Learner(SupervisedLearner(model, partial_labels=partial), model)

    from multikd.method.distiller import MultiTeacherDistiller
    from multikd.method.ensemble import TeacherEnsemble
    from multikd.method.strategies import create_strategy

    strategy = create_strategy(cfg.strategy.name, **cfg.strategy.params)
    teachers = []
    self_index = None
    for t in cfg.teachers:
        if t.self_from_epoch is not None:  # the student itself: a copy, filled at its epoch
            import copy

            self_index = len(teachers)
            teachers.append(copy.deepcopy(model))
            continue
        if t.checkpoint is None:
            log.warning("teacher %s has no checkpoint: it keeps its random initialization", t.name)
            teachers.append(create_model(t.arch, num_classes=num_classes if t.classes is None
                                         else len(t.classes)))
        else:
            teachers.append(_load_teacher(cfg, t, num_classes))
    names = [t.name for t in cfg.teachers]
    ensemble = TeacherEnsemble(teachers, names=names, classes=[t.classes for t in cfg.teachers],
                               num_classes=num_classes)
    _check_coverage(cfg, ensemble.class_maps)
    distiller = MultiTeacherDistiller(
        model,
        ensemble,
        strategy,
        cfg.loss,
        batch_size=cfg.optim.batch_size // max(1, ddp.detect().world_size),
        partial_labels=partial,
        self_teacher=self_index,
        self_from_epoch=None if self_index is None else cfg.teachers[self_index].self_from_epoch,
        train_labels=train_labels,
    )
    return Learner(distiller, model, distiller.ensemble, strategy, tuple(names))


def _load_teacher(cfg: RunConfig, t, num_classes: int) -> nn.Module:
    """Teacher ``t`` with its checkpoint's weights; a checkpoint trained on another number of
    classes than the run's data has (or than ``t.classes`` lists) is an error naming both."""
    from multikd.errors import CheckpointError
    from multikd.models import create_model
    from multikd.models.checkpoint import read_checkpoint, trained_classes

    ckpt = read_checkpoint(t.checkpoint)
    outputs = num_classes if t.classes is None else len(t.classes)
    try:
        return create_model(t.arch, num_classes=outputs, checkpoint=ckpt)
    except CheckpointError as err:
        trained = trained_classes(ckpt, t.arch)
        if trained is None or trained == outputs:
            raise
        try:  # the class count alone: the file fits the architecture with its own count
            create_model(t.arch, num_classes=trained, checkpoint=ckpt)
        except CheckpointError:
            raise err from None
    if t.classes is not None:
        raise ConfigError(
            f"teacher {t.name}: {ckpt.source} predicts {trained} classes, but its "
            f"teachers[].classes lists {outputs}; list the classes it was trained on, in the "
            "order of its outputs (a train-teacher --classes run records them itself)"
        ) from None
    d = cfg.data
    if d.classes is not None:
        data = f"data.classes keeps {num_classes} of the {d.dataset} classes"
    elif d.dataset == "synthetic":
        data = f"synthetic data with num_classes {num_classes}"
    else:
        data = f"{d.dataset} has {num_classes}"
    partial = ("; a teacher of part of these classes lists them in teachers[].classes"
               if trained < num_classes else "")
    raise ConfigError(
        f"teacher {t.name}: {ckpt.source} was trained on {trained} classes, but this run's "
        f"data has {num_classes} ({data}{_trained_on(t.checkpoint)}). Distill on the data "
        f"the teacher was trained on{partial}"
    ) from None


def _trained_on(checkpoint: str) -> str:
    """``; the teacher's run used synthetic data with num_classes 10``, read from the
    config.yaml of the run the checkpoint comes from ("" without one)."""
    from pathlib import Path

    from multikd.train.config import load_yaml

    config = Path(checkpoint).parent / "config.yaml"
    try:
        data = load_yaml(config).get("data") or {}
    except ConfigError:
        return ""
    dataset, synthetic = data.get("dataset"), data.get("synthetic") or {}
    if not isinstance(dataset, str):
        return ""
    if dataset == "synthetic" and isinstance(synthetic, dict) and "num_classes" in synthetic:
        dataset = f"synthetic data with num_classes {synthetic['num_classes']}"
    return f"; the teacher's run used {dataset}"


def _check_coverage(cfg: RunConfig, class_maps) -> None:
    """With teachers of part of the classes and no label read, every student class must be
    known to some teacher (nothing else could teach it)."""
    if cfg.data.labeled_fraction > 0:
        return
    from multikd.method.label_spaces import span

    missing = class_maps.uncovered()
    if missing:
        raise ConfigError(
            f"student classes {span(missing)} are in no teacher's classes "
            "(teachers[].classes) and data.labeled_fraction is 0, so no label is read: nothing "
            "can teach them. Add a teacher that knows them, or keep some labels "
            "(--set data.labeled_fraction=0.1)"
        )


def build_teacher_cache(cfg: RunConfig, ensemble, train_set, device: torch.device):
    """``CachedTeachers`` over ``ensemble`` for the training split when ``cfg`` turns the
    teacher cache on (distillation only), else None.

    The tables are keyed by the teachers' weights, the training images and everything of the
    runtime that changes the teachers' outputs in the last bits (device type, AMP,
    channels_last; ``batched=False`` keeps the keys of caches filled while batched teachers
    were an option), so a cache filled under one setting is never served under another.
    ``teacher_cache_budget`` 0 means no size limit.
    """
    rt = cfg.runtime
    if not rt.teacher_cache or ensemble is None:
        return None
    from multikd.train.cache import CachedTeachers, TeacherLogitCache

    compute = (f"device={device.type}|amp={rt.amp}|channels_last={rt.channels_last}"
               "|batched=False")
    if ensemble.class_maps.partial:  # the same weights placed in other classes: other logits
        compute += f"|classes={ensemble.class_maps.classes}"
    cache = TeacherLogitCache.for_teachers(
        rt.teacher_cache, ensemble.teachers, train_set, cfg.data.dataset, ensemble.num_classes,
        dtype=getattr(torch, rt.teacher_cache_dtype),
        budget=rt.teacher_cache_budget or None,
        compute=compute,
    )
    return CachedTeachers(ensemble, cache)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: the process's CUDA device when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"runtime.device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "runtime.device asks for CUDA but no CUDA device is available; use --device cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
