"""AEKD: teacher weights from the geometry of the teachers' gradients on the student.

Du et al., "Agree to Disagree: Adaptive Ensemble Knowledge Distillation in Gradient
Space", NeurIPS 2020, in the form of the public code the field compares against, the AEKD
baseline of CA-MKD (github.com/Rorozhl/CA-MKD): ``helper/loops.py``
``train_distill_multi_teacher``, branch ``opt.ensemble_method == "AEKD"``;
``helper/optimization.py`` ``find_optimal_svm``; ``train_student.py`` (``-C 0.6``,
``opt.nu = 1 / (opt.C * opt.teacher_num)``, ``--svm_norm`` off). Per batch:

1. ``g_k = d KD_k / d s``, the gradient of teacher k's Hinton loss (batch mean, times T^2,
   ``distiller_zoo/KD.py`` ``DistillKL``) with respect to the student's logits ``s [B,C]``;
   in closed form ``g_k,i = T (softmax(s_i / T) - softmax(t_k,i / T)) / B`` (the reference
   records it with a hook and one backward pass per teacher);
2. ``V_k = mean_i g_k,i`` (``[K,C]``), divided by its norm when ``normalize``; ``G = V V^T``;
3. ``nu = 1 / (C K)`` clipped to ``[1/K, 1]``; the weights solve the one-class SVM dual that
   ``sklearn.svm.OneClassSVM(kernel="precomputed", nu)`` fits on G, scaled by ``1 / (K nu)``:

       w = argmin_w  w^T G w   subject to  sum_k w_k = 1,  0 <= w_k <= 1 / (K nu)

   the point of the teachers' capped convex hull nearest the origin in gradient space:
   teachers whose gradients agree share the weight, and none takes more than
   ``max(C, 1/K)`` of it;
4. with ``normalize`` the reference maps ``w_k -> (w_k / |V_k|) / sum_j (w_j / |V_j|)``.

The weights are one per teacher for the whole batch (``[K,B]`` with equal columns) and
sum to 1; the loss is ``sum_k w_k KD_k`` (``torch.dot(scale, losses_div_tensor)``), i.e.
multikd's ``loss.teacher_reduction: sum``. With ``--distill hint`` the reference adds
FitNets hints on ``feature_names[2]`` through ``ConvReg`` adapters from epoch 2 on: the
strategy's ``reference`` for ``loss.adapter``, ``loss.feature_stage`` and
``loss.feature_start_epoch`` (used only with ``loss.gamma`` > 0).

Deliberate deviations, neither of which changes the logit weights' optimum:

- libsvm's SMO (tolerance 1e-6, on the host) is replaced by an exact solver on the
  device: the optimum of a strictly convex QP solves the KKT equations of its active set,
  so every assignment of each weight to "0", "cap" or "free" (3^K of them, up to K = 9) is
  solved at once in float64 (``torch.linalg.solve_ex``; a ridge of 1e-10 trace(G) / K
  makes the optimum unique, so identical teachers split their share evenly where libsvm
  returns one optimal vertex), and the feasible solution of lowest objective is taken.
  About 40 tensor ops, no host sync, no iteration count.
- The reference's ``hint`` variant computes a second set of weights from the gradients of
  the hint losses on the student feature; multikd's feature term weights teachers with
  these logit weights (``loss.feature_weights: strategy``) or ``uniform``.
"""

from __future__ import annotations

import torch

from multikd.errors import StrategyError
from multikd.method.strategies.base import (
    Selection,
    StepContext,
    Strategy,
    check_bool,
    check_positive_float,
    register_strategy,
)

MAX_TEACHERS = 9
"""3^9 = 19683 candidate active sets of 10x10 systems; beyond that the enumeration is large."""


def kd_logit_gradients(student: torch.Tensor, teachers: torch.Tensor, temperature: float):
    """``[K,B,C]`` float64: gradient of ``KL(softmax(t_k/T) || softmax(s/T)) * T^2`` (mean
    over the batch) with respect to the student's logits, ``T (p_s - p_t,k) / B``."""
    t = float(temperature)
    p_s = torch.softmax(student.double() / t, dim=-1)
    p_t = torch.softmax(teachers.double() / t, dim=-1)
    return t * (p_s.unsqueeze(0) - p_t) / student.shape[0]


