"""Teacher-logit cache: exact serving, hits across epochs, keyed invalidation, corruption and
partial writes never trusted, budget."""

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from multikd import data
from multikd.train.cache import (
    HEADER_BYTES,
    RUN_MULTIPLE,
    CachedTeachers,
    TeacherLogitCache,
    cache_key,
    dataset_fingerprint,
    teacher_fingerprint,
)
from multikd.method.ensemble import TeacherEnsemble
from multikd.errors import ConfigError, DataError
from multikd.models import create_model

CLASSES = 10
SYNTH = dict(num_classes=CLASSES, num_superclasses=5, train_size=40, test_size=10, seed=1)


def _splits(split_seed=0, val_size=0, **synthetic):
    """The synthetic set; ``split_seed`` seeds augmentation and the val split, ``synthetic``
    overrides the generator's options (its ``seed`` draws other images)."""
    return data.build_datasets(
        "synthetic", val_size=val_size, seed=split_seed, synthetic={**SYNTH, **synthetic},
        return_index=True,
    )


@pytest.fixture(scope="module")
def train():
    return _splits().train


@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(0)
    return [create_model(a, num_classes=CLASSES) for a in ("resnet8", "resnet14")]


class Counting:
    """The ensemble, counting how many samples the live teachers see."""

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self.num_teachers, self.num_classes = ensemble.num_teachers, ensemble.num_classes
        self.samples = 0

    def __call__(self, x, y, features=True):
        self.samples += len(y)
        return self.ensemble(x, y, features=features)


def _open(directory, teachers, train, dtype=torch.float32, budget=None):
    return TeacherLogitCache.for_teachers(directory, teachers, train, "synthetic", CLASSES,
                                          dtype=dtype, budget=budget)


def _epoch(cached, train, epoch, batch=16):
    """``[(served EnsembleOutput, live EnsembleOutput on the same batch)]`` for one epoch."""
    loader = data.build_loader(train, batch, train=True, seed=0)
    loader.sampler.set_epoch(epoch)
    pairs = []
    for x, y, index, view in loader:
        served = cached(x, y, index, view)
        pairs.append((served, cached.ensemble.ensemble(x, y, features=False)))
    cached.flush()
    return pairs


def _views(dataset, epoch):
    dataset.set_epoch(epoch)
    return [dataset.view(i) for i in range(len(dataset))]


def _batch(dataset, cells):
    """The loader's batch of ``(index, view)`` cells: each item is the dataset's own, taken
    at an epoch whose view of that index is the wanted one."""
    items = []
    for index, view in cells:
        epoch = next(e for e in range(100_000) if _views_of(dataset, index, e) == view)
        dataset.set_epoch(epoch)
        items.append(dataset[index])
    return default_collate(items)


def _views_of(dataset, index, epoch):
    dataset.set_epoch(epoch)
    return dataset.view(index)


def test_fp32_serves_the_live_logits_exactly_and_a_repeated_epoch_runs_no_teacher(
    tmp_path, teachers, train
):
    live = Counting(TeacherEnsemble(teachers))
    cached = CachedTeachers(live, _open(tmp_path, teachers, train))
    for served, ref in _epoch(cached, train, 0):
        assert served.logits.dtype == torch.float32 and served.features == [None, None]
        assert torch.equal(served.logits, ref.logits)
        assert torch.equal(served.ce, ref.ce)
    assert live.samples == len(train) and cached.cache.hits == 0

    seen = _views(train, 0)  # a batch of 24 cells seen in epoch 0 and 8 new ones, mixed
    cells = [(i, seen[i] if i % 4 else (seen[i] + 1) % data.NUM_VIEWS) for i in range(32)]
    x, y, index, view = _batch(train, cells)
    served = cached(x, y, index, view)
    assert cached.cache.hits == 24 and cached.cache.misses == len(train) + 8
    assert live.samples == len(train) + RUN_MULTIPLE  # the 8 misses, padded with 8 hits
    assert torch.equal(served.logits, live.ensemble(x, y).logits)
    assert torch.equal(served.ce, live.ensemble(x, y).ce)

    for served, ref in _epoch(cached, train, 0):
        assert torch.equal(served.logits, ref.logits)
    assert live.samples == len(train) + RUN_MULTIPLE  # the repeated epoch ran no teacher
    assert cached.cache.hits == 24 + len(train)


