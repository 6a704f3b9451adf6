"""CIFAR-100 / CIFAR-10 read from torchvision's file layout in a local folder.

``root/cifar-100-python/{train,test,meta}`` and
``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``: Python pickles of
dicts whose ``data`` is uint8 [N, 3072] (channel-planar R, G, B, each 32x32 row-major).
Reading never downloads (``multikd data download``, :mod:`multikd.data.download`, is the one
command that does) and does not check md5 sums (the synthetic look-alike files differ);
:func:`verify_checksums` reports whether the files are the official release.

The files are unpickled with a restricted unpickler that only builds plain containers and
numpy arrays, so a tampered data folder cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multikd.errors import CorruptDatasetError, DataError, MissingDatasetError


@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision keeps one CIFAR variant, the official md5 of each file (the values
    torchvision's ``CIFAR10``/``CIFAR100`` classes carry), and its normalization."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    md5: dict[str, str]
    url: str
    archive_md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files + (self.meta_file,)


CIFAR_LAYOUTS = {
    "cifar100": CifarLayout(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        num_classes=100,
    ),
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        num_classes=10,
    ),
}

CIFAR100_COARSE_NAMES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
    "household_electrical_devices household_furniture insects large_carnivores "
    "large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people "
    "reptiles small_mammals trees vehicles_1 vehicles_2"
).split()

# Fine classes grouped by superclass, in the coarse order above (CIFAR-100's own grouping).
CIFAR100_FINE_BY_COARSE = (
    "beaver dolphin otter seal whale",
    "aquarium_fish flatfish ray shark trout",
    "orchid poppy rose sunflower tulip",
    "bottle bowl can cup plate",
    "apple mushroom orange pear sweet_pepper",
    "clock keyboard lamp telephone television",
    "bed chair couch table wardrobe",
    "bee beetle butterfly caterpillar cockroach",
    "bear leopard lion tiger wolf",
    "bridge castle house road skyscraper",
    "cloud forest mountain plain sea",
    "camel cattle chimpanzee elephant kangaroo",
    "fox porcupine possum raccoon skunk",
    "crab lobster snail spider worm",
    "baby boy girl man woman",
    "crocodile dinosaur lizard snake turtle",
    "hamster mouse rabbit shrew squirrel",
    "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "bicycle bus motorcycle pickup_truck train",
    "lawn_mower rocket streetcar tank tractor",
)
# The meta file lists fine names alphabetically; label i is the i-th name.
CIFAR100_FINE_NAMES = tuple(sorted(n for group in CIFAR100_FINE_BY_COARSE for n in group.split()))
CIFAR10_NAMES = tuple(
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The folder given, else ``$MULTIKD_DATA``, else ``./data``."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("MULTIKD_DATA")
    return Path(env).expanduser() if env else Path("data")


def cifar_layout(name: str) -> CifarLayout:
    if name not in CIFAR_LAYOUTS:
        raise DataError(
            f"unknown CIFAR dataset {name!r}; valid names: {', '.join(CIFAR_LAYOUTS)}"
        )
    return CIFAR_LAYOUTS[name]


def _missing_message(name: str, folder: Path, missing: list[str]) -> str:
    lay = CIFAR_LAYOUTS[name]
    return (
        f"{name} not found: looked in {folder} for {', '.join(missing)}. "
        f"Get it with `multikd data download --dataset {name} --data-root {folder.parent}` "
        f"(or download {lay.url}, md5 {lay.archive_md5}, and extract it so that {folder} "
        f"holds {', '.join(lay.files)}); or pass the folder that holds {lay.folder}/ with "
        "--data-root DIR or MULTIKD_DATA=DIR. multikd never downloads by itself. To try the "
        "pipeline without CIFAR, use --dataset synthetic, or write look-alike files with "
        "`multikd data synth-cifar --out DIR`."
    )


# The only globals a CIFAR pickle needs: numpy arrays (as numpy 1/2 and Python 2/3 write
# them) and the latin-1 codec Python 3 uses for bytes under protocol 2.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle asks for an object no CIFAR file contains."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict (keys as stored: bytes). Any failure is a corrupt file."""
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None
    except _ForbiddenGlobal as err:
        raise CorruptDatasetError(
            f"{path} is not a CIFAR file: it asks to build {err}, which CIFAR pickles never "
            "contain; refusing to unpickle it"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle can fail in any way
        raise CorruptDatasetError(
            f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}: {err}); "
            "re-extract the archive (or rewrite the folder with `multikd data synth-cifar`)"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict")
    return obj


