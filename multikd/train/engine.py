"""The training loop: SGD + schedule, per-epoch evaluation, checkpoints, exact resume, DDP.

``train(config)`` runs a fresh run into ``config.output.run_dir``; ``resume(run_dir)``
continues one from its last checkpoint. Both return the run's summary (also written to
``summary.json``). One epoch:

1. ``train.set_epoch(e)`` and ``sampler.set_epoch(e)``: the data layer makes the order and the
   augmented views pure functions of (seed, epoch, index);
2. every step: ``losses = learner(x, y)[1]``, SGD on ``losses["total"]``, scheduler step
   (with ``runtime.teacher_cache`` the teachers' logits come from the cache, keyed by each
   sample's index and view, and the live teachers run on the misses only). Loss
   parts, accuracy and the per-teacher diagnostics are summed on the device; the host reads
   them (one sync) only every ``output.log_interval`` steps and at the epoch's end, which is
   also when a non-finite loss is detected (with the step where it first appeared);
3. evaluation of the trained model on val (if any) and test; the teacher cache is flushed;
4. rank 0 writes ``checkpoint.pt`` (everything needed to continue: model, adapters,
   optimizer, scheduler, scaler, strategy state, RNG states, metrics so far) and then
   ``metrics.csv``, both atomically.

A run killed at any point and resumed therefore replays exactly the epochs that had not
been checkpointed, with the same data, the same random numbers and the same weights.

Over 500 lines on purpose: :class:`TrainingRun` is one run's life cycle (build, place,
steps, epochs, checkpoint, restore, summary), whose parts share its state and read in the
order they run; the helpers that stand alone live in :mod:`multikd.train.evaluation`.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time

import torch
from tqdm import tqdm

import multikd
from multikd.train import distributed as ddp
from multikd.train.build import Learner, build_data, build_learner, build_teacher_cache, pick_device
from multikd.train.config import RunConfig, config_hash, resolve
from multikd import plugins
from multikd.errors import CheckpointError, ConfigError, PluginError
from multikd.train.evaluation import (  # noqa: F401  (re-exported: the engine's helpers)
    accuracy_text, autocast, evaluate, evaluate_checkpoint, to_device,
)
from multikd.train.meters import EpochMeter
from multikd.train.rng import rng_state, seed_everything, set_rng_state
from multikd.train.runio import RunDir
from multikd.train.schedule import LRSchedule

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "multikd-run/1"


def train(config: RunConfig, overwrite: bool = False) -> dict:
    """Train a fresh run described by ``config``; the summary dict of the finished run."""
    return _execute(resolve(config), resuming=False, overwrite=overwrite)


def resume(run_dir: str, device: str | None = None, quiet: bool | None = None) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint (its own config.yaml).

    ``device`` and ``quiet`` may differ from the original run; nothing else may. A finished
    run is not trained again: its summary is returned.
    """
    run = RunDir(run_dir)
    if run.state() == "finished":
        log.info("%s is already finished; nothing to resume", run_dir)
        return run.summary()
    changed = plugins.changes(run.recorded_plugins())
    if changed:
        raise PluginError(
            f"cannot resume {run_dir} exactly: {'; '.join(changed)}. Put back the file the "
            "run used, or start a new run with the plugin as it is now"
        )
    cfg = run.read_config()
    cfg.output.run_dir = str(run_dir)
    if device is not None:
        cfg.runtime.device = device
    if quiet is not None:
        cfg.output.quiet = quiet
    return _execute(resolve(cfg), resuming=True, overwrite=False)


def _execute(cfg: RunConfig, resuming: bool, overwrite: bool) -> dict:
    """Train ``cfg``'s run holding its run-directory lock (:mod:`multikd.train.runlock`;
    only the main process writes, so only it locks under torchrun)."""
    from multikd.train.runlock import hold_runs

    env = ddp.detect()
    locked = [cfg.output.run_dir] if env.is_main and cfg.output.run_dir else []
    with hold_runs(locked):
        return _execute_locked(cfg, resuming, overwrite, env)


