"""Teacher-selection and weighting strategies: which teachers guide the student, how much.

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

Build one by name with :func:`create_strategy` (``list_strategies()`` shows the names;
``_`` and ``-`` are interchangeable, case is ignored). Unknown names or parameters, and
parameters of the wrong type, raise :class:`~multikd.errors.StrategyError` listing what is
accepted.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from multikd.errors import StrategyError, TrainingError
from multikd.method.losses import upcast

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
    needs_labels = ""
    """Why the strategy cannot run without any labelled sample (empty: it can; on
    unlabelled samples the distiller hands CE-based strategies a label-free stand-in for the
    teachers' CE, ``loss.unlabeled_ce``)."""
    learns = False
    """True for strategies with networks and an optimizer of their own
    (:class:`multikd.method.learned.LearnedStrategy`)."""
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


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make ``create_strategy(name, ...)`` build this class."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is registered twice")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


def list_strategies() -> list[str]:
    """Registered strategy names."""
    return sorted(STRATEGIES)


def create_strategy(name: str, **params) -> Strategy:
    """Build strategy ``name`` with keyword ``params`` (errors list the valid choices)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(list_strategies())}"
        )
    cls = STRATEGIES[key]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind in named and p.name != "self"
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = (
            f"accepted parameters: {', '.join(accepted)}" if accepted else "it takes no parameters"
        )
        raise StrategyError(
            f"strategy {key!r} got unknown parameter(s) {', '.join(unknown)}; {takes}"
        )
    return cls(**params)


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
    key = str(name).strip().lower().replace("_", "-")
    if key not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(list_strategies())}"
        )
    return STRATEGIES[key].reference_loss()


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


# --------------------------------------------------------------------------- strategies
@register_strategy("uniform")
class Uniform(Strategy):
    """Plain average of the teachers (AVER; You et al. 2017, "Learning from multiple
    teacher networks", KDD): ``w_ki = 1/K``. Everyone is kept.

    Equal to the ``AVERAGE_LOSS`` baseline of CA-MKD's public code (``helper/loops.py``,
    ``train_distill_multi_teacher``: ``torch.stack(loss_div_list).mean(0)``) under either
    ``loss.teacher_reduction``: its own weights are 1 each (mass K), so ``mean`` and
    ``sum`` coincide."""

    reference_weight_mass = staticmethod(lambda k: k)

    def _select(self, ce, logits, labels):
        k = ce.shape[0]
        return Selection(torch.full_like(ce, 1.0 / k), torch.ones_like(ce, dtype=torch.bool))


@register_strategy("fitnet-mkd")
class FitNetMKD(Uniform):
    """FitNet-MKD: FitNets hints (Romero et al., ICLR 2015) from every teacher, averaged,
    beside AVER's averaged KD, the baseline of CA-MKD's public code (``helper/loops.py``
    ``train_distill_multi_teacher`` with ``--distill hint --ensemble_method AVERAGE_LOSS``,
    ``scripts/run.sh``: ``-b 100``):

        L_hint = (1/K) sum_k mean_(i,e) (r_k(f_s)_ie - f_tk,ie)^2

    on the middle stage (``--hint_layer 2``: ``feature_names[2]``) through RepDistiller's
    ``ConvReg`` adapter (``models/util.py``): the ``reference`` of ``loss.feature_stage``
    and ``loss.adapter``; weights ``w_ki = 1/K`` as :class:`Uniform`, no hint in the first
    epoch (the loop's ``if epoch == 1``). Use it with ``loss.gamma`` > 0 (the reference's
    100).

    Deliberate deviation: the reference computes ``torch.mean(torch.tensor(
    loss_hint_list))``, and ``torch.tensor`` copies the values out of the graph, so its hint
    term is logged but trains nothing. multikd's hint trains the student and the adapters;
    ``loss.feature_grad: false`` gives the reference's detached form."""

    reference = {"adapter": "convreg", "feature_stage": 2, "feature_start_epoch": 2}


