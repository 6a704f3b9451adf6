"""Run configuration: typed dataclasses, YAML files, ``--set section.key=value`` overrides.

A run is described by one :class:`RunConfig`. It is built from the defaults (the field's
CIFAR recipe, see DESIGN.md), then a YAML file (``--config FILE``), then overrides
(``--set optim.lr=0.1``, or the CLI's sugar flags such as ``--lr 0.1``), and finally
:func:`resolve`\\ d: every value the run depends on is made explicit (learning rate, LR
milestones, teacher names, run directory). The resolved config is what a run saves as
``config.yaml``; loading that file gives back an equal ``RunConfig``.

One concept a module, all of it importable from here:

- :mod:`~multikd.train.config.schema`: the sections as dataclasses, defaults and docs;
- :mod:`~multikd.train.config.typed`: mappings and override text checked against the
  fields' types (unknown keys and wrong types are a ConfigError listing what is valid);
- :mod:`~multikd.train.config.sources`: YAML files, :func:`build_config`, ``config.yaml``,
  the CLI's ``--teacher``/``--classes`` text;
- :mod:`~multikd.train.config.resolving`: defaults made explicit, every value checked;
- :mod:`~multikd.train.config.hashing`: :func:`config_hash`, stable for old runs;
- :mod:`~multikd.train.config.legacy`: removed keys that old files still give.
"""

from multikd.train.config.hashing import LEGACY_VALUES, config_hash
from multikd.train.config.legacy import REMOVED_KEYS
from multikd.train.config.resolving import (
    default_lr,
    default_milestones,
    is_class_list,
    non_finite_values,
    recorded_classes,
    resolve,
)
from multikd.train.config.schema import (
    KINDS,
    NO_TEACHER,
    REFERENCE,
    SMALL_LR_ARCHS,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    PluginConfig,
    RunConfig,
    RuntimeConfig,
    StrategyConfig,
    TeacherConfig,
)
from multikd.train.config.sources import (
    build_config,
    load_config,
    load_yaml,
    parse_classes,
    parse_teacher,
    to_yaml,
)
from multikd.train.config.typed import mapping_keys, parse_assignment, parse_value, set_value

__all__ = [
    "KINDS", "LEGACY_VALUES", "NO_TEACHER", "REFERENCE", "REMOVED_KEYS", "SMALL_LR_ARCHS",
    "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "OutputConfig", "PluginConfig",
    "RunConfig", "RuntimeConfig", "StrategyConfig", "TeacherConfig",
    "build_config", "config_hash", "default_lr", "default_milestones", "is_class_list",
    "load_config", "load_yaml", "mapping_keys", "non_finite_values", "parse_assignment",
    "parse_classes", "parse_teacher", "parse_value", "recorded_classes", "resolve",
    "set_value", "to_yaml",
]
