"""The loss of a distillation run as one value: :class:`LossSpec`.

A run's ``loss`` section (``multikd.train.config.RunConfig.loss``, YAML ``loss:``) *is* this
dataclass, and :class:`~multikd.method.distiller.MultiTeacherDistiller` receives it whole,
so an option is written once: one field here (default, doc, and for a choice the function
that lists its values) and the code that reads it. Every choice list comes from where the
choice is implemented: the logit-loss, feature-loss and adapter registries, the distiller's
own option lists below, and :data:`~multikd.method.label_spaces.LABEL_MERGES`; a name
registered later (a test's, a plugin's) counts. :meth:`LossSpec.check` validates a spec in
one place, for the config reader and the distiller alike.

No torch at import: reading a config file stays torch-free; the registries are imported
only when a choice is checked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Optional

from multikd.errors import ConfigError

REFERENCE = "reference"
"""The value of an option that takes the strategy's (``Strategy.reference``)."""
FEATURE_WEIGHTS = ("strategy", "uniform", "teacher-head")
UNLABELED_CE = ("entropy", "labeled")
TEACHER_REDUCTIONS = ("sum", "mean")
TAPS = ("stages", "repdistiller")


def choices(key: str) -> tuple[str, ...]:
    """The values ``loss.<key>`` may take, read now from the method layer (registries are
    imported here, not at module import, so a spec is built and read without torch)."""
    from multikd.method.adapters import ADAPTER_REGISTRY
    from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY
    from multikd.method.label_spaces import LABEL_MERGES
    from multikd.method.logit_losses import LOGIT_LOSS_REGISTRY

    return {
        "logit_loss": LOGIT_LOSS_REGISTRY.names(),
        "feature_loss": FEATURE_LOSS_REGISTRY.names(),
        "adapter": (REFERENCE, *ADAPTER_REGISTRY.names()),
        "teacher_reduction": (REFERENCE, *TEACHER_REDUCTIONS),
        "feature_weights": (REFERENCE, *FEATURE_WEIGHTS),
        "taps": TAPS,
        "unlabeled_ce": UNLABELED_CE,
        "label_merge": LABEL_MERGES,
    }[key]


def _choice(default, doc: str, *, key: str):
    """A field whose value is one of :func:`choices` ``(key)`` (checked when read)."""
    return field(default=default,
                 metadata={"choices": functools.partial(choices, key), "doc": doc})


