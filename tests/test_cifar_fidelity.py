"""The synthetic CIFAR files read like the real ones in every reader users run: pickle with
latin1 (torchvision, RepDistiller) or bytes (the dataset page), torchvision's own classes,
and multikd's reader, also on files written the old (Python 3 bytes) way."""

import pickle
import pickletools

import numpy as np
import pytest

from multikd.data.cifar import load_cifar, read_pickle
from multikd.data.writer import write_fake_cifar

FILES = {"cifar100": ("cifar-100-python", ["train", "test"], "meta", "fine_labels"),
         "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]
                     + ["test_batch"], "batches.meta", "labels")}


@pytest.fixture(scope="module", params=["cifar100", "cifar10"])
def written(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    write_fake_cifar(root, request.param, train=60, test=20, seed=5)
    return request.param, root


def _load(path, encoding):
    with open(path, "rb") as f:
        return pickle.load(f, encoding=encoding)


def test_latin1_and_bytes_readers_both_get_their_keys(written):
    name, root = written
    folder, batches, meta, label_key = FILES[name]
    for fname in batches:
        latin1, raw = _load(root / folder / fname, "latin1"), _load(root / folder / fname, "bytes")
        assert latin1["data"].dtype == np.uint8 and latin1["data"].shape[1] == 3072
        assert np.array_equal(latin1["data"], raw[b"data"])
        assert latin1[label_key] == raw[label_key.encode()]
        assert isinstance(latin1["filenames"][0], str) and isinstance(raw[b"filenames"][0], bytes)
        assert isinstance(latin1["batch_label"], str)
    names_key = "fine_label_names" if name == "cifar100" else "label_names"
    latin1, raw = _load(root / folder / meta, "latin1"), _load(root / folder / meta, "bytes")
    assert latin1[names_key] == [n.decode() for n in raw[names_key.encode()]]
    assert latin1[names_key][:2] == (["apple", "aquarium_fish"] if name == "cifar100"
                                    else ["airplane", "automobile"])


def test_opcodes_are_python2s(written):
    name, root = written
    folder, batches, meta, _ = FILES[name]
    for fname in [*batches, meta]:
        ops = list(pickletools.genops((root / folder / fname).read_bytes()))
        names = {op.name for op, _, _ in ops}
        assert not names & {"SHORT_BINBYTES", "BINBYTES", "BINUNICODE", "SHORT_BINUNICODE"}
        globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
        assert globals_ <= {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
        assert "SHORT_BINSTRING" in names


def test_torchvision_reads_the_folder_as_multikd_does(written, monkeypatch):
    from torchvision import datasets

    name, root = written
    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    # the md5 sums are the real files': bypass both checks (the batches' and the meta file's)
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    for train, split in ((True, "train"), (False, "test")):
        tv = cls(str(root), train=train, download=False)
        images, labels, names, _ = load_cifar(name, root, split)
        assert np.array_equal(tv.data, images) and tv.targets == labels.tolist()
        assert tv.classes == names


def test_multikd_still_reads_files_written_the_old_way(tmp_path):
    old = tmp_path / "old"
    with open(old, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, f, protocol=2)
    obj = read_pickle(old)
    assert obj[b"labels"] == [1, 2] and obj[b"data"].shape == (2, 3072)