def _execute_locked(cfg: RunConfig, resuming: bool, overwrite: bool, env) -> dict:
    try:
        run = prepare_run(cfg, resuming=resuming, overwrite=overwrite)
        show_bar = run.env.is_main and not cfg.output.quiet and sys.stderr.isatty()
        run.open_teacher_cache()
        for epoch in range(run.start_epoch, cfg.optim.epochs + 1):
            t0 = time.perf_counter()
            run.splits.train.set_epoch(epoch)
            run.train_loader.sampler.set_epoch(epoch)
            run.begin_epoch(epoch)
            bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch}/{cfg.optim.epochs}",
                       disable=not show_bar, leave=False, dynamic_ncols=True)
            with bar:
                for step, batch in enumerate(run.train_loader):
                    x, y = to_device(batch[0], batch[1], run.device, cfg.runtime.channels_last)
                    teacher_out = run.cached_teacher_pass(x, y, batch)
                    running = run.train_step(step, x, y, teacher_out, run.batch_index(batch))
                    bar.update(1)  # a count: no device value read, tqdm redraws at most 10/s
                    if running is not None and show_bar:
                        bar.set_postfix(
                            loss=f"{running['loss_total']:.3f}",
                            acc=accuracy_text(running["train_acc"], digits=1, unit=""),
                            img_s=f"{running['count'] / (time.perf_counter() - t0):.0f}",
                        )
            run.end_epoch(epoch, time.perf_counter() - t0)
        return run.finish()
    finally:
        ddp.shutdown(env)


def prepare_run(
    cfg: RunConfig,
    resuming: bool = False,
    overwrite: bool = False,
    splits=None,
    teacher_acc: dict | None = None,
) -> "TrainingRun":
    """Everything a run needs, restored from its checkpoint when ``resuming``.

    ``cfg`` must be resolved. ``splits`` (the data splits of an identical data config) and
    ``teacher_acc`` (the teachers' test accuracies) may be passed in to share them between
    runs trained together; the result is the same as building them anew. Under torchrun this
    joins the process group; the caller leaves it with ``ddp.shutdown(run.env)``.
    """
    return TrainingRun(cfg, resuming, overwrite, splits, teacher_acc)


