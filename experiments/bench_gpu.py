"""Speed at the hardware's floor (issue 37): every strategy's training step against the floor
of the same work, judged as ratios in one run on one device.

    python experiments/bench_gpu.py                                  # CUDA: full CIFAR-100 size
    python experiments/bench_gpu.py --amp off on --channels-last off on --compile off on
    python experiments/bench_gpu.py --device cpu --teacher resnet8 --student resnet8 \\
        --train-size 2000 --test-size 256 --batch 32 --steps 2 --repeats 3 --suite ""

What is measured, for K x ``--teacher`` -> ``--student`` (default 3 x resnet32x4 ->
resnet8x4) on synthetic data of ``--train-size`` / ``--test-size`` images and ``--classes``
classes (default 50 000 / 10 000 / 100: CIFAR-100's size, no download), at every batch size
of ``--batch`` and every combination of ``--amp``, ``--channels-last`` and ``--compile``:

- the floor: the student's step alone (forward, CE, backward, SGD step: a bare loop on
  batches already on the device, the optimizer built as the engine builds it) and the
  teachers' forward alone (each teacher called under ``no_grad``), each timed by itself;
  ``floor = student step + teachers' forward``;
- a real step of every strategy (``--strategies``: uniform, ce-filter, ca-mkd, ebkd, aekd,
  mtkd-rl, mmkd), logits only and logits + features (``loss.gamma`` ``--gamma``): a run
  built by ``engine.prepare_run`` and driven as ``multikd distill`` drives it (the batch from
  the run's own loader, ``to_device``, ``cached_teacher_pass``, ``TrainingRun.train_step``,
  with its meters, scheduler, log-step syncs and a learned strategy's ``after_step``); each
  timed call ends with the learner's ``end_epoch`` (MTKD-RL trains its agent there on the
  batches stored since, so its per-epoch work is counted per step); the runs are put in
  their second epoch (MTKD-RL's policy is off in the first);
- lockstep of 6 strategies per variant (the first 6 of ``--lockstep-strategies`` that run
  in it: logits only, the five fixed-weight ones and mmkd; with features, the five and
  mtkd-rl), as ``multikd.train.lockstep`` trains them: split by tapped teacher layers
  (``split_by_taps``: AEKD's reference taps stage 2, the others the last stage, so two
  groups), each group one shared teacher pass per batch, then each member's ``train_step``
  inside its own RNG states; its floor is ``groups x teachers' forward + 6 student steps``
  (+ MMKD's meta steps per step when MMKD is a member, as in its own floor);
- MMKD's meta step (``strategy.meta_step``, its three virtual forward/backward passes and
  the outer gradient), timed alone: MMKD's own floor is ``floor + meta step x (meta steps
  per epoch / steps per epoch)`` (every ``meta_freq`` steps and the epoch's last); a
  measure holding an MMKD run takes a multiple of ``meta_freq`` steps per call, so every
  timed call holds the same number of meta steps;
- the data (a batch from the loader, to the device) and the evaluation of the test split,
  reported beside the floor (the data is inside every real step, not in the floor).

Device time: at the defaults on an H100 expect a few minutes per setting (the data, 14 runs
and the lockstep groups built once per setting); ``--compile on`` compiles every run's
student and teachers, so give it its own call (e.g. ``--batch 64 --amp on --channels-last on
--compile on --suite ""``) where a command's time is limited.

Timing: every measure is warmed up (``--warmup`` calls: compilation happens there), then
the measures are timed round-robin (``--repeats`` rounds, each starting one measure later),
each call ``--steps`` steps; CUDA is synchronised before and after each timed call only.
Times are medians; ratios are judged on them, and each is also given of the fastest calls
(noise on a shared machine only ever adds time). Peak memory (CUDA): ``max_memory_allocated``
during one more call of each measure, above what was allocated before it (all runs of a
setting stay resident; their weights are not counted); ``n/a`` on the CPU. Images/s are the
batch over the step time (lockstep: student images, the batch times its members).

Judged (per setting, PASS/MISS): a real step <= 1.15x its floor for every fixed-weight
strategy; ``mtkd-rl`` <= 1.2x ``uniform`` (same variant); ``mmkd`` <= 1.15x its own floor;
lockstep of 6 <= 1.15x its floor. The projection: one ``--epochs``-epoch logits+features
run at CIFAR-100's size (``ceil(50000 / batch)`` steps + the evaluation of 10 000 test
images per epoch; setup not counted), judged against 15 minutes on an H100 only (not on
other devices); and the whole suite of ``--suite`` (default the CA-MKD Table 1 suite), its
lockstep groups of one seed measured with the suite's own models, teachers trained by it
included.

``--profile DIR`` writes a ``torch.profiler`` trace of at least ``--profile-steps`` steps
(whole timed calls) of
``--profile-run`` (``STRATEGY:VARIANT``, ``lockstep:VARIANT``, ``floor-student`` or
``floor-teachers``) and prints the top operators/kernels and, on CUDA, the device's idle
gaps between kernels (the host not keeping it fed).

The report is printed; ``--out FILE`` writes it whole (default on CUDA:
results/speed_gpu.md), ``--section FILE`` puts it into FILE between this script's markers
(replacing an earlier one; used for the CPU section of results/speed.md), ``--json FILE``
writes every number. CPU ratios say nothing about the GPU targets: the step's cost there is
compute, not launches.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import multikd
from multikd.models import create_model
from multikd.train import engine
from multikd.train import lockstep as lockstep_mod
from multikd.train.build import build_data, pick_device
from multikd.train.config import (
    DataConfig, ModelConfig, OptimConfig, OutputConfig, RunConfig, RuntimeConfig, StrategyConfig,
    TeacherConfig, resolve,
)

log = logging.getLogger("bench_gpu")

FIXED = ("uniform", "ce-filter", "ca-mkd", "ebkd", "aekd")
LEARNED = ("mtkd-rl", "mmkd")
VARIANTS = ("logits", "logits+feat")
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
EPOCH = 2  # the runs are timed in their second epoch (MTKD-RL's policy is off in the first)
LIMIT_FIXED, LIMIT_RL, LIMIT_MMKD, LIMIT_LOCKSTEP = 1.15, 1.2, 1.15, 1.15
LIMIT_RUN_MIN = 15.0
BEGIN, END = "<!-- bench_gpu.py begin -->", "<!-- bench_gpu.py end -->"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    on_off = {"nargs": "+", "choices": ("off", "on"), "default": ["off"]}
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    p.add_argument("--teacher", default="resnet32x4", help="teacher architecture")
    p.add_argument("--teachers", type=int, default=3, help="number of teachers (default 3)")
    p.add_argument("--student", default="resnet8x4", help="student architecture")
    p.add_argument("--train-size", type=int, default=CIFAR_TRAIN, help="synthetic train images")
    p.add_argument("--test-size", type=int, default=CIFAR_TEST, help="synthetic test images")
    p.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 128], help="batch sizes")
    p.add_argument("--steps", type=int, default=20, help="steps per timed call (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per measure first")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median; default 5)")
    p.add_argument("--amp", **on_off, help="runtime.amp (the package's: fp16 + GradScaler on "
                   "CUDA, bf16 on the CPU); 'off on' measures both")
    p.add_argument("--channels-last", **on_off, help="runtime.channels_last")
    p.add_argument("--compile", **on_off, help="runtime.compile (torch.compile of the models)")
    p.add_argument("--strategies", nargs="+", default=list(FIXED + LEARNED))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--lockstep-strategies", nargs="*", default=list(FIXED + LEARNED),
                   help="candidates of the lockstep measure, in order: the first "
                        "--lockstep-size that run in a variant are its members (none: skip)")
    p.add_argument("--lockstep-size", type=int, default=6, help="lockstep members (default 6)")
    p.add_argument("--gamma", type=float, default=50.0,
                   help="loss.gamma of the logits+features runs (default 50, CA-MKD's)")
    p.add_argument("--epochs", type=int, default=240, help="epochs of the projection / schedule")
    p.add_argument("--suite", default="experiments/cifar100/ca-mkd.yaml",
                   help="suite whose whole wall time is projected ('' to skip)")
    p.add_argument("--suite-batch", type=int, default=None,
                   help="batch of the suite measure (default: the suite's recipe)")
    p.add_argument("--profile", default=None, metavar="DIR", help="write a torch.profiler trace")
    p.add_argument("--profile-run", default="ca-mkd:logits+feat",
                   help="what to profile: STRATEGY:VARIANT, lockstep:VARIANT, floor-student, "
                        "floor-teachers")
    p.add_argument("--profile-steps", type=int, default=5, help="steps in the trace")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None,
                   help="write the report to this file (default on CUDA: results/speed_gpu.md)")
    p.add_argument("--section", default=None,
                   help="put the report into this file between this script's markers")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> float:
    """Seconds of ``fn()``, the device synchronised before and after (not inside)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@dataclass
