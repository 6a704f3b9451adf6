"""One writer per run directory: a lock file that a second writer meets as a clear error,
and a record of the error a run failed with.

``RUN/run.lock`` is held with ``flock`` for as long as a process trains the run. The kernel
drops the lock when the process ends in any way (finished, crashed, killed by SLURM at
its time limit), so a lock never outlives its writer and a crashed run stays resumable by
the next command; no stale-lock clean-up is ever needed. The file's content names the
holder (host, pid, SLURM job, start time) for the message a second writer gets. ``flock``
works across hosts on NFSv4 and on Lustre/GPFS mounted with ``flock``; on a file system
without it two jobs must not be given the same runs (``multikd bench --shard`` never does).

A run whose writer raised keeps ``RUN/failed.json`` (error, host, time) until a later
writer finishes it, so ``multikd bench --status`` can say why it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Iterator, Sequence

from multikd.atomic import atomic_write_text
from multikd.errors import MultikdError, TrainingError
from multikd.train.runio import RunDir, continue_hint

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux/macOS: runs are not locked
    fcntl = None

log = logging.getLogger(__name__)

LOCK = "run.lock"
FAILED = "failed.json"


class RunBusy(TrainingError):
    """Another process is writing this run directory."""


def holder_info() -> dict:
    """Who this process is, as written into a lock file."""
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        info["slurm_job"] = job
    return info


def _describe(info: dict) -> str:
    job = f", SLURM job {info['slurm_job']}" if info.get("slurm_job") else ""
    return f"host {info.get('host', '?')} pid {info.get('pid', '?')}{job} since {info.get('since', '?')}"


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def lock_holder(run_dir: str | Path) -> dict | None:
    """The holder of ``run_dir``'s lock (host, pid, ...) while a live process writes it;
    None when no process does. Never blocks."""
    path = Path(run_dir) / LOCK
    if fcntl is None or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {"host": "?"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _acquire(path: Path, wait_s: float, poll_s: float) -> int | None:
    """Lock file ``path`` (created with its folder if missing), waiting up to ``wait_s``."""
    if fcntl is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            info = _read_holder(path)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunBusy(
                    f"{path.parent} is being written by another process ({_describe(info)}). "
                    "Two writers would corrupt it: wait for that one to finish (multikd bench "
                    "--status shows it), or stop it; a stopped run continues with "
                    f"{continue_hint(path.parent)}"
                ) from None
            if not told:
                log.info("%s is being written by %s; waiting for it", path.parent,
                         _describe(info))
                told = True
            time.sleep(poll_s)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def hold_runs(run_dirs: Sequence[str | Path], wait_s: float = 0.0,
              poll_s: float = 5.0) -> Iterator[None]:
    """Hold the locks of ``run_dirs`` (created if missing) while the block writes them.

    A directory locked by another process raises :class:`RunBusy` at once (``wait_s=0``)
    or after waiting up to ``wait_s`` seconds for it, with every lock taken so far released.
    If the block raises an ``Exception``, each unfinished directory records it in ``failed.json``; when
    the block completes, a ``failed.json`` left by an earlier writer is removed.
    """
    dirs = [Path(d) for d in dict.fromkeys(str(d) for d in run_dirs)]
    fds: list[int | None] = []
    try:
        for run_dir in dirs:
            fds.append(_acquire(run_dir / LOCK, wait_s, poll_s))
        try:
            yield
        except Exception as err:
            record = {"error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=8)} | holder_info()
            for run_dir in dirs:
                # best effort: on a full disk the record cannot be written either, and the
                # error itself is what the user needs
                with contextlib.suppress(MultikdError, OSError):
                    if RunDir(run_dir).state() != "finished":  # e.g. refused to overwrite it
                        atomic_write_text(run_dir / FAILED, json.dumps(record, indent=2) + "\n")
            raise
        for run_dir in dirs:
            (run_dir / FAILED).unlink(missing_ok=True)
    finally:
        for fd in reversed(fds):
            _release(fd)


@contextlib.contextmanager
def exclusive(lock_file: str | Path, wait_s: float = 60.0, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the lock file ``lock_file`` (e.g. around a read-modify-write of a shared file)."""
    fd = _acquire(Path(lock_file), wait_s, poll_s)
    try:
        yield
    finally:
        _release(fd)


def failure(run_dir: str | Path) -> dict | None:
    """What ``run_dir``'s last writer failed with (``failed.json``), or None."""
    path = Path(run_dir) / FAILED
    return _read_holder(path) if path.is_file() else None
