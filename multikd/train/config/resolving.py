"""From a config as given to the resolved one a run saves: every implicit choice made
explicit (learning rate, LR milestones, teacher names and classes, the strategy's seed and
reference loss values, the run directory) and every value checked, all problems reported
together in one :class:`~multikd.errors.ConfigError`."""

from __future__ import annotations

import math
from pathlib import Path

from multikd.errors import ConfigError, Problems
from multikd.train.config.schema import NO_TEACHER, SMALL_LR_ARCHS, RunConfig, TeacherConfig
from multikd.train.config.sources import load_yaml
from multikd.train.config.typed import mapping_keys


def default_milestones(epochs: int) -> list[int]:
    """150, 180, 210 of 240 epochs, scaled: 62.5%, 75% and 87.5% of the run."""
    return sorted({max(1, round(epochs * f)) for f in (0.625, 0.75, 0.875)})


def default_lr(arch: str) -> float:
    """0.05, or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 (the CIFAR KD recipe)."""
    return 0.01 if arch.lower() in SMALL_LR_ARCHS else 0.05


def _canonical_arch(arch: str) -> str:
    from multikd.models import TIMM_PREFIX, canonical_name

    if arch.startswith(TIMM_PREFIX):
        return arch
    return canonical_name(arch)


def resolve(config: RunConfig) -> RunConfig:
    """A copy with every implicit choice made explicit, validated.

    Independent checks (each model name, the values, the strategy) all run; their problems
    are reported together in one :class:`ConfigError`.
    """
    cfg = RunConfig.from_dict(config.to_dict())
    problems = Problems()
    with problems.check():
        cfg.model.arch = _canonical_arch(cfg.model.arch)
    for teacher in cfg.teachers:
        if teacher.self_from_epoch is not None:  # the student's own architecture
            teacher.arch, teacher.checkpoint = cfg.model.arch, None
            teacher.name = teacher.name or "self"
            continue
        with problems.check():
            teacher.arch = _canonical_arch(teacher.arch)
        if teacher.classes is None and teacher.checkpoint:
            with problems.check():
                teacher.classes = recorded_classes(teacher.checkpoint)
    o = cfg.optim
    if o.lr is None and not problems:
        o.lr = default_lr(cfg.model.arch)
    if o.milestones is None:
        o.milestones = default_milestones(o.epochs)
    for message in _problems_of(cfg):
        problems.add(message)
    if cfg.kind == "distill":
        _name_teachers(cfg.teachers)
        if not any(key.startswith("strategy.params.") for key in non_finite_values(cfg)):
            with problems.check():  # (a NaN parameter is refused once, above)
                _resolve_strategy(cfg)
    else:
        from multikd.method.strategies import REFERENCE_LOSS_DEFAULTS

        cfg.loss.use_reference(REFERENCE_LOSS_DEFAULTS)  # unused: plain defaults
    problems.raise_if_any()
    if cfg.output.run_dir is None:
        tag = f"_{cfg.strategy.name}" if cfg.kind == "distill" else ""
        arch = cfg.model.arch.replace(":", "-").replace("/", "-")
        cfg.output.run_dir = f"runs/{cfg.kind}_{arch}{tag}_s{cfg.runtime.seed}"
    return cfg


def non_finite_values(cfg: RunConfig) -> dict[str, float]:
    """Every NaN or infinite number in ``cfg`` by its dotted key (``loss.temperature``,
    ``loss.logit_params.alpha``, ``data.synthetic.noise``), nested mappings and lists
    included. An infinite strategy parameter is left to its strategy, which may give it a
    meaning (ce-filter's ``margin: .inf`` keeps every teacher); a NaN never has one."""
    found: dict[str, float] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{key}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            if not (math.isinf(value) and key.startswith("strategy.params.")):
                found[key] = value

    walk(cfg.to_dict(), "")
    return found


