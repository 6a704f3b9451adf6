"""Run configuration: typed dataclasses, YAML files, ``--set section.key=value`` overrides.

A run is described by one :class:`RunConfig`. It is built from the defaults below (the
field's CIFAR recipe, see DESIGN.md), then a YAML file (``--config FILE``), then overrides
(``--set optim.lr=0.1``, or the CLI's sugar flags such as ``--lr 0.1``), and finally
:func:`resolve`\\ d: every value the run depends on is made explicit (learning rate, LR
milestones, teacher names, run directory). The resolved config is what a run saves as
``config.yaml``; loading that file gives back an equal ``RunConfig``.

Override values are typed by the dataclass field they set: the text is read with
``yaml.safe_load`` (so ``[1, 2]`` is a list, ``true`` a bool, ``{a: 1}`` a dict) and checked
against the field's type; ``str`` fields take the text verbatim. An unknown key or a value of
the wrong type is a :class:`~multikd.errors.ConfigError` that lists what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from multikd.errors import ConfigError, Problems
from multikd.method.loss_spec import LossSpec
from multikd.method.loss_spec import documented as _doc

LossConfig = LossSpec
"""The ``loss`` section: :class:`multikd.method.loss_spec.LossSpec`, defined once in the method
layer and handed whole to the distiller (this name stays for code that imports it here)."""

KINDS = ("teacher", "student", "distill")
REFERENCE = "reference"
SMALL_LR_ARCHS = ("mobilenetv2", "shufflev1", "shufflev2")
"""Students trained with lr 0.01 instead of 0.05 by the field's convention (CRD, mdistiller)."""
NO_TEACHER = ("distill needs at least one teacher: pass --teacher ARCH=CHECKPOINT (repeatable) "
              "or --teachers-from RUN_DIR ...")
"""The problem of a distill config without teachers (the CLI leaves it out when a teacher
flag it was given failed: that flag's own error says what is wrong)."""

REMOVED_KEYS = {
    ("runtime", "batched_teachers"): (
        False, "the vmapped teacher pass was removed (slower on the CPU and on an H100, see "
               "multikd/method/teacher_runner.py); teachers run one after another"),
}
"""Keys that are no longer options, with their old default and why: a file or ``--set``
that still gives one loads, with a one-line note (once per key and process)."""
_noted: set[tuple[str, str]] = set()
log = logging.getLogger(__name__)


def _choice(default, choices, doc: str):
    """A field whose value is one of ``choices``: a tuple, or a function returning one,
    called when a value is checked (the loss section's: :func:`multikd.method.loss_spec.choices`)."""
    return field(default=default, metadata={"choices": choices, "doc": doc})


@dataclass
class DataConfig:
    dataset: str = _doc("synthetic", "cifar100, cifar10 or synthetic (no files needed)")
    data_root: Optional[str] = _doc(None, "dataset folder (default: $MULTIKD_DATA, else ./data)")
    val_size: int = _doc(0, "validation images carved from the training set (0: none)")
    synthetic: dict = _doc({}, "options of the synthetic dataset (num_classes, train_size, ...)")
    workers: int = _doc(0, "DataLoader worker processes (per-sample pipeline only)")
    drop_last: bool = _doc(
        False, "skip the last incomplete training batch (CA-MKD's loop does: `continue`)"
    )
    pipeline: str = _doc(
        "batched",
        "batched: whole batches augmented on the training device (fast); per-sample: a torch "
        "DataLoader over the dataset (uses data.workers); both give the same batches bit for bit",
    )
    labeled_fraction: float = _doc(
        1.0, "share of the training images that keep their label (a fixed, seeded, "
        "class-balanced subset; 0: no label is read); the rest is an unlabelled transfer set"
    )
    classes: Optional[list[int]] = _doc(
        None, "train and test on these classes only, relabelled 0..m-1 in this order (a "
        "partial teacher, e.g. 0-49; CLI --classes 0-49,60); null: every class"
    )
    unlabeled_dir: str = _doc(
        "", "folder of extra unlabelled images (png/jpg/bmp, any size: resized to 32x32) added "
        "to the transfer set"
    )


