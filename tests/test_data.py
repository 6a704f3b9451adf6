import pickle
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from multikd import data
from multikd.cli import main
from multikd.errors import CorruptDatasetError, DataError, MissingDatasetError

SMALL = dict(num_classes=10, num_superclasses=2, train_size=200, test_size=50, seed=1)


# ----------------------------------------------------------------- CIFAR file format
def test_fake_cifar100_loads_through_the_real_path(fake_cifar100_root):
    x, y, names, coarse = data.load_cifar("cifar100", fake_cifar100_root, "train")
    assert x.shape == (500, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() <= 99
    assert len(names) == 100 and names[0] == "apple" and names[-1] == "worm"
    assert coarse.shape == y.shape and coarse.max() <= 19
    # fine and coarse labels agree with CIFAR-100's grouping: 'apple' is a fruit_and_vegetables
    apple = names.index("apple")
    assert set(coarse[y == apple]) <= {data.CIFAR100_COARSE_NAMES.index("fruit_and_vegetables")}
    tx, ty, _, _ = data.load_cifar("cifar100", fake_cifar100_root, "test")
    assert tx.shape == (200, 32, 32, 3)
    splits = data.build_datasets("cifar100", data_root=fake_cifar100_root)
    assert splits.num_classes == 100 and len(splits.train) == 500 and len(splits.test) == 200
    image, label = splits.test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 100


def test_cifar100_pickle_layout_byte_level(fake_cifar100_root):
    folder = fake_cifar100_root / "cifar-100-python"
    with open(folder / "train", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert set(raw) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert raw[b"data"].shape == (500, 3072) and raw[b"data"].dtype == np.uint8
    assert isinstance(raw[b"fine_labels"], list) and isinstance(raw[b"filenames"][0], bytes)
    with open(folder / "meta", "rb") as fh:
        meta = pickle.load(fh, encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    # channel-planar: the first 1024 bytes are the red plane, row-major
    x, _, _, _ = data.load_cifar("cifar100", fake_cifar100_root, "train")
    assert np.array_equal(raw[b"data"][7, :1024].reshape(32, 32), x[7, :, :, 0])
    assert np.array_equal(raw[b"data"][7, 2048 + 32 * 5 + 9], x[7, 5, 9, 2])


def test_fake_cifar10_layout(fake_cifar10_root):
    folder = fake_cifar10_root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )
    with open(folder / "data_batch_3", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert b"labels" in raw and raw[b"data"].shape[1] == 3072
    splits = data.build_datasets("cifar10", data_root=fake_cifar10_root, val_size=50)
    assert splits.num_classes == 10 and splits.class_names[0] == "airplane"
    assert len(splits.train) == 200 and len(splits.val) == 50 and len(splits.test) == 100
    assert splits.mean == (0.4914, 0.4822, 0.4465)


def test_missing_dataset_names_folder_and_files(tmp_path):
    with pytest.raises(MissingDatasetError) as err:
        data.build_datasets("cifar100", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg
    assert "train" in msg and "meta" in msg and "--data-root" in msg and "MULTIKD_DATA" in msg


def test_data_root_falls_back_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIKD_DATA", str(tmp_path))
    assert data.resolve_data_root(None) == tmp_path
    assert data.resolve_data_root("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("MULTIKD_DATA")
    assert data.resolve_data_root(None) == Path("data")


def test_truncated_file_is_a_clear_error(fake_cifar100_root, tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("test", "meta"):
        (folder / name).write_bytes((fake_cifar100_root / "cifar-100-python" / name).read_bytes())
    full = (fake_cifar100_root / "cifar-100-python" / "train").read_bytes()
    (folder / "train").write_bytes(full[: len(full) // 2])
    with pytest.raises(CorruptDatasetError, match="truncated"):
        data.load_cifar("cifar100", tmp_path, "train")


def test_cli_missing_dataset_exit_code_and_no_traceback(tmp_path, capsys):
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: cifar100 not found") and "Traceback" not in err


@pytest.mark.slow
def test_cli_missing_dataset_exit_code_in_a_fresh_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "multikd", "data", "info", "--dataset", "cifar100",
         "--data-root", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cifar-100-python" in proc.stderr


def test_cli_synth_info_and_verify(tmp_path, capsys):
    assert main(["data", "synth-cifar", "--out", str(tmp_path), "--train", "60",
                 "--test", "20"]) == 0
    assert main(["data", "info", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train 60" in out and "test 20" in out and "classes 100" in out
    assert "train mean" in out
    # the fake files are not the official ones: verify says so and exits 1
    assert main(["data", "verify", "--data-root", str(tmp_path)]) == 1
    report = data.verify_checksums("cifar100", tmp_path)
    assert not report.all_match and "DIFFERS" in report.text()


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="cifar100, cifar10, synthetic"):
        data.build_datasets("imagenet")


# ----------------------------------------------------------------- synthetic data
def test_synthetic_is_determined_by_seed():
    a = data.make_synthetic(**SMALL)
    b = data.make_synthetic(**SMALL)
    c = data.make_synthetic(**{**SMALL, "seed": 2})
    assert all(np.array_equal(u, v) for u, v in zip(a[:4], b[:4]))
    assert not np.array_equal(a[0], c[0])
    tr_x, tr_y, te_x, te_y, names, coarse = a
    assert tr_x.shape == (200, 32, 32, 3) and te_x.shape == (50, 32, 32, 3)
    assert np.bincount(tr_y).tolist() == [20] * 10  # balanced
    assert len(names) == 10 and coarse.tolist() == [0, 1] * 5


def test_synthetic_superclass_structure():
    """Mean images of classes in one superclass are closer than across superclasses."""
    tr_x, tr_y, _, _, _, coarse = data.make_synthetic(
        num_classes=12, num_superclasses=3, train_size=1200, test_size=12, seed=0)
    means = np.stack([tr_x[tr_y == c].astype(np.float64).mean(0).ravel() for c in range(12)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    same = coarse[:, None] == coarse[None]
    off_diag = ~np.eye(12, dtype=bool)
    assert dist[same & off_diag].mean() < 0.8 * dist[~same].mean()


def test_synthetic_options_are_checked():
    with pytest.raises(DataError, match="unknown synthetic options"):
        data.build_datasets("synthetic", synthetic={"classes": 3})
    with pytest.raises(DataError, match="num_superclasses"):
        data.make_synthetic(num_classes=4, num_superclasses=5, train_size=8, test_size=8)
    with pytest.raises(DataError, match="only apply to --dataset synthetic"):
        data.build_datasets("cifar100", synthetic={"num_classes": 3})


# ----------------------------------------------------------------- augmentation and views
def test_apply_view_matches_hand_computed_crop_and_flip():
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32) + 1
    view = (2 * 9 + 7) * 2 + 1  # dy=2, dx=7, flipped
    assert data.view_params(view) == (2, 7, True)
    out = data.apply_view(image, view)
    # padded row r, col c holds image[r-4, c-4] inside, 0 outside; crop rows 2..33, cols 7..38
    expected = torch.zeros(3, 32, 32)
    for r in range(32):
        for c in range(32):
            pr, pc = r + 2 - 4, c + 7 - 4
            if 0 <= pr < 32 and 0 <= pc < 32:
                expected[:, r, c] = image[:, pr, pc]
    assert torch.equal(out, expected.flip(-1))
    assert torch.equal(data.apply_view(image, data.IDENTITY_VIEW), image)


def test_views_are_a_pure_function_of_seed_epoch_index():
    images = np.zeros((64, 32, 32, 3), dtype=np.uint8)
    ds = data.ImageDataset(images, np.zeros(64), (0, 0, 0), (1, 1, 1), augment=True, seed=5)
    first = [ds.view(i) for i in range(64)]
    assert len(set(first)) > 20 and all(0 <= v < data.NUM_VIEWS for v in first)
    ds.set_epoch(1)
    assert [ds.view(i) for i in range(64)] != first
    ds.set_epoch(0)
    assert [ds.view(i) for i in range(64)] == first
    other = data.ImageDataset(images, np.zeros(64), (0, 0, 0), (1, 1, 1), augment=True, seed=6)
    assert [other.view(i) for i in range(64)] != first


def test_train_item_is_the_view_of_the_normalized_image():
    splits = data.build_datasets("synthetic", synthetic=SMALL, return_index=True)
    train = splits.train
    train.set_epoch(3)
    image, label, index, view = train[17]
    raw = torch.from_numpy(train.images[17].numpy()).float() / 255
    mean, std = torch.tensor(splits.mean).view(3, 1, 1), torch.tensor(splits.std).view(3, 1, 1)
    expected = (data.apply_view(raw, view) - mean) / std
    assert index == 17 and view == train.view(17) and label == int(train.labels[17])
    assert torch.allclose(image, expected)
    test_image, _ = splits.test[4]
    raw_test = splits.test.images[4].float() / 255
    assert torch.allclose(test_image, (raw_test - mean) / std)


def test_normalization_constants():
    assert data.CIFAR_LAYOUTS["cifar100"].mean == (0.5071, 0.4865, 0.4409)
    assert data.CIFAR_LAYOUTS["cifar100"].std == (0.2673, 0.2564, 0.2762)


# ----------------------------------------------------------------- splits and loaders
def test_stratified_val_split():
    labels = np.repeat(np.arange(5), [40, 40, 40, 40, 40])
    train_idx, val_idx = data.stratified_split(labels, 50, seed=0)
    assert np.bincount(labels[val_idx]).tolist() == [10] * 5
    assert len(np.intersect1d(train_idx, val_idx)) == 0 and len(train_idx) + len(val_idx) == 200
    again = data.stratified_split(labels, 50, seed=0)[1]
    other = data.stratified_split(labels, 50, seed=1)[1]
    assert np.array_equal(val_idx, again) and not np.array_equal(val_idx, other)
    with pytest.raises(DataError, match="val_size"):
        data.stratified_split(labels, 200, seed=0)


def test_val_split_leaves_test_untouched():
    plain = data.build_datasets("synthetic", synthetic=SMALL)
    with_val = data.build_datasets("synthetic", synthetic=SMALL, val_size=40)
    assert len(with_val.train) == 160 and len(with_val.val) == 40
    assert torch.equal(plain.test.images, with_val.test.images)
    assert not with_val.val.augment


def test_loader_order_is_reproducible_and_matches_distributed_sampler():
    splits = data.build_datasets("synthetic", synthetic=SMALL, seed=7)

    def epoch_batches(epoch):
        loader = data.build_loader(splits.train, 32, train=True, seed=7)
        loader.sampler.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b = epoch_batches(2), epoch_batches(2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], epoch_batches(3)[0][1])
    sampler = data.build_loader(splits.train, 32, train=True, seed=7).sampler
    dist = DistributedSampler(splits.train, num_replicas=1, rank=0, seed=7, shuffle=True)
    sampler.set_epoch(4)
    dist.set_epoch(4)
    assert list(sampler) == list(dist)


def test_loader_rejects_batch_larger_than_data():
    splits = data.build_datasets("synthetic", synthetic=SMALL)
    with pytest.raises(DataError, match="larger than the training set"):
        data.build_loader(splits.train, 201, train=True)
    eval_loader = data.build_loader(splits.test, 256, train=False)
    assert [len(y) for _, y in eval_loader] == [50] and not eval_loader.pin_memory


# ----------------------------------------------------------------- file facts and damage
def test_md5_and_archives_are_torchvisions():
    import torchvision.datasets as tvd

    for name, cls in (("cifar100", tvd.CIFAR100), ("cifar10", tvd.CIFAR10)):
        lay = data.CIFAR_LAYOUTS[name]
        official = dict(cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]])
        assert lay.md5 == official and lay.folder == cls.base_folder
        assert (lay.url, lay.archive_md5) == (cls.url, cls.tgz_md5)
    assert data.CIFAR_LAYOUTS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert data.CIFAR_LAYOUTS["cifar10"].std == (0.2470, 0.2435, 0.2616)
    assert len(set(data.CIFAR100_FINE_NAMES)) == 100 and len(data.CIFAR10_NAMES) == 10


def _copy_cifar10(root, tmp_path):
    """A writable copy of the fake CIFAR-10 folder under ``tmp_path``."""
    dst = tmp_path / "cifar-10-batches-py"
    dst.mkdir()
    for path in (root / "cifar-10-batches-py").iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_verify_reports_match_missing_and_difference(fake_cifar10_root, tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    folder = _copy_cifar10(fake_cifar10_root, tmp_path)
    lay = data.CIFAR_LAYOUTS["cifar10"]
    found = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in lay.md5}
    monkeypatch.setitem(data.CIFAR_LAYOUTS, "cifar10", dataclasses.replace(lay, md5=found))
    assert data.verify_checksums("cifar10", tmp_path).all_match
    (folder / "data_batch_2").unlink()
    report = data.verify_checksums("cifar10", tmp_path)
    assert not report.all_match
    assert [r[0] for r in report.rows if r[2] is None] == ["data_batch_2"]
    assert "MISSING" in report.text()
    with pytest.raises(MissingDatasetError, match="cifar-10-python.tar.gz"):
        data.load_cifar("cifar10", tmp_path, "train")


def test_missing_message_says_where_to_get_the_archive(tmp_path):
    with pytest.raises(MissingDatasetError) as err:
        data.load_cifar("cifar100", tmp_path, "test")
    msg = str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg
    assert "test, meta" in msg and "train" not in msg.split("holds")[0]


@pytest.mark.parametrize("cut", [0, 1, 40, 0.3, 0.999])
def test_any_truncation_is_a_corrupt_dataset_error(fake_cifar10_root, tmp_path, cut):
    folder = _copy_cifar10(fake_cifar10_root, tmp_path)
    full = (folder / "test_batch").read_bytes()
    size = cut if isinstance(cut, int) else int(len(full) * cut)
    (folder / "test_batch").write_bytes(full[:size])
    with pytest.raises(CorruptDatasetError, match="test_batch"):
        data.load_cifar("cifar10", tmp_path, "test")


def _write_cifar10_test(tmp_path, fake_cifar10_root, batch):
    folder = _copy_cifar10(fake_cifar10_root, tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    return folder


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickling ran code')",))


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "uint8"),
    ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, r"\[4, 3000\]"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "labels"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, "outside 0..9"),
    ({b"labels": [0] * 4}, "lacks the key 'data'"),
    ([1, 2, 3], "not a CIFAR dict"),
    ({b"data": _Boom()}, "asks to build __builtin__.exec"),
])
def test_malformed_files_are_named(tmp_path, fake_cifar10_root, batch, message):
    _write_cifar10_test(tmp_path, fake_cifar10_root, batch)
    with pytest.raises(CorruptDatasetError, match=message) as err:
        data.load_cifar("cifar10", tmp_path, "test")
    assert "test_batch" in str(err.value)


def test_numpy1_pickles_load_without_warnings(fake_cifar10_root, tmp_path):
    """Files written by numpy 1 / Python 2 (the originals) name numpy.core.multiarray."""
    import warnings

    folder = _copy_cifar10(fake_cifar10_root, tmp_path)
    raw = (folder / "test_batch").read_bytes()
    # the writer names numpy as the originals do (numpy 1 cannot import numpy._core)
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = data.load_cifar("cifar10", tmp_path, "test")
    new = data.load_cifar("cifar10", fake_cifar10_root, "test")
    assert np.array_equal(old[0], new[0]) and np.array_equal(old[1], new[1])


def test_describe_statistics(tmp_path):
    options = {**SMALL, "train_size": 100}
    text = data.describe("synthetic", synthetic=options, val_size=20)
    tr_x = data.build_datasets("synthetic", synthetic=options, val_size=20).train.images
    pixels = tr_x.double() / 255
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert "train 80  val 20  test 50" in text and "classes 10" in text
    assert "train mean " + " ".join(f"{m:.4f}" for m in mean.tolist()) in text
    assert "train std  " + " ".join(f"{s:.4f}" for s in std.tolist()) in text


def test_cli_info_synthetic_options(capsys):
    args = ["data", "info", "--dataset", "synthetic"] + [
        x for k, v in SMALL.items() for x in ("--synthetic", f"{k}={v}")]
    assert main(args) == 0
    assert "train 200  test 50" in capsys.readouterr().out
    assert main(["data", "info", "--dataset", "synthetic", "--synthetic", "colours=3"]) == 2
    assert "--synthetic 'colours=3': give a size" in capsys.readouterr().err


# ----------------------------------------------------------------- synthetic internals
def test_synthetic_output_does_not_depend_on_the_generation_chunk(monkeypatch):
    from multikd.data import synthetic

    whole = data.make_synthetic(**SMALL)
    monkeypatch.setattr(synthetic, "_CHUNK", 7)
    chunked = data.make_synthetic(**SMALL)
    assert all(np.array_equal(u, v) for u, v in zip(whole[:4], chunked[:4]))


def test_shifted_is_a_cyclic_roll():
    from multikd.data.synthetic import _shifted

    images = torch.randn(3, 3, 32, 32)
    shifts = torch.tensor([[0, 0], [2, -5], [-1, 4]])
    out = _shifted(images, shifts)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], torch.roll(images[i], shifts=(dy, dx), dims=(1, 2)))


# ----------------------------------------------------------------- views and workers
def test_view_ids_are_pinned():
    """Teacher caches key on (index, view): the view scheme must never drift."""
    assert [data.view_of(0, 0, i) for i in range(4)] == [10, 72, 72, 93]
    assert data.view_of(7, 3, 12345) == 120
    assert data.view_params(data.IDENTITY_VIEW) == (4, 4, False)
    with pytest.raises(ValueError):
        data.view_params(data.NUM_VIEWS)


def test_persistent_workers_follow_set_epoch_and_leave_global_rng_alone():
    splits = data.build_datasets("synthetic", synthetic=SMALL, seed=2, return_index=True)

    def run(workers):
        loader = data.build_loader(splits.train, 50, train=True, seed=2, workers=workers)
        rng = torch.get_rng_state()
        out = []
        for epoch in (0, 1, 2):
            loader.sampler.set_epoch(epoch)
            out.append([batch for batch in loader])
        assert torch.equal(rng, torch.get_rng_state())
        return out, loader

    inline, _ = run(0)
    forked, loader = run(1)
    assert loader.persistent_workers
    for a, b in zip(inline, forked):
        for (xa, ya, ia, va), (xb, yb, ib, vb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            assert torch.equal(ia, ib) and torch.equal(va, vb)
    assert not torch.equal(inline[0][0][3], inline[1][0][3])