def _problems_of(cfg: RunConfig) -> list[str]:
    """Every problem with the values of ``cfg`` (empty: none). A NaN or infinite number is
    refused here, before anything is built, and only once: the range checks skip it."""
    bad = non_finite_values(cfg)
    problems = [f"{key} must be a finite number, got {value}" for key, value in bad.items()]
    o = cfg.optim
    positive = {
        "optim.epochs": o.epochs,
        "optim.batch_size": o.batch_size,
        "optim.lr": o.lr,
        "loss.temperature": cfg.loss.temperature,
        "output.log_interval": cfg.output.log_interval,
    }
    for key, value in positive.items():
        if value is not None and value <= 0 and key not in bad:
            problems.append(f"{key} must be positive, got {value}")
    non_negative = {
        "optim.warmup_epochs": o.warmup_epochs,
        "optim.weight_decay": o.weight_decay,
        "optim.momentum": o.momentum,
        "loss.alpha": cfg.loss.alpha,
        "loss.beta": cfg.loss.beta,
        "loss.gamma": cfg.loss.gamma,
        "data.val_size": cfg.data.val_size,
        "data.workers": cfg.data.workers,
    }
    for key, value in non_negative.items():
        if value < 0 and key not in bad:
            problems.append(f"{key} must be >= 0, got {value}")
    if o.warmup_epochs >= o.epochs and o.warmup_epochs > 0:
        problems.append(
            f"optim.warmup_epochs ({o.warmup_epochs}) must be smaller than optim.epochs "
            f"({o.epochs})"
        )
    if o.nesterov and o.momentum == 0:
        problems.append("optim.nesterov needs optim.momentum > 0")
    if cfg.kind == "distill" and not cfg.teachers:
        problems.append(NO_TEACHER)
    if cfg.kind != "distill" and cfg.teachers:
        problems.append(
            f"teachers are only used by distill; a {cfg.kind} run trains one model alone "
            "(remove the teachers or use `multikd distill`)"
        )
    problems.extend(_self_teacher_problems(cfg))
    problems.extend(_partial_teacher_problems(cfg))
    d = cfg.data
    unknown = [k for k in d.synthetic if k not in mapping_keys("data.synthetic")]
    if unknown:
        problems.append(
            f"unknown data.synthetic key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(mapping_keys('data.synthetic'))}"
        )
    if d.classes is not None and not is_class_list(d.classes):
        problems.append(
            f"data.classes must be a non-empty list of distinct class indices >= 0 (e.g. "
            f"--classes 0-49), got {d.classes!r}"
        )
    if "data.labeled_fraction" not in bad and (
            isinstance(d.labeled_fraction, bool)
            or not isinstance(d.labeled_fraction, (int, float))
            or not 0.0 <= d.labeled_fraction <= 1.0):
        problems.append(
            f"data.labeled_fraction must be a number in [0, 1] (the share of training images "
            f"that keep their label), got {d.labeled_fraction!r}"
        )
    elif d.labeled_fraction == 0 and cfg.kind != "distill":
        problems.append(
            f"data.labeled_fraction is 0: a {cfg.kind} run learns from labels only and would "
            "see none; give it a fraction > 0 (distill can learn from the teachers alone)"
        )
    elif d.labeled_fraction == 0 and cfg.loss.unlabeled_ce == "labeled":
        problems.append(
            "loss.unlabeled_ce labeled scores teachers on the batch's labelled samples, but "
            "data.labeled_fraction is 0 (none has a label): use loss.unlabeled_ce entropy"
        )
    rt = cfg.runtime
    if rt.teacher_cache_budget < 0:
        problems.append(
            f"runtime.teacher_cache_budget must be >= 0 bytes (0: unlimited), got "
            f"{rt.teacher_cache_budget}"
        )
    if rt.teacher_cache and cfg.kind == "distill" and cfg.loss.gamma > 0:
        problems.append(
            f"runtime.teacher_cache caches teacher logits only, but loss.gamma is "
            f"{cfg.loss.gamma} (the feature loss needs the teachers' features every step); "
            "set --gamma 0 or leave runtime.teacher_cache empty"
        )
    from multikd.data.batches import PIPELINES

    if cfg.data.pipeline not in PIPELINES:
        problems.append(
            f"unknown data.pipeline {cfg.data.pipeline!r}; valid: {', '.join(PIPELINES)}"
        )
    feats = cfg.loss.teacher_features
    if feats is not None and len(feats) != len(cfg.teachers):
        problems.append(
            f"loss.teacher_features names {len(feats)} modules for {len(cfg.teachers)} teachers; "
            "give one per teacher, or leave it null to use each teacher's last stage"
        )
    return problems


