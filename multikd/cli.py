"""The `multikd` command line.

Each command group is one `_add_<group>` function that declares its arguments and points
`func` at a handler. Handlers import the library lazily so `multikd --help` stays fast.
Errors derived from :class:`multikd.errors.MultikdError` are printed as one clear message
and exit with status 2; no traceback is shown for bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from multikd import __version__
from multikd.errors import ConfigError, MultikdError

log = logging.getLogger("multikd")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        _load_plugins(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (`multikd models list | head`) shows up here
        return code
    except BrokenPipeError:
        # end quietly, as the Python docs advise (signal module, "Note on SIGPIPE"): nothing
        # more reaches stdout, and the status is that of a process ended by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MultikdError as err:
        print(f"multikd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("multikd: interrupted", file=sys.stderr)
        return 130


def _load_plugins(args) -> None:
    """Import the files of ``MULTIKD_PLUGINS`` and ``--plugin`` (their registered names join
    the registries before the command reads any)."""
    from multikd.plugins import env_paths, load_plugins

    paths = env_paths() + list(getattr(args, "plugins", None) or [])
    if paths:
        load_plugins(paths)


def _add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin", dest="plugins", action="append", default=[], metavar="FILE.py",
        help="a Python file whose @register_strategy/@register_logit_loss/... classes and "
        "functions join the registries (repeatable; also $MULTIKD_PLUGINS, paths separated "
        "by ':'); each run records its path and SHA-256",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multikd",
        description="Multi-teacher knowledge distillation on CIFAR-style data.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"multikd {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMAND_GROUPS:
        add(sub)
    return parser


_MAIN_EPILOG = """\
the usual order:
  1. multikd train-teacher ...   train each teacher (or use published checkpoints)
  2. multikd distill ...         distill a student from them with a strategy
  3. multikd table RUNS_DIR      one table of every run (--vs student: paired differences)
  or all three at once for a whole suite of teachers, strategies and seeds:
     multikd bench --preset smoke --out runs/smoke --jobs 2   (tables, plots, report.html)

'multikd COMMAND --help' shows each command's options and examples."""

_TEACHER_SOURCES = """\
where teachers come from (each flag is repeatable, and they can be mixed):
  a train-teacher run folder (its checkpoint.pt, architecture and name are read from it):
      multikd train-teacher --arch resnet32x4 --epochs 240 --out runs/t_res32x4
      multikd distill --teachers-from runs/t_res32x4 --student resnet8x4
  a published RepDistiller/mdistiller CIFAR-100 checkpoint (check it fits the zoo first;
  `multikd teachers download --out teachers` fetches all six, each checked):
      multikd models check --arch resnet32x4 --checkpoint ckpt_epoch_240.pth
      multikd distill --teacher resnet32x4=ckpt_epoch_240.pth --student resnet8x4
  any timm architecture (never downloaded: its weights come from your own checkpoint):
      multikd distill --teacher timm:resnet18=runs/t_timm_resnet18/checkpoint.pt ..."""

_TRAIN_TEACHER_EPILOG = """\
examples:
  multikd train-teacher --arch resnet20 --epochs 30 --out runs/t_res20      (synthetic data)
  multikd train-teacher --arch resnet32x4 --dataset cifar100 --data-root data --out runs/t
  multikd train-teacher --arch resnet8 --kind student --out runs/alone   (student baseline)
  multikd train-teacher --arch timm:resnet18 --out runs/t_timm_resnet18

the run folder (config.yaml, metrics.csv, checkpoint.pt, summary.json) is then a teacher:
  multikd distill --teachers-from runs/t_res20 --student resnet8"""


def _help_of(parser: argparse.ArgumentParser):
    """A handler that shows ``parser``'s help (a command group given without its action)."""
    def show_help(args) -> int:
        parser.print_help()
        return 2

    return show_help


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding cifar-100-python/ or cifar-10-batches-py/ "
        "(default: $MULTIKD_DATA, else ./data)",
    )


