"""The `multikd` command line.

Each command group is one `_add_<group>` function that declares its arguments and points
`func` at a handler. Handlers import the library lazily so `multikd --help` stays fast.
Errors derived from :class:`multikd.errors.MultikdError` are printed as one clear message
and exit with status 2; no traceback is shown for bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from multikd import __version__
from multikd.errors import MultikdError

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
        return int(args.func(args) or 0)
    except MultikdError as err:
        print(f"multikd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("multikd: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multikd",
        description="Multi-teacher knowledge distillation on CIFAR-style data.",
    )
    parser.add_argument("--version", action="version", version=f"multikd {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMAND_GROUPS:
        add(sub)
    return parser


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding cifar-100-python/ or cifar-10-batches-py/ "
        "(default: $MULTIKD_DATA, else ./data)",
    )


# --------------------------------------------------------------------------- data
def _add_data(sub) -> None:
    data = sub.add_parser("data", help="inspect, verify and synthesize datasets")
    dsub = data.add_subparsers(title="data commands", metavar="ACTION")

    p = dsub.add_parser("info", help="split sizes, class count, per-channel mean/std")
    p.add_argument("--dataset", default="cifar100", help="cifar100, cifar10 or synthetic")
    _add_data_root(p)
    p.add_argument("--val-size", type=int, default=0, help="validation images carved from train")
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


def _cmd_data_info(args) -> int:
    from multikd import data

    print(data.describe(args.dataset, data_root=args.data_root, val_size=args.val_size))
    return 0


def _cmd_data_verify(args) -> int:
    from multikd import data

    report = data.verify_checksums(args.dataset, data_root=args.data_root)
    print(report.text())
    return 0 if report.all_match else 1


def _cmd_data_synth(args) -> int:
    from multikd import data

    folder = data.write_fake_cifar(
        args.out, dataset=args.dataset, train=args.train, test=args.test, seed=args.seed
    )
    print(f"wrote {args.dataset} files to {folder}")
    return 0


_COMMAND_GROUPS = [_add_data]
