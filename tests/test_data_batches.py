"""The batched data pipeline: the same batches as the per-sample one, bit for bit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, Subset, TensorDataset

from multikd import data
from multikd.cli import main
from multikd.train.config import RunConfig, config_hash, resolve
from multikd.errors import ConfigError, DataError
from tests.run_helpers import read_metrics, synthetic_args

TINY = {"num_classes": 10, "num_superclasses": 2, "train_size": 230, "test_size": 70, "seed": 0}


@pytest.fixture(scope="module")
def splits():
    return data.build_datasets("synthetic", val_size=30, seed=5, synthetic=TINY,
                               return_index=True)


def assert_same_batches(first, second):
    """Every batch of two loaders equal: same tensors, dtypes and shapes, same count."""
    count = 0
    for a, b in zip(first, second, strict=True):
        assert len(a) == len(b)
        for ta, tb in zip(a, b):
            assert ta.dtype == tb.dtype and ta.shape == tb.shape
            assert torch.equal(ta, tb)
        count += 1
    assert count == len(first) == len(second)


@pytest.mark.parametrize("seed, epoch", [(0, 1), (-7, 3), (2**40 + 3, 12)])
def test_views_of_equals_view_of(seed, epoch):
    indices = np.arange(0, 60000, 37)
    expected = [data.view_of(seed, epoch, int(i)) for i in indices]
    assert data.views_of(seed, epoch, indices).tolist() == expected


def test_views_of_refuses_negative_indices():
    with pytest.raises(ValueError, match=">= 0"):
        data.views_of(0, 1, np.array([3, -1]))


def test_augment_batch_equals_apply_view_for_every_view():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (data.NUM_VIEWS, 3, 32, 32), generator=gen, dtype=torch.uint8)
    views = torch.arange(data.NUM_VIEWS)
    out = data.augment_batch(images, views)
    expected = torch.stack([data.apply_view(img, v) for img, v in zip(images, range(len(views)))])
    assert torch.equal(out, expected)
    # the padding is zero and a flipped view mirrors the unflipped one
    assert out[0, :, :4].eq(0).all() and out[0, :, :, :4].eq(0).all()
    assert torch.equal(data.augment_batch(images[:1], torch.tensor([data.IDENTITY_VIEW])),
                       images[:1])
    assert torch.equal(out[1].flip(-1), data.augment_batch(images[1:2], torch.tensor([0]))[0])


def test_pixel_table_equals_the_per_sample_formula(splits):
    train = splits.train
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    table = data.PixelTable(train.mean, train.std, "cpu")
    expected = (levels[0].float().div_(255) - train.mean) / train.std
    assert torch.equal(table(levels)[0], expected)


@pytest.mark.parametrize("batch, drop_last", [(32, False), (32, True), (50, False)])
def test_batched_loader_equals_per_sample_loader(splits, batch, drop_last):
    for split, train in ((splits.train, True), (splits.val, False), (splits.test, False)):
        per_sample = data.build_loader(split, batch, train=train, seed=5, drop_last=drop_last)
        batched = data.build_loader(split, batch, train=train, seed=5, drop_last=drop_last,
                                    pipeline="batched")
        assert isinstance(batched, data.BatchedLoader)
        for epoch in (1, 2):
            per_sample.sampler.set_epoch(epoch)
            batched.sampler.set_epoch(epoch)
            assert_same_batches(per_sample, batched)


def test_batched_loader_follows_subsets_and_distributed_samplers(splits):
    train = splits.train
    train.set_epoch(4)
    sampler = DistributedSampler(train, num_replicas=2, rank=1, shuffle=True, seed=5)
    sampler.set_epoch(4)
    per_sample = data.build_loader(train, 16, train=True, sampler=sampler)
    batched = data.build_loader(train, 16, train=True, sampler=sampler, pipeline="batched")
    assert_same_batches(per_sample, batched)
    shard = Subset(Subset(splits.test, range(1, 70, 2)), range(0, 35, 3))
    assert_same_batches(data.build_loader(shard, 8, train=False),
                        data.build_loader(shard, 8, train=False, pipeline="batched"))


def test_loaders_over_one_dataset_share_its_device_copy(splits):
    first = data.build_loader(splits.test, 8, train=False, pipeline="batched")
    second = data.build_loader(splits.test, 16, train=False, pipeline="batched")
    assert first._images.data_ptr() == second._images.data_ptr()
    assert splits.test.on_device("cpu")[1] is second._labels
    # worker processes receive the dataset without its device copies
    assert pickle.loads(pickle.dumps(splits.test))._on_device == {}


def test_batched_loader_errors_name_the_choices():
    with pytest.raises(DataError, match="valid: batched, per-sample"):
        data.build_loader(TensorDataset(torch.zeros(4, 3)), 2, train=False, pipeline="fast")
    with pytest.raises(DataError, match="per-sample for other datasets"):
        data.build_loader(TensorDataset(torch.zeros(4, 3)), 2, train=False, pipeline="batched")


def test_pipeline_is_validated_and_not_hashed():
    cfg = resolve(RunConfig(kind="teacher"))
    other = resolve(RunConfig.from_dict({**cfg.to_dict(), "data": {"pipeline": "per-sample"}}))
    assert config_hash(cfg) == config_hash(other)
    with pytest.raises(ConfigError, match="unknown data.pipeline 'gpu'; valid: batched"):
        resolve(RunConfig.from_dict({"kind": "teacher", "data": {"pipeline": "gpu"}}))


@pytest.mark.slow
def test_training_is_the_same_under_both_pipelines(tmp_path):
    runs = {}
    for pipeline in ("batched", "per-sample"):
        out = tmp_path / pipeline
        args = ["train-teacher", "--arch", "resnet8", "--epochs", "2", "--out", str(out),
                "--set", f"data.pipeline={pipeline}", *synthetic_args(160, 64)]
        assert main(args) == 0
        runs[pipeline] = read_metrics(out)
    timing = {"epoch_time_s", "images_per_s"}
    for a, b in zip(runs["batched"], runs["per-sample"], strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == \
            {k: v for k, v in b.items() if k not in timing}
