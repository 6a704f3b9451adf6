"""The feature-loss registry and the two shapes a feature loss takes.

A feature loss compares, for one teacher, the student's maps with that teacher's maps and
gives one value per sample ``[B]`` (or one per batch, see ``per_sample``). It is one of:

- a **hint loss**, a function ``loss(student, teacher, **params) -> [B]``: ``student[s]``
  is the student's map at stage s *through the teacher's adapter*
  (:mod:`multikd.method.adapters`), ``teacher[s]`` the teacher's map at the same stage as
  the adapter compares it (``FeatureAdapter.target``). The distiller taps one stage
  (``loss.feature_stage``); today's ``mse`` (FitNets' hint) is one.
- a **feature module**, a :class:`FeatureLoss` subclass: an ``nn.Module`` built once per
  teacher, owning what it trains besides the student (VID's regressors, OFD's connectors,
  CRD's embeddings and memory bank, ReviewKD's fusion modules), which reads the maps it
  names in ``reads`` (:data:`READS`: every stage, the last, the pooled vector, the
  pre-ReLU maps...) on both sides, unadapted. The distiller trains its parameters with the
  student and saves its state (buffers included) in the checkpoint.

Either way the distiller runs the loss for every teacher, giving ``[K,B]``, and weights it
``mean_i sum_k v_ki l_ki`` (:func:`multikd.method.losses.weighted_teacher_mean`) with the
strategy's feature weights. A loss defined on the whole batch (``per_sample = False``: SP,
RKD, CRD's contrast) returns one value, which counts for every sample: its weight is then
the batch mean of ``v_k``, ``sum_k mean_i(v_ki) l_k``.

A new loss is a function or a class registered with ``@register_feature_loss("name",
"one-line description")``; its keyword parameters with their defaults (a class's
``__init__`` after the shapes) are its parameters (``loss.feature_params``), and
``loss.feature_loss: name`` selects it. Losses compute in float32 for half-precision input
(:func:`~multikd.method.precision.upcast`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from multikd.errors import ConfigError
from multikd.method.registry import Registry

Shape = tuple[int, ...]

FEATURE_LOSS_REGISTRY = Registry(
    "feature loss", "feature losses", ConfigError,
    skip=("student", "teacher", "student_shapes", "teacher_shapes"),
)
"""The feature-loss registry: name -> a hint function or a :class:`FeatureLoss` class."""

READS = {
    "hint": "one stage (loss.feature_stage), the student's through the teacher's adapter",
    "stages": "every stage output but the stem's (mdistiller's feats[1:])",
    "last": "the last stage output (mdistiller's feats[-1])",
    "pooled": "the pooled vector the classifier reads (mdistiller's pooled_feat)",
    "preact": "every stage's output before its last ReLU but the stem's "
              "(mdistiller's preact_feats[1:])",
    "stages+pooled": "every stage output but the stem's, then the pooled vector as a 1x1 map "
                     "(ReviewKD's inputs)",
    "preact+pooled": "every stage's pre-ReLU map but the stem's, then the pooled vector "
                     "(ReviewKD's targets)",
}
"""What a feature loss may read (its ``reads``), each a list of maps per model."""


@dataclass(frozen=True)
class FeatureBatch:
    """What a feature module may read besides the maps: the labels ``y [B]``, each
    sample's index in the training set ``index [B]`` (None unless the loss sets
    ``needs_index``) and the 1-based epoch (a warm-up)."""

    y: torch.Tensor
    index: torch.Tensor | None = None
    epoch: int = 1


@dataclass(frozen=True)
class FeatureSetup:
    """What a feature module is built from, for one teacher: both models (a loss may read a
    teacher's BatchNorm), the per-sample shapes of the maps it reads on each side, and the
    training set's labels (CRD samples its negatives by class; None where unknown)."""

    student: nn.Module
    teacher: nn.Module
    student_shapes: list[Shape]
    teacher_shapes: list[Shape]
    train_labels: torch.Tensor | None = None


class FeatureLoss(nn.Module):
    """A feature loss with state, one instance per teacher (see the module doc).

    Subclasses set ``reads`` (a key of :data:`READS`; ``teacher_reads`` where the teacher's
    side differs, e.g. ReviewKD's pre-ReLU targets), ``per_sample`` (False: ``forward``
    returns one value for the batch), ``needs_index`` (the batch's training-set indices)
    ``stateful`` (its forward changes its own state in training: CRD's memory bank) and
    ``reference_gamma`` (the loss weight of its reference recipe, the γ to use), and
    implement :meth:`forward`. ``__init__(student_shapes, teacher_shapes, **params)``
    builds the modules; :meth:`build` is where a loss reads more of its :class:`FeatureSetup`.
    """

    reads: ClassVar[str] = "stages"
    teacher_reads: ClassVar[str | None] = None
    per_sample: ClassVar[bool] = True
    needs_index: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    reference_gamma: ClassVar[float | None] = None

    def __init__(self, student_shapes: Sequence[Shape], teacher_shapes: Sequence[Shape]):
        super().__init__()
        self.student_shapes = [tuple(s) for s in student_shapes]
        self.teacher_shapes = [tuple(s) for s in teacher_shapes]

    @classmethod
    def build(cls, setup: FeatureSetup, **params) -> "FeatureLoss":
        """The module for one teacher (default: ``cls(shapes..., **params)``)."""
        return cls(setup.student_shapes, setup.teacher_shapes, **params)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor],
                batch: FeatureBatch) -> torch.Tensor:
        """``[B]`` (or a scalar when not ``per_sample``) from the student's maps and the
        teacher's (``reads``, in order; the teacher's detached)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"reads={self.reads}, per_sample={self.per_sample}"


def register_feature_loss(name: str, description: str | None = None, *,
                          params: Mapping[str, object] | None = None) -> Callable:
    """Decorator: register a hint function or a :class:`FeatureLoss` subclass (module doc)
    as ``name``. ``params`` (default: the keyword parameters and their defaults) are what
    ``loss.feature_params`` may set; the entry's ``info`` records ``reads``,
    ``per_sample``, ``needs_index`` and ``reference_gamma``. A name registered twice is a
    :class:`~multikd.errors.ConfigError`; so is a class that is not a FeatureLoss or
    names an unknown ``reads``."""

    def decorate(target):
        if inspect.isclass(target):
            if not issubclass(target, FeatureLoss):
                raise ConfigError(
                    f"feature loss {name!r}: {target.__qualname__} is a class but not a "
                    "multikd.method.feature_losses.FeatureLoss subclass; register a "
                    "FeatureLoss or a function loss(student, teacher, **params) -> [B]"
                )
            teacher_reads = target.teacher_reads or target.reads
            for reads in (target.reads, teacher_reads):
                if reads not in READS or reads == "hint":
                    raise ConfigError(
                        f"feature loss {name!r} reads {reads!r}; a FeatureLoss reads one "
                        f"of {', '.join(r for r in READS if r != 'hint')}"
                    )
            info = dict(reads=target.reads, teacher_reads=teacher_reads,
                        per_sample=target.per_sample, stateful=target.stateful,
                        needs_index=target.needs_index, reference_gamma=target.reference_gamma)
        else:
            info = dict(reads="hint", teacher_reads="hint", per_sample=True, needs_index=False,
                        stateful=False, reference_gamma=None)
        FEATURE_LOSS_REGISTRY.add(name, target, description, params=params, **info)
        return target

    return decorate


def loss_info(name: str) -> Mapping[str, object]:
    """The registry's facts about feature loss ``name`` (``reads``, ``per_sample``...)."""
    return FEATURE_LOSS_REGISTRY.entry(name).info