def test_fp16_is_within_rounding_and_the_same_for_hits_and_misses(tmp_path, teachers, train):
    cached = CachedTeachers(Counting(TeacherEnsemble(teachers)),
                            _open(tmp_path, teachers, train, dtype=torch.float16))
    cold = _epoch(cached, train, 0)
    warm = _epoch(cached, train, 0)
    assert cached.ensemble.samples == len(train)
    for (miss, ref), (hit, _) in zip(cold, warm):
        assert torch.equal(miss.logits, hit.logits)
        err = (hit.logits - ref.logits).abs()
        assert (err <= ref.logits.abs() * 2.0**-11 + 2.0**-24).all()
        assert err.max() > 0  # fp16 storage really rounds
        torch.testing.assert_close(hit.ce, ref.ce, rtol=1e-3, atol=1e-3)


def test_a_flushed_cache_is_warm_for_the_next_process(tmp_path, teachers, train):
    cached = CachedTeachers(Counting(TeacherEnsemble(teachers)), _open(tmp_path, teachers, train))
    _epoch(cached, train, 0)
    cached.close()
    later = CachedTeachers(Counting(TeacherEnsemble(teachers)), _open(tmp_path, teachers, train))
    for served, ref in _epoch(later, train, 0):
        assert torch.equal(served.logits, ref.logits)
    assert later.ensemble.samples == 0
    filled = np.logical_and.reduce([t.filled for t in later.cache.tables])  # every teacher's
    assert filled.mean() == pytest.approx(1 / data.NUM_VIEWS)


def test_keys_change_with_any_teacher_weight_image_dtype_or_compute(teachers, train):
    base = teacher_fingerprint(teachers[0])
    assert teacher_fingerprint(teachers[0]) == base
    changed = create_model("resnet8", num_classes=CLASSES)
    changed.load_state_dict(teachers[0].state_dict())
    assert teacher_fingerprint(changed) == base
    with torch.no_grad():
        changed.fc.weight[0, 0] += 1e-6
    assert teacher_fingerprint(changed) != base

    images = dataset_fingerprint(train, "synthetic")
    assert dataset_fingerprint(_splits(split_seed=5).train, "synthetic") == images  # views only
    assert dataset_fingerprint(train, "other-name") != images
    assert dataset_fingerprint(_splits(seed=2).train, "synthetic") != images
    split_a = dataset_fingerprint(_splits(split_seed=0, val_size=10).train, "synthetic")
    split_b = dataset_fingerprint(_splits(split_seed=1, val_size=10).train, "synthetic")
    assert len({images, split_a, split_b}) == 3  # the split seed picks other training images

    key = cache_key(base, images, torch.float16)
    assert cache_key(base, images, torch.float32) != key
    assert cache_key(base, images, torch.float16, compute="cuda-amp-bf16") != key
    with pytest.raises(DataError, match="ImageDataset"):
        dataset_fingerprint([(torch.zeros(3, 32, 32), 0)], "list")


def test_a_changed_teacher_or_dataset_never_reuses_the_old_table(tmp_path, teachers, train):
    cached = CachedTeachers(Counting(TeacherEnsemble(teachers)), _open(tmp_path, teachers, train))
    _epoch(cached, train, 0)
    cached.close()

    changed = [create_model(a, num_classes=CLASSES) for a in ("resnet8", "resnet14")]
    changed[0].load_state_dict(teachers[0].state_dict())
    changed[1].load_state_dict(teachers[1].state_dict())
    with torch.no_grad():
        changed[1].fc.bias[3] += 0.5
    live = Counting(TeacherEnsemble(changed))
    fresh = CachedTeachers(live, _open(tmp_path, changed, train))
    for served, ref in _epoch(fresh, train, 0):
        assert torch.equal(served.logits, ref.logits)  # the changed teacher's own logits
    assert live.samples == len(train)

    resynth = _splits(seed=9).train  # other images under the same indices
    live = Counting(TeacherEnsemble(teachers))
    fresh = CachedTeachers(live, _open(tmp_path, teachers, resynth))
    _epoch(fresh, resynth, 0)
    assert live.samples == len(resynth)


