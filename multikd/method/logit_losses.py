"""The field's single-teacher logit losses, per sample and per teacher, faithful to the
authors' public code: DKD, DIST and logit standardization (LS), next to Hinton KD and logit
MSE (which live in :mod:`multikd.method.losses` and are reused, not duplicated).

Shapes: student logits ``[B,C]``, teacher logits ``[K,B,C]`` (K teachers), labels ``[B]``
(int64 class indices). Each loss returns one value per teacher and sample, ``[K,B]``, so that
the multi-teacher form is ``mean_i sum_k w_ki * l_ki``
(:func:`multikd.method.losses.weighted_teacher_mean`); with K = 1 and w = 1 the batch mean is
the reference's single-teacher loss. Everything is computed in float32 (``.float()`` first,
also under autocast; float64 input stays float64 here, while ``kd``/``mse`` of
:mod:`~multikd.method.losses` always compute in float32) and without host syncs (no
``.item()``, ``bool(tensor)``, ``.tolist()``, no ``F.one_hot``, whose range check syncs on
CUDA): only Python-level shape and parameter checks run on the host.

The losses are a registry (:data:`LOGIT_LOSS_REGISTRY`): ``kd``, ``mse``, ``dkd``, ``dist``,
each with its parameters and their defaults, and a new one is a function registered with
``@register_logit_loss("name", "one-line description")``; ``loss.logit_loss`` is checked
against the registry, and :func:`logit_loss_per_teacher` calls a loss by name. Logit
standardization wraps any of them (:func:`standardized`).

References (the code these functions transcribe; read at mdistiller a08d46f, DIST_KD 2418f18
with its submodule pinned at image_classification_sota d9662f7 (``dist_kd.py`` identical at
6f7a70a), logit-standardization-KD f6e5aa5):

* DKD, Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation":
  ``megvii-research/mdistiller``, ``mdistiller/distillers/DKD.py`` (``dkd_loss``,
  ``_get_gt_mask``, ``_get_other_mask``, ``cat_mask``, ``DKD.forward_train``); defaults in
  ``mdistiller/engine/cfg.py`` (``CFG.DKD``: CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0, T 4.0,
  WARMUP 20) and ``configs/cifar100/dkd/*.yaml`` (BETA overridden per pair: 2.0 for
  res56->res20 and res110->res32, 6.0 for vgg13->vgg8, vgg13->mv2, wrn40_2->wrn16_2 and
  wrn40_2->wrn40_1, else 8.0; ImageNet uses BETA 0.5, T 1, WARMUP 1).
* DIST, Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher":
  ``hunto/DIST_KD`` points its loss to its ``classification`` submodule,
  ``hunto/image_classification_sota``, ``lib/models/losses/dist_kd.py``
  (``cosine_similarity``, ``pearson_correlation``, ``inter_class_relation``,
  ``intra_class_relation``, ``DIST(beta=1.0, gamma=1.0, tau=1.0)``). CIFAR-100 setting,
  ``configs/strategies/distill/dist_cifar.yaml``: ``kd: dist_t4`` -> ``DIST(beta=1,
  gamma=1, tau=4)`` (``lib/models/losses/kd_loss.py``), ``kd_loss_weight: 2``,
  ``ori_loss_weight: 1`` (CE). ImageNet (``resnet_dist.yaml``, ``dist_b2.yaml``): ``kd:
  dist`` = tau 1, loss weight 2. (``DIST_KD/segmentation/losses/dist_kd.py`` is an older
  copy without ``tau``.)
* Logit standardization, Sun et al., CVPR 2024, "Logit Standardization in Knowledge
  Distillation": ``sunshangquan/logit-standardization-KD``, ``normalize`` in
  ``mdistiller/distillers/KD.py`` and ``mdistiller/distillers/DKD.py``; ``tools/train.py``
  with ``--logit-stand --base-temp 2 --kd-weight 9`` (its argparse defaults) sets, for KD,
  ``KD.TEMPERATURE = base_temp`` (2) and ``KD.LOSS.KD_WEIGHT = kd_weight`` (9) with
  ``KD.LOSS.CE_WEIGHT`` 0.1 (its ``cfg.py``, whose KD defaults are also T 2 / KD 9 / CE 0.1,
  unlike mdistiller's T 4 / KD 0.9 / CE 0.1); for DKD, ``T = base_temp`` and ``ALPHA`` and
  ``BETA`` multiplied by ``kd_weight`` (CE weight stays 1.0). Its logs
  (``logs/KD/kd,TEACHER,STUDENT,BASE_TEMP,KD_WEIGHT.txt``) show per-pair tuning: KD base temp
  2-4 and KD weight 1-12 (mostly 2-3 and 9; resnet32x4->resnet8x4: 2, 9), DKD base temp 2-3
  and weight 9-18.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from multikd.errors import ConfigError
from multikd.method.losses import kd_loss, mse_logit_loss, upcast as _upcast
from multikd.method.registry import Registry

LOGIT_LOSS_REGISTRY = Registry(
    "logit loss", "logit losses", ConfigError, skip=("student", "teachers", "labels", "temperature")
)
"""The logit-loss registry: name -> ``loss(student [B,C], teachers [K,B,C], labels [B] or
None, temperature, **params) -> [K,B]``, with each loss's parameters and their defaults."""

