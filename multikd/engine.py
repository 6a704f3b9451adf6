"""The training loop: SGD + schedule, per-epoch evaluation, checkpoints, exact resume, DDP.

``train(config)`` runs a fresh run into ``config.output.run_dir``; ``resume(run_dir)``
continues one from its last checkpoint. Both return the run's summary (also written to
``summary.json``). One epoch:

1. ``train.set_epoch(e)`` and ``sampler.set_epoch(e)``: the data layer makes the order and the
   augmented views pure functions of (seed, epoch, index);
2. every step: ``losses = learner(x, y)[1]``, SGD on ``losses["total"]``, scheduler step. Loss
   parts, accuracy and the per-teacher diagnostics are summed on the device; the host reads
   them (one sync) only every ``output.log_interval`` steps and at the epoch's end, which is
   also when a non-finite loss is detected (with the step where it first appeared);
3. evaluation of the trained model on val (if any) and test;
4. rank 0 writes ``checkpoint.pt`` (everything needed to continue: model, adapters,
   optimizer, scheduler, scaler, strategy state, RNG states, metrics so far) and then
   ``metrics.csv``, both atomically.

A run killed at any point and resumed therefore replays exactly the epochs that had not
been checkpointed, with the same data, the same random numbers and the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

import multikd
from multikd import distributed as ddp
from multikd.build import Learner, build_data, build_learner, pick_device
from multikd.config import RunConfig, config_hash, resolve
from multikd.errors import CheckpointError, ConfigError, TrainingError
from multikd.rng import rng_state, seed_everything, set_rng_state
from multikd.runio import RunDir
from multikd.schedule import LRSchedule

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "multikd-run/1"


def train(config: RunConfig, overwrite: bool = False) -> dict:
    """Train a fresh run described by ``config``; the summary dict of the finished run."""
    cfg = resolve(config)
    return _Run(cfg, resuming=False, overwrite=overwrite).execute()


def resume(run_dir: str, device: str | None = None, quiet: bool | None = None) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint (its own config.yaml).

    ``device`` and ``quiet`` may differ from the original run; nothing else may. A finished
    run is not trained again: its summary is returned.
    """
    run = RunDir(run_dir)
    if run.state() == "finished":
        log.info("%s is already finished; nothing to resume", run_dir)
        return run.summary()
    cfg = run.read_config()
    cfg.output.run_dir = str(run_dir)
    if device is not None:
        cfg.runtime.device = device
    if quiet is not None:
        cfg.output.quiet = quiet
    return _Run(resolve(cfg), resuming=True, overwrite=False).execute()


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU, fp16 on CUDA; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """``[correct, count, summed CE]`` of ``model`` over ``loader``, on ``device`` (no sync)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with autocast(device, amp):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        totals[0] += (logits.argmax(dim=1) == y).sum()
        totals[1] += y.numel()
        totals[2] += loss
    model.train(was_training)
    return totals


def evaluate_checkpoint(
    arch: str,
    checkpoint: str,
    dataset: str,
    data_root: str | None = None,
    val_size: int = 0,
    synthetic: dict | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
) -> dict:
    """Top-1 accuracy (%) and mean CE of a saved model on the test (and val) split."""
    from multikd import data
    from multikd.models import create_model

    dev = pick_device(device)
    splits = data.build_datasets(
        dataset, data_root=data_root, val_size=val_size, seed=seed,
        synthetic=synthetic if dataset == "synthetic" else None,
    )
    model = create_model(arch, num_classes=splits.num_classes, checkpoint=checkpoint).to(dev)
    result = {"arch": model.arch_name, "checkpoint": str(checkpoint), "dataset": dataset}
    named = [("test", splits.test)] + ([("val", splits.val)] if splits.val is not None else [])
    for name, split in named:
        loader = data.build_loader(split, batch_size, train=False, seed=seed, device=str(dev))
        correct, count, loss = evaluate(model, loader, dev).tolist()
        result[f"{name}_acc"] = 100.0 * correct / count
        result[f"{name}_loss"] = loss / count
    return result


def _to_device(x, y, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


class _Run:
    """One training process's view of a run (all ranks run it; rank 0 writes files)."""

    def __init__(self, cfg: RunConfig, resuming: bool, overwrite: bool):
        self.cfg = cfg
        self.resuming = resuming
        self.overwrite = overwrite
        self.env = ddp.detect()
        self.run = RunDir(cfg.output.run_dir)
        self.hash = config_hash(cfg)

    # ------------------------------------------------------------------ setup
    def execute(self) -> dict:
        cfg = self.cfg
        self.device = pick_device(cfg.runtime.device, self.env.local_rank)
        ddp.init(self.env, self.device)
        try:
            if not self.env.is_main:
                logging.getLogger("multikd").setLevel(logging.WARNING)
            self._prepare_dir()
            self._configure_torch()
            seed_everything(cfg.runtime.seed)
            self.splits = build_data(cfg, cfg.runtime.seed)
            self.parts = build_learner(cfg, self.splits.num_classes)
            self._place_models()
            self._build_loaders()
            self._build_optimizer()
            state = self._load_state()
            return self._loop(state)
        finally:
            ddp.shutdown(self.env)

    def _prepare_dir(self) -> None:
        run = self.run
        if self.resuming:
            if self.run.has_checkpoint():
                return
            log.info("%s has no checkpoint yet: starting its first epoch", run.path)
        else:
            run.prepare_new(self.overwrite)
        ddp.barrier(self.env)
        if self.env.is_main:
            run.clear()
            run.write_config(self.cfg)
        ddp.barrier(self.env)

    def _configure_torch(self) -> None:
        if self.cfg.runtime.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _place_models(self) -> None:
        rt = self.cfg.runtime
        parts: Learner = self.parts
        memory_format = torch.channels_last if rt.channels_last else torch.preserve_format
        parts.module.to(self.device, memory_format=memory_format)
        if rt.compile:
            parts.model.compile()
            for teacher in getattr(parts.ensemble, "teachers", []) if parts.ensemble else []:
                teacher.compile()
        self.train_module = ddp.wrap(parts.module, parts.ensemble, self.device, self.env)

    def _build_loaders(self) -> None:
        from multikd import data

        cfg, env, s = self.cfg, self.env, self.splits
        batch = cfg.optim.batch_size
        if batch % env.world_size:
            raise ConfigError(
                f"optim.batch_size {batch} is the global batch; it must divide evenly over "
                f"{env.world_size} processes"
            )
        per_rank = batch // env.world_size
        if batch > len(s.train):
            raise ConfigError(
                f"optim.batch_size {batch} is larger than the training set "
                f"({len(s.train)} images); lower --batch-size"
            )
        seed, workers, dev = cfg.runtime.seed, cfg.data.workers, str(self.device)
        if env.enabled:
            self.train_loader = ddp.train_loader(s.train, per_rank, seed, env, workers, self.device)
        else:
            self.train_loader = data.build_loader(
                s.train, batch, train=True, seed=seed, workers=workers, device=dev
            )
        self.eval_loaders = {}
        for name, split in (("val", s.val), ("test", s.test)):
            if split is not None:
                self.eval_loaders[name] = data.build_loader(
                    ddp.eval_shard(split, env), per_rank, train=False, seed=seed,
                    workers=workers, device=dev,
                )

    def _build_optimizer(self) -> None:
        o = self.cfg.optim
        params = self.parts.module.trainable_parameters()
        self.optimizer = torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
        )
        self.steps_per_epoch = len(self.train_loader)
        schedule = LRSchedule(
            o.schedule, self.steps_per_epoch, o.epochs, o.milestones, o.lr_decay, o.warmup_epochs
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        use_scaler = self.cfg.runtime.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    # ------------------------------------------------------------------ state
    def _frozen_keys(self) -> set[str]:
        parts = self.parts
        if parts.ensemble is None:
            return set()
        frozen = {id(t) for t in parts.ensemble.state_dict(keep_vars=True).values()}
        return {k for k, v in parts.module.state_dict(keep_vars=True).items() if id(v) in frozen}

    def _learner_extra_state(self) -> dict:
        """Learner state that is neither the trained model nor a teacher (the adapters)."""
        model_ids = {id(t) for t in self.parts.model.state_dict(keep_vars=True).values()}
        frozen = self._frozen_keys()
        return {
            k: v.detach()
            for k, v in self.parts.module.state_dict(keep_vars=True).items()
            if id(v) not in model_ids and k not in frozen
        }

    def _checkpoint(self, epoch: int, rows: list[dict], elapsed: float) -> dict:
        parts = self.parts
        strategy_state = getattr(parts.strategy, "state_dict", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": parts.model.state_dict(),
            "arch": self.cfg.model.arch,
            "num_classes": self.splits.num_classes,
            "learner": self._learner_extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": strategy_state() if callable(strategy_state) else {},
            "rng": rng_state(),
            "epoch": epoch,
            "metrics": rows,
            "teacher_test_acc": self.teacher_acc,
            "elapsed_s": elapsed,
            "config_hash": self.hash,
        }

    def _load_state(self) -> dict | None:
        if not (self.resuming and self.run.has_checkpoint()):
            self.teacher_acc = self._teacher_test_acc()
            return None
        state = self.run.load_checkpoint(map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config_hash") != self.hash:
            raise CheckpointError(
                f"{self.run.file('checkpoint.pt')} does not belong to {self.run.file('config.yaml')} "
                "(different config hash or not a multikd run checkpoint); was the config edited? "
                "Restore it, or start a new run"
            )
        parts = self.parts
        parts.model.load_state_dict(state["model"])
        extra = state["learner"]
        if extra:
            _, unexpected = parts.module.load_state_dict(extra, strict=False)
            if unexpected:
                raise CheckpointError(f"checkpoint holds unknown learner state {unexpected}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state["strategy"]:
            parts.strategy.load_state_dict(state["strategy"])
        set_rng_state(state["rng"])
        self.teacher_acc = state["teacher_test_acc"]
        log.info("resuming %s after epoch %d", self.run.path, state["epoch"])
        return state

    def _teacher_test_acc(self) -> dict:
        ensemble = self.parts.ensemble
        if ensemble is None:
            return {}
        loader = self.eval_loaders["test"]
        acc = ensemble.evaluate(loader, device=self.device)
        if not self.env.enabled:
            return {name: float(a) for name, a in acc.items()}
        n = len(loader.dataset)
        sums = torch.tensor([float(acc[k]) * n for k in self.parts.teacher_names] + [n],
                            dtype=torch.float64, device=self.device)
        ddp.all_reduce_sum(sums, self.env)
        total = sums[-1].item()
        return {k: sums[i].item() / total for i, k in enumerate(self.parts.teacher_names)}

    # ------------------------------------------------------------------ loop
    def _loop(self, state: dict | None) -> dict:
        cfg = self.cfg
        start = state["epoch"] + 1 if state else 1
        rows: list[dict] = list(state["metrics"]) if state else []
        elapsed = state["elapsed_s"] if state else 0.0
        for epoch in range(start, cfg.optim.epochs + 1):
            t0 = time.perf_counter()
            lr, train = self._train_epoch(epoch)
            train_time = time.perf_counter() - t0
            evaluated = self._evaluate_all()
            row = {"epoch": epoch, "lr": lr}
            row.update((k, v) for k, v in train.items() if k.startswith("loss_"))
            row["train_acc"] = train["train_acc"]
            row.update(evaluated)
            row.update((k, v) for k, v in train.items() if k not in row)
            row["epoch_time_s"] = time.perf_counter() - t0
            row["images_per_s"] = len(self.splits.train) / train_time
            elapsed += row["epoch_time_s"]
            rows.append(row)
            if self.env.is_main:
                self.run.save_checkpoint(self._checkpoint(epoch, rows, elapsed))
                self.run.write_metrics(rows)
            self._log_epoch(row)
        summary = self._summary(rows, elapsed)
        if self.env.is_main:
            self.run.write_summary(summary)
        ddp.barrier(self.env)
        return summary

    def _train_epoch(self, epoch: int) -> tuple[float, dict]:
        """One pass over the training set: (lr at its first step, averages over all ranks)."""
        cfg, device, env = self.cfg, self.device, self.env
        self.splits.train.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch)
        module = self.train_module
        module.train()
        acc = _EpochAccumulator(device)
        lr = self.optimizer.param_groups[0]["lr"]
        n_steps = self.steps_per_epoch
        show_bar = env.is_main and not cfg.output.quiet and sys.stderr.isatty()
        bar = tqdm(total=n_steps, desc=f"epoch {epoch}/{cfg.optim.epochs}", disable=not show_bar,
                   leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        with bar:
            for step, (x, y) in enumerate(self.train_loader):
                x, y = _to_device(x, y, device, cfg.runtime.channels_last)
                with autocast(device, cfg.runtime.amp):
                    logits, losses, info = module(x, y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(losses["total"]).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                acc.add(step, logits, y, losses, info)
                if (step + 1) % cfg.output.log_interval == 0 and step + 1 < n_steps:
                    running = acc.check(epoch, env, self.run.path)
                    bar.update(step + 1 - bar.n)
                    seen = running["count"]
                    bar.set_postfix(
                        loss=f"{running['loss_total']:.3f}",
                        acc=f"{running['train_acc']:.1f}",
                        img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                    )
            bar.update(n_steps - bar.n)
        return lr, acc.finish(epoch, env, self.run.path, self.parts.teacher_names)

    def _evaluate_all(self) -> dict:
        rt = self.cfg.runtime
        ddp.broadcast_buffers(self.parts.model, self.env)
        out = {}
        for name, loader in self.eval_loaders.items():
            totals = evaluate(self.parts.model, loader, self.device, rt.amp, rt.channels_last)
            correct, count, loss = ddp.all_reduce_sum(totals, self.env).tolist()
            out[f"{name}_acc"] = 100.0 * correct / count
            out[f"{name}_loss"] = loss / count
        return out

    def _log_epoch(self, row: dict) -> None:
        val = f"  val {row['val_acc']:.2f}%" if "val_acc" in row else ""
        log.info(
            "epoch %d/%d  loss %.4f  train %.2f%%%s  test %.2f%%  (%.1f s, %.0f img/s)",
            row["epoch"], self.cfg.optim.epochs, row["loss_total"], row["train_acc"], val,
            row["test_acc"], row["epoch_time_s"], row["images_per_s"],
        )

    def _summary(self, rows: list[dict], elapsed: float) -> dict:
        cfg = self.cfg
        best = max(rows, key=lambda r: r["test_acc"])
        summary = {
            "status": "finished",
            "kind": cfg.kind,
            "student_arch": cfg.model.arch,
            "teacher_names": [t.name for t in cfg.teachers],
            "teacher_archs": [t.arch for t in cfg.teachers],
            "strategy": cfg.strategy.name if cfg.kind == "distill" else None,
            "strategy_params": dict(cfg.strategy.params) if cfg.kind == "distill" else {},
            "features_used": cfg.kind == "distill" and cfg.loss.gamma > 0,
            "seed": cfg.runtime.seed,
            "dataset": cfg.data.dataset,
            "epochs": cfg.optim.epochs,
            "last_test_acc": rows[-1]["test_acc"],
            "best_test_acc": best["test_acc"],
            "best_epoch": best["epoch"],
            "val_selected_test_acc": None,
            "val_selected_epoch": None,
            "wall_time_s": elapsed,
            "world_size": self.env.world_size,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "multikd": multikd.__version__,
            },
            "config_hash": self.hash,
            "run_dir": str(self.run.path),
        }
        if "val_acc" in rows[-1]:
            chosen = max(rows, key=lambda r: r["val_acc"])
            summary["val_selected_test_acc"] = chosen["test_acc"]
            summary["val_selected_epoch"] = chosen["epoch"]
        if cfg.kind == "distill":
            summary["teacher_test_acc"] = self.teacher_acc
        return summary


class _EpochAccumulator:
    """Per-epoch sums kept on the device; read by the host only in :meth:`check`/:meth:`finish`.

    Layout of ``sums``: ``[count, correct, Σ n·loss_part..., Σ n·w_k..., Σ n·ce_k..., Σ n·kept_k...]``.
    ``first_bad`` is the first step whose total loss was not finite (``inf`` while none).
    """

    TEACHER_KEYS = ("weights", "ce", "kept")
    COLUMN_PREFIX = {"weights": "w", "ce": "ce", "kept": "kept"}

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: torch.Tensor | None = None
        self.first_bad = torch.full((), math.inf, dtype=torch.float64, device=device)
        self.loss_names: list[str] = []
        self.teacher_keys: list[str] = []
        self.steps = 0

    def add(self, step: int, logits, y, losses: dict, info: dict) -> None:
        n = torch.full((), float(y.numel()), dtype=torch.float64, device=self.device)
        if self.sums is None:
            self.loss_names = list(losses)
            self.teacher_keys = [k for k in self.TEACHER_KEYS if k in info]
        parts = [n.reshape(1), (logits.detach().argmax(1) == y).sum().double().reshape(1)]
        parts.append(torch.stack([losses[k].detach().double() for k in self.loss_names]) * n)
        parts.extend(info[k].detach().double().reshape(-1) * n for k in self.teacher_keys)
        values = torch.cat(parts)
        self.sums = values if self.sums is None else self.sums + values
        total = losses["total"].detach()
        self.first_bad = torch.where(
            torch.isfinite(total) | (self.first_bad < math.inf), self.first_bad, float(step)
        )
        self.steps += 1

    def _read(self, env: ddp.DistEnv, epoch: int, run_path, reduce: bool) -> list[float]:
        packed = torch.cat([self.first_bad.reshape(1), self.sums])
        if reduce and env.enabled:
            bad = ddp.all_reduce_min(packed[:1].clone(), env)
            packed = torch.cat([bad, ddp.all_reduce_sum(packed[1:].clone(), env)])
        first_bad, *sums = packed.tolist()
        if first_bad < math.inf:
            raise TrainingError(
                f"the training loss became NaN or infinite at epoch {epoch}, step "
                f"{int(first_bad) + 1}; training stopped. The last good checkpoint "
                f"(end of epoch {epoch - 1}) is kept in {run_path}. Lower the learning rate, "
                "turn off --amp, or check the data and the loss weights"
            )
        return sums

    def _named(self, sums: list[float], teacher_names) -> dict:
        count = sums[0]
        out = {"count": count, "train_acc": 100.0 * sums[1] / count}
        i = 2
        for name in self.loss_names:
            out[f"loss_{name}"] = sums[i] / count
            i += 1
        for key in self.teacher_keys:
            for name in teacher_names:
                out[f"{self.COLUMN_PREFIX[key]}_{name}"] = sums[i] / count
                i += 1
        return out

    def check(self, epoch: int, env, run_path) -> dict:
        """This rank's running averages (one host sync); raises on a non-finite loss."""
        return self._named(self._read(env, epoch, run_path, reduce=True), ())

    def finish(self, epoch: int, env, run_path, teacher_names) -> dict:
        """Epoch averages over all ranks: loss_<part>, train_acc, w_/ce_/kept_<teacher>."""
        named = self._named(self._read(env, epoch, run_path, reduce=True), teacher_names)
        named.pop("count")
        return named