@register_strategy("ce-filter")
class CEFilter(Strategy):
    """CE screening and CE-ranked weighting: multikd's reading of Gu et al. 2023, "A
    multi-teacher knowledge distillation model compression algorithm for deep neural
    network" (teachers screened by the cross-entropy of their predictions, the better ones
    guide the student with a larger say; the paper's exact rule is not public).

    Score s_k: the batch-mean CE of teacher k (``granularity="batch"``, one decision per
    batch, broadcast over its samples) or its per-sample CE_ki (``"sample"``). Survivors:

    - ``margin`` m (default, m = 0.0): keep k iff s_k <= mean_j s_j + m;
    - ``keep`` n (instead of margin): keep the n lowest scores (ties: lower index first);

    and the best teacher (lowest score, lower index on ties) is always kept, so the
    filter can never drop everyone. Weights: softmax over the survivors with temperature
    ``tau`` > 0 (default 1.0), ``w_k = kept_k exp(-s_k/tau) / sum_j kept_j exp(-s_j/tau)``.
    ``margin=inf`` keeps all teachers (pure CE-softmax weighting); tau -> 0 tends to
    ``best``, tau -> inf to uniform over the survivors.
    """

    def __init__(
        self,
        margin: float | None = None,
        keep: int | None = None,
        tau: float = 1.0,
        granularity: str = "batch",
    ):
        if margin is not None and keep is not None:
            raise StrategyError(
                "ce-filter takes either margin (drop teachers whose CE exceeds the mean by "
                "more than margin) or keep (keep the best n teachers), not both"
            )
        self.keep = None if keep is None else _positive_int("ce-filter", "keep", keep)
        self.margin = None if self.keep is not None else _float(
            "ce-filter", "margin", 0.0 if margin is None else margin, allow_inf=True
        )
        self.tau = _positive_float("ce-filter", "tau", tau)
        self.granularity = _choice("ce-filter", "granularity", granularity, GRANULARITIES)

    def _select(self, ce, logits, labels):
        score = _score(ce, self.granularity)
        if self.keep is not None:
            rank = torch.argsort(torch.argsort(score, dim=0, stable=True), dim=0)
            kept = rank < self.keep
        else:
            kept = score <= score.mean(0, keepdim=True) + self.margin
        kept = kept | _best_mask(score)
        weights = torch.softmax((-score / self.tau).masked_fill(~kept, -math.inf), dim=0)
        return Selection(weights.expand_as(ce), kept.expand_as(ce))


@register_strategy("ca-mkd")
class ConfidenceAware(Strategy):
    """Confidence-aware weights (Zhang, Chen & Wang, "Confidence-aware multi-teacher
    knowledge distillation", ICASSP 2022): per sample,

        w_ki = (1 - softmax_k(CE_ki)) / (K - 1)

    so a teacher more confident in the true label weighs more; the K terms 1 - softmax
    sum to K - 1, hence each column sums to 1. A single teacher gets weight 1.

    Reference: CA-MKD's public code (github.com/Rorozhl/CA-MKD), ``helper/loops.py``
    ``train_distill_multi_teacher``, branch ``CAMKD``: ``attention = (1 - softmax(loss_t,
    dim=0)) / (teacher_num - 1)`` on per-sample teacher CE, and ``loss_div = (attention *
    loss_div).sum() / (bsz * teacher_num)``: the weighted sum over teachers is divided by
    K, the ``loss.teacher_reduction: mean`` that ``reference`` resolves to here (``sum``
    gives K times that distillation weight). With features (``loss.gamma`` > 0) the
    reference (``distiller_zoo/CAMKD.py`` ``CAMKD.forward``, ``models/util.py``
    ``CalWeight``) weights teacher k's feature MSE not by these weights but by
    ``(1 - softmax_k CE(head_k(embed_k(f_s)), y)) / (K - 1)``, the CE of teacher k's own
    classifier head on the adapted student feature, gradient included
    (``loss.feature_weights: teacher-head``), with an ``embed`` adapter (1x1 conv + BN +
    ReLU), the features of the last stage, the same ``/ (B K)`` reduction, and no feature
    term in the first epoch (``if epoch == 1``); all of these are its ``reference``."""

    reference = {
        "teacher_reduction": "mean",
        "feature_weights": "teacher-head",
        "adapter": "embed",
        "feature_start_epoch": 2,
    }

    def _select(self, ce, logits, labels):
        k = ce.shape[0]
        kept = torch.ones_like(ce, dtype=torch.bool)
        if k == 1:
            return Selection(torch.ones_like(ce), kept)
        return Selection((1.0 - torch.softmax(ce, dim=0)) / (k - 1), kept)


