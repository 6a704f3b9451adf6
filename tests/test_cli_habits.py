"""Command-line habits (#33): small data on purpose (--synthetic SIZE, the dotted --set of a
mapping's key), one default dataset for every command, a command group without its action,
a reader that leaves the pipe early, and bench output folders that hold no absolute path
of the machine that made them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from multikd import cli
from multikd.bench import cluster
from multikd.results.tables import ResultsError
from multikd.bench.runner import make_plan, record_suite
from multikd.bench.suite import preset_path
from multikd.data.synthetic import SYNTHETIC_DEFAULTS, SYNTHETIC_SIZES
from multikd.models import create_model
from tests.run_helpers import tiny_suite


def _config(capsys, *flags: str) -> dict:
    assert cli.main(["train-teacher", *flags, "--show-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


# --------------------------------------------------------------------------- small data
def test_dotted_set_reaches_one_key_of_a_mapping(capsys):
    data = _config(capsys, "--set", "data.synthetic.train_size=2000",
                   "--set", "data.synthetic.noise=1e-1", "--set", "strategy.params.margin=0.5")
    assert data["data"]["synthetic"] == {"train_size": 2000, "noise": 0.1}
    assert data["strategy"]["params"] == {"margin": 0.5}
    # the mapping form still replaces the whole mapping; a dotted key after it adds to it
    data = _config(capsys, "--set", "data.synthetic={num_classes: 10, seed: 2}",
                   "--set", "data.synthetic.seed=5")
    assert data["data"]["synthetic"] == {"num_classes": 10, "seed": 5}


def test_a_bad_nested_key_lists_the_valid_ones(capsys):
    assert cli.main(["train-teacher", "--set", "data.synthetic.trainsize=5",
                     "--show-config"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean data.synthetic.train_size?" in err
    assert ", ".join(SYNTHETIC_DEFAULTS) in err
    assert "--set 'data.synthetic={num_classes: ..., num_superclasses: ...}'" in err
    assert cli.main(["train-teacher", "--set", "data.synthetic={trainsize: 5}",
                     "--show-config"]) == 2
    assert "unknown data.synthetic key(s) 'trainsize'" in capsys.readouterr().err


@pytest.mark.parametrize("size", list(SYNTHETIC_SIZES))
def test_synthetic_sizes_set_the_dataset_and_keys_after_them_refine_it(capsys, size):
    data = _config(capsys, "--synthetic", size, "--synthetic", "seed=3",
                   "--set", "data.synthetic.test_size=100")
    assert data["data"]["synthetic"] == {**SYNTHETIC_SIZES[size], "seed": 3, "test_size": 100}
    assert SYNTHETIC_SIZES["tiny"]["train_size"] <= 2000  # a first try takes a minute
    assert SYNTHETIC_SIZES["cifar"] == {k: SYNTHETIC_DEFAULTS[k] for k in SYNTHETIC_SIZES["cifar"]}


def test_synthetic_sizes_are_checked_with_the_rest_of_the_command_line(capsys):
    assert cli.main(["distill", "--synthetic", "tin", "--dataset", "cifar100",
                     "--show-config"]) == 2
    err = capsys.readouterr().err
    assert "--synthetic 'tin': give a size (tiny, small, cifar)" in err
    assert cli.main(["train-teacher", "--synthetic", "tiny", "--dataset", "cifar100",
                     "--show-config"]) == 2
    assert "use --dataset synthetic" in capsys.readouterr().err
    assert cli.main(["train-teacher", "--resume", "runs/x", "--synthetic", "tiny"]) == 2
    assert "--synthetic" in capsys.readouterr().err


@pytest.mark.slow  # makes and evaluates the 2,500 images of --synthetic tiny
def test_eval_and_data_info_default_to_the_synthetic_dataset_as_training_does(tmp_path, capsys):
    assert cli.main(["data", "info", "--synthetic", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synthetic") and "train 2000  test 500" in out
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, checkpoint)
    assert cli.main(["eval", "--arch", "resnet8", "--checkpoint", str(checkpoint),
                     "--synthetic", "tiny", "--device", "cpu"]) == 0
    assert re.search(r"test accuracy: \d+\.\d\d%", capsys.readouterr().out)


# --------------------------------------------------------------------------- habits
@pytest.mark.slow  # builds and measures every model of the zoo, seconds
def test_models_alone_lists_the_zoo(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("name") and "resnet32x4" in out and "the usual order" not in out


def test_data_alone_shows_its_own_help(capsys):
    assert cli.main(["data"]) == 2
    out = capsys.readouterr().out
    assert "usage: multikd data" in out and "synth-cifar" in out
    assert "the usual order" not in out


@pytest.mark.slow
def test_a_reader_that_leaves_early_ends_the_command_quietly():
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited: every write finds no reader
    try:
        child = subprocess.run([sys.executable, "-m", "multikd", "models", "list"],
                               stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert child.returncode == 141
    assert "Traceback" not in child.stderr and "BrokenPipe" not in child.stderr
    assert child.stderr == ""


# --------------------------------------------------------------------------- no absolute paths
def test_suite_yaml_of_a_preset_names_no_absolute_path(tmp_path):
    plan = make_plan(preset_path("smoke"), tmp_path / "out")
    record_suite(plan)
    header = (tmp_path / "out" / "suite.yaml").read_text().splitlines()[0]
    assert header == ("# multikd bench suite smoke (from multikd/presets/smoke.yaml "
                      "(--preset smoke))")


class _Handle:
    def __init__(self, job_id):
        self.job_id = job_id

    def result(self):
        return "done"


class _Executor:
    """submitit's executor as cluster.submit uses it: records each submitted call."""

    def __init__(self):
        self.calls = []

    def update_parameters(self, **kwargs):
        pass

    def submit(self, task, *args):
        self.calls.append((task, args))
        return _Handle(len(self.calls))


def test_submitit_jobs_get_the_paths_of_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    suite = tiny_suite("rel", 1, teachers={"t_a": {"arch": "resnet8"}},
                       teacher_sets={"one": ["t_a"]},
                       pairs=[{"teachers": "one", "students": ["resnet8"]}],
                       strategies=["uniform"])
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    monkeypatch.chdir(tmp_path)
    executor = _Executor()
    monkeypatch.setattr(cluster, "_executor", lambda folder, options: executor)
    assert cli.main(["bench", "suite.yaml", "--out", "out", "--executor", "submitit-local",
                     "--quiet"]) == 0
    stages = [args[0] for _, args in executor.calls]
    assert stages == ["teacher", "students", "tables"]
    for task, (stage, plan, payload) in executor.calls:
        assert task.workdir == str(tmp_path)  # each job starts where the bench was submitted
        assert plan.out == Path("out")
        for config in [job.config for job in plan.teachers.values()] + \
                [run.config for run in plan.runs]:
            assert not Path(config.output.run_dir).is_absolute()
    text = (tmp_path / "out" / "suite.yaml").read_text()
    assert text.startswith("# multikd bench suite rel (from suite.yaml)\n")
    assert str(tmp_path) not in text


def test_a_job_runs_in_the_directory_it_was_submitted_from(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from multikd.bench.cluster_task import UnitTask

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where a cluster job may start
    plan = make_plan(preset_path("smoke"), "out")
    (tmp_path / "out").mkdir()
    with pytest.raises(ResultsError, match="no finished runs under out"):  # but it was found
        UnitTask(str(tmp_path))("tables", plan, None)
    assert Path.cwd() == tmp_path