class TrainingRun:
    """One run, driven epoch by epoch: ``begin_epoch``, ``train_step`` per batch,
    ``end_epoch`` (evaluate, checkpoint, metrics), and ``finish`` (summary).

    All ranks drive it alike; rank 0 alone writes files.
    """

    def __init__(self, cfg: RunConfig, resuming: bool, overwrite: bool, splits, teacher_acc):
        self.cfg = cfg
        self.env = ddp.detect()
        self.run = RunDir(cfg.output.run_dir)
        self.hash = config_hash(cfg)
        self.device = pick_device(cfg.runtime.device, self.env.local_rank)
        ddp.init(self.env, self.device)
        if not self.env.is_main:  # rank 0 reports; the others only their own errors
            logging.getLogger("multikd").setLevel(logging.ERROR)
        self._prepare_dir(resuming, overwrite)
        self._configure_torch()
        self.splits = splits if splits is not None else build_data(cfg, cfg.runtime.seed)
        seed_everything(cfg.runtime.seed)
        self.parts: Learner = build_learner(cfg, self.splits.num_classes,
                                            train_labels=self.splits.train.labels)
        self._place_models()
        module = self.parts.module
        self._after_step = module.after_step if module.updates_after_step else None
        self._build_loaders()
        self._build_optimizer()
        self.teacher_cache = None
        self._cache_counts = (0, 0)
        self._loggers = None
        state = None
        if resuming and self.run.has_checkpoint():
            state = self.run.load_checkpoint()  # on the CPU: RNG states must stay there
        if state is None:
            self.teacher_acc = teacher_acc if teacher_acc is not None else self._teacher_test_acc()
            self.start_epoch, self.rows, self.elapsed = 1, [], 0.0
        else:
            self._restore(state)

    # ------------------------------------------------------------------ setup
    def _prepare_dir(self, resuming: bool, overwrite: bool) -> None:
        run = self.run
        if resuming and run.has_checkpoint():
            return
        if resuming:
            log.info("%s has no checkpoint yet: starting at its first epoch", run.path)
        else:
            run.prepare_new(overwrite)
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
        rt, parts = self.cfg.runtime, self.parts
        memory_format = torch.channels_last if rt.channels_last else torch.preserve_format
        parts.module.to(self.device, memory_format=memory_format)
        if rt.compile:
            parts.model.compile()
            if parts.ensemble is not None:
                for teacher in parts.ensemble.teachers:
                    teacher.compile()
        # the teachers are frozen; a learned strategy's networks average their own gradients
        self.train_module = ddp.wrap(parts.module, parts.module.frozen_modules(), self.device,
                                     self.env)

    def _build_loaders(self) -> None:
        from multikd import data

        cfg, env, s = self.cfg, self.env, self.splits
        batch = cfg.optim.batch_size
        if batch % env.world_size:
            raise ConfigError(
                f"optim.batch_size {batch} is the global batch; it must divide evenly over "
                f"{env.world_size} processes"
            )
        if batch > len(s.train):
            raise ConfigError(
                f"optim.batch_size {batch} is larger than the training set "
                f"({len(s.train)} images); lower --batch-size"
            )
        per_rank = batch // env.world_size
        options = {"seed": cfg.runtime.seed, "workers": cfg.data.workers,
                   "device": str(self.device), "pipeline": cfg.data.pipeline}
        if cfg.data.workers and cfg.data.pipeline == "batched":
            log.info("data.workers is not used by the batched pipeline (batches are made on "
                     "%s); set data.pipeline per-sample to use worker processes", self.device)
        sampler = ddp.train_sampler(s.train, cfg.runtime.seed, env)
        self.train_loader = data.build_loader(
            s.train, per_rank, train=True, sampler=sampler, drop_last=cfg.data.drop_last,
            **options
        )
        self.steps_per_epoch = len(self.train_loader)
        self.eval_loaders = {}
        for name, split in (("val", s.val), ("test", s.test)):
            if split is not None:
                shard = ddp.eval_shard(split, env)
                self.eval_loaders[name] = data.build_loader(
                    shard, min(per_rank, len(shard)), train=False, **options
                )

    def _build_optimizer(self) -> None:
        o = self.cfg.optim
        # fused on CUDA: one kernel, and under fp16 AMP the GradScaler hands it the inf
        # check on the device instead of reading it back on the host every step
        self.optimizer = torch.optim.SGD(
            self.parts.module.trainable_parameters(),
            lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov,
            fused=self.device.type == "cuda",
        )
        schedule = LRSchedule(
            o.schedule, self.steps_per_epoch, o.epochs, o.milestones, o.lr_decay, o.warmup_epochs
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        use_scaler = self.cfg.runtime.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    def _teacher_test_acc(self) -> dict:
        """Each teacher's test accuracy (%) (``TeacherEnsemble.evaluate_counts``, summed over
        processes); a partial teacher's over the test images of its own classes (None when
        there are none)."""
        ensemble = self.parts.ensemble
        if ensemble is None:
            return {}
        log.info("measuring the test accuracy of %d teacher(s) on %d test images",
                 ensemble.num_teachers, len(self.splits.test))
        correct, seen = ensemble.evaluate_counts(self.eval_loaders["test"], device=self.device)
        counts = ddp.all_reduce_sum(torch.cat([correct, seen]).double(), self.env).tolist()
        k = len(self.parts.teacher_names)
        own = {t.name for t in self.cfg.teachers if t.self_from_epoch is not None}
        # a self-teacher is the student: its accuracy is the run's, not a teacher's
        return {name: (100.0 * counts[i] / counts[k + i] if counts[k + i] else None)
                for i, name in enumerate(self.parts.teacher_names) if name not in own}

    # ------------------------------------------------------------------ state
    def _split_state(self) -> tuple[set[str], set[str]]:
        """Keys of the learner's state_dict held by the trained model / by the teachers."""
        def ids(module):
            return {id(t) for t in module.state_dict(keep_vars=True).values()} if module else set()

        model_ids, frozen_ids = ids(self.parts.model), ids(self.parts.ensemble)
        full = self.parts.module.state_dict(keep_vars=True)
        return ({k for k, v in full.items() if id(v) in model_ids},
                {k for k, v in full.items() if id(v) in frozen_ids})

    def _checkpoint(self, epoch: int) -> dict:
        parts = self.parts
        model_keys, frozen_keys = self._split_state()
        learner = {k: v for k, v in parts.module.state_dict().items()
                   if k not in model_keys and k not in frozen_keys}
        return {
            "format": CHECKPOINT_FORMAT,
            "model": parts.model.state_dict(),
            "arch": self.cfg.model.arch,
            "num_classes": self.splits.num_classes,
            "classes": self.cfg.data.classes,
            "learner": learner,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": {} if parts.strategy is None else parts.strategy.state_dict(),
            "self_teacher": parts.module.self_teacher_state(),
            "rng": rng_state(),
            "epoch": epoch,
            "metrics": self.rows,
            "teacher_test_acc": self.teacher_acc,
            "elapsed_s": self.elapsed,
            "config_hash": self.hash,
        }

    def _restore(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config_hash") != self.hash:
            raise CheckpointError(
                f"{self.run.file('checkpoint.pt')} does not belong to "
                f"{self.run.file('config.yaml')} "
                "(another config hash, or not a multikd run checkpoint): was config.yaml edited? "
                "Restore it, or start a new run"
            )
        parts = self.parts
        parts.model.load_state_dict(state["model"])
        if state["learner"]:
            _, unexpected = parts.module.load_state_dict(state["learner"], strict=False)
            if unexpected:
                raise CheckpointError(f"the checkpoint holds unknown learner state {unexpected}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state["strategy"]:
            parts.strategy.load_state_dict(state["strategy"])
        if state.get("self_teacher") is not None:
            parts.module.load_self_teacher_state(state["self_teacher"])
        set_rng_state(state["rng"])
        self.teacher_acc = state["teacher_test_acc"]
        self.rows = list(state["metrics"])
        self.elapsed = state["elapsed_s"]
        self.start_epoch = state["epoch"] + 1
        log.info("resuming %s after epoch %d", self.run.path, state["epoch"])

    # ------------------------------------------------------------------ teacher cache
    def open_teacher_cache(self, shared=None):
        """Open the run's teacher cache (``runtime.teacher_cache``; distillation without
        features) once, or adopt ``shared``, a ``CachedTeachers`` another run of a lockstep
        group opened over the same teachers. Returns it (None when the run uses none)."""
        if shared is not None:
            self.teacher_cache = shared
        elif self.teacher_cache is None:
            self.teacher_cache = build_teacher_cache(
                self.cfg, self.parts.ensemble, self.splits.train, self.device
            )
        return self.teacher_cache

    def cached_teacher_pass(self, x: torch.Tensor, y: torch.Tensor, batch):
        """The teachers' ``EnsembleOutput`` for a batch already on the device, served by the
        teacher cache from the loader's ``batch = (images, labels, indices, views)``, under
        the autocast of :meth:`train_step`; None when the run has no cache (the learner
        then runs its teachers itself)."""
        if self.teacher_cache is None:
            return None
        if len(batch) != 4:
            raise ConfigError(
                "the teacher cache needs each training sample's index and view: build the data "
                "with runtime.teacher_cache set (multikd.train.build.build_data)"
            )
        with autocast(self.device, self.cfg.runtime.amp):
            return self.teacher_cache(x, y, batch[2], batch[3])

    def _cache_hit_rate(self) -> dict:
        """``teacher_cache_hit_rate`` of the samples looked up since :meth:`begin_epoch`."""
        if self.teacher_cache is None:
            return {}
        cache = self.teacher_cache.cache
        hits = cache.hits - self._cache_counts[0]
        looked_up = hits + cache.misses - self._cache_counts[1]
        return {"teacher_cache_hit_rate": hits / looked_up if looked_up else 0.0}

    # ------------------------------------------------------------------ epochs
    def begin_epoch(self, epoch: int) -> None:
        """Train mode and fresh meters (the caller has set the data's epoch)."""
        if self.teacher_cache is not None:
            self._cache_counts = (self.teacher_cache.cache.hits, self.teacher_cache.cache.misses)
        self.train_module.train()
        self.parts.module.set_epoch(epoch)
        self.meter = EpochMeter(self.device, self.env, epoch, self.run.path)
        self.epoch_lr = self.optimizer.param_groups[0]["lr"]

    def batch_index(self, batch) -> torch.Tensor | None:
        """The training-set index of each sample of ``batch`` on the device, for a learner
        that reads it (``needs_index``: CRD's memory bank); None otherwise."""
        if not self.parts.module.needs_index:
            return None
        if len(batch) < 3:
            raise ConfigError(
                "the feature loss reads each training sample's index, but the data yields "
                "(image, label) only: build it with return_index (multikd.train.build.build_data "
                "does for this config)"
            )
        return batch[2].to(self.device, non_blocking=True)

    def train_step(
        self, step: int, x: torch.Tensor, y: torch.Tensor, teacher_out=None,
        index: torch.Tensor | None = None,
    ) -> dict | None:
        """One SGD step on a batch already on the device; ``teacher_out`` shares a teacher
        pass computed elsewhere, ``index`` holds the samples' training-set indices for a
        learner that ``needs_index``. Returns the running averages every ``log_interval``
        steps (the only host sync), else None."""
        rt = self.cfg.runtime
        kwargs = {} if teacher_out is None else {"teacher_out": teacher_out}
        if index is not None:
            kwargs["index"] = index
        with autocast(self.device, rt.amp):
            logits, losses, info = self.train_module(x, y, **kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self._after_step is not None:  # a learned strategy's own update (MMKD's meta step)
            self._after_step(self.optimizer, step, self.steps_per_epoch)
        self.scheduler.step()
        self.meter.add(step, logits, y, losses, info)
        if (step + 1) % self.cfg.output.log_interval == 0 and step + 1 < self.steps_per_epoch:
            return self.meter.check()
        return None

    def end_epoch(self, epoch: int, train_time: float) -> dict:
        """Evaluate, then checkpoint and write metrics.csv (rank 0); the epoch's row."""
        own = self.parts.module.end_epoch(epoch)  # e.g. a learned strategy's update and loss
        train = self.meter.finish(self.parts.teacher_names)
        train.update(own)
        t0 = time.perf_counter()
        evaluated = self._evaluate_all()
        row = {"epoch": epoch, "lr": self.epoch_lr}
        row.update((k, v) for k, v in train.items() if k.startswith("loss_"))
        row["train_acc"] = train["train_acc"]
        row.update(evaluated)
        row.update((k, v) for k, v in train.items() if k not in row)
        row.update(self._cache_hit_rate())
        if self.teacher_cache is not None:
            self.teacher_cache.flush()
        row["epoch_time_s"] = train_time + time.perf_counter() - t0
        row["images_per_s"] = len(self.splits.train) / train_time
        self.elapsed += row["epoch_time_s"]
        self.rows.append(row)
        if self.env.is_main:
            self.run.save_checkpoint(self._checkpoint(epoch))
            self.run.write_metrics(self.rows)
            self.epoch_loggers().log(row)
        self._log_epoch(row)
        return row

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

    def epoch_loggers(self):
        """TensorBoard / W&B of ``output.tensorboard`` / ``output.wandb_project`` (rank 0;
        made at the first epoch's end, so a run that fails to start opens no logger)."""
        if self._loggers is None:
            from multikd.train.loggers import EpochLoggers

            out = self.cfg.output
            self._loggers = EpochLoggers(self.run.path, out.tensorboard, out.wandb_project,
                                         self.cfg.to_dict())
        return self._loggers

    @torch.no_grad()
    def test_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred, label)`` of the current model on the whole test split, in its order (on
        the CPU; one pass, not sharded, so rank 0 alone can call it)."""
        from multikd import data

        rt, split = self.cfg.runtime, self.splits.test
        loader = data.build_loader(
            split, min(self.cfg.optim.batch_size, len(split)), train=False,
            seed=rt.seed, device=str(self.device), pipeline=self.cfg.data.pipeline,
        )
        model, was_training = self.parts.model, self.parts.model.training
        model.eval()
        preds, labels = [], []
        for x, y in loader:
            x, y = to_device(x, y, self.device, rt.channels_last)
            with autocast(self.device, rt.amp):
                preds.append(model(x).argmax(dim=1))
            labels.append(y)
        model.train(was_training)
        return torch.cat(preds).cpu(), torch.cat(labels).cpu()

    def _log_epoch(self, row: dict) -> None:
        val = f"  val {row['val_acc']:.2f}%" if "val_acc" in row else ""
        log.info(
            "%s epoch %d/%d  loss %.4f  train %s%s  test %.2f%%  (%.1f s, %.0f img/s)",
            self.run.path.name, row["epoch"], self.cfg.optim.epochs, row["loss_total"],
            accuracy_text(row["train_acc"]), val, row["test_acc"], row["epoch_time_s"],
            row["images_per_s"],
        )

    def finish(self) -> dict:
        """Write summary.json (rank 0) and return it."""
        summary = self.summary()
        if self.env.is_main:
            self.run.write_predictions(*self.test_predictions())
            self.run.write_summary(summary)
            self.epoch_loggers().close()
        ddp.barrier(self.env)
        return summary

    def summary(self) -> dict:
        cfg, rows = self.cfg, self.rows
        distill = cfg.kind == "distill"
        best = max(rows, key=lambda r: r["test_acc"])
        summary = {
            "status": "finished",
            "kind": cfg.kind,
            "student_arch": cfg.model.arch,
            "teacher_names": [t.name for t in cfg.teachers],
            "teacher_archs": [t.arch for t in cfg.teachers],
            "strategy": cfg.strategy.name if distill else None,
            "strategy_params": dict(cfg.strategy.params) if distill else {},
            "strategy_label": cfg.output.label if distill else None,
            "features_used": distill and cfg.loss.gamma > 0,
            "seed": cfg.runtime.seed,
            "dataset": cfg.data.dataset,
            "labeled_fraction": cfg.data.labeled_fraction,
            "epochs": cfg.optim.epochs,
            "last_test_acc": rows[-1]["test_acc"],
            "best_test_acc": best["test_acc"],
            "best_epoch": best["epoch"],
            "val_selected_test_acc": None,
            "val_selected_epoch": None,
            "wall_time_s": self.elapsed,
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
        if distill:
            summary["teacher_test_acc"] = self.teacher_acc
        if cfg.plugins:
            summary["plugins"] = [{"path": p.path, "sha256": p.sha256} for p in cfg.plugins]
        return summary