def _self_teacher_problems(cfg: RunConfig) -> list[str]:
    """What a self-teacher (``teachers[i].self_from_epoch``) cannot be combined with."""
    selfs = [t for t in cfg.teachers if t.self_from_epoch is not None]
    if not selfs:
        return []
    e, epochs = selfs[0].self_from_epoch, cfg.optim.epochs
    problems = []
    if len(selfs) > 1:
        problems.append("only one teacher can be the student itself (self_from_epoch)")
    if isinstance(e, bool) or not isinstance(e, int) or not 2 <= e < epochs:
        problems.append(
            f"a self-teacher's self_from_epoch must be an integer from 2 (the snapshot is the "
            f"student at the start of that epoch; at 1 it would be untrained) to "
            f"optim.epochs - 1 = {epochs - 1}, got {e!r}"
        )
    if cfg.runtime.teacher_cache:
        problems.append(
            "runtime.teacher_cache stores teacher logits once, but a self-teacher changes "
            "with the student: leave runtime.teacher_cache empty"
        )
    from multikd.method.strategies import STRATEGIES

    cls = STRATEGIES.get(str(cfg.strategy.name).strip().lower().replace("_", "-"))
    if cls is not None and (cls.learns or cls.name == "fixed"):
        problems.append(
            f"strategy {cls.name!r} is sized for a fixed set of teachers, but a self-teacher "
            "joins only at its epoch: use another strategy (uniform, ca-mkd, ce-filter, ...)"
        )
    return problems


def is_class_list(value) -> bool:
    """Whether ``value`` is a non-empty list of distinct class indices >= 0 (``data.classes``,
    ``teachers[].classes``)."""
    return (isinstance(value, list) and bool(value) and len(set(value)) == len(value)
            and all(not isinstance(c, bool) and isinstance(c, int) and c >= 0 for c in value))


def recorded_classes(checkpoint: str) -> list[int] | None:
    """The ``data.classes`` a multikd run recorded for the model in ``checkpoint`` (its
    config.yaml beside it, or in it when ``checkpoint`` is a run directory); None for a
    model of every class and for checkpoints from elsewhere (no config.yaml there)."""
    path = Path(checkpoint)
    config = (path if path.is_dir() else path.parent) / "config.yaml"
    if not config.is_file():
        return None
    data = load_yaml(config)
    classes = (data.get("data") or {}).get("classes") if isinstance(data, dict) else None
    if classes is not None and not (isinstance(classes, list)
                                    and all(isinstance(c, int) for c in classes)):
        raise ConfigError(f"{config}: data.classes must be a list of class indices, got "
                          f"{classes!r}")
    return classes


def _partial_teacher_problems(cfg: RunConfig) -> list[str]:
    """What teachers of part of the label space (``teachers[].classes``) cannot be combined
    with; the checks that need the student's class count run when the run is built."""
    partial = [t for t in cfg.teachers if t.classes is not None]
    problems = []
    for t in partial:
        if not is_class_list(t.classes):
            problems.append(
                f"teacher {t.name or t.arch}: classes must be a non-empty list of distinct "
                f"class indices >= 0, in the order of the teacher's outputs; got {t.classes!r}"
            )
    if not partial:
        return problems
    if cfg.data.classes is not None:
        problems.append(
            "data.classes restricts the student to part of the classes, and teachers[].classes "
            "places partial teachers in the student's classes: use one or the other"
        )
    return problems


def _resolve_strategy(cfg: RunConfig) -> None:
    """Check the strategy and its parameters; a strategy that draws random numbers gets the
    run's seed unless its own ``seed`` is given, so seeds vary its draws like the rest."""
    import inspect

    from multikd.method.strategies import STRATEGIES, create_strategy

    create_strategy(cfg.strategy.name, **cfg.strategy.params)
    cls = STRATEGIES[cfg.strategy.name.strip().lower().replace("_", "-")]
    cfg.loss.use_reference(cls.reference_loss())
    if cls.needs_labels and cfg.data.labeled_fraction == 0:
        raise ConfigError(
            f"strategy {cls.name!r} needs labelled samples ({cls.needs_labels}), but "
            "data.labeled_fraction is 0: keep some labels (e.g. --set data.labeled_fraction=0.1) "
            "or pick a strategy that works without labels (uniform, ebkd, aekd, ce-filter, ...)"
        )
    if cls.needs_features and cfg.loss.gamma <= 0:
        raise ConfigError(
            f"strategy {cls.name!r} weights teachers by the student's and the teachers' "
            f"features, but loss.gamma is {cfg.loss.gamma}, so none are tapped: set --gamma "
            "> 0 (the README's strategy table gives its reference value)"
        )
    if "seed" in inspect.signature(cls.__init__).parameters and "seed" not in cfg.strategy.params:
        cfg.strategy.params["seed"] = cfg.runtime.seed


def _name_teachers(teachers: list[TeacherConfig]) -> None:
    """Fill missing names with the architecture; make every name unique (``arch_2``...)."""
    used: set[str] = set()
    for teacher in teachers:
        base = teacher.name or teacher.arch
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        teacher.name = name
        used.add(name)
