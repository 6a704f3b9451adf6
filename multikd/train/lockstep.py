"""Lockstep training: several runs on one batch stream with one shared teacher pass.

The runs of one teacher set and one seed (the student alone and every strategy, logits only
or with features) see exactly the same batches: the data layer makes the order and the
augmented views pure functions of (seed, epoch, index), so one loader serves them all. Per
batch the frozen teachers run once; every distilling student receives that
``EnsembleOutput`` (``MultiTeacherDistiller.forward(x, y, teacher_out=...)``, with the
teachers' features whenever any member uses them), then takes its own optimizer step.

Lockstep is an optimization and a fairness guarantee, never a different experiment: each
member is set up by the engine exactly as a separate ``train-teacher``/``distill`` run
(same seeding, same construction order), writes its own run directory in the standard
layout, and owns its global RNG streams — they are swapped in around each of its steps and
checkpoints, so sharing never consumes a member's random numbers differently (the data
loaders draw from their own seeded generators, never from the global ones). On CPU every
member's metrics equal those of the separate run (only the time columns differ: in
lockstep ``epoch_time_s``/``images_per_s`` are those of the whole group). With
``runtime.teacher_cache`` (all members alike) and no member using features, the shared
teacher pass is served by one teacher cache, as in a separate run.

Resume policy: every member checkpoints after every epoch. Unfinished members resume from
their own last checkpoint; members that stopped after different epochs (a kill between two
members' checkpoint writes) are trained as separate lockstep groups, one per epoch they
resume from — the stream from epoch ``e`` on does not depend on what came before, so each
still equals its separate run. Finished members are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from tqdm import tqdm

from multikd.train.config import RunConfig, resolve
from multikd.errors import ConfigError
from multikd.method.feature_losses import loss_info
from multikd.train.rng import rng_state, set_rng_state
from multikd.train.runio import RunDir

log = logging.getLogger(__name__)

_STREAM_KEYS = ("data", "optim.batch_size", "optim.epochs", "runtime.seed", "runtime.device",
                "runtime.amp", "runtime.channels_last", "runtime.teacher_cache")


def _get(config: RunConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_compatible(configs: list[RunConfig]) -> None:
    """Members must share what defines the stream, and the same teachers."""
    first = configs[0]
    for cfg in configs[1:]:
        for key in _STREAM_KEYS:
            if _get(cfg, key) != _get(first, key):
                raise ConfigError(
                    f"runs {first.output.run_dir} and {cfg.output.run_dir} differ in {key} "
                    f"({_get(first, key)!r} vs {_get(cfg, key)!r}); runs trained in lockstep "
                    "must share the data stream (train them separately with --no-lockstep)"
                )
    distill = [c for c in configs if c.kind == "distill"]
    teachers = {tuple((t.arch, t.checkpoint, tuple(t.classes or ())) for t in c.teachers)
                for c in distill}
    feats = {teacher_taps(c) for c in distill if c.loss.gamma > 0}
    if len(teachers) > 1 or len(feats) > 1:
        raise ConfigError(
            "runs trained in lockstep share one teacher pass, so they need the same teachers "
            "and the same teacher feature layers; train them separately with --no-lockstep"
        )


def teacher_taps(cfg: RunConfig) -> tuple:
    """What decides which teacher layers a feature run taps (resolved config): its hint
    stage and what its feature loss reads (a feature module's own taps)."""
    loss = cfg.loss
    reads = loss_info(loss.feature_loss)["teacher_reads"]
    return (tuple(loss.teacher_features or ()), loss.feature_stage, loss.taps, reads)


def split_by_taps(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """Runs that can share one teacher pass: one list per set of tapped teacher layers
    (runs without features join the first), in the order of ``configs``; a run with a
    self-teacher is a group of its own."""
    groups: dict[tuple, list[RunConfig]] = {}
    plain, alone = [], []
    for cfg in configs:
        if any(t.self_from_epoch is not None for t in cfg.teachers):
            alone.append([cfg])  # its own teacher changes with it: nothing to share
        elif cfg.kind == "distill" and cfg.loss.gamma > 0:
            groups.setdefault(teacher_taps(cfg), []).append(cfg)
        else:
            plain.append(cfg)
    lists = list(groups.values()) or [[]]
    lists[0] = plain + lists[0]
    return [group for group in lists if group] + alone


class _Member:
    """One run of the group, with its own global RNG states."""

    def __init__(self, run):
        self.run = run
        self.rng = rng_state()

    @contextlib.contextmanager
    def own_rng(self):
        set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = rng_state()


def train_lockstep(configs: list[RunConfig]) -> list[str]:
    """Train (or resume) ``configs`` together; finished runs are skipped.

    Returns the run directories that were trained now.
    """
    from multikd.train import engine
    from multikd.train.distributed import detect

    configs = [resolve(c) for c in configs]
    pending = [c for c in configs if RunDir(c.output.run_dir).state() != "finished"]
    if not pending:
        return []
    subgroups = split_by_taps(pending)
    if len(subgroups) > 1:  # one teacher pass taps one set of layers
        log.info("lockstep: %d groups by tapped teacher layers", len(subgroups))
        return [run_dir for group in subgroups for run_dir in train_lockstep(group)]
    check_compatible(pending)
    if detect().enabled:
        raise ConfigError(
            "lockstep training runs in one process; under torchrun use --no-lockstep "
            "(each run then uses all processes)"
        )
    from multikd.train.runlock import hold_runs

    with hold_runs([c.output.run_dir for c in pending]):
        return _train_pending(pending)


def _train_pending(pending: list[RunConfig]) -> list[str]:
    from multikd.train import engine
    from multikd.train.build import build_data, needs_index

    members: list[_Member] = []
    teacher_acc = first_ensemble = None
    # One data split for the group, yielding each sample's index when a member's feature
    # loss reads it (CRD): the images and labels are the same either way, and a member
    # prepared first without it must not hand the others batches without indices.
    reader = next((c for c in pending if needs_index(c)), None)
    splits = None if reader is None else build_data(reader, reader.runtime.seed)
    for cfg in pending:
        resuming = RunDir(cfg.output.run_dir).state() == "unfinished"
        distills = cfg.kind == "distill"
        shared_acc = teacher_acc if distills else None
        run = engine.prepare_run(cfg, resuming=resuming, splits=splits, teacher_acc=shared_acc)
        splits = run.splits
        if distills and teacher_acc is None:
            teacher_acc = run.teacher_acc
        if distills:
            first_ensemble = first_ensemble or run.parts.ensemble
            _share_teacher_weights(run.parts.ensemble, first_ensemble)
        members.append(_Member(run))
    starts = sorted({m.run.start_epoch for m in members})
    if len(starts) > 1:
        log.info("members resume from different epochs %s: one lockstep group each", starts)
    for start in starts:
        _train_together([m for m in members if m.run.start_epoch == start], start)
    return [c.output.run_dir for c in pending]


def _share_teacher_weights(ensemble, source) -> None:
    """Point ``ensemble``'s frozen teacher tensors at ``source``'s (the same checkpoints, as
    ``check_compatible`` ensures), so a group of N students holds one copy of the teachers'
    weights instead of N (a 68-member CIFAR-100 group would otherwise hold ~5 GB of copies)."""
    if ensemble is source:
        return
    for mine, theirs in zip(ensemble.teachers, source.teachers):
        mine.load_state_dict(theirs.state_dict(), assign=True)
        mine.requires_grad_(False)


def _shared_ensemble(members: list[_Member]):
    """``(ensemble, features)``: the group's teachers, from a member that taps their
    features if any member uses them; ``(None, False)`` when no member distills."""
    distill = [m.run for m in members if m.run.parts.ensemble is not None]
    if not distill:
        return None, False
    with_features = [r for r in distill if r.cfg.loss.gamma > 0]
    return (with_features or distill)[0].parts.ensemble, bool(with_features)


def _shared_cache(members: list[_Member], features: bool):
    """``(run, CachedTeachers)`` serving the group's teacher pass from the teacher cache
    (``runtime.teacher_cache``, opened by the first distilling member and adopted by the
    others, so their hit rates agree); ``(None, None)`` without a cache or when a member
    needs the teachers' features."""
    distill = [m.run for m in members if m.run.parts.ensemble is not None]
    if features or not distill or not distill[0].cfg.runtime.teacher_cache:
        return None, None
    cached = distill[0].open_teacher_cache()
    for run in distill[1:]:
        run.open_teacher_cache(shared=cached)
    return distill[0], cached


def _train_together(members: list[_Member], start: int) -> None:
    from multikd.train.engine import autocast, to_device

    lead = members[0].run
    cfg, device = lead.cfg, lead.device
    loader, train_set = lead.train_loader, lead.splits.train
    ensemble, features = _shared_ensemble(members)
    cache_run, cached = _shared_cache(members, features)
    names = ", ".join(str(m.run.run.path) for m in members)
    log.info("lockstep: %d runs from epoch %d: %s", len(members), start, names)
    show_bar = not cfg.output.quiet and sys.stderr.isatty()
    for epoch in range(start, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        train_set.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        for m in members:
            with m.own_rng():
                m.run.begin_epoch(epoch)
                if m is members[0]:
                    batches = iter(loader)
        bar = tqdm(total=len(loader), desc=f"lockstep epoch {epoch}/{cfg.optim.epochs}",
                   disable=not show_bar, leave=False, dynamic_ncols=True)
        with bar:
            for step, batch in enumerate(batches):
                x, y = to_device(batch[0], batch[1], device, cfg.runtime.channels_last)
                teacher_out = None
                if cached is not None:
                    teacher_out = cache_run.cached_teacher_pass(x, y, batch)
                elif ensemble is not None:
                    with autocast(device, cfg.runtime.amp):
                        teacher_out = ensemble(x, y, features=features)
                for m in members:
                    shared = teacher_out if m.run.parts.ensemble is not None else None
                    with m.own_rng():
                        m.run.train_step(step, x, y, shared, m.run.batch_index(batch))
                bar.update(1)
        train_time = time.perf_counter() - t0
        for m in members:
            with m.own_rng():
                m.run.end_epoch(epoch, train_time)
        log.info("lockstep epoch %d/%d: %d runs in %.1f s", epoch, cfg.optim.epochs,
                 len(members), time.perf_counter() - t0)
    for m in members:
        m.run.finish()