class Measure:
    """One timed thing: ``fn()`` does ``per_call`` steps (or one meta step / evaluation)."""

    name: str
    fn: object
    per_call: int
    times: list = field(default_factory=list)
    peak_mib: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        """Median seconds per step (per call divided by ``per_call``)."""
        return statistics.median(self.times) / self.per_call if self.times else math.nan

    @property
    def fastest(self) -> float:
        """Seconds per step of the fastest call (noise on a shared machine only adds)."""
        return min(self.times) / self.per_call if self.times else math.nan


class Stream:
    """A run's training batches, endless (the loader restarts; the epoch is kept)."""

    def __init__(self, loader):
        self.loader, self.it = loader, iter(loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


# --------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class Setting:
    batch: int
    amp: bool
    channels_last: bool
    compile: bool

    def text(self) -> str:
        on = lambda v: "on" if v else "off"
        return (f"batch {self.batch}, amp {on(self.amp)}, channels_last "
                f"{on(self.channels_last)}, compile {on(self.compile)}")


def settings(args) -> list[Setting]:
    flag = lambda values: [v == "on" for v in values]
    return [Setting(b, a, c, k) for b, a, c, k in itertools.product(
        args.batch, flag(args.amp), flag(args.channels_last), flag(args.compile))]


def meta_steps_per_epoch(steps: int, meta_freq: int) -> int:
    """MMKD's meta steps in an epoch of ``steps`` steps: each multiple of ``meta_freq`` and
    the last step (``MMKD.after_step``)."""
    return sum(1 for s in range(steps) if s % meta_freq == 0 or s == steps - 1)


class Bench:
    """The teachers (random weights saved as checkpoints), the data, and the runs."""

    def __init__(self, args, device: torch.device, root: Path):
        self.args, self.device, self.root = args, device, root
        self.synthetic = {"num_classes": args.classes, "num_superclasses": 20, "seed": 0,
                          "train_size": args.train_size, "test_size": args.test_size}
        self.checkpoints = [self.save_teacher(args.teacher, root / f"teacher{k}.pt", 1000 + k)
                            for k in range(args.teachers)]
        t0 = time.perf_counter()
        self.splits = build_data(self.config("uniform", "logits", Setting(64, False, False,
                                                                         False)), 0)
        log.info("synthetic data: %d/%d images in %.1f s", args.train_size, args.test_size,
                 time.perf_counter() - t0)
        self._count = 0

    def save_teacher(self, arch: str, path: Path, seed: int) -> str:
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": create_model(arch, num_classes=self.args.classes).state_dict()},
                   path)
        return str(path)

    def runtime(self, s: Setting) -> RuntimeConfig:
        return RuntimeConfig(device=str(self.device), seed=0, amp=s.amp,
                             channels_last=s.channels_last, compile=s.compile)

    def config(self, strategy: str, variant: str, s: Setting) -> RunConfig:
        a = self.args
        self._count = getattr(self, "_count", 0) + 1
        cfg = RunConfig(
            kind="distill",
            data=DataConfig(dataset="synthetic", synthetic=dict(self.synthetic)),
            model=ModelConfig(arch=a.student),
            teachers=[TeacherConfig(arch=a.teacher, checkpoint=c, name=f"t{k}")
                      for k, c in enumerate(self.checkpoints)],
            strategy=StrategyConfig(name=strategy),
            optim=OptimConfig(batch_size=s.batch, epochs=a.epochs, nesterov=True),
            runtime=self.runtime(s),
            output=OutputConfig(run_dir=str(self.root / "runs" / f"{self._count}_{strategy}"),
                                quiet=True, log_interval=50),
        )
        cfg.loss.gamma = a.gamma if variant == "logits+feat" else 0.0
        return resolve(cfg)

    def prepared(self, cfg: RunConfig, splits=None) -> engine.TrainingRun:
        """A run as the engine prepares it, in its second epoch."""
        from multikd.train.build import needs_index

        if splits is None and not needs_index(cfg):  # a loss that reads indices: its own
            splits = self.splits
        run = engine.prepare_run(cfg, splits=splits, teacher_acc={})
        run.splits.train.set_epoch(EPOCH)
        run.train_loader.sampler.set_epoch(EPOCH)
        run.begin_epoch(EPOCH)
        run._bench_step = 0
        return run


