"""Explicit downloads: streamed, resumable, checksummed, and put into place atomically.

Only ``multikd data download`` and ``multikd teachers download`` call this module; nothing
else in multikd touches the network (DESIGN, "Conventions a user expects").

- :func:`fetch` streams a URL into ``FILE.part`` (tqdm progress bar on stderr), resumes an
  interrupted transfer where it stopped (HTTP ``Range: bytes=N-``; a server that ignores
  it sends the whole file again), retries a transfer that made progress, checks the md5
  when one is pinned, and only then renames ``FILE.part`` to ``FILE``. A wrong checksum
  deletes the file (resuming cannot repair it); an interrupted transfer keeps the
  ``.part`` so the same command resumes it.
- :func:`staging` and :func:`extract_tar` unpack an archive into a hidden temporary
  folder beside the destination; :func:`place` moves the checked result into place with
  ``os.replace``, so a reader never sees a half-extracted folder.
- :func:`download_cifar` puts the official CIFAR-100 / CIFAR-10 tarball (URL and md5 as
  torchvision pins them, :data:`~multikd.data.cifar.CIFAR_LAYOUTS`) into a data root.

Every failure is a :class:`~multikd.errors.DownloadError` (or a
:class:`~multikd.errors.StorageError` when the disk is full) that says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from multikd.atomic import storage_error
from multikd.data.cifar import cifar_layout, resolve_data_root, verify_checksums
from multikd.errors import DataError, DownloadError, MultikdError, StorageError

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


@dataclass(frozen=True)
class Downloaded:
    """A finished download: where it lies, its size and digests."""

    path: Path
    size: int
    md5: str
    sha256: str


class _Interrupted(Exception):
    """The transfer stopped before the whole file arrived (what arrived stays in .part)."""


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` collect until the whole file has arrived."""
    return dest.with_name(dest.name + PART_SUFFIX)


