"""Measured speed ratios of multikd's fast paths, side by side in one run on this machine.

    python experiments/bench_speed.py                       # small CPU defaults, a few minutes
    python experiments/bench_speed.py --device cuda --batches 32 --batch-size 128

Every comparison times two ways of doing the same work on the same batches, alternating
them (A B A B ...) ``--reps`` times, and reports the median time of each and their ratio:

- P1  a strategy table (6 strategies, 3 resnet32x4 teachers -> resnet8x4): the per-batch
      work of lockstep (one shared teacher pass, then each run's ``TrainingRun.train_step``
      with it, as ``multikd.train.lockstep`` does) against 6 separate runs (each run's
      ``train_step`` runs its own teachers, as ``multikd distill`` does). Setup and
      evaluation are left out: lockstep shares those too (the teachers' test accuracy is
      measured once), so whole runs gain at least as much. Target <= 0.35.
- P2  the engine's ``train_step`` (MultiTeacherDistiller with ca-mkd weights, meters,
      scheduler) against a bare hand-written loop doing the same math (teachers under
      no_grad, per-teacher CE, ``w = (1 - softmax_k CE) / (K - 1)``, CE + T^2-weighted KD,
      backward, SGD step). Both losses are checked equal first. Target <= 1.05. The
      note gives the ops each dispatches per step and the engine step's host syncs.
- P3  one logit-only training epoch (loader, teachers, student step) served by a warm
      float16 teacher cache against the live teachers. Target >= 3x faster.
- the learned strategies: one epoch of ``mtkd-rl`` and of ``mmkd`` (their own networks'
      updates included) against ``uniform``, all with the feature term (gamma 5): the
      price of the policy and of the meta step, as a ratio.
- the feature losses: a training step with each registered feature loss (its weight the
      reference gamma, its default parameters: CRD with nce_k 16384 and memory banks of
      ``--feature-n`` rows) against the same step with KD alone (gamma 0), all runs on the
      same batches, models and teachers, ``--reps`` rounds in which each loss's step runs
      right after a KD step (KD, loss 1, KD, loss 2, ...): each loss's cost as a ratio to
      the KD steps timed next to it. Its own sizes
      (``--feature-*``): ``--feature-teachers`` x ``--feature-teacher`` -> ``--feature-student``.
- the data: one epoch of training batches brought to the device by the batched pipeline
      (whole-batch augmentation on the device) against the per-sample DataLoader
      (``--workers`` processes), after checking that both give the same batches.

``--amp``, ``--channels-last`` and ``--compile`` switch the runs' fast paths on (the hand
loop of P2 follows them: autocast + GradScaler, channels_last inputs, compiled models);
``--pipeline`` picks the runs' data pipeline (P3 includes the data).

The teachers have random weights (saved as checkpoints, loaded the way runs load them):
speed does not depend on what they learned. The data is the synthetic set, one epoch =
``--batches`` batches. The report goes to ``--out`` (results/speed.md), written atomically,
with the machine and the command that made it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multikd import data
from multikd.train import engine
from multikd.train.build import build_data
from multikd.train.config import (
    DataConfig, ModelConfig, OptimConfig, OutputConfig, RunConfig, RuntimeConfig, StrategyConfig,
    TeacherConfig, resolve,
)
from multikd.train.hostsync import HostSyncDetector
from multikd.models import create_model
from multikd.atomic import atomic_write_text

log = logging.getLogger("bench_speed")

MEASURES = {"lockstep": "bench_lockstep", "step": "bench_step", "cache": "bench_cache",
            "pipeline": "bench_pipeline", "learned": "bench_learned",
            "features": "bench_features"}
"""``--only`` names of the measures, in the order they run."""
STRATEGIES = ("uniform", "ce-filter", "ca-mkd", "ebkd", "best", "correct-only")
NUM_TEACHERS = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--batches", type=int, default=2, help="batches per epoch (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions (default 5)")
    p.add_argument("--teacher", default="resnet32x4", help="teacher architecture")
    p.add_argument("--student", default="resnet8x4", help="student architecture")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--amp", action="store_true", help="mixed precision in every measure")
    p.add_argument("--channels-last", action="store_true", help="channels_last in every measure")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (runs and "
                   "hand loop alike)")
    p.add_argument("--pipeline", default="batched", choices=("batched", "per-sample"),
                   help="data pipeline of the runs (default batched)")
    p.add_argument("--data-batches", type=int, default=20,
                   help="batches of the data-pipeline measure (default 20)")
    p.add_argument("--data-batch-size", type=int, default=128,
                   help="images per batch of the data-pipeline measure (default 128, as on CIFAR)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers of the per-sample pipeline (default 0)")
    p.add_argument("--feature-student", default="resnet8x4",
                   help="student of the feature-loss measure (default resnet8x4)")
    p.add_argument("--feature-teacher", default="resnet8x4",
                   help="teacher architecture of the feature-loss measure (default resnet8x4)")
    p.add_argument("--feature-teachers", type=int, default=2,
                   help="teachers of the feature-loss measure (default 2)")
    p.add_argument("--feature-batch-size", type=int, default=64,
                   help="images per batch of the feature-loss measure (default 64)")
    p.add_argument("--feature-steps", type=int, default=1,
                   help="training steps per timing of the feature-loss measure (default 1)")
    p.add_argument("--feature-n", type=int, default=50000,
                   help="training-set size of the feature-loss measure, CRD's memory-bank rows "
                        "(default 50000, as CIFAR-100)")
    p.add_argument("--only", nargs="+", choices=sorted(MEASURES), default=None,
                   help="run only these measures (default: all)")
    p.add_argument("--out", default="results/speed.md", help="report file (markdown)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- timing
class Timer:
    """Wall time of a callable, synchronized on CUDA so queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn) -> float:
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def alternate(timer: Timer, a, b, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of each of ``reps`` runs of ``a`` and of ``b``, run A B A B ... after one
    untimed warm-up of each."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(reps):
        times_a.append(timer(a))
        times_b.append(timer(b))
    return times_a, times_b


def compared(name: str, a: tuple[str, list[float]], b: tuple[str, list[float]], target: str,
             speedup: bool = False, limit: float | None = None, note: str = "") -> dict:
    """One row: medians of A and B, their ratio (B/A with ``speedup``, else A/B) and
    whether it meets ``limit`` (a floor for speed-ups, else a ceiling); also the same ratio
    of the fastest repetitions (noise on a shared machine only ever adds time)."""
    def ratio_of(x: float, y: float) -> float:
        return y / x if speedup else x / y

    ratio = ratio_of(statistics.median(a[1]), statistics.median(b[1]))
    met = None if limit is None else (ratio >= limit if speedup else ratio <= limit)
    fastest = ratio_of(min(a[1]), min(b[1]))
    return {"name": name, "a": a, "b": b, "ratio": ratio, "fastest": fastest,
            "target": target, "met": met, "note": note}


# --------------------------------------------------------------------------- setup
class Bench:
    """Teachers saved as checkpoints, the data, and run configs that share them."""

    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.device = torch.device(args.device)
        self.timer = Timer(self.device)
        self.synthetic = {
            "num_classes": 100, "num_superclasses": 20, "seed": 0,
            "train_size": args.batches * args.batch_size, "test_size": args.batch_size,
        }
        self.checkpoints = []
        for k in range(NUM_TEACHERS):
            torch.manual_seed(1000 + k)
            teacher = create_model(args.teacher, num_classes=100)
            path = root / f"teacher{k}.pt"
            torch.save({"model": teacher.state_dict()}, path)
            self.checkpoints.append(str(path))
        self.splits = build_data(self.config("uniform", "data", cache=True), seed=0)
        self._runs = 0

    def config(self, strategy: str, name: str, cache: bool = False, gamma: float = 0.0) -> RunConfig:
        a = self.args
        cfg = RunConfig(
            kind="distill",
            data=DataConfig(dataset="synthetic", synthetic=dict(self.synthetic),
                            pipeline=a.pipeline, workers=a.workers),
            model=ModelConfig(arch=a.student),
            teachers=[TeacherConfig(arch=a.teacher, checkpoint=c, name=f"t{k}")
                      for k, c in enumerate(self.checkpoints)],
            strategy=StrategyConfig(name=strategy),
            optim=OptimConfig(batch_size=a.batch_size, epochs=1),
            runtime=RuntimeConfig(device=a.device, seed=0, amp=a.amp,
                                  channels_last=a.channels_last, compile=a.compile,
                                  teacher_cache=str(self.root / "cache") if cache else ""),
            output=OutputConfig(run_dir=str(self.root / "runs" / name), quiet=True),
        )
        cfg.loss.gamma = gamma
        return resolve(cfg)

    def run(self, strategy: str, cache: bool = False, gamma: float = 0.0) -> engine.TrainingRun:
        """A prepared run (its teachers' test accuracy is not measured: not timed here)."""
        self._runs += 1
        cfg = self.config(strategy, f"{strategy}_{self._runs}", cache, gamma)
        run = engine.prepare_run(cfg, splits=self.splits, teacher_acc={})
        run.splits.train.set_epoch(1)
        run.train_loader.sampler.set_epoch(1)
        run.begin_epoch(1)
        return run

    def batches(self, run: engine.TrainingRun) -> list[tuple]:
        """The epoch's batches on the device: ``(x, y, batch as loaded)``."""
        out = []
        for batch in run.train_loader:
            x, y = engine.to_device(batch[0], batch[1], self.device, self.args.channels_last)
            out.append((x, y, batch))
        return out


# --------------------------------------------------------------------------- P1
def bench_lockstep(bench: Bench) -> dict:
    runs = [bench.run(s) for s in STRATEGIES]
    batches = bench.batches(runs[0])
    lead = runs[0]

    def separate():
        for step, (x, y, _) in enumerate(batches):
            for run in runs:
                run.train_step(step, x, y)

    def lockstep():
        for step, (x, y, _) in enumerate(batches):
            with engine.autocast(bench.device, lead.cfg.runtime.amp):
                shared = lead.parts.ensemble(x, y, features=False)
            for run in runs:
                run.train_step(step, x, y, shared)

    t_lock, t_sep = alternate(bench.timer, lockstep, separate, bench.args.reps)
    return compared("P1 strategy table: lockstep / 6 separate runs (per-batch work)",
                    ("lockstep", t_lock), ("separate", t_sep), "<= 0.35", limit=0.35)


# --------------------------------------------------------------------------- learned
def bench_learned(bench: Bench) -> list[dict]:
    """MTKD-RL's and MMKD's cost per step (their own updates included: the agent's at the
    epoch's end, the meta step every ``meta_freq`` steps) against ``uniform`` with the same
    feature term (gamma 5), one epoch each, alternated."""
    rows = []
    for strategy in ("mtkd-rl", "mmkd"):
        runs = {name: bench.run(name, gamma=5.0) for name in ("uniform", strategy)}
        batches = bench.batches(runs["uniform"])

        def epoch(run):
            def go():
                for step, (x, y, _) in enumerate(batches):
                    run.train_step(step, x, y)
                run.parts.module.end_epoch(1)
            return go

        t_learned, t_uniform = alternate(bench.timer, epoch(runs[strategy]),
                                         epoch(runs["uniform"]), bench.args.reps)
        rows.append(compared(f"{strategy} / uniform, logits + features (cost per step)",
                             (strategy, t_learned), ("uniform", t_uniform), "reported",
                             note="extra cost of the strategy's own networks and updates"))
    return rows


# --------------------------------------------------------------------------- feature losses
def paired_rounds(timer: Timer, reference, fns: dict,
                  reps: int) -> dict[str, tuple[list[float], list[float]]]:
    """``name -> (seconds of the reference, seconds of fns[name])``, ``reps`` of each: after
    one untimed warm-up of every callable, ``reps`` rounds in which each callable of
    ``fns`` runs right after a run of ``reference`` (R A R B R C ... R A R B ...), so each
    is compared with the reference timed next to it (a shared machine's load drifts over
    a round)."""
    reference()
    for fn in fns.values():
        fn()
    times = {name: ([], []) for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name][0].append(timer(reference))
            times[name][1].append(timer(fn))
    return times


def feature_splits(bench: Bench, cfg: RunConfig):
    """The data of the feature-loss measure: ``--feature-n`` training images (the synthetic
    set's first ``steps x batch`` images repeated, with their labels: CRD's memory banks and
    class lists have N rows, as on CIFAR-100, without drawing N synthetic images), each
    batch yielding its samples' indices."""
    a = bench.args
    small = build_data(cfg, seed=0)
    base = small.train
    pick = np.resize(np.arange(len(base)), a.feature_n)
    pixels = base.images.permute(0, 2, 3, 1).numpy()[pick]
    train = data.ImageDataset(pixels, base.labels.numpy()[pick], small.mean, small.std,
                              augment=base.augment, seed=base.seed, return_index=True)
    return dataclasses.replace(small, train=train)


def bench_features(bench: Bench) -> list[dict]:
    """Every registered feature loss's cost per training step (the engine's ``train_step``:
    the teachers' pass, the student's and the loss modules' forward and backward, the SGD
    step) against KD alone, on the same batches, each timed next to a KD step."""
    from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY, loss_info

    a, root = bench.args, bench.root / "features"
    checkpoints = []
    for k in range(a.feature_teachers):
        torch.manual_seed(2000 + k)
        path = root / f"teacher{k}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": create_model(a.feature_teacher, num_classes=100).state_dict()}, path)
        checkpoints.append(str(path))

    def config(loss: str | None) -> RunConfig:
        cfg = RunConfig(
            kind="distill",
            data=DataConfig(dataset="synthetic", pipeline=a.pipeline, workers=a.workers,
                            synthetic={**bench.synthetic, "test_size": a.feature_batch_size,
                                       "train_size": a.feature_steps * a.feature_batch_size}),
            model=ModelConfig(arch=a.feature_student),
            teachers=[TeacherConfig(arch=a.feature_teacher, checkpoint=c, name=f"t{k}")
                      for k, c in enumerate(checkpoints)],
            strategy=StrategyConfig(name="uniform"),
            # a small lr: the same batches again and again must not diverge (time is the same)
            optim=OptimConfig(batch_size=a.feature_batch_size, epochs=1, lr=1e-3),
            runtime=RuntimeConfig(device=a.device, seed=0, amp=a.amp,
                                  channels_last=a.channels_last, compile=a.compile),
            output=OutputConfig(run_dir=str(root / "runs" / (loss or "kd")), quiet=True),
        )
        if loss is not None:
            cfg.loss.feature_loss = loss
            cfg.loss.gamma = float(loss_info(loss)["reference_gamma"] or 1.0)
        return resolve(cfg)

    names = FEATURE_LOSS_REGISTRY.names()
    splits = feature_splits(bench, config("crd" if "crd" in names else None))
    runs, skipped = {}, []
    for name in (None, *names):
        try:
            run = engine.prepare_run(config(name), splits=splits, teacher_acc={})
        except Exception as e:  # noqa: BLE001 - a loss that cannot run here is reported
            skipped.append(f"{name}: {type(e).__name__}: {e}")
            continue
        run.splits.train.set_epoch(1)
        run.train_loader.sampler.set_epoch(1)
        run.begin_epoch(1)
        runs[name or "KD alone"] = run
    lead = runs["KD alone"]
    batches = []
    for batch in itertools.islice(lead.train_loader, a.feature_steps):
        x, y = engine.to_device(batch[0], batch[1], bench.device, a.channels_last)
        batches.append((x, y, batch))

    def steps(run):
        def go():
            for step, (x, y, batch) in enumerate(batches):
                run.train_step(step, x, y, None, run.batch_index(batch))
        return go

    kd = steps(runs.pop("KD alone"))
    times = paired_rounds(bench.timer, kd, {name: steps(run) for name, run in runs.items()},
                          a.reps)
    sizes = (f"{a.feature_teachers} x {a.feature_teacher} -> {a.feature_student}, "
             f"{a.feature_steps} step(s) of {a.feature_batch_size} images per timing, "
             f"N = {a.feature_n} training samples")
    rows = []
    for name, (t_kd, t) in times.items():
        gamma = runs[name].cfg.loss.gamma
        params = dict(getattr(runs[name].parts.module, "feature_params", {}))
        note = f"gamma {gamma:g}" + (f", params {params}" if params else "")
        rows.append(compared(f"feature loss {name} / KD alone (cost per step)", (name, t),
                             ("KD alone", t_kd), "reported", note=note))
    rows[0]["note"] += (f"; every feature-loss row: {sizes}, strategy uniform, KD alone "
                        "timed right before the loss in each round")
    if skipped:
        rows[-1]["note"] += "; not measured: " + "; ".join(skipped)
    return rows


