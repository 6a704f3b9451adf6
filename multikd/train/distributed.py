"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc-per-node N -m multikd distill ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`detect` reads them. Each process holds a full replica: the teachers
are loaded and frozen on every rank and never wrapped, only the trainable part of the
learner (student + adapters) is synchronised by ``DistributedDataParallel``. The training
set is split by ``DistributedSampler(seed=seed)``: it shuffles with ``torch.randperm`` under
a generator seeded with ``seed + epoch``, like the single-process sampler, and hands rank
``r`` the positions ``r, r + N, r + 2N, ...``; with a per-rank batch of ``B / N`` the ranks'
batches at one step together hold exactly the samples of the single-process batch of size
``B``. Evaluation splits the test set into disjoint shards (no padding) and sums the counts.

What each rank computes on its own ``B / N`` images: BatchNorm batch statistics (running
statistics are taken from rank 0 before evaluation and in checkpoints), and the decisions
of strategies that score teachers per batch (``granularity="batch"``); per-sample strategies
decide exactly as in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset


@dataclass(frozen=True)
class DistEnv:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """The process layout torchrun announced in the environment (1 process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA devices, gloo on CPU."""
    if env.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place (a no-op for one process)."""
    if env.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_buffers(module: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart per rank)."""
    if env.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def wrap(learner: nn.Module, frozen, device: torch.device, env: DistEnv):
    """``learner`` under DDP with the parameters and buffers of ``frozen`` (a module or a
    list of modules and Nones: the teachers, a learned strategy's networks, which average
    their gradients themselves) excluded from synchronisation; the learner itself when
    running in one process."""
    if not env.enabled:
        return learner
    frozen = [m for m in (frozen if isinstance(frozen, (list, tuple)) else [frozen])
              if m is not None]
    if frozen:
        frozen_ids = {id(t) for m in frozen for t in list(m.parameters()) + list(m.buffers())}
        ignored = [
            name
            for name, t in list(learner.named_parameters()) + list(learner.named_buffers())
            if id(t) in frozen_ids
        ]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(learner, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    # a feature term that starts after epoch 1 leaves the adapters without gradients until then
    unused = bool(learner.may_leave_parameters_unused)
    return DistributedDataParallel(learner, device_ids=device_ids, find_unused_parameters=unused)


def train_sampler(dataset: Dataset, seed: int, env: DistEnv) -> DistributedSampler | None:
    """This rank's share of the shuffled training set under torchrun; None in one process,
    where the loader's own :class:`~multikd.data.EpochShuffleSampler` gives the same
    global order."""
    if not env.enabled:
        return None
    return DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed
    )


def eval_shard(dataset: Dataset, env: DistEnv) -> Dataset:
    """Disjoint positions ``rank, rank + N, ...`` of an evaluation set (no duplicates)."""
    if not env.enabled:
        return dataset
    return Subset(dataset, range(env.rank, len(dataset), env.world_size))