def fetch(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
) -> Downloaded:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what a previous call left.

    ``md5``: the checksum the file must have; a complete ``dest`` with that checksum is
    reused without a download. A transfer that stops after making progress is resumed up
    to ``retries`` times (waiting ``retry_wait_s`` between tries); one that makes none, a
    refused connection or an HTTP error fails at once.
    """
    dest = Path(dest)
    part = part_path(dest)
    if md5 and dest.is_file():
        found = digests(dest)
        if found.md5 == md5.lower():
            log.info("%s is already here with md5 %s; not downloading it again", dest, md5)
            return found
        dest.unlink()
    tries = 0
    while True:
        before = _size(part)
        try:
            _transfer(url, part, progress, timeout_s)
            break
        except _Interrupted as err:
            got = _size(part)
            if got > before and tries < retries:
                tries += 1
                log.warning("download of %s stopped at %s bytes (%s); resuming (try %d of %d)",
                            url, f"{got:,}", err, tries, retries)
                time.sleep(retry_wait_s)
                continue
            if not got:
                part.unlink(missing_ok=True)
                raise DownloadError(f"download of {url} stopped before any byte arrived "
                                    f"({err}); run the same command again") from None
            raise DownloadError(
                f"download of {url} stopped after {got:,} bytes ({err}); {part} keeps what "
                "arrived: run the same command again to resume it"
            ) from None
    found = digests(part)
    if md5 and found.md5 != md5.lower():
        part.unlink()
        raise DownloadError(
            f"{url} arrived with md5 {found.md5}, not the expected {md5.lower()}: the file is "
            f"damaged or not the one expected, so it was deleted and nothing was extracted. "
            "Run the command again; if it fails the same way, the server (--url) serves "
            "another file: use the official address, or pass --md5 with the mirror's "
            "checksum if you trust it"
        )
    os.replace(part, dest)
    return Downloaded(dest, found.size, found.md5, found.sha256)


def digests(path: Path) -> Downloaded:
    """md5 and sha256 of ``path``, read once."""
    md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            md5.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return Downloaded(path, size, md5.hexdigest(), sha256.hexdigest())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        clear = storage_error(folder / "x", err)
        if clear is None:
            raise DownloadError(f"cannot create {folder}: {err}") from None
        raise clear from None


def _open_part(path: Path, mode: str):
    """The .part file opened for writing (a seam the tests use to fill the disk)."""
    return open(path, mode)


def _transfer(url: str, part: Path, progress: bool, timeout_s: float) -> None:
    """One HTTP request: append to ``part`` from its current size (or rewrite it when the
    server sends the whole file). Raises :class:`_Interrupted` when fewer bytes arrive than
    the server announced."""
    have = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": "multikd"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after byte `have`: whole already, or too long
            match = _CONTENT_RANGE.match(err.headers.get("Content-Range") or "")
            if match and match.group(2) != "*" and int(match.group(2)) == have:
                return
            part.unlink()
            return _transfer(url, part, progress, timeout_s)
        raise DownloadError(
            f"cannot download {url}: the server answered {err.code} {err.reason}; check the "
            "address (--url)"
        ) from None
    except urllib.error.URLError as err:
        raise DownloadError(_unreachable(url, err.reason)) from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(_unreachable(url, err)) from None
    with response:
        status = getattr(response, "status", None)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range") or "")
        if status == 206:
            if not (have and match and match.group(1) and int(match.group(1)) == have):
                part.unlink(missing_ok=True)
                raise _Interrupted(f"asked for the bytes from {have:,} on, the server sent "
                                   f"{response.headers.get('Content-Range')!r}; starting over")
            mode = "ab"
            total = int(match.group(2)) if match.group(2) != "*" else None
        else:  # 200 (or a file:// URL): the whole file, whatever was asked
            if have:
                log.info("the server sent the whole file instead of the rest; starting over")
            have, mode, total = 0, "wb", length
        _make_folder(part.parent)
        _stream(response, part, mode, have, total, progress)
    got = _size(part)
    if total is not None and got < total:
        raise _Interrupted(f"the connection closed at {got:,} of {total:,} bytes")


def _stream(response, part: Path, mode: str, have: int, total: int | None,
            progress: bool) -> None:
    try:
        handle = _open_part(part, mode)
    except OSError as err:
        raise _write_failure(part, err, total) from None
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
               desc=part.name[: -len(PART_SUFFIX)], disable=not progress, leave=False)
    with bar, handle:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"{type(err).__name__}: {err}") from None
            if not chunk:
                break
            try:
                handle.write(chunk)
            except OSError as err:
                raise _write_failure(part, err, total) from None
            bar.update(len(chunk))


def _write_failure(part: Path, err: OSError, total: int | None) -> MultikdError:
    size = f" (the whole file is {total:,} bytes)" if total else ""
    clear = storage_error(part, err)
    if clear is None:
        return DownloadError(f"cannot write {part}: {err}")
    return StorageError(
        f"{clear}{size}; {part.name} keeps the {_size(part):,} bytes that arrived, so the "
        "same command resumes the download once there is room"
    )


def _unreachable(url: str, reason) -> str:
    if isinstance(reason, ConnectionRefusedError):
        why = "the connection was refused (nothing listens at that address)"
    elif isinstance(reason, socket.gaierror):
        why = "the host name could not be resolved (no network, or no DNS)"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        why = "the connection timed out"
    else:
        why = str(reason)
    return (
        f"cannot download {url}: {why}. Check the network connection (and a proxy, if you "
        "need one: HTTPS_PROXY), or fetch the file on a machine that has one and pass where "
        "it lies with --url (a mirror, or file:///path/to/the/file)"
    )


@contextlib.contextmanager
def staging(parent: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``parent`` (same disk, so :func:`place` is a
    rename), removed with whatever is still in it when the block ends."""
    _make_folder(parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".multikd-extract-"))
    except OSError as err:
        clear = storage_error(parent / ".multikd-extract", err)
        if clear is None:
            raise
        raise clear from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_tar(
    archive: Path,
    into: Path,
    target: Callable[[PurePosixPath], PurePosixPath | None] = lambda name: name,
) -> list[PurePosixPath]:
    """Extract the regular files of ``archive`` (any tar compression) into ``into``.

    ``target(name)`` gives each member's path under ``into`` (None: skip it). Links and
    devices are skipped; a member whose path leaves the folder (absolute, ``..``) makes the
    whole archive refused. Returns the paths written.
    """
    written = []
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise DownloadError(
                        f"{archive} holds {member.name!r}, a path outside the folder it is "
                        "extracted into; refusing to extract it"
                    )
                rel = target(name)
                if rel is None:
                    continue
                dest = into.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                written.append(rel)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DownloadError(
            f"{archive} is not a readable tar archive ({type(err).__name__}: {err})"
        ) from None
    except OSError as err:
        clear = storage_error(into / "x", err)
        if clear is None:
            raise DownloadError(f"cannot extract {archive}: {err}") from None
        raise StorageError(f"cannot extract {archive}: {clear}") from None
    return written


