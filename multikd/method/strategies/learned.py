"""Strategies that learn: networks, an optimizer and buffers of their own.

MTKD-RL's policy (:mod:`.mtkd_rl`) and MMKD's weight networks (:mod:`.mmkd`) are trained
beside the student, by their own optimizers, on their own objectives. A
:class:`LearnedStrategy` lives through a run in four calls the distiller makes
(:class:`~multikd.method.distiller.MultiTeacherDistiller`):

1. ``bind(spec)`` once, when the distiller is built: the strategy builds its networks for
   the shapes in :class:`StrategySpec` (under a generator seeded with the strategy's
   ``seed``, so building them draws nothing from the run's random stream) and its
   optimizer. The distiller registers ``strategy.networks`` as its submodule
   ``strategy_networks``: they move with the learner to the device, their parameters are
   saved with the learner's in every checkpoint, they are never among the student
   optimizer's parameters (``trainable_parameters``) and DDP leaves them alone (the
   strategy averages their gradients over the ranks itself, :meth:`all_reduce_grads`);
2. ``select(...)`` every step, with the student's and teachers' features in the
   :class:`~multikd.method.strategies.base.StepContext`;
3. ``observe(record)`` every step after the losses (no gradient): the per-sample losses,
   for a strategy whose objective needs them (MTKD-RL's reward, MMKD's hard buffer);
4. ``after_step(step)`` after the student's optimizer step (MMKD's meta step, MTKD-RL's
   agent updates) and ``end_epoch(epoch)`` before the epoch's checkpoint.

``state_dict()`` holds the optimizer, the generator and whatever buffers the strategy keeps
(:meth:`extra_state`), so a resumed run continues bit for bit; the networks' parameters are
in the learner's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from multikd.errors import StrategyError
from multikd.method.strategies.base import Selection, Strategy, check_int


@dataclass
class StrategySpec:
    """What a learned strategy's networks are built for: K, C, the per-sample shapes of the
    teachers' tapped features and of the student's (None without features), the students'
    adapted features (one per teacher), and the training batch size per process."""

    num_teachers: int
    num_classes: int
    teacher_feature_shapes: list[tuple[int, ...]] | None = None
    student_feature_shape: tuple[int, ...] | None = None
    batch_size: int | None = None
    partial_labels: bool = False
    """Some training samples are unlabelled (label ``UNLABELED``)."""


@dataclass
class StepRecord:
    """One step as the distiller computed it, detached: inputs, labels, the student's logits
    and feature, the teachers' logits ``[K,B,C]`` and features, the per-sample student CE
    ``[B]``, the per-teacher per-sample logit loss ``[K,B]`` (before weighting) and feature
    loss ``[K,B]`` (None without features), the strategy's :class:`Selection`, and the loss
    weights ``alpha``, ``beta``, ``gamma``."""

    x: torch.Tensor
    y: torch.Tensor
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_ce: torch.Tensor
    logit_loss: torch.Tensor
    selection: Selection
    student_feature: torch.Tensor | None = None
    teacher_features: list[torch.Tensor] | None = None
    feature_loss: torch.Tensor | None = None
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.0
    teacher_maps: list[list[torch.Tensor]] | None = None
    """Per teacher, the maps its feature module reads (a feature loss other than a hint)."""

    @classmethod
    def detached(cls, x, y, logits, teacher_logits, logit_loss, selection, student_feature,
                 teacher_features, feature_loss, weights: tuple[float, float, float],
                 teacher_maps=None):
        """The record of a step from the distiller's tensors, detached (no graph kept);
        ``weights`` = ``(alpha, beta, gamma)``."""
        def off(t):
            return None if t is None else t.detach()

        with torch.no_grad():
            return cls(
                x=x, y=y, student_logits=logits.detach(), teacher_logits=teacher_logits.detach(),
                student_ce=torch.nn.functional.cross_entropy(logits.detach(), y, reduction="none"),
                logit_loss=logit_loss.detach(), selection=selection,
                student_feature=off(student_feature),
                teacher_features=None if teacher_features is None
                else [f.detach() for f in teacher_features],
                feature_loss=off(feature_loss), alpha=weights[0], beta=weights[1], gamma=weights[2],
                teacher_maps=None if teacher_maps is None
                else [[m.detach() for m in maps] for maps in teacher_maps],
            )


@dataclass
class AfterStep:
    """Where the run stands after the student's optimizer step: the distiller, the
    student's optimizer (its learning rate is the one the step used), the 0-based step in
    the epoch, the steps per epoch and the 1-based epoch."""

    learner: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    steps_per_epoch: int
    epoch: int
    extra: dict = field(default_factory=dict)


class LearnedStrategy(Strategy):
    """Base of strategies with networks: subclasses implement :meth:`build_networks` and
    :meth:`build_optimizer`, and use the hooks they need (module doc)."""

    learns = True

    def __init__(self, seed: int = 0):
        self.seed = check_int(self.name or type(self).__name__, "seed", seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.networks: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.spec: StrategySpec | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    # ------------------------------------------------------------------ lifecycle
    def bind(self, spec: StrategySpec) -> nn.Module:
        """Build the networks and the optimizer for ``spec``; returns the networks."""
        self.spec = spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.networks = self.build_networks(spec)
        self.optimizer = self.build_optimizer(list(self.networks.parameters()))
        return self.networks

    def build_networks(self, spec: StrategySpec) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def observe(self, record: StepRecord) -> None:
        """Called after every step's losses, without gradient (nothing by default)."""

    def after_step(self, step: AfterStep) -> None:
        """Called after the student's optimizer step (nothing by default)."""

    def end_epoch(self, epoch: int) -> None:
        """Called at the end of every epoch, before its checkpoint (nothing by default)."""

    def _bound(self) -> None:
        if self.networks is None:
            raise StrategyError(
                f"strategy {self.name!r} has networks of its own and must be bound to the "
                "teachers' and the student's shapes first: build it into a "
                "MultiTeacherDistiller (which calls strategy.bind)"
            )

    # ------------------------------------------------------------------ optimisation
    def all_reduce_grads(self) -> None:
        """Average the networks' gradients over the processes of a torchrun job (every rank
        then takes the same step and the networks stay equal); nothing in one process."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        for p in self.networks.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)

    def record_loss(self, loss: torch.Tensor) -> None:
        """Add one value of the strategy's own objective to the epoch's mean (no host read)."""
        loss = loss.detach().double()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def epoch_loss(self) -> float | None:
        """The mean of the strategy's own objective over the updates since the last call
        (MTKD-RL: the agent's BCE; MMKD: the meta objective, the CE after the virtual steps),
        None without any; one host read. The engine writes it as ``strategy_loss``."""
        if self._loss_sum is None:
            return None
        value = float(self._loss_sum) / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return value

    def draw(self, high: int, size: int) -> torch.Tensor:
        """``size`` distinct integers of ``[0, high)`` from the strategy's own generator
        (CPU, saved in :meth:`state_dict`)."""
        return torch.randperm(high, generator=self._generator)[:size]

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        """Buffers a subclass keeps between steps (saved in :meth:`state_dict`)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        if state:
            raise StrategyError(f"strategy {self.name!r} keeps no buffers, got {sorted(state)}")

    def state_dict(self) -> dict:
        self._bound()
        return {
            "optimizer": self.optimizer.state_dict(),
            "generator": self._generator.get_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._bound()
        if set(state) != {"optimizer", "generator", "extra"}:
            raise StrategyError(
                f"strategy {self.name!r} expects a state with the keys extra, generator and "
                f"optimizer, got {sorted(state)}: was the checkpoint written with another strategy?"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self._generator.set_state(state["generator"].to(device="cpu", dtype=torch.uint8))
        self.load_extra_state(state["extra"])
