"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Data goes to a temp file in the target's folder, is flushed and fsynced, given the
permissions a plain ``open()`` would give (``0o666`` minus the umask; ``mkstemp`` alone
would leave it owner-only), and moved over the target with ``os.replace``. On any error the
temp file is removed and the old file is untouched. A write that fails because the disk is
full or over quota, or because the folder is read-only, raises a one-line
:class:`~multikd.errors.StorageError` naming the file (and the free space).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from multikd.errors import StorageError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError ``err`` is, or was raised while handling (``torch.save`` reports a failed
    write as a RuntimeError raised during the OSError)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def storage_error(path: Path, err: BaseException) -> StorageError | None:
    """A :class:`StorageError` for a failed write of ``path`` when the disk is full or over
    quota (with its free bytes) or the folder read-only; None for any other failure."""
    cause = None if isinstance(err, StorageError) else _os_error(err)
    if cause is None or cause.errno not in _FULL + _DENIED:
        return None
    reason = os.strerror(cause.errno).lower()
    if cause.errno in _DENIED:
        return StorageError(
            f"cannot write {path}: {reason}; give a folder you can write to"
        )
    try:
        free = f"{shutil.disk_usage(path.parent).free:,} bytes free there"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    return StorageError(
        f"cannot write {path}: {reason} ({free}); {kept}. Free some space or write to "
        "another disk"
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_open(path) as f: f.write(...)`` — ``path`` appears only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        clear = storage_error(path, err)
        if clear is None:
            raise
        raise clear from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        clear = storage_error(path, err) if isinstance(err, Exception) else None
        if clear is None:
            raise
        raise clear from err


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