def is_hint(name: str) -> bool:
    """Whether ``name`` is a hint loss (read through the adapters at one stage)."""
    return loss_info(name)["reads"] == "hint"


def tap_names(model: nn.Module, reads: str, role: str) -> list[str]:
    """The module names to tap on ``model`` for a loss that ``reads`` (not ``hint``): from
    its ``feature_names``, ``pooled_feature_name`` and ``preact_feature_names`` (the
    zoo's model contract, :mod:`multikd.models.registry`)."""
    stages = list(getattr(model, "feature_names", None) or ())
    pooled = getattr(model, "pooled_feature_name", None)
    if reads in ("preact", "preact+pooled"):
        preact = list(getattr(model, "preact_feature_names", None) or ())
        if not preact:
            raise ConfigError(
                f"the {role} ({type(model).__name__}) does not list its pre-ReLU stage maps "
                "(model.preact_feature_names), which this feature loss reads; the CIFAR zoo's "
                "models do"
            )
        if reads == "preact+pooled":
            if not pooled:
                raise ConfigError(
                    f"the {role} ({type(model).__name__}) does not name its pooled feature "
                    "(model.pooled_feature_name), which this feature loss reads"
                )
            return [*preact[1:], pooled]
        return preact[1:]
    if reads in ("stages", "last", "stages+pooled") and len(stages) < 2:
        raise ConfigError(
            f"the {role} ({type(model).__name__}) lists {len(stages)} stage features "
            "(model.feature_names); this feature loss needs the stem and at least one stage"
        )
    if reads in ("pooled", "stages+pooled") and not pooled:
        raise ConfigError(
            f"the {role} ({type(model).__name__}) does not name its pooled feature "
            "(model.pooled_feature_name), which this feature loss reads"
        )
    return {
        "stages": stages[1:], "last": stages[-1:], "pooled": [pooled],
        "stages+pooled": [*stages[1:], pooled],
    }[reads]