@dataclass
class ModelConfig:
    """The model being trained: the student of ``distill``, the model of ``train-teacher``."""

    arch: str = _doc("resnet8x4", "zoo architecture or timm:<name>")
    checkpoint: Optional[str] = _doc(None, "initial weights (a checkpoint with key 'model')")


@dataclass
class TeacherConfig:
    arch: str = _doc("resnet32x4", "zoo architecture or timm:<name>")
    checkpoint: Optional[str] = _doc(None, "trained weights (e.g. RUN_DIR/checkpoint.pt)")
    name: Optional[str] = _doc(None, "label in logs and tables (default: the architecture)")
    self_from_epoch: Optional[int] = _doc(
        None, "self-distillation: this teacher is a frozen snapshot of the running student "
        "taken at the start of epoch E (>= 2, < optim.epochs); before E it is left out "
        "(arch and checkpoint are then not used; CLI: --teacher self@E)"
    )
    classes: Optional[list[int]] = _doc(
        None, "the student classes this teacher predicts, in the order of its outputs (a "
        "teacher trained with train-teacher --classes); null: read from its run's config.yaml "
        "beside the checkpoint, else every class"
    )


@dataclass
class StrategyConfig:
    name: str = _doc("ce-filter", "teacher selection/weighting strategy")
    params: dict = _doc({}, "keyword parameters of the strategy")


@dataclass
class OptimConfig:
    lr: Optional[float] = _doc(
        None, "learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleNet students)"
    )
    momentum: float = _doc(0.9, "SGD momentum")
    weight_decay: float = _doc(5e-4, "SGD weight decay")
    nesterov: bool = _doc(False, "Nesterov momentum")
    batch_size: int = _doc(64, "global batch size (split across processes under torchrun)")
    epochs: int = _doc(240, "training epochs")
    schedule: str = _choice("multistep", ("multistep", "cosine"), "learning-rate schedule")
    milestones: Optional[list[int]] = _doc(
        None, "multistep epochs (default 62.5/75/87.5% of epochs: 150,180,210 of 240)"
    )
    lr_decay: float = _doc(0.1, "multistep factor applied at each milestone")
    warmup_epochs: int = _doc(0, "linear warmup from 0 over this many epochs (per step)")


