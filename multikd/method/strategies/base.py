"""The base of every strategy: :class:`Strategy`, :class:`Selection`, :class:`StepContext`,
the strategy registry and the parameter checks strategies share.

A strategy maps the teachers' per-sample cross-entropy ``ce [K,B]``, their logits
``logits [K,B,C]`` and the labels ``labels [B]`` to a :class:`Selection`:

- ``weights [K,B]``: non-negative, every column (sample) sums to 1; the losses use
  ``mean_i sum_k w_ki * l_ki`` (:mod:`multikd.method.losses`);
- ``kept [K,B]`` (bool): which teachers the strategy selected for each sample. A filtered
  teacher has weight 0 and ``kept`` False; a teacher that was selected but given a tiny
  weight is still kept. Strategies that only weight (uniform, ca-mkd, ebkd) keep everyone.

``strategy.select(ce, logits, labels)`` returns both; ``strategy.weights(...)`` just the
weights. Strategies with state (``random``'s generator) save and restore it through
``state_dict()`` / ``load_state_dict()`` so a resumed run draws exactly what an
uninterrupted one would; for the others both are trivial.

A strategy is one class in one module of this package, registered by name with
``@register_strategy("name", "one-line description")``; its parameters are the keyword
arguments of its ``__init__`` (checked with :func:`check_float`, :func:`check_int`, ...).
Build one by name with :func:`create_strategy` (:data:`STRATEGIES` is the registry,
``list_strategies()`` its names; ``_`` and ``-`` are interchangeable, case is ignored).
Unknown names or parameters, and parameters of the wrong type, raise
:class:`~multikd.errors.StrategyError` listing what is accepted. This module imports no
strategy: each strategy module imports it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from multikd.errors import StrategyError, TrainingError
from multikd.method.losses import upcast
from multikd.method.registry import Registry

GRANULARITIES = ("batch", "sample")


@dataclass
class StepContext:
    """What a strategy may read each step besides the teachers' ``ce``, ``logits`` and the
    labels: the student's logits ``[B,C]`` (detached), the distillation temperature, the
    1-based epoch. The distiller fills it for strategies whose :attr:`Strategy.needs_student`
    is True; the others never see it."""

    student_logits: torch.Tensor | None = None
    temperature: float = 4.0
    epoch: int = 1
    student_feature: torch.Tensor | None = None
    """The student's tapped feature (detached), for strategies that :attr:`Strategy.needs_features`."""
    adapted: list[torch.Tensor] | None = None
    """The student feature through each teacher's adapter (detached), one per teacher."""
    teacher_features: list[torch.Tensor] | None = None
    """Each teacher's tapped feature (detached)."""


@dataclass
class Selection:
    """A strategy's decision for one batch: ``weights [K,B]`` and ``kept [K,B]`` (bool).

    Learned strategies may also give ``feature_weights [K,B]`` (columns summing to 1), used
    by the feature term under ``loss.feature_weights: strategy`` instead of ``weights``, and
    a ``scale``: the source's own weights are ``scale * weights`` (MTKD-RL gives every
    teacher weight 1 in its first epoch: ``weights = 1/K``, ``scale = K``), which multiplies
    the logit and the feature term."""

    weights: torch.Tensor
    kept: torch.Tensor
    feature_weights: torch.Tensor | None = None
    scale: float = 1.0


