"""Datasets: CIFAR-100/CIFAR-10 from a local folder, the synthetic CIFAR-like set, loaders.

Everything here works offline. CIFAR files are read from torchvision's layout under a data
root (``--data-root``, else ``$MULTIKD_DATA``, else ``./data``); nothing is ever downloaded.

Augmentation is the field's CIFAR recipe (zero-pad 4, random 32x32 crop, horizontal flip,
then normalize), applied on tensors. Each training sample's *view* (crop offset and flip) is
a pure function of ``(seed, epoch, index)``, so the data stream is reproducible across
workers, processes and resumed runs, and a teacher-output cache can key on
``(index, view)``. There are ``NUM_VIEWS = 9 * 9 * 2`` views:
``view = (dy * 9 + dx) * 2 + flip`` with ``dy, dx`` in 0..8 the crop offset into the padded
40x40 image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from multikd.errors import CorruptDatasetError, DataError, MissingDatasetError

log = logging.getLogger(__name__)

PAD = 4
CROP_OFFSETS = 2 * PAD + 1
NUM_VIEWS = CROP_OFFSETS * CROP_OFFSETS * 2
IDENTITY_VIEW = (PAD * CROP_OFFSETS + PAD) * 2  # centre crop, no flip: the image itself

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision keeps one CIFAR variant, and the official md5 of each file."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    md5: dict[str, str]
    archive: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int


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
        archive="cifar-100-python.tar.gz",
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
        archive="cifar-10-python.tar.gz",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        num_classes=10,
    ),
}

DATASETS = ("cifar100", "cifar10", "synthetic")

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
CIFAR100_FINE_NAMES = tuple(sorted(n for group in CIFAR100_FINE_BY_COARSE for n in group.split()))
CIFAR10_NAMES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)


def dataset_names() -> tuple[str, ...]:
    return DATASETS


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The folder given, else ``$MULTIKD_DATA``, else ``./data``."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("MULTIKD_DATA")
    return Path(env).expanduser() if env else Path("data")


def _layout(name: str) -> CifarLayout:
    if name not in CIFAR_LAYOUTS:
        raise DataError(
            f"unknown CIFAR dataset {name!r}; valid names: {', '.join(CIFAR_LAYOUTS)}"
        )
    return CIFAR_LAYOUTS[name]


# --------------------------------------------------------------------------- CIFAR files
def _missing_message(name: str, folder: Path, missing: list[str]) -> str:
    lay = CIFAR_LAYOUTS[name]
    return (
        f"{name} not found: looked in {folder} for {', '.join(missing)}. "
        f"Download {lay.archive} from {CIFAR_URL} and extract it so that {folder} holds "
        f"{', '.join(lay.train_files + lay.test_files + (lay.meta_file,))}; then pass its "
        "parent folder with --data-root DIR or set MULTIKD_DATA=DIR. multikd never downloads "
        "by itself. To try the pipeline without CIFAR, use --dataset synthetic, or write "
        "look-alike files with `multikd data synth-cifar --out DIR`."
    )


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, ImportError, MemoryError) as err:
        raise CorruptDatasetError(
            f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}: {err}); "
            "re-extract the archive or rewrite the folder"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict")
    return obj


def _field(obj: dict, key: bytes, path: Path):
    for candidate in (key, key.decode()):
        if candidate in obj:
            return obj[candidate]
    raise CorruptDatasetError(f"{path} lacks the key {key.decode()!r}; is it a CIFAR file?")


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def load_cifar(name: str, root: str | os.PathLike | None, split: str):
    """Read one split from torchvision's layout.

    Returns ``(images uint8 [N,32,32,3], labels int64 [N], class_names, coarse_labels or None)``.
    """
    lay = _layout(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    folder = resolve_data_root(root) / lay.folder
    files = lay.train_files if split == "train" else lay.test_files
    needed = list(files) + [lay.meta_file]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise MissingDatasetError(_missing_message(name, folder, missing))
    meta_path = folder / lay.meta_file
    class_names = _names(_field(_read_pickle(meta_path), lay.names_key, meta_path))
    images, labels, coarse = [], [], []
    for fname in files:
        path = folder / fname
        batch = _read_pickle(path)
        data = np.asarray(_field(batch, b"data", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise CorruptDatasetError(
                f"{path}: 'data' should be uint8 [N, 3072], found {data.dtype} {list(data.shape)}"
            )
        lab = np.asarray(_field(batch, lay.label_key, path), dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise CorruptDatasetError(
                f"{path}: {data.shape[0]} images but {lab.shape[0]} labels"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= len(class_names)):
            raise CorruptDatasetError(
                f"{path}: labels outside 0..{len(class_names) - 1} (the meta file names "
                f"{len(class_names)} classes)"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
        if name == "cifar100":
            coarse.append(np.asarray(_field(batch, b"coarse_labels", path), dtype=np.int64))
    return (
        np.ascontiguousarray(np.concatenate(images)),
        np.concatenate(labels),
        class_names,
        np.concatenate(coarse) if coarse else None,
    )


@dataclass
class ChecksumReport:
    """Official md5 against found md5, file by file."""

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


def verify_checksums(name: str, data_root=None) -> ChecksumReport:
    """Compare each file with the md5 of the official release (loading never requires it)."""
    lay = _layout(name)
    folder = resolve_data_root(data_root) / lay.folder
    if not folder.is_dir():
        raise MissingDatasetError(_missing_message(name, folder, list(lay.md5)))
    report = ChecksumReport(name, folder)
    for fname, expected in lay.md5.items():
        path = folder / fname
        found = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None
        report.rows.append((fname, expected, found))
    return report


# --------------------------------------------------------------------------- synthetic data
def make_synthetic(
    num_classes: int = 100,
    num_superclasses: int = 20,
    train_size: int = 50000,
    test_size: int = 10000,
    seed: int = 0,
    noise: float = 0.45,
    class_strength: float = 0.7,
):
    """A procedurally generated CIFAR-like classification problem, fixed by ``seed``.

    Generator: every superclass ``s`` owns a random *prototype* ``P_s`` (a sum of three
    coloured oriented gratings plus two Gaussian colour blobs on a 32x32 canvas); every class
    ``c`` in it adds a smaller class-specific pattern ``Q_c`` of the same kind:
    ``proto_c = P_s + class_strength * Q_c``. Classes of one superclass therefore share most
    of their appearance and are more confusable than classes across superclasses, so teacher
    soft labels carry real "dark knowledge". An image of class ``c`` is
    ``g * roll(proto_c, dy, dx) * jitter + 0.5 * roll(proto_d, ...) + noise * N(0, 1)``: a
    random cyclic shift (up to +-5 px), contrast ``g`` in [0.6, 1.4], a per-channel colour
    jitter, a clutter copy of a random other class ``d`` at half strength and Gaussian pixel
    noise, then mapped to uint8 around grey 128.

    Difficulty (measured with ``experiments/synthetic_difficulty.py``, 20 classes in 5
    superclasses, 2000 train / 1000 test, batch 64, SGD lr 0.05): resnet8 reaches ~50% after
    one epoch and ~75% after six, resnet20 ~85% after twelve — clearly below 100%, better
    with capacity and training, and most errors stay inside the true superclass.

    Returns ``(train_images uint8 [N,32,32,3], train_labels, test_images, test_labels,
    class_names, coarse_of_class int64 [num_classes])``; labels are balanced (class = i mod C
    before a seeded shuffle).
    """
    if num_classes < 2 or num_superclasses < 1 or num_superclasses > num_classes:
        raise DataError(
            f"synthetic needs num_classes >= 2 and 1 <= num_superclasses <= num_classes; "
            f"got num_classes={num_classes}, num_superclasses={num_superclasses}"
        )
    if train_size < 1 or test_size < 1:
        raise DataError(f"synthetic train_size and test_size must be >= 1, got "
                        f"{train_size} and {test_size}")
    gen = torch.Generator().manual_seed(int(seed))
    coarse_of_class = torch.arange(num_classes) % num_superclasses
    protos = _patterns(num_superclasses, gen)[coarse_of_class]
    protos = protos + class_strength * _patterns(num_classes, gen)
    protos = protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)

    def draw(n: int):
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        clutter = torch.randint(0, num_classes, (n,), generator=gen)
        images = _shifted(protos[labels], gen) * torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=gen)
        images = images * torch.empty(n, 3, 1, 1).uniform_(0.8, 1.2, generator=gen)
        images = images + 0.5 * _shifted(protos[clutter], gen)
        images = images + noise * torch.randn(images.shape, generator=gen)
        pixels = (128 + 42 * images).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()

    train_x, train_y = draw(train_size)
    test_x, test_y = draw(test_size)
    names = [f"class{c:03d}_super{int(coarse_of_class[c]):02d}" for c in range(num_classes)]
    return train_x, train_y, test_x, test_y, names, coarse_of_class.numpy()


def _patterns(count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random colour patterns [count, 3, 32, 32]: gratings plus blobs."""
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    out = torch.zeros(count, 3, 32, 32)
    for _ in range(3):
        freq = torch.empty(count, 1, 1).uniform_(1.0, 4.0, generator=gen)
        angle = torch.empty(count, 1, 1).uniform_(0, torch.pi, generator=gen)
        phase = torch.empty(count, 1, 1).uniform_(0, 2 * torch.pi, generator=gen)
        wave = torch.sin(
            2 * torch.pi * freq * (xs * torch.cos(angle) + ys * torch.sin(angle)) / 32 + phase
        )
        colour = torch.randn(count, 3, 1, 1, generator=gen)
        out += colour * wave.unsqueeze(1)
    for _ in range(2):
        cy, cx = (torch.empty(count, 1, 1).uniform_(4, 28, generator=gen) for _ in range(2))
        width = torch.empty(count, 1, 1).uniform_(2.5, 7.0, generator=gen)
        blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width**2))
        out += 1.5 * torch.randn(count, 3, 1, 1, generator=gen) * blob.unsqueeze(1)
    return out


