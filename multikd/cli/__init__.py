"""The `multikd` command line: one module per command group, this one joins them.

Each group module (:mod:`~multikd.cli.data`, :mod:`~multikd.cli.models`,
:mod:`~multikd.cli.registries`, :mod:`~multikd.cli.train`, :mod:`~multikd.cli.bench`,
:mod:`~multikd.cli.results`) has ``add_<group>`` functions that declare a command's
arguments and point ``func`` at its handler; :mod:`~multikd.cli.common` holds the options
and checks several commands share. Handlers import the library lazily so `multikd --help`
stays fast. Errors derived from :class:`multikd.errors.MultikdError` are printed as one
clear message and exit with status 2; no traceback is shown for bad input.

Imports: every part of multikd (the only package that sees them all); no part imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from multikd import __version__
from multikd.cli.bench import add_bench, add_reproduce
from multikd.cli.data import add_data
from multikd.cli.models import add_models, add_teachers
from multikd.cli.registries import add_list
from multikd.cli.results import add_results
from multikd.cli.train import add_distill, add_eval, add_train_teacher
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


# In the order a user meets them: data, models and the method's parts, training, sweeps,
# results.
_COMMAND_GROUPS = [
    add_data, add_models, add_list, add_teachers, add_train_teacher, add_distill,
    add_eval, add_bench, add_reproduce, add_results,
]