def place(src: Path, dst: Path, replace: bool = False) -> None:
    """Move ``src`` (a file or folder) to ``dst`` by rename; an existing ``dst`` is only
    replaced with ``replace`` (moved aside first, then deleted)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    if not replace:
        raise DownloadError(f"{dst} already exists; pass --force to replace it")
    aside = dst.with_name(f".{dst.name}.replaced-{os.getpid()}")
    os.replace(dst, aside)
    os.replace(src, dst)
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink()


def download_cifar(
    name: str,
    data_root: str | os.PathLike | None = None,
    url: str | None = None,
    md5: str | None = None,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
) -> Path:
    """Put the official ``name`` (cifar100 or cifar10) tarball's folder into ``data_root``.

    The tarball comes from ``url`` (default: the dataset page's, as torchvision pins it) and
    must have ``md5`` (default: the official sum; another only with a mirror's ``url``). It
    is downloaded beside its folder (``cifar-100-python.tar.gz.part``), extracted into a
    temporary folder, checked to hold every file, moved into place, and then deleted. A
    folder already there is kept when it holds the official files; anything else there is
    only replaced with ``force``. Returns the folder.
    """
    lay = cifar_layout(name)
    if md5 and not url:
        raise DataError(
            "--md5 replaces the official checksum, which only makes sense for a mirror's "
            "file: pass it with --url, or leave it out"
        )
    root = resolve_data_root(data_root)
    folder = root / lay.folder
    if folder.exists() and not force:
        if folder.is_dir() and verify_checksums(name, root).all_match:
            log.info("%s already holds the official %s files; nothing downloaded", folder,
                     name)
            return folder
        raise DataError(
            f"{folder} already exists and does not hold the official {name} files (see "
            f"`multikd data verify --dataset {name} --data-root {root}`); pass --force to "
            "replace it with the download, or give another --data-root"
        )
    archive = root / lay.url.rsplit("/", 1)[1]
    got = fetch(url or lay.url, archive, md5=md5 or lay.archive_md5, progress=progress,
                retries=retries, retry_wait_s=retry_wait_s)
    with staging(root) as tmp:
        try:
            extract_tar(got.path, tmp)
            missing = [f for f in lay.files if not (tmp / lay.folder / f).is_file()]
            if missing:
                raise DownloadError(
                    f"{archive} does not hold {lay.folder}/{', '.join(missing)}: it is not "
                    f"the {name} python archive. Nothing was put into {root}"
                )
        except DownloadError:
            archive.unlink()  # useless; a full disk (StorageError) keeps it for a re-run
            raise
        place(tmp / lay.folder, folder, replace=force)
    archive.unlink()
    log.info("%s: extracted from %s (md5 %s)", folder, got.path.name, got.md5)
    return folder
