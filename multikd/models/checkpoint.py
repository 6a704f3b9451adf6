"""Reading, fitting and writing model checkpoints.

``load_checkpoint(model, path_or_state, arch=None)`` accepts every shape a CIFAR checkpoint
comes in and loads it strictly:

- the published RepDistiller / mdistiller files: ``{'model': state_dict, 'epoch': ..., ...}``;
- the package's own run checkpoints: ``{'model': ..., 'arch': ..., 'num_classes': ..., ...}``
  (a run directory stands for its ``checkpoint.pt``);
- ``{'state_dict': ...}`` files and bare state dicts;
- any of these saved from a DDP-wrapped (``module.``) or ``torch.compile``-d (``_orig_mod.``)
  model: the common prefix is removed.

Files are always read with ``torch.load(..., weights_only=True)``: a checkpoint never runs
code. A file that does not fit raises :class:`CheckpointError` naming the missing,
unexpected and wrongly shaped keys and the zoo architecture(s) the file probably holds.
The only tolerated difference is a missing ``num_batches_tracked`` buffer (files written
before PyTorch 0.4.1 lack it; PyTorch's own loader accepts that too).

``save_checkpoint(obj, path)`` writes atomically (temp file in the same folder, then
``os.replace``), so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from multikd.atomic import atomic_open
from multikd.errors import CheckpointError

log = logging.getLogger(__name__)

RUN_CHECKPOINT = "checkpoint.pt"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5


@dataclass
class Checkpoint:
    """A checkpoint's weights (``state``) and the other entries of its file (``meta``)."""

    state: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    source: str = "<in-memory state dict>"

    @property
    def arch(self) -> str | None:
        """The architecture the file records (package checkpoints do), else None."""
        arch = self.meta.get("arch")
        return arch if isinstance(arch, str) else None

    @property
    def num_classes(self) -> int | None:
        """The class count the file records, else None."""
        n = self.meta.get("num_classes")
        return n if isinstance(n, int) else None