# --------------------------------------------------------------------------- P2
class HandLoop:
    """The distiller's math written out: ca-mkd weights, CE + weighted KD, SGD; under the
    run's AMP (autocast + GradScaler), channels_last and compile settings."""

    def __init__(self, run: engine.TrainingRun):
        cfg = run.cfg
        self.device, self.amp = run.device, cfg.runtime.amp
        self.student = copy.deepcopy(run.parts.model).train()
        self.teachers = [copy.deepcopy(t).eval() for t in run.parts.ensemble.teachers]
        if cfg.runtime.compile:  # the deep copies dropped the runs' compiled wrappers
            for model in (self.student, *self.teachers):
                model.compile()
        self.temperature = cfg.loss.temperature
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=o.lr, momentum=o.momentum,
            weight_decay=o.weight_decay, fused=run.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(run.device.type,
                                           enabled=self.amp and run.device.type == "cuda")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with engine.autocast(self.device, self.amp):
            return self._loss(x, y)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = torch.stack([t(x) for t in self.teachers]).float()  # [K,B,C]
            k = t_logits.shape[0]
            t_ce = F.cross_entropy(t_logits.flatten(0, 1), y.repeat(k),
                                   reduction="none").view(k, -1)  # [K,B]
            weights = (1.0 - torch.softmax(t_ce, dim=0)) / (k - 1)  # [K,B]
        logits = self.student(x)
        temp = self.temperature
        log_q = F.log_softmax(logits.float() / temp, dim=1)  # [B,C]
        log_p = F.log_softmax(t_logits / temp, dim=2)  # [K,B,C]
        kl = (log_p.exp() * (log_p - log_q)).sum(2)  # [K,B]
        kd = temp * temp * (weights * kl).sum(0).mean()
        return F.cross_entropy(logits, y) + kd

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def bench_step(bench: Bench) -> dict:
    run = bench.run("ca-mkd")
    hand = HandLoop(run)
    batches = bench.batches(run)
    x, y, _ = batches[0]
    engine_loss = run.train_module(x, y)[1]["total"].item()
    hand_loss = hand.loss(x, y).item()
    run.optimizer.zero_grad(set_to_none=True)
    hand.optimizer.zero_grad(set_to_none=True)

    def engine_steps():
        for step, (x, y, _) in enumerate(batches):
            run.train_step(step, x, y)

    def hand_steps():
        for x, y, _ in batches:
            hand.step(x, y)

    t_engine, t_hand = alternate(bench.timer, engine_steps, hand_steps, bench.args.reps)
    return compared("P2 distiller step (engine train_step) / hand-written loop",
                    ("engine", t_engine), ("hand loop", t_hand), "<= 1.05", limit=1.05,
                    note=f"first-batch loss: engine {engine_loss:.6f}, hand loop "
                         f"{hand_loss:.6f}; {hot_path(run, hand, batches)}")