WARMUP = "warmup"
"""A logit-loss parameter that is an epoch count: the caller multiplies the loss by
:func:`dkd_warmup_factor` (``min(epoch / warmup, 1)``); it is not passed to the loss."""


def register_logit_loss(name: str, description: str | None = None, *,
                        params: Mapping[str, float] | None = None,
                        needs_labels: bool = False) -> Callable:
    """Function decorator: register a per-teacher logit loss as ``name``, called as
    ``loss(student [B,C], teachers [K,B,C], labels [B] or None, temperature, **params)``
    and returning ``[K,B]``. ``params``: the loss's own parameters with the defaults the
    distiller uses (default: the function's keyword parameters after ``temperature``); a
    parameter ``warmup`` (:data:`WARMUP`) is the caller's. ``needs_labels``: the loss
    reads ``labels [B]`` (the dispatcher checks they are there). A name registered twice is
    a :class:`~multikd.errors.ConfigError`."""
    return LOGIT_LOSS_REGISTRY.register(name, description, params=params,
                                        needs_labels=bool(needs_labels))


# Added to the standard deviation, as in the LS reference's normalize.
_LS_EPS = 1e-7
# Added to the product of norms, as in the DIST reference's cosine_similarity.
_DIST_EPS = 1e-8
# DKD's NCKD masks the ground-truth class by subtracting this from its (scaled) logit.
_DKD_GT_OFFSET = 1000.0


def standardize_logits(z: torch.Tensor) -> torch.Tensor:
    """Z-score of the logits over the last (class) dimension, as logit standardization does:

        Z(z)_c = (z_c - mean(z)) / (1e-7 + std(z)),
        mean(z) = (1/C) sum_c z_c,  std(z) = sqrt( (1/(C-1)) sum_c (z_c - mean(z))^2 )

    Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation";
    ``sunshangquan/logit-standardization-KD``, ``mdistiller/distillers/KD.py``, ``normalize``
    (the same function is repeated in ``DKD.py``). Matched exactly: the std is torch's default
    *unbiased* estimator (Bessel's correction, divisor C-1, not the population std the paper's
    formula writes), and the epsilon 1e-7 is added to the std (outside the square root), not to
    the variance. The result is invariant to adding a constant to ``z`` and (up to the
    epsilon) to scaling ``z`` by a positive factor. With C = 1 the std is NaN, as in the
    reference. Computed in float32 for half-precision input (float64 stays float64).
    """
    z = _upcast(z)
    mean = z.mean(dim=-1, keepdim=True)
    stdv = z.std(dim=-1, keepdim=True)
    return (z - mean) / (_LS_EPS + stdv)


