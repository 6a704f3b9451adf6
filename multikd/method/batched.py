"""Batched teachers: run same-architecture teachers as one vectorized forward pass.

K frozen teachers are grouped by architecture (same class, same ``arch_name``, same
state_dict keys, shapes and dtypes). A group of two or more runs as one pass: the members'
parameters and buffers are stacked along a new leading dim ``[G, ...]``
(``torch.func.stack_module_state``) and one parameter-free copy of the architecture (on the
``meta`` device) is evaluated under ``torch.func.vmap(functional_call(...))`` over that
dim, with the input shared (``in_dims=None``). For convolutions vmap turns the G filter
banks into one grouped convolution: one larger kernel instead of G small ones. A singleton
group runs as a plain call of its teacher ("loop").

Speed, measured (3 teachers, no_grad, cudnn.benchmark, H100, torch 2.11; loop time /
batched time, > 1 means batched is faster): resnet32x4 1.52 at batch 64 but 0.60 at 256;
resnet8x4 0.55-0.59; wrn_40_2 0.65 (fp32), 1.20 (bf16, batch 64); vgg13 0.41-0.66;
resnet56 0.49-0.88 (bf16, batch 256: 1.22). Peak activation memory is about 3x the loop's
(the G members' activations live at once). On 1 CPU thread: wrn_40_2 1.4, resnet32x4
0.70. cuDNN's grouped convolutions are slower than its dense ones for most of these
shapes, so batching pays only for small batches of wide teachers: it is opt-in
(``batched=True``), and ``multikd.method.ensemble.TeacherEnsemble`` defaults to the loop.
On CUDA, vmap cannot run channels_last convolutions (torch 2.11: "NYI: querying
is_contiguous inside of vmap"): the check then falls back to the loop, with that reason.

Fallback. At construction each group of two or more is checked once on a dummy input: the
batched pass must run and agree with the plain loop (max |batched - loop| <= tol * max
|loop|, tol = 1e-3 for float32, which admits TF32 convolutions on GPUs, 1e-2 for 16-bit
weights). A model that vmap cannot trace (data-dependent control flow, ``.item()``,
unsupported in-place ops) or that disagrees is run in a loop instead, and the reason is
logged and kept in ``group.reason``.

Exactness. The batched pass computes the same function with a different convolution
algorithm (grouped rather than separate), so its float32 results equal the loop's up to
summation order: on CPU we measured bit-equal logits for resnet8, wrn_16_1, vgg8 and
ShuffleV2 and a max difference of 4e-6 at logit magnitude 41 (relative 1e-7) for
resnet32x4. Tests compare with ``rtol=1e-5`` relative to the largest logit. On an H100,
where cuDNN convolutions default to TF32, the two paths differ by up to 3.5e-4 of the
largest logit in float32 and 7e-3 under bf16 autocast: each path's own TF32/bf16 error,
not a different function.

Features. Forward hooks do work inside vmap when they are registered on the module that
``functional_call`` evaluates: the hook sees the batched intermediate, and returning it from
the vmapped function un-batches it to ``[G, B, ...]``. The runner therefore taps features
on its own meta copy in batched groups (and with :class:`~multikd.models.taps.FeatureTap` on
the teacher itself in loop groups); both modes serve logits and features. Hooks that a
caller registered on the teachers themselves do not run in batched groups.

Costs. The stacked state is a second copy of each batched teacher's weights (teachers are
frozen and small next to activations). It is rebuilt whenever a member's tensors move,
change dtype or are modified in place (tracked by data pointer and version counter), so
``.to(device)``, ``load_state_dict`` and channels_last conversion are picked up.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from multikd.errors import ModelError
from multikd.models.taps import FeatureTap

log = logging.getLogger(__name__)

BATCHED = "batched"
LOOP = "loop"
DEFAULT_EXAMPLE_SHAPE = (2, 3, 32, 32)


def architecture_signature(model: nn.Module) -> tuple:
    """What must match for two teachers to share one batched pass: class, ``arch_name``
    and every state_dict entry's name, shape and dtype."""
    entries = tuple(
        (name, tuple(t.shape), t.dtype) for name, t in model.state_dict(keep_vars=True).items()
    )
    return (type(model), getattr(model, "arch_name", None), entries)


