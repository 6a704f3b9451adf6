"""The teacher cache on disk: table files, their keys and when a cell is trusted
(:mod:`multikd.train.cache` serves and fills them).

Storage. One table per teacher: a memory-mapped file ``<key>.logits`` holding a header
(magic, JSON with key, shape, dtype and a random instance id; 4096 bytes) and the array
``[rows, V, C]`` in float16 or float32, plus ``<key>.filled``, the bitmap ``[rows, V]`` of
cells that hold a value (bit-packed, CRC32-checked, naming the same key and instance id).

Keys. ``<key>`` is a hash of the teacher's fingerprint (architecture + every state_dict
tensor's bytes: :func:`teacher_fingerprint`), the dataset's (name, size, image bytes,
normalization, view scheme: :func:`dataset_fingerprint`), the storage dtype, and a
``compute`` tag for anything else that changes the teachers' outputs (e.g. AMP). A teacher
or image changed by one bit gives a new key, so a stale table is never opened. The
augmentation seed is deliberately *not* in the key: it only decides which views a sample
gets, never what a given ``(i, v)`` looks like, so one table serves every seed. A seed
that changes the images (a different train/val split, a different synthetic set) changes
the image fingerprint and therefore the key.

Trust. A cell is trusted only if its bit is set in a ``.filled`` file that names the data
file's key and instance id and passes its CRC. The ``.filled`` file is rewritten atomically
(temp file + fsync + ``os.replace``) by :meth:`LogitTable.flush` (called by
:meth:`multikd.train.cache.TeacherLogitCache.flush`), *after* the logits were flushed to
disk, so a crash between flushes loses the unflushed cells (they are recomputed) and never
exposes a cell whose logits were not written. A data file is created
complete (header + full size) under a temporary name and renamed into place; a file with a
bad header, another key or shape, or the wrong size is logged and rebuilt. Writers of one
table serialize through ``flock`` on ``<key>.lock`` and merge their bitmaps, so processes
sharing a cache directory (lockstep runs, DDP ranks) do not lose each other's cells.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import tempfile
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from multikd.atomic import atomic_write_bytes
from multikd.errors import DataError

log = logging.getLogger("multikd.train.cache")

FORMAT = 1
HEADER_BYTES = 4096
DATA_MAGIC = b"MKDLOGIT"
FILLED_MAGIC = b"MKDFILLD"
VIEW_SCHEME = "pad4-crop32-hflip-v1"
_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


# --------------------------------------------------------------------------- fingerprints
def teacher_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the teacher's class, ``arch_name`` and every state_dict entry (name,
    dtype, shape, bytes, in state_dict order): equal iff the teacher computes from the
    same weights."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(str(getattr(model, "arch_name", "")).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def dataset_fingerprint(dataset, name: str) -> str:
    """SHA-256 over the training set's name, size, image bytes (in index order),
    normalization mean/std and the augmentation's view scheme.

    ``dataset`` is a :class:`multikd.data.ImageDataset` (uint8 ``images``, ``mean``,
    ``std``): what a teacher sees for ``(index, view)`` is a function of exactly these."""
    images = getattr(dataset, "images", None)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise DataError(
            f"the teacher cache needs a multikd.data.ImageDataset (uint8 images in memory) to "
            f"fingerprint; got {type(dataset).__name__}"
        )
    h = hashlib.sha256()
    h.update(f"{name}|{len(dataset)}|{VIEW_SCHEME}|".encode())
    for stat in (dataset.mean, dataset.std):
        h.update(stat.detach().cpu().to(torch.float64).numpy().tobytes())
    h.update(images.permute(0, 2, 3, 1).contiguous().numpy().data)
    return h.hexdigest()


def cache_key(teacher_fp: str, dataset_fp: str, dtype: torch.dtype, compute: str = "") -> str:
    """The file key of one teacher's table (32 hex digits)."""
    text = f"multikd-cache|{FORMAT}|{teacher_fp}|{dataset_fp}|{dtype}|{compute}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- one table
@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pack_header(magic: bytes, meta: dict) -> bytes:
    text = json.dumps(meta, sort_keys=True).encode()
    return magic + struct.pack("<I", len(text)) + text


