"""Errors a user can act on.

Every error multikd raises for bad input derives from :class:`MultikdError`; the CLI prints
its message (what was wrong and what to do) and exits non-zero without a traceback.
"""


class MultikdError(Exception):
    """Base class: a problem with the user's input, files or configuration."""


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


class TrainingError(MultikdError):
    """Training cannot go on (non-finite loss, unusable run directory)."""
