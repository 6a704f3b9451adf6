"""The teacher cache over a bench plan: which lockstep groups it can serve, the teacher
passes they run, and what one cache shared by each teacher set saves
(:func:`multikd.train.cache_worth.saved_passes` on :func:`plan_units`).

``python -m multikd.bench.cache_worth [SUITE.yaml ...]`` prints the hit rates (closed form
beside the real view hash) and, per suite, the passes under lockstep and without it.
"""

from __future__ import annotations

from multikd.train.cache_worth import (
    PassUnit, cached_share, expected_hit_rate, measured_hit_rate, saved_passes, seen_per_epoch,
)


def plan_units(plan) -> list[PassUnit]:
    """The teacher-pass units of a bench plan (:func:`multikd.bench.runner.make_plan`) as
    lockstep trains it: each (teacher set, seed) group split by tapped teacher layers
    (:func:`multikd.train.lockstep.split_by_taps`), one unit per part that distils."""
    from multikd.train.lockstep import split_by_taps

    units = []
    for group in plan.groups:
        for part in split_by_taps([run.config for run in group.runs]):
            distill = [c for c in part if c.kind == "distill"]
            if distill:
                units.append(_unit(distill, len(part)))
    return units


def run_units(plan) -> list[PassUnit]:
    """The teacher-pass units of a bench plan trained without lockstep: every distilling
    run its own."""
    return [_unit([run.config], 1) for group in plan.groups for run in group.runs
            if run.config.kind == "distill"]


def cacheable(configs) -> bool:
    """Whether one teacher cache could serve these runs' shared teacher pass: every one
    distils logits only, with no self-teacher (what ``resolve`` allows with a cache)."""
    return all(c.kind != "distill" or (c.loss.gamma <= 0 and not any(
        t.self_from_epoch is not None for t in c.teachers)) for c in configs)


def _unit(configs, runs: int) -> PassUnit:
    cfg = configs[0]
    d, rt = cfg.data, cfg.runtime
    n, classes = _train_images(cfg)
    key = (tuple((t.arch, t.checkpoint, tuple(t.classes or ())) for t in cfg.teachers),
           d.dataset, tuple(d.classes or ()), d.val_size, str(sorted((d.synthetic or {}).items())),
           d.unlabeled_dir, rt.amp, rt.channels_last, rt.device)
    return PassUnit(
        key=key, seed=rt.seed, epochs=max(c.optim.epochs for c in configs),
        seen=seen_per_epoch(n, cfg.optim.batch_size, d.drop_last),
        cacheable=cacheable(configs), runs=runs, num_samples=n,
        num_teachers=len(cfg.teachers), num_classes=classes,
        budget=rt.teacher_cache_budget or None, dtype=rt.teacher_cache_dtype,
    )


def _train_images(cfg) -> tuple[int, int]:
    """``(training images, classes)`` of a run's data without loading it (CIFAR: 50 000
    images, 500 or 5 000 per class; synthetic: its options; extra unlabelled images of
    ``data.unlabeled_dir`` not counted)."""
    from multikd.data.synthetic import SYNTHETIC_DEFAULTS

    d = cfg.data
    if d.dataset == "synthetic":
        options = {**SYNTHETIC_DEFAULTS, **(d.synthetic or {})}
        total, classes = options["train_size"], options["num_classes"]
    else:
        classes = 10 if d.dataset == "cifar10" else 100
        total = 50_000
    if d.classes:
        total = total * len(d.classes) // classes
        classes = len(d.classes)
    return max(1, total - d.val_size), classes


# --------------------------------------------------------------------------- report
def report(suites=(), epochs: int = 240, seeds: int = 3, samples: int = 50_000) -> str:
    """The hit rates (closed form beside the real view hash over ``samples`` images and
    ``epochs`` epochs of 1 and ``seeds`` seeds) and, per suite file, the teacher passes a
    shared cache saves (lockstep, the default, and every run alone)."""
    import tempfile
    from pathlib import Path

    from multikd.bench.suite import expand, load_suite

    share = cached_share(samples, 3, 100, "float16", 4 * 2**30)
    lines = [
        f"| draws per image | closed form | real view hash ({samples} images) | "
        f"x {share:.3f} (4 GiB, fp16, 3 teachers, CIFAR-100) |", "|---|---|---|---|"]
    for s in (1, seeds):
        closed = expected_hit_rate(epochs, seeds=s)
        measured = measured_hit_rate(samples, epochs, seeds=range(s))
        lines.append(f"| {s} seed(s) x {epochs} epochs | {closed:.4f} | {measured:.4f} | "
                     f"{closed * share:.4f} |")
    if suites:
        lines += ["", "| suite | student runs | lockstep: passes / cacheable / saved | "
                  "alone: passes / cacheable / saved |", "|---|---|---|---|"]
    for path in suites:
        with tempfile.TemporaryDirectory() as out:
            plan = expand(load_suite(path), out)
            lock, alone = saved_passes(plan_units(plan)), saved_passes(run_units(plan))
        cells = [f"{w.passes:.0f} / {w.cacheable:.0f} / {w.saved:.0f} "
                 f"({100 * w.saved_share:.1f}%)" for w in (lock, alone)]
        lines.append(f"| {Path(path).stem} | {len(plan.runs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m multikd.bench.cache_worth [SUITE.yaml ...]
    import sys

    print(report(sys.argv[1:]))