def standardized(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Logit standardization as a wrapper: ``loss`` on z-scored student and teacher logits
    (:func:`standardize_logits`), the same signature as a registered logit loss."""

    def on_z_scores(student, teachers, labels, temperature, **params):
        return loss(standardize_logits(student), standardize_logits(teachers), labels,
                    temperature, **params)

    return on_z_scores


@register_logit_loss("kd", "T^2 KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015)")
def kd_per_teacher(student: torch.Tensor, teachers: torch.Tensor, labels, temperature: float):
    """Hinton KD per teacher and sample (:func:`multikd.method.losses.kd_loss`)."""
    return kd_loss(student.unsqueeze(0), teachers, temperature, reduction="none")


@register_logit_loss("mse", "mean squared difference of the logits (Ba & Caruana 2014; T unused)")
def mse_per_teacher(student: torch.Tensor, teachers: torch.Tensor, labels, temperature: float):
    """Logit MSE per teacher and sample (:func:`multikd.method.losses.mse_logit_loss`)."""
    return mse_logit_loss(student.unsqueeze(0), teachers, reduction="none")


def _gt_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mdistiller ``_get_gt_mask``: boolean ``[B,C]``, True at each sample's label (built with
    ``scatter_``, not ``F.one_hot``, so that no range check syncs with the host)."""
    idx = labels.reshape(-1, 1).long()
    return torch.zeros_like(logits).scatter_(1, idx, 1).bool()


def _other_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mdistiller ``_get_other_mask``: boolean ``[B,C]``, False at each sample's label."""
    idx = labels.reshape(-1, 1).long()
    return torch.ones_like(logits).scatter_(1, idx, 0).bool()


def _cat_mask(t: torch.Tensor, mask1: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
    """mdistiller ``cat_mask``: ``[..., 2]`` with the masked sums ``(sum_c t*mask1,
    sum_c t*mask2)`` (multiplication by the mask, then a sum over all classes)."""
    t1 = (t * mask1).sum(dim=-1, keepdim=True)
    t2 = (t * mask2).sum(dim=-1, keepdim=True)
    return torch.cat([t1, t2], dim=-1)


@register_logit_loss(
    "dkd", "alpha TCKD + beta NCKD at temperature T (Zhao et al. 2022, mdistiller's dkd_loss)",
    params={"alpha": 1.0, "beta": 8.0, WARMUP: 20}, needs_labels=True,
)
def dkd_per_sample(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """Decoupled KD per sample (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"):

        p = softmax(t/T), q = softmax(s/T), y = label of the sample, \\ = all classes but y
        b^t = (p_y, sum_{c!=y} p_c),   b^s = (q_y, sum_{c!=y} q_c)        (binary, cat_mask)
        TCKD_i = T^2 * KL(b^t || b^s) = T^2 * sum_{j in {y, \\}} b^t_j (log b^t_j - log b^s_j)
        p~ = softmax(t/T - 1000*[c==y]),  log q~ = log_softmax(s/T - 1000*[c==y])
        NCKD_i = T^2 * KL(p~ || q~) = T^2 * sum_c p~_c (log p~_c - log q~_c)
        DKD_i  = alpha * TCKD_i + beta * NCKD_i

    Follows ``megvii-research/mdistiller``, ``mdistiller/distillers/DKD.py``, ``dkd_loss``
    (with ``_get_gt_mask``, ``_get_other_mask``, ``cat_mask``), step by step: the reference
    sums the elementwise ``F.kl_div`` over the whole batch (``size_average=False``) and
    divides by ``target.shape[0]``, so ``dkd_per_sample(...).mean()`` equals ``dkd_loss(...)``
    (up to float summation order). ``F.kl_div`` is used as in the reference, elementwise
    ``xlogy(p, p) - p * log q`` (a zero target contributes 0 where ``log q`` is finite).

    Oddities of the reference, matched:

    * NCKD does not renormalise over the non-target classes explicitly: it subtracts
      ``1000.0 * gt_mask`` from the *temperature-scaled* logits (after ``/T``) before the
      softmax, so the target class gets probability ~exp(-1000) = 0 and the other classes
      ``p_c / (1 - p_y)``. The gt term of the KL is then 0 * (finite) = 0. This is the exact
      NCKD only while the scaled logits span far less than 1000.
    * TCKD takes ``torch.log`` of the masked *sums of probabilities* (not a log-softmax), so
      a student probability that underflows to 0 gives an infinite loss, as there.

    ``student [B,C]`` and ``teacher [B,C]`` or ``[K,B,C]`` (or any shapes that broadcast to a
    common ``[..., B, C]``); ``labels [B]``. Returns ``[B]`` or ``[K,B]``. Defaults alpha 1.0,
    beta 8.0 are mdistiller's ``CFG.DKD`` (temperature there: 4.0). The epoch warmup of
    ``DKD.forward_train`` is not part of this loss: multiply by :func:`dkd_warmup_factor`.
    """
    s = _upcast(student)
    t = _upcast(teacher)
    s, t = torch.broadcast_tensors(s, t)
    template = s.new_zeros(s.shape[-2:])  # [B,C]: the masks broadcast over leading dims
    gt_mask = _gt_mask(template, labels)
    other_mask = _other_mask(template, labels)
    pred_student = _cat_mask(F.softmax(s / temperature, dim=-1), gt_mask, other_mask)
    pred_teacher = _cat_mask(F.softmax(t / temperature, dim=-1), gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(-1) * temperature**2
    pred_teacher_part2 = F.softmax(t / temperature - _DKD_GT_OFFSET * gt_mask, dim=-1)
    log_pred_student_part2 = F.log_softmax(s / temperature - _DKD_GT_OFFSET * gt_mask, dim=-1)
    nckd = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="none").sum(-1)
        * temperature**2
    )
    return alpha * tckd + beta * nckd


def dkd_warmup_factor(epoch: int, warmup: int) -> float:
    """DKD's linear warmup of the distillation term: ``min(epoch / warmup, 1.0)``.

    ``megvii-research/mdistiller``, ``mdistiller/distillers/DKD.py``, ``DKD.forward_train``
    (``min(kwargs["epoch"] / self.warmup, 1.0) * dkd_loss(...)``; WARMUP 20 on CIFAR-100).
    mdistiller's epoch is **1-based**: ``mdistiller/engine/trainer.py``,
    ``BaseTrainer.train`` starts at ``epoch = 1`` (``state["epoch"] + 1`` on resume), loops
    ``while epoch < EPOCHS + 1`` and passes ``epoch=epoch`` to the distiller, so the first
    epoch is weighted 1/warmup and epoch ``warmup`` is the first at full weight. Our engine's
    epochs are 1-based too (epoch 1 is the first), so pass the engine's epoch unchanged.
    ``warmup = 0`` means no warmup (factor 1; the reference would divide by zero); a negative
    warmup or an epoch below 1 raises :class:`~multikd.errors.ConfigError`. Host-side Python
    arithmetic, no tensors.
    """
    if warmup < 0:
        raise ConfigError(f"dkd warmup must be a non-negative number of epochs, got {warmup!r}")
    if epoch < 1:
        raise ConfigError(f"epochs are 1-based (epoch 1 is the first), got epoch {epoch!r}")
    if warmup == 0:
        return 1.0
    return min(epoch / warmup, 1.0)


def _cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = _DIST_EPS) -> torch.Tensor:
    """DIST ``cosine_similarity`` over the last dim: ``(a.b) / (|a| |b| + eps)``."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def _pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = _DIST_EPS) -> torch.Tensor:
    """DIST ``pearson_correlation`` over the last dim: cosine of the mean-centred vectors."""
    return _cosine_similarity(
        a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), eps
    )


def dist_per_sample(
    student: torch.Tensor,
    teachers: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher")
    per teacher and sample:

        Y^s = softmax(S/tau) [B,C],  Y^t_k = softmax(T_k/tau) [B,C]    (rows: samples)
        rho(u, v) = <u - mean(u), v - mean(v)> / (|u - mean(u)| |v - mean(v)| + 1e-8)
        inter_ki  = 1 - rho(Y^s_i,:, Y^t_k,i,:)                  (over the C classes)
        intra_k   = 1 - (1/C) sum_c rho(Y^s_:,c, Y^t_k,:,c)      (over the B samples)
        l_ki      = beta * tau^2 * inter_ki + gamma * tau^2 * intra_k

    Follows ``hunto/image_classification_sota`` (the ``classification`` submodule of
    ``hunto/DIST_KD``), ``lib/models/losses/dist_kd.py``: ``cosine_similarity`` (eps 1e-8
    added to the *product of the norms*, not to each norm or under a root),
    ``pearson_correlation``, ``inter_class_relation`` (``1 - mean_i rho``),
    ``intra_class_relation`` (the same on the transposed ``[C,B]`` matrices) and
    ``DIST.forward`` (softmax at ``tau``, both terms times ``tau**2``). The reference class's
    defaults are beta = gamma = tau = 1; its CIFAR-100 setting is ``dist_t4`` (tau 4) with
    ``kd_loss_weight`` 2 (the caller's weight).

    Per-sample layout (our documented extension to several teachers): the inter-class term is
    per sample; the intra-class term is a batch-level quantity (one Pearson correlation over
    the batch per class), so it is repeated as the same value ``intra_k`` in every sample of
    teacher k's row. Hence for K = 1, ``mean_i l_1i`` equals the reference ``DIST()(s, t)``
    exactly (up to float summation order), and a weighted combination
    ``mean_i sum_k w_ki * l_ki`` gives teacher k's intra term the weight
    ``mean_i w_ki`` (its batch-mean weight); its gradient flows through ``intra_k`` with that
    weight. The intra term needs B >= 2 to be informative (with B = 1 the centred columns are
    zero and rho = 0, as in the reference).

    ``student [B,C]``, ``teachers [K,B,C]`` (a single ``[B,C]`` teacher gives ``[B]``).
    Returns ``[K,B]``. The reference takes raw logits; with logit standardization (see
    :func:`logit_loss_per_teacher`) they are z-scored first.
    """
    y_s = F.softmax(_upcast(student) / tau, dim=-1)
    y_t = F.softmax(_upcast(teachers) / tau, dim=-1)
    y_s, y_t = torch.broadcast_tensors(y_s, y_t)
    inter = 1 - _pearson_correlation(y_s, y_t)  # [..., B]
    intra = 1 - _pearson_correlation(y_s.transpose(-1, -2), y_t.transpose(-1, -2)).mean(-1)
    return beta * tau**2 * inter + gamma * tau**2 * intra.unsqueeze(-1)


@register_logit_loss(
    "dist", "tau^2 (beta inter-class + gamma intra-class Pearson distance) (Huang et al. 2022)",
    params={"beta": 1.0, "gamma": 1.0, "tau": 4.0},
)
def dist_per_teacher(student: torch.Tensor, teachers: torch.Tensor, labels, temperature: float,
                     beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> torch.Tensor:
    """:func:`dist_per_sample` as a registered logit loss: its own ``tau`` (``temperature``
    and ``labels`` unused). A missing parameter falls back to the ``DIST`` class's default
    (1); the registry's defaults, which the distiller uses, are the CIFAR-100 setting
    (tau 4)."""
    if not tau > 0:
        raise ConfigError(f"DIST's tau must be positive, got {tau!r}")
    return dist_per_sample(student, teachers, beta, gamma, tau)


def _check_numbers(name: str, params: Mapping[str, float]) -> None:
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f"parameter {key!r} of logit loss {name!r} must be a number, got {value!r}"
            )


def logit_loss_per_teacher(
    name: str,
    student: torch.Tensor,
    teachers: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    params: Mapping[str, float] | None,
    standardize: bool = False,
) -> torch.Tensor:
    """One logit loss per teacher and sample, ``[K,B]``, by name (a name of
    :data:`LOGIT_LOSS_REGISTRY`; the built-ins):

        "kd"   l_ki = T^2 KL(softmax(t_ki/T) || softmax(s_i/T))
                      (Hinton et al. 2015; :func:`multikd.method.losses.kd_loss`, called as
                      ``kd_loss(student.unsqueeze(0), teachers, T, reduction="none")``)
        "mse"  l_ki = (1/C) sum_c (s_ic - t_kic)^2
                      (Ba & Caruana 2014; :func:`multikd.method.losses.mse_logit_loss`;
                      ``temperature`` unused)
        "dkd"  l_ki = alpha TCKD_ki + beta NCKD_ki at temperature T (:func:`dkd_per_sample`,
                      mdistiller ``dkd_loss``; needs ``labels [B]``)
        "dist" l_ki = tau^2 (beta inter_ki + gamma intra_k) (:func:`dist_per_sample`,
                      DIST_KD ``DIST``; uses its own ``tau`` from ``params``, ``temperature``
                      unused)

    ``params`` holds the loss's own keyword parameters (those its registry entry lists): dkd
    ``alpha``, ``beta`` (and ``warmup``, accepted and not passed on: the caller multiplies
    by :func:`dkd_warmup_factor`), dist ``beta``, ``gamma``, ``tau``; kd and mse take none.
    A missing key falls back to the function's keyword default (dkd: alpha 1, beta 8 =
    mdistiller's ``CFG.DKD``; dist: beta = gamma = tau = 1 = the ``DIST`` class's defaults);
    the references' CIFAR-100 settings are the registry's defaults (:data:`LOGIT_LOSS_DEFAULTS`;
    DIST's tau 4 there). Unknown keys, an unknown ``name`` or a non-numeric value raise
    :class:`~multikd.errors.ConfigError` naming the accepted choices.

    ``standardize=True`` applies logit standardization (Sun et al., CVPR 2024;
    ``sunshangquan/logit-standardization-KD``, ``normalize`` in
    ``mdistiller/distillers/KD.py`` / ``DKD.py``) to both the student's and every teacher's
    logits before the base loss (:func:`standardized`): ``Z(z) = (z - mean) / (1e-7 +
    std_unbiased)`` over the classes (:func:`standardize_logits`). The LS paper and code
    apply it to the KL-based losses (KD, DKD, MLKD) with a base temperature of 2 and a KD weight of 9 (DKD: alpha and
    beta times 9); here it is available for every base loss, and for DIST and MSE it is our
    extension, not the paper's setting (DIST's Pearson correlations are invariant to affine
    maps of the *probabilities*, not to the logits' scale, which changes the softmax; MSE on
    z-scores compares the logits' shapes, not their magnitudes).

    Shapes: ``student [B,C]``, ``teachers [K,B,C]``, ``labels [B]`` (may be ``None`` unless
    the loss ``needs_labels``, as dkd does). float32 throughout; no host syncs.
    """
    params = dict(params or {})
    entry = LOGIT_LOSS_REGISTRY.check_params(name, params)
    _check_numbers(entry.name, params)
    if student.dim() != 2 or teachers.dim() != 3 or teachers.shape[1:] != student.shape:
        raise ValueError(
            f"expected student logits [B,C] and teacher logits [K,B,C] with the same B and C; "
            f"got {tuple(student.shape)} and {tuple(teachers.shape)}"
        )
    if entry.info["needs_labels"] and (labels is None or labels.shape != student.shape[:1]):
        raise ValueError(
            f"{entry.name} needs labels [B] with B = {student.shape[0]}; got "
            f"{None if labels is None else tuple(labels.shape)}"
        )
    params.pop(WARMUP, None)
    loss = standardized(entry.target) if standardize else entry.target
    return loss(student, teachers, labels, temperature, **params)


LOGIT_LOSSES = LOGIT_LOSS_REGISTRY.names()
"""The built-in logit losses (the registry holds every registered one)."""

#: The built-in losses' own parameters as the references use them on CIFAR-100 (each entry's
#: ``params``): DKD from mdistiller's ``cfg.py`` (beta 8.0 is the default; several CIFAR
#: pairs use 2.0 or 6.0, see the module docstring), ``warmup`` in epochs (read by the caller,
#: see :func:`dkd_warmup_factor`); DIST from ``dist_cifar.yaml`` (``dist_t4``: tau 4; the
#: DIST class's own default and the ImageNet setting is tau 1). The temperature of KD/DKD
#: (mdistiller: 4; LS: 2) and the loss weights (DKD CE 1.0; DIST KD weight 2.0, CE 1.0; LS KD
#: weight 9, CE 0.1) are the caller's, not loss parameters.
LOGIT_LOSS_DEFAULTS: dict[str, dict[str, float]] = {
    entry.name: dict(entry.params) for entry in LOGIT_LOSS_REGISTRY.entries()
}
