"""What the teacher-logit cache is worth: its hit rate, exactly, and the passes it saves a suite.

The cache (:mod:`multikd.train.cache`) is keyed by ``(sample index, view)``; a training
sample's view is ``hash(seed, epoch, index) mod V`` (:func:`multikd.data.views_of`, ``V =
NUM_VIEWS = 162``: 9 x 9 crop offsets x flip), so as far as the cache can tell each epoch
draws each image's view uniformly and independently of every other draw. A cell misses once,
the first time it is looked up, and hits every later time (tables are shared by every run
that opens the same directory with the same teachers and images: epochs, strategies, seeds).

Closed form. An image drawn in each of ``n`` epochs (each with probability ``p``: 1, or
``floor(N / B) B / N`` with ``data.drop_last``, whose dropped tail is a random part of the
epoch's shuffle) shows ``E[distinct] = V (1 - (1 - p / V)^n)`` distinct views (the
probability that a given view never comes up is ``(1 - p/V)^n``, by linearity over the V
views). Runs of one seed draw the same views (the view does not depend on the strategy), so
``R`` runs of each of ``S`` seeds look the image up ``R S n p`` times and miss
``V (1 - (1 - p/V)^{S n})`` times:

    hit rate = 1 - V (1 - (1 - p/V)^{S n}) / (R S n p)

per cached image (``cached`` = the share of images inside the budget's prefix; the others
always miss). For one 240-epoch run (R = S = 1, p = 1): ``1 - 162 (1 - (161/162)^240) / 240
= 0.4777``; three seeds sharing it: ``1 - 162 (1 - (161/162)^720) / 720 = 0.7776`` (issue 37
said "about 48%" and "about 78%": right; under the default 4 GiB budget, which holds 87.9%
of CIFAR-100's images for three teachers in float16, 42.0% and 68.4%). That is the suite's
rate, over all its lookups; the first seed's own run still sees 47.8%, the later seeds more
(cells their predecessors filled). Processes that share a directory concurrently see each
other's cells from the other's next flush (each epoch's end), so seeds trained side by side
hit slightly less.

:func:`measured_hit_rate` counts the same on the real view hash (every ``views_of`` draw of
a schedule), :func:`enumerated_hit_rate` enumerates every outcome exactly (small cases, for
the tests), :func:`saved_passes` counts the teacher passes that a cache shared by each
teacher set saves over units of passes (a bench plan's: :mod:`multikd.bench.cache_worth`,
whose ``python -m multikd.bench.cache_worth [SUITE.yaml ...]`` prints all of it).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from multikd.data.views import NUM_VIEWS, views_of


# --------------------------------------------------------------------------- hit rates
def expected_distinct(draws: int, views: int = NUM_VIEWS, seen: float = 1.0) -> float:
    """Expected distinct views of one image over ``draws`` epochs in which it is drawn
    with probability ``seen`` each: ``V (1 - (1 - seen/V)^draws)``."""
    _check(draws, views, seen)
    return views * -math.expm1(draws * math.log1p(-seen / views))


def expected_hit_rate(epochs: int, seeds: int = 1, runs_per_seed: int = 1,
                      views: int = NUM_VIEWS, seen: float = 1.0, cached: float = 1.0) -> float:
    """Expected share of the cache's lookups that hit, for ``runs_per_seed`` runs of each
    of ``seeds`` seeds, ``epochs`` epochs each, sharing one cache (module doc):
    ``cached * (1 - E[distinct over seeds x epochs] / (runs x seeds x epochs x seen))``."""
    if seeds < 1 or runs_per_seed < 1 or not 0.0 <= cached <= 1.0:
        raise ValueError(f"need seeds, runs_per_seed >= 1 and 0 <= cached <= 1; got {seeds}, "
                         f"{runs_per_seed}, {cached}")
    lookups = runs_per_seed * seeds * epochs * seen
    return cached * (1.0 - expected_distinct(seeds * epochs, views, seen) / lookups)


def enumerated_hit_rate(epochs: int, seeds: int = 1, runs_per_seed: int = 1, views: int = 3,
                        seen: Fraction | int = 1) -> Fraction:
    """The same rate as :func:`expected_hit_rate`, exactly (a Fraction), by enumerating
    every outcome of the ``seeds x epochs`` draws of one image (absent with probability
    ``1 - seen``, else each view with ``seen / V``): ``E[hits] / E[lookups]``. Only for
    small cases: ``(V + 1)^(seeds x epochs)`` outcomes."""
    seen = Fraction(seen)
    outcomes = [(None, 1 - seen)] + [(v, seen / views) for v in range(views)]
    hits = lookups = Fraction(0)
    for draw in itertools.product(outcomes, repeat=seeds * epochs):
        weight = math.prod((w for _, w in draw), start=Fraction(1))
        if weight == 0:
            continue
        shown = [v for v, _ in draw if v is not None]
        n = runs_per_seed * len(shown)
        lookups += weight * n
        hits += weight * (n - len(set(shown)))
    return hits / lookups


def measured_hit_rate(num_samples: int, epochs: int, seeds=(0,), runs_per_seed: int = 1,
                      first_epoch: int = 1) -> float:
    """The hit rate counted on the real schedule: every sample ``0..num_samples-1`` drawn
    in every epoch of every seed, its view from :func:`multikd.data.views_of`; hits =
    lookups - distinct ``(index, view)`` cells. Exact for that schedule (no model)."""
    seeds = list(seeds)
    filled = np.zeros((num_samples, NUM_VIEWS), dtype=bool)
    index = np.arange(num_samples)
    for seed in seeds:
        for epoch in range(first_epoch, first_epoch + epochs):
            filled[index, views_of(seed, epoch, index)] = True
    lookups = runs_per_seed * len(seeds) * epochs * num_samples
    return 1.0 - int(filled.sum()) / lookups


def seen_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> float:
    """Share of the training images drawn in an epoch (all but the dropped tail)."""
    if not drop_last or num_samples == 0:
        return 1.0
    return (num_samples // batch_size) * batch_size / num_samples


def cached_share(num_samples: int, num_teachers: int, num_classes: int,
                 dtype: str = "float16", budget: int | None = None) -> float:
    """Share of the images whose cells fit ``budget`` bytes (the prefix of
    :meth:`multikd.train.cache.TeacherLogitCache.rows_within`; None or 0: all)."""
    from multikd.train.cache_files import HEADER_BYTES

    if not budget:
        return 1.0
    itemsize = {"float16": 2, "float32": 4}[dtype]
    row = num_teachers * NUM_VIEWS * (num_classes * itemsize + 1)
    rows = max(0, min(num_samples, (int(budget) - num_teachers * HEADER_BYTES) // row))
    return rows / num_samples if num_samples else 0.0


def _check(draws: int, views: int, seen: float) -> None:
    if draws < 1 or views < 1 or not 0.0 < seen <= 1.0:
        raise ValueError(f"need draws >= 1, views >= 1 and 0 < seen <= 1; got {draws}, "
                         f"{views}, {seen}")


# --------------------------------------------------------------------------- a suite
@dataclass
class PassUnit:
    """One stream of teacher passes: a lockstep group of one seed (one pass per batch) or a
    run trained alone. ``cacheable``: every distilling member reads logits only (no
    feature loss, no self-teacher), so a teacher cache could serve it."""

    key: tuple
    seed: int
    epochs: int
    seen: float
    cacheable: bool
    runs: int
    num_samples: int
    num_teachers: int
    num_classes: int
    budget: int | None
    dtype: str


@dataclass
class SuiteWorth:
    """Teacher passes of a suite, counted per training image (one pass = every teacher of
    the set on one image view): ``passes`` without a cache, ``cacheable`` of them in units
    a cache can serve, ``saved`` the expected number a cache shared by each teacher set
    (its directory given to every cacheable unit) saves; per teacher set in ``sets``."""

    passes: float = 0.0
    cacheable: float = 0.0
    saved: float = 0.0
    sets: list[dict] = field(default_factory=list)

    @property
    def saved_share(self) -> float:
        return self.saved / self.passes if self.passes else 0.0

    def text(self) -> str:
        return (f"{self.passes:.0f} teacher passes per training image, {self.cacheable:.0f} "
                f"cacheable (logits-only units); a shared cache saves {self.saved:.0f} "
                f"({100 * self.saved_share:.1f}% of all, "
                f"{100 * self.saved / self.cacheable if self.cacheable else 0:.1f}% of the "
                "cacheable)")


def saved_passes(units: list[PassUnit], views: int = NUM_VIEWS) -> SuiteWorth:
    """Expected passes saved when each teacher set's cacheable units share one cache: per
    set, lookups ``sum(epochs x seen)`` over its units, misses per cached image the distinct
    views over its seeds (runs of a seed draw alike; the longest covers), the uncached
    images (past the budget) always missing."""
    worth = SuiteWorth()
    by_key: dict[tuple, list[PassUnit]] = {}
    for u in units:
        worth.passes += u.epochs * u.seen
        if u.cacheable:
            by_key.setdefault(u.key, []).append(u)
    for key, group in by_key.items():
        lookups = sum(u.epochs * u.seen for u in group)
        per_seed: dict[int, PassUnit] = {}
        for u in group:
            if u.seed not in per_seed or u.epochs > per_seed[u.seed].epochs:
                per_seed[u.seed] = u
        never = math.prod((1 - u.seen / views) ** u.epochs for u in per_seed.values())
        distinct = views * (1 - never)
        u = group[0]
        share = cached_share(u.num_samples, u.num_teachers, u.num_classes, u.dtype, u.budget)
        saved = share * (lookups - distinct)
        worth.cacheable += lookups
        worth.saved += saved
        worth.sets.append({"teachers": key[0], "units": len(group), "seeds": len(per_seed),
                           "lookups": lookups, "distinct": distinct, "cached_share": share,
                           "hit_rate": saved / lookups if lookups else 0.0})
    return worth
