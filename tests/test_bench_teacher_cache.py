"""``multikd bench`` with a teacher cache: one directory for the suite, given to the lockstep
parts it can serve (logits only, no self-teacher), the others left live."""

from __future__ import annotations

import pytest

from multikd.bench.runner import make_plan
from multikd.bench.suite import expand, parse_suite
from multikd.errors import ConfigError
from multikd.train.config import config_hash


def _suite(variants=("logits",), teachers=None, sets=None, recipe_runtime=None) -> dict:
    teachers = teachers or {"t0": {"arch": "resnet8", "seed": 0},
                            "t1": {"arch": "resnet8", "seed": 1}}
    recipe = {"optim": {"epochs": 3, "batch_size": 16}}
    if recipe_runtime:
        recipe["runtime"] = recipe_runtime
    return {
        "name": "mini",
        "data": {"dataset": "synthetic", "synthetic": {"num_classes": 4, "train_size": 64}},
        "recipe": recipe,
        "features": {"gamma": 5.0},
        "teachers": teachers,
        "teacher_sets": sets or {"pair": ["t0", "t1"]},
        "pairs": [{"teachers": name, "students": ["resnet8"]} for name in (sets or {"pair": 0})],
        "strategies": ["uniform", "ca-mkd"],
        "variants": list(variants),
        "seeds": [0, 1],
    }


def _cached(plan) -> dict[str, str]:
    return {run.config.output.run_dir.split("runs/")[1]: run.config.runtime.teacher_cache
            for run in plan.runs}


def test_a_mixed_suite_takes_the_cache_where_it_serves(tmp_path):
    raw = _suite(variants=("logits", "logits+feat"))
    with pytest.raises(ConfigError, match="teacher_cache"):  # what --set did before
        expand(parse_suite(raw), tmp_path, sets=[f"runtime.teacher_cache={tmp_path / 'c'}"])
    plan = make_plan(parse_suite(raw), tmp_path, sets=[f"runtime.teacher_cache={tmp_path / 'c'}"])
    # every (set, seed) group has feature runs, whose teacher pass the logits runs share
    assert set(_cached(plan).values()) == {""}
    assert plan.sets == [f"runtime.teacher_cache={tmp_path / 'c'}"]  # recorded as given


def test_a_logits_suite_shares_one_cache_as_a_set_gave_it(tmp_path):
    cache = str(tmp_path / "cache")
    raw = _suite()
    plan = make_plan(parse_suite(raw), tmp_path, sets=[f"runtime.teacher_cache={cache}"])
    assert set(_cached(plan).values()) == {cache}  # both seeds, the student alone too
    # the same configs (hashes) as expanding with the override, as before
    before = expand(parse_suite(raw), tmp_path, sets=[f"runtime.teacher_cache={cache}"])
    assert [config_hash(r.config) for r in plan.runs] == [config_hash(r.config)
                                                         for r in before.runs]
    assert all(j.config.runtime.teacher_cache == cache for j in plan.teachers.values())
    assert [config_hash(j.config) for j in plan.teachers.values()] == [
        config_hash(j.config) for j in before.teachers.values()]
    # from the suite's recipe alike
    recipe = make_plan(parse_suite(_suite(recipe_runtime={"teacher_cache": cache})), tmp_path)
    assert set(_cached(recipe).values()) == {cache}
    # and none without one
    assert set(_cached(make_plan(parse_suite(raw), tmp_path)).values()) == {""}


def test_a_self_teacher_runs_live(tmp_path):
    cache = str(tmp_path / "cache")
    raw = _suite(teachers={"me": {"arch": "self", "from_epoch": 2},
                           "t0": {"arch": "resnet8", "seed": 0}},
                 sets={"self_only": ["me"], "plain": ["t0"]})
    plan = make_plan(parse_suite(raw), tmp_path, sets=[f"runtime.teacher_cache={cache}"])
    cached = _cached(plan)
    assert {k: v for k, v in cached.items() if k.startswith("plain/")} and all(
        v == cache for k, v in cached.items() if k.startswith("plain/"))
    distilling = [k for k in cached if k.startswith("self_only/") and "student" not in k]
    assert distilling and all(cached[k] == "" for k in distilling)
