"""Find the host-device syncs of a piece of code, and count the ops it dispatches.

A GPU runs ahead of the Python process that feeds it only while the host never waits for
a result. ``.item()``, ``float(t)``, ``if t:``, ``.tolist()``, a blocking copy between the
host and the device, and every op whose output size depends on the data (``nonzero``,
boolean-mask indexing, ``unique``, ...) make it wait. :class:`HostSyncDetector` records
each such op while it is active, with the line of code that called it, and counts every
op dispatched (a device-independent proxy for kernel launches: on a GPU nearly each one
is a launch, views and ``detach`` excepted)::

    with HostSyncDetector(include_cpu=True) as watch:
        run.train_step(step, x, y)
    assert not watch.syncs, watch.report()
    print(watch.total_ops, watch.ops.most_common(5))

By default only reads of tensors on an accelerator are syncs. On a CPU-only machine every
tensor lives on the host, so a test passes ``include_cpu=True`` to see the reads that would
sync on a GPU. What counts as a sync follows the ops that ``torch.cuda.set_sync_debug_mode``
reports (``warn_or_error_on_sync`` in c10/cuda, ``memcpy_and_sync`` for blocking copies) and
the ops torch tags ``data_dependent_output`` / ``dynamic_output_shape``; see ``_ALWAYS``.

It sees the ops of the backward pass too: autograd runs it on the calling thread for CPU
tensors and carries the dispatch mode over to its device threads for CUDA tensors. It sees
eager ops only, the ops as they reach the dispatcher after composite ops are decomposed
(``one_hot`` on the CPU shows up as the two ``.item()`` reads it makes); syncs inside one
op's kernel (e.g. the H2D copy inside ``torch.tensor(data, device=...)``) are found by the
op's name where torch has such a rule (``lift_fresh`` on a device), not by watching CUDA.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# op (overload packet name) -> why the host waits, whatever its arguments
_ALWAYS = {
    "_local_scalar_dense": "reads one value (.item(), float(), int(), bool(), `if t:`)",
    "item": "reads one value (.item())",
    "is_nonzero": "reads one value (bool(t))",
    "equal": "compares on the host (torch.equal)",
    "allclose": "compares on the host (torch.allclose)",
    "nonzero": "output size depends on the data (nonzero, where(cond))",
    "masked_select": "output size depends on the data (masked_select)",
    "_unique": "output size depends on the data (unique)",
    "_unique2": "output size depends on the data (unique)",
    "unique_dim": "output size depends on the data (unique)",
    "unique_consecutive": "output size depends on the data (unique_consecutive)",
    "unique_dim_consecutive": "output size depends on the data (unique_consecutive)",
    "bincount": "output size depends on the data (bincount)",
    "_linalg_check_errors": "reads a linalg status on the host",
}
_MASK_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}
_COPIES = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize"}
_THIS_FILE = os.path.abspath(__file__)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


class SyncEvent(NamedTuple):
    """One op that made the host wait: ``op`` (e.g. ``aten._local_scalar_dense.default``
    or ``Tensor.tolist``), the ``device`` of the tensor it waited for, ``why`` (in words)
    and ``where``: ``file:line in function`` of the innermost caller outside torch."""

    op: str
    device: str
    why: str
    where: str


class HostSyncDetector(TorchDispatchMode):
    """A context manager recording host-device syncs (:attr:`syncs`) and counting the
    dispatched ops (:attr:`ops`, :attr:`total_ops`) of the code run inside it.

    ``include_cpu``: also flag reads of CPU tensors (needed on a CPU-only machine, where
    every tensor is a CPU tensor; a GPU run leaves it False, so that reading a CPU
    tensor, e.g. a CPU generator's draw, does not count). Reusable: entering it again adds
    to what it holds; :meth:`reset` empties it.
    """

    def __init__(self, include_cpu: bool = False):
        super().__init__()
        self.include_cpu = include_cpu
        self.syncs: list[SyncEvent] = []
        self.ops: Counter[str] = Counter()
        self._reads = _HostReads(self)

    @property
    def total_ops(self) -> int:
        """All ops dispatched while active (forward, backward, optimizer alike)."""
        return sum(self.ops.values())

    def reset(self) -> None:
        self.syncs.clear()
        self.ops.clear()

    def report(self) -> str:
        """The syncs, one a line (for assertion messages)."""
        if not self.syncs:
            return f"no host-device syncs in {self.total_ops} ops"
        lines = [f"{len(self.syncs)} host-device sync(s) in {self.total_ops} ops:"]
        lines += [f"  {s.op} on {s.device}: {s.why}, at {s.where}" for s in self.syncs]
        return "\n".join(lines)

    def __enter__(self):
        self._reads.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._reads.__exit__(*sys.exc_info())
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            return super().__exit__(exc_type, exc, tb)
        finally:
            self._reads.__exit__(exc_type, exc, tb)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        found = _sync(name, args, kwargs)
        if found is not None and self._counts(found[0]):
            self._record(str(func), found[0], found[1])
        return func(*args, **kwargs)

    def _counts(self, device: torch.device) -> bool:
        return device.type != "meta" and (self.include_cpu or device.type != "cpu")

    def _record(self, op: str, device: torch.device, why: str) -> None:
        self.syncs.append(SyncEvent(op, str(device), why, _caller()))


class _HostReads(TorchFunctionMode):
    """``Tensor.tolist()`` / ``.numpy()`` of a CPU tensor read it without dispatching any
    op (on a GPU tensor they dispatch a copy to the host, which the dispatch mode sees)."""

    def __init__(self, detector: HostSyncDetector):
        super().__init__()
        self.detector = detector

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("tolist", "numpy") and args and isinstance(args[0], torch.Tensor):
            device = args[0].device
            if device.type == "cpu" and self.detector._counts(device):
                self.detector._record(f"Tensor.{name}", device, "reads the tensor on the host")
        return func(*args, **(kwargs or {}))


def _sync(name: str, args, kwargs) -> tuple[torch.device, str] | None:
    """``(device waited for, why)`` if op ``name`` with these arguments makes the host wait."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name in _ALWAYS and tensors:
        return tensors[0].device, _ALWAYS[name]
    if name == "repeat_interleave" and kwargs.get("output_size") is None and tensors:
        return tensors[0].device, "output size depends on the data (no output_size given)"
    if name == "histc" and _arg(args, kwargs, 2, "min", 0) == _arg(args, kwargs, 3, "max", 0):
        return tensors[0].device, "reads the data's range on the host (histc with min == max)"
    if name in _MASK_INDEXED and len(args) > 1:
        masks = [i for i in args[1] if isinstance(i, torch.Tensor)
                 and i.dtype in (torch.bool, torch.uint8)]
        if masks:
            return masks[0].device, "output size depends on the data (boolean-mask indexing)"
    if name == "lift_fresh" and tensors and tensors[0].device.type != "cpu":
        return tensors[0].device, "torch.tensor(data) on a device: a blocking host-to-device copy"
    if name in _COPIES:
        return _blocking_copy(name, args, kwargs)
    return None


def _blocking_copy(name: str, args, kwargs) -> tuple[torch.device, str] | None:
    """A copy between the host and a device that is not ``non_blocking`` waits for it."""
    if name == "_to_copy":
        src, dst = args[0].device, torch.device(kwargs.get("device") or args[0].device)
        non_blocking = kwargs.get("non_blocking", False)
    elif name == "copy_":
        dst, src = args[0].device, args[1].device
        non_blocking = _arg(args, kwargs, 2, "non_blocking", False)
    else:  # _copy_from(self=src, dst, non_blocking) and _copy_from_and_resize(self=src, dst)
        src, dst = args[0].device, args[1].device
        non_blocking = _arg(args, kwargs, 2, "non_blocking", False)
    if non_blocking or (src.type == "cpu") == (dst.type == "cpu"):
        return None
    device = src if dst.type == "cpu" else dst
    return device, f"blocking copy {src.type} -> {dst.type} ({name})"


def _arg(args, kwargs, index: int, key: str, default):
    return args[index] if len(args) > index else kwargs.get(key, default)


def _caller() -> str:
    """``file:line in function`` of the innermost frame outside torch and this module."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _THIS_FILE and not path.startswith(_TORCH + os.sep):
            return f"{os.path.relpath(path)}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"
