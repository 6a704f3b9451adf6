"""Typed values for config dataclasses: mappings (YAML) and override text (``--set
section.key=value``) checked against each field's type and choices.

Override text is read with ``yaml.safe_load`` (so ``[1, 2]`` is a list, ``true`` a bool,
``{a: 1}`` a dict) and checked against the field's type; ``str`` fields take the text
verbatim. An unknown key or a value of the wrong type is a
:class:`~multikd.errors.ConfigError` that lists what is valid, with close matches first.
Nothing here knows the run's sections: it works on any dataclass tree
(:mod:`multikd.train.config.schema` is one).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Union

import yaml

from multikd.errors import ConfigError
from multikd.train.config.legacy import REMOVED_KEYS, note_removed


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    """The field types of dataclass ``cls`` (read only: the dict is shared). Cached:
    ``get_type_hints`` evaluates every annotation string again on each call, and a suite's
    expansion sets tens of thousands of values."""
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
            return from_mapping(tp, value, where)
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


def _unknown_key(key: str, valid: list[str], where: str, root=None) -> ConfigError:
    """The error of an unknown ``key`` in section ``where`` (``""``: the top level of the
    config class ``root``, whose sections' keys are then matched too)."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not where:
        leaves = {
            f"{f.name}.{g.name}": g.name
            for f in dataclasses.fields(root)
            if dataclasses.is_dataclass(_hints(root)[f.name])
            for g in dataclasses.fields(_hints(root)[f.name])
        }
        near = difflib.get_close_matches(key, list(leaves.values()), n=3, cutoff=0.75)
        close = [dotted for dotted, leaf in leaves.items() if leaf in near] + close
    ordered = close + [v for v in valid if v not in close]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    section = f" in section {where.rstrip('.')!r}" if where else ""
    return ConfigError(
        f"unknown config key {where + key!r}.{hint} Valid keys{section}: {', '.join(ordered)}"
    )


def from_mapping(cls, data: dict, where: str):
    """The dataclass ``cls`` built from the mapping ``data`` (``where``: its place, for the
    errors), every value checked; a removed key (:data:`REMOVED_KEYS`) is noted and skipped."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    prefix = "" if where == "config" else f"{where}."
    kwargs = {}
    for key, value in data.items():
        if (where, key) in REMOVED_KEYS:
            note_removed(where, str(key), value)
            continue
        if key not in fields:
            raise _unknown_key(str(key), list(fields), "" if where == "config" else prefix, cls)
        value = _coerce(value, hints[key], f"{prefix}{key}")
        _check_choice(fields[key], value, f"{prefix}{key}")
        kwargs[key] = value
    return cls(**kwargs)


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


def set_value(config: Any, key: str, value: Any, from_text: bool = False) -> None:
    """Set ``section.key`` (or a top-level key such as ``kind``/``teachers``) of ``config``
    (a :class:`~multikd.train.config.schema.RunConfig`) in place.

    ``from_text``: ``value`` is override text, parsed by the field's type.
    """
    parts = key.split(".")
    if tuple(parts) in REMOVED_KEYS:
        text = from_text and isinstance(value, str)
        note_removed(*parts, parse_value(value) if text else value)
        return
    target = config
    where = ""
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(target)}
        if part not in fields:
            raise _unknown_key(part, list(fields), where, type(config))
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
