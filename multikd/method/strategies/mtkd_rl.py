"""MTKD-RL: teacher weights from a policy trained by reinforcement (Yang et al., AAAI 2025,
"Multi-Teacher Knowledge Distillation with Reinforcement Learning for Visual Recognition").

Equal to the public code, github.com/winycg/MTKD-RL (read at its last commit):
``train_loops.py`` ``get_agent_state``, ``train`` and ``train_agent``;
``models/policy.py`` ``PolicyTrans``; ``models/util.py`` ``TransFeat`` / ``Embed``;
``distiller_zoo/feature_mse_mtkd_rl.py`` ``FeatureMSELoss``; ``train_student_rl.py``
(defaults). Per batch of B samples and K teachers:

State, per teacher k and sample i (``get_agent_state``, detached): the cosine similarity
``cos_ki`` of the pooled adapted student feature ``avgpool(a_k(f_s))_i`` and teacher k's
pooled feature ``e_ki`` (``t_features[-1]``, the average of its last stage), the per-sample
``KL_ki = T^2 KL(softmax(t_ki/T) || softmax(s_i/T))`` (``DistillKL(unreduce=True)``), the
teacher's cross-entropy ``CE_ki``, and ``[cos, KL, CE, e_k, t_k]`` concatenated over
teachers as the policy's input.

Policy (``PolicyTrans``): ``h = ReLU(W_1 x)`` (128 units, no bias), two heads
``P = softmax_k(W_l h + b_l)`` and ``Q = softmax_k(W_f h + b_f)``; logit and feature weights

    w_ik = (P_ik + (1 - softmax_k CE_ik) / (K - 1) + softmax_k KL_ik) / 3
    v_ik = (Q_ik + (1 - softmax_k CE_ik) / (K - 1) + softmax_k cos_ik) / 3

(``dynamic``: the fixed 1/3 are ``softmax`` of three learned factors per head, initialised
to 1, trained with the policy). In the first epoch (the reference's ``epoch == 0``) every
weight is 1. Each column of ``w`` and ``v`` sums to 1 (in the first epoch to K:
``Selection.scale = K``).

Loss (``train``): ``CE + sum_k mean_i w_ik KL_ik + 5 sum_k mean_i v_ik MSE_ki`` with
``MSE_ki`` the mean squared difference of ``a_k(f_s)_i`` and teacher k's last stage map,
``a_k`` = ``Embed`` (1x1 conv with bias + BN + ReLU after resizing, multikd's ``embed``
adapter), the student's last stage (``features[-2]``). The strategy's ``reference`` sets
these loss options (``teacher_reduction: sum``, ``adapter: embed``, every epoch); the weight
5 is ``loss.gamma`` (``--feat-weight 5``) and must be set (multikd's default is 0).

Reward (after the student's step, from the step's own values): ``r_i = -(CE_i + sum_k
w_ik KL_ik + gamma sum_k v_ik MSE_ki)``, standardised over the batch (unbiased std),
clamped to ``[0, 1]``. Agent update (``train_agent``): for every stored batch, in order,
``BCE(P', 1, weight=r) + BCE(Q', 1, weight=r)`` on the policy's current output ``P', Q'``
(the mixed weights, computed again from the stored state), one plain SGD step (lr 0.1,
``agent_lr``); run when the 0-based step index is a positive multiple of ``agent_step``
(1000) on the batches stored since the last update, and at the end of every epoch on those
left (with CIFAR-100's 782 batches of 64: once per epoch). Under torchrun the policy's
gradients are averaged over the ranks (the reference wraps it in DDP).

Left out on purpose: ``get_actions`` (sampling binary actions) and the arguments
``--ce-weight`` / ``--kd-weight`` are defined in the reference but never used; the
``avgpool`` of ``PolicyTrans`` and its ``sigmoid`` are unused too. The reference's
``TransFeat`` resizes the already resized map again for each further teacher; with
teachers of one resolution (its CIFAR recipe: all 8x8) that is the same thing.
Teachers' pooled features are the average of their tapped last stage here, which is the
reference's ``t_features[-1]`` for its teachers (RegNets, ResNets, WRNs); the reference
cannot run teachers whose pooled vector differs in width from their last stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import StrategyError
from multikd.method.losses import kd_loss, upcast as _wide
from multikd.method.strategies.base import (
    Selection,
    StepContext,
    check_bool,
    check_positive_float,
    check_positive_int,
    register_strategy,
)
from multikd.method.strategies.learned import AfterStep, LearnedStrategy, StepRecord, StrategySpec


class PolicyNetwork(nn.Module):
    """MTKD-RL's ``PolicyTrans`` (``models/policy.py``): stem ``Linear(D, hidden, bias=False)``
    + ReLU, logit and feature heads ``Linear(hidden, K)`` with softmax over teachers, and
    with ``dynamic`` the two mixing factors (``logit_weight_factor``,
    ``feature_weight_factor``, three each, initialised to 1)."""

    def __init__(self, input_size: int, num_teachers: int, hidden: int = 128,
                 dynamic: bool = False):
        super().__init__()
        self.num_teachers = num_teachers
        self.steam = nn.Sequential(nn.Linear(input_size, hidden, bias=False), nn.ReLU())
        self.logit_head = nn.Linear(hidden, num_teachers, bias=True)
        self.feature_head = nn.Linear(hidden, num_teachers, bias=True)
        self.dynamic = dynamic
        if dynamic:
            self.logit_weight_factor = nn.Parameter(torch.ones(3))
            self.feature_weight_factor = nn.Parameter(torch.ones(3))

    def forward(self, info, t_ces, t_s_logit_div, t_s_feat_div):
        """``info [B,D]`` (the concatenated state), the three ``[B,K]`` signals; returns the
        mixed logit and feature weights ``[B,K]``."""
        k = self.num_teachers
        confidence = (1.0 - F.softmax(t_ces, dim=1)) / (k - 1)
        by_kl = F.softmax(t_s_logit_div, dim=1)
        by_cos = F.softmax(t_s_feat_div, dim=1)
        hidden = self.steam(info)
        p = F.softmax(self.logit_head(hidden), dim=1)
        q = F.softmax(self.feature_head(hidden), dim=1)
        if self.dynamic:
            lf = F.softmax(self.logit_weight_factor, dim=0)
            ff = F.softmax(self.feature_weight_factor, dim=0)
            return (lf[0] * p + lf[1] * confidence + lf[2] * by_kl,
                    ff[0] * q + ff[1] * confidence + ff[2] * by_cos)
        return (p + confidence + by_kl) / 3.0, (q + confidence + by_cos) / 3.0


@register_strategy(
    "mtkd-rl", "weights from a policy trained by reinforcement (Yang et al., AAAI 2025)"
)
class MTKDRL(LearnedStrategy):
    """MTKD-RL's policy-weighted logit and feature distillation (module doc for the formulas
    and the reference). Parameters: ``dynamic`` (learned mixing factors, the reference's
    ``--dynamic``), ``agent_step`` (1000), ``agent_lr`` (0.1), ``hidden`` (128), ``seed``
    (the policy's initialisation)."""

    needs_student = True
    needs_features = True
    reads_adapted = True
    reference = {
        "teacher_reduction": "sum",
        "feature_weights": "strategy",
        "adapter": "embed",
        "feature_stage": -1,
        "feature_start_epoch": 1,
    }

    def __init__(self, dynamic: bool = False, agent_step: int = 1000, agent_lr: float = 0.1,
                 hidden: int = 128, seed: int = 0):
        super().__init__(seed)
        self.dynamic = check_bool("mtkd-rl", "dynamic", dynamic)
        self.agent_step = check_positive_int("mtkd-rl", "agent_step", agent_step)
        self.agent_lr = check_positive_float("mtkd-rl", "agent_lr", agent_lr)
        self.hidden = check_positive_int("mtkd-rl", "hidden", hidden)
        self._states: list[tuple[torch.Tensor, ...]] = []
        self._rewards: list[torch.Tensor] = []
        self._pending: tuple[torch.Tensor, ...] | None = None

    def build_networks(self, spec: StrategySpec) -> nn.Module:
        if spec.num_teachers < 2:
            raise StrategyError(
                "strategy 'mtkd-rl' mixes CA-MKD's (1 - softmax CE) / (K - 1) into its weights "
                f"and needs at least 2 teachers, got {spec.num_teachers}"
            )
        if not spec.teacher_feature_shapes:
            raise StrategyError(
                "strategy 'mtkd-rl' weights teachers by their features (its state holds the "
                "cosine similarity of student and teacher features, its loss a feature term): "
                "set loss.gamma > 0 (the reference's --feat-weight is 5)"
            )
        widths = [shape[0] for shape in spec.teacher_feature_shapes]
        size = sum(3 + w + spec.num_classes for w in widths)
        return PolicyNetwork(size, spec.num_teachers, self.hidden, self.dynamic)

    def build_optimizer(self, params):
        return torch.optim.SGD(params, lr=self.agent_lr)

    # ------------------------------------------------------------------ weights
    def agent_state(self, ce, logits, context: StepContext):
        """``(info [B,D], CE [B,K], KL [B,K], cos [B,K])`` of ``get_agent_state``, detached."""
        student = _wide(context.student_logits)
        kl = kd_loss(student.unsqueeze(0), _wide(logits), context.temperature, reduction="none")
        infos, cosines = [], []
        for k, (adapted, teacher) in enumerate(zip(context.adapted, context.teacher_features)):
            s_emb = _pooled(_wide(adapted))
            t_emb = _pooled(_wide(teacher))
            cos = F.cosine_similarity(s_emb, t_emb)
            cosines.append(cos)
            infos.append(torch.cat([cos[:, None], kl[k][:, None], ce[k][:, None].to(kl.dtype),
                                    t_emb, _wide(logits[k])], dim=1))
        return (torch.cat(infos, dim=1).detach(), _wide(ce.t()).detach(), kl.t().detach(),
                torch.stack(cosines, dim=1).detach())

    def _select_in_context(self, ce, logits, labels, context):
        self._bound()
        if context.adapted is None or context.teacher_features is None:
            raise StrategyError(
                "strategy 'mtkd-rl' needs the student's adapted features and the teachers' "
                "features in its StepContext: set loss.gamma > 0 (the distiller taps them)"
            )
        state = self.agent_state(ce, logits, context)
        k = ce.shape[0]
        kept = torch.ones_like(ce, dtype=torch.bool)
        if context.epoch <= 1:
            uniform = torch.full_like(ce, 1.0 / k)
            w, v, scale = uniform, uniform, float(k)
        else:
            with torch.no_grad():
                was = self.networks.training
                self.networks.eval()
                w, v = self.networks(*state)
                self.networks.train(was)
            w, v, scale = w.t(), v.t(), 1.0
        self._pending = state
        return Selection(w, kept, feature_weights=v, scale=scale)

    # ------------------------------------------------------------------ learning
    def observe(self, record: StepRecord) -> None:
        """Store the batch's state and its reward (the per-sample loss, standardised,
        clamped to [0, 1])."""
        if self._pending is None:
            return
        sel = record.selection
        w = sel.weights * sel.scale
        v = (sel.feature_weights if sel.feature_weights is not None else sel.weights) * sel.scale
        loss = record.student_ce + (w * record.logit_loss).sum(0)
        if record.feature_loss is not None:
            loss = loss + record.gamma * (v * record.feature_loss).sum(0)
        reward = -_wide(loss)
        reward = ((reward - reward.mean()) / reward.std()).clamp(0.0, 1.0)
        self._states.append(self._pending)
        self._rewards.append(reward.detach())
        self._pending = None

    def after_step(self, step: AfterStep) -> None:
        if step.step % self.agent_step == 0 and step.step != 0:
            self.train_agent()

    def end_epoch(self, epoch: int) -> None:
        if self._states:
            self.train_agent()

    def train_agent(self) -> None:
        """``train_agent``: one SGD step per stored batch on the reward-weighted BCE of both
        heads' weights toward 1; the stored batches are then cleared."""
        self._bound()
        policy = self.networks
        policy.train()
        with torch.enable_grad():
            for state, reward in zip(self._states, self._rewards):
                logit_w, feature_w = policy(*state)
                self.optimizer.zero_grad(set_to_none=True)
                target = torch.ones_like(logit_w)
                weight = reward.unsqueeze(-1)
                loss = (F.binary_cross_entropy(logit_w, target, weight=weight)
                        + F.binary_cross_entropy(feature_w, target, weight=weight))
                loss.backward()
                self.all_reduce_grads()
                self.optimizer.step()
                self.record_loss(loss)
        self._states, self._rewards = [], []

    def extra_state(self) -> dict:
        return {"states": [list(s) for s in self._states], "rewards": list(self._rewards)}

    def load_extra_state(self, state: dict) -> None:
        if set(state) != {"states", "rewards"}:
            raise StrategyError(
                f"strategy 'mtkd-rl' expects stored states and rewards, got {sorted(state)}"
            )
        device = next(iter(self.networks.parameters())).device
        self._states = [tuple(t.to(device) for t in s) for s in state["states"]]
        self._rewards = [r.to(device) for r in state["rewards"]]


def _pooled(feature: torch.Tensor) -> torch.Tensor:
    """``[B,C]``: the spatial average of a map ``[B,C,H,W]`` (a vector stays as it is)."""
    return F.adaptive_avg_pool2d(feature, 1).flatten(1) if feature.dim() == 4 else feature.flatten(1)
