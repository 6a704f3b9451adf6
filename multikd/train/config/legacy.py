"""Config keys that are no longer options: old files and ``--set`` that give one still load.

:data:`REMOVED_KEYS` names each with its old default and why it went; :func:`note_removed`
prints the one-line note (once per key and process) and the key is then ignored. Keys that
were added after runs were made are the other half of keeping old runs readable; their
values that reproduce the old runs are :data:`multikd.train.config.hashing.LEGACY_VALUES`.
"""

from __future__ import annotations

import logging

REMOVED_KEYS = {
    ("runtime", "batched_teachers"): (
        False, "the vmapped teacher pass was removed (slower on the CPU and on an H100, see "
               "multikd/method/teacher_runner.py); teachers run one after another"),
}
"""Keys that are no longer options, with their old default and why: a file or ``--set``
that still gives one loads, with a one-line note (once per key and process)."""
_noted: set[tuple[str, str]] = set()
log = logging.getLogger("multikd.train.config")


def note_removed(section: str, key: str, value) -> None:
    """The one-line note on a removed key (:data:`REMOVED_KEYS`), which is then ignored."""
    default, why = REMOVED_KEYS[(section, key)]
    if (section, key) in _noted:
        return
    _noted.add((section, key))
    level = logging.INFO if value == default else logging.WARNING
    log.log(level, "note: %s.%s=%r is ignored: %s", section, key, value, why)