def test_another_augmentation_seed_reuses_the_table_correctly(tmp_path, teachers, train):
    cached = CachedTeachers(Counting(TeacherEnsemble(teachers)), _open(tmp_path, teachers, train))
    _epoch(cached, train, 0)
    reseeded = _splits(split_seed=5).train  # same images, other views per epoch
    assert _views(reseeded, 0) != _views(train, 0)
    live = Counting(TeacherEnsemble(teachers))
    reuse = CachedTeachers(live, _open(tmp_path, teachers, reseeded))
    x, y, index, view = _batch(reseeded, list(enumerate(_views(train, 0)))[:16])
    served = reuse(x, y, index, view)
    assert live.samples == 0 and reuse.cache.hits == 16
    assert torch.equal(served.logits, live.ensemble(x, y).logits)


def _filled_once(tmp_path, teachers, train):
    cache = _open(tmp_path, teachers, train)
    cached = CachedTeachers(Counting(TeacherEnsemble(teachers)), cache)
    _epoch(cached, train, 0)
    cache.close()
    return [tmp_path / f"{key}.logits" for key in cache.keys]


def _corrupt_header(path):
    with open(path, "r+b") as handle:
        handle.write(b"garbage!")


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 7)


def _corrupt_bitmap(path):
    filled = path.with_suffix(".filled")
    raw = bytearray(filled.read_bytes())
    raw[-1] ^= 0xFF
    filled.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [(_corrupt_header, "rebuilding"), (_truncate, "truncated"), (_corrupt_bitmap, "corrupt")],
)
def test_a_damaged_file_is_detected_and_rebuilt_never_trusted(
    tmp_path, teachers, train, damage, message, caplog
):
    paths = _filled_once(tmp_path, teachers, train)
    damage(paths[1])
    live = Counting(TeacherEnsemble(teachers))
    with caplog.at_level(logging.WARNING, logger="multikd.train.cache"):
        cached = CachedTeachers(live, _open(tmp_path, teachers, train))
    assert message in caplog.text
    for served, ref in _epoch(cached, train, 0):
        assert torch.equal(served.logits, ref.logits)
    assert live.samples == len(train)  # teacher 1's table is empty, so every sample ran live
    assert paths[1].stat().st_size == paths[0].stat().st_size


def test_cells_written_but_not_flushed_are_not_trusted(tmp_path, teachers, train):
    cache = _open(tmp_path, teachers, train)
    loader = data.build_loader(train, 16, train=True, seed=0)
    x, y, index, view = next(iter(loader))
    logits = TeacherEnsemble(teachers)(x, y).logits
    assert cache.store(index, view, logits) == 16
    assert cache.lookup(index, view)[0].all()
    cache.tables[0].array.flush()  # the logits reach the file, the bitmap never does: a crash
    table = np.memmap(tmp_path / f"{cache.keys[0]}.logits", dtype=np.float32, mode="r",
                      offset=HEADER_BYTES, shape=(len(train), data.NUM_VIEWS, CLASSES))
    assert np.abs(table[index.numpy(), view.numpy()]).sum() > 0

    reopened = _open(tmp_path, teachers, train)
    hit, _ = reopened.lookup(index, view)
    assert not hit.any()