def group_teachers(teachers: Sequence[nn.Module]) -> list[list[int]]:
    """Teacher indices grouped by :func:`architecture_signature`, groups in order of their
    first member, members in teacher order."""
    groups: dict[tuple, list[int]] = {}
    for k, teacher in enumerate(teachers):
        groups.setdefault(architecture_signature(teacher), []).append(k)
    return list(groups.values())


@dataclass
class TeacherGroup:
    """Teachers ``indices`` (into the runner's list), run as ``mode`` ("batched"/"loop");
    ``reason`` says why a group of several runs in a loop."""

    indices: list[int]
    mode: str
    reason: str = ""
    _kernel: "_BatchedKernel | None" = field(default=None, repr=False)


class TeacherRunner:
    """Run K frozen teachers on one input: ``logits [K,B,C], features = runner(x)``.

    ``features[k]`` is the output of module ``feature_names[k]`` of teacher k (``[B,...]``,
    or None where no name is given). Teachers are expected in eval mode and are called
    under the caller's grad mode (call it under ``torch.no_grad()`` for frozen teachers).
    ``batched=False`` runs every group in a loop; ``example_input`` is the dummy batch of
    the one-time check (default: seeded normal noise ``[2,3,32,32]``).
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        feature_names: Sequence[str | None] | None = None,
        *,
        batched: bool = True,
        example_input: torch.Tensor | None = None,
    ):
        self.teachers = list(teachers)
        if not self.teachers:
            raise ModelError("a TeacherRunner needs at least one teacher; the list is empty")
        self.feature_names: list[str | None] = [None] * len(self.teachers)
        self._taps: list[FeatureTap | None] = [None] * len(self.teachers)
        self.groups = []
        for indices in group_teachers(self.teachers):
            if len(indices) == 1:
                reason = "single teacher of its architecture"
                self.groups.append(TeacherGroup(indices, LOOP, reason))
            elif not batched:
                self.groups.append(TeacherGroup(indices, LOOP, "batching switched off"))
            else:
                kernel = _BatchedKernel([self.teachers[k] for k in indices])
                self.groups.append(TeacherGroup(indices, BATCHED, "", kernel))
        self.set_feature_names(feature_names)
        if example_input is None:
            gen = torch.Generator().manual_seed(0)
            example_input = torch.randn(DEFAULT_EXAMPLE_SHAPE, generator=gen)
        self._check_batched(example_input)

    @property
    def modes(self) -> list[str]:
        """The mode of each teacher, in teacher order."""
        out = [LOOP] * len(self.teachers)
        for group in self.groups:
            for k in group.indices:
                out[k] = group.mode
        return out

    def set_feature_names(self, feature_names: Sequence[str | None] | None) -> None:
        """Tap module ``feature_names[k]`` of teacher k (None: no feature for that teacher)."""
        names = [None] * len(self.teachers) if feature_names is None else list(feature_names)
        if len(names) != len(self.teachers):
            raise ModelError(
                f"got {len(names)} teacher feature names for {len(self.teachers)} teachers; "
                "give one per teacher (None to skip one)"
            )
        for k, (teacher, name) in enumerate(zip(self.teachers, names)):
            if name is not None and name not in dict(teacher.named_modules()):
                FeatureTap(teacher, [name])  # raises the tap's error naming close matches
        self.remove()
        self.feature_names = names
        for group in self.groups:
            self._install(group)

    def remove(self) -> None:
        """Detach the loop taps' hooks from the teachers."""
        for tap in self._taps:
            if tap is not None:
                tap.remove()
        self._taps = [None] * len(self.teachers)

    def _install(self, group: TeacherGroup) -> None:
        names = [self.feature_names[k] for k in group.indices]
        if group.mode == BATCHED:
            group._kernel.set_feature_names(names)
            return
        for k, name in zip(group.indices, names):
            self._taps[k] = None if name is None else FeatureTap(self.teachers[k], [name])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        logits, feats = self.run(x)
        return torch.stack(logits), feats

    def run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Each teacher's logits ``[B, C_k]`` (a list: teachers of part of the label space
        return fewer) and features."""
        if any(t.training for t in self.teachers):
            raise ModelError(
                "TeacherRunner runs frozen teachers in eval mode, but a teacher is in training "
                "mode; call .eval() on the teachers (TeacherEnsemble keeps them so)"
            )
        logits: list[torch.Tensor | None] = [None] * len(self.teachers)
        feats: list[torch.Tensor | None] = [None] * len(self.teachers)
        for group in self.groups:
            if group.mode == BATCHED:
                out, group_feats = group._kernel(x)
                for j, k in enumerate(group.indices):
                    logits[k] = out[j]
                    feats[k] = group_feats[j]
            else:
                for k in group.indices:
                    logits[k], feats[k] = self._loop_one(k, x)
        return logits, feats

    def _loop_one(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tap = self._taps[k]
        if tap is None:
            return self.teachers[k](x), None
        out, tapped = tap(x)
        return out, tapped[self.feature_names[k]]

    def _check_batched(self, example: torch.Tensor) -> None:
        """Run each batched group once against the loop; fall back on failure/mismatch."""
        for group in self.groups:
            if group.mode != BATCHED:
                continue
            members = [self.teachers[k] for k in group.indices]
            try:
                with torch.no_grad():
                    device = next(iter(group._kernel.state_tensors(members)), example).device
                    x = example.to(device)
                    batched, _ = group._kernel(x)
                    looped = torch.stack([t(x) for t in members])
                reason = _disagreement(batched, looped)
            except Exception as exc:  # any failure to trace means: run this group in a loop
                reason = f"vmap could not run it ({type(exc).__name__}: {exc})"
            if reason:
                group.mode, group.reason, group._kernel = LOOP, reason, None
                names = ", ".join(str(k) for k in group.indices)
                log.warning("teachers %s run in a loop, not batched: %s", names, reason)
                self._install(group)


def _disagreement(batched: torch.Tensor, looped: torch.Tensor) -> str:
    """Empty when the batched logits match the loop's within the dtype's tolerance."""
    if batched.shape != looped.shape:
        return f"batched logits have shape {tuple(batched.shape)}, the loop's {tuple(looped.shape)}"
    tol = 1e-3 if looped.dtype in (torch.float32, torch.float64) else 1e-2
    scale = looped.abs().max().clamp_min(1e-6)
    err = (batched - looped).abs().max()
    if not bool(torch.isfinite(err)) or err > tol * scale:
        return (
            f"batched logits differ from the loop's by {float(err):.3g} "
            f"(allowed {tol:g} x max |logit| = {float(tol * scale):.3g})"
        )
    return ""


class _BatchedKernel:
    """One vmapped ``functional_call`` over G same-architecture teachers."""

    def __init__(self, members: list[nn.Module]):
        self.members = members
        base = copy.deepcopy(members[0]).to("meta").eval()
        for module in base.modules():
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()
        self.base = base
        self._modules = dict(base.named_modules())
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self.feature_names: list[str | None] = [None] * len(members)
        self._tapped: list[str] = []
        self._stack_key: tuple | None = None
        self._params: dict[str, torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._run = vmap(self._forward, in_dims=(0, 0, None))

    def set_feature_names(self, names: list[str | None]) -> None:
        for handle in self._handles:
            handle.remove()
        self.feature_names = list(names)
        self._tapped = list(dict.fromkeys(n for n in names if n is not None))
        self._handles = [
            self._modules[name].register_forward_hook(self._make_hook(name))
            for name in self._tapped
        ]

    def _make_hook(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = output

        return hook

    def _forward(self, params, buffers, x):
        self._captured = {}
        try:
            out = functional_call(self.base, (params, buffers), (x,))
            missing = [n for n in self._tapped if n not in self._captured]
            if missing:
                raise ModelError(
                    f"modules {missing} were tapped but did not run in the forward pass; "
                    "tap modules that the model actually calls"
                )
            return out, tuple(self._captured[n] for n in self._tapped)
        finally:
            self._captured = {}

    @staticmethod
    def state_tensors(members: list[nn.Module]):
        for member in members:
            yield from member.parameters()
            yield from member.buffers()

    def _restack_if_changed(self) -> None:
        key = tuple(
            (t.data_ptr(), t._version, t.device, t.dtype) for t in self.state_tensors(self.members)
        )
        if key == self._stack_key:
            return
        self._params, self._buffers = stack_module_state(self.members)
        self._params = {n: p.detach() for n, p in self._params.items()}
        self._stack_key = key

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Logits ``[G,B,C]`` and each member's tapped feature ``[B,...]`` (or None)."""
        self._restack_if_changed()
        out, tapped = self._run(self._params, self._buffers, x)
        by_name = dict(zip(self._tapped, tapped))
        feats = [
            None if name is None else by_name[name][j] for j, name in enumerate(self.feature_names)
        ]
        return out, feats
