"""`multikd bench` (a suite: teachers, every strategy, seeds; locally, in shards or as
cluster jobs) and `multikd reproduce` (one paper's suite beside its published numbers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from multikd.cli.common import add_data_root, add_plugin, check_writable
from multikd.errors import MultikdError


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark suite (teachers, every strategy, seeds), then table + plots",
        description="Run a suite's matrix of runs under --out: trains the teachers it lacks, "
        "verifies their test accuracy, trains every student (in lockstep by default), skips "
        "finished runs and resumes unfinished ones, then writes the table and plots.",
    )
    p.add_argument("suite", nargs="?", help="suite file (e.g. experiments/cifar100/gu2023.yaml)")
    p.add_argument("--preset", help="a suite packaged with multikd instead of a file (smoke)")
    p.add_argument("--out", required=True, help="output folder (the same folder continues a sweep)")
    add_data_root(p)
    p.add_argument(
        "--teachers-dir",
        help="folder of published teacher checkpoints (files named by the suite's 'published')",
    )
    p.add_argument(
        "--lockstep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the runs of one teacher set and seed together on one batch stream with "
        "one shared teacher pass (default; same results as separate runs)",
    )
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="config override for every run, e.g. --set optim.epochs=2 (repeatable)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="local worker processes: N teachers, then N lockstep groups, train side by side "
        "(default 1; same numbers as one after the other; each uses the suite's cpu_threads)",
    )
    p.add_argument(
        "--shard", metavar="I/N",
        help="run only shard I of N (1 <= I <= N) of the plan: a deterministic, balanced part; "
        "N commands with one --out together run every run once (SLURM arrays: --array=1-N, "
        "--shard $SLURM_ARRAY_TASK_ID/N); the last shard to finish writes the tables",
    )
    p.add_argument(
        "--max-runs-per-job", type=int, metavar="N",
        help="cut each lockstep group (teacher set, seed) into slices of at most N runs, each "
        "its own unit of work (--shard, --jobs, --executor)",
    )
    p.add_argument("--status", action="store_true",
                   help="print each run's state under --out (done, running, failed, partial at "
                   "epoch e, not started) from the run folders alone, and exit")
    add_plugin(p)
    _add_executor_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="list the planned runs (with --executor slurm: the job plan) and exit")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_bench)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "cluster jobs", "--executor slurm submits each unit (teacher, lockstep group or slice) "
        "as a SLURM job through submitit (pip install 'multikd[cluster]'): teachers first, "
        "students after them, a last job writes the tables; preempted or timed-out jobs are "
        "requeued and resume from their checkpoints")
    g.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local: this process and --jobs workers (default); slurm: cluster jobs; "
                   "submitit-local: the same jobs as local subprocesses (to try the job path)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--gpus-per-job", type=int, default=1, metavar="G", help="default 1")
    g.add_argument("--cpus-per-job", type=int, default=8, metavar="C", help="default 8")
    g.add_argument("--mem-gb", type=int, default=32, metavar="GB", help="default 32")
    g.add_argument("--time-min", type=int, default=24 * 60, metavar="MIN",
                   help="time limit per job in minutes (default 1440); a job that reaches it "
                   "is requeued and resumes")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra #SBATCH --KEY=VALUE line, e.g. --sbatch qos=high (repeatable)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before each job, e.g. --setup 'module load cuda' "
                   "(repeatable)")


def _cmd_bench(args) -> int:
    from multikd.bench import runner, shards, status, suite

    if (args.suite is None) == (args.preset is None):
        raise MultikdError("give either a suite file or --preset NAME (e.g. --preset smoke)")
    path = suite.preset_path(args.preset) if args.preset else args.suite
    shard = shards.parse_shard(args.shard) if args.shard else None
    if args.executor != "local" and (shard or args.jobs != 1):
        raise MultikdError(f"--executor {args.executor} makes its own jobs; drop --shard/--jobs")
    if not (args.status or args.dry_run):
        check_writable("--out", Path(args.out))
    if args.status:
        plan = runner.make_plan(path, args.out, args.data_root, args.teachers_dir, args.sets)
        print(status.format_status(status.plan_status(plan)))
        return 0
    if args.executor != "local":
        from multikd.bench import cluster

        # each job changes into this directory first: paths are written as in a local run
        plan = runner.make_plan(path, args.out, args.data_root, args.teachers_dir, args.sets)
        options = cluster.ClusterOptions.from_args(args)
        jobs = cluster.job_plan(plan, args.lockstep, args.max_runs_per_job)
        if args.dry_run:
            print(cluster.describe_jobs(jobs, options))
            return 0
        print(cluster.submit(plan, jobs, options))
        return 0
    if args.dry_run:
        plan = runner.make_plan(path, args.out, args.data_root, args.teachers_dir, args.sets)
        print(suite.describe(plan))
        units = shards.student_units(plan, args.lockstep, args.max_runs_per_job)
        if shard:
            units = shards.take_shard(units, *shard, lambda u: u.name, lambda u: u.cost)
            print(f"shard {shard[0]}/{shard[1]}: {len(units)} unit(s)")
        for run in (r for u in units for r in u.runs):
            print(run.config.output.run_dir)
        return 0
    report = runner.run_bench(
        path, args.out, data_root=args.data_root, teachers_dir=args.teachers_dir,
        lockstep=args.lockstep, sets=args.sets, jobs=args.jobs, shard=shard,
        max_runs_per_job=args.max_runs_per_job,
    )
    print(report.text())
    return 0


def add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="one paper's suite: download what is missing, run it, table it beside the "
        "published numbers",
        description="Runs a suite that carries published targets (multikd/bench/reproduce.py): "
        "with --download first fetches the dataset and the published teachers it lacks, then "
        "runs it as `multikd bench` does and writes OUT/published.md, the best-epoch table "
        "with the published column. --dry-run prints the plan, the downloads and a "
        "device-hours estimate from a short throughput probe, and changes nothing.",
    )
    p.add_argument("name", help="a suite with targets (e.g. mtkd-rl, single-teacher) or a "
                   "suite file that has a 'targets:' section")
    add_data_root(p)
    p.add_argument("--out", required=True, help="output folder (the same folder continues)")
    p.add_argument("--teachers-dir", help="published teacher checkpoints (default "
                   "OUT/published-teachers)")
    p.add_argument("--download", action="store_true",
                   help="download the dataset and published teachers that are missing")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, the downloads and the estimate; change nothing")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="local worker processes")
    p.add_argument("--probe-steps", type=int, default=3, metavar="N",
                   help="--dry-run: timed training steps per (student, teachers) pair")
    p.add_argument("--device", default="auto", help="--dry-run probe device: auto, cpu, cuda")
    p.add_argument("--data-url", help="download the dataset from this mirror instead")
    p.add_argument("--data-md5", help="with --data-url: the mirror archive's md5")
    p.add_argument("--teachers-url", help="download the teachers from this mirror instead")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args) -> int:
    from multikd.atomic import atomic_write_text
    from multikd.bench import reproduce, runner, suite
    from multikd.results import tables

    path = reproduce.suite_path(args.name)
    spec = suite.load_suite(path)
    out = Path(args.out)
    teachers_dir = Path(args.teachers_dir) if args.teachers_dir else out / reproduce.TEACHERS_FOLDER
    need = reproduce.missing(spec, args.data_root, teachers_dir)
    has_published = bool(reproduce.published_teachers(spec))
    if args.dry_run:
        usable = teachers_dir if has_published and not need.teachers else None
        plan = runner.make_plan(spec, out, args.data_root, usable, args.sets)
        print(f"reproduce {path}")
        print(suite.describe(plan))
        print(reproduce.describe_downloads(need, args.data_root, teachers_dir))
        if need.teachers:
            print("  (the teachers with a published file will be downloaded, not trained)")
        if args.probe_steps < 1:
            raise MultikdError(f"--probe-steps must be >= 1, got {args.probe_steps}")
        print(reproduce.estimate(plan, args.probe_steps, args.device).text())
        return 0
    if need and not args.download:
        raise MultikdError(f"{reproduce.describe_downloads(need, args.data_root, teachers_dir)}"
                           "\nthese are missing: add --download, or put them in place")
    check_writable("--out", out)
    reproduce.download(spec, need, args.data_root, teachers_dir, data_url=args.data_url,
                       data_md5=args.data_md5, teachers_url=args.teachers_url,
                       progress=not args.quiet)
    report = runner.run_bench(path, out, data_root=args.data_root,
                              teachers_dir=teachers_dir if has_published else None,
                              sets=args.sets, jobs=args.jobs)
    print(report.text())
    table = tables.load_table(out, metric="best")
    text = tables.format_table(table, "md")
    atomic_write_text(out / reproduce.TABLE_FILE, text)
    print(text, end="")
    print(f"wrote {out / reproduce.TABLE_FILE}")
    return 0