@register_strategy("ebkd")
class EntropyBased(Strategy):
    """Entropy-based weights (EBKD; Kwon et al., "Adaptive knowledge distillation based on
    entropy", ICASSP 2020): a more certain teacher gets a larger weight. The form is the
    one the field's comparisons run, the EBKD baseline in the public code of CA-MKD (Zhang
    et al., ICASSP 2022), whose results Gu et al. 2023 compare against: per sample the
    prediction entropy ``H_ki = -sum_c p_kic log p_kic`` with ``p = softmax(logits)``
    (T = 1), and

        w_ki = (1 - H_ki / sum_j H_ji) / (K - 1)

    That code uses ``1 - H_ki / sum_j H_ji`` (summing to K - 1) and divides every
    strategy's summed loss by K; the 1 / (K - 1) here makes the weights sum to 1 like every
    strategy's, so strategies differ only in how they share the weight. One teacher gets
    weight 1; where every teacher is certain (``sum_j H_ji = 0``) the weights are 1 / K.
    Labels are not used. Everyone is kept.

    ``loss.teacher_reduction: reference`` is that code's ``mean``: ``loss_div =
    (weight * loss_div).sum() / (bsz * teacher_num)`` on its own weights, which sum to
    K - 1 (``helper/loops.py`` ``train_distill_multi_teacher``, branch ``EBKD``), i.e.
    (K - 1) / K times the ``sum`` form on the weights above."""

    reference = {"teacher_reduction": "mean"}
    reference_weight_mass = staticmethod(lambda k: k - 1)

    def _select(self, ce, logits, labels):
        k = ce.shape[0]
        kept = torch.ones_like(ce, dtype=torch.bool)
        if k == 1:
            return Selection(torch.ones_like(ce), kept)
        entropy = torch.special.entr(torch.softmax(upcast(logits), dim=-1)).sum(-1)  # [K,B]
        total = entropy.sum(0, keepdim=True)
        share = torch.where(total > 0, entropy / total, 1.0 / k)
        return Selection((1.0 - share) / (k - 1), kept)


@register_strategy("best")
class Best(Strategy):
    """All weight on the single best teacher: ``w_ki = 1`` iff k = argmin_j s_j (lower
    index on ties), with s the batch-mean CE (``granularity="batch"``, default) or the
    per-sample CE (``"sample"``). A selection baseline defined by multikd: ce-filter
    with ``keep=1`` (equivalently tau -> 0), so the effect of weighting several survivors
    can be measured against choosing one."""

    def __init__(self, granularity: str = "batch"):
        self.granularity = _choice("best", "granularity", granularity, GRANULARITIES)

    def _select(self, ce, logits, labels):
        best = _best_mask(_score(ce, self.granularity)).expand_as(ce)
        return Selection(best.to(ce.dtype), best)


@register_strategy("correct-only")
class CorrectOnly(Strategy):
    """Uniform over the teachers whose top-1 prediction is the label, per sample:

        w_ki = c_ki / sum_j c_ji,  c_ki = [argmax_c logits_kic == y_i]

    and, for a sample that no teacher gets right, all weight on the teacher with the
    lowest CE on it. A label-filtering baseline defined by multikd: the hard-decision
    counterpart of ca-mkd's confidence weighting (Zhang et al. 2022), which also uses the
    labels to judge teachers."""

    def _select(self, ce, logits, labels):
        correct = logits.argmax(-1) == labels.unsqueeze(0)
        kept = torch.where(correct.any(0, keepdim=True), correct, _best_mask(ce))
        weights = kept.to(ce.dtype)
        return Selection(weights / weights.sum(0, keepdim=True), kept)