def capped_simplex_qp(gram: torch.Tensor, cap: float) -> torch.Tensor:
    """``argmin_w w^T G w`` on ``{sum w = 1, 0 <= w <= cap}`` for a PSD ``G [K,K]`` and
    ``cap >= 1/K`` (exact active-set enumeration, see the module doc); float64, on G's
    device, without host syncs."""
    k = gram.shape[0]
    f64 = {"dtype": torch.float64, "device": gram.device}
    eye = torch.eye(k, **f64)
    g = gram.double()
    g = g + (1e-10 * torch.diagonal(g).sum() / k + 1e-300) * eye
    # each row: a state per weight, 0 = at 0, 1 = at the cap, 2 = free
    codes = torch.arange(3 ** k, device=gram.device)
    state = (codes[:, None] // (3 ** torch.arange(k, device=gram.device))) % 3  # [N,K]
    free = (state == 2).double()
    at_cap = (state == 1).double()
    some_free = free.amax(1)  # 1 when any weight is free, else 0
    n = state.shape[0]
    # rows of free weights: 2 (G w)_i + lam = 0; of fixed ones: w_i = 0 or cap
    rows = free[:, :, None] * 2.0 * g + (1.0 - free[:, :, None]) * eye
    top = torch.cat([rows, free[:, :, None]], dim=2)  # [N,K,K+1]
    # last row: sum w = 1, or lam = 0 when nothing is free (lam is then in no equation)
    last = torch.cat([some_free[:, None].expand(n, k), (1.0 - some_free)[:, None]], dim=1)
    system = torch.cat([top, last[:, None, :]], dim=1)  # [N,K+1,K+1]
    rhs = torch.cat([at_cap * cap, some_free[:, None]], dim=1)
    solution, _ = torch.linalg.solve_ex(system, rhs.unsqueeze(-1), check_errors=False)
    w = solution[:, :k, 0]
    tol = 1e-9
    feasible = torch.isfinite(w).all(1) & ((w.sum(1) - 1).abs() < 1e-7)
    feasible &= (w >= -tol).all(1) & (w <= cap + tol).all(1)
    w = torch.where(feasible[:, None], w, 0.0)
    objective = torch.where(feasible, torch.einsum("nk,kl,nl->n", w, g, w), torch.inf)
    best = w.index_select(0, objective.argmin().reshape(1))[0].clamp(0.0, cap)
    uniform = torch.full((k,), 1.0 / k, **f64)
    # a feasible candidate always exists (cap >= 1/K); the guard keeps weights finite anyway
    return torch.where(feasible.any(), best / best.sum().clamp_min(1e-300), uniform)


@register_strategy(
    "aekd", "batch weights from the geometry of the teachers' KD gradients (Du et al. 2020)"
)
class AEKD(Strategy):
    """AEKD (Du et al., NeurIPS 2020) as CA-MKD's public code runs it: batch weights from
    the teachers' KD gradients on the student's logits (formula, source and deviations in
    the module doc). Parameters: ``C`` in (0, 1] (0.6, the reference's ``-C``: the
    tolerance for disagreement, the largest share one teacher may take when
    ``C >= 1/K``; ``C <= 1/K`` gives uniform weights), ``normalize`` (False, the
    reference's ``--svm_norm``). Everyone is kept; the gradients are those of the KD loss
    whatever ``loss.logit_loss`` is."""

    needs_student = True
    reference = {"adapter": "convreg", "feature_stage": 2, "feature_start_epoch": 2}

    def __init__(self, C: float = 0.6, normalize: bool = False):
        self.C = check_positive_float("aekd", "C", C)
        if self.C > 1:
            raise StrategyError(
                f"strategy 'aekd': C must be in (0, 1] (nu = 1 / (C K); the reference's "
                f"default is 0.6), got {self.C}"
            )
        self.normalize = check_bool("aekd", "normalize", normalize)

    def cap(self, k: int) -> float:
        """``1 / (K nu)`` with ``nu = 1 / (C K)`` clipped to ``[1/K, 1]`` (``find_optimal_svm``)."""
        nu = min(max(1.0 / (self.C * k), 1.0 / k), 1.0)
        return 1.0 / (k * nu)

    def _select_in_context(self, ce, logits, labels, context: StepContext) -> Selection:
        k = ce.shape[0]
        if k > MAX_TEACHERS:
            raise StrategyError(
                f"strategy 'aekd' solves its weights exactly for up to {MAX_TEACHERS} teachers; "
                f"got {k}"
            )
        student = context.student_logits
        if tuple(student.shape) != tuple(logits.shape[1:]):
            raise StrategyError(
                f"strategy 'aekd': the student's logits {tuple(student.shape)} do not match "
                f"the teachers' {tuple(logits.shape)} (expected [B,C] = {tuple(logits.shape[1:])})"
            )
        v = kd_logit_gradients(student.detach(), logits.detach(), context.temperature).mean(1)
        norm = v.norm(dim=1).clamp_min(1e-300)
        if self.normalize:
            v = v / norm[:, None]
        w = capped_simplex_qp(v @ v.T, self.cap(k))
        if self.normalize:
            w = w / norm
            w = w / w.sum()
        weights = w.to(ce.dtype)[:, None].expand_as(ce)
        return Selection(weights, torch.ones_like(ce, dtype=torch.bool))
