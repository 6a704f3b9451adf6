"""What several commands share: the --plugin, --data-root and --synthetic options, the
help of a command group given without its action, and the check that an output folder can
be written."""

from __future__ import annotations

import argparse
from pathlib import Path

from multikd.errors import ConfigError


def add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin", dest="plugins", action="append", default=[], metavar="FILE.py",
        help="a Python file whose @register_strategy/@register_logit_loss/... classes and "
        "functions join the registries (repeatable; also $MULTIKD_PLUGINS, paths separated "
        "by ':'); each run records its path and SHA-256",
    )


def help_of(parser: argparse.ArgumentParser):
    """A handler that shows ``parser``'s help (a command group given without its action)."""
    def show_help(args) -> int:
        parser.print_help()
        return 2

    return show_help


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        help="folder holding cifar-100-python/ or cifar-10-batches-py/ "
        "(default: $MULTIKD_DATA, else ./data)",
    )


def add_synthetic(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--synthetic", dest="synthetic", action="append", default=[],
        metavar="SIZE|KEY=VALUE",
        help="size of the synthetic dataset: tiny (10 classes, 2000 train / 500 test images: "
        "a first try in a minute on a CPU), small (20 classes, 10000/2000) or cifar (100 "
        "classes, 50000/10000, the default), or one of its options, e.g. num_classes=20 "
        "(repeatable, applied in order)",
    )


def synthetic_options(texts: list[str]) -> dict:
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


def check_writable(flag: str, folder: Path) -> None:
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