def run_per_teacher(modules: Sequence[FeatureLoss], student: Sequence[torch.Tensor],
                    teachers: Sequence[Sequence[torch.Tensor]], batch: FeatureBatch) -> torch.Tensor:
    """``[K,B]``: feature module k on the student's maps and teacher k's; a per-batch
    loss's one value counts for every sample (module doc)."""
    b = batch.y.shape[0]
    rows = []
    for k, (module, maps) in enumerate(zip(modules, teachers)):
        value = module(list(student), [m.detach() for m in maps], batch)
        if module.per_sample:
            if value.shape != (b,):
                raise ValueError(
                    f"feature loss {type(module).__name__} is per sample but gave shape "
                    f"{tuple(value.shape)} for teacher {k}, not [{b}]"
                )
        else:
            if value.dim() != 0:
                raise ValueError(
                    f"feature loss {type(module).__name__} is per batch but gave shape "
                    f"{tuple(value.shape)} for teacher {k}, not a scalar"
                )
            value = value.expand(b)
        rows.append(value)
    return torch.stack(rows)


def feature_loss_per_teacher(
    adapted: Sequence[torch.Tensor | Sequence[torch.Tensor]],
    teacher_features: Sequence[torch.Tensor | Sequence[torch.Tensor]],
    name: str = "mse",
    params: Mapping[str, object] | None = None,
) -> torch.Tensor:
    """``[K,B]``: hint loss ``name`` (default the FitNets hint, ``mse``) of the student
    against each teacher. ``adapted[k]`` is the student's map adapted to teacher k (or one
    map per stage), shaped like ``teacher_features[k]``; ``params`` the loss's own
    parameters. The result stays on the autograd graph of ``adapted``. An unknown name or
    parameter raises :class:`~multikd.errors.ConfigError` listing the valid ones; maps of
    different shapes a ``ValueError``."""
    params = dict(params or {})
    entry = FEATURE_LOSS_REGISTRY.check_params(name, params)
    if entry.info.get("reads") != "hint":
        raise ConfigError(
            f"feature loss {name!r} is a feature module (it reads {entry.info.get('reads')}), "
            "not a hint loss on adapted maps; the distiller builds it per teacher"
        )
    per_teacher = []
    for k, (a, t) in enumerate(zip(adapted, teacher_features)):
        a, t = _stages(a), _stages(t)
        if len(a) != len(t):
            raise ValueError(
                f"the student has {len(a)} adapted maps for teacher {k} but the teacher has "
                f"{len(t)}: give one pair per stage"
            )
        for s, ts in zip(a, t):
            if s.shape != ts.shape:
                raise ValueError(
                    f"adapted student feature {tuple(s.shape)} does not match teacher {k}'s "
                    f"feature {tuple(ts.shape)}"
                )
        per_teacher.append(entry.target(a, t, **params))
    return torch.stack(per_teacher)


def _stages(maps: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One map as a list of one; a sequence of maps (one per stage) as a list."""
    return [maps] if isinstance(maps, torch.Tensor) else list(maps)


def pool_to_smaller(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger of two ``[B,C,H,W]`` maps average-pooled to the smaller's height (square),
    as mdistiller's AT, NST and VID match sizes (``adaptive_avg_pool2d(f, (H, H))``)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = torch.nn.functional.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = torch.nn.functional.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t