# --------------------------------------------------------------------------- the steps
def run_steps(run: engine.TrainingRun, stream: Stream, n: int) -> None:
    """``n`` steps as ``engine._execute_locked`` takes them, then the learner's
    ``end_epoch`` (a learned strategy's per-epoch work on what these steps stored)."""
    cl = run.cfg.runtime.channels_last
    for _ in range(n):
        step = run._bench_step % run.steps_per_epoch
        if step == 0 and run._bench_step:
            run.begin_epoch(EPOCH)
        batch = stream.next()
        x, y = engine.to_device(batch[0], batch[1], run.device, cl)
        teacher_out = run.cached_teacher_pass(x, y, batch)
        run.train_step(step, x, y, teacher_out, run.batch_index(batch))
        run._bench_step += 1
    run.parts.module.end_epoch(EPOCH)


class Lockstep:
    """Members trained as ``lockstep._train_together`` trains them: one teacher pass per
    batch (with features when a member uses them), each member's ``train_step`` in its own
    RNG states."""

    def __init__(self, runs: list[engine.TrainingRun]):
        self.members = [lockstep_mod._Member(r) for r in runs]
        self.ensemble, self.features = lockstep_mod._shared_ensemble(self.members)
        lead = runs[0]
        self.stream, self.lead, self.step = Stream(lead.train_loader), lead, 0

    def __call__(self, n: int) -> None:
        lead = self.lead
        cfg, device = lead.cfg, lead.device
        for _ in range(n):
            step = self.step % lead.steps_per_epoch
            batch = self.stream.next()
            x, y = engine.to_device(batch[0], batch[1], device, cfg.runtime.channels_last)
            teacher_out = None
            if self.ensemble is not None:
                with engine.autocast(device, cfg.runtime.amp):
                    teacher_out = self.ensemble(x, y, features=self.features)
            for m in self.members:
                shared = teacher_out if m.run.parts.ensemble is not None else None
                with m.own_rng():
                    m.run.train_step(step, x, y, shared, m.run.batch_index(batch))
            self.step += 1
        for m in self.members:
            with m.own_rng():
                m.run.parts.module.end_epoch(EPOCH)


class StudentFloor:
    """The student's step alone: forward, CE, backward, SGD step, nothing else (the model
    placed and compiled, the optimizer and scaler built, as the engine does)."""

    def __init__(self, arch: str, classes: int, s: Setting, device: torch.device, lr=0.05):
        torch.manual_seed(0)
        fmt = torch.channels_last if s.channels_last else torch.preserve_format
        self.model = create_model(arch, num_classes=classes).to(device, memory_format=fmt)
        if s.compile:
            self.model.compile()
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9,
                                   weight_decay=5e-4, nesterov=True,
                                   fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=s.amp and device.type == "cuda")
        self.device, self.amp = device, s.amp

    def step(self, x, y) -> None:
        with engine.autocast(self.device, self.amp):
            loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()