def _field(obj: dict, key: bytes, path: Path):
    for candidate in (key, key.decode()):
        if candidate in obj:
            return obj[candidate]
    raise CorruptDatasetError(f"{path} lacks the key {key.decode()!r}; is it a CIFAR file?")


def _int_labels(values, count: int, limit: int, what: str, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError):
        raise CorruptDatasetError(f"{path}: {what} are not integers") from None
    if labels.shape != (count,):
        raise CorruptDatasetError(
            f"{path}: {count} images but {what} of shape {list(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= limit):
        raise CorruptDatasetError(f"{path}: {what} outside 0..{limit - 1}")
    return labels


def load_cifar(name: str, root: str | os.PathLike | None, split: str):
    """Read one split of ``name`` (cifar100 or cifar10) from ``root`` (see resolve_data_root).

    Returns ``(images uint8 [N,32,32,3], labels int64 [N], class_names, coarse_labels int64
    [N] or None)``; coarse labels (superclasses) exist for CIFAR-100 only.
    """
    lay = cifar_layout(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    folder = resolve_data_root(root) / lay.folder
    files = lay.train_files if split == "train" else lay.test_files
    missing = [f for f in files + (lay.meta_file,) if not (folder / f).is_file()]
    if missing:
        raise MissingDatasetError(_missing_message(name, folder, missing))
    meta_path = folder / lay.meta_file
    raw_names = _field(read_pickle(meta_path), lay.names_key, meta_path)
    class_names = [v.decode() if isinstance(v, bytes) else str(v) for v in raw_names]
    if len(class_names) != lay.num_classes:
        raise CorruptDatasetError(
            f"{meta_path} names {len(class_names)} classes; {name} has {lay.num_classes}"
        )
    images, labels, coarse = [], [], []
    for fname in files:
        path = folder / fname
        batch = read_pickle(path)
        data = _field(batch, b"data", path)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072):
            found = (f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray)
                     else type(data).__name__)
            raise CorruptDatasetError(f"{path}: 'data' should be uint8 [N, 3072], found {found}")
        n = data.shape[0]
        labels.append(_int_labels(_field(batch, lay.label_key, path), n, lay.num_classes,
                                  lay.label_key.decode(), path))
        if name == "cifar100":
            coarse.append(_int_labels(_field(batch, b"coarse_labels", path), n,
                                      len(CIFAR100_COARSE_NAMES), "coarse_labels", path))
        images.append(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return (
        np.ascontiguousarray(np.concatenate(images)),
        np.concatenate(labels),
        class_names,
        np.concatenate(coarse) if coarse else None,
    )


@dataclass
class ChecksumReport:
    """Official md5 against found md5 (None: file missing), file by file."""

    dataset: str
    folder: Path
    rows: list[tuple[str, str, str | None]] = field(default_factory=list)

    @property
    def all_match(self) -> bool:
        return all(expected == found for _, expected, found in self.rows)

    def text(self) -> str:
        lines = [f"{self.dataset} in {self.folder}:"]
        for fname, expected, found in self.rows:
            status = "ok" if found == expected else ("MISSING" if found is None else "DIFFERS")
            lines.append(f"  {fname:<14} {status:<8} md5 {found or '-'} (official {expected})")
        lines.append(
            "all files match the official release"
            if self.all_match
            else "not the official files (fine for synthetic look-alikes; results on them "
            "are not CIFAR results)"
        )
        return "\n".join(lines)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksums(name: str, data_root=None) -> ChecksumReport:
    """Compare each file with the md5 of the official release (loading never requires it)."""
    lay = cifar_layout(name)
    folder = resolve_data_root(data_root) / lay.folder
    if not folder.is_dir():
        raise MissingDatasetError(_missing_message(name, folder, list(lay.md5)))
    report = ChecksumReport(name, folder)
    for fname, expected in lay.md5.items():
        path = folder / fname
        report.rows.append((fname, expected, _md5(path) if path.is_file() else None))
    return report
