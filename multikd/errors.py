"""Errors a user can act on.

Every error multikd raises for bad input derives from :class:`MultikdError`; the CLI prints
its message (what was wrong and what to do) and exits non-zero without a traceback.
"""

from __future__ import annotations

from contextlib import contextmanager


class MultikdError(Exception):
    """Base class: a problem with the user's input, files or configuration.

    ``problems``: the separate messages when one error reports several (see :class:`Problems`).
    """

    def __init__(self, message: str = "", problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class DataError(MultikdError):
    """A dataset could not be found, read or split."""


class MissingDatasetError(DataError):
    """The dataset files are not where they were looked for."""


class CorruptDatasetError(DataError):
    """The dataset files exist but cannot be read (truncated, wrong format)."""


class ModelError(MultikdError):
    """An unknown architecture, or a model that does not fit its use."""


class CheckpointError(MultikdError):
    """A checkpoint is missing, unreadable, or does not fit the architecture."""


class ConfigError(MultikdError):
    """An unknown configuration key or a value of the wrong type."""


class StrategyError(MultikdError):
    """An unknown teacher-selection strategy or bad strategy parameters."""


class PluginError(MultikdError):
    """A plugin file (``--plugin``) could not be loaded, clashes with a registered name, or
    changed since a run recorded it."""


class TrainingError(MultikdError):
    """Training cannot go on (non-finite loss, unusable run directory)."""


class DownloadError(MultikdError):
    """An explicit download failed: no network, a refused connection, an HTTP error, an
    interrupted transfer, or a file whose checksum is not the pinned one."""


class StorageError(MultikdError):
    """A file could not be written: its disk is full or over quota, or its folder is
    read-only."""


class Problems:
    """Collects every problem of one input, so a user fixes them all in one go.

    ``with problems.check(): step()`` runs one independent check and keeps its error
    instead of stopping; :meth:`raise_if_any` raises one :class:`ConfigError` naming them
    all (a single problem keeps its own message and class).
    """

    def __init__(self) -> None:
        self.errors: list[MultikdError] = []

    @contextmanager
    def check(self):
        try:
            yield
        except MultikdError as err:
            self.errors.append(err)

    def add(self, message: str) -> None:
        self.errors.append(ConfigError(message))

    @property
    def messages(self) -> list[str]:
        return [text for err in self.errors for text in err.problems]

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise self.errors[0]
        messages = self.messages
        listing = "\n".join(f"  {i}. {text}" for i, text in enumerate(messages, 1))
        raise ConfigError(
            f"{len(messages)} problems (fix them all, then run again):\n{listing}", messages
        )