def hot_path(run: engine.TrainingRun, hand: HandLoop, batches: list[tuple]) -> str:
    """Ops dispatched by one steady-state step of each (a proxy for kernel launches) and
    the host syncs of the engine's step (``multikd.train.hostsync``; on the CPU every read of a
    tensor counts, i.e. what would sync on a GPU, with the CPU-only NaN check off)."""
    x, y, _ = batches[0]
    include_cpu = run.device.type == "cpu"
    run.parts.module.check_every_cpu_batch = False
    try:  # step 0 does not log (output.log_interval is 50)
        with HostSyncDetector(include_cpu=include_cpu) as watch_engine:
            run.train_step(0, x, y)
    finally:
        run.parts.module.check_every_cpu_batch = True
    with HostSyncDetector(include_cpu=include_cpu) as watch_hand:
        hand.step(x, y)
    syncs = ", ".join(f"{e.op} at {e.where}" for e in watch_engine.syncs) or "none"
    return (f"ops per step: engine {watch_engine.total_ops}, hand loop {watch_hand.total_ops}; "
            f"host syncs in an engine step that does not log: {syncs}")


# --------------------------------------------------------------------------- P3
def bench_cache(bench: Bench) -> dict:
    live, cached = bench.run("ca-mkd"), bench.run("ca-mkd", cache=True)
    cached.open_teacher_cache()
    device = bench.device

    def epoch(run, use_cache: bool):
        run.splits.train.set_epoch(1)
        run.train_loader.sampler.set_epoch(1)
        for step, batch in enumerate(run.train_loader):
            x, y = engine.to_device(batch[0], batch[1], device)
            out = run.cached_teacher_pass(x, y, batch) if use_cache else None
            run.train_step(step, x, y, out)

    cold = bench.timer(lambda: epoch(cached, True))
    cached.teacher_cache.flush()
    cache = cached.teacher_cache.cache
    hits0, misses0 = cache.hits, cache.misses
    t_warm, t_live = alternate(bench.timer, lambda: epoch(cached, True),
                               lambda: epoch(live, False), bench.args.reps)
    looked_up = cache.hits - hits0 + cache.misses - misses0
    return compared("P3 logit-only epoch: live teachers / warm fp16 cache (speed-up)",
                    ("warm cache", t_warm), ("live", t_live), ">= 3x", speedup=True, limit=3.0,
                    note=f"cold (filling) epoch {cold:.3f} s; warm hit rate "
                         f"{(cache.hits - hits0) / looked_up:.3f}")


