"""``ofd``: overhaul of feature distillation (Heo et al., ICCV 2019).

mdistiller ``mdistiller/distillers/OFD.py`` (``feat_loss``, ``ConnectorConvBN``,
``OFD.init_ofd_modules``, ``OFD.ofd_loss``; from the authors' clovaai/overhaul-distillation).
It reads the pre-ReLU stage maps (``preact_feats[1:]``: the zoo's
``preact_feature_names[1:]``, :mod:`multikd.models.registry`), keeps the last
``n = min(#student stages, #teacher stages)`` of each side (``_align_list``), passes the
student's through a connector (conv k x k, stride 1, padding (k-1)/2, no bias, weights
``N(0, 2 / (k*k*C_t))``, then BatchNorm with weight 1 and bias 0), average-pools the
teacher's to the connector's output size, and compares them with the partial L2 of the
paper, per stage i = 0..n-1 (s the connector's output, t the pooled teacher map, m the
stage's margin per teacher channel):

    d     = (s - m)^2 [s > m and t <= m] + (s - t)^2 [s > t and m < t <= 0] + (s - t)^2 [t > 0]
    l_i   = sum_stage sum_{c,h,w} |d| / 2^(n - stage - 1)

The reference takes ``torch.abs(loss).mean(dim=0).sum()`` per stage, the batch mean of the
per-sample sum over C, H, W, so per sample it is that sum (the batch mean is the
reference's value). Reference weight γ = 0.001 (mdistiller ``CFG.OFD.LOSS.FEAT_WEIGHT``),
connector kernel 1 (``CFG.OFD.CONNECTOR.KERNEL_SIZE``).

The margin of a teacher channel is the expectation of its pre-ReLU value where negative,
from the BatchNorm before that ReLU (the teacher's ``preact_bn_names``: mdistiller's
``get_bn_before_relu``), with ``s = |weight|`` and ``m = bias``:

    margin = m - s * phi(m/s) / Phi(-m/s)     if Phi(-m/s) > 0.001,   else -3 s

``phi`` the standard normal density, ``Phi`` its distribution function, which the
reference takes from scipy (``norm.cdf``) and this module from the standard library:
``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, computed as the equal ``erfc(-x / sqrt 2) / 2``
(no cancellation in the lower tail; scipy's ``ndtr`` does the same). Margins are computed
in double precision and stored in float32 (``torch.FloatTensor`` in the reference), as
buffers: saved in the state, never trained. A channel with weight 0 (the reference
divides by zero) gets the formula's limit, ``min(m, 0)``.

Differences from the reference, where it cannot run as written: a teacher with more stages
than the student gets its margins aligned like its maps (the last n; the reference indexes
the first n margins against the last n maps, a shape error or a wrong pairing). mdistiller's
``OFD.train`` also puts the *teacher* in training mode (it overrides ``Distiller.train``
without ``teacher.eval()``), so its teacher's BatchNorms use batch statistics; the teacher's
mode is the distiller's choice, not this module's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ConfigError
from multikd.method.feature_losses.base import (
    FeatureBatch, FeatureLoss, FeatureSetup, register_feature_loss,
)
from multikd.method.precision import upcast

MIN_TAIL = 0.001
"""Below this ``Phi(-m/s)`` a margin is ``-3 s`` (the reference's cut-off)."""


def normal_cdf(x: float) -> float:
    """``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` (scipy's ``norm.cdf``), as ``erfc(-x/sqrt 2)/2``."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def margin(std: float, mean: float) -> float:
    """OFD's margin of one channel whose pre-ReLU value is ``N(mean, std^2)``: its
    expectation where negative, ``mean - s phi(mean/s) / Phi(-mean/s)`` (``s = |std|``), or
    ``-3 s`` where ``Phi(-mean/s) <= 0.001`` (mdistiller ``OFD.init_ofd_modules``)."""
    s, m = abs(std), mean
    if s == 0.0:
        return min(m, 0.0)  # the formula's limit as s -> 0 (the reference divides by zero)
    tail = normal_cdf(-m / s)
    if tail > MIN_TAIL:
        return -s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / tail + m
    return -3 * s


def bn_margins(bn: nn.Module) -> torch.Tensor:
    """``[C]`` float32: the margin of every channel of BatchNorm ``bn`` (weight = std,
    bias = mean of the pre-ReLU value)."""
    std = bn.weight.detach().double().cpu().tolist()
    mean = bn.bias.detach().double().cpu().tolist()
    return torch.tensor([margin(s, m) for s, m in zip(std, mean)], dtype=torch.float32)


def connector(s_channels: int, t_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """mdistiller's ``ConnectorConvBN._build_feature_connector``: conv k x k (stride 1,
    padding (k-1)/2, no bias, ``N(0, 2/(k*k*C_t))``) then BatchNorm (weight 1, bias 0)."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=kernel_size, stride=1,
                     padding=(kernel_size - 1) // 2, bias=False)
    bn = nn.BatchNorm2d(t_channels)
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    with torch.no_grad():
        conv.weight.normal_(0, math.sqrt(2.0 / n))
        bn.weight.fill_(1)
        bn.bias.zero_()
    return nn.Sequential(conv, bn)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin_: torch.Tensor) -> torch.Tensor:
    """``[B]``: OFD's ``feat_loss`` per sample, the sum over C, H, W of its three masked
    squared differences (``margin_`` ``[1,C,1,1]``)."""
    margin_ = margin_.to(source)
    loss = (
        (source - margin_) ** 2 * ((source > margin_) & (target <= margin_)).to(source.dtype)
        + (source - target) ** 2
        * ((source > target) & (target > margin_) & (target <= 0)).to(source.dtype)
        + (source - target) ** 2 * (target > 0).to(source.dtype)
    )
    return torch.abs(loss).flatten(1).sum(1)