def _shifted(images: torch.Tensor, gen: torch.Generator, max_shift: int = 5) -> torch.Tensor:
    """Each image cyclically shifted by its own random (dy, dx) in [-max_shift, max_shift]."""
    n = images.shape[0]
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    rows = (torch.arange(32).view(1, 32) - dy.view(n, 1)) % 32
    cols = (torch.arange(32).view(1, 32) - dx.view(n, 1)) % 32
    idx = torch.arange(n).view(n, 1, 1)
    return images.permute(0, 2, 3, 1)[idx, rows.view(n, 32, 1), cols.view(n, 1, 32)].permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- CIFAR writer
def _atomic_pickle(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes, batch_label: str,
                 offset: int, coarse: np.ndarray | None = None) -> dict:
    batch = {
        b"batch_label": batch_label.encode(),
        label_key: [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072)),
        b"filenames": [f"synthetic_{offset + i:06d}.png".encode() for i in range(len(images))],
    }
    if coarse is not None:
        batch[b"coarse_labels"] = [int(v) for v in coarse]
    return batch


def write_fake_cifar(out, dataset: str = "cifar100", train: int = 5000, test: int = 1000,
                     seed: int = 0) -> Path:
    """Write synthetic images in the exact pickle format of ``dataset``; returns its folder.

    CIFAR-100: ``train``/``test`` dicts with ``data`` (uint8 [N,3072], channel-planar R, G, B,
    each row-major), ``fine_labels``, ``coarse_labels``, ``filenames``, ``batch_label``, and
    ``meta`` with the real ``fine_label_names``/``coarse_label_names``. CIFAR-10: five
    ``data_batch_i`` + ``test_batch`` with ``labels``, and ``batches.meta``. The fine class of
    a synthetic image follows CIFAR-100's own superclass grouping.
    """
    lay = _layout(dataset)
    if train < len(lay.train_files) or test < 1:
        raise DataError(f"need at least {len(lay.train_files)} train and 1 test image")
    folder = Path(out) / lay.folder
    folder.mkdir(parents=True, exist_ok=True)
    if dataset == "cifar100":
        tr_x, tr_y, te_x, te_y, _, _ = make_synthetic(100, 20, train, test, seed)
        # synthetic class c lies in superclass c % 20; map it onto a real fine class there
        fine_index = {n: i for i, n in enumerate(CIFAR100_FINE_NAMES)}
        to_fine = np.array([
            fine_index[CIFAR100_FINE_BY_COARSE[c % 20].split()[c // 20]] for c in range(100)
        ])
        coarse_of_fine = np.zeros(100, dtype=np.int64)
        for s, group in enumerate(CIFAR100_FINE_BY_COARSE):
            for n in group.split():
                coarse_of_fine[fine_index[n]] = s
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


# --------------------------------------------------------------------------- datasets
def view_params(view: int) -> tuple[int, int, bool]:
    """``(dy, dx, flip)`` of a view id: the crop offset into the padded image and the flip."""
    offset, flip = divmod(int(view), 2)
    dy, dx = divmod(offset, CROP_OFFSETS)
    return dy, dx, bool(flip)


def apply_view(image: torch.Tensor, view: int) -> torch.Tensor:
    """Crop-and-flip ``image`` [3,32,32] as the view says: zero-pad 4, crop 32 at (dy, dx), flip."""
    dy, dx, flip = view_params(view)
    padded = torch.nn.functional.pad(image, (PAD, PAD, PAD, PAD))
    out = padded[:, dy:dy + 32, dx:dx + 32]
    return out.flip(-1) if flip else out


def _mix64(*values: int) -> int:
    """A fixed 64-bit integer hash (splitmix64 finalizer over the values)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


class ImageDataset(Dataset):
    """In-memory uint8 images [N,32,32,3] with labels; yields normalized float [3,32,32].

    With ``augment`` the image goes through ``apply_view(img, self.view(i))`` before
    normalization (so padding is black, as in torchvision's RandomCrop on PIL images).
    ``return_index`` makes items ``(image, label, index, view)``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, *,
                 augment: bool = False, seed: int = 0, return_index: bool = False):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.return_index = return_index

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def view(self, index: int) -> int:
        """The augmentation view of sample ``index`` this epoch (identity when not augmenting)."""
        if not self.augment:
            return IDENTITY_VIEW
        return _mix64(self.seed, self.epoch, index) % NUM_VIEWS

    def __getitem__(self, index: int):
        view = self.view(index)
        image = self.images[index].float().div_(255)
        if self.augment:
            image = apply_view(image, view)
        image = (image - self.mean) / self.std
        label = int(self.labels[index])
        if self.return_index:
            return image, label, int(index), view
        return image, label


@dataclass
class DataSplits:
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset
    num_classes: int
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SYNTHETIC_DEFAULTS = dict(num_classes=100, num_superclasses=20, train_size=50000,
                          test_size=10000, seed=0)


def _synthetic_arrays(options: dict | None):
    opts = dict(SYNTHETIC_DEFAULTS)
    unknown = set(options or {}) - set(SYNTHETIC_DEFAULTS) - {"noise", "class_strength"}
    if unknown:
        raise DataError(
            f"unknown synthetic options {sorted(unknown)}; valid: "
            f"{', '.join(list(SYNTHETIC_DEFAULTS) + ['noise', 'class_strength'])}"
        )
    opts.update(options or {})
    tr_x, tr_y, te_x, te_y, names, _ = make_synthetic(**opts)
    return tr_x, tr_y, te_x, te_y, names


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: ``val_size`` samples spread over classes as evenly as the
    class frequencies allow, chosen by a generator seeded with ``seed``."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < val_size < n:
        raise DataError(
            f"val_size must be between 1 and {n - 1} (the training set has {n} images), "
            f"got {val_size}"
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * val_size / n).astype(int)
    remainder = counts * val_size / n - quota
    for i in np.argsort(-remainder, kind="stable")[: val_size - quota.sum()]:
        quota[i] += 1
    val = []
    for cls, q in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        val.append(rng.permutation(members)[:q])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx


def build_datasets(name: str, data_root=None, val_size: int = 0, seed: int = 0,
                   synthetic: dict | None = None, return_index: bool = False) -> DataSplits:
    """Train (augmented), optional val (carved from train, stratified), and test splits."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "synthetic":
        tr_x, tr_y, te_x, te_y, names = _synthetic_arrays(synthetic)
        mean, std = CIFAR_LAYOUTS["cifar100"].mean, CIFAR_LAYOUTS["cifar100"].std
    else:
        if synthetic:
            raise DataError(f"synthetic options only apply to --dataset synthetic, not {name}")
        tr_x, tr_y, names, _ = load_cifar(name, data_root, "train")
        te_x, te_y, _, _ = load_cifar(name, data_root, "test")
        mean, std = CIFAR_LAYOUTS[name].mean, CIFAR_LAYOUTS[name].std
    val = None
    if val_size:
        train_idx, val_idx = stratified_split(tr_y, val_size, seed)
        val = ImageDataset(tr_x[val_idx], tr_y[val_idx], mean, std)
        tr_x, tr_y = tr_x[train_idx], tr_y[train_idx]
    return DataSplits(
        train=ImageDataset(tr_x, tr_y, mean, std, augment=True, seed=seed,
                           return_index=return_index),
        val=val,
        test=ImageDataset(te_x, te_y, mean, std),
        num_classes=len(names),
        class_names=list(names),
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------- loaders
class EpochShuffleSampler(Sampler[int]):
    """Shuffles with ``torch.randperm(n, generator seeded with seed + epoch)``.

    This is the order torch's ``DistributedSampler(seed=seed, shuffle=True)`` uses on one
    replica, so single- and multi-process runs see the same global order.
    ``set_epoch`` also moves the dataset's augmentation to that epoch.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True):
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(n, generator=gen).tolist())


def build_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0,
                 workers: int = 0, device: str = "cpu", drop_last: bool = False) -> DataLoader:
    """A reproducible loader: same seed and epoch, same batches, bit for bit.

    A training batch larger than the training set is an error (no step could be full);
    evaluation batches may exceed a small split.

    Workers are not persistent, so each epoch's workers copy the dataset after
    ``set_epoch`` and see the right augmentation views.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if train and batch_size > len(dataset):
        raise DataError(
            f"batch size {batch_size} is larger than the training set ({len(dataset)} "
            "images); lower --batch-size"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset, seed, shuffle=train),
        num_workers=workers,
        pin_memory=str(device).startswith("cuda"),
        drop_last=drop_last,
    )


def describe(name: str, data_root=None, val_size: int = 0, synthetic: dict | None = None) -> str:
    """Split sizes, class count and per-channel mean/std of the training images."""
    splits = build_datasets(name, data_root=data_root, val_size=val_size, synthetic=synthetic)
    pixels = splits.train.images.float().div(255)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).tolist()
    where = "" if name == "synthetic" else f" in {resolve_data_root(data_root)}"
    lines = [
        f"{name}{where}",
        f"  train {len(splits.train)}"
        + (f"  val {len(splits.val)}" if splits.val is not None else "")
        + f"  test {len(splits.test)}",
        f"  classes {splits.num_classes} (first: {', '.join(splits.class_names[:5])})",
        "  train mean " + " ".join(f"{m:.4f}" for m in mean),
        "  train std  " + " ".join(f"{s:.4f}" for s in std),
    ]
    return "\n".join(lines)