@register_strategy("random")
class RandomTeacher(Strategy):
    """One teacher per batch, drawn uniformly: ``w_ki = 1`` iff k = k*, k* ~ U{0..K-1} from
    a generator seeded with ``seed`` (stochastic teacher selection, as in Fukuda et al.
    2017, "Efficient knowledge distillation from an ensemble of teachers"). The generator
    lives on the CPU (no device sync) and its state is saved by :meth:`state_dict`."""

    def __init__(self, seed: int = 0):
        self.seed = _int("random", "seed", seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def _select(self, ce, logits, labels):
        # the draw stays a 0-dim CPU tensor, which the comparison takes as a scalar kernel
        # argument: int(draw) would be a host read (of a CPU tensor, so no GPU sync, but a
        # read that a CPU-only check of the step could not tell from a real one)
        draw = torch.randint(ce.shape[0], (), generator=self._generator)
        chosen = (torch.arange(ce.shape[0], device=ce.device) == draw).unsqueeze(1)
        chosen = chosen.expand_as(ce)
        return Selection(chosen.to(ce.dtype), chosen)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"generator"}:
            raise StrategyError(
                f"strategy 'random' expects a state with the key 'generator', got {sorted(state)}"
            )
        self._generator.set_state(state["generator"].to(device="cpu", dtype=torch.uint8))


@register_strategy("fixed")
class Fixed(Strategy):
    """Weights given by the user, the same for every sample: ``w_k = v_k / sum_j v_j``
    for ``weights`` v (one non-negative number per teacher, in the ensemble's order, not
    all zero). A teacher with weight 0 is not kept. The static weighted average of
    teachers (You et al. 2017 average with equal weights; this generalises it to weights
    chosen by hand, e.g. proportional to each teacher's validation accuracy)."""

    def __init__(self, weights: Sequence[float] | None = None):
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise StrategyError(
                "strategy 'fixed' needs weights: a list of non-negative numbers, one per "
                f"teacher (e.g. weights=[0.5, 0.3, 0.2]); got {weights!r}"
            )
        values = [_float("fixed", "weights", v) for v in weights]
        if not values or any(v < 0 for v in values) or sum(values) <= 0:
            raise StrategyError(
                f"strategy 'fixed' needs non-negative weights that are not all zero; got {values}"
            )
        self.weights_given = values
        self._column: torch.Tensor | None = None
        self._kept: torch.Tensor | None = None

    def _select(self, ce, logits, labels):
        if len(self.weights_given) != ce.shape[0]:
            raise StrategyError(
                f"strategy 'fixed' has {len(self.weights_given)} weights but there are "
                f"{ce.shape[0]} teachers; give one weight per teacher"
            )
        if (self._column is None or self._column.device != ce.device
                or self._column.dtype != ce.dtype):
            # built once per device: a host-to-device copy every step would wait for the device
            v = torch.tensor(self.weights_given, dtype=ce.dtype).unsqueeze(1)
            self._column = (v / v.sum()).to(ce.device)
            self._kept = self._column > 0
        return Selection(self._column.expand_as(ce), self._kept.expand_as(ce))


# --------------------------------------------------------------------------- helpers
def _score(ce: torch.Tensor, granularity: str) -> torch.Tensor:
    """``[K,1]`` batch-mean CE or ``[K,B]`` per-sample CE."""
    return ce.mean(1, keepdim=True) if granularity == "batch" else ce


def _best_mask(score: torch.Tensor) -> torch.Tensor:
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


def _float(strategy: str, name: str, value, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StrategyError(f"strategy {strategy!r}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise StrategyError(f"strategy {strategy!r}: {name} must be finite, got {value}")
    return value


def _positive_float(strategy: str, name: str, value) -> float:
    value = _float(strategy, name, value)
    if value <= 0:
        raise StrategyError(f"strategy {strategy!r}: {name} must be > 0, got {value}")
    return value


def _int(strategy: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StrategyError(f"strategy {strategy!r}: {name} must be an integer, got {value!r}")
    return int(value)


def _positive_int(strategy: str, name: str, value) -> int:
    value = _int(strategy, name, value)
    if value < 1:
        raise StrategyError(f"strategy {strategy!r}: {name} must be >= 1, got {value}")
    return value


def _choice(strategy: str, name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise StrategyError(
            f"strategy {strategy!r}: {name} must be one of {', '.join(choices)}; got {value!r}"
        )
    return value


from multikd.method import aekd  # noqa: E402,F401  (registers "aekd")
from multikd.method import mtkd_rl  # noqa: E402,F401  (registers "mtkd-rl")
from multikd.method import mmkd  # noqa: E402,F401  (registers "mmkd")