def documented(default, doc: str):
    """A dataclass field with its one-line ``doc`` (shown by ``--show-config`` and the
    config checks); a list or dict default is copied for every instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})



@dataclass
class LossSpec:
    """The loss of a distillation run. ``reference`` (and null for the two numbers) takes the
    value of the strategy's public code (``Strategy.reference``; resolved and recorded in
    config.yaml), e.g. ``ca-mkd`` gets CA-MKD's reduction, feature weights, adapter and
    epoch-1 rule."""

    alpha: float = documented(1.0, "weight of the hard-label cross-entropy")
    beta: float = documented(1.0, "weight of the weighted multi-teacher logit loss")
    gamma: float = documented(0.0, "weight of the feature loss (0: logits only)")
    unlabeled_ce: str = _choice(
        "entropy",
        "what strategies that judge teachers by their CE against the label read on an "
        "unlabelled sample: entropy (the teacher's prediction entropy, its CE against its own "
        "distribution) or labeled (the teacher's mean CE over the batch's labelled samples)",
        key="unlabeled_ce",
    )
    label_merge: str = _choice(
        "restricted",
        "teachers of part of the classes (teachers[].classes): restricted (each teacher "
        "against the student's distribution on its classes, renormalised; Vongkulbhisal et "
        "al. 2019) or concat (their logits side by side as one teacher: the naive baseline)",
        key="label_merge",
    )
    temperature: float = documented(4.0, "softmax temperature T of the KD term")
    logit_loss: str = _choice(
        "kd",
        "per-teacher logit loss: kd (Hinton), mse (Caruana), dkd (Zhao 2022), dist (Huang "
        "2022), or any registered one (multikd list logit-losses)",
        key="logit_loss",
    )
    logit_params: dict = documented(
        {}, "the logit loss's own parameters (dkd: alpha, beta, warmup; dist: beta, gamma, tau)"
    )
    logit_standardize: bool = documented(
        False, "z-score student and teacher logits before the logit loss (Sun et al. 2024)"
    )
    teacher_reduction: str = _choice(
        "reference",
        "sum: mean_i sum_k w_ki l_ki; mean: the source's sum_ik w_ik l_ik / (B K) on its own "
        "weights; reference: the strategy's (ca-mkd, ebkd: mean; others: sum)",
        key="teacher_reduction",
    )
    feature_loss: str = _choice(
        "mse",
        "feature loss between adapted student and teacher maps: mse (FitNets' hint), or any "
        "registered one (multikd list feature-losses)",
        key="feature_loss",
    )
    feature_params: dict = documented({}, "the feature loss's own parameters (mse: none)")
    student_feature: Optional[str] = documented(
        None, "student module tapped for the feature loss (default: stage loss.feature_stage)"
    )
    teacher_features: Optional[list[str]] = documented(
        None, "module tapped per teacher (default: each one's stage loss.feature_stage)"
    )
    feature_stage: Optional[int] = documented(
        None, "stage index into feature_names tapped on both sides (null: the strategy's "
        "reference, -1 = last; fitnet-mkd: 2)"
    )
    taps: str = _choice(
        "stages",
        "stage list: the zoo's stage outputs, or RepDistiller's taps (WRN: before the last BN+ReLU)",
        key="taps",
    )
    feature_weights: str = _choice(
        "reference",
        "feature-loss weights: the strategy's, 1/K each, or CA-MKD's teacher-head CE on the "
        "adapted student feature (reference: ca-mkd teacher-head, others strategy)",
        key="feature_weights",
    )
    adapter: str = _choice(
        "reference",
        "feature adapter: 1x1 conv+BN, CA-MKD's embed (1x1 conv+BN+ReLU), FitNet's convreg, "
        "MMKD's embed that pools the larger map, or any registered one (multikd list "
        "adapters) (reference: ca-mkd and mtkd-rl embed, fitnet-mkd convreg, mmkd mmkd, "
        "others conv1x1)",
        key="adapter",
    )
    adapter_relu: bool = documented(False, "ReLU after the conv1x1 adapter's BN")
    feature_start_epoch: Optional[int] = documented(
        None, "first epoch with the feature term (null: the strategy's reference; ca-mkd and "
        "fitnet-mkd: 2, as CA-MKD's loop; others 1)"
    )
    feature_grad: bool = documented(
        True, "false: the feature loss is logged but trains nothing (CA-MKD's FitNet-MKD)"
    )

    def use_reference(self, reference: dict) -> None:
        """Replace ``reference`` / null settings by ``reference``'s values
        (``Strategy.reference_loss()``), in place. CA-MKD's reference feature weights
        (``teacher-head``, its heads on the adapted student feature) become ``strategy``
        with a feature loss that has no adapters (a feature module: AT, CRD...)."""
        from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY, is_hint

        for key, value in reference.items():
            if getattr(self, key) in (REFERENCE, None):
                if (key == "feature_weights" and value == "teacher-head"
                        and self.feature_loss in FEATURE_LOSS_REGISTRY
                        and not is_hint(self.feature_loss)):
                    value = "strategy"
                setattr(self, key, value)

    def resolved(self, reference: dict) -> "LossSpec":
        """A copy with :meth:`use_reference` applied (this spec is left as it is)."""
        spec = dataclasses.replace(self, logit_params=dict(self.logit_params),
                                   feature_params=dict(self.feature_params))
        spec.use_reference(reference)
        return spec

    def check(self) -> None:
        """Raise a :class:`~multikd.errors.ConfigError` for the first invalid setting: a
        weight that is not a finite number >= 0, a temperature <= 0, or a choice that is
        not one of :func:`choices` (every choice field, read from its registry)."""
        for name in ("alpha", "beta", "gamma", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        for name in choice_fields():
            valid, value = choices(name), getattr(self, name)
            if value not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def choice_fields() -> tuple[str, ...]:
    """The names of the :class:`LossSpec` fields whose value is one of :func:`choices`."""
    return tuple(f.name for f in dataclasses.fields(LossSpec) if "choices" in f.metadata)