@dataclass
class RuntimeConfig:
    device: str = _doc("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    amp: bool = _doc(False, "mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA")
    channels_last: bool = _doc(False, "channels_last memory format")
    compile: bool = _doc(False, "torch.compile the models")
    seed: int = _doc(0, "seed of initialization, data order and augmentation")
    deterministic: bool = _doc(False, "deterministic algorithms (slower on CUDA)")
    teacher_cache: str = _doc(
        "", "directory of the teacher-logit cache for logit-only distillation ('': off)"
    )
    teacher_cache_dtype: str = _choice(
        "float16", ("float16", "float32"), "teacher-cache storage (float32: bit-exact logits)"
    )
    teacher_cache_budget: int = _doc(
        4 * 2**30, "bytes the teacher cache may hold on disk (0: unlimited)"
    )


@dataclass
class OutputConfig:
    run_dir: Optional[str] = _doc(
        None, "run directory (default runs/<kind>_<arch>[_<strategy>]_s<seed>)"
    )
    quiet: bool = _doc(False, "no progress bar, warnings only")
    log_interval: int = _doc(50, "steps between progress-bar updates (each costs one host sync)")
    label: Optional[str] = _doc(
        None, "the run's column label in tables (suites set the strategy entry's label)"
    )
    tensorboard: bool = _doc(
        False, "log every epoch's metrics to RUN_DIR/tensorboard (needs the tensorboard package)"
    )
    wandb_project: Optional[str] = _doc(
        None, "log every epoch's metrics to this Weights & Biases project (needs wandb)"
    )


@dataclass
class PluginConfig:
    """A plugin file the run used (:mod:`multikd.plugins`): its absolute path and the
    SHA-256 of its bytes when the run was made."""

    path: str = _doc("", "absolute path of the plugin file")
    sha256: str = _doc("", "SHA-256 of the file's bytes, in hex")


@dataclass
class RunConfig:
    kind: str = _choice("teacher", KINDS, "teacher or student (train-teacher), distill")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    plugins: list[PluginConfig] = field(default_factory=list)
    """The plugin files in effect (``--plugin``, ``MULTIKD_PLUGINS``, a suite's ``plugins:``)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "RunConfig":
        """The config of ``data``, after loading the plugins it records (their strategies
        and losses are names its values may use)."""
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            from multikd.plugins import ensure_loaded

            ensure_loaded(data["plugins"])
        return _build(cls, data, where)


# --------------------------------------------------------------------------- typing
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str):
    """``value`` checked against type ``tp`` (ints are accepted for floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _build(tp, value, where)
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config field type {tp!r}")
    name = _type_name(tp)
    article = "an" if name[0] in "aeiou" else "a"
    raise ConfigError(f"{where} expects {article} {name}, got {value!r} ({type(value).__name__})")


def _check_choice(f: dataclasses.Field, value, where: str) -> None:
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    if choices and value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}; got {value!r}")


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not where:
        leaves = {
            f"{f.name}.{g.name}": g.name
            for f in dataclasses.fields(RunConfig)
            if dataclasses.is_dataclass(_hints(RunConfig)[f.name])
            for g in dataclasses.fields(_hints(RunConfig)[f.name])
        }
        near = difflib.get_close_matches(key, list(leaves.values()), n=3, cutoff=0.75)
        close = [dotted for dotted, leaf in leaves.items() if leaf in near] + close
    ordered = close + [v for v in valid if v not in close]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    section = f" in section {where.rstrip('.')!r}" if where else ""
    return ConfigError(
        f"unknown config key {where + key!r}.{hint} Valid keys{section}: {', '.join(ordered)}"
    )


def _note_removed(section: str, key: str, value) -> None:
    """The one-line note on a removed key (:data:`REMOVED_KEYS`), which is then ignored."""
    default, why = REMOVED_KEYS[(section, key)]
    if (section, key) in _noted:
        return
    _noted.add((section, key))
    level = logging.INFO if value == default else logging.WARNING
    log.log(level, "note: %s.%s=%r is ignored: %s", section, key, value, why)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    prefix = "" if where == "config" else f"{where}."
    kwargs = {}
    for key, value in data.items():
        if (where, key) in REMOVED_KEYS:
            _note_removed(where, str(key), value)
            continue
        if key not in fields:
            raise _unknown_key(str(key), list(fields), "" if where == "config" else prefix)
        value = _coerce(value, hints[key], f"{prefix}{key}")
        _check_choice(fields[key], value, f"{prefix}{key}")
        kwargs[key] = value
    return cls(**kwargs)


# --------------------------------------------------------------------------- building
def load_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file; a clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}"
        )
    return data