# --------------------------------------------------------------------------- data pipeline
def bench_pipeline(bench: Bench) -> dict:
    """One epoch of training batches brought to the device: the batched pipeline against
    the per-sample DataLoader (``--workers`` processes), after checking they are equal.
    Its own sizes (``--data-batches`` x ``--data-batch-size``): the data path costs little
    next to the models at the other measures' small CPU sizes."""
    args, device = bench.args, bench.device
    size = args.data_batches * args.data_batch_size
    synthetic = {**bench.synthetic, "train_size": size}
    train = data.build_datasets("synthetic", seed=0, synthetic=synthetic).train
    loaders = {
        pipeline: data.build_loader(train, args.data_batch_size, train=True, seed=0,
                                    workers=args.workers, device=str(device), pipeline=pipeline)
        for pipeline in ("batched", "per-sample")
    }

    def epoch(loader, keep: list | None = None):
        loader.sampler.set_epoch(1)
        for batch in loader:
            x, y = engine.to_device(batch[0], batch[1], device, args.channels_last)
            if keep is not None:
                keep.append((x.cpu(), y.cpu()))

    first, second = [], []
    epoch(loaders["batched"], first)
    epoch(loaders["per-sample"], second)
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(first, second, strict=True))
    t_batched, t_sample = alternate(bench.timer, lambda: epoch(loaders["batched"]),
                                    lambda: epoch(loaders["per-sample"]), args.reps)
    return compared("Data: batched pipeline / per-sample DataLoader, one epoch to the device",
                    ("batched", t_batched), ("per-sample", t_sample), "(< 1: batched faster)",
                    note=f"{args.data_batches} batches of {args.data_batch_size} images; the "
                         f"two pipelines' batches are {'equal' if same else 'NOT equal'}; "
                         f"per-sample workers {args.workers}")