def teachers_forward(teachers, device, amp: bool, x) -> None:
    with torch.no_grad(), engine.autocast(device, amp):
        for t in teachers:
            t(x)


# --------------------------------------------------------------------------- one setting
def measure_setting(bench: Bench, s: Setting) -> dict:
    """Every measure of one setting, timed round-robin; the numbers and the judged targets."""
    args, device = bench.args, bench.device
    n = args.steps
    runs: dict[tuple[str, str], engine.TrainingRun] = {}
    errors: dict[str, str] = {}
    lead_ensemble = None
    for variant in args.variants:
        for strategy in args.strategies:
            try:
                run = bench.prepared(bench.config(strategy, variant, s))
            except Exception as err:  # a strategy that cannot run this variant: say why
                errors[f"{strategy} ({variant})"] = f"{type(err).__name__}: {err}"
                log.warning("%s %s: %s", strategy, variant, err)
                continue
            if lead_ensemble is None:
                lead_ensemble = run.parts.ensemble
            else:  # one copy of the teachers' weights, as lockstep keeps it
                lockstep_mod._share_teacher_weights(run.parts.ensemble, lead_ensemble)
            runs[(strategy, variant)] = run
    if not runs:
        raise SystemExit(f"no run could be built: {errors}")
    first = next(iter(runs.values()))
    fixed = []
    probe = Stream(first.train_loader)
    for _ in range(4):
        b = probe.next()
        fixed.append(engine.to_device(b[0], b[1], device, s.channels_last))
    cycle = itertools.cycle(fixed)

    floor_student = StudentFloor(args.student, args.classes, s, device,
                                 first.cfg.optim.lr or 0.05)
    teachers = list(lead_ensemble.teachers)

    def student_steps():
        for _ in range(n):
            floor_student.step(*next(cycle))

    def teacher_passes():
        for _ in range(n):
            teachers_forward(teachers, device, s.amp, next(cycle)[0])

    def data_batches():
        for _ in range(n):
            b = probe.next()
            engine.to_device(b[0], b[1], device, s.channels_last)

    def evaluation():
        engine.evaluate(first.parts.model, first.eval_loaders["test"], device, s.amp,
                        s.channels_last)

    measures = {
        "floor-student": Measure("student step alone", student_steps, n),
        "floor-teachers": Measure("teachers' forward alone", teacher_passes, n),
        "data": Measure("data: batch to the device", data_batches, n),
        "eval": Measure(f"evaluation of {len(bench.splits.test)} test images", evaluation, 1),
    }
    def aligned(group: list[engine.TrainingRun]) -> int:
        """Steps per call: with MMKD in ``group``, a multiple of its ``meta_freq``, so every
        timed call holds the same number of meta steps (the calls start at step 0)."""
        freq = [r.parts.strategy.meta_freq for r in group if r.cfg.strategy.name == "mmkd"]
        return n if not freq else -(-n // freq[0]) * freq[0]

    for (strategy, variant), run in runs.items():
        stream = Stream(run.train_loader)
        k = aligned([run])
        measures[f"{strategy}:{variant}"] = Measure(
            f"{strategy} ({variant})", lambda r=run, st=stream, k=k: run_steps(r, st, k), k)
    lockstep_sizes = {}
    for variant in args.variants:
        members = [runs[(st, variant)] for st in args.lockstep_strategies
                   if (st, variant) in runs][: args.lockstep_size]
        if len(members) > 1:
            # as train_lockstep splits them: one group (one teacher pass) per tapped layers
            by_dir = {r.cfg.output.run_dir: r for r in members}
            subgroups = lockstep_mod.split_by_taps([r.cfg for r in members])
            groups = [Lockstep([by_dir[c.output.run_dir] for c in sub]) for sub in subgroups]
            names = " + ".join("{" + ", ".join(c.strategy.name for c in sub) + "}"
                               for sub in subgroups)
            lockstep_sizes[variant] = (len(members), len(groups),
                                       any(r.cfg.strategy.name == "mmkd" for r in members))
            k = aligned(members)
            measures[f"lockstep:{variant}"] = Measure(
                f"lockstep of {len(members)} ({variant}): {names}",
                lambda gs=groups, k=k: [g(k) for g in gs], k)
        if ("mmkd", variant) in runs:
            run = runs[("mmkd", variant)]
            measures[f"meta:{variant}"] = Measure(
                f"mmkd meta step alone ({variant})",
                lambda r=run: r.parts.strategy.meta_step(r.parts.module, r.optimizer), 1)

    ordered = list(measures.values())
    for m in ordered:
        try:
            for _ in range(args.warmup):
                timed(device, m.fn)
        except Exception as err:
            m.error = f"{type(err).__name__}: {err}"
            log.warning("%s: %s", m.name, m.error)
    live = [m for m in ordered if m.error is None]
    for r in range(args.repeats):
        for m in live[r % len(live):] + live[: r % len(live)]:
            m.times.append(timed(device, m.fn))
        log.info("%s: round %d/%d done", s.text(), r + 1, args.repeats)
    if device.type == "cuda":
        for m in live:
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            m.fn()
            sync(device)
            m.peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20

    result = summarise(bench, s, measures, runs, lockstep_sizes, errors)
    if args.profile and args.profile_run in measures and s == bench.profile_setting:
        result["profile"] = profile(measures[args.profile_run], Path(args.profile),
                                    args.profile_steps, device, s)
    del measures, runs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def summarise(bench, s: Setting, measures: dict, runs: dict, lockstep_sizes: dict,
              errors: dict) -> dict:
    """The rows (time per step, images/s, the floor it is judged against, the ratio of the
    medians and that of the fastest calls) and the targets, judged on the medians."""
    args = bench.args
    median = lambda m: m.seconds
    fastest = lambda m: m.fastest
    spe_run = next(iter(runs.values())).steps_per_epoch
    rows, targets = [], []

    def base(get, teacher_passes: int = 1, students: int = 1) -> float:
        return (teacher_passes * get(measures["floor-teachers"])
                + students * get(measures["floor-student"]))

    def meta_per_step(variant: str, get) -> float:
        """MMKD's meta step per training step (its meta steps of an epoch over its steps)."""
        meta, run = measures.get(f"meta:{variant}"), runs.get(("mmkd", variant))
        if meta is None or run is None or meta.error:
            return 0.0
        freq = run.parts.strategy.meta_freq
        return get(meta) * meta_steps_per_epoch(spe_run, freq) / spe_run

    def row(key, m: Measure, floor_of=None, floor_name: str = ""):
        sec = m.seconds
        floor_s = None if floor_of is None else floor_of(median)
        rows.append({
            "key": key, "name": m.name, "ms_per_step": 1e3 * sec,
            "images_per_s": s.batch / sec if math.isfinite(sec) else math.nan,
            "floor": floor_name, "floor_ms": None if floor_s is None else 1e3 * floor_s,
            "ratio": None if floor_s is None else sec / floor_s,
            "ratio_fastest": None if floor_of is None else m.fastest / floor_of(fastest),
            "peak_mib": m.peak_mib, "error": m.error, "times_s": m.times,
        })
        return rows[-1]

    row("floor-student", measures["floor-student"])
    row("floor-teachers", measures["floor-teachers"])
    floor = base(median)
    rows.append({"key": "floor", "name": "floor = student step + teachers' forward",
                 "ms_per_step": 1e3 * floor, "images_per_s": s.batch / floor, "floor": "",
                 "floor_ms": None, "ratio": None, "ratio_fastest": None, "peak_mib": None,
                 "error": None, "times_s": []})
    row("data", measures["data"], base, "floor")
    eval_row = row("eval", measures["eval"])
    eval_row["images_per_s"] = len(bench.splits.test) / measures["eval"].seconds
    by_key = {}
    for (strategy, variant) in runs:
        key = f"{strategy}:{variant}"
        if strategy == "mmkd" and meta_per_step(variant, median):
            by_key[key] = row(key, measures[key],
                              lambda get, v=variant: base(get) + meta_per_step(v, get),
                              "mmkd's own floor")
        else:
            by_key[key] = row(key, measures[key], base, "floor")
        if strategy in FIXED:
            targets.append(target(f"{strategy} ({variant}) step / floor", by_key[key]["ratio"],
                                  LIMIT_FIXED))
        elif strategy == "mmkd":
            targets.append(target(f"mmkd ({variant}) step / its own floor",
                                  by_key[key]["ratio"], LIMIT_MMKD))
    for variant in args.variants:
        if f"meta:{variant}" in measures:  # ms per meta step; no images of its own
            row(f"meta:{variant}", measures[f"meta:{variant}"])["images_per_s"] = None
        rl, uni = by_key.get(f"mtkd-rl:{variant}"), by_key.get(f"uniform:{variant}")
        if rl and uni:
            targets.append(target(f"mtkd-rl ({variant}) / uniform ({variant})",
                                  rl["ms_per_step"] / uni["ms_per_step"], LIMIT_RL))
        if f"lockstep:{variant}" in measures:
            k, passes, with_mmkd = lockstep_sizes[variant]

            def lock_floor(get, v=variant, k=k, passes=passes, with_mmkd=with_mmkd):
                return base(get, passes, k) + (meta_per_step(v, get) if with_mmkd else 0.0)

            r = row(f"lockstep:{variant}", measures[f"lockstep:{variant}"], lock_floor,
                    f"{passes} teacher pass{'es' if passes > 1 else ''} + {k} student steps"
                    + (" + mmkd's meta steps" if with_mmkd else ""))
            r["images_per_s"] *= k  # student-images per second
            targets.append(target(f"lockstep of {k} ({variant}) / its floor", r["ratio"],
                                  LIMIT_LOCKSTEP))
    for key, text in errors.items():
        rows.append({"key": key, "name": key, "ms_per_step": math.nan, "images_per_s": math.nan,
                     "floor": "", "floor_ms": None, "ratio": None, "ratio_fastest": None,
                     "peak_mib": None, "error": text, "times_s": []})
    projection = project(bench, s, measures, by_key)
    return {"setting": s.__dict__, "text": s.text(), "steps_per_epoch_measured": spe_run,
            "rows": rows, "targets": targets, "projection": projection}


def target(name: str, value: float | None, limit: float) -> dict:
    ok = value is not None and math.isfinite(value) and value <= limit
    return {"name": name, "value": value, "limit": limit, "met": ok}


def project(bench, s: Setting, measures: dict, by_key: dict) -> dict:
    """Minutes of one ``--epochs``-epoch logits+features run per strategy at CIFAR-100's size:
    ``epochs x (ceil(50000 / batch) x step + evaluation of 10000 images)``."""
    args = bench.args
    spe = math.ceil(CIFAR_TRAIN / s.batch)
    eval_s = measures["eval"].seconds * CIFAR_TEST / len(bench.splits.test)
    out = {"epochs": args.epochs, "steps_per_epoch": spe, "eval_s_per_epoch": eval_s,
           "minutes": {}}
    for key, r in by_key.items():
        strategy, variant = key.split(":")
        if variant == "logits+feat" and math.isfinite(r["ms_per_step"]):
            out["minutes"][strategy] = args.epochs * (spe * r["ms_per_step"] / 1e3 + eval_s) / 60
    return out


# --------------------------------------------------------------------------- the suite
def measure_suite(bench: Bench, s: Setting) -> dict:
    """Project the whole suite ``--suite``: each lockstep group of its first seed (split by
    tapped teacher layers as ``train_lockstep`` splits it) timed per step with the suite's own
    models on synthetic data, times its epochs, seeds and steps; its trained teachers' steps
    likewise; the evaluation per run and epoch. Teachers have random weights."""
    from multikd.bench.runner import make_plan

    args, device = bench.args, bench.device
    plan = make_plan(args.suite, bench.root / "suite")
    suite = plan.suite
    rt = bench.runtime(s)
    batch = None

    def adapt(cfg: RunConfig) -> RunConfig:
        nonlocal batch
        cfg.data.dataset, cfg.data.data_root = "synthetic", None
        cfg.data.synthetic = dict(bench.synthetic)
        cfg.data.val_size = 0
        cfg.runtime.device, cfg.runtime.amp = rt.device, rt.amp
        cfg.runtime.channels_last, cfg.runtime.compile = rt.channels_last, rt.compile
        cfg.runtime.teacher_cache = ""
        if args.suite_batch:
            cfg.optim.batch_size = args.suite_batch
        batch = cfg.optim.batch_size
        cfg.output.run_dir = str(bench.root / "suite_runs" / f"{bench._count}")
        bench._count += 1
        cfg.output.quiet = True
        return resolve(cfg)

    for tid, job in plan.teachers.items():  # random weights where the runs look for them
        path = Path(job.checkpoint)
        if not path.is_file():
            bench.save_teacher(job.spec.arch, path, 2000 + len(tid))
    seed0 = suite.seeds[0]
    groups = [g for g in plan.groups if g.seed == seed0]
    parts, measures = [], []
    for group in groups:
        configs = [adapt(r.config) for r in group.runs]
        for sub in lockstep_mod.split_by_taps(configs):
            runs = [bench.prepared(c) for c in sub]
            first = next((r.parts.ensemble for r in runs if r.parts.ensemble is not None), None)
            for r in runs:
                if r.parts.ensemble is not None and first is not None:
                    lockstep_mod._share_teacher_weights(r.parts.ensemble, first)
            g = Lockstep(runs)
            labels = [Path(c.output.run_dir).name for c in sub]
            name = f"{group.teacher_set}: " + ", ".join(
                f"{c.strategy.name if c.kind == 'distill' else 'student'}"
                f"{'+feat' if c.kind == 'distill' and c.loss.gamma > 0 else ''}" for c in sub)
            m = Measure(name.strip(), lambda g=g: g(args.steps), args.steps)
            measures.append(m)
            parts.append({"name": m.name, "runs": len(sub), "labels": labels,
                          "epochs": sub[0].optim.epochs, "spe_batch": sub[0].optim.batch_size,
                          "drop_last": sub[0].data.drop_last, "kind": "students",
                          "eval_run": runs[0]})
    teacher_jobs = [j for j in plan.teachers.values()]
    archs = {}
    for job in teacher_jobs:
        key = (job.spec.arch, job.config.optim.batch_size, job.config.optim.epochs)
        archs.setdefault(key, []).append(job)
    for (arch, _, epochs), jobs in archs.items():
        cfg = adapt(job_config(jobs[0].config))
        run = bench.prepared(cfg)
        stream = Stream(run.train_loader)
        m = Measure(f"teacher {arch}", lambda r=run, st=stream: run_steps(r, st, args.steps),
                    args.steps)
        measures.append(m)
        parts.append({"name": m.name, "runs": len(jobs), "epochs": epochs,
                      "spe_batch": cfg.optim.batch_size,
                      "drop_last": cfg.data.drop_last, "kind": "teachers",
                      "published": sum(1 for j in jobs if j.spec.published),
                      "eval_run": run})
    for p in parts:  # evaluation per run and epoch, over the test split
        r = p.pop("eval_run")
        p["eval"] = Measure("eval", lambda r=r: engine.evaluate(
            r.parts.model, r.eval_loaders["test"], device, s.amp, s.channels_last), 1)
    everything = measures + [p["eval"] for p in parts]
    for m in everything:
        for _ in range(max(1, args.warmup)):
            timed(device, m.fn)
    for r in range(args.repeats):
        for m in everything[r % len(everything):] + everything[: r % len(everything)]:
            m.times.append(timed(device, m.fn))
    seeds = len(suite.seeds)
    total_trained = total_all = 0.0
    for p, m in zip(parts, measures):
        spe = (CIFAR_TRAIN // p["spe_batch"] if p["drop_last"]
               else math.ceil(CIFAR_TRAIN / p["spe_batch"]))
        eval_s = p["eval"].seconds * CIFAR_TEST / len(bench.splits.test)
        per_run_eval = p["epochs"] * eval_s
        p["ms_per_step"] = 1e3 * m.seconds
        p["steps_per_epoch"] = spe
        if p["kind"] == "students":
            p["hours"] = seeds * (p["epochs"] * spe * m.seconds + p["runs"] * per_run_eval) / 3600
            total_trained += p["hours"]
            total_all += p["hours"]
        else:
            one = (p["epochs"] * spe * m.seconds + per_run_eval) / 3600
            p["hours"] = one * p["runs"]
            total_all += one * p["runs"]
            total_trained += one * (p["runs"] - p["published"])
        p.pop("eval")
    return {"suite": str(args.suite), "name": suite.name, "seeds": seeds,
            "student_runs": len(plan.runs), "groups_per_seed": sum(1 for p in parts
                                                                    if p["kind"] == "students"),
            "parts": parts, "hours_all_teachers_trained": total_all,
            "hours_published_teachers_given": total_trained, "setting": s.text(),
            "batch": batch}


def job_config(config: RunConfig) -> RunConfig:
    return RunConfig.from_dict(config.to_dict())


# --------------------------------------------------------------------------- profile
def profile(m: Measure, out: Path, steps: int, device: torch.device, s: Setting) -> dict:
    """A trace of ``steps`` steps of ``m`` (``out/trace_<name>.json``), the top operators and
    kernels, and on CUDA the device's idle gaps between kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out.mkdir(parents=True, exist_ok=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    calls = max(1, math.ceil(steps / m.per_call))
    timed(device, m.fn)
    with torch_profile(activities=acts) as prof:
        for _ in range(calls):
            m.fn()
        sync(device)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in m.name)
    trace = out / f"trace_{safe}.json"
    prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        sample = next(iter(averages), None)
        sort = ("self_device_time_total" if sample is not None
                and hasattr(sample, "self_device_time_total") else "self_cuda_time_total")
    table = averages.table(sort_by=sort, row_limit=20)
    gaps = device_gaps(prof.events()) if device.type == "cuda" else None
    print(f"\nprofile of {m.name} ({s.text()}), {calls * m.per_call} steps: {trace}")
    print(table)
    if gaps:
        print(gaps["text"])
    return {"trace": str(trace), "steps": calls * m.per_call, "top": table,
            "gaps": gaps}


def device_gaps(events) -> dict | None:
    """Busy and idle time of the device over the profiled span (kernels and copies merged),
    and the largest idle gaps with the kernels around them."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                   if getattr(e, "device_type", None) == DeviceType.CUDA)
    if not spans:
        return None
    merged = [list(spans[0])]
    gaps = []
    for start, end, name in spans[1:]:
        if start > merged[-1][1]:
            gaps.append((start - merged[-1][1], merged[-1][2], name))
            merged.append([start, end, name])
        elif end > merged[-1][1]:
            merged[-1][1], merged[-1][2] = end, name
    total = spans[-1][1] - spans[0][0]
    busy = sum(e - s for s, e, _ in merged)
    gaps.sort(reverse=True)
    lines = [f"device busy {busy / 1e3:.2f} ms of {total / 1e3:.2f} ms "
             f"({100 * busy / max(total, 1e-9):.1f}%); {len(gaps)} idle gaps, "
             f"{sum(g for g, _, _ in gaps) / 1e3:.2f} ms idle; largest:"]
    lines += [f"  {g:9.1f} us  after {a[:60]}  before {b[:60]}" for g, a, b in gaps[:10]]
    return {"busy_us": busy, "span_us": total, "gaps": len(gaps),
            "idle_us": sum(g for g, _, _ in gaps), "largest": gaps[:10],
            "text": "\n".join(lines)}


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
    lines = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"- device: {torch.cuda.get_device_name(device)} "
                     f"({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}")
    else:
        lines.append("- device: cpu")
    lines += [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
        f", OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "- load average at start (1/5/15 min): "
        + "/".join(f"{v:.1f}" for v in os.getloadavg()),
        f"- Python {platform.python_version()}, torch {torch.__version__}, multikd "
        f"{multikd.__version__}, {platform.platform()}",
    ]
    return lines


