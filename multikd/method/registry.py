"""Registries: every extension point of the method is a table of names.

timm's ``register_model`` and mdistiller's one-file-per-method in one small class. A
:class:`Registry` maps a name to a *target* (a strategy class, a loss function, an adapter
class) and keeps, per name, an :class:`Entry`: the one-line description and the parameters
with their defaults that ``multikd list`` prints. Each extension point owns one registry and
a decorator that fills it:

- strategies: ``STRATEGIES`` and ``@register_strategy`` (:mod:`multikd.method.strategies`);
- logit losses: ``LOGIT_LOSS_REGISTRY`` and ``@register_logit_loss``
  (:mod:`multikd.method.logit_losses`);
- feature losses: ``FEATURE_LOSS_REGISTRY`` and ``@register_feature_loss``
  (:mod:`multikd.method.feature_losses`);
- adapters: ``ADAPTER_REGISTRY`` and ``@register_adapter`` (:mod:`multikd.method.adapters`).

The registry is the one place a name is checked: an unknown name, an unknown parameter or a
name registered twice raises the registry's error type (a
:class:`~multikd.errors.MultikdError`), and the configuration reads its choices from here.
A registry is a read-only mapping ``name -> target`` in registration order.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class _Required:
    """The default of a parameter that has none (it must be given)."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()


@dataclass(frozen=True)
class Entry:
    """One registered name: the ``target`` it builds or calls, a one-line ``description``,
    its ``params`` (parameter name -> default, :data:`REQUIRED` where there is none, in
    declaration order) and ``info``, facts a caller reads about it (a logit loss's
    ``needs_labels``)."""

    name: str
    target: Any
    description: str
    params: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def params_text(self) -> str:
        """``alpha=1.0, beta=8.0`` (``weights (required)`` for a required one); empty when
        it takes none."""
        return ", ".join(
            f"{k} (required)" if v is REQUIRED else f"{k}={v!r}" for k, v in self.params.items()
        )


class Registry(Mapping):
    """Names of one ``kind`` (``"strategy"``, ``"logit loss"``...), ``plural`` for messages.

    ``error`` is the exception type of a bad name or parameter; ``canonical`` maps a name
    as given to its registered form (strategies: case and ``_``/``-`` do not matter; the
    others: the name as given); ``skip`` names the leading parameters of a target's
    signature that are not parameters of the entry (an adapter's shapes, a loss's tensors).
    """

    def __init__(self, kind: str, plural: str, error: type[Exception], *,
                 canonical: Callable[[str], str] | None = None, skip: tuple[str, ...] = ()):
        self.kind = kind
        self.plural = plural
        self.error = error
        self._canonical = canonical or (lambda name: name)
        self.skip = ("self", *skip)
        self._entries: dict[str, Entry] = {}

    # ------------------------------------------------------------------ filling
    def add(self, name: str, target: Any, description: str | None = None, *,
            params: Mapping[str, Any] | None = None, **info) -> Entry:
        """Register ``target`` as ``name``. ``description`` defaults to the first sentence
        of the target's docstring; ``params`` to the keyword parameters of its signature
        (a class's ``__init__``) after those in ``skip``. A name that is taken raises the
        registry's error naming what holds it."""
        if not isinstance(name, str) or not name or self._canonical(name) != name:
            raise self.error(
                f"a {self.kind} name must be a non-empty string in its canonical form "
                f"({self._canonical(str(name))!r}), got {name!r}"
            )
        if name in self._entries:
            held = self._entries[name].target
            raise self.error(
                f"{self.kind} {name!r} is registered twice: {_where(held)} holds it, "
                f"{_where(target)} asks for it too; give one of them another name"
            )
        entry = Entry(
            name, target, _one_line(description) if description else _first_sentence(target),
            dict(params) if params is not None else self._signature_params(target), dict(info),
        )
        self._entries[name] = entry
        return entry

    def register(self, name: str, description: str | None = None, *,
                 params: Mapping[str, Any] | None = None, **info) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`: returns the target unchanged."""

        def decorate(target):
            self.add(name, target, description, params=params, **info)
            return target

        return decorate

    def discard(self, name: str) -> None:
        """Forget ``name`` if it is registered (a plugin file that is loaded again after it
        changed registers its names anew)."""
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Registry]:
        """A block after which the registry holds exactly what it held before it: what was
        registered inside is gone (a test's own entries)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries = saved

    # ------------------------------------------------------------------ reading
    def canonical(self, name: str) -> str:
        """The registered form of ``name`` (whether or not it is registered)."""
        return self._canonical(str(name))

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; the registry's error listing every valid name otherwise."""
        key = self.canonical(name)
        if key not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; valid {self.plural}: "
                             f"{', '.join(self._entries)}")
        return self._entries[key]

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def check_params(self, name: str, params: Mapping[str, Any]) -> Entry:
        """The entry of ``name`` after checking that ``params`` names only its parameters
        (the registry's error listing them otherwise)."""
        entry = self.entry(name)
        unknown = sorted(str(k) for k in params if k not in entry.params)
        if unknown:
            takes = (f"accepted parameters: {', '.join(entry.params)}" if entry.params
                     else "it takes no parameters (accepted: none)")
            raise self.error(
                f"{self.kind} {entry.name!r} got unknown parameter(s) {', '.join(unknown)}; {takes}"
            )
        return entry

    def __getitem__(self, name: str) -> Any:
        return self._entries[name].target

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def _signature_params(self, target) -> dict[str, Any]:
        function = target.__init__ if inspect.isclass(target) else target
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {
            p.name: REQUIRED if p.default is inspect.Parameter.empty else p.default
            for p in inspect.signature(function).parameters.values()
            if p.kind in named and p.name not in self.skip
        }


def describe(registry: Registry, title: str) -> list[str]:
    """``multikd list``'s lines for ``registry``: a ``title`` line, then per entry its name
    and description, and its parameters with their defaults on the next line."""
    lines = [title]
    width = max((len(name) for name in registry), default=0)
    for entry in registry.entries():
        lines.append(f"  {entry.name:<{width}}  {entry.description}")
        lines.append(f"  {'':<{width}}  {entry.params_text() or '(no parameters)'}")
    return lines


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _first_sentence(target) -> str:
    """The docstring's first sentence on one line (its first paragraph when it has no
    sentence end); empty without a docstring."""
    doc = inspect.cleandoc(getattr(target, "__doc__", None) or "")  # its own, not inherited
    paragraph = _one_line(doc.split("\n\n")[0])
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _where(target) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