# --------------------------------------------------------------------------- report
def machine(device: torch.device) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "- load average at start (1/5/15 min): "
        + "/".join(f"{v:.1f}" for v in os.getloadavg()),
        f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
    ]
    if device.type == "cuda":
        lines.append(f"- device: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        lines.append("- device: cpu")
    return lines


def _times(name: str, times: list[float]) -> str:
    return f"{name} {statistics.median(times):.3f} s [{min(times):.3f}-{max(times):.3f}]"


def report(results: list[dict], args: argparse.Namespace, device, command: str,
           wall: float) -> str:
    lines = [
        "# multikd speed ratios",
        "",
        f"Made by `{command}` in {wall:.0f} s.",
        "",
        *machine(device),
        f"- sizes: {args.batches} batches of {args.batch_size} images per epoch, "
        f"{NUM_TEACHERS} x {args.teacher} teachers -> {args.student}, "
        f"median of {args.reps} alternating repetitions",
        f"- runtime: amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}, "
        f"data pipeline {args.pipeline} (workers {args.workers})",
        "",
        "Times are medians, with the fastest and slowest repetition in brackets. The ratio is",
        "that of the medians (the one judged against the target); the next column is the",
        "same ratio of the fastest repetitions.",
        "",
        "| measure | A | B | ratio | of fastest | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['name']} | {_times(*r['a'])} | {_times(*r['b'])} | "
                     f"{r['ratio']:.3f} | {r['fastest']:.3f} | {r['target']} | {met} |")
    lines.append("")
    lines.extend(f"- {r['name'].split(':')[0]}: {r['note']}" for r in results if r["note"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["experiments/bench_speed.py", *(argv or sys.argv[1:])])
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="multikd-speed-") as tmp:
        bench = Bench(args, Path(tmp))
        for name in args.only or MEASURES:
            measured = globals()[MEASURES[name]](bench)
            for result in measured if isinstance(measured, list) else [measured]:
                print(f"{result['name']}: {result['ratio']:.3f} ({_times(*result['a'])}, "
                      f"{_times(*result['b'])}; target {result['target']})", flush=True)
                results.append(result)
    text = report(results, args, bench.device, command, time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