def test_a_stale_bitmap_or_leftover_temp_file_is_ignored(tmp_path, teachers, train, caplog):
    paths = _filled_once(tmp_path, teachers, train)
    bitmap = paths[0].with_suffix(".filled").read_bytes()
    _corrupt_header(paths[0])
    _open(tmp_path, teachers, train).close()  # rebuilds teacher 0's table (new instance id)
    paths[0].with_suffix(".filled").write_bytes(bitmap)  # the old instance's bitmap comes back
    (tmp_path / f".{paths[0].stem}.abc.tmp").write_bytes(b"half a table")
    with caplog.at_level(logging.WARNING, logger="multikd.train.cache"):
        cache = _open(tmp_path, teachers, train)
    assert "does not belong" in caplog.text
    assert cache.tables[0].filled.sum() == 0 and cache.tables[1].filled.sum() == len(train)


def test_budget_caches_a_prefix_of_samples_and_disables_below_one_sample(
    tmp_path, teachers, train, caplog
):
    row = 2 * data.NUM_VIEWS * (CLASSES * 4 + 1)  # two teachers, fp32 logits + filled flag
    budget = 2 * HEADER_BYTES + 10 * row + row // 2
    live = Counting(TeacherEnsemble(teachers))
    cached = CachedTeachers(live, _open(tmp_path, teachers, train, budget=budget))
    assert cached.cache.rows == 10
    _epoch(cached, train, 0)
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert on_disk <= budget
    hits, misses = cached.cache.hits, cached.cache.misses
    for served, ref in _epoch(cached, train, 0):
        assert torch.equal(served.logits, ref.logits)
    assert cached.cache.hits - hits == 10 and cached.cache.misses - misses == len(train) - 10

    with caplog.at_level(logging.WARNING, logger="multikd.train.cache"):
        tiny = CachedTeachers(Counting(TeacherEnsemble(teachers)),
                              _open(tmp_path / "tiny", teachers, train, budget=row))
    assert "disabled" in caplog.text and not tiny.cache.enabled
    for _ in range(2):
        for served, ref in _epoch(tiny, train, 0):
            assert torch.equal(served.logits, ref.logits)
    assert tiny.ensemble.samples == 2 * len(train)
    assert not (tmp_path / "tiny").exists()


def test_fp16_overflow_is_served_live_and_not_stored(tmp_path, caplog):
    cache = TeacherLogitCache(tmp_path, ["k"], num_samples=4, num_views=2, num_classes=3,
                              dtype=torch.float16)
    logits = torch.tensor([[[1.0, 2.0, 3.0], [1e6, 0.0, 0.0]]])
    with caplog.at_level(logging.WARNING, logger="multikd.train.cache"):
        assert cache.store(torch.tensor([0, 1]), torch.tensor([1, 1]), logits) == 1
    assert "overflow" in caplog.text
    hit, got = cache.lookup(torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert hit.tolist() == [True, False]
    assert torch.equal(got[0, 0], logits[0, 0])


def test_two_writers_of_one_table_merge_their_cells(tmp_path):
    def open_():
        return TeacherLogitCache(tmp_path, ["k"], num_samples=4, num_views=3, num_classes=2)

    a, b = open_(), open_()
    a.store(torch.tensor([0]), torch.tensor([2]), torch.ones(1, 1, 2))
    b.store(torch.tensor([3]), torch.tensor([0]), torch.full((1, 1, 2), 2.0))
    a.flush()
    b.flush()
    hit, got = open_().lookup(torch.tensor([0, 3, 1]), torch.tensor([2, 0, 0]))
    assert hit.tolist() == [True, True, False]
    assert got[0, :2].tolist() == [[1.0, 1.0], [2.0, 2.0]]


def test_errors_name_the_mismatch(tmp_path, teachers, train):
    cache = _open(tmp_path, teachers, train)
    with pytest.raises(DataError, match="outside the 40 samples"):
        cache.lookup(torch.tensor([40]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="1 x 10"):
        CachedTeachers(TeacherEnsemble(teachers[:1]), cache)
    with pytest.raises(ConfigError, match="float16 or torch.float32"):
        TeacherLogitCache(tmp_path, ["k"], 4, 2, 3, dtype=torch.bfloat16)
    assert not list(tmp_path.glob(".*.tmp"))  # creation left no temporary file behind
