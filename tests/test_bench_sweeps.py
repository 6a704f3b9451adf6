"""Sweeps split over processes and jobs (#13): --shard covers the plan once, shards and
submitit jobs give the numbers and the table of one process, a killed sweep resumes to the
same metrics, --status reads each run's state from its folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from multikd import cli
from multikd.bench import cluster
from multikd.bench.runner import make_plan, run_bench
from multikd.bench.shards import parse_shard, student_units, take_shard, teacher_units
from multikd.bench.status import format_status, plan_status
from multikd.bench.suite import parse_suite, preset_path
from multikd.errors import ConfigError, MultikdError
from multikd.results.outputs import write_results
from multikd.train.config import RunConfig
from multikd.train.runlock import hold_runs

from tests.test_bench_lockstep import SUITE, _assert_same_runs

SMOKE = preset_path("smoke")


def _suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


@pytest.mark.parametrize("max_runs", [None, 3, 1])
def test_shards_cover_the_plan_exactly_once_and_balance_it(tmp_path, max_runs):
    plan = make_plan(SMOKE, tmp_path / "out")
    units = student_units(plan, max_runs_per_job=max_runs)
    names = [u.name for u in units]
    assert len(set(names)) == len(names)
    every_run = sorted(r.config.output.run_dir for u in units for r in u.runs)
    assert every_run == sorted(r.config.output.run_dir for r in plan.runs)
    for count in range(1, 6):
        parts = [take_shard(units, i, count, lambda u: u.name, lambda u: u.cost)
                 for i in range(1, count + 1)]
        assert sorted(u.name for part in parts for u in part) == sorted(names)
        loads = [sum(u.cost for u in part) for part in parts]
        assert max(loads) - min(loads) <= max(u.cost for u in units)
        # deterministic: a second split of a re-made plan is the same
        again = student_units(make_plan(SMOKE, tmp_path / "out"), max_runs_per_job=max_runs)
        assert [u.name for u in take_shard(again, 1, count, lambda u: u.name,
                                           lambda u: u.cost)] == [u.name for u in parts[0]]


def test_shard_spec_errors_say_how():
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "3", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


@pytest.mark.slow
def test_shards_in_turn_give_the_numbers_and_table_of_one_process(separate, tmp_path):
    suite = parse_suite(SUITE)
    first = run_bench(suite, tmp_path, shard=(1, 2))
    assert first.outputs == [] and "last one writes them" in first.text()
    second = run_bench(suite, tmp_path, shard=(2, 2))
    assert len(first.trained) + len(second.trained) == 2 + 10  # no run trained twice
    _assert_same_runs(tmp_path, separate)
    assert (tmp_path / "table_last.md").is_file()  # the last shard wrote the tables
    reference = tmp_path.parent / "reference_tables"
    write_results(separate, reference)
    for name in ("table_last.md", "table_best.md", "table_paired_last.md"):
        assert (tmp_path / name).read_text() == (reference / name).read_text(), name


@pytest.mark.slow
def test_concurrent_shards_share_teachers_through_the_locks(separate, tmp_path):
    """Two shards started at once: each trains its teacher and waits for the other's."""
    path = _suite_file(tmp_path)
    out = tmp_path / "out"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "multikd", "bench", str(path), "--out", str(out),
         "--shard", f"{i}/2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in (1, 2)]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    _assert_same_runs(out, separate)
    assert (out / "table_last.md").is_file()


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_metrics(separate, tmp_path):
    path = _suite_file(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "multikd", "bench", str(path), "--out",
                             str(out), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/duo/resnet8/*_s0/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended too early"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 2 of the first group, most likely
    proc.wait()
    text = format_status(plan_status(make_plan(path, out)))
    assert "running" not in text and "partial" in text and "not started" in text
    report = run_bench(parse_suite(SUITE), out)
    assert report.resumed and not report.busy
    _assert_same_runs(out, separate)
    assert format_status(plan_status(make_plan(path, out))) == "all 12 runs done"


def test_status_names_running_failed_partial_and_missing_runs(tmp_path):
    plan = make_plan(parse_suite(SUITE), tmp_path)
    teacher = Path(plan.teachers["t_a"].config.output.run_dir)
    failed = Path(plan.runs[0].config.output.run_dir)
    with pytest.raises(RuntimeError):
        with hold_runs([failed]):
            raise RuntimeError("CUDA out of memory")
    with hold_runs([teacher]):
        rows = {r.run_dir: r for r in plan_status(plan)}
        assert rows[str(teacher)].state == "running"
        assert f"pid {os.getpid()}" in rows[str(teacher)].detail
    assert rows[str(failed)].state == "failed"
    assert rows[str(failed)].detail == "RuntimeError: CUDA out of memory"
    text = format_status(list(rows.values()))
    assert "12 runs: 1 running, 1 failed, 10 not started" in text


def test_cli_status_and_sharded_dry_run(tmp_path, capsys):
    path = _suite_file(tmp_path)
    assert cli.main(["bench", str(path), "--out", str(tmp_path / "o"), "--status"]) == 0
    assert "12 runs: 12 not started" in capsys.readouterr().out
    listed = []
    for i in (1, 2, 3):
        assert cli.main(["bench", str(path), "--out", str(tmp_path / "o"), "--shard", f"{i}/3",
                         "--max-runs-per-job", "2", "--dry-run"]) == 0
        listed += [line for line in capsys.readouterr().out.splitlines() if "/runs/" in line]
    assert len(listed) == len(set(listed)) == 10
    assert cli.main(["bench", str(path), "--out", "o", "--shard", "4/3"]) == 2
    assert "I must lie in 1..N" in capsys.readouterr().err


def test_slurm_job_plan_has_stages_and_dependencies(tmp_path, capsys):
    path = _suite_file(tmp_path)
    args = ["bench", str(path), "--out", str(tmp_path / "o"), "--executor", "slurm",
            "--partition", "gpu", "--account", "lab", "--sbatch", "qos=high",
            "--max-runs-per-job", "3", "--dry-run"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "7 jobs: 2 teacher, 4 student, 1 tables" in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --qos=high" in out
    assert "students:duo/s1/part2of2  (2 runs)  after teacher:t_a, teacher:t_b" in out
    assert cli.main(args[:-1] + ["--sbatch", "nonsense"]) == 2
    assert "--sbatch takes KEY=VALUE" in capsys.readouterr().err


def test_slurm_submission_script_carries_the_options(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    with pytest.raises(MultikdError, match="login node"):
        cluster._executor(tmp_path / "jobs", cluster.ClusterOptions())
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    options = cluster.ClusterOptions(partition="gpu", account="lab", gpus_per_job=1,
                                     time_min=90, sbatch={"qos": "high"},
                                     setup=["module load cuda"])
    executor = cluster._executor(tmp_path / "jobs", options)
    executor.update_parameters(dependency="afterok:123:124", job_name="multikd-x")
    text = executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --qos=high", "module load cuda",
                 "#SBATCH --dependency=afterok:123:124", "#SBATCH --signal=USR2@"):
        assert line in text, line
    assert isinstance(executor, submitit.SlurmExecutor)


@pytest.mark.slow
def test_submitit_local_jobs_give_the_numbers_and_table_of_one_process(separate, tmp_path):
    pytest.importorskip("submitit")
    path = _suite_file(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["bench", str(path), "--out", str(out), "--executor", "submitit-local",
                     "--quiet"]) == 0
    _assert_same_runs(out, separate)
    reference = tmp_path / "reference_tables"
    write_results(separate, reference)
    assert (out / "table_last.md").read_text() == (reference / "table_last.md").read_text()
    assert list((out / "jobs").iterdir())  # submitit's job folders and logs
    assert cluster.job_plan(make_plan(path, out))[-1].depends == []  # nothing left to do


def test_a_preempted_job_is_requeued_with_the_same_call(tmp_path):
    pytest.importorskip("submitit")
    from multikd.bench.cluster_task import UnitTask

    plan = make_plan(parse_suite(SUITE), tmp_path)
    config = teacher_units(plan)[0].config
    task = UnitTask()
    again = task.checkpoint("teacher", plan, config)  # what submitit calls on USR2/preemption
    assert again.function is task and again.args == ("teacher", plan, config)


@pytest.mark.slow  # reads the twelve trained runs of `separate`
def test_table_of_several_out_folders_equals_the_one_folder_table(separate, tmp_path, capsys):
    import shutil

    parts = [tmp_path / "job1", tmp_path / "job2"]
    for run in sorted(separate.glob("runs/**/summary.json")):
        rel = run.parent.relative_to(separate)
        target = parts[int("_s1" in rel.name)] / rel
        shutil.copytree(run.parent, target)
    assert cli.main(["table", str(separate), "--quiet"]) == 0
    one = capsys.readouterr().out
    assert cli.main(["table", *map(str, parts), "--quiet"]) == 0
    assert capsys.readouterr().out == one and "(2)" in one
    # a run of another config (another lr) under the same label is refused, with the key
    config = parts[1] / "runs/duo/resnet8/uniform_s1/config.yaml"
    config.write_text(config.read_text().replace("lr: 0.05", "lr: 0.2"))
    assert cli.main(["table", *map(str, parts), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different experiments under one label 'uniform'" in err
    assert "optim.lr: 0.05 vs 0.2" in err


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes_to_the_same_metrics(tmp_path):
    """submitit's own preemption signal, sent to a running local job mid-training: the job
    is requeued, resumes from its last epoch checkpoint, and ends with the metrics of an
    uninterrupted run."""
    submitit = pytest.importorskip("submitit")
    from multikd.bench.cluster_task import UnitTask
    from multikd.train import engine
    from tests.test_bench_lockstep import _metrics

    # 96 training images (twice SUITE's): the 8 epochs must outlast the wait for the first
    # checkpoint and the signal
    data = {**SUITE["data"], "synthetic": {**SUITE["data"]["synthetic"], "train_size": 96}}
    suite = dict(SUITE, data=data, teachers={"t_a": {"arch": "resnet8", "seed": 1,
                                                     "recipe": {"optim": {"epochs": 8}}}},
                 teacher_sets={"duo": ["t_a"]})
    plan = make_plan(parse_suite(suite), tmp_path / "out")
    config = teacher_units(plan)[0].config
    executor = submitit.LocalExecutor(tmp_path / "jobs")
    job = executor.submit(UnitTask(), "teacher", plan, config)
    run = Path(config.output.run_dir)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").is_file():
        assert not job.done() and time.monotonic() < deadline
        time.sleep(0.02)
    # what SLURM sends at the time limit or a preemption (USR2), to the Python process that
    # runs the task (submitit's local job process may be a wrapper that does not forward it)
    pid = job._process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    targets = [int(c) for c in children.read_text().split()] if children.is_file() else []
    os.kill((targets or [pid])[0], signal.SIGUSR2)
    assert job.result().endswith(": unfinished")  # the requeued call found a partial run
    log = "".join(p.read_text() for p in (tmp_path / "jobs").glob("*log.out"))
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log, log[-2000:]
    reference = RunConfig.from_dict(config.to_dict())
    reference.output.run_dir = str(tmp_path / "uninterrupted")
    engine.train(reference)
    pd.testing.assert_frame_equal(_metrics(run), _metrics(tmp_path / "uninterrupted"),
                                  check_exact=False, rtol=0, atol=1e-6)


def test_local_jobs_get_the_time_limit_not_submitits_short_default(tmp_path):
    pytest.importorskip("submitit")
    options = cluster.ClusterOptions(executor="submitit-local", time_min=77)
    assert cluster._executor(tmp_path / "jobs", options).parameters["timeout_min"] == 77
