"""Plugins: a researcher's own Python file whose registered classes and functions join the
method's registries, with no fork of the package.

A plugin is any ``.py`` file that uses the registries' decorators (``@register_strategy``,
``@register_logit_loss``, ``@register_feature_loss``, ``@register_adapter``). It is given
with ``--plugin FILE.py`` (repeatable), in ``MULTIKD_PLUGINS`` (paths separated by
``os.pathsep``) or in a suite's ``plugins:`` list, and imported by path under a module name
of its own (``multikd_plugin_<stem>_<hash>``), like torchdistill's import of a user module
from its config.

Every run records the plugins in effect as ``plugins: [{path, sha256}]`` in its
``config.yaml`` and ``summary.json``, the absolute path and the SHA-256 of the file's bytes.
Reading a run's config loads its plugins again (workers, cluster jobs and resumed runs see
the same registries); :func:`changes` says which recorded files are missing or no longer
hold what the run ran (resume refuses such a run, ``multikd table`` warns).

A broken plugin is one :class:`~multikd.errors.PluginError` naming the file and line: a
syntax error, an exception while it runs, a name a built-in (or another plugin) already
holds, or an entry whose signature does not fit its registry. Imports only ``method`` (and
only when a plugin is loaded), so reading a config that records none imports no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from multikd.errors import MultikdError, PluginError

ENV = "MULTIKD_PLUGINS"
"""Environment variable: plugin files loaded by every ``multikd`` command."""


@dataclass(frozen=True)
class Loaded:
    """A plugin loaded in this process: its absolute ``path``, ``sha256`` and the names it
    registered (``(registry kind, name)``)."""

    path: str
    sha256: str
    names: tuple[tuple[str, str], ...]

    def record(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


_LOADED: dict[str, Loaded] = {}  # absolute path -> the version loaded in this process


def file_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes, in hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def env_paths() -> list[str]:
    """The files named by ``MULTIKD_PLUGINS`` (empty entries ignored)."""
    return [p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def loaded() -> list[dict[str, str]]:
    """``{path, sha256}`` of every plugin loaded in this process, in loading order: what a
    run made here records."""
    return [entry.record() for entry in _LOADED.values()]


def load_plugins(paths: Iterable[str | Path], base: str | Path | None = None) -> list[dict]:
    """Load each file (relative paths against ``base``, default the working directory);
    their ``{path, sha256}`` records."""
    return [load_plugin(Path(base or ".") / Path(p) if not Path(p).is_absolute() else p)
            for p in paths]


def load_plugin(path: str | Path) -> dict[str, str]:
    """Import the plugin file ``path`` once per content: loading the same bytes again does
    nothing; loading a file that changed since it was loaded here first forgets the names
    its former version registered. Its ``{path, sha256}`` record."""
    file = Path(path).expanduser()
    if file.suffix != ".py" or not file.is_file():
        raise PluginError(f"plugin {path}: no such Python file (give the path of a .py file)")
    file = file.resolve()
    key, source = str(file), file.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    old = _LOADED.get(key)
    if old is not None and old.sha256 == digest:
        return old.record()
    registries = _registries()
    if old is not None:
        _forget(old, registries)
        del _LOADED[key]
    before = {kind: set(reg.names()) for kind, reg in registries.items()}
    try:
        _execute(file, source, digest)
    except BaseException:
        for kind, reg in registries.items():  # a half-loaded plugin leaves nothing behind
            for name in set(reg.names()) - before[kind]:
                reg.discard(name)
        raise
    names = tuple((kind, name) for kind, reg in registries.items()
                  for name in reg.names() if name not in before[kind])
    entry = Loaded(key, digest, names)
    try:
        for kind, name in names:
            _check_entry(file, kind, registries[kind].entry(name))
    except PluginError:
        _forget(entry, registries)
        raise
    _LOADED[key] = entry
    return entry.record()


def ensure_loaded(records: Iterable[Any]) -> None:
    """Load the plugins a run recorded (``{path, sha256}`` mappings or objects with those
    attributes) that are not loaded yet; a missing file is a :class:`PluginError`."""
    for record in records or ():
        path, _ = _pair(record)
        if not Path(path).is_file():
            raise PluginError(
                f"plugin {path}: the run recorded this plugin file, but it is not there; "
                "put it back at that path to read, resume or tabulate the run"
            )
        load_plugin(path)


def changes(records: Iterable[Any]) -> list[str]:
    """One message per recorded plugin whose file is missing or whose bytes are not the
    recorded ones (no import, only hashing)."""
    found = []
    for record in records or ():
        path, digest = _pair(record)
        if not Path(path).is_file():
            found.append(f"plugin {path} is missing (the run recorded sha256 {digest[:12]})")
            continue
        now = file_hash(path)
        if now != digest:
            found.append(f"plugin {path} changed since the run used it (sha256 {digest[:12]} "
                         f"then, {now[:12]} now)")
    return found


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """A block after which the plugins loaded and the names registered are those before it
    (a test's plugins leave nothing behind)."""
    saved = dict(_LOADED)
    with contextlib.ExitStack() as stack:
        for registry in _registries().values():
            stack.enter_context(registry.restoring())
        try:
            yield
        finally:
            _LOADED.clear()
            _LOADED.update(saved)


def _pair(record) -> tuple[str, str]:
    if isinstance(record, dict):
        return str(record.get("path", "")), str(record.get("sha256", ""))
    return str(getattr(record, "path", "")), str(getattr(record, "sha256", ""))


def _registries() -> dict:
    from multikd.method.adapters import ADAPTER_REGISTRY
    from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY
    from multikd.method.logit_losses import LOGIT_LOSS_REGISTRY
    from multikd.method.strategies import STRATEGIES

    return {"strategy": STRATEGIES, "logit loss": LOGIT_LOSS_REGISTRY,
            "feature loss": FEATURE_LOSS_REGISTRY, "adapter": ADAPTER_REGISTRY}


def _forget(entry: Loaded, registries: dict) -> None:
    for kind, name in entry.names:
        registries[kind].discard(name)


def _execute(file: Path, source: bytes, digest: str) -> None:
    """Compile and run the file as its own module; every failure a PluginError naming the
    file and the line."""
    try:
        code = compile(source, str(file), "exec")
    except SyntaxError as err:
        raise PluginError(
            f"plugin {file} line {err.lineno}: syntax error: {err.msg}"
            + (f"\n    {err.text.strip()}" if err.text else "")
        ) from None
    name = f"multikd_plugin_{_identifier(file.stem)}_{digest[:12]}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException as err:
        sys.modules.pop(name, None)
        if not isinstance(err, Exception):
            raise
        line = _line_in(file, err)
        what = str(err) if isinstance(err, MultikdError) else f"{type(err).__name__}: {err}"
        raise PluginError(f"plugin {file} line {line}: {what}") from None


def _line_in(file: Path, err: BaseException) -> int | str:
    """The line of ``file`` in the traceback of ``err`` nearest to where it was raised."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(file)]
    return frames[-1].lineno if frames else "?"


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _check_entry(file: Path, kind: str, entry) -> None:
    """The target fits its registry: a strategy is a Strategy subclass with its own
    ``_select`` (or ``_select_in_context``); a loss is a function taking the registry's
    leading tensors; an adapter a FeatureAdapter subclass."""
    from multikd.method.adapters import FeatureAdapter
    from multikd.method.strategies import Strategy

    target, registry = entry.target, _registries()[kind]
    line = _line_of(target)
    where = f"plugin {file} line {line}: {kind} {entry.name!r}"
    if kind == "strategy":
        if not (inspect.isclass(target) and issubclass(target, Strategy)):
            raise PluginError(f"{where} must be a class derived from "
                              f"multikd.method.strategies.Strategy, got {target!r}")
        contextual = target.needs_student or target.needs_features
        method = "_select_in_context" if contextual else "_select"
        if getattr(target, method) is getattr(Strategy, method):
            raise PluginError(
                f"{where} defines no {method}(self, ce [K,B], logits [K,B,C], labels [B]"
                f"{', context' if contextual else ''}) -> Selection; the base class's raises "
                "NotImplementedError"
            )
        return
    if kind == "adapter":
        if not (inspect.isclass(target) and issubclass(target, FeatureAdapter)):
            raise PluginError(f"{where} must be a class derived from "
                              f"multikd.method.adapters.FeatureAdapter, got {target!r}")
        function, leading = target.__init__, ("self", *registry.skip[1:])
    else:
        if not callable(target) or inspect.isclass(target):
            raise PluginError(f"{where} must be a function, got {target!r}")
        function, leading = target, registry.skip[1:]
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    names = tuple(p.name for p in params[: len(leading)])
    if names != tuple(leading):
        raise PluginError(
            f"{where} must take ({', '.join(leading)}, ...) first, as every {kind} does; "
            f"its parameters are ({', '.join(p.name for p in params)})"
        )


def _line_of(target) -> int | str:
    try:
        return inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return "?"
