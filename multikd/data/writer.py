"""Synthetic images written as CIFAR files in the official files' pickle format.

The official ``cifar-100-python`` / ``cifar-10-batches-py`` files were pickled by Python 2
(protocol 2): their keys, label names, batch labels and file names are Python 2 ``str``
(opcodes ``SHORT_BINSTRING`` / ``BINSTRING``) and ``data`` is a numpy array as Python 2's
numpy reduced it (``numpy.core.multiarray._reconstruct``, ``numpy.dtype('u1')`` with its
Python 2 state, the raw buffer as a Python 2 ``str``). :class:`_Py2Pickler` writes the same
opcodes, so every reader of the real files reads these: ``pickle.load(f,
encoding="latin1")["data"]`` (torchvision, RepDistiller and the codebases built on it),
``pickle.load(f, encoding="bytes")[b"data"]`` (the dataset page's recipe), under numpy 1 and
2 alike (Python 3's own reduce of an array would name ``numpy._core`` under numpy 2, which
numpy 1 cannot import). The images are synthetic; the format is the real one.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

from multikd.atomic import atomic_open
from multikd.data.cifar import (
    CIFAR10_NAMES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_BY_COARSE,
    CIFAR100_FINE_NAMES,
    cifar_layout,
)
from multikd.data.synthetic import make_synthetic
from multikd.errors import DataError


class _Py2Global:
    """A global named as Python 2 wrote it (``GLOBAL module name``), callable so that
    pickle accepts it as a reduce function."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pragma: no cover - never called, only pickled
        raise TypeError("a pickling placeholder")


_RECONSTRUCT = _Py2Global("numpy.core.multiarray", "_reconstruct")
_NDARRAY = _Py2Global("numpy", "ndarray")
_DTYPE = _Py2Global("numpy", "dtype")


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote the CIFAR files: ``bytes`` become Python 2 ``str``
    (``SHORT_BINSTRING`` / ``BINSTRING``), uint8 arrays Python 2 numpy's reduce."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global_name(self, obj: _Py2Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[_Py2Global] = save_global_name

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            if obj.dtype != np.uint8 or obj.ndim != 2:
                raise DataError(f"CIFAR files hold uint8 [N, 3072] arrays, not {obj.dtype} "
                                f"{obj.shape}")
            dtype = (_DTYPE, (b"u1", 0, 1), (3, b"|", None, None, None, -1, -1, 0))
            state = (1, obj.shape, _Py2Dtype(dtype), False, np.ascontiguousarray(obj).tobytes())
            return _RECONSTRUCT, (_NDARRAY, (0,), b"b"), state
        if isinstance(obj, _Py2Dtype):
            return obj.reduced
        return NotImplemented


class _Py2Dtype:
    """``numpy.dtype('u1')`` as Python 2's numpy reduced it."""

    def __init__(self, reduced):
        self.reduced = reduced


def py2_pickle_bytes(obj) -> bytes:
    """``obj`` pickled as Python 2 pickled the CIFAR files (see the module doc)."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _atomic_pickle(obj, path: Path) -> None:
    data = py2_pickle_bytes(obj)
    with atomic_open(path) as handle:
        handle.write(data)


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes, batch_label: str,
                 offset: int, coarse: np.ndarray | None = None) -> dict:
    """One batch dict: ``data`` uint8 [N, 3072] = the NHWC images made channel-planar."""
    batch = {
        b"batch_label": batch_label.encode(),
        label_key: [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072)),
        b"filenames": [f"synthetic_{offset + i:06d}.png".encode() for i in range(len(images))],
    }
    if coarse is not None:
        batch[b"coarse_labels"] = [int(v) for v in coarse]
    return batch


def _cifar100_maps() -> tuple[np.ndarray, np.ndarray]:
    """(fine label of synthetic class c, coarse label of each fine label): synthetic class c
    lies in superclass c % 20 and becomes the (c // 20)-th fine class of that CIFAR-100
    superclass, so fine and coarse labels agree with CIFAR-100's grouping."""
    fine_index = {name: i for i, name in enumerate(CIFAR100_FINE_NAMES)}
    to_fine = np.array([
        fine_index[CIFAR100_FINE_BY_COARSE[c % 20].split()[c // 20]] for c in range(100)
    ])
    coarse_of_fine = np.zeros(100, dtype=np.int64)
    for s, group in enumerate(CIFAR100_FINE_BY_COARSE):
        for name in group.split():
            coarse_of_fine[fine_index[name]] = s
    return to_fine, coarse_of_fine


def write_fake_cifar(out, dataset: str = "cifar100", train: int = 5000, test: int = 1000,
                     seed: int = 0) -> Path:
    """Write synthetic images in the exact pickle format of ``dataset``; returns its folder.

    CIFAR-100 (``out/cifar-100-python``): ``train``/``test`` dicts with ``data`` (uint8
    [N,3072], channel-planar R, G, B, each row-major), ``fine_labels``, ``coarse_labels``,
    ``filenames``, ``batch_label``, and ``meta`` with the real ``fine_label_names`` and
    ``coarse_label_names`` (100 synthetic classes in 20 superclasses, mapped onto CIFAR-100's
    own grouping). CIFAR-10 (``out/cifar-10-batches-py``): ``data_batch_1..5`` and
    ``test_batch`` with ``labels``, and ``batches.meta`` with ``label_names`` (10 synthetic
    classes in 2 superclasses). Keys and names are Python 2 strings, as in the originals
    (module doc). Every file is written atomically.
    """
    lay = cifar_layout(dataset)
    if train < len(lay.train_files) or test < 1:
        raise DataError(f"{dataset} look-alike files need at least {len(lay.train_files)} "
                        f"train and 1 test image, got train={train}, test={test}")
    folder = Path(out) / lay.folder
    folder.mkdir(parents=True, exist_ok=True)
    if dataset == "cifar100":
        tr_x, tr_y, te_x, te_y, _, _ = make_synthetic(100, 20, train, test, seed)
        to_fine, coarse_of_fine = _cifar100_maps()
        for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
            fine = to_fine[y]
            batch = _cifar_batch(x, fine, lay.label_key, f"{split}ing batch 1 of 1", 0,
                                 coarse_of_fine[fine])
            _atomic_pickle(batch, folder / split)
        meta = {
            b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES],
        }
    else:
        tr_x, tr_y, te_x, te_y, _, _ = make_synthetic(10, 2, train, test, seed)
        chunks = np.array_split(np.arange(train), len(lay.train_files))
        for i, (fname, idx) in enumerate(zip(lay.train_files, chunks)):
            batch = _cifar_batch(tr_x[idx], tr_y[idx], lay.label_key,
                                 f"training batch {i + 1} of 5", int(idx[0]))
            _atomic_pickle(batch, folder / fname)
        _atomic_pickle(
            _cifar_batch(te_x, te_y, lay.label_key, "testing batch 1 of 1", 0),
            folder / "test_batch",
        )
        meta = {
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_cases_per_batch": len(chunks[0]),
            b"num_vis": 3072,
        }
    _atomic_pickle(meta, folder / lay.meta_file)
    return folder