class Strategy:
    """Base class. Subclasses implement ``_select(ce [K,B], logits [K,B,C], labels [B])``
    and take their parameters as keyword arguments of ``__init__``."""

    name = ""
    needs_student = False
    """True for strategies that weight teachers by the student's output (read from the
    :class:`StepContext` that :meth:`select` is given)."""
    reference: dict = {}
    """The loss settings of the source's public code where they differ from multikd's
    defaults, keyed by ``loss`` config key: ``teacher_reduction`` (``"sum"``, or ``"mean"``:
    the weighted sum over teachers divided by K), ``feature_weights``, ``adapter``,
    ``feature_stage``, ``feature_start_epoch``. ``loss.<key>: reference`` (the default)
    resolves to these, see :func:`reference_loss`."""
    needs_features = False
    """True for strategies that read the student's and the teachers' features from the
    :class:`StepContext` (they need ``loss.gamma`` > 0, which taps them)."""
    reads_adapted = False
    """True for strategies that read the student's feature through each teacher's hint
    adapter (``StepContext.adapted``: MTKD-RL's agent state), which only hint feature losses
    build and train."""
    needs_labels = ""
    """Why the strategy cannot run without any labelled sample (empty: it can; on
    unlabelled samples the distiller hands CE-based strategies a label-free stand-in for the
    teachers' CE, ``loss.unlabeled_ce``)."""
    learns = False
    """True for strategies with networks and an optimizer of their own
    (:class:`multikd.method.strategies.learned.LearnedStrategy`)."""
    reference_weight_mass = None
    """Per-sample total of the source's own weights as a function of K, when it is not 1
    (EBKD's ``1 - H_k / sum H`` sums to K - 1): the ``mean`` reduction scales by it, so
    ``mean`` is the source's ``sum_ik w_ik l_ik / (B K)`` on the source's own weights."""

    def select(
        self, ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *, check: bool = True,
        context: StepContext | None = None,
    ) -> Selection:
        """Weights and kept mask for one batch. ``check`` verifies that ``ce`` and
        ``logits`` are finite (one host sync; :class:`~multikd.errors.TrainingError`
        naming the teacher otherwise). ``context`` is required by strategies that
        :attr:`needs_student`."""
        _check_shapes(ce, logits, labels)
        if check:
            check_finite(ce, logits)
        if self.needs_student or self.needs_features:
            if context is None or context.student_logits is None:
                raise StrategyError(
                    f"strategy {self.name!r} weights teachers by the student's logits: pass "
                    "select(..., context=StepContext(student_logits=...)) (the distiller does)"
                )
            return self._select_in_context(upcast(ce), logits, labels, context)
        return self._select(upcast(ce), logits, labels)

    @classmethod
    def reference_loss(cls) -> dict:
        """The loss settings that reproduce this strategy's public code:
        :data:`REFERENCE_LOSS_DEFAULTS` updated with :attr:`reference`."""
        return {**REFERENCE_LOSS_DEFAULTS, **cls.reference}

    def weight_mass(self, k: int) -> float:
        """Per-sample total of the source's weights for K teachers (1 unless the source's
        weights are not normalised; see :attr:`reference_weight_mass`)."""
        return 1.0 if self.reference_weight_mass is None else float(self.reference_weight_mass(k))

    def _select_in_context(self, ce, logits, labels, context: StepContext) -> Selection:
        raise NotImplementedError

    def weights(self, ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher weights ``[K,B]``: non-negative, each column sums to 1."""
        return self.select(ce, logits, labels).weights

    def _select(self, ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> Selection:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a checkpoint must hold to continue exactly (nothing for stateless ones)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise StrategyError(
                f"strategy {self.name!r} has no state, but a state with keys {sorted(state)} "
                "was given: was the checkpoint written with another strategy?"
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def canonical_name(name: str) -> str:
    """A strategy name as registered: stripped, lower case, ``_`` written ``-``."""
    return str(name).strip().lower().replace("_", "-")


STRATEGIES = Registry("strategy", "strategies", StrategyError, canonical=canonical_name)
"""The strategy registry: a mapping name -> class, in registration order, with each
entry's description and parameters (``STRATEGIES.entry(name)``)."""


def register_strategy(
    name: str, description: str | None = None
) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make ``create_strategy(name, ...)`` build this class. The
    description (one line; default: the docstring's first sentence) and the parameters
    (the keyword arguments of ``__init__``, with their defaults) are what ``multikd list``
    shows. A name registered twice is a :class:`~multikd.errors.StrategyError`."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        STRATEGIES.add(name, cls, description)
        cls.name = name
        return cls

    return decorate


def list_strategies() -> list[str]:
    """Registered strategy names."""
    return sorted(STRATEGIES)


def create_strategy(name: str, **params) -> Strategy:
    """Build strategy ``name`` with keyword ``params`` (errors list the valid choices)."""
    return STRATEGIES.check_params(name, params).target(**params)


REFERENCE_LOSS_DEFAULTS = {
    "teacher_reduction": "sum",
    "feature_weights": "strategy",
    "adapter": "conv1x1",
    "feature_stage": -1,
    "feature_start_epoch": 1,
}
"""What ``loss.<key>: reference`` means for a strategy whose source sets nothing else."""


def reference_loss(name: str) -> dict:
    """:meth:`Strategy.reference_loss` of the strategy registered as ``name``."""
    return STRATEGIES.entry(name).target.reference_loss()


def check_finite(
    ce: torch.Tensor, logits: torch.Tensor, names: Sequence[str] | None = None
) -> None:
    """Raise :class:`~multikd.errors.TrainingError` naming every teacher whose CE ``[K,B]``
    or logits ``[K,B,C]`` hold NaN or inf (one host sync)."""
    bad = ~(torch.isfinite(ce).flatten(1).all(1) & torch.isfinite(logits).flatten(1).all(1))
    if bool(bad.any()):
        rows = [k for k, b in enumerate(bad.tolist()) if b]
        who = ", ".join(repr(names[k]) if names is not None else f"#{k}" for k in rows)
        raise TrainingError(
            f"teacher {who} produced NaN or infinite logits or cross-entropy on this batch. "
            "Check that its checkpoint loaded correctly and is not corrupt; under --amp, "
            "half precision may overflow: try without it"
        )



# --------------------------------------------------------------------------- shared rules
def uniform_selection(ce: torch.Tensor) -> Selection:
    """``w_ki = 1/K``, everyone kept (uniform, fitnet-mkd)."""
    k = ce.shape[0]
    return Selection(torch.full_like(ce, 1.0 / k), torch.ones_like(ce, dtype=torch.bool))


def score_of(ce: torch.Tensor, granularity: str) -> torch.Tensor:
    """``[K,1]`` batch-mean CE (``granularity="batch"``) or ``[K,B]`` per-sample CE."""
    return ce.mean(1, keepdim=True) if granularity == "batch" else ce


def best_mask(score: torch.Tensor) -> torch.Tensor:
    """``[K,G]`` bool, True at the lowest score of each column (lower index on ties).
    A scatter: ``one_hot`` would read the indices' range on the host (on the CPU)."""
    best = score.argmin(0, keepdim=True)
    return torch.zeros_like(score, dtype=torch.bool).scatter_(0, best, True)


def _check_shapes(ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    if ce.dim() != 2 or logits.dim() != 3 or labels.dim() != 1 or logits.shape[:2] != ce.shape \
            or labels.shape[0] != ce.shape[1]:
        raise ValueError(
            "a strategy takes ce [K,B], logits [K,B,C] and labels [B]; got "
            f"{tuple(ce.shape)}, {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if ce.shape[0] == 0:
        raise StrategyError("a strategy needs at least one teacher, got K = 0")


# --------------------------------------------------------------------------- parameter checks
def check_float(strategy: str, name: str, value, allow_inf: bool = False) -> float:
    """``value`` as a float; a :class:`~multikd.errors.StrategyError` naming strategy and
    parameter unless it is a real number (not a bool), finite unless ``allow_inf``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StrategyError(f"strategy {strategy!r}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise StrategyError(f"strategy {strategy!r}: {name} must be finite, got {value}")
    return value


def check_positive_float(strategy: str, name: str, value) -> float:
    """A finite float > 0 (:func:`check_float`)."""
    value = check_float(strategy, name, value)
    if value <= 0:
        raise StrategyError(f"strategy {strategy!r}: {name} must be > 0, got {value}")
    return value


def check_int(strategy: str, name: str, value) -> int:
    """An integer (not a bool, not a float with an integral value)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StrategyError(f"strategy {strategy!r}: {name} must be an integer, got {value!r}")
    return int(value)


def check_positive_int(strategy: str, name: str, value) -> int:
    """An integer >= 1 (:func:`check_int`)."""
    value = check_int(strategy, name, value)
    if value < 1:
        raise StrategyError(f"strategy {strategy!r}: {name} must be >= 1, got {value}")
    return value


def check_bool(strategy: str, name: str, value) -> bool:
    """``True`` or ``False`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise StrategyError(f"strategy {strategy!r}: {name} must be true or false, got {value!r}")
    return value


def check_choice(strategy: str, name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise StrategyError(
            f"strategy {strategy!r}: {name} must be one of {', '.join(choices)}; got {value!r}"
        )
    return value