@register_feature_loss(
    "ofd", "overhaul of feature distillation: partial L2 between connected pre-ReLU student "
           "maps and the teacher's, with margins from the teacher's BN (per sample; "
           "reference γ=0.001)",
    params={"kernel_size": 1},
)
class OverhaulFeatureDistillation(FeatureLoss):
    """OFD (module doc), per sample: one connector and one margin buffer per aligned stage.

    ``margins`` (one ``[C_t]`` per teacher stage, all of them) come from the teacher's BNs:
    :meth:`build` reads them; a module restored from a checkpoint gets them from its state.
    """

    reads = "preact"
    reference_gamma = 0.001

    def __init__(self, student_shapes, teacher_shapes, kernel_size: int = 1,
                 margins: Sequence[torch.Tensor] | None = None):
        super().__init__(student_shapes, teacher_shapes)
        if margins is None:
            raise ConfigError(
                "feature loss 'ofd' needs the teacher's margins, from the BatchNorms before its "
                "ReLUs: build it with OverhaulFeatureDistillation.build(setup), which reads them "
                "from setup.teacher (model.preact_bn_names)"
            )
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ConfigError(
                f"feature loss 'ofd': kernel_size must be an odd positive integer (the connector "
                f"keeps the student's map size), got {kernel_size!r}"
            )
        margins = [torch.as_tensor(m, dtype=torch.float32).flatten() for m in margins]
        if len(margins) != len(self.teacher_shapes):
            raise ConfigError(
                f"feature loss 'ofd': {len(margins)} margins for {len(self.teacher_shapes)} "
                "teacher stages; give one per stage after the stem"
            )
        for i, (m, t) in enumerate(zip(margins, self.teacher_shapes)):
            if m.numel() != t[0]:
                raise ConfigError(
                    f"feature loss 'ofd': teacher stage {i + 1} has {t[0]} channels but its "
                    f"BatchNorm before the ReLU has {m.numel()}; check model.preact_bn_names"
                )
        self.kernel_size = int(kernel_size)
        n = min(len(self.student_shapes), len(self.teacher_shapes))
        self.num_stages = n
        stu = self.student_shapes[len(self.student_shapes) - n:]   # _align_list: the last n
        tea = self.teacher_shapes[len(self.teacher_shapes) - n:]
        self.connectors = nn.ModuleList(
            connector(s[0], t[0], self.kernel_size) for s, t in zip(stu, tea)
        )
        for i, m in enumerate(margins[len(margins) - n:]):
            self.register_buffer(f"margin_{i}", m.view(1, -1, 1, 1))

    @classmethod
    def build(cls, setup: FeatureSetup, **params) -> "OverhaulFeatureDistillation":
        """The module for ``setup.teacher``, its margins read from the BatchNorms its
        ``preact_bn_names`` lists (mdistiller's ``get_bn_before_relu``)."""
        teacher = setup.teacher
        names = getattr(teacher, "preact_bn_names", None)
        if not names:
            raise ConfigError(
                f"feature loss 'ofd' takes its margins from the teacher's BatchNorm before each "
                f"stage's ReLU, and the teacher ({type(teacher).__name__}) names none "
                "(model.preact_bn_names); mdistiller's ShuffleNets cannot be OFD teachers "
                "either (their get_bn_before_relu raises). Use another teacher, or another "
                "feature loss"
            )
        modules = dict(teacher.named_modules())
        bns = []
        for name in names:
            bn = modules.get(name)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(
                    f"feature loss 'ofd': the teacher's preact_bn_names lists {name!r}, which "
                    f"is {'not a module' if bn is None else type(bn).__name__}, not a BatchNorm"
                )
            bns.append(bn)
        return cls(setup.student_shapes, setup.teacher_shapes,
                   margins=[bn_margins(bn) for bn in bns], **params)

    @property
    def margins(self) -> list[torch.Tensor]:
        """Aligned stage i's margins ``[1, C_t, 1, 1]``."""
        return [getattr(self, f"margin_{i}") for i in range(self.num_stages)]

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        n = self.num_stages
        student, teacher = list(student)[len(student) - n:], list(teacher)[len(teacher) - n:]
        total = None
        for i, (conn, m, f_s, f_t) in enumerate(zip(self.connectors, self.margins,
                                                    student, teacher)):
            source = conn(upcast(f_s))
            target = F.adaptive_avg_pool2d(upcast(f_t), source.shape[-2:]).detach()
            term = partial_l2(source, target, m) / 2 ** (n - i - 1)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, {super().extra_repr()}"