def _read_header(path: Path, magic: bytes) -> tuple[dict | None, int]:
    """``(meta, payload offset)``, or ``(None, 0)`` when the header is unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(magic) + 4)
            if len(head) != len(magic) + 4 or head[: len(magic)] != magic:
                return None, 0
            (length,) = struct.unpack("<I", head[len(magic):])
            if length > HEADER_BYTES:
                return None, 0
            meta = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None, 0
    return (meta, len(magic) + 4 + length) if isinstance(meta, dict) else (None, 0)


class LogitTable:
    """One teacher's ``[rows, V, C]`` logits file and its filled bitmap."""

    def __init__(self, directory: Path, key: str, rows: int, views: int, classes: int,
                 dtype: torch.dtype):
        self.key = key
        self.data_path = directory / f"{key}.logits"
        self.filled_path = directory / f"{key}.filled"
        self.lock_path = directory / f"{key}.lock"
        self.meta = {"format": FORMAT, "key": key, "rows": rows, "views": views,
                     "classes": classes, "dtype": str(dtype).removeprefix("torch.")}
        self.np_dtype = _DTYPES[dtype]
        self.shape = (rows, views, classes)
        self.size = HEADER_BYTES + rows * views * classes * np.dtype(self.np_dtype).itemsize
        with _locked(self.lock_path):
            self.instance = self._open_or_create()
            self.filled = self._read_filled()
        self.array = np.memmap(self.data_path, dtype=self.np_dtype, mode="r+",
                               offset=HEADER_BYTES, shape=self.shape)
        self.dirty = False

    def _problem(self) -> str:
        """Why the data file on disk cannot be used ("" when it can)."""
        if not self.data_path.exists():
            return "no file yet"
        meta, _ = _read_header(self.data_path, DATA_MAGIC)
        if meta is None:
            return "unreadable header"
        differs = [k for k, v in self.meta.items() if meta.get(k) != v]
        if differs:
            return f"header fields {differs} differ from the expected {self.meta}"
        if not isinstance(meta.get("instance"), str):
            return "header without an instance id"
        size = self.data_path.stat().st_size
        if size != self.size:
            return f"size {size} bytes, expected {self.size} (truncated or partial write)"
        return ""

    def _open_or_create(self) -> str:
        problem = self._problem()
        if not problem:
            meta, _ = _read_header(self.data_path, DATA_MAGIC)
            return meta["instance"]
        if problem != "no file yet":
            log.warning("teacher cache %s is not usable (%s): rebuilding it", self.data_path,
                        problem)
        instance = uuid.uuid4().hex
        header = _pack_header(DATA_MAGIC, {**self.meta, "instance": instance})
        fd, tmp = tempfile.mkstemp(dir=self.data_path.parent, prefix=f".{self.key}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(header)
                handle.truncate(self.size)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.data_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(FileNotFoundError):
            self.filled_path.unlink()
        return instance

    def _read_filled(self) -> np.ndarray:
        """The trusted bitmap ``[rows, V]`` (all False when absent or not trustworthy)."""
        rows, views, _ = self.shape
        empty = np.zeros((rows, views), dtype=bool)
        if not self.filled_path.exists():
            return empty
        meta, offset = _read_header(self.filled_path, FILLED_MAGIC)
        expected = {"format": FORMAT, "key": self.key, "instance": self.instance,
                    "rows": rows, "views": views}
        if meta is None or any(meta.get(k) != v for k, v in expected.items()):
            log.warning("teacher cache bitmap %s does not belong to %s: ignoring it",
                        self.filled_path, self.data_path)
            return empty
        packed = self.filled_path.read_bytes()[offset:]
        if len(packed) != (rows * views + 7) // 8 or zlib.crc32(packed) != meta.get("crc32"):
            log.warning("teacher cache bitmap %s is corrupt: ignoring it", self.filled_path)
            return empty
        bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=rows * views)
        return bits.astype(bool).reshape(rows, views)

    def flush(self) -> None:
        """Logits to disk first, then the merged bitmap, atomically."""
        if not self.dirty:
            return
        self.array.flush()
        with _locked(self.lock_path):
            meta, _ = _read_header(self.data_path, DATA_MAGIC)
            if meta is None or meta.get("instance") != self.instance:
                log.warning("teacher cache %s was replaced by another process; this process's "
                            "new cells are dropped", self.data_path)
                self.dirty = False
                return
            self.filled |= self._read_filled()
            packed = np.packbits(self.filled.reshape(-1)).tobytes()
            meta = {"format": FORMAT, "key": self.key, "instance": self.instance,
                    "rows": self.shape[0], "views": self.shape[1], "crc32": zlib.crc32(packed),
                    "count": int(self.filled.sum())}
            atomic_write_bytes(self.filled_path, _pack_header(FILLED_MAGIC, meta) + packed)
        self.dirty = False