def load_config(path: str | Path) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (keys not given keep their defaults)."""
    return RunConfig.from_dict(load_yaml(path), where="config")


def _parse_text(text: str, tp) -> Any:
    """Typed value of override text for a field of type ``tp``."""
    accepts_str = tp is str or (
        typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp)
    )
    if accepts_str:
        return None if text in ("null", "~") else text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            return value
    return value


def parse_value(text: str) -> Any:
    """Untyped override text (strategy parameters, synthetic options) read as YAML, with
    exponent floats such as ``1e-3`` read as numbers."""
    return _parse_text(text, Any)


def set_value(config: RunConfig, key: str, value: Any, from_text: bool = False) -> None:
    """Set ``section.key`` (or a top-level key such as ``kind``/``teachers``) in place.

    ``from_text``: ``value`` is override text, parsed by the field's type.
    """
    parts = key.split(".")
    if tuple(parts) in REMOVED_KEYS:
        text = from_text and isinstance(value, str)
        _note_removed(*parts, parse_value(value) if text else value)
        return
    target = config
    where = ""
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(target)}
        if part not in fields:
            raise _unknown_key(part, list(fields), where)
        tp = _hints(type(target))[part]
        last = depth == len(parts) - 1
        if not last and _is_mapping(tp) and depth == len(parts) - 2:
            _set_entry(target, part, parts[-1], value, from_text, where)
            return
        if not last:
            if _is_mapping(tp):
                raise ConfigError(
                    f"config key {key!r}: {where}{part} is a mapping of plain values; set "
                    f"one entry as {where}{part}.KEY=VALUE, or all as {where}{part}={{...}}"
                )
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(
                    f"config key {where + part!r} is a value, not a section; "
                    f"set it as {where}{part}=VALUE"
                )
            target = getattr(target, part)
            where = f"{where}{part}."
            continue
        if dataclasses.is_dataclass(tp) and from_text:
            valid = ", ".join(f"{where}{part}.{f.name}" for f in dataclasses.fields(tp))
            raise ConfigError(f"{where}{part!r} is a section; set one of its keys: {valid}")
        parsed = _parse_text(value, tp) if from_text and isinstance(value, str) else value
        parsed = _coerce(parsed, tp, f"{where}{part}")
        _check_choice(fields[part], parsed, f"{where}{part}")
        setattr(target, part, parsed)


def _is_mapping(tp) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def mapping_keys(where: str) -> tuple[str, ...] | None:
    """The keys a mapping field accepts (``data.synthetic``: :func:`make_synthetic`'s
    options); None where any key goes (a strategy's or a logit loss's parameters, checked
    when the run is resolved)."""
    if where == "data.synthetic":
        from multikd.data.synthetic import SYNTHETIC_DEFAULTS

        return tuple(SYNTHETIC_DEFAULTS)
    return None


def _set_entry(target, field_name: str, key: str, value: Any, from_text: bool,
               where: str) -> None:
    """``section.mapping.key=value`` (e.g. ``data.synthetic.train_size=2000``): one entry
    of a mapping field, the others kept."""
    dotted = f"{where}{field_name}"
    valid = mapping_keys(dotted)
    if valid is not None and key not in valid:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean {dotted}.{close[0]}?" if close else ""
        raise ConfigError(
            f"unknown key {dotted + '.' + key!r}.{hint} Valid keys of {dotted}: "
            f"{', '.join(valid)} (e.g. --set {dotted}.{valid[0]}=..., or several at once: "
            f"--set '{dotted}={{{valid[0]}: ..., {valid[1]}: ...}}')"
        )
    parsed = parse_value(value) if from_text and isinstance(value, str) else value
    setattr(target, field_name, {**getattr(target, field_name), key: parsed})


def parse_assignment(text: str) -> tuple[str, str]:
    """``"a.b=c"`` -> ``("a.b", "c")``; a clear error without ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), value.strip()


