"""Shared fixtures. Tests never download: CIFAR-format folders are written by the package's
own synthetic writer, so the real loading code is exercised."""

import pytest
import torch

from multikd import data

# Tiny models on 2 cores: one intra-op thread avoids oversubscription and is faster.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fake_cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    data.write_fake_cifar(root, dataset="cifar100", train=500, test=200, seed=3)
    return root


@pytest.fixture(scope="session")
def separate(tmp_path_factory):
    """tests/test_bench_lockstep.py's SUITE, every run trained alone: the reference that the
    lockstep, worker, shard and cluster tests (two modules) compare with, trained once."""
    from tests.test_bench_lockstep import train_separately

    return train_separately(tmp_path_factory.mktemp("separate"))


@pytest.fixture(scope="session")
def fake_cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    data.write_fake_cifar(root, dataset="cifar10", train=250, test=100, seed=4)
    return root
