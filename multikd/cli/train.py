"""`multikd train-teacher`, `multikd distill` and `multikd eval`: one run's flags, checked
all at once into a resolved config, then trained, resumed or evaluated."""

from __future__ import annotations

import argparse
from pathlib import Path

from multikd.cli.common import (
    add_data_root, add_plugin, add_synthetic, check_writable, synthetic_options,
)
from multikd.errors import ConfigError


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


_RESUME_KEEPS = {"runtime.device", "output.quiet"}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train-teacher and distill: sugar over config keys (see train/config/)."""
    p.add_argument(
        "--config", metavar="FILE", help="YAML config file (keys not given keep defaults)"
    )
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.schedule=cosine (repeatable)",
    )
    p.add_argument("--dataset", help="synthetic (default), cifar100 or cifar10")
    add_synthetic(p)
    add_data_root(p)
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
    add_plugin(p)


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


def add_train_teacher(sub) -> None:
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


def add_distill(sub) -> None:
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
            config.data.synthetic = {**config.data.synthetic, **synthetic_options(args.synthetic)}
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

    check_writable("--out", run_dir)
    if run_dir.is_dir():
        RunDir(run_dir).prepare_new(overwrite)


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
        check_writable("--resume", Path(args.resume))
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


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test accuracy of a saved model")
    p.add_argument("--run", metavar="RUN_DIR", help="evaluate a run's checkpoint on its own data")
    p.add_argument("--arch", help="architecture of the checkpoint")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint (weights under key 'model')")
    p.add_argument("--dataset", default=None,
                   help="synthetic (default; with --run: the run's), cifar100 or cifar10")
    add_data_root(p)
    p.add_argument("--val-size", type=int, default=None, help="also report this validation split")
    add_synthetic(p)
    p.add_argument("--seed", type=int, default=None, help="seed of the train/val split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from multikd.train import engine
    from multikd.errors import ConfigError
    from multikd.train.runio import CHECKPOINT, RunDir

    synthetic = synthetic_options(args.synthetic)
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