def fmt(v, spec=".3f", none="-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def render(args, device, results, suite, seconds: float, argv: list[str]) -> str:
    command = "python experiments/bench_gpu.py " + " ".join(shlex.quote(a) for a in argv)
    a = args
    lines = [
        "# multikd at the hardware's floor (experiments/bench_gpu.py)",
        "",
        f"Made by `{command.strip()}` in {seconds:.0f} s.",
        "",
        *machine(device),
        f"- models: {a.teachers} x {a.teacher} -> {a.student}; synthetic data "
        f"{a.train_size} train / {a.test_size} test images, {a.classes} classes; "
        f"logits+features runs with loss.gamma {a.gamma:g}",
        f"- timing: {a.steps} steps per call, {a.warmup} warm-up call(s) per measure, median "
        f"of {a.repeats} round-robin rounds; CUDA synchronised around each timed call only",
        "- AMP is the package's runtime.amp: fp16 + GradScaler on CUDA, bf16 on the CPU",
    ]
    if device.type != "cuda":
        lines += ["", "On the CPU the step is compute-bound: these ratios say nothing about the "
                  "GPU targets (on a GPU a small step's cost is in kernel launches and host "
                  "gaps, not arithmetic); the wall-time target is judged on an H100 only."]
    for res in results:
        lines += ["", f"## {res['text']}", "",
                  "| measure | ms/step | images/s | vs | ratio | of fastest | peak MiB above "
                  "resident |", "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if r["error"]:
                lines.append(f"| {r['name']} | error: {r['error'][:160]} | | | | | |")
                continue
            peak = "n/a" if device.type != "cuda" else fmt(r["peak_mib"], ".0f")
            lines.append(f"| {r['name']} | {fmt(r['ms_per_step'], '.2f')} | "
                         f"{fmt(r['images_per_s'], '.0f')} | {r['floor'] or '-'} | "
                         f"{fmt(r['ratio'])} | {fmt(r.get('ratio_fastest'))} | {peak} |")
        lines += ["", "| target | value | limit | judged |", "|---|---|---|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['name']} | {fmt(t['value'])} | <= {t['limit']:g} | "
                         f"{'PASS' if t['met'] else '**MISS**'} |")
        p = res["projection"]
        if p["minutes"]:
            judge = "H100" in (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else "")
            lines += ["", f"Projected {p['epochs']}-epoch logits+features run at CIFAR-100 size "
                      f"({p['steps_per_epoch']} steps + {p['eval_s_per_epoch']:.2f} s "
                      "evaluation per epoch; setup not counted):", ""]
            for strategy, minutes in p["minutes"].items():
                verdict = ((" PASS" if minutes <= LIMIT_RUN_MIN else " **MISS**")
                           + f" (<= {LIMIT_RUN_MIN:g} min on an H100)") if judge else ""
                lines.append(f"- {strategy}: {minutes:.1f} min{verdict}")
        if "profile" in res:
            pr = res["profile"]
            lines += ["", f"Profile: `{pr['trace']}` ({pr['steps']} steps)."]
            if pr["gaps"]:
                lines += ["", "```", pr["gaps"]["text"], "```"]
    if suite:
        lines += ["", f"## The whole suite {suite['name']} ({suite['suite']})", "",
                  f"{suite['student_runs']} student runs over {suite['seeds']} seeds, "
                  f"{suite['groups_per_seed']} lockstep group(s) per seed, measured at the "
                  f"suite's batch {suite['batch']} with the settings of the last table "
                  f"({suite['setting'].split(', ', 1)[1]}), the suite's models (random "
                  "weights), projected to CIFAR-100's size:",
                  "", "| part | runs | ms/step | steps/epoch | epochs | hours (all seeds) |",
                  "|---|---|---|---|---|---|"]
        for p in suite["parts"]:
            lines.append(f"| {p['kind']}: {p['name']} | {p['runs']} | "
                         f"{p['ms_per_step']:.2f} | {p['steps_per_epoch']} | {p['epochs']} | "
                         f"{p['hours']:.2f} |")
        lines += ["", f"Whole suite: {suite['hours_all_teachers_trained']:.2f} h with every "
                  f"teacher trained, {suite['hours_published_teachers_given']:.2f} h with the "
                  "published teachers given (--teachers-dir); one run after the other on this "
                  "device, lockstep on (the default)."]
    return "\n".join(lines) + "\n"


def put_section(path: Path, text: str) -> None:
    """``text`` into ``path`` between this script's markers (replacing an earlier section,
    else appended), its headings one level down, the rest of the file kept."""
    from multikd.atomic import atomic_write_text

    text = "\n".join("#" + line if line.startswith("#") else line
                     for line in text.rstrip().splitlines())
    block = f"{BEGIN}\n{text}\n{END}\n"
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + block + (("\n" + tail) if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    atomic_write_text(path, new)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    quiet = logging.getLogger("multikd")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return _main(args, argv)
    finally:
        quiet.setLevel(level)


def _main(args, argv: list[str]) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.out is None and device.type == "cuda":
        args.out = "results/speed_gpu.md"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        bench = Bench(args, device, Path(tmp))
        all_settings = settings(args)
        bench.profile_setting = all_settings[-1]
        results = [measure_setting(bench, s) for s in all_settings]
        suite = None
        if args.suite:
            last = all_settings[-1]
            suite = measure_suite(bench, last)
    text = render(args, device, results, suite, time.perf_counter() - t0, argv)
    print(text)
    from multikd.atomic import atomic_write_text

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), text)
    if args.section:
        put_section(Path(args.section), text)
    if args.json:
        for res in results:
            res.get("profile", {}).pop("top", None)
        Path(args.json).write_text(json.dumps({"results": results, "suite": suite},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