def read_checkpoint(path_or_state) -> Checkpoint:
    """Read a checkpoint file (or take an in-memory dict) and find its state dict.

    ``path_or_state``: a file, a run directory, a loaded dict, or a :class:`Checkpoint`.
    """
    if isinstance(path_or_state, Checkpoint):
        return path_or_state
    if isinstance(path_or_state, Mapping):
        return _unwrap(path_or_state, "<in-memory state dict>")
    path = Path(path_or_state)
    if path.is_dir():
        if not (path / RUN_CHECKPOINT).is_file():
            raise CheckpointError(
                f"{path} is a folder without a {RUN_CHECKPOINT}; give a checkpoint file "
                "(.pt/.pth) or a multikd run directory"
            )
        path = path / RUN_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint file at {path}; check the path (published CIFAR-100 teachers are "
            "files like resnet56_vanilla/ckpt_epoch_240.pth)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = _read_failure(err)
        raise CheckpointError(f"{path} cannot be read as a checkpoint: {reason}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint: expected a state dict "
            "or a dict with the weights under 'model'"
        )
    return _unwrap(obj, str(path))


def load_checkpoint(model: nn.Module, path_or_state, arch: str | None = None) -> dict:
    """Load a checkpoint into ``model`` strictly; return the file's other entries.

    ``arch`` names the architecture in messages (default: ``model.arch_name``). A model
    wrapped in DDP / DataParallel / ``torch.compile`` is loaded through to the inner model.
    Raises :class:`CheckpointError` when the file is missing, unreadable, or does not fit.
    """
    ckpt = read_checkpoint(path_or_state)
    model = _inner_model(model)
    arch = arch or getattr(model, "arch_name", type(model).__name__)
    expected = model.state_dict()
    state = dict(ckpt.state)
    for key in expected.keys() - state.keys():
        if key.endswith("num_batches_tracked"):
            state[key] = expected[key]
    mismatch = compare_shapes(_shapes(expected), _shapes(state))
    if mismatch:
        raise CheckpointError(_mismatch_message(ckpt, arch, mismatch))
    model.load_state_dict(state, strict=True)
    log.debug("loaded %s into %s (%d tensors)", ckpt.source, arch, len(state))
    return ckpt.meta


def trained_classes(ckpt: Checkpoint, arch: str) -> int | None:
    """How many classes the model in ``ckpt`` predicts: what the file records, else the rows
    of zoo architecture ``arch``'s classifier weight in it; None when neither is known."""
    if ckpt.num_classes is not None:
        return ckpt.num_classes
    _, classifier = _zoo_shapes().get(arch, ({}, ()))
    weight = ckpt.state.get(classifier[0]) if classifier else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def save_checkpoint(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same folder + os.replace."""
    path = Path(path)
    with atomic_open(path) as handle:
        torch.save(obj, handle)
    return path


@dataclass
class Mismatch:
    """Differences between the keys/shapes a model expects and those a file holds."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[tuple[str, tuple, tuple]]  # (key, expected shape, file shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)


def compare_shapes(expected: dict[str, tuple], found: dict[str, tuple]) -> Mismatch:
    """What ``found`` lacks, has in excess, and has with another shape than ``expected``."""
    return Mismatch(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        wrong_shape=[
            (k, expected[k], found[k]) for k in expected if k in found and found[k] != expected[k]
        ],
    )


def guess_architectures(shapes: dict[str, tuple]) -> list[str]:
    """Zoo architectures whose state dict has exactly these keys and shapes.

    A candidate whose keys all match and whose only differing shapes are its classifier's
    is reported with the file's class count, e.g. ``'resnet8 (10 classes)'``.
    """
    shapes = {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    exact, other_classes = [], []
    for name, (expected, classifier) in _zoo_shapes().items():
        if expected.keys() != shapes.keys():
            continue
        differing = {k for k in expected if expected[k] != shapes[k]}
        weight = shapes[classifier[0]] if classifier else ()
        classes = weight[0] if len(weight) == 2 else None
        label = f"{name} ({classes} classes)" if classes else name
        if not differing:
            exact.append(label)
        elif classes and differing <= set(classifier):
            other_classes.append(label)
    return exact + other_classes


@functools.lru_cache(maxsize=1)
def _zoo_shapes() -> dict[str, tuple[dict[str, tuple], tuple[str, ...]]]:
    """Every zoo architecture's {key: shape} (no num_batches_tracked) and classifier keys.

    Built with :func:`build_meta`: the whole zoo takes well under a second.
    """
    from multikd.models.meta import build_meta
    from multikd.models.registry import list_models

    table = {}
    for name in list_models():
        model = build_meta(name)
        shapes = {
            k: v for k, v in _shapes(model.state_dict()).items()
            if not k.endswith("num_batches_tracked")
        }
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        classifier = (f"{linears[-1]}.weight", f"{linears[-1]}.bias") if linears else ()
        table[name] = (shapes, tuple(k for k in classifier if k in shapes))
    return table


def _inner_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers (whose keys gain prefixes)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _unwrap(obj: Mapping, source: str) -> Checkpoint:
    """Find the state dict in a loaded object; strip DDP/compile prefixes."""
    meta: dict = {}
    state = obj
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            meta = {k: v for k, v in obj.items() if k != key}
            break
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        found = ", ".join(repr(k) for k in list(obj)[:_SHOWN])
        raise CheckpointError(
            f"{source} is not a model checkpoint: expected a state dict (name -> tensor), "
            f"or a dict with one under 'model' or 'state_dict'; found keys {found or 'none'}"
        )
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return Checkpoint(state=state, meta=meta, source=source)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _mismatch_message(ckpt: Checkpoint, arch: str, mismatch: Mismatch) -> str:
    lines = [f"checkpoint {ckpt.source} does not fit {arch}:"]
    for label, items in (
        ("missing keys", mismatch.missing),
        ("unexpected keys", mismatch.unexpected),
        (
            "wrongly shaped keys",
            [f"{k} (model {list(e)}, file {list(f)})" for k, e, f in mismatch.wrong_shape],
        ),
    ):
        if items:
            more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            lines.append(f"  {len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
    recorded = []
    if ckpt.arch:
        recorded.append(f"arch {ckpt.arch!r}")
    if ckpt.num_classes is not None:
        recorded.append(f"num_classes {ckpt.num_classes}")
    if recorded:
        lines.append(f"  the file records {', '.join(recorded)}")
    guesses = guess_architectures(_shapes(ckpt.state))
    if guesses:
        lines.append(f"  its keys and shapes are those of: {', '.join(guesses)}")
    else:
        lines.append("  its keys and shapes match no zoo architecture")
    lines.append(
        "  Pass the architecture the file was trained as (--arch / the teacher's arch) "
        "and its class count."
    )
    return "\n".join(lines)


def _read_failure(err: Exception) -> str:
    """Why torch.load failed, in one sentence (torch's own messages run to paragraphs)."""
    text = str(err)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe:
        return (
            f"it stores Python objects besides tensors ({unsafe.group(1)}), which loading with "
            "weights_only=True refuses so that a checkpoint never runs code. If you trust the "
            "file, re-save its weights alone: torch.save({'model': torch.load(path, "
            "weights_only=False)['model']}, new_path)"
        )
    detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
    return (
        f"it is truncated or not a file written by torch.save ({type(err).__name__}: "
        f"{detail[0] if detail else 'no details'})"
    )