def build_config(
    config_file: str | Path | None = None,
    sets: list[str] = (),
    values: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- ``config_file`` <- ``values`` (typed, from CLI flags) <- ``sets`` (text)."""
    config = load_config(config_file) if config_file else RunConfig()
    for key, value in (values or {}).items():
        set_value(config, key, value)
    for text in sets:
        key, value = parse_assignment(text)
        set_value(config, key, value, from_text=True)
    return config


# --------------------------------------------------------------------------- resolving
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


# --------------------------------------------------------------------------- saving
def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


_LEGACY_VALUES = {
    ("data", "drop_last"): (False,),
    ("data", "labeled_fraction"): (1.0,),
    ("data", "classes"): (None,),
    ("data", "unlabeled_dir"): ("",),
    ("loss", "unlabeled_ce"): ("entropy",),
    ("loss", "label_merge"): ("restricted",),
    ("loss", "logit_params"): ({},),
    ("loss", "logit_standardize"): (False,),
    ("loss", "feature_loss"): ("mse",),
    ("loss", "feature_params"): ({},),
    ("loss", "teacher_reduction"): ("sum", REFERENCE),
    ("loss", "feature_stage"): (-1, None),
    ("loss", "taps"): ("stages",),
    ("loss", "adapter"): ("conv1x1", REFERENCE),
    ("loss", "feature_start_epoch"): (1, None),
    ("loss", "feature_grad"): (True,),
}
"""Keys added after runs were first made, with the values that reproduce those runs'
numbers: left out of the hash there, so such runs keep their hashes."""


def config_hash(config: RunConfig) -> str:
    """12 hex digits identifying the experiment: every key except where the run reads,
    writes and runs (the ``output`` section, ``data.data_root``, ``data.workers``,
    ``data.pipeline``, ``runtime.device``, the teacher cache's folder and budget), so a run
    resumed on another device, pipeline or cache folder keeps its hash.

    The performance switches added later count only when they can change the numbers and
    are not at their defaults (``runtime.teacher_cache_dtype`` while a cache is on), so runs
    made before they existed keep their hashes (the removed ``runtime.batched_teachers``
    counted when true: such a run's hash now leaves it out, see :data:`REMOVED_KEYS`). The
    ``plugins`` records are left out too: a plugin's name in the strategy or
    loss keys counts, and its file is checked against its recorded SHA-256 instead
    (:func:`multikd.plugins.changes`)."""
    data = config.to_dict()
    data.pop("output")
    data.pop("plugins")
    skipped = (("data", "data_root"), ("data", "workers"), ("data", "pipeline"),
               ("runtime", "device"),
               ("runtime", "teacher_cache"), ("runtime", "teacher_cache_budget"))
    runtime = data["runtime"]
    if not runtime["teacher_cache"]:
        runtime.pop("teacher_cache_dtype")
    for section, key in skipped:
        data[section].pop(key)
    for (section, key), legacy in _LEGACY_VALUES.items():
        if data[section].get(key, legacy[0]) in legacy:
            data[section].pop(key, None)
    for teacher in data["teachers"]:  # added later too: only the teachers they describe
        for key in ("self_from_epoch", "classes"):
            if teacher.get(key) is None:
                teacher.pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]



def parse_classes(text: str) -> list[int]:
    """``"0-49"``, ``"3,7,9"`` or ``"0-9,20-29"`` (the CLI's ``--classes``) as class indices."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ConfigError(
                f"--classes {text!r} must list class indices and ranges, e.g. 0-49 or 0-9,20-29"
            )
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ConfigError(f"--classes {text!r}: the range {part} runs backwards")
        out.extend(range(first, last + 1))
    return out


def parse_teacher(text: str) -> TeacherConfig:
    """``"ARCH"``, ``"ARCH=CHECKPOINT"`` or ``"self@E"`` (the student itself from epoch E)
    (the CLI's ``--teacher``) as a TeacherConfig."""
    if text.strip().lower().startswith("self@"):
        epoch = text.strip()[5:]
        if not epoch.isdigit():
            raise ConfigError(f"--teacher {text!r}: write self@E with E the epoch, e.g. self@120")
        return TeacherConfig(arch="self", name="self", self_from_epoch=int(epoch))
    arch, sep, checkpoint = text.partition("=")
    if not arch.strip() or (sep and not checkpoint.strip()):
        raise ConfigError(f"--teacher {text!r} must look like ARCH or ARCH=CHECKPOINT")
    return TeacherConfig(arch=arch.strip(), checkpoint=checkpoint.strip() or None)
