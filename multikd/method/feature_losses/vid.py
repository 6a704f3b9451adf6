"""``vid``: variational information distillation (Ahn et al., CVPR 2019).

mdistiller ``mdistiller/distillers/VID.py`` (``vid_loss``, ``VID.init_vid_modules``; the
authors' code, ssahn0215/variational-information-distillation, as RepDistiller
``distiller_zoo/VID.py`` ``VIDLoss``), per stage s of every stage but the stem
(``feats[1:]``), after average-pooling the larger map to the smaller's size:

    mu_s  = regressor_s(f_s)      conv1x1(C_s,C_t) - ReLU - conv1x1(C_t,C_t) - ReLU - conv1x1(C_t,C_t)
    var_c = log(1 + exp(log_scale_c)) + eps          (one variance per teacher channel c)
    l_i   = sum_s mean_{c,h,w} 0.5 * ((mu_s - f_t,s)^2 / var + log var)

with bias-free 1x1 convolutions in PyTorch's default initialisation (as the reference) and
``log_scale`` initialised to ``log(exp(init_pred_var - eps) - 1)``, i.e. a variance of
``init_pred_var`` at the start. The reference takes ``torch.mean`` over the batch and
C, H, W at once; per sample it is the mean over C, H, W, whose batch mean is the
reference's value. Reference weight γ = 1 (mdistiller ``CFG.VID.LOSS.FEAT_WEIGHT``),
``eps = 1e-5``, ``init_pred_var = 5.0`` (``CFG.VID.EPS``, ``CFG.VID.INIT_PRED_VAR``).

**The variance is not trained by default, as in mdistiller.** mdistiller keeps the
``log_scale`` parameters in a plain Python list (``self.log_scales = []``), so they are not
registered in the module, and ``VID.get_learnable_parameters`` hands the optimizer the
student's and the regressors' parameters only: the variance stays at ``init_pred_var`` for
the whole run (and is not in its checkpoint). Here ``log_scale`` is therefore a buffer by
default (saved in the state dict, never updated). ``train_log_scale=True`` makes it a
parameter trained with the student, the paper's form (the variance is learned), which is
also RepDistiller's: its ``VIDLoss.log_scale`` is an ``nn.Parameter`` of a module in
``trainable_list``.

Stages: the reference builds a regressor per pair of ``zip(student feats[1:], teacher
feats[1:])`` and runs one per student stage, so it pairs stage s with stage s and needs the
teacher to have at least as many stages as the student (a teacher's extra last stages are
not read); the same holds here, and a student with more stages is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from multikd.errors import ConfigError
from multikd.method.feature_losses.base import (
    FeatureBatch, FeatureLoss, pool_to_smaller, register_feature_loss,
)
from multikd.method.precision import upcast


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    """mdistiller VID's ``conv1x1``: 1x1, stride 1, no padding, no bias."""
    return nn.Conv2d(cin, cout, kernel_size=1, padding=0, bias=False, stride=1)


def regressor(cin: int, cout: int) -> nn.Sequential:
    """The mean regressor of one stage: conv1x1(cin, cout)-ReLU-conv1x1-ReLU-conv1x1."""
    return nn.Sequential(conv1x1(cin, cout), nn.ReLU(), conv1x1(cout, cout), nn.ReLU(),
                         conv1x1(cout, cout))


def initial_log_scale(init_pred_var: float, eps: float) -> float:
    """``log(exp(init_pred_var - eps) - 1)``: the log-scale whose variance
    ``log(1 + exp(.)) + eps`` is ``init_pred_var``."""
    return math.log(math.exp(init_pred_var - eps) - 1.0)


@register_feature_loss(
    "vid", "variational information distillation: Gaussian log-likelihood of each teacher map "
           "under a regressor of the student's, every stage (per sample; reference γ=1)"
)
class VariationalInformationDistillation(FeatureLoss):
    """VID (module doc), per sample: one regressor and one ``log_scale`` per stage."""

    reads = "stages"
    reference_gamma = 1.0

    def __init__(self, student_shapes, teacher_shapes, eps: float = 1e-5,
                 init_pred_var: float = 5.0, train_log_scale: bool = False):
        super().__init__(student_shapes, teacher_shapes)
        if len(self.student_shapes) > len(self.teacher_shapes):
            raise ConfigError(
                f"feature loss 'vid' pairs stage s of the student with stage s of each teacher "
                f"(mdistiller's VID), but the student has {len(self.student_shapes)} stages "
                f"after its stem and a teacher only {len(self.teacher_shapes)}; pick a teacher "
                "with at least as many stages"
            )
        if not init_pred_var > eps:
            raise ConfigError(
                f"feature loss 'vid': init_pred_var ({init_pred_var}) must exceed eps ({eps}), "
                "the variance's floor"
            )
        self.eps = float(eps)
        self.init_pred_var = float(init_pred_var)
        self.train_log_scale = bool(train_log_scale)
        pairs = list(zip(self.student_shapes, self.teacher_shapes))
        self.regressors = nn.ModuleList(regressor(s[0], t[0]) for s, t in pairs)
        start = initial_log_scale(self.init_pred_var, self.eps)
        for i, (_, t) in enumerate(pairs):
            value = torch.full((t[0],), start)
            if self.train_log_scale:
                self.register_parameter(f"log_scale_{i}", nn.Parameter(value))
            else:  # mdistiller: not in the optimizer (see the module doc)
                self.register_buffer(f"log_scale_{i}", value)

    @property
    def log_scales(self) -> list[torch.Tensor]:
        """Stage s's ``log_scale`` ``[C_t]`` (a parameter or a buffer, ``train_log_scale``)."""
        return [getattr(self, f"log_scale_{i}") for i in range(len(self.regressors))]

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        total = None
        for reg, log_scale, f_s, f_t in zip(self.regressors, self.log_scales, student, teacher):
            f_s, f_t = pool_to_smaller(upcast(f_s), upcast(f_t))
            pred_mean = reg(f_s)
            pred_var = torch.log(1.0 + torch.exp(log_scale)) + self.eps
            pred_var = pred_var.view(1, -1, 1, 1).to(pred_mean)
            neg_log_prob = 0.5 * ((pred_mean - f_t) ** 2 / pred_var + torch.log(pred_var))
            term = neg_log_prob.flatten(1).mean(1)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, init_pred_var={self.init_pred_var}, "
                f"train_log_scale={self.train_log_scale}, {super().extra_repr()}")