def _add_synthetic(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--synthetic", dest="synthetic", action="append", default=[],
        metavar="SIZE|KEY=VALUE",
        help="size of the synthetic dataset: tiny (10 classes, 2000 train / 500 test images: "
        "a first try in a minute on a CPU), small (20 classes, 10000/2000) or cifar (100 "
        "classes, 50000/10000, the default), or one of its options, e.g. num_classes=20 "
        "(repeatable, applied in order)",
    )


def _synthetic_options(texts: list[str]) -> dict:
    """The options of ``--synthetic SIZE|KEY=VALUE ...`` (applied in order) as one mapping."""
    from multikd.data.synthetic import SYNTHETIC_DEFAULTS, SYNTHETIC_SIZES
    from multikd.train.config import parse_value

    options: dict = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep and key in SYNTHETIC_SIZES:
            options.update(SYNTHETIC_SIZES[key])
        elif sep and key in SYNTHETIC_DEFAULTS:
            options[key] = parse_value(value.strip())
        else:
            raise ConfigError(
                f"--synthetic {text!r}: give a size ({', '.join(SYNTHETIC_SIZES)}) or "
                f"KEY=VALUE with KEY one of {', '.join(SYNTHETIC_DEFAULTS)}"
            )
    return options


# --------------------------------------------------------------------------- data
def _add_data(sub) -> None:
    data = sub.add_parser("data", help="inspect, verify and synthesize datasets")
    data.set_defaults(func=_help_of(data))
    dsub = data.add_subparsers(title="data commands", metavar="ACTION")

    p = dsub.add_parser("info", help="split sizes, class count, per-channel mean/std")
    p.add_argument("--dataset", default="synthetic",
                   help="synthetic (default), cifar100 or cifar10")
    _add_data_root(p)
    p.add_argument("--val-size", type=int, default=0, help="validation images carved from train")
    _add_synthetic(p)
    p.set_defaults(func=_cmd_data_info)

    p = dsub.add_parser("verify", help="compare the files with the official md5 checksums")
    p.add_argument("--dataset", default="cifar100", help="cifar100 or cifar10")
    _add_data_root(p)
    p.set_defaults(func=_cmd_data_verify)

    p = dsub.add_parser(
        "synth-cifar", help="write synthetic images in the exact CIFAR pickle file format"
    )
    p.add_argument("--out", required=True, help="folder to write into (the data root)")
    p.add_argument("--dataset", default="cifar100", help="cifar100 or cifar10")
    p.add_argument("--train", type=int, default=5000, help="training images")
    p.add_argument("--test", type=int, default=1000, help="test images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_data_synth)

    p = dsub.add_parser(
        "download", help="download the official tarball (md5-checked, resumable), then verify",
        description="The only command that downloads a dataset. An interrupted download "
        "resumes when the same command is run again; nothing is extracted before the md5 "
        "matches, and the folder appears whole or not at all.",
    )
    p.add_argument("--dataset", default="cifar100", help="cifar100 (default) or cifar10")
    _add_data_root(p)
    p.add_argument("--url", help="download from this mirror (or file:///path) instead")
    p.add_argument("--md5", help="with --url: the mirror's file checksum, if it is not the "
                   "official archive (the extracted files are still verified)")
    p.add_argument("--force", action="store_true",
                   help="replace a folder that is there but not the official files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=_cmd_data_download)


def _cmd_data_info(args) -> int:
    from multikd import data

    synthetic = _synthetic_options(args.synthetic)
    print(data.describe(args.dataset, data_root=args.data_root, val_size=args.val_size,
                        synthetic=synthetic or None))
    return 0


def _cmd_data_verify(args) -> int:
    from multikd import data

    report = data.verify_checksums(args.dataset, data_root=args.data_root)
    print(report.text())
    return 0 if report.all_match else 1


def _cmd_data_download(args) -> int:
    from multikd.data.download import download_cifar

    download_cifar(args.dataset, data_root=args.data_root, url=args.url, md5=args.md5,
                   force=args.force, progress=not args.quiet)
    return _cmd_data_verify(args)


def _cmd_data_synth(args) -> int:
    from multikd import data

    folder = data.write_fake_cifar(
        args.out, dataset=args.dataset, train=args.train, test=args.test, seed=args.seed
    )
    print(f"wrote {args.dataset} files to {folder}")
    return 0


# --------------------------------------------------------------------------- teachers
def _add_teachers(sub) -> None:
    teachers = sub.add_parser("teachers", help="download the published CIFAR-100 teachers")
    teachers.set_defaults(func=_help_of(teachers))
    tsub = teachers.add_subparsers(title="teachers commands", metavar="ACTION")
    p = tsub.add_parser(
        "download", help="mdistiller's cifar_teachers.tar, checked against the zoo",
        description="Downloads the release archive (resumable), loads every checkpoint into "
        "its zoo architecture, puts OUT/<arch>_vanilla/ckpt_epoch_240.pth into place (the "
        "layout of mdistiller, RepDistiller and `multikd bench --teachers-dir OUT`), records "
        "the archive's sha256 in OUT/teachers-manifest.json, and, when CIFAR-100 is under "
        "the data root, compares each teacher's test accuracy with the published one.",
    )
    p.add_argument("--source", default="mdistiller", choices=["mdistiller"])
    p.add_argument("--out", default="teachers", help="teachers folder (default ./teachers)")
    p.add_argument("--url", help="download from this mirror (or file:///path) instead")
    p.add_argument("--force", action="store_true", help="replace teachers already in --out")
    _add_data_root(p)
    p.add_argument("--no-eval", action="store_true", help="do not measure test accuracy")
    p.add_argument("--device", default="auto", help="for the accuracy: auto, cpu, cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=_cmd_teachers_download)


def _cmd_teachers_download(args) -> int:
    from multikd.bench.published import check_teachers, download_teachers

    out = download_teachers(args.out, source=args.source, url=args.url, force=args.force,
                            progress=not args.quiet)
    report = check_teachers(out, source=args.source, data_root=args.data_root,
                            evaluate=not args.no_eval, device=args.device)
    print(report.text())
    return 0 if report.all_ok else 1


# --------------------------------------------------------------------------- models
def _add_models(sub) -> None:
    models = sub.add_parser(
        "models", help="list the model zoo, check checkpoints against it",
        description="Without an action: the zoo, as 'multikd models list'.",
    )
    models.set_defaults(func=_cmd_models_list, num_classes=100)
    msub = models.add_subparsers(title="models commands", metavar="ACTION")

    p = msub.add_parser("list", help="zoo architectures: parameter counts, stage features")
    p.add_argument("--num-classes", type=int, default=100, help="classifier outputs")
    p.set_defaults(func=_cmd_models_list)

    p = msub.add_parser(
        "check", help="load a checkpoint into an architecture and report whether it fits"
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="FILE", help="checkpoint file or run directory"
    )
    p.add_argument("--arch", required=True, help="zoo architecture or timm:<name>")
    p.add_argument(
        "--num-classes", type=int, default=None,
        help="classifier outputs (default: what the file records, else 100)",
    )
    p.set_defaults(func=_cmd_models_check)


def _cmd_models_list(args) -> int:
    from multikd.models import list_models
    from multikd.models.meta import describe_architecture

    from multikd.models.cost import human, model_cost

    rows = [describe_architecture(name, args.num_classes) for name in list_models()]
    width = max(len("name"), *(len(row["name"]) for row in rows))
    print(f"{'name':<{width}} {'params':>11}  {'MACs':>6}  {'pooled':>6}  "
          "stage features (C x H x W on 32x32)")
    for row in rows:
        stages = ", ".join("x".join(map(str, s)) for s in row["stage_feature_shapes"])
        pooled = row["pooled_feature_dim"]
        macs = human(model_cost(row["name"], args.num_classes).macs)
        print(f"{row['name']:<{width}} {row['params']:>11,}  {macs:>6}  {pooled:>6}  {stages}")
    print("MACs: multiply-accumulates per 32x32 image (convolutions and linear layers).")
    print("timm:<name> builds any timm architecture (no pretrained weights are downloaded).")
    return 0


_LIST_SECTIONS = ("strategies", "logit-losses", "feature-losses", "adapters")


def _add_list(sub) -> None:
    p = sub.add_parser(
        "list", help="the registered strategies, logit losses, feature losses and adapters",
        description="Each registry of the method, one entry a name, its one-line description "
        "and its parameters with their defaults. Without a section: all four.",
    )
    p.add_argument("section", nargs="?", choices=_LIST_SECTIONS, help="show one registry only")
    _add_plugin(p)
    p.set_defaults(func=_cmd_list)


def _cmd_list(args) -> int:
    from multikd.method.adapters import ADAPTER_REGISTRY
    from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY
    from multikd.method.logit_losses import LOGIT_LOSS_REGISTRY
    from multikd.method.registry import describe
    from multikd.method.strategies import STRATEGIES

    registries = {
        "strategies": (STRATEGIES, "strategies (--strategy NAME --strategy-param KEY=VALUE)"),
        "logit-losses": (LOGIT_LOSS_REGISTRY, "logit losses (loss.logit_loss, loss.logit_params; "
                         "loss.logit_standardize: true z-scores the logits first)"),
        "feature-losses": (FEATURE_LOSS_REGISTRY,
                           "feature losses (loss.feature_loss, loss.feature_params)"),
        "adapters": (ADAPTER_REGISTRY,
                     "adapters (loss.adapter; conv1x1's relu: loss.adapter_relu)"),
    }
    sections = [args.section] if args.section else list(_LIST_SECTIONS)
    print("\n\n".join("\n".join(describe(*registries[name])) for name in sections))
    return 0


def _cmd_models_check(args) -> int:
    from multikd.models import create_model
    from multikd.models.checkpoint import load_checkpoint, read_checkpoint

    ckpt = read_checkpoint(args.checkpoint)
    num_classes = args.num_classes or ckpt.num_classes or 100
    model = create_model(args.arch, num_classes=num_classes)
    meta = load_checkpoint(model, ckpt)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"ok: {ckpt.source} fits {model.arch_name} ({num_classes} classes): "
        f"{len(ckpt.state)} tensors, {params:,} parameters"
    )
    recorded = {k: v for k, v in meta.items() if _is_recorded_scalar(v)}
    if recorded:
        print("recorded: " + ", ".join(f"{k} {_recorded_text(v)}" for k, v in recorded.items()))
    return 0


def _is_recorded_scalar(value) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _recorded_text(value) -> str:
    import torch

    value = value.item() if isinstance(value, torch.Tensor) else value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
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
    _add_data_root(p)
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
    _add_plugin(p)
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
        _check_writable("--out", Path(args.out))
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


def _add_reproduce(sub) -> None:
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
    _add_data_root(p)
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
    _check_writable("--out", out)
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


# --------------------------------------------------------------------------- train / distill / eval
_RESUME_KEEPS = {"runtime.device", "output.quiet"}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train-teacher and distill: sugar over config keys (see config.py)."""
    p.add_argument(
        "--config", metavar="FILE", help="YAML config file (keys not given keep defaults)"
    )
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.schedule=cosine (repeatable)",
    )
    p.add_argument("--dataset", help="synthetic (default), cifar100 or cifar10")
    _add_synthetic(p)
    _add_data_root(p)
    p.add_argument("--val-size", type=int, help="validation images carved from train")
    p.add_argument(
        "--classes", metavar="LIST",
        help="train and test on these classes only, relabelled 0..m-1 (a partial teacher), "
        "e.g. 0-49 or 0-9,20-29; recorded in the run's config.yaml as data.classes",
    )
    p.add_argument("--epochs", type=int, help="training epochs (default 240)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 64)")
    p.add_argument(
        "--lr", type=float, help="learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleNet)"
    )
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--out", "--run-dir", dest="out", metavar="DIR", help="run directory")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="channels_last memory format (faster convolutions with --amp on GPUs)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the models (compiles once at start)")
    p.add_argument(
        "--quiet", action="store_true", default=None, help="no progress bar, warnings only"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved config.yaml and exit"
    )
    _add_plugin(p)


_RUN_FLAGS = {
    "dataset": "data.dataset",
    "data_root": "data.data_root",
    "val_size": "data.val_size",
    "classes": "data.classes",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "seed": "runtime.seed",
    "out": "output.run_dir",
    "device": "runtime.device",
    "amp": "runtime.amp",
    "channels_last": "runtime.channels_last",
    "compile": "runtime.compile",
    "quiet": "output.quiet",
    "arch": "model.arch",
    "kind": "kind",
    "strategy": "strategy.name",
    "alpha": "loss.alpha",
    "beta": "loss.beta",
    "gamma": "loss.gamma",
    "temperature": "loss.temperature",
}


def _add_train_teacher(sub) -> None:
    p = sub.add_parser(
        "train-teacher",
        help="train one model from scratch with cross-entropy (a teacher, or the student alone)",
        description="Train one model from scratch with cross-entropy on the labels. Its run "
        "folder becomes a teacher of `multikd distill --teachers-from RUN_DIR`, or, with "
        "--kind student, the student-alone baseline of the tables.",
        epilog=_TRAIN_TEACHER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", "--student", dest="arch", help="zoo architecture or timm:<name>")
    p.add_argument(
        "--kind", choices=("teacher", "student"),
        help="record the run as a teacher (default) or as the student-alone baseline",
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_train, command_kind="teacher")


def _add_distill(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distill a student from a pool of frozen teachers",
        description="Train a student from a pool of frozen teachers: a strategy scores and "
        "weights the teachers on every batch, and the student learns from the labels, the "
        "teachers' softened logits and (with --gamma > 0) their feature maps. It needs at "
        "least one teacher.",
        epilog=_TEACHER_SOURCES + """

examples:
  multikd distill --teachers-from runs/t1 runs/t2 --student resnet8 --strategy ca-mkd
  multikd distill --teachers-from runs/t1 --student resnet8 --strategy uniform --gamma 0
  multikd distill ... --show-config        (the resolved config, nothing trained)""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--student", "--arch", dest="arch", help="student architecture")
    p.add_argument(
        "--teacher", dest="teacher_specs", action="append", default=[], metavar="ARCH[=CKPT]",
        help="a teacher and its checkpoint (repeatable)",
    )
    p.add_argument(
        "--teachers-from", nargs="+", default=[], metavar="RUN_DIR",
        help="teachers from finished train-teacher runs (their checkpoint.pt)",
    )
    p.add_argument("--strategy", help="teacher selection/weighting strategy (default ce-filter)")
    p.add_argument(
        "--strategy-param", dest="strategy_params", action="append", default=[],
        metavar="KEY=VALUE", help="a strategy parameter (repeatable)",
    )
    p.add_argument("--alpha", type=float, help="weight of the hard-label CE")
    p.add_argument("--beta", type=float, help="weight of the logit distillation loss")
    p.add_argument("--gamma", type=float, help="weight of the feature loss (0: logits only)")
    p.add_argument("--temperature", type=float, help="KD temperature T (default 4)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_train, command_kind="distill")


def _run_config(args):
    """The RunConfig that the flags of train-teacher/distill describe, resolved.

    Every part of the command line is checked before anything runs: the config file, each
    flag and ``--set``, the strategy and its parameters, every model name, the teachers'
    checkpoints and the output folder. All problems are reported in one message.
    """
    from multikd.errors import Problems
    from multikd.plugins import loaded
    from multikd.train.config import (
        NO_TEACHER, PluginConfig, RunConfig, load_config, parse_assignment, parse_teacher,
        parse_value, resolve, set_value,
    )
    from multikd.train.runio import teachers_from_runs

    problems = Problems()
    config = RunConfig()
    teacher_failed = False  # a --teacher/--teachers-from that could not be read
    if args.config:
        with problems.check():
            config = load_config(args.config)
    values = {key: getattr(args, flag) for flag, key in _RUN_FLAGS.items()
              if getattr(args, flag, None) is not None}
    if "data.classes" in values:
        from multikd.train.config import parse_classes

        text = values.pop("data.classes")
        with problems.check():
            values["data.classes"] = parse_classes(text)
    if args.command_kind == "distill":
        values["kind"] = "distill"
        teachers, before = [], len(problems.errors)
        for text in args.teacher_specs:
            with problems.check():
                teachers.append(parse_teacher(text))
        for run_dir in args.teachers_from:
            with problems.check():
                teachers += teachers_from_runs([run_dir])
        if teachers:
            values["teachers"] = teachers
        teacher_failed = len(problems.errors) > before
    for key, value in values.items():
        with problems.check():
            set_value(config, key, value)
    if args.synthetic:
        with problems.check():
            config.data.synthetic = {**config.data.synthetic, **_synthetic_options(args.synthetic)}
    for text in args.sets:
        with problems.check():
            key, value = parse_assignment(text)
            set_value(config, key, value, from_text=True)
    if args.synthetic and config.data.dataset != "synthetic":
        problems.add(f"--synthetic sizes the synthetic dataset, but the dataset is "
                     f"{config.data.dataset}: drop --synthetic or use --dataset synthetic")
    for text in getattr(args, "strategy_params", []):
        with problems.check():
            key, value = parse_assignment(text)
            config.strategy.params[key] = parse_value(value)
    for teacher in [] if args.show_config else config.teachers:
        if teacher.checkpoint and not Path(teacher.checkpoint).exists():
            problems.add(
                f"teacher {teacher.name or teacher.arch}: checkpoint {teacher.checkpoint!r} does "
                "not exist (give a .pt/.pth file or a train-teacher run folder)"
            )
    config.plugins = [PluginConfig(**record) for record in loaded()]
    resolved = None
    with problems.check():
        try:
            resolved = resolve(config)
        except ConfigError as err:
            # no teacher because a teacher flag failed: that flag's error says it once
            if not (teacher_failed and NO_TEACHER in err.problems):
                raise
            for text in err.problems:
                if text != NO_TEACHER:
                    problems.add(text)
    run_dir = config.output.run_dir or (resolved and resolved.output.run_dir)
    if run_dir and not args.show_config:
        with problems.check():
            _check_output(Path(run_dir), args.overwrite)
    problems.raise_if_any()
    return resolved


def _check_output(run_dir: Path, overwrite: bool) -> None:
    """A usable --out: a folder (or a path that can become one) that this process can write
    in, not holding another run."""
    from multikd.train.runio import RunDir

    _check_writable("--out", run_dir)
    if run_dir.is_dir():
        RunDir(run_dir).prepare_new(overwrite)


def _check_writable(flag: str, folder: Path) -> None:
    """``folder`` is a folder, or a path that can become one, that this process can write
    in: its nearest existing part is a folder that takes a new file (not read-only, not
    someone else's), tried with a temporary file that leaves no trace."""
    import tempfile

    for part in (folder, *folder.parents):
        if part.exists():
            break
    if not part.is_dir():
        raise ConfigError(f"{flag} {folder}: {part} is a file, not a folder; give a folder path")
    try:
        with tempfile.TemporaryFile(dir=part):
            pass
    except OSError as err:
        raise ConfigError(
            f"{flag} {folder}: cannot write in {part} ({(err.strerror or str(err)).lower()}); "
            "give a folder you can write to"
        ) from None


def _cmd_train(args) -> int:
    from multikd.train import engine
    from multikd.train.config import to_yaml

    if args.resume:
        given = {key for flag, key in _RUN_FLAGS.items() if getattr(args, flag, None) is not None}
        lists = {"--config": args.config, "--set": args.sets, "--synthetic": args.synthetic,
                 "--teacher": getattr(args, "teacher_specs", None),
                 "--teachers-from": getattr(args, "teachers_from", None),
                 "--strategy-param": getattr(args, "strategy_params", None),
                 "--plugin": args.plugins}
        extra = sorted(given - _RESUME_KEEPS) + [flag for flag, value in lists.items() if value]
        if extra or args.overwrite:
            raise ConfigError(
                f"--resume continues {args.resume} with its own config.yaml; only --device and "
                f"--quiet may be given with it (got {', '.join(extra or ['--overwrite'])})"
            )
        _check_writable("--resume", Path(args.resume))
        summary = engine.resume(args.resume, device=args.device, quiet=args.quiet)
    else:
        config = _run_config(args)
        if args.show_config:
            print(to_yaml(config), end="")
            return 0
        summary = engine.train(config, overwrite=args.overwrite)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from multikd.train.distributed import detect

    if not detect().is_main:
        return
    val = summary.get("val_selected_test_acc")
    val_text = f", val-selected {val:.2f}%" if val is not None else ""
    print(
        f"{summary['kind']} {summary['student_arch']}: test acc {summary['last_test_acc']:.2f}% "
        f"(best {summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}{val_text}) "
        f"in {summary['wall_time_s']:.0f} s -> {summary['run_dir']}"
    )


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test accuracy of a saved model")
    p.add_argument("--run", metavar="RUN_DIR", help="evaluate a run's checkpoint on its own data")
    p.add_argument("--arch", help="architecture of the checkpoint")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint (weights under key 'model')")
    p.add_argument("--dataset", default=None,
                   help="synthetic (default; with --run: the run's), cifar100 or cifar10")
    _add_data_root(p)
    p.add_argument("--val-size", type=int, default=None, help="also report this validation split")
    _add_synthetic(p)
    p.add_argument("--seed", type=int, default=None, help="seed of the train/val split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from multikd.train import engine
    from multikd.errors import ConfigError
    from multikd.train.runio import CHECKPOINT, RunDir

    synthetic = _synthetic_options(args.synthetic)
    if args.run:
        config = RunDir(args.run).read_config()
        arch = args.arch or config.model.arch
        checkpoint = args.checkpoint or str(RunDir(args.run).file(CHECKPOINT))
        dataset = args.dataset or config.data.dataset
        data_root = args.data_root or config.data.data_root
        synthetic = {**config.data.synthetic, **synthetic}
        val_size = config.data.val_size if args.val_size is None else args.val_size
        seed = config.runtime.seed if args.seed is None else args.seed
    else:
        if not (args.arch and args.checkpoint):
            raise ConfigError("eval needs --arch and --checkpoint (or --run RUN_DIR)")
        arch, checkpoint, data_root = args.arch, args.checkpoint, args.data_root
        dataset = args.dataset or "synthetic"
        val_size, seed = args.val_size or 0, args.seed or 0
    result = engine.evaluate_checkpoint(
        arch, checkpoint, dataset, data_root=data_root, val_size=val_size,
        synthetic=synthetic or None, seed=seed, batch_size=args.batch_size, device=args.device,
    )
    for split in ("val", "test"):
        if f"{split}_acc" in result:
            acc, loss = result[f"{split}_acc"], result[f"{split}_loss"]
            print(f"{split} accuracy: {acc:.2f}%  (mean CE {loss:.4f})")
    return 0


# --------------------------------------------------------------------------- table / plot
def _add_results(sub) -> None:
    p = sub.add_parser(
        "table",
        help="runs folder -> comparison table (mean ± std over seeds, best in bold)",
        description="One row per student and teacher set, one column per method (student "
        "alone, each strategy with logits only and with + features, each teacher); cells "
        "'mean ± sample std (n seeds)'. Unfinished runs are skipped with a warning. Several "
        "folders (the --out folders of several jobs of one sweep) make one table; runs of "
        "different configs under one label are refused.",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", nargs="+",
                   help="folder(s) searched recursively for runs")
    p.add_argument(
        "--metric", choices=["last", "best", "val"], default="last",
        help="last-epoch test accuracy (default), best-epoch (optimistic: selected on test), "
        "or test accuracy at the best validation epoch (runs with a validation split)",
    )
    p.add_argument("--format", dest="fmt", choices=["md", "csv", "tex"], default="md")
    p.add_argument(
        "--vs", metavar="LABEL",
        help="paired differences to one column instead of accuracies: 'student' (the student "
        "alone), 'uniform' or any method label; each cell is the mean difference with its "
        "interval (t over paired seeds, or bootstrap over test images for one seed), "
        "significant ones in bold",
    )
    p.add_argument("--confidence", type=float, default=0.95,
                   help="interval level for --vs (default 0.95)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="average copies of one run (same config and seed, e.g. a folder passed "
                   "twice or copied) instead of refusing them; --vs pairs each seed once anyway")
    p.add_argument("--cost", action="store_true",
                   help="also measure inference images/s of the student and each teacher on "
                   "--device at --cost-batch (parameters and MACs are always shown)")
    p.add_argument("--cost-batch", type=int, default=256, metavar="B",
                   help="batch size for --cost (default 256)")
    p.add_argument("--device", default="cpu", help="device for --cost (default cpu; e.g. cuda)")
    p.add_argument("--out", metavar="FILE", help="write the table here (default: print it)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser(
        "report",
        help="runs folder -> one self-contained HTML page (tables, plots, suite, teachers)",
        description="Writes RUNS_DIR/report.html: the last/best (and val) tables, the paired "
        "differences to the student alone, every plot embedded, the suite file, the "
        "teachers' verified accuracies and the versions; it opens offline anywhere.",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="a bench output folder or any runs folder")
    p.add_argument("--out", metavar="FILE", help="where to write it (default RUNS_DIR/report.html)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "plot",
        help="runs folder -> PNG plots: test accuracy per epoch, teacher weights per strategy",
        description="For each student and teacher set: <dataset>_<student>_<teachers>_acc.png "
        "(test accuracy per epoch, mean over seeds, one line per method) and ..._weights.png "
        "(each teacher's mean weight per epoch, one panel per strategy).",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder searched recursively for runs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the PNG files into")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=_cmd_plot)


def _cmd_table(args) -> int:
    from multikd.atomic import atomic_write_text
    from multikd.results import paired, tables

    if args.vs:
        table = paired.paired_table(tables.collect_runs(args.runs_dir), metric=args.metric,
                                    vs=args.vs, confidence=args.confidence)
        text = paired.format_paired(table, fmt=args.fmt)
    else:
        table = tables.load_table(args.runs_dir, metric=args.metric,
                                  allow_duplicates=args.allow_duplicates)
        if args.cost:
            from multikd.results.costs import add_throughput

            if args.cost_batch < 1:
                raise MultikdError(f"--cost-batch must be >= 1, got {args.cost_batch}")
            add_throughput(table.attrs["costs"], device=args.device, batch_size=args.cost_batch)
            table.attrs["speed"] = f"{args.device}, batch {args.cost_batch}, fp32, eval mode"
        text = tables.format_table(table, fmt=args.fmt)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_report(args) -> int:
    from multikd.results.report import write_report

    print(f"wrote {write_report(args.runs_dir, args.out)}")
    return 0


def _cmd_plot(args) -> int:
    from multikd.results import plots

    for path in plots.plot_runs(args.runs_dir, args.out):
        print(path)
    return 0


# In the order a user meets them: data, models and the method's parts, training, sweeps,
# results.
_COMMAND_GROUPS = [
    _add_data, _add_models, _add_list, _add_teachers, _add_train_teacher, _add_distill,
    _add_eval, _add_bench, _add_reproduce, _add_results,
]
