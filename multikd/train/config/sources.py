"""Where a config comes from and goes to: YAML files, typed values and override text
applied in order (:func:`build_config`), the CLI's ``--teacher`` and ``--classes`` text,
and the saved ``config.yaml`` (:func:`to_yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from multikd.errors import ConfigError
from multikd.train.config.schema import RunConfig, TeacherConfig
from multikd.train.config.typed import parse_assignment, set_value


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


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


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
