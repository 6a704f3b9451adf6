"""The teacher cache's worth (multikd.train.cache_worth, multikd.bench.cache_worth): the
closed-form hit rate equals an exact enumeration of every outcome, matches the real view
hash over a long schedule, and a suite's saved teacher passes follow from it."""

from __future__ import annotations

from fractions import Fraction

import pytest

from multikd.bench import cache_worth as plans
from multikd.bench.runner import make_plan
from multikd.bench.suite import parse_suite
from multikd.train import cache_worth as worth
from multikd.train.cache import TeacherLogitCache


@pytest.mark.parametrize("epochs, seeds, runs, views, seen", [
    (1, 1, 1, 3, 1), (4, 1, 1, 3, 1), (3, 2, 1, 2, 1), (2, 2, 3, 3, 1),
    (4, 1, 1, 2, Fraction(1, 2)), (2, 2, 2, 3, Fraction(3, 4)),
])
def test_closed_form_equals_exact_enumeration(epochs, seeds, runs, views, seen):
    exact = worth.enumerated_hit_rate(epochs, seeds, runs, views, seen)
    closed = worth.expected_hit_rate(epochs, seeds, runs, views=views, seen=float(seen))
    assert closed == pytest.approx(float(exact), abs=1e-12)


def test_issue_numbers():
    # issue 37: "about 48%" for one 240-epoch run, "about 78%" for three seeds sharing
    assert worth.expected_hit_rate(240) == pytest.approx(0.47773, abs=1e-5)
    assert worth.expected_hit_rate(240, seeds=3) == pytest.approx(0.77761, abs=1e-5)
    assert worth.expected_distinct(240) == pytest.approx(125.34, abs=0.01)
    # strategies of one seed draw the same views: a second run hits every lookup
    assert worth.expected_hit_rate(240, runs_per_seed=2) == pytest.approx(
        1 - worth.expected_distinct(240) / 480)


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_real_view_hash_matches_the_closed_form(seeds):
    measured = worth.measured_hit_rate(1000, 240, seeds=seeds)
    expected = worth.expected_hit_rate(240, seeds=len(seeds))
    assert measured == pytest.approx(expected, abs=0.003)  # ~0.0005 standard error


def test_cached_share_is_the_cache_budget_prefix(tmp_path):
    budget = 2 * 4096 + 37 * 2 * 162 * (10 * 2 + 1) + 5
    cache = TeacherLogitCache(tmp_path, ["a", "b"], 100, 162, 10, budget=budget)
    assert cache.rows == 37
    assert worth.cached_share(100, 2, 10, "float16", budget) == 0.37
    assert worth.cached_share(100, 2, 10, "float16", None) == 1.0
    # CIFAR-100, 3 teachers, the default 4 GiB: 88% of the images in float16, 44% in float32
    assert worth.cached_share(50000, 3, 100, "float16", 4 * 2**30) == pytest.approx(0.879, abs=1e-3)
    assert worth.cached_share(50000, 3, 100, "float32", 4 * 2**30) == pytest.approx(0.441, abs=1e-3)


def _suite(variants, seeds=(0, 1, 2)) -> dict:
    return {
        "name": "mini",
        "data": {"dataset": "synthetic", "synthetic": {"num_classes": 4, "train_size": 64}},
        "recipe": {"optim": {"epochs": 240, "batch_size": 16},
                   "runtime": {"teacher_cache_budget": 0}},
        "features": {"gamma": 5.0},
        "teachers": {"t0": {"arch": "resnet8", "seed": 0}, "t1": {"arch": "resnet8", "seed": 1}},
        "teacher_sets": {"pair": ["t0", "t1"]},
        "pairs": [{"teachers": "pair", "students": ["resnet8"]}],
        "strategies": ["uniform", "ca-mkd"],
        "variants": list(variants),
        "seeds": list(seeds),
    }


def test_suite_worth_of_a_logits_only_suite(tmp_path):
    plan = make_plan(parse_suite(_suite(["logits"])), tmp_path)
    lockstep = worth.saved_passes(plans.plan_units(plan))
    # one lockstep group (one teacher pass per batch) per seed, all logits only
    assert lockstep.passes == lockstep.cacheable == 3 * 240
    assert lockstep.saved == pytest.approx(720 * worth.expected_hit_rate(240, seeds=3))
    alone = worth.saved_passes(plans.run_units(plan))  # 2 strategies x 3 seeds, each alone
    assert alone.passes == 6 * 240
    assert alone.saved == pytest.approx(
        1440 * worth.expected_hit_rate(240, seeds=3, runs_per_seed=2))


def test_suite_worth_with_features_in_every_group(tmp_path):
    plan = make_plan(parse_suite(_suite(["logits", "logits+feat"])), tmp_path)
    lockstep = worth.saved_passes(plans.plan_units(plan))
    # the logits runs join the feature runs' teacher pass: nothing a logit cache can serve
    assert lockstep.passes == 3 * 240 and lockstep.cacheable == 0 and lockstep.saved == 0
    alone = worth.saved_passes(plans.run_units(plan))
    assert alone.passes == 12 * 240 and alone.cacheable == 6 * 240
