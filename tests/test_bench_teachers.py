"""Teacher verification before use, and run directories that no longer match the suite."""

from __future__ import annotations

import json
import re

import pytest
import torch

from multikd.bench.runner import check_same_experiment, run_bench, verify_teachers
from multikd.errors import ConfigError, TrainingError
from multikd.models import create_model
from multikd.train.runio import RunDir
from multikd.bench.suite import expand, parse_suite


def _suite(expected_acc=None) -> dict:
    published = {"arch": "resnet8", "published": "pub/resnet8.pth"}
    if expected_acc is not None:
        published["expected_acc"] = expected_acc
    return {
        "data": {
            "dataset": "synthetic",
            "synthetic": {
                "num_classes": 4, "num_superclasses": 2, "train_size": 32, "test_size": 40,
            },
        },
        "recipe": {"optim": {"epochs": 1, "batch_size": 16}, "runtime": {"device": "cpu"}},
        "teachers": {"pub": published},
        "teacher_sets": {"one": ["pub"]},
        "pairs": [{"teachers": "one", "students": ["resnet8"]}],
        "strategies": ["uniform"],
        "variants": ["logits"],
    }


@pytest.fixture()
def teachers_dir(tmp_path):
    """A 'published' checkpoint in the field's format ({'model': state_dict})."""
    torch.manual_seed(0)
    path = tmp_path / "published" / "pub" / "resnet8.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": create_model("resnet8", num_classes=4).state_dict()}, path)
    return tmp_path / "published"


def test_published_teacher_accuracy_is_measured_and_recorded(tmp_path, teachers_dir):
    plan = expand(parse_suite(_suite()), tmp_path / "out", teachers_dir=teachers_dir)
    (tmp_path / "out").mkdir()
    records = verify_teachers(plan)
    acc = records["pub"]["test_acc"]
    # 40 test images: the accuracy is a multiple of 2.5 points
    assert 0 <= acc <= 100 and (acc / 2.5) == pytest.approx(round(acc / 2.5))
    assert records["pub"]["source"] == "published"
    assert records["pub"]["checkpoint"] == str(teachers_dir / "pub" / "resnet8.pth")
    assert json.loads((tmp_path / "out" / "teachers.json").read_text()) == records

    # the same file checked against a claimed accuracy 10 points off: refused before use
    plan = expand(parse_suite(_suite(expected_acc=min(acc + 10, 100) if acc < 90 else acc - 10)),
                  tmp_path / "out", teachers_dir=teachers_dir)
    refused = r"teacher pub \(resnet8\) scores .*\(allowed gap 1.0 points\)"
    with pytest.raises(TrainingError, match=refused):
        verify_teachers(plan)
    # and nothing was trained
    assert not (tmp_path / "out" / "runs").exists()


def test_run_dir_of_another_experiment_is_refused(tmp_path):
    plan = expand(parse_suite(_suite()), tmp_path)
    run = plan.runs[0]
    changed = expand(parse_suite(_suite()), tmp_path, sets=["optim.lr=0.2"]).runs[0].config
    RunDir(run.config.output.run_dir).write_config(changed)
    with pytest.raises(ConfigError, match=r"holds a different run than the suite now asks for"):
        check_same_experiment(run.config)
    # where the data lives or which device runs it does not make another experiment
    moved = expand(parse_suite(_suite()), tmp_path, sets=["data.data_root=/elsewhere"]).runs[0]
    RunDir(run.config.output.run_dir).write_config(moved.config)
    check_same_experiment(run.config)
    # bench checks every run directory before it trains anything
    RunDir(run.config.output.run_dir).write_config(changed)
    with pytest.raises(ConfigError, match="different run"):
        run_bench(parse_suite(_suite()), tmp_path)
    assert not (tmp_path / "teachers" / "pub" / "checkpoint.pt").exists()


def _other_domain_suite(**synthetic) -> dict:
    suite = _suite()
    suite["teachers"] = {"other": {"arch": "resnet8", "synthetic": synthetic}}
    suite["teacher_sets"] = {"one": ["other"]}
    return suite


@pytest.mark.slow  # a training run
def test_a_teacher_from_another_synthetic_world_trains_there_and_is_scored_here(tmp_path):
    plan = expand(parse_suite(_other_domain_suite(seed=7)), tmp_path)
    job = plan.teachers["other"]
    own = job.config.data.synthetic
    assert own["seed"] == 7 and own["num_classes"] == 4 and own["test_size"] == 40
    assert plan.runs[0].config.data.synthetic.get("seed", 0) == 0  # students stay at home
    run_bench(parse_suite(_other_domain_suite(seed=7)), tmp_path, results=False)
    record = json.loads((tmp_path / "teachers.json").read_text())["other"]
    summary = json.loads((tmp_path / "teachers/other/summary.json").read_text())
    # verified on its own world against its run; recorded with what the students see
    assert record["own_domain_test_acc"] == pytest.approx(summary["last_test_acc"], abs=1e-9)
    assert record["own_domain"] == {"seed": 7}
    student = json.loads(next((tmp_path / "runs").glob("**/uniform_s0/summary.json")).read_text())
    assert record["test_acc"] == pytest.approx(student["teacher_test_acc"]["other"], abs=1e-9)


@pytest.mark.parametrize("synthetic, data, fragment", [
    ({"num_classes": 5}, None, "num_classes must equal the suite's"),
    ({"sed": 1}, None, "unknown option(s) ['sed']"),
    ({"seed": 1}, {"dataset": "cifar100"}, "need the suite's data.dataset to be synthetic"),
])
def test_bad_teacher_domains_are_clear_errors(synthetic, data, fragment):
    suite = _other_domain_suite(**synthetic)
    if data is not None:
        suite["data"] = data
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_suite(suite)
